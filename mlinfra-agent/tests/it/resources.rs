//! The datasets as resources (`mlinfra://datasets/{+path}`): listed with paging, read as
//! their schema, refused outside the root; the `explore_dataset` prompt embedding that schema;
//! completion of dataset paths for the prompt and the template.

use serde_json::{Value, json};

use crate::common::{Fixture, POINTS_ROWS, Pipe};

/// Lays out, beside `points.parquet`: a sharded dataset `shards/` (two files), a nested one,
/// 150 one-file directories under `bulk/`, and what is not listed (a hidden one, a link out of
/// the root, a text file, a name read as a glob).
fn lay_out(fixture: &Fixture) {
    let root = fixture.root();
    let points = root.join("points.parquet");
    let copy = |to: std::path::PathBuf| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&points, to).unwrap();
    };
    copy(root.join("shards/part-0.parquet"));
    copy(root.join("shards/part-1.parquet"));
    copy(root.join("nested/deeper/x.parquet"));
    copy(root.join(".hidden/h.parquet"));
    // A name the tools would refuse (the data layer reads `[`, `*`, `?` as a glob).
    copy(root.join("weird[1].parquet"));
    for i in 0..150 {
        copy(root.join(format!("bulk/d{i:03}/data.parquet")));
    }
    std::os::unix::fs::symlink(fixture.secret(), root.join("link.parquet")).unwrap();
    std::fs::write(root.join("notes.txt"), "not a dataset").unwrap();
}

fn request(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[test]
fn datasets_are_resources_with_a_prompt_and_path_completion() {
    let fixture = Fixture::new();
    lay_out(&fixture);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut pipe = Pipe::open(fixture.server()).await;
        let hello = pipe.hello.clone();
        let mut ask = async |id: i64, method: &str, params: Value| -> Value {
            pipe.reply(request(id, method, params)).await
        };

        let capabilities = &hello["result"]["capabilities"];
        for capability in ["tools", "resources", "prompts", "completions"] {
            assert!(
                capabilities[capability].is_object(),
                "{capability}: {hello}"
            );
        }

        // Listing: 153 datasets in path order, 100 a page.
        let first = ask(2, "resources/list", json!({})).await["result"].clone();
        let uris = |page: &Value| -> Vec<String> {
            page["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["uri"].as_str().unwrap().to_owned())
                .collect()
        };
        let mut all = uris(&first);
        assert_eq!(all.len(), 100, "{first}");
        assert_eq!(all[0], "mlinfra://datasets/bulk/d000");
        let cursor = first["nextCursor"].clone();
        let second = ask(3, "resources/list", json!({"cursor": cursor})).await["result"].clone();
        assert!(second.get("nextCursor").is_none(), "{second}");
        all.extend(uris(&second));
        assert_eq!(all.len(), 153);
        assert_eq!(
            all[150..],
            [
                "mlinfra://datasets/nested/deeper",
                "mlinfra://datasets/points.parquet",
                "mlinfra://datasets/shards",
            ]
        );
        let bad_cursor = ask(4, "resources/list", json!({"cursor": "zz"})).await;
        assert_eq!(bad_cursor["error"]["code"], -32602, "{bad_cursor}");

        // Reading: the schema report, a sharded dataset read as one.
        let read = ask(
            5,
            "resources/read",
            json!({"uri": "mlinfra://datasets/shards"}),
        )
        .await;
        let contents = &read["result"]["contents"][0];
        assert_eq!(contents["mimeType"], "application/json", "{read}");
        let report: Value = serde_json::from_str(contents["text"].as_str().unwrap()).unwrap();
        assert_eq!(report["rows"], 2 * POINTS_ROWS as u64);
        assert_eq!(report["files"], 2);
        assert_eq!(report["columns"].as_array().unwrap().len(), 3);
        for (id, uri) in [
            (6, "mlinfra://datasets/link.parquet"),
            (7, "mlinfra://datasets/..%2Fsecret.parquet"),
            (8, "mlinfra://datasets/../secret.parquet"),
            (9, "file:///etc/passwd"),
            (10, "mlinfra://datasets/missing.parquet"),
        ] {
            let refused = ask(id, "resources/read", json!({"uri": uri})).await;
            assert_eq!(refused["error"]["code"], -32602, "{uri}: {refused}");
            assert_eq!(refused["error"]["data"]["uri"], uri, "{refused}");
        }
        let templates = ask(11, "resources/templates/list", json!({})).await;
        assert_eq!(
            templates["result"]["resourceTemplates"][0]["uriTemplate"],
            "mlinfra://datasets/{+path}"
        );

        // The prompt: the schema embedded, then the instructions.
        let prompts = ask(12, "prompts/list", json!({})).await;
        assert_eq!(prompts["result"]["prompts"][0]["name"], "explore_dataset");
        let prompt = ask(
            13,
            "prompts/get",
            json!({"name": "explore_dataset", "arguments": {"path": "points.parquet"}}),
        )
        .await;
        let messages = &prompt["result"]["messages"];
        let embedded = &messages[0]["content"]["resource"];
        assert_eq!(
            embedded["uri"], "mlinfra://datasets/points.parquet",
            "{prompt}"
        );
        let schema: Value = serde_json::from_str(embedded["text"].as_str().unwrap()).unwrap();
        assert_eq!(schema["rows"], POINTS_ROWS as u64);
        assert!(
            messages[1]["content"]["text"]
                .as_str()
                .unwrap()
                .contains("dataset_sample")
        );
        let outside = ask(
            14,
            "prompts/get",
            json!({"name": "explore_dataset", "arguments": {"path": "../secret.parquet"}}),
        )
        .await;
        assert_eq!(outside["error"]["code"], -32602, "{outside}");

        // Completion of a partly typed path, for the prompt and for the template.
        let complete = |id: i64, reference: Value, typed: &str| {
            request(
                id,
                "completion/complete",
                json!({"ref": reference, "argument": {"name": "path", "value": typed}}),
            )
        };
        let prompt_ref = json!({"type": "ref/prompt", "name": "explore_dataset"});
        let template_ref = json!({"type": "ref/resource", "uri": "mlinfra://datasets/{+path}"});
        let reply = pipe.reply(complete(15, prompt_ref.clone(), "sh")).await;
        assert_eq!(reply["result"]["completion"]["values"], json!(["shards"]));
        let reply = pipe.reply(complete(16, template_ref, "n")).await;
        assert_eq!(
            reply["result"]["completion"]["values"],
            json!(["nested/deeper"])
        );
        let reply = pipe.reply(complete(17, prompt_ref, "")).await;
        let completion = &reply["result"]["completion"];
        assert_eq!(
            completion["values"].as_array().unwrap().len(),
            100,
            "{completion}"
        );
        assert_eq!(completion["total"], 153);
        assert_eq!(completion["hasMore"], true);

        pipe.close().await;
    });
}

