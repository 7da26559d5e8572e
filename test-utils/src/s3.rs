//! A real S3-compatible server for object-store tests: moto's, on 127.0.0.1.
//!
//! `scripts/moto-venv` installs moto into a venv outside the repository; `scripts/check` exports
//! its `moto_server` path as [`MOTO_SERVER_VAR`]. Without it, [`S3Server::start`] follows the
//! corpus rule (see the [crate docs](crate)): a printed skip outside CI, a failure under
//! `CI=true`.
//!
//! Each server is a process of its own on a free port, killed when the [`S3Server`] drops, so
//! tests never share buckets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming moto's `moto_server` executable.
pub const MOTO_SERVER_VAR: &str = "MLINFRA_MOTO_SERVER";

/// Credentials moto accepts (any are accepted; these are its documented test values).
pub const ACCESS_KEY: &str = "testing";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "testing";

/// A running moto server; killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts a server and waits until it accepts connections.
    ///
    /// Returns `None` (after printing a skip line) when moto is not installed outside CI.
    ///
    /// # Panics
    ///
    /// When moto is not installed under `CI=true`, or the server does not come up in 60 s.
    pub fn start() -> Option<S3Server> {
        let executable = match std::env::var_os(MOTO_SERVER_VAR) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                let message = format!(
                    "{MOTO_SERVER_VAR} is not set; run `export {MOTO_SERVER_VAR}=$(scripts/moto-venv)`"
                );
                if crate::is_ci() {
                    panic!("the S3 server is required under CI=true: {message}");
                }
                eprintln!("skipped: no S3 server: {message}");
                return None;
            }
        };
        // A free port: bind, read it, release it. The race with another process taking it in
        // between is possible but shows up as a startup failure, not a wrong result.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        let child = Command::new(&executable)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", executable.display()));
        let mut server = S3Server { child, port };
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
                "moto did not listen on port {port} in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `object_store` configuration for this server, as `(key, value)` pairs.
    pub fn storage_options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_access_key_id", ACCESS_KEY.to_owned()),
            ("aws_secret_access_key", SECRET_KEY.to_owned()),
            ("aws_region", "us-east-1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Creates a bucket (moto accepts unsigned requests).
    ///
    /// # Panics
    ///
    /// When the server does not answer 200.
    pub fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", &format!("/{bucket}"), &[], &[]);
        assert_eq!(status, 200, "creating bucket {bucket}");
    }

    /// Uploads `body` as a world-readable object, so plain `http://` GETs can read it too.
    ///
    /// # Panics
    ///
    /// When the server does not answer 200.
    pub fn put_public(&self, bucket: &str, key: &str, body: &[u8]) {
        let status = self.request(
            "PUT",
            &format!("/{bucket}/{key}"),
            &[("x-amz-acl", "public-read")],
            body,
        );
        assert_eq!(status, 200, "uploading {bucket}/{key}");
    }

    /// Deletes an object.
    ///
    /// # Panics
    ///
    /// When the server does not answer 204.
    pub fn delete(&self, bucket: &str, key: &str) {
        let status = self.request("DELETE", &format!("/{bucket}/{key}"), &[], &[]);
        assert_eq!(status, 204, "deleting {bucket}/{key}");
    }

    /// One HTTP/1.1 request; the response's status code.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
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
        let mut response = String::new();
        // moto closes the connection after the response (Connection: close).
        let _ = stream.read_to_string(&mut response);
        response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("malformed response from moto: {response:.200}"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
