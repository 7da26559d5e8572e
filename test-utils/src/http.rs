//! A minimal HTTP/1.1 client over `std::net`, for tests of the OpenAI server: one request per
//! connection (`Connection: close`), whole responses or server-sent events read as they come.
//! Raw sockets on purpose: tests can send malformed requests and hang up mid-stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, chunked transfer decoded.
    pub body: String,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): status {} {}", self.status, self.body))
    }
}

/// Sends `method path` with `body` (JSON when not empty) and `headers`; returns the stream,
/// positioned after the request.
pub fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    // `Host: address` unless the caller sends its own (a foreign Host is a test case).
    let host = if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        String::new()
    } else {
        format!("Host: {address}\r\n")
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\n{host}Connection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // A server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body);
    Ok(stream)
}

/// One whole request and response.
///
/// # Panics
///
/// When the connection fails or the response is not HTTP.
pub fn request(address: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    request_with(address, method, path, &[], body.as_bytes())
}

/// [`request`] with extra headers and a raw body.
///
/// # Panics
///
/// As [`request`].
pub fn request_with(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let stream = send(address, method, path, headers, body).expect("connects");
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut raw = Vec::new();
    // The server closes the connection after the response (`Connection: close`).
    let _ = reader.read_to_end(&mut raw);
    let body = if chunked { dechunk(&raw) } else { raw };
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Reads the status line and headers.
///
/// # Panics
///
/// When the response is not HTTP.
pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    let status = loop {
        line.clear();
        reader.read_line(&mut line).expect("reads a status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
        if status != 100 {
            break status;
        }
        reader
            .read_line(&mut line)
            .expect("reads the blank line after 100");
    };
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("reads a header");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            return (status, headers);
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

/// A response body sent with chunked transfer encoding, decoded as it is read.
pub struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    /// Decodes the body that follows the head `inner` has read.
    pub fn new(inner: R) -> Self {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    return Ok(0);
                }
            }
            self.left = usize::from_str_radix(line.trim(), 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        Ok(n)
    }
}

/// Sends a request whose response is a server-sent event stream; returns its status and a
/// reader of its decoded body (hand it to [`sse_data`]). Dropping the reader hangs up.
///
/// # Panics
///
/// When the connection fails or the response is not HTTP.
pub fn open_stream(
    address: SocketAddr,
    path: &str,
    body: &str,
) -> (u16, BufReader<Chunked<BufReader<TcpStream>>>) {
    let stream = send(address, "POST", path, &[], body.as_bytes()).expect("connects");
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    (status, BufReader::new(Chunked::new(reader)))
}

/// The `data:` payloads of a server-sent event stream, as they arrive.
pub fn sse_data(reader: &mut impl BufRead) -> impl Iterator<Item = String> + '_ {
    std::iter::from_fn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Some(data.to_owned());
            }
        }
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < end + 2 + size {
            return body;
        }
        body.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[(end + 4 + size).min(raw.len())..];
    }
}
