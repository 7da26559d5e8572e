//! The two transports: stdio (a client spawns the server) and Streamable HTTP (a server
//! clients connect to), with the security settings rmcp leaves to us.
//!
//! HTTP, as the MCP specification's security notes ask of a local server:
//! - bound to `127.0.0.1` unless told otherwise;
//! - `Host` validated (rmcp: loopback names by default, plus the bound address), against DNS
//!   rebinding: 403 otherwise;
//! - `Origin` validated: rmcp leaves it off by default, we turn it on, so a request carrying
//!   an `Origin` other than the server's own (`http://localhost:PORT`, `127.0.0.1`, `[::1]`)
//!   or one in [`HttpOptions::allowed_origins`] gets 403: another page in a browser cannot
//!   call the tools;
//! - request bodies capped ([`HttpOptions::max_body_bytes`]): 413 past it;
//! - a bearer token when configured, compared in constant time: 401 otherwise.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServiceExt};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// What the transports serve: an MCP server handler ([`crate::AgentServer`], or any other
/// built on [`crate::mcp`], such as the conformance fixtures' server). Cloned once per HTTP
/// session, so it should be cheap to clone (state behind an `Arc`).
pub trait Handler: rmcp::ServerHandler + Clone + Send + Sync + 'static {}

impl<T: rmcp::ServerHandler + Clone + Send + Sync + 'static> Handler for T {}

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";
/// Default cap on a request body, and the cap on a stdio line: 4 MiB (a tool call's
/// arguments, with room to spare). A longer stdio line is dropped and answered with an error
/// (rmcp's own default is 16 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// Serves `server` on the process's stdin and stdout until the client closes them.
///
/// # Errors
///
/// [`Error::Transport`] when the handshake fails or the connection breaks.
pub async fn serve_stdio(server: impl Handler) -> Result<()> {
    // Pipes (what a client that spawns the server gives it) are read and written through
    // epoll; tokio's `stdin()`/`stdout()` go through its blocking thread pool, a thread
    // hand-off per line that halves the calls per second (benches/compare/mcp.sh). A terminal
    // or a file falls back to those.
    match (pipe_end::<0>(), pipe_end::<1>()) {
        (Some(read), Some(write)) => {
            match (
                tokio::net::unix::pipe::Receiver::from_owned_fd(read),
                tokio::net::unix::pipe::Sender::from_owned_fd(write),
            ) {
                (Ok(read), Ok(write)) => serve_io(server, read, write).await,
                _ => serve_io(server, tokio::io::stdin(), tokio::io::stdout()).await,
            }
        }
        _ => serve_io(server, tokio::io::stdin(), tokio::io::stdout()).await,
    }
}

/// A duplicate of file descriptor `FD` when it is a FIFO (a pipe), else `None`.
fn pipe_end<const FD: i32>() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::fs::FileTypeExt;
    // SAFETY: 0 and 1 are open for the life of the process (stdin and stdout).
    let fd = unsafe { BorrowedFd::borrow_raw(FD) };
    let is_fifo = std::fs::File::from(fd.try_clone_to_owned().ok()?)
        .metadata()
        .is_ok_and(|meta| meta.file_type().is_fifo());
    is_fifo
        .then(|| fd.as_fd().try_clone_to_owned().ok())
        .flatten()
}

/// Serves `server` on any byte stream pair (newline-delimited JSON-RPC, as stdio): a pipe, a
/// Unix socket, an in-memory duplex in tests. Returns when the client closes its end. A line
/// that is not JSON or is over [`DEFAULT_MAX_BODY_BYTES`] is answered with a JSON-RPC error
/// (see `framing`), the connection staying open.
///
/// # Errors
///
/// [`Error::Transport`] when the handshake fails or the connection breaks.
pub async fn serve_io<R, W>(server: impl Handler, read: R, write: W) -> Result<()>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Transport {
        transport: "stdio",
        source,
    };
    let (read, write, writer) = crate::framing::guard(read, write, DEFAULT_MAX_BODY_BYTES);
    let transport = AsyncRwTransport::<RoleServer, _, _>::new_server(read, write);
    let running = crate::traced::Traced::new(server)
        .serve(transport)
        .await
        .map_err(|error| failed(Box::new(error)))?;
    running
        .waiting()
        .await
        .map_err(|error| failed(Box::new(error)))?;
    // rmcp has handed its last replies to the pipe; they reach the client before we return.
    writer.await.map_err(|error| failed(Box::new(error)))
}

