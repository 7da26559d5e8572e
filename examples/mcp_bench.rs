//! `mcp_bench`: tool-call round trips against any MCP server, over stdio or Streamable HTTP,
//! from a thin raw JSON-RPC client: the same client for every server measured, and one cheap
//! enough (std and serde_json, no async runtime, no SDK) that the server's cost is what shows.
//! benches/compare/mcp.sh drives mcp_conformance_server and a FastMCP peer with it.
//!
//! ```text
//! $ mcp_bench --stdio "target/release/examples/mcp_conformance_server --stdio" --calls 5000
//! {"transport":"stdio","calls":5000,"calls_per_s":...,"p50_us":...,"p99_us":...,"mean_us":...}
//! $ mcp_bench --http http://127.0.0.1:8931/mcp --calls 5000 --warmup 200
//! ```
//!
//! What it does: the 2025-11-25 `initialize` handshake and `notifications/initialized`, then
//! `--warmup` untimed and `--calls` timed `tools/call` requests of `--tool` (no arguments),
//! one in flight at a time. A round trip runs from writing the request to having parsed its
//! response; every response, warm-up included, must be a success whose first content block is
//! the text `--expect`: a call that fails is an error, never a counted call. `calls_per_s` is
//! the timed calls over the wall time of the timed loop; percentiles are nearest-rank.
//!
//! - stdio: `CMD ARGS...` is split on whitespace (no shell quoting) and spawned; requests and
//!   responses are newline-delimited JSON on its stdin and stdout, its stderr is inherited.
//!   Notifications the server sends between responses are skipped.
//! - HTTP: `http://HOST:PORT/PATH` only (no TLS), one HTTP/1.1 keep-alive connection with
//!   `TCP_NODELAY`, a POST per message carrying `Mcp-Session-Id` (from `initialize`) and
//!   `MCP-Protocol-Version`. Responses may be a JSON body or an SSE stream (the event whose
//!   data is the response with our id is taken), framed by `Content-Length` or chunked; a
//!   server that closes the connection is reconnected to (counted on stderr).
//!
//! Bad flags, a server that fails to start, or a wrong response print the error and exit
//! with status 2.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

const USAGE: &str = "usage: mcp_bench (--stdio \"CMD ARGS...\" | --http URL) [--calls N] \
                     [--warmup N] [--tool NAME] [--expect TEXT]";

/// The protocol revision the handshake asks for.
const PROTOCOL_VERSION: &str = "2025-11-25";
/// Defaults: the conformance fixtures' `test_simple_text` and its fixed reply.
const DEFAULT_TOOL: &str = "test_simple_text";
const DEFAULT_EXPECT: &str = "This is a simple text response for testing.";
const DEFAULT_CALLS: usize = 5000;
const DEFAULT_WARMUP: usize = 200;
/// How long one response may take before the run fails (a hung server, or an SSE stream the
/// server never closes).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stdio server gets to exit once its stdin is closed before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Which server to talk to, and how.
enum Target {
    /// Spawn this program with these arguments and speak on its stdin and stdout.
    Stdio(Vec<String>),
    /// POST to this Streamable HTTP endpoint.
    Http(String),
}

