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
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
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

/// An MCP client of `mcp_server` over stdio: a child process, one JSON-RPC line each way.
struct StdioClient {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    next_id: i64,
}

impl StdioClient {
    fn spawn(data_root: &std::path::Path, state_dir: &std::path::Path, more: &[&str]) -> Self {
        let mut child = example("mcp_server")
            .args(["--data-root", data_root.to_str().unwrap()])
            .args(["--state-dir", state_dir.to_str().unwrap()])
            .args(more)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut client = Self {
            child,
            stdin,
            stdout,
            next_id: 1,
        };
        let hello = client.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25",
            "capabilities": {}, "clientInfo": {"name": "examples-test", "version": "0"}}),
        );
        assert_eq!(hello["serverInfo"]["name"], "mlinfra-agent");
        writeln!(
            client.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )
        .unwrap();
        client
    }

    /// The result of `method` (notifications before it are skipped).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        writeln!(
            self.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        )
        .unwrap();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the server closed stdout"
            );
            let reply: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// A tool's structured result; a tool error fails the test with its text.
    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let result = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        assert_ne!(result["isError"], true, "{tool}: {result}");
        result["structuredContent"].clone()
    }
}

/// A classification dataset (`features`: 8 floats, `label`: 0..4) at `path`.
fn classification_parquet(path: &std::path::Path, rows: usize) {
    use std::sync::Arc;

    use arrow::array::{FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    let mut rng = mlinfra_test_utils::rng::SplitMix64::new(5);
    let x = rng.vec_f32(rows * 8, -1.0, 1.0);
    // The label is the quadrant of the first two features: learnable.
    let labels: Vec<i64> = x
        .chunks_exact(8)
        .map(|r| i64::from(r[0] > 0.0) * 2 + i64::from(r[1] > 0.0))
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("features", DataType::FixedSizeList(item.clone(), 8), false),
        Field::new("label", DataType::Int64, false),
    ]));
    let features = FixedSizeListArray::new(item, 8, Arc::new(Float32Array::from(x)), None);
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(features), Arc::new(Int64Array::from(labels))],
    )
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Polls `train_status` until `done` holds (60 s at most).
fn poll(client: &mut StdioClient, job: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = client.call("train_status", json!({"job": job}));
        if done(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {status}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_training_job_survives_kill_9_of_the_server_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    classification_parquet(&data.join("train.parquet"), 2048);
    let state = dir.path().join("state");

    let mut server = StdioClient::spawn(&data, &state, &[]);
    let config = json!({"task": "classifier", "train": "train.parquet", "classes": 4,
        "hidden": [32], "epochs": 60, "batch": 32, "lr": 0.01, "checkpoint_every": 25});
    let started = server.call("train_start", json!({"config": config}));
    let job = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["state"], "running");
    assert_eq!(started["total_steps"], 2048 / 32 * 60);
    let running = poll(&mut server, &job, |s| {
        s["checkpoints"].as_array().is_some_and(|c| !c.is_empty())
    });
    assert_eq!(running["state"], "running", "{running}");
    server.child.kill().unwrap(); // SIGKILL: no chance to record anything
    server.child.wait().unwrap();

    let mut server = StdioClient::spawn(&data, &state, &[]);
    let after = server.call("train_status", json!({"job": job}));
    assert_eq!(after["state"], "interrupted", "{after}");
    let checkpoints = after["checkpoints"].as_array().unwrap().clone();
    assert!(!checkpoints.is_empty(), "{after}");
    assert!(after["step"].as_u64().unwrap() >= checkpoints[0].as_u64().unwrap());
    let listed = server.call("train_list", json!({}));
    assert_eq!(listed["jobs"][0]["id"], job.as_str());

    server.call("train_resume", json!({"job": job}));
    let done = poll(&mut server, &job, |s| s["state"] != "running");
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["outcome"]["steps"], 2048 / 32 * 60);
    assert_eq!(done["outcome"]["resumed_from"], checkpoints[0], "{done}");
    assert_eq!(done["launches"], 2);
    drop(server.stdin);
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn generate_answers_with_the_model_given_by_flag() {
    let Some(model) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = model.to_str().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut server = StdioClient::spawn(
        &data,
        &dir.path().join("state"),
        &["--model", model, "--threads", "2"],
    );
    let generation = server.call(
        "generate",
        json!({"prompt": "The capital of France is", "max_tokens": 6}),
    );
    assert_eq!(generation["completion_tokens"], 6, "{generation}");
    assert_eq!(generation["prompt_tokens"], 5);
    assert!(!generation["text"].as_str().unwrap().is_empty());
    drop(server.stdin);
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn a_state_directory_inside_the_data_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = example("mcp_server")
        .args(["--data-root", dir.path().to_str().unwrap()])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("inside it"), "{stderr}");
}
