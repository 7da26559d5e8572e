//! Every tool call leaves one JSONL trace line with the GenAI/MCP attributes: the tool's name,
//! the arguments' hash (not the arguments), the outcome and the error type.

use mlinfra_agent::trace::{JsonlTraceLayer, arguments_hash};
use mlinfra_agent::{HttpOptions, serve_http};
use mlinfra_test_utils::http::request_with;
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;

use crate::common::{Buffer, Fixture, call, initialize, messages, response};

#[test]
fn each_tool_call_is_one_trace_line_with_the_genai_attributes() {
    let fixture = Fixture::new();
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::registry().with(JsonlTraceLayer::new(buffer.clone()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The server's tasks run on the runtime's threads: the subscriber is the process default.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let server = runtime
        .block_on(serve_http(fixture.server(), HttpOptions::default()))
        .unwrap();
    let accept = ("Accept", "application/json, text/event-stream");
    let post = |headers: &[(&str, &str)], body: &Value| {
        let mut all = vec![accept];
        all.extend_from_slice(headers);
        request_with(
            server.address(),
            "POST",
            "/mcp",
            &all,
            body.to_string().as_bytes(),
        )
    };
    let reply = post(&[], &initialize(1));
    let session = reply.header("mcp-session-id").unwrap().to_owned();
    let in_session = [
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    post(
        &in_session,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    // Arguments no other test uses: the subscriber is process-wide and the other tests' calls
    // run beside this one, so lines are picked by their arguments' hash.
    let ok_args = json!({"path": "points.parquet", "rows": 7});
    let reply = post(&in_session, &call(2, "dataset_sample", ok_args.clone()));
    assert_eq!(
        response(&messages(&reply.body), 2)["result"]["isError"],
        false
    );
    let bad_args = json!({"path": "../trace-only-secret.parquet"});
    let reply = post(&in_session, &call(3, "dataset_schema", bad_args.clone()));
    assert_eq!(
        response(&messages(&reply.body), 3)["result"]["isError"],
        true
    );
    let reply = post(
        &in_session,
        &json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}),
    );
    assert!(response(&messages(&reply.body), 4)["result"].is_object());
    let reply = post(
        &in_session,
        &json!({"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": "mlinfra://datasets/../x"}}),
    );
    let read_error = response(&messages(&reply.body), 5)["error"]["code"].clone();
    assert!(read_error.is_i64(), "{}", reply.body);
    runtime.block_on(server.shutdown()).unwrap();

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    // Every request of this session is a span, a tool call's `execute_tool` its child.
    let requests: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| {
            line["name"] == "mcp_request"
                && line["attributes"]["mcp.session.id"] == session.as_str()
        })
        .collect();
    let methods: Vec<&str> = requests
        .iter()
        .map(|line| line["attributes"]["otel.name"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "tools/call dataset_sample",
            "tools/call dataset_schema",
            "ping",
            "resources/read"
        ],
        "{text}"
    );
    assert!(
        requests[..3]
            .iter()
            .all(|line| line["attributes"]["outcome"] == "ok")
    );
    assert_eq!(
        requests[1]["attributes"]["gen_ai.tool.name"],
        "dataset_schema"
    );
    assert_eq!(requests[2]["attributes"]["jsonrpc.request.id"], "4");
    assert_eq!(requests[3]["attributes"]["outcome"], "error");
    assert_eq!(requests[3]["attributes"]["error.type"], read_error);
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &Value| {
            let hash = &line["attributes"]["gen_ai.tool.call.arguments.hash"];
            *hash == arguments_hash(&ok_args).as_str()
                || *hash == arguments_hash(&bad_args).as_str()
        })
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.iter().all(|line| line["name"] == "execute_tool"));
    assert_eq!(lines[0]["parent_id"], requests[0]["span_id"], "{text}");
    assert_eq!(lines[1]["parent_id"], requests[1]["span_id"], "{text}");
    let ok = &lines[0]["attributes"];
    assert_eq!(ok["gen_ai.operation.name"], "execute_tool");
    assert_eq!(ok["gen_ai.tool.name"], "dataset_sample");
    assert_eq!(ok["mcp.method.name"], "tools/call");
    assert_eq!(ok["otel.name"], "execute_tool dataset_sample");
    assert_eq!(ok["outcome"], "ok");
    // The hash of the arguments as the tool parsed them (defaults filled in), not the text.
    assert_eq!(
        ok["gen_ai.tool.call.arguments.hash"],
        arguments_hash(&ok_args).as_str()
    );
    assert!(lines[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    let failed = &lines[1]["attributes"];
    assert_eq!(failed["gen_ai.tool.name"], "dataset_schema");
    assert_eq!(failed["outcome"], "tool_error");
    assert_eq!(failed["error.type"], "path_refused");
    assert_eq!(
        failed["gen_ai.tool.call.arguments.hash"],
        arguments_hash(&bad_args).as_str()
    );
    assert!(
        !text.contains("secret"),
        "arguments must not be in the trace: {text}"
    );
}

/// With the `otlp` feature (CI type-checks it; run with
/// `cargo test -p mlinfra-agent --features otlp --test it trace`): a span reaches a collector
/// as an OTLP/HTTP protobuf POST to the traces path, under its `otel.name`.
#[cfg(feature = "otlp")]
#[test]
fn spans_reach_an_otlp_collector() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let collector = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let (mut head, mut length) = (Vec::new(), 0usize);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head.push(line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        (head, body)
    });
    let (layer, provider) =
        mlinfra_agent::trace::otlp_layer(&endpoint, "mlinfra-agent-test").unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("execute_tool", otel.name = "execute_tool otlp_probe");
        span.in_scope(|| {});
    });
    provider.shutdown().unwrap();
    let (head, body) = collector.join().unwrap();
    assert!(head[0].starts_with("POST /v1/traces"), "{head:?}");
    assert!(
        head.iter()
            .any(|h| h.to_ascii_lowercase().contains("application/x-protobuf")),
        "{head:?}"
    );
    let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        find(b"execute_tool otlp_probe"),
        "span name not in the export"
    );
    assert!(
        find(b"mlinfra-agent-test"),
        "service.name not in the export"
    );
}