/// The next `notifications/resources/updated` on `pipe` within `wait`, if any.
async fn next_update(pipe: &mut Pipe, wait: std::time::Duration) -> Option<Value> {
    use tokio::io::AsyncBufReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut line = String::new();
        match tokio::time::timeout_at(deadline, pipe.reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {
                let message: Value = serde_json::from_str(&line).unwrap();
                if message["method"] == "notifications/resources/updated" {
                    return Some(message);
                }
            }
            _ => return None,
        }
    }
}

#[test]
fn a_subscribed_dataset_notifies_when_its_files_change() {
    let fixture = Fixture::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut pipe = Pipe::open(fixture.server()).await;
        assert_eq!(
            pipe.hello["result"]["capabilities"]["resources"]["subscribe"], true,
            "{}",
            pipe.hello
        );
        let uri = "mlinfra://datasets/points.parquet";
        let ok = pipe
            .reply(request(2, "resources/subscribe", json!({"uri": uri})))
            .await;
        assert!(ok["result"].is_object(), "{ok}");
        for (id, missing) in [
            (3, "mlinfra://datasets/missing.parquet"),
            (4, "mlinfra://datasets/../secret.parquet"),
            (5, "file:///etc/passwd"),
        ] {
            let refused = pipe
                .reply(request(id, "resources/subscribe", json!({"uri": missing})))
                .await;
            assert!(refused["error"]["code"].is_i64(), "{missing}: {refused}");
        }
        // Nothing changed: no update.
        let quiet = std::time::Duration::from_millis(1500);
        assert!(next_update(&mut pipe, quiet).await.is_none());

        // The file rewritten (other rows): an update for its URI.
        let points = fixture.root().join("points.parquet");
        let mut rows = std::fs::read(&points).unwrap();
        rows.extend_from_slice(b"appended");
        std::fs::write(&points, &rows).unwrap();
        let update = next_update(&mut pipe, std::time::Duration::from_secs(5))
            .await
            .expect("no update after the file changed");
        assert_eq!(update["params"]["uri"], uri);

        // Unsubscribed: changes go unannounced.
        let ok = pipe
            .reply(request(6, "resources/unsubscribe", json!({"uri": uri})))
            .await;
        assert!(ok["result"].is_object(), "{ok}");
        rows.extend_from_slice(b"more");
        std::fs::write(&points, &rows).unwrap();
        assert!(next_update(&mut pipe, quiet).await.is_none());
        pipe.close().await;
    });
}
