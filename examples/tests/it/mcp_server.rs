//! `mcp_server`'s contract: stdio by default, `--data-root` confining the tools, the
//! `dataset_*` tool names and arguments other tools call; `--http ADDR` serving the same tools
//! over Streamable HTTP; bad flags exit 2.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::example;

/// A data root with `t.parquet` (columns `a`, `b`; 3 rows).
fn data_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "a,b\n1,x\n2,y\n3,z\n").unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    mlinfra_data::convert::Conversion::csv(&csv)
        .write(dir.path().join("data/t.parquet"))
        .unwrap();
    dir
}

#[test]
fn stdio_serves_the_dataset_tools_under_the_data_root() {
    let dir = data_root();
    let mut child = example("mcp_server")
        .args(["--data-root", dir.path().join("data").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut send = |message: Value| writeln!(stdin, "{message}").unwrap();
    let mut receive = || -> Value {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "examples-test", "version": "0"}}}),
    );
    assert_eq!(receive()["result"]["serverInfo"]["name"], "mlinfra-agent");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let call = |id: i64, name: &str, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}})
    };
    send(call(
        2,
        "dataset_sample",
        json!({"path": "t.parquet", "rows": 2}),
    ));
    let sample = receive();
    assert_eq!(
        sample["result"]["structuredContent"]["rows"],
        json!([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]),
        "{sample}"
    );
    send(call(3, "dataset_schema", json!({"path": "t.parquet"})));
    assert_eq!(receive()["result"]["structuredContent"]["rows"], 3);
    send(call(4, "dataset_fingerprint", json!({"path": "t.parquet"})));
    let fingerprint = receive();
    assert!(
        fingerprint["result"]["structuredContent"]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("blake3:")),
        "{fingerprint}"
    );
    // The CSV beside the data root is out of reach.
    send(call(5, "dataset_schema", json!({"path": "../t.csv"})));
    assert_eq!(receive()["result"]["isError"], true);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn bad_flags_and_a_missing_root_exit_2() {
    for args in [
        vec!["--http", "not-an-address"],
        vec!["--data-root", "/no/such/dir"],
        vec!["--frobnicate"],
    ] {
        let status = example("mcp_server")
            .args(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}
