//! Progress and approval in the product's tools: `train_wait` streams progress notifications
//! for a running job; `job_delete` deletes only after the user says yes through elicitation
//! (a request to the client in a 2025-11-25 session, an `input_required` round trip in
//! 2026-07-28), and never when the client cannot ask.

use std::time::Duration;

use mlinfra_agent::serve_io;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::{Fixture, call};
use crate::jobs::teacher_parquet;

/// A client over a pipe that answers the server's elicitation requests with `answer`.
pub struct Client<R, W> {
    reader: BufReader<R>,
    writer: W,
    /// Progress notifications seen, in order.
    progress: Vec<Value>,
    /// Elicitation requests seen.
    pub asked: Vec<Value>,
}

impl<R: tokio::io::AsyncRead + Unpin, W: tokio::io::AsyncWrite + Unpin> Client<R, W> {
    async fn send(&mut self, message: &Value) {
        self.writer
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        self.writer.flush().await.unwrap();
    }

    /// Sends `request` and returns the response to it, answering elicitations with `answer`.
    pub async fn request(&mut self, request: Value, answer: &Value) -> Value {
        let id = request["id"].clone();
        self.send(&request).await;
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(120), self.reader.read_line(&mut line))
                    .await
                    .expect("an answer within 120 s")
                    .unwrap();
            assert!(read > 0, "the server closed the pipe");
            let message: Value = serde_json::from_str(&line).unwrap();
            match message["method"].as_str() {
                Some("notifications/progress") => self.progress.push(message["params"].clone()),
                Some("elicitation/create") => {
                    self.asked.push(message["params"].clone());
                    let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": answer});
                    self.send(&reply).await;
                }
                _ if message["id"] == id => return message,
                _ => {}
            }
        }
    }
}

fn initialize(capabilities: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": capabilities,
        "clientInfo": {"name": "mlinfra-tests", "version": "0"}}})
}

/// A server with jobs, on a pipe, and a client initialized with `capabilities`.
pub async fn connect(
    fixture: &Fixture,
    capabilities: Value,
) -> Client<
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
> {
    let server = fixture
        .server()
        .with_state(fixture.base.path().join("state"))
        .unwrap();
    let (client, server_end) = tokio::io::duplex(1 << 20);
    let (server_read, server_write) = tokio::io::split(server_end);
    tokio::spawn(serve_io(server, server_read, server_write));
    let (read, writer) = tokio::io::split(client);
    let mut client = Client {
        reader: BufReader::new(read),
        writer,
        progress: Vec::new(),
        asked: Vec::new(),
    };
    let hello = client.request(initialize(capabilities), &Value::Null).await;
    assert!(hello["result"]["serverInfo"].is_object(), "{hello}");
    client
        .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    client
}

pub fn train_config() -> Value {
    json!({"task": "classifier", "train": "train.parquet", "classes": 4, "hidden": [16],
           "epochs": 20, "batch": 32, "lr": 0.01, "checkpoint_every": 40})
}

#[test]
fn train_wait_reports_progress_and_job_delete_asks_the_user_first() {
    let fixture = Fixture::new();
    teacher_parquet(&fixture.root().join("train.parquet"), 512, 3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = connect(&fixture, json!({"elicitation": {}})).await;
        let none = Value::Null;
        let started = client
            .request(
                call(2, "train_start", json!({"config": train_config()})),
                &none,
            )
            .await;
        let job = started["result"]["structuredContent"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let total = started["result"]["structuredContent"]["total_steps"]
            .as_u64()
            .unwrap();
        assert_eq!(total, 512 / 32 * 20);

        let mut wait = call(3, "train_wait", json!({"job": job, "timeout_s": 120}));
        wait["params"]["_meta"] = json!({"progressToken": "t1"});
        let waited = client.request(wait, &none).await;
        assert_eq!(
            waited["result"]["structuredContent"]["state"], "completed",
            "{waited}"
        );
        let steps: Vec<f64> = client
            .progress
            .iter()
            .map(|p| {
                assert_eq!(p["progressToken"], "t1");
                assert_eq!(p["total"].as_f64(), Some(total as f64));
                p["progress"].as_f64().unwrap()
            })
            .collect();
        assert!(
            !steps.is_empty() && steps.windows(2).all(|w| w[0] < w[1]),
            "{steps:?}"
        );
        assert_eq!(
            *steps.last().unwrap(),
            total as f64,
            "the last notification is the last step"
        );

        // A "no" keeps the job.
        let decline = json!({"action": "decline"});
        let kept = client
            .request(call(4, "job_delete", json!({"job": job})), &decline)
            .await;
        assert_eq!(kept["result"]["isError"], true, "{kept}");
        assert!(
            kept["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("declined")
        );
        assert_eq!(client.asked.len(), 1);
        let question = client.asked[0]["message"].as_str().unwrap();
        assert!(
            question.contains(&job) && question.contains("cannot be undone"),
            "{question}"
        );
        let unticked = json!({"action": "accept", "content": {"approve": false}});
        let kept = client
            .request(call(5, "job_delete", json!({"job": job})), &unticked)
            .await;
        assert_eq!(kept["result"]["isError"], true, "{kept}");
        let status = client
            .request(call(6, "train_status", json!({"job": job})), &none)
            .await;
        assert_eq!(status["result"]["structuredContent"]["state"], "completed");

        // A "yes" deletes it, checkpoints and all.
        let yes = json!({"action": "accept", "content": {"approve": true}});
        let deleted = client
            .request(call(7, "job_delete", json!({"job": job})), &yes)
            .await;
        assert_eq!(
            deleted["result"]["structuredContent"]["job"],
            job.as_str(),
            "{deleted}"
        );
        assert!(
            deleted["result"]["structuredContent"]["checkpoints"]
                .as_u64()
                .unwrap()
                >= 1
        );
        let gone = client
            .request(call(8, "train_status", json!({"job": job})), &none)
            .await;
        assert_eq!(gone["result"]["isError"], true);
        assert!(!fixture.base.path().join("state/jobs").join(&job).exists());
    });
}

#[test]
fn job_delete_is_refused_when_the_client_cannot_ask() {
    let fixture = Fixture::new();
    teacher_parquet(&fixture.root().join("train.parquet"), 256, 3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = connect(&fixture, json!({})).await;
        let none = Value::Null;
        let started = client
            .request(
                call(2, "train_start", json!({"config": train_config()})),
                &none,
            )
            .await;
        let job = started["result"]["structuredContent"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        client
            .request(call(3, "train_wait", json!({"job": job})), &none)
            .await;
        let refused = client
            .request(call(4, "job_delete", json!({"job": job})), &none)
            .await;
        assert_eq!(refused["result"]["isError"], true, "{refused}");
        assert!(
            refused["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("cannot ask")
        );
        assert!(client.asked.is_empty());
        assert!(
            fixture
                .base
                .path()
                .join("state/jobs")
                .join(&job)
                .join("job.json")
                .is_file()
        );
    });
}
