//! What the transport tests share: a data root with one small Parquet dataset, a server on
//! it, and JSON-RPC messages pulled out of JSON or server-sent-event bodies.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlinfra_agent::{AgentServer, DataRoot};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Rows of the fixture dataset `points.parquet`.
pub const POINTS_ROWS: usize = 25;

/// A temporary data root holding `points.parquet` (columns `id`, `label`, `score`) and a
/// `secret.parquet` outside it.
pub struct Fixture {
    pub base: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let mut csv = String::from("id,label,score\n");
        for i in 0..POINTS_ROWS {
            csv.push_str(&format!("{i},item-{i},{}\n", i as f64 * 0.5));
        }
        let source = base.path().join("points.csv");
        std::fs::write(&source, csv).unwrap();
        mlinfra_data::convert::Conversion::csv(&source)
            .write(root.join("points.parquet"))
            .unwrap();
        std::fs::copy(
            root.join("points.parquet"),
            base.path().join("secret.parquet"),
        )
        .unwrap();
        Self { base }
    }

    pub fn root(&self) -> std::path::PathBuf {
        self.base.path().join("data")
    }

    pub fn server(&self) -> AgentServer {
        AgentServer::new(DataRoot::new(self.root()).unwrap())
    }

    pub fn secret(&self) -> std::path::PathBuf {
        self.base.path().join("secret.parquet")
    }
}

/// The JSON-RPC messages in an HTTP body: the body itself when JSON, else each SSE `data:`
/// line that is JSON.
pub fn messages(body: &str) -> Vec<Value> {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        return vec![value];
    }
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

/// The response to request `id` among `messages`.
pub fn response(messages: &[Value], id: i64) -> Value {
    messages
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no response to id {id} in {messages:?}"))
        .clone()
}

/// A `tools/call` request.
pub fn call(id: i64, tool: &str, arguments: Value) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}
    })
}

/// The initialize request of the 2025-11-25 era.
pub fn initialize(id: i64) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "mlinfra-tests", "version": "0"}
        }
    })
}

/// Writes `lines` to the server and collects what it answers until `until` (an id) arrives.
pub async fn exchange(
    writer: &mut (impl AsyncWriteExt + Unpin),
    reader: &mut (impl AsyncBufReadExt + Unpin),
    lines: &[String],
    until: i64,
) -> Vec<Value> {
    for line in lines {
        writer.write_all(line.as_bytes()).await.unwrap();
        writer.write_all(b"\n").await.unwrap();
    }
    writer.flush().await.unwrap();
    let mut replies = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .expect("the server answers within 30 s")
            .unwrap();
        assert!(read > 0, "the server closed the pipe; so far {replies:?}");
        let reply: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the server wrote a line that is not JSON ({e}): {line}"));
        let done = reply["id"] == until;
        replies.push(reply);
        if done {
            return replies;
        }
    }
}

/// A shared buffer the layer writes into.
#[derive(Clone, Default)]
pub struct Buffer(pub Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A client's ends of an in-memory pipe to a server run by `serve_io` on a spawned task,
/// past the 2025-11-25 handshake.
pub struct Pipe {
    /// The server's answer to `initialize`.
    pub hello: Value,
    pub reader: tokio::io::BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    pub writer: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    pub server: tokio::task::JoinHandle<mlinfra_agent::Result<()>>,
}

impl Pipe {
    /// Serves `server` on a pipe and initializes.
    pub async fn open(server: AgentServer) -> Self {
        let (client, server_end) = tokio::io::duplex(1 << 20);
        let (server_read, server_write) = tokio::io::split(server_end);
        let server = tokio::spawn(mlinfra_agent::serve_io(server, server_read, server_write));
        let (client_read, mut writer) = tokio::io::split(client);
        let mut reader = tokio::io::BufReader::new(client_read);
        let replies = exchange(&mut writer, &mut reader, &[initialize(1).to_string()], 1).await;
        Self {
            hello: replies.last().unwrap().clone(),
            reader,
            writer,
            server,
        }
    }

    /// Sends `request` (with an `id`) and returns the `result` of its response (`null` for an
    /// error response, which `reply` returns whole).
    pub async fn result(&mut self, request: Value) -> Value {
        self.reply(request).await["result"].clone()
    }

    /// Sends `request` and returns its response.
    pub async fn reply(&mut self, request: Value) -> Value {
        let id = request["id"].as_i64().expect("a request id");
        let replies = exchange(
            &mut self.writer,
            &mut self.reader,
            &[request.to_string()],
            id,
        )
        .await;
        replies.last().unwrap().clone()
    }

    /// Closes the client's end and waits (10 s at most) for the server to finish.
    pub async fn close(self) {
        let Self {
            reader,
            writer,
            server,
            ..
        } = self;
        drop((reader, writer));
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    }
}
