//! The newline-delimited transport (stdio's framing, here over an in-memory pipe): the
//! handshake and a tool call, then hostile lines, each answered with exactly one well-formed
//! JSON-RPC error (or a tool error), and the server still answering afterwards.

use std::time::Duration;

use mlinfra_agent::serve_io;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{Fixture, POINTS_ROWS, call, exchange, initialize};

/// What else the server writes within half a second.
async fn drain(reader: &mut (impl AsyncBufReadExt + Unpin)) -> Vec<Value> {
    let mut replies = Vec::new();
    let mut line = String::new();
    while let Ok(Ok(read)) =
        tokio::time::timeout(Duration::from_millis(500), reader.read_line(&mut line)).await
    {
        if read == 0 {
            break;
        }
        replies.push(serde_json::from_str(&line).expect("JSON"));
        line.clear();
    }
    replies
}

#[test]
fn hostile_lines_get_errors_and_the_server_keeps_answering() {
    let fixture = Fixture::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, server_end) = tokio::io::duplex(1 << 20);
        let (server_read, server_write) = tokio::io::split(server_end);
        let server = tokio::spawn(serve_io(fixture.server(), server_read, server_write));
        let (client_read, mut writer) = tokio::io::split(client);
        let mut reader = BufReader::new(client_read);

        let replies = exchange(&mut writer, &mut reader, &[initialize(1).to_string()], 1).await;
        assert_eq!(replies[0]["result"]["protocolVersion"], "2025-11-25");
        let lines = [
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
            call(2, "dataset_sample", json!({"path": "points.parquet", "rows": 100})).to_string(),
        ];
        let replies = exchange(&mut writer, &mut reader, &lines, 2).await;
        let rows = &replies.last().unwrap()["result"]["structuredContent"]["rows"];
        assert_eq!(rows.as_array().unwrap().len(), POINTS_ROWS, "{replies:?}");

        let ping = |id: i64| json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string();
        let hostile = [
            ("malformed JSON", "{\"jsonrpc\": \"2.0\", \"id\": 9, \"method\"".to_owned()),
            ("not an object", "[1, 2, 3]".to_owned()),
            ("a JSON-RPC batch", format!("[{}, {}]", ping(90), ping(91))),
            ("a null id", json!({"jsonrpc": "2.0", "id": null, "method": "ping"}).to_string()),
            ("no such method", json!({"jsonrpc": "2.0", "id": 92, "method": "tools/destroy"}).to_string()),
            ("the wrong JSON-RPC version", json!({"jsonrpc": "1.0", "id": 93, "method": "ping"}).to_string()),
            ("a 4 MB line", format!("{{\"jsonrpc\":\"2.0\",\"id\":94,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}", "x".repeat(4 << 20))),
            // Schema bombs: arguments nested past any parser's stack, or wide past any schema.
            (
                "arguments nested 100000 deep",
                format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":96,\"method\":\"tools/call\",\"params\":{{\"name\":\"dataset_schema\",\"arguments\":{{\"path\":{}{}}}}}}}",
                    "[".repeat(100_000),
                    "]".repeat(100_000)
                ),
            ),
            (
                "an arguments object with 100000 keys",
                call(97, "dataset_schema", Value::Object((0..100_000).map(|i| (format!("k{i}"), json!(i))).collect())).to_string(),
            ),
            (
                "a number past f64",
                r#"{"jsonrpc":"2.0","id":98,"method":"tools/call","params":{"name":"dataset_sample","arguments":{"path":"points.parquet","rows":1e400}}}"#.to_owned(),
            ),
            ("a 1 MB tool name", call(99, &"x".repeat(1 << 20), json!({})).to_string()),
            (
                "shell metacharacters in a path",
                call(95, "dataset_schema", json!({"path": "points.parquet; rm -rf / $(reboot) `id`"})).to_string(),
            ),
        ];
        for (what, line) in &hostile {
            let mut replies =
                exchange(&mut writer, &mut reader, &[line.clone(), ping(100)], 100).await;
            // Requests are served concurrently: an answer may come after the ping's.
            replies.extend(drain(&mut reader).await);
            let answers: Vec<&Value> = replies.iter().filter(|r| r["id"] != 100).collect();
            assert_eq!(answers.len(), 1, "{what}: {replies:?}");
            assert!(
                answers[0]["error"]["code"].is_i64() || answers[0]["result"]["isError"] == true,
                "{what}: {}",
                answers[0]
            );
        }
        drop(writer);
        drop(reader);
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    });
}

#[tokio::test]
async fn tools_are_listed_in_pages_by_name() {
    let fixture = Fixture::new();
    let mut pipe = crate::common::Pipe::open(fixture.server()).await;
    let mut names: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let params = match &cursor {
            Some(cursor) => json!({"cursor": cursor}),
            None => json!({}),
        };
        let page = pipe
            .result(json!({"jsonrpc": "2.0", "id": 10 + pages, "method": "tools/list", "params": params}))
            .await;
        let tools = page["tools"].as_array().unwrap();
        assert!(tools.len() <= mlinfra_agent::TOOLS_PAGE, "{page}");
        names.extend(tools.iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        pages += 1;
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(pages >= 2, "{} tools fit one page", names.len());
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "pages in name order, no tool twice");
    for contract in [
        "dataset_schema",
        "dataset_sample",
        "dataset_fingerprint",
        "train_start",
        "train_status",
        "generate",
    ] {
        assert!(
            names.iter().any(|n| n == contract),
            "{contract} not listed: {names:?}"
        );
    }
    let bad = pipe
        .reply(json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list", "params": {"cursor": "no-such-tool"}}))
        .await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    pipe.close().await;
}
