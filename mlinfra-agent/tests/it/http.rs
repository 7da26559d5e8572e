//! Streamable HTTP: both protocol eras end to end with the dataset tools, and the security
//! settings (Host, Origin, body size, bearer token) refusing what they must while the server
//! stays up.

use mlinfra_agent::{HttpOptions, MCP_PATH, serve_http};
use mlinfra_test_utils::http::{Response, request_with};
use serde_json::{Value, json};

use crate::common::{Fixture, POINTS_ROWS, call, initialize, messages, response};

const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");

fn post(address: std::net::SocketAddr, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut all = vec![ACCEPT];
    all.extend_from_slice(headers);
    request_with(address, "POST", MCP_PATH, &all, body.to_string().as_bytes())
}

/// A stateless (2026-07-28) request: the version in a header and in the request's `_meta`.
fn stateless(id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "mlinfra-tests", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Posts a stateless request with the headers 2026-07-28 asks for: the version, and the
/// method and (for a tool call) the tool's name mirrored from the body.
fn post_stateless(
    address: std::net::SocketAddr,
    headers: &[(&str, &str)],
    id: i64,
    method: &str,
    params: Value,
) -> Response {
    let name = params["name"].as_str().map(str::to_owned);
    let mut all = vec![
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
    ];
    if let Some(name) = &name {
        all.push(("Mcp-Name", name));
    }
    all.extend_from_slice(headers);
    post(address, &all, &stateless(id, method, params))
}

#[test]
fn both_eras_list_and_call_the_dataset_tools() {
    let fixture = Fixture::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(serve_http(fixture.server(), HttpOptions::default()))
        .unwrap();
    let address = server.address();

    // 2025-11-25: initialize, a session id, then calls within the session.
    let reply = post(address, &[], &initialize(1));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let session = reply
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no session id: {:?}", reply.headers))
        .to_owned();
    let init = response(&messages(&reply.body), 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "mlinfra-agent");
    let in_session = [
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let notified = post(
        address,
        &in_session,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(notified.status, 202, "{}", notified.body);

    let list = post(
        address,
        &in_session,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    let tools = response(&messages(&list.body), 2);
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for name in ["dataset_schema", "dataset_sample", "dataset_fingerprint"] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    let sample_tool = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "dataset_sample")
        .unwrap();
    assert_eq!(
        sample_tool["inputSchema"]["properties"]["rows"]["type"], "integer",
        "{sample_tool}"
    );
    assert!(
        sample_tool["outputSchema"]["properties"]["rows"].is_object(),
        "{sample_tool}"
    );

    let schema = post(
        address,
        &in_session,
        &call(3, "dataset_schema", json!({"path": "points.parquet"})),
    );
    let schema = response(&messages(&schema.body), 3);
    let report = &schema["result"]["structuredContent"];
    assert_eq!(report["rows"], POINTS_ROWS as u64, "{schema}");
    let columns: Vec<(&str, &str)> = report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["data_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [("id", "Int64"), ("label", "Utf8"), ("score", "Float64")]
    );
    assert_ne!(schema["result"]["isError"], true);

    // 2026-07-28: no handshake, each request stands alone.
    let sample = post_stateless(
        address,
        &[],
        4,
        "tools/call",
        json!({"name": "dataset_sample", "arguments": {"path": "points.parquet", "rows": 3}}),
    );
    assert_eq!(sample.status, 200, "{}", sample.body);
    let sample = response(&messages(&sample.body), 4);
    let rows = &sample["result"]["structuredContent"]["rows"];
    assert_eq!(
        rows,
        &json!([
            {"id": 0, "label": "item-0", "score": 0.0},
            {"id": 1, "label": "item-1", "score": 0.5},
            {"id": 2, "label": "item-2", "score": 1.0}
        ]),
        "{sample}"
    );

    let fingerprint = post_stateless(
        address,
        &[],
        5,
        "tools/call",
        json!({"name": "dataset_fingerprint", "arguments": {"path": "points.parquet"}}),
    );
    let fingerprint = response(&messages(&fingerprint.body), 5);
    let expected =
        mlinfra_data::Dataset::open(fixture.root().join("points.parquet").to_str().unwrap())
            .unwrap()
            .fingerprint()
            .unwrap()
            .to_owned();
    assert_eq!(
        fingerprint["result"]["structuredContent"]["fingerprint"],
        expected.as_str()
    );

    // A tool failure is a result with isError, not a protocol error; the file outside the
    // root is never read.
    let secret = fixture.secret();
    for path in ["../secret.parquet", secret.to_str().unwrap()] {
        let refused = post(
            address,
            &in_session,
            &call(6, "dataset_sample", json!({"path": path})),
        );
        let refused = response(&messages(&refused.body), 6);
        assert_eq!(refused["result"]["isError"], true, "{refused}");
        let text = refused["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("refused"), "{text}");
        assert!(!text.contains("item-0"), "{text}");
    }
    let out_of_range = post(
        address,
        &in_session,
        &call(
            7,
            "dataset_sample",
            json!({"path": "points.parquet", "rows": 0}),
        ),
    );
    let out_of_range = response(&messages(&out_of_range.body), 7);
    assert_eq!(out_of_range["result"]["isError"], true, "{out_of_range}");
    // An unknown tool is a protocol error.
    let unknown = post(address, &in_session, &call(8, "rm_rf", json!({})));
    assert!(
        response(&messages(&unknown.body), 8)["error"]["code"].is_i64(),
        "{}",
        unknown.body
    );
    // Arguments off the schema are a tool error the model can correct (the 2025-11-25
    // revision's rule), naming what was wrong.
    let wrong = post(
        address,
        &in_session,
        &call(9, "dataset_sample", json!({"path": 7})),
    );
    let wrong = response(&messages(&wrong.body), 9);
    assert_eq!(wrong["result"]["isError"], true, "{wrong}");
    assert!(
        wrong["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{wrong}"
    );

    runtime.block_on(server.shutdown()).unwrap();
}

#[test]
fn foreign_hosts_origins_big_bodies_and_missing_tokens_are_refused_and_the_server_stays_up() {
    let fixture = Fixture::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = HttpOptions {
        max_body_bytes: 64 << 10,
        bearer_token: Some("s3cret-token".into()),
        allowed_origins: vec!["http://localhost:*".into()],
        ..HttpOptions::default()
    };
    let server = runtime
        .block_on(serve_http(fixture.server(), options))
        .unwrap();
    let address = server.address();
    let auth = ("Authorization", "Bearer s3cret-token");

    for (what, headers, status) in [
        ("no token", vec![], 401),
        (
            "a wrong token",
            vec![("Authorization", "Bearer s3cret-tokem")],
            401,
        ),
        (
            "a longer token",
            vec![("Authorization", "Bearer s3cret-token-and-more")],
            401,
        ),
        (
            "a foreign Host (DNS rebinding)",
            vec![auth, ("Host", "evil.example:80")],
            403,
        ),
        (
            "a foreign Origin",
            vec![auth, ("Origin", "http://evil.example")],
            403,
        ),
    ] {
        let reply = post(address, &headers, &initialize(1));
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
    }
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(100 << 10)}});
    assert_eq!(post(address, &[auth], &big).status, 413);

    // The server's own origin (the conformance suite's same-origin check), the allowed
    // origin and the token get through, and the server is still up.
    let own = format!("http://{address}");
    let reply = post(address, &[auth, ("Origin", own.as_str())], &initialize(1));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = post(
        address,
        &[auth, ("Origin", "http://localhost:3000")],
        &initialize(1),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = post_stateless(address, &[auth], 2, "tools/list", json!({}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        response(&messages(&reply.body), 2)["result"]["tools"].is_array(),
        "{}",
        reply.body
    );
    runtime.block_on(server.shutdown()).unwrap();
}

#[test]
fn an_empty_token_and_an_open_bind_without_a_token_are_refused_and_the_scheme_is_case_blind() {
    let fixture = Fixture::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for options in [
        HttpOptions {
            bearer_token: Some(String::new()),
            ..HttpOptions::default()
        },
        HttpOptions {
            bind: "0.0.0.0:0".parse().unwrap(),
            ..HttpOptions::default()
        },
    ] {
        let what = format!("{options:?}");
        let result = runtime.block_on(serve_http(fixture.server(), options));
        assert!(
            matches!(result, Err(mlinfra_agent::Error::Transport { .. })),
            "{what}: {result:?}"
        );
    }
    let options = HttpOptions {
        bearer_token: Some("tok".into()),
        ..HttpOptions::default()
    };
    let server = runtime
        .block_on(serve_http(fixture.server(), options))
        .unwrap();
    let reply = post(
        server.address(),
        &[("Authorization", "bearer tok")],
        &initialize(1),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = post(
        server.address(),
        &[("Authorization", "Bearer ")],
        &initialize(1),
    );
    assert_eq!(reply.status, 401, "{}", reply.body);
    runtime.block_on(server.shutdown()).unwrap();
}

#[test]
fn a_csv_becomes_parquet_under_the_root_and_verifies_against_its_fingerprint() {
    let fixture = Fixture::new();
    std::fs::write(fixture.root().join("new.csv"), "x,y\n1,a\n2,b\n").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(serve_http(fixture.server(), HttpOptions::default()))
        .unwrap();
    let address = server.address();
    let call = |id: i64, tool: &str, arguments: Value| -> Value {
        let reply = post_stateless(
            address,
            &[],
            id,
            "tools/call",
            json!({"name": tool, "arguments": arguments}),
        );
        response(&messages(&reply.body), id)["result"].clone()
    };
    let converted = call(
        1,
        "dataset_convert",
        json!({"input": "new.csv", "output": "out/new.parquet"}),
    );
    // `out/` does not exist: the directory must already be under the root.
    assert_eq!(converted["isError"], true, "{converted}");
    let converted = call(
        2,
        "dataset_convert",
        json!({"input": "new.csv", "output": "new.parquet"}),
    );
    assert_eq!(converted["structuredContent"]["rows"], 2, "{converted}");
    assert_eq!(
        converted["structuredContent"]["columns"][1],
        json!({"name": "y", "data_type": "Utf8", "nullable": true})
    );
    let sample = call(
        3,
        "dataset_sample",
        json!({"path": "new.parquet", "rows": 5}),
    );
    assert_eq!(
        sample["structuredContent"]["rows"],
        json!([{"x": 1, "y": "a"}, {"x": 2, "y": "b"}])
    );

    let fingerprint = call(4, "dataset_fingerprint", json!({"path": "new.parquet"}));
    let fingerprint = fingerprint["structuredContent"]["fingerprint"].clone();
    let verified = call(
        5,
        "dataset_verify",
        json!({"path": "new.parquet", "fingerprint": fingerprint}),
    );
    assert_eq!(verified["structuredContent"]["matches"], true, "{verified}");
    let verified = call(
        6,
        "dataset_verify",
        json!({"path": "points.parquet", "fingerprint": fingerprint}),
    );
    assert_eq!(
        verified["structuredContent"]["matches"], false,
        "{verified}"
    );

    // Never overwrite, never outside the root, only Parquet names, only CSV/JSON-lines input.
    for (id, input, output) in [
        (7, "new.csv", "new.parquet"),
        (8, "new.csv", "points.parquet"),
        (9, "new.csv", "../escaped.parquet"),
        (10, "new.csv", "new.txt"),
        (11, "points.parquet", "again.parquet"),
        (12, "../points.csv", "stolen.parquet"),
    ] {
        let refused = call(
            id,
            "dataset_convert",
            json!({"input": input, "output": output}),
        );
        assert_eq!(refused["isError"], true, "{input} -> {output}: {refused}");
    }
    assert!(!fixture.base.path().join("escaped.parquet").exists());
    assert!(!fixture.root().join("stolen.parquet").exists());
    runtime.block_on(server.shutdown()).unwrap();
}

/// 2026-07-28 cannot send the client a request: `job_delete` asks through an
/// `input_required` result, and deletes on the retry that carries the user's yes.
#[test]
fn job_delete_asks_through_an_input_required_round_trip_when_stateless() {
    use std::sync::Arc;
    use std::time::Duration;

    use mlinfra_agent::DataRoot;
    use mlinfra_agent::jobs::{JobState, JobStore, TrainConfig};

    let fixture = Fixture::new();
    crate::jobs::teacher_parquet(&fixture.root().join("train.parquet"), 256, 3);
    let state = fixture.base.path().join("state");
    let config: TrainConfig = serde_json::from_value(json!({"task": "classifier",
        "train": "train.parquet", "classes": 4, "epochs": 2, "batch": 32}))
    .unwrap();
    let job = {
        let root = Arc::new(DataRoot::new(fixture.root()).unwrap());
        let store = Arc::new(JobStore::open(&state, root).unwrap());
        let id = store.start(config, None).unwrap().record.id;
        let done = store.wait(&id, Duration::from_secs(120)).unwrap();
        assert_eq!(done.record.state, JobState::Completed);
        id
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(serve_http(
            fixture.server().with_state(&state).unwrap(),
            HttpOptions::default(),
        ))
        .unwrap();
    let delete = |id: i64, extra: Value| {
        let mut params = json!({"name": "job_delete", "arguments": {"job": job}});
        if let Value::Object(extra) = extra {
            params.as_object_mut().unwrap().extend(extra);
        }
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "mlinfra-tests", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}
        });
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
        let headers = [
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "job_delete"),
        ];
        let reply = post(server.address(), &headers, &body);
        response(&messages(&reply.body), id)
    };
    let asked = delete(1, json!({}));
    let result = &asked["result"];
    assert_eq!(result["resultType"], "input_required", "{asked}");
    assert_eq!(
        result["inputRequests"]["approve"]["method"],
        "elicitation/create"
    );
    let sealed = result["requestState"]
        .as_str()
        .expect("a sealed question")
        .to_owned();
    assert!(
        state.join("jobs").join(&job).is_dir(),
        "nothing deleted before the answer"
    );
    let yes = json!({"approve": {"action": "accept", "content": {"approve": true}}});
    // A yes without the question it answers, or with an altered one, counts for nothing.
    for forged in [
        json!({"inputResponses": yes}),
        json!({"inputResponses": yes, "requestState": format!("{sealed}x")}),
    ] {
        let refused = delete(2, forged);
        assert_eq!(refused["result"]["isError"], true, "{refused}");
        assert!(state.join("jobs").join(&job).is_dir());
    }
    let no = delete(
        3,
        json!({"inputResponses": {"approve": {"action": "decline"}}, "requestState": sealed}),
    );
    assert_eq!(no["result"]["isError"], true, "{no}");
    assert!(state.join("jobs").join(&job).is_dir());
    let deleted = delete(4, json!({"inputResponses": yes, "requestState": sealed}));
    assert_eq!(
        deleted["result"]["structuredContent"]["job"],
        job.as_str(),
        "{deleted}"
    );
    assert!(!state.join("jobs").join(&job).exists());
}

#[test]
fn a_session_survives_a_restart_of_the_server_when_kept_on_disk() {
    let fixture = Fixture::new();
    let sessions = fixture.base.path().join("sessions");
    let options = || HttpOptions {
        session_dir: Some(sessions.clone()),
        ..HttpOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first = runtime
        .block_on(serve_http(fixture.server(), options()))
        .unwrap();
    let reply = post(first.address(), &[], &initialize(1));
    let session = reply.header("mcp-session-id").unwrap().to_owned();
    assert!(sessions.join(format!("{session}.json")).is_file());
    runtime.block_on(first.shutdown()).unwrap();

    // A new process (here: a new server on the same directory) knows the session.
    let second = runtime
        .block_on(serve_http(fixture.server(), options()))
        .unwrap();
    let in_session = [
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let called = post(
        second.address(),
        &in_session,
        &call(2, "dataset_schema", json!({"path": "points.parquet"})),
    );
    assert_eq!(called.status, 200, "{}", called.body);
    let result = response(&messages(&called.body), 2);
    assert_eq!(
        result["result"]["structuredContent"]["rows"], POINTS_ROWS,
        "{result}"
    );

    // Ids that are paths, or unknown, are not sessions; the server stays up.
    for id in ["../../etc/passwd", "nope", "a/b"] {
        let refused = post(
            second.address(),
            &[
                ("Mcp-Session-Id", id),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            &call(3, "dataset_schema", json!({"path": "points.parquet"})),
        );
        assert_eq!(refused.status, 404, "{id}: {}", refused.body);
    }

    // Ended by the client (DELETE): gone from disk too.
    let deleted = request_with(
        second.address(),
        "DELETE",
        MCP_PATH,
        &[
            ("Mcp-Session-Id", session.as_str()),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        b"",
    );
    assert!(deleted.status < 300, "{}", deleted.status);
    assert!(!sessions.join(format!("{session}.json")).exists());
    runtime.block_on(second.shutdown()).unwrap();
}

#[test]
fn a_stateless_listen_stream_carries_updates_of_the_datasets_it_names() {
    use std::io::{BufRead, BufReader, Write};
    let fixture = Fixture::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(serve_http(fixture.server(), HttpOptions::default()))
        .unwrap();
    let uri = "mlinfra://datasets/points.parquet";
    let body = stateless(
        1,
        "subscriptions/listen",
        json!({"notifications": {"resourceSubscriptions": [uri, "file:///etc/passwd"], "toolsListChanged": true}}),
    )
    .to_string();
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    write!(
        stream,
        "POST {MCP_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
         Mcp-Method: subscriptions/listen\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    // The SSE data lines, as JSON, until `pred` holds for one (10 s at most).
    let mut until = |pred: &dyn Fn(&Value) -> bool| -> Value {
        loop {
            let line = lines
                .next()
                .expect("stream ended")
                .expect("no event in time");
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(message) = serde_json::from_str::<Value>(data.trim())
                && pred(&message)
            {
                return message;
            }
        }
    };
    let acknowledged = until(&|m| m["method"] == "notifications/subscriptions/acknowledged");
    // Only datasets are accepted: not another scheme, not list changes that never come.
    assert_eq!(
        acknowledged["params"]["notifications"],
        json!({"resourceSubscriptions": [uri]}),
        "{acknowledged}"
    );
    let points = fixture.root().join("points.parquet");
    let mut bytes = std::fs::read(&points).unwrap();
    bytes.extend_from_slice(b"changed");
    std::fs::write(&points, bytes).unwrap();
    let update = until(&|m| m["method"] == "notifications/resources/updated");
    assert_eq!(update["params"]["uri"], uri);
    runtime.block_on(server.shutdown()).unwrap();
}