struct Args {
    target: Target,
    calls: usize,
    warmup: usize,
    tool: String,
    expect: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut target = None;
    let (mut calls, mut warmup) = (DEFAULT_CALLS, DEFAULT_WARMUP);
    let (mut tool, mut expect) = (DEFAULT_TOOL.to_owned(), DEFAULT_EXPECT.to_owned());
    let count = |flag: &str, value: Option<String>| -> anyhow::Result<usize> {
        let value = value.with_context(|| format!("{flag} needs a number"))?;
        value.parse().with_context(|| format!("{flag} {value:?}"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--stdio" => {
                let command = it.next().context("--stdio needs a command")?;
                let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
                ensure!(!words.is_empty(), "--stdio needs a command; {USAGE}");
                target = Some(Target::Stdio(words));
            }
            "--http" => target = Some(Target::Http(it.next().context("--http needs a URL")?)),
            "--calls" => calls = count("--calls", it.next())?,
            "--warmup" => warmup = count("--warmup", it.next())?,
            "--tool" => tool = it.next().context("--tool needs a name")?,
            "--expect" => expect = it.next().context("--expect needs a text")?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let target = target.with_context(|| format!("--stdio or --http is required; {USAGE}"))?;
    ensure!(calls > 0, "--calls must be at least 1");
    Ok(Args {
        target,
        calls,
        warmup,
        tool,
        expect,
    })
}

/// A JSON-RPC connection to an MCP server: one request in flight at a time.
trait Connection {
    /// Sends the request `body` (whose id is `id`) and returns the response with that id.
    fn request(&mut self, body: &[u8], id: u64) -> anyhow::Result<Value>;
    /// Sends the notification `body`; nothing comes back.
    fn notify(&mut self, body: &[u8]) -> anyhow::Result<()>;
    /// Called once `initialize` has answered, with the negotiated protocol revision.
    fn initialized(&mut self, _version: &str) {}
}

/// A message as it travels: one line of JSON.
fn encode(message: &Value) -> anyhow::Result<Vec<u8>> {
    serde_json::to_vec(message).context("encoding a request")
}

/// `message` if it is the response to request `id`, `None` if it is something else the
/// server sent (a notification, a response to another id).
fn response_to(message: Value, id: u64) -> Option<Value> {
    let is_ours =
        message.get("id").and_then(Value::as_u64) == Some(id) && message.get("method").is_none();
    is_ours.then_some(message)
}

// ---------------------------------------------------------------------------------------
// stdio

/// A spawned server speaking newline-delimited JSON-RPC on its stdin and stdout.
struct StdioConnection {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl StdioConnection {
    fn spawn(command: &[String]) -> anyhow::Result<Self> {
        let (program, args) = command.split_first().context("an empty --stdio command")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {program}"))?;
        let stdin = child.stdin.take().context("the child's stdin")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        Ok(Self {
            child,
            stdin: Some(BufWriter::new(stdin)),
            stdout: BufReader::new(stdout),
            line: String::new(),
        })
    }

    fn send(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the server's stdin is closed")?;
        stdin.write_all(body)?;
        stdin.write_all(b"\n")?;
        stdin.flush().context("writing to the server's stdin")
    }

    /// Closes the server's stdin (its signal to exit) and waits for it, killing it after
    /// [`EXIT_GRACE`].
    fn close(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("mcp_bench: the server did not exit on EOF; killing it");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Connection for StdioConnection {
    fn request(&mut self, body: &[u8], id: u64) -> anyhow::Result<Value> {
        self.send(body)?;
        loop {
            self.line.clear();
            let read = self
                .stdout
                .read_line(&mut self.line)
                .context("reading the server's stdout")?;
            ensure!(
                read > 0,
                "the server closed its stdout before answering request {id}"
            );
            let message: Value = serde_json::from_str(&self.line).with_context(|| {
                format!("the server wrote a line that is not JSON: {:?}", self.line)
            })?;
            if message.get("method").is_some() && message.get("id").is_some() {
                bail!(
                    "the server sent a request ({}); this client answers none",
                    message["method"]
                );
            }
            if let Some(response) = response_to(message, id) {
                return Ok(response);
            }
        }
    }

    fn notify(&mut self, body: &[u8]) -> anyhow::Result<()> {
        self.send(body)
    }
}

// ---------------------------------------------------------------------------------------
// Streamable HTTP

/// One keep-alive HTTP/1.1 connection to a Streamable HTTP endpoint.
struct HttpConnection {
    /// `HOST:PORT`, for connecting and for the `Host` header.
    authority: String,
    path: String,
    stream: Option<BufReader<TcpStream>>,
    session: Option<String>,
    version: Option<String>,
    /// Reused request buffer (head and body, written in one call).
    out: Vec<u8>,
    /// Connections the server closed (after a response, or while idle), opened again.
    reconnects: usize,
}

/// A response's status, the headers this client reads, and its body.
struct HttpResponse {
    status: u16,
    content_type: String,
    session: Option<String>,
    body: Vec<u8>,
}

impl HttpConnection {
    fn new(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--http {url}: only http://HOST:PORT/PATH URLs"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        ensure!(!authority.is_empty(), "--http {url}: no host");
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path: if path.is_empty() { "/" } else { path }.to_owned(),
            stream: None,
            session: None,
            version: None,
            out: Vec::new(),
            reconnects: 0,
        })
    }

    fn connect(&mut self) -> anyhow::Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.authority)
                .with_context(|| format!("connecting to {}", self.authority))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
            self.stream = Some(BufReader::new(stream));
        }
        // Set just above when it was missing.
        self.stream.as_mut().context("no connection")
    }

