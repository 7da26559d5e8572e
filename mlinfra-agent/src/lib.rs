//! Layer 7 of mlinfra: the stack as Model Context Protocol tools.
//!
//! An MCP server runtime, [`AgentServer`], on rmcp (the official Rust SDK, pinned exactly and
//! kept behind these types), served over stdio ([`serve_stdio`]) or Streamable HTTP
//! ([`serve_http`], with Host and Origin validation, body limits and bearer tokens). Its tools
//! read datasets under one directory, the [`DataRoot`], and nowhere else.
//!
//! # Status
//!
//! Built: the server, both transports, both protocol eras (the 2025-11-25 handshake with
//! sessions, 2026-07-28 stateless requests); the official conformance suite passes against
//! the fixtures' server on the same runtime (`mcp_conformance_server`, run in CI).
//! - Dataset tools `dataset_schema`, `dataset_sample`, `dataset_fingerprint`,
//!   `dataset_verify` and `dataset_convert` (CSV / JSON lines to a new Parquet file under the
//!   root; never overwrites); the datasets as resources ([`catalog`]:
//!   `mlinfra://datasets/{+path}`, paged), the `explore_dataset` prompt, completion of paths.
//! - Training jobs ([`jobs`]): `train_start`, `train_status`, `train_stop`, `train_resume`,
//!   `train_list`; a job runs in the background, outlives the client, and survives a
//!   `kill -9` of the server (found `interrupted`, resumed from its newest checkpoint).
//! - Every tool call is a `tracing` span with OpenTelemetry's GenAI/MCP attributes
//!   ([`trace`], a JSONL exporter).
//!
//! Not yet (issue 26): the loader and serving tools (`generate`), LoRA/DPO jobs, progress
//! notifications and elicitation in the product's tools, sandboxed execution, OTLP export,
//! lineage.
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

mod approval;
pub mod catalog;
mod error;
mod framing;
pub mod jobs;
mod root;
mod server;
pub mod serving;
pub mod tools;
pub mod trace;
mod transport;

pub use error::{Error, Result};
pub use root::DataRoot;
pub use server::AgentServer;
pub use transport::{
    DEFAULT_MAX_BODY_BYTES, Handler, HttpOptions, HttpServer, MCP_PATH, serve_http, serve_io,
    serve_stdio,
};

/// The MCP SDK this runtime is built on (rmcp, pinned exactly in the workspace manifest), for
/// handlers other than [`AgentServer`] served on the same transports: the conformance
/// fixtures' server, a custom tool set. Depending on it through this path keeps one pin.
pub use rmcp as mcp;
