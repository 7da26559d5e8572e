//! Layer 7 of mlinfra: the stack as Model Context Protocol tools.
//!
//! An MCP server runtime, [`AgentServer`], on rmcp (the official Rust SDK, pinned exactly and
//! kept behind these types), served over stdio ([`serve_stdio`]) or Streamable HTTP
//! ([`serve_http`], with Host and Origin validation, body limits and bearer tokens). Its tools
//! read datasets under one directory, the [`DataRoot`], and nowhere else.
//!
//! # Status
//!
//! Built: the server, both transports, the dataset tools `dataset_schema`, `dataset_sample`,
//! `dataset_fingerprint`, `dataset_verify` and `dataset_convert` (CSV / JSON lines to a new
//! Parquet file under the root; never overwrites). Every tool call is a `tracing` span with
//! OpenTelemetry's GenAI/MCP attributes ([`trace`], a JSONL exporter). Not yet: the loader, training and serving tools, resources
//! and prompts, sandboxed execution, OTLP export, lineage and durable jobs (issue 26).
//!
//! # Quick start
//!
//! ```no_run
//! # async fn run() -> mlinfra_agent::Result<()> {
//! use mlinfra_agent::{AgentServer, DataRoot, HttpOptions, serve_http};
//! let server = AgentServer::new(DataRoot::new("data")?);
//! let http = serve_http(server, HttpOptions::default()).await?;
//! println!("MCP endpoint: {}", http.url());
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | Run the tools' device work on NVIDIA GPUs | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod framing;
mod root;
mod server;
pub mod tools;
pub mod trace;
mod transport;

pub use error::{Error, Result};
pub use root::DataRoot;
pub use server::AgentServer;
pub use transport::{
    DEFAULT_MAX_BODY_BYTES, HttpOptions, HttpServer, MCP_PATH, serve_http, serve_io, serve_stdio,
};