    /// POSTs `body` and reads the whole response. A connection the server had closed since
    /// the last exchange is opened again and the request sent once more.
    fn post(&mut self, body: &[u8]) -> anyhow::Result<HttpResponse> {
        self.out.clear();
        write!(
            self.out,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
            self.path,
            self.authority,
            body.len()
        )?;
        if let Some(session) = &self.session {
            write!(self.out, "Mcp-Session-Id: {session}\r\n")?;
        }
        if let Some(version) = &self.version {
            write!(self.out, "MCP-Protocol-Version: {version}\r\n")?;
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let reused = self.stream.is_some();
        match self.exchange() {
            Ok(response) => Ok(response),
            // A keep-alive connection the server closed while idle: once more on a new one.
            Err(error) if reused && error.downcast_ref::<Closed>().is_some() => {
                self.stream = None;
                self.reconnects += 1;
                self.exchange()
            }
            Err(error) => Err(error),
        }
    }

    /// Writes the prepared request on the connection and reads the response.
    fn exchange(&mut self) -> anyhow::Result<HttpResponse> {
        let out = std::mem::take(&mut self.out);
        let result = self.connect().and_then(|stream| {
            stream.get_mut().write_all(&out).map_err(closed)?;
            read_response(stream)
        });
        self.out = out;
        match result {
            Ok((response, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                    self.reconnects += 1;
                }
                Ok(response)
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }
}

/// The server closed the connection before a response began (a stale keep-alive one).
#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server closed the connection")
    }
}

impl std::error::Error for Closed {}

/// An I/O error as [`Closed`] when it means the peer had closed the connection.
fn closed(error: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    match error.kind() {
        BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof => Closed.into(),
        _ => error.into(),
    }
}

/// Reads one HTTP/1.1 response: the status line, the headers, and a body framed by
/// `Content-Length`, chunked transfer encoding, or the end of the connection. Also returns
/// whether the connection can carry another request.
fn read_response(stream: &mut BufReader<TcpStream>) -> anyhow::Result<(HttpResponse, bool)> {
    let mut line = String::new();
    if stream.read_line(&mut line).map_err(closed)? == 0 {
        return Err(Closed.into());
    }
    let mut words = line.split_whitespace();
    let protocol = words.next().unwrap_or_default();
    ensure!(
        protocol.starts_with("HTTP/1."),
        "not an HTTP/1 response: {line:?}"
    );
    let status: u16 = words
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("a status line without a status: {line:?}"))?;
    let mut keep_alive = protocol != "HTTP/1.0";
    let (mut length, mut chunked) = (None, false);
    let (mut content_type, mut session) = (String::new(), None);
    loop {
        line.clear();
        ensure!(
            stream.read_line(&mut line)? > 0,
            "the connection closed in the headers"
        );
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("a malformed header: {header:?}"))?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .with_context(|| format!("{header:?}"))?,
                )
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-type" => content_type = value.to_ascii_lowercase(),
            "mcp-session-id" => session = Some(value.to_owned()),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        read_chunked(stream, &mut body)?;
    } else if let Some(length) = length {
        body.resize(length, 0);
        stream.read_exact(&mut body).context("reading the body")?;
    } else if status != 204 && status != 304 {
        // Neither framing: the body runs to the end of the connection.
        stream.read_to_end(&mut body).context("reading the body")?;
        keep_alive = false;
    }
    let response = HttpResponse {
        status,
        content_type,
        session,
        body,
    };
    Ok((response, keep_alive))
}

/// Appends a chunked body to `body`, through the last chunk and the trailers.
fn read_chunked(stream: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        ensure!(
            stream.read_line(&mut line)? > 0,
            "the connection closed in a chunked body"
        );
        let size = line.trim_end().split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .with_context(|| format!("a malformed chunk size: {line:?}"))?;
        if size == 0 {
            // Trailers, then the blank line that ends the message.
            loop {
                line.clear();
                ensure!(
                    stream.read_line(&mut line)? > 0,
                    "the connection closed in trailers"
                );
                if line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream
            .read_exact(&mut body[start..])
            .context("reading a chunk")?;
        let mut crlf = [0u8; 2];
        stream
            .read_exact(&mut crlf)
            .context("reading a chunk's end")?;
        ensure!(&crlf == b"\r\n", "a chunk not followed by CRLF");
    }
}

/// The JSON-RPC messages in a Server-Sent Events body: each event's `data:` lines, joined.
/// Events without data (a priming event carrying only an `id:`) are skipped.
fn sse_messages(body: &str) -> impl Iterator<Item = String> + '_ {
    body.split("\n\n").filter_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect();
        let data = data.join("\n");
        (!data.trim().is_empty()).then_some(data)
    })
}

impl Connection for HttpConnection {
    fn request(&mut self, body: &[u8], id: u64) -> anyhow::Result<Value> {
        let response = self.post(body)?;
        let text = std::str::from_utf8(&response.body).context("a response body not UTF-8")?;
        ensure!(
            response.status == 200,
            "request {id}: HTTP {} {}",
            response.status,
            text.chars().take(200).collect::<String>()
        );
        if self.session.is_none() {
            self.session = response.session;
        }
        if response.content_type.starts_with("text/event-stream") {
            // SSE bodies use \n or \r\n line ends; normalize so events split on blank lines.
            let text = text.replace("\r\n", "\n");
            for data in sse_messages(&text) {
                let message: Value = serde_json::from_str(&data)
                    .with_context(|| format!("an SSE event that is not JSON: {data:?}"))?;
                if let Some(response) = response_to(message, id) {
                    return Ok(response);
                }
            }
            bail!("request {id}: the SSE stream ended without its response: {text:?}")
        }
        let message: Value = serde_json::from_str(text)
            .with_context(|| format!("request {id}: a body that is not JSON: {text:?}"))?;
        response_to(message, id)
            .with_context(|| format!("request {id}: the body is not its response: {text:?}"))
    }