/// How the HTTP transport listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Where to listen: `127.0.0.1:0` (a free loopback port) by default.
    pub bind: SocketAddr,
    /// `Host` values accepted besides the loopback names and the bound address (a public
    /// name when served behind one).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted besides the server's own (`scheme://host:port`, `:*` for any
    /// port); none by default, so a request carrying any other `Origin` is refused.
    pub allowed_origins: Vec<String>,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// When set, every request must carry `Authorization: Bearer <token>`; required (and not
    /// empty) when [`bind`](Self::bind) is not a loopback address.
    pub bearer_token: Option<String>,
    /// Where 2025-11-25 sessions are kept, so that they survive a restart (see
    /// [`crate::sessions`]); in memory only when `None` (the default).
    pub session_dir: Option<std::path::PathBuf>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            bearer_token: None,
            session_dir: None,
        }
    }
}

/// A running HTTP server; stops when [`HttpServer::shutdown`] is called or it is dropped.
#[derive(Debug)]
pub struct HttpServer {
    address: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl HttpServer {
    /// Where it listens (the actual port when bound to port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The endpoint's URL.
    pub fn url(&self) -> String {
        format!("http://{}{MCP_PATH}", self.address)
    }

    /// Stops accepting requests, ends every session and waits for the server to finish.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when the server had failed.
    pub async fn shutdown(mut self) -> Result<()> {
        self.cancel.cancel();
        self.wait().await
    }

    /// Waits until the server stops (a shutdown, or a failure).
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when the server failed.
    pub async fn wait(&mut self) -> Result<()> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Transport {
            transport: "http",
            source,
        };
        task.await
            .map_err(|error| failed(Box::new(error)))?
            .map_err(|error| failed(Box::new(error)))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Serves `server` over Streamable HTTP at [`MCP_PATH`] on `options.bind`, in the background
/// on the current tokio runtime. Both protocol eras: a 2025-11-25 client gets a session
/// (`Mcp-Session-Id`), a 2026-07-28 request is served statelessly.
///
/// # Errors
///
/// [`Error::Transport`] when the address cannot be bound, the bearer token is empty, or the
/// address is not a loopback one and no bearer token is set.
pub async fn serve_http(server: impl Handler, options: HttpOptions) -> Result<HttpServer> {
    let insecure = |reason: &str| Error::Transport {
        transport: "http",
        source: reason.into(),
    };
    if options.bearer_token.as_deref().is_some_and(str::is_empty) {
        return Err(insecure("an empty bearer token would let every request in"));
    }
    // The Host check stops DNS rebinding, not a client on the network that sends
    // `Host: localhost`: off the loopback interface, a token is required.
    if !options.bind.ip().is_loopback() && options.bearer_token.is_none() {
        return Err(insecure(
            "binding beyond the loopback interface needs a bearer token (MLINFRA_MCP_TOKEN)",
        ));
    }
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|error| Error::Transport {
            transport: "http",
            source: Box::new(error),
        })?;
    let address = listener.local_addr().map_err(|error| Error::Transport {
        transport: "http",
        source: Box::new(error),
    })?;
    let cancel = CancellationToken::new();
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !address.ip().is_unspecified() {
        hosts.push(address.ip().to_string());
    }
    hosts.extend(options.allowed_hosts.iter().cloned());
    // The server's own origins (a page it served, the conformance suite's same-origin check)
    // pass; any other page's do not.
    let port = address.port();
    let mut origins = vec![
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://[::1]:{port}"),
    ];
    if !address.ip().is_unspecified() && !address.ip().is_loopback() {
        origins.push(format!("http://{address}"));
    }
    origins.extend(options.allowed_origins.iter().cloned());
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_max_request_body_bytes(options.max_body_bytes)
        .with_cancellation_token(cancel.child_token());
    if let Some(dir) = &options.session_dir {
        config.session_store = Some(Arc::new(crate::sessions::FileSessionStore::open(dir)?));
    }
    let server = crate::traced::Traced::new(server);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let token: Arc<Option<Box<[u8]>>> = Arc::new(
        options
            .bearer_token
            .map(|t| t.into_bytes().into_boxed_slice()),
    );
    let router = axum::Router::new()
        .nest_service(MCP_PATH, service)
        .layer(from_fn_with_state(token, require_bearer));
    let shutdown = cancel.clone();
    let task = tokio::spawn(async move {
        // Nagle off: rmcp writes a reply as several small SSE writes, and without NODELAY the
        // last one waits for the client's delayed ACK (~40 ms a call; benches/compare/mcp.sh).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
            .await
    });
    Ok(HttpServer {
        address,
        cancel,
        task: Some(task),
    })
}

/// 401 unless the request carries the configured bearer token (compared in constant time);
/// every request passes when none is configured.
async fn require_bearer(
    State(token): State<Arc<Option<Box<[u8]>>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = token.as_ref() else {
        return next.run(request).await;
    };
    // The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .filter(|value| value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|value| &value[7..]);
    match presented {
        Some(presented) if bool::from(presented.ct_eq(expected)) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response(),
    }
}
