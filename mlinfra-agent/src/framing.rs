//! The newline-delimited transport's front door: every line a client sends is checked
//! before rmcp sees it, so that each bad line gets the JSON-RPC error the specification
//! asks for instead of silence.
//!
//! rmcp drops a line that is not JSON, and a line over its length limit, with a log entry
//! and no reply; a client then waits for an answer that never comes. Here a reader task
//! frames lines itself (never buffering more than the limit), answers a line that is too long
//! with `-32600` and one that does not parse with `-32700` (`id: null`, as JSON-RPC 2.0 §5.1
//! says when the id cannot be read), and passes the rest to rmcp through an in-memory pipe.
//! A writer task is the only one writing to the client: rmcp's replies (whole lines, from a
//! second pipe) and these errors, a line at a time, never interleaved.

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes the in-memory pipes buffer.
const PIPE_BYTES: usize = 1 << 16;

/// The pipe ends rmcp reads from and writes to, and the writer task: await it after rmcp
/// stops, so that its last replies reach the client before the process exits. The reader task
/// ends when the client hangs up (it may stay blocked on stdin until then).
pub(crate) fn guard<R, W>(
    read: R,
    write: W,
    max_line: usize,
) -> (DuplexStream, DuplexStream, JoinHandle<()>)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (to_rmcp, rmcp_reads) = tokio::io::duplex(PIPE_BYTES);
    let (rmcp_writes, from_rmcp) = tokio::io::duplex(PIPE_BYTES);
    let (errors, error_lines) = mpsc::channel::<String>(64);
    tokio::spawn(read_lines(read, to_rmcp, errors, max_line));
    let writer = tokio::spawn(write_lines(write, from_rmcp, error_lines));
    (rmcp_reads, rmcp_writes, writer)
}

/// Frames the client's lines: good ones on to rmcp, an error for each bad one.
async fn read_lines<R: AsyncRead + Unpin>(
    read: R,
    mut to_rmcp: DuplexStream,
    errors: mpsc::Sender<String>,
    max_line: usize,
) {
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let outcome = match read_bounded_line(&mut read, &mut line, max_line).await {
            Ok(outcome) => outcome,
            Err(_) => return,
        };
        let error = match outcome {
            Line::Eof => return,
            Line::TooLong => Some(error_line(
                -32600,
                &format!("a message over the {max_line}-byte limit was dropped"),
            )),
            Line::Complete if line.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Complete => match serde_json::from_slice::<serde_json::Value>(
                line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&line),
            ) {
                Ok(_) => None,
                Err(parse) => Some(error_line(-32700, &format!("parse error: {parse}"))),
            },
        };
        match error {
            Some(error) => {
                if errors.send(error).await.is_err() {
                    return;
                }
            }
            None => {
                line.push(b'\n');
                if to_rmcp.write_all(&line).await.is_err() {
                    return;
                }
            }
        }
    }
}

enum Line {
    Complete,
    TooLong,
    Eof,
}

/// One `\n`-terminated line into `line` (without the newline), or [`Line::TooLong`] once it
/// passes `max` bytes, the rest of it then skipped up to its newline.
async fn read_bounded_line<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let mut too_long = false;
    loop {
        let buffer = read.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
        let (chunk, found) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (&buffer[..at], Some(at)),
            None => (buffer, None),
        };
        if !too_long && line.len() + chunk.len() > max {
            too_long = true;
            line.clear();
        }
        if !too_long {
            line.extend_from_slice(chunk);
        }
        let used = found.map_or(buffer.len(), |at| at + 1);
        read.consume(used);
        if found.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// A JSON-RPC error response to a request whose id could not be read.
fn error_line(code: i64, message: &str) -> String {
    let mut line =
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
            .to_string();
    line.push('\n');
    line
}

/// The only writer to the client: rmcp's lines and the framing errors, whole lines each.
async fn write_lines<W: AsyncWrite + Unpin>(
    mut write: W,
    from_rmcp: DuplexStream,
    mut errors: mpsc::Receiver<String>,
) {
    let mut replies = BufReader::new(from_rmcp).lines();
    let mut errors_open = true;
    loop {
        let line = tokio::select! {
            reply = replies.next_line() => match reply {
                Ok(Some(mut reply)) => {
                    reply.push('\n');
                    reply
                }
                _ => {
                    // rmcp is done: the errors already queued still go out.
                    while let Ok(error) = errors.try_recv() {
                        if write.write_all(error.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let _ = write.flush().await;
                    return;
                }
            },
            error = errors.recv(), if errors_open => match error {
                Some(error) => error,
                None => {
                    errors_open = false;
                    continue;
                }
            },
        };
        if write.write_all(line.as_bytes()).await.is_err() || write.flush().await.is_err() {
            return;
        }
    }
}
