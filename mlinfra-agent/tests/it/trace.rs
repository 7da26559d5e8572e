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
    runtime.block_on(server.shutdown()).unwrap();

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
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