    fn notify(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let response = self.post(body)?;
        ensure!(
            response.status == 202 || response.status == 200,
            "a notification answered with HTTP {}",
            response.status
        );
        Ok(())
    }

    fn initialized(&mut self, version: &str) {
        self.version = Some(version.to_owned());
    }
}

// ---------------------------------------------------------------------------------------
// The benchmark

/// The `result` of a JSON-RPC response, or its `error` as an error.
fn result_of(response: Value, what: &str) -> anyhow::Result<Value> {
    if let Some(error) = response.get("error") {
        bail!("{what} failed: {error}");
    }
    match response {
        Value::Object(mut fields) => fields
            .remove("result")
            .with_context(|| format!("{what}: a response with neither result nor error")),
        _ => bail!("{what}: a response that is not an object"),
    }
}

/// `initialize` then `notifications/initialized`; returns the negotiated revision.
fn handshake(connection: &mut dyn Connection) -> anyhow::Result<String> {
    let initialize = json!({
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcp_bench", "version": env!("CARGO_PKG_VERSION")},
        },
    });
    let result = result_of(connection.request(&encode(&initialize)?, 0)?, "initialize")?;
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .context("initialize: no protocolVersion in the result")?
        .to_owned();
    connection.initialized(&version);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    connection.notify(&encode(&initialized)?)?;
    Ok(version)
}

/// Checks a `tools/call` result: not an error, first content block the expected text.
fn check_call(result: &Value, expect: &str) -> anyhow::Result<()> {
    ensure!(
        result.get("isError").and_then(Value::as_bool) != Some(true),
        "the tool reported an error: {result}"
    );
    let text = result
        .pointer("/content/0/text")
        .and_then(Value::as_str)
        .with_context(|| format!("no text content in {result}"))?;
    ensure!(
        text == expect,
        "the tool returned {text:?}, expected {expect:?}"
    );
    Ok(())
}

/// Calls `tool` `count` times in sequence, ids from `first_id`, checking every result;
/// returns each round trip's duration.
fn call_many(
    connection: &mut dyn Connection,
    args: &Args,
    first_id: u64,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    for id in (first_id..).take(count) {
        let request = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "tools/call",
            "params": {"name": args.tool, "arguments": {}},
        });
        let body = encode(&request)?;
        let start = Instant::now();
        let response = connection.request(&body, id)?;
        times.push(start.elapsed());
        let what = format!("tools/call {} (id {id})", args.tool);
        check_call(&result_of(response, &what)?, &args.expect).context(what)?;
    }
    Ok(times)
}

/// In microseconds.
fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The nearest-rank `q` quantile of sorted `times`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Warm-up, then the timed calls; the summary line (keys in a fixed order).
fn bench(connection: &mut dyn Connection, transport: &str, args: &Args) -> anyhow::Result<String> {
    handshake(connection).context("the handshake")?;
    call_many(connection, args, 1, args.warmup).context("the warm-up")?;
    let start = Instant::now();
    let mut times = call_many(connection, args, 1 + args.warmup as u64, args.calls)?;
    let wall = start.elapsed();
    times.sort_unstable();
    let total: Duration = times.iter().sum();
    let calls = args.calls as f64;
    Ok(format!(
        "{{\"transport\":\"{transport}\",\"calls\":{},\"calls_per_s\":{:.1},\"p50_us\":{:.1},\
         \"p99_us\":{:.1},\"mean_us\":{:.1}}}",
        args.calls,
        calls / wall.as_secs_f64(),
        micros(quantile(&times, 0.50)),
        micros(quantile(&times, 0.99)),
        micros(total.div_f64(calls)),
    ))
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let summary = match &args.target {
        Target::Stdio(command) => {
            let mut connection = StdioConnection::spawn(command)?;
            let summary = bench(&mut connection, "stdio", &args);
            // Stop the server whether or not the run succeeded; the run's error comes first.
            let closed = connection.close();
            let summary = summary?;
            closed.context("stopping the server")?;
            summary
        }
        Target::Http(url) => {
            let mut connection = HttpConnection::new(url)?;
            let summary = bench(&mut connection, "http", &args)?;
            if connection.reconnects > 0 {
                eprintln!(
                    "mcp_bench: the server closed the connection {} times (reconnected)",
                    connection.reconnects
                );
            }
            summary
        }
    };
    println!("{summary}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp_bench: {error:#}");
            ExitCode::from(2)
        }
    }
}
