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
//! sessions, kept on disk across restarts when asked ([`sessions`]), 2026-07-28 stateless
//! requests); the official conformance suite passes against the fixtures' server on the same
//! runtime (`mcp_conformance_server`, run in CI).
//! - Dataset tools `dataset_schema`, `dataset_sample`, `dataset_stats`, `dataset_fingerprint`,
//!   `dataset_verify` and `dataset_convert` (CSV / JSON lines to a new Parquet file under the
//!   root; never overwrites); the datasets as resources ([`catalog`]:
//!   `mlinfra://datasets/{+path}`, paged; subscribed to with `resources/subscribe` or a
//!   2026-07-28 `subscriptions/listen` stream, updates sent when a dataset's files change),
//!   the `explore_dataset` prompt, completion of paths.
//! - Loader tools `loader_plan` (each rank's share and first batches: the plan a trainer
//!   follows) and `loader_probe` (samples/s, time to the first batch, waits).
//! - Training jobs ([`jobs`]): `train_start`, `train_status`, `train_wait` (progress
//!   notifications), `train_stop`, `train_resume`, `train_list`, `job_delete` (only on the
//!   user's yes, by elicitation: a request in a session, an `input_required` round
//!   trip when stateless); a job runs in the background, outlives the client, and survives a
//!   `kill -9` of the server (found `interrupted`, resumed from its newest checkpoint). A job
//!   trains a classifier, or fine-tunes a GGUF chat model through mlinfra-train's
//!   post-training layer (SFT or DPO through a LoRA, DoRA or QLoRA adapter; `adapter_load
//!   {job}` serves the result).
//! - Serving tools ([`serving`]): `generate`, `chat`, `engine_metrics`, `adapter_load`,
//!   `adapter_unload`, over mlinfra-serve's OpenAI server embedded in memory or at a URL.
//! - Lineage ([`lineage`]): tools, prompts, models, adapters and datasets by content hash,
//!   with versions; each run records its dataset fingerprints, configuration and the
//!   `train_start` definition; a tool changed since its approval is flagged and asked about
//!   again (`lineage_list`). `checkpoint_inspect` verifies a job's checkpoints and lists what
//!   they hold.
//! - Every request and every tool call is a `tracing` span with OpenTelemetry's GenAI/MCP
//!   attributes, token counts for generations ([`traced`], [`trace`]: a JSONL exporter, OTLP
//!   behind the `otlp` feature).
//! - A subprocess sandbox ([`sandbox`]: Landlock filesystem and TCP allow-list, seccomp,
//!   rlimits, a process group killed on time or output overflow; refused where the kernel
//!   lacks Landlock), behind the `sandbox_run` tool.
//! - A WebAssembly sandbox ([`wasm`]: wasmtime's core runtime, fuel and epoch deadlines, a
//!   memory cap, our own small host interface with only `/data` and a scratch directory
//!   pre-opened), behind the `wasm_run` tool.
//!
//! Not yet (issue 26): `logging/setLevel` and log notifications from the product's tools.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn run() -> mlinfra_agent::Result<()> {
//! use mlinfra_agent::{AgentServer, DataRoot, HttpOptions, serve_http};
//! let server = AgentServer::new(DataRoot::new("data")?).with_state("state")?;
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
//! | `otlp` | Export the spans to an OpenTelemetry collector over OTLP/HTTP (`trace::otlp_layer`) | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod approval;
pub mod catalog;
mod error;
mod framing;
pub mod jobs;
pub mod lineage;
mod root;
pub mod sandbox;
mod server;
pub mod serving;
pub mod sessions;
pub mod tools;
pub mod trace;
pub mod traced;
mod transport;
pub mod wasm;
mod watch;

pub use error::{Error, Result};
pub use root::DataRoot;
pub use server::{AgentServer, TOOLS_PAGE};
pub use transport::{
    DEFAULT_MAX_BODY_BYTES, Handler, HttpOptions, HttpServer, MCP_PATH, serve_http, serve_io,
    serve_stdio,
};

/// The MCP SDK this runtime is built on (rmcp, pinned exactly in the workspace manifest), for
/// handlers other than [`AgentServer`] served on the same transports: the conformance
/// fixtures' server, a custom tool set. Depending on it through this path keeps one pin.
pub use rmcp as mcp;
