//! Layer 5 of mlinfra: an LLM serving core where KV memory, not compute, is managed.
//!
//! The serving core: a paged KV block pool with reference counts and a prefix cache, a
//! continuous-batching scheduler with chunked prefill and preemption, sampling, an attention
//! extension trait with a burn reference implementation (fast backends come from
//! `mlinfra-kernels`), a Llama runner over paged KV with per-row LoRA adapters, an engine with
//! streaming, cancellation, structured outputs and speculative decoding, and (feature
//! `server`) an OpenAI-compatible HTTP server.
//!
//! # Status
//!
//! Working, tested against independent references:
//! - [`kv`]: reference-counted KV blocks with an LRU free queue, chained 128-bit prefix
//!   hashes, per-sequence block tables with prefix reuse and copy-on-write;
//! - [`sched`]: continuous batching with a token budget, chunked prefill, FCFS or priority
//!   order, and preemption by recompute with guards against thrash;
//! - [`sampling`]: greedy, temperature, top-k/top-p/min-p, penalties, seeded generators,
//!   logprobs, stop tokens and stop strings ([`sampling::StopCriteria`]: the one place a
//!   request's stopping is decided);
//! - [`attention`]: the paged-attention extension trait and its batch-invariant burn
//!   reference; [`runner`]: the Llama model over paged KV, several LoRA adapters per batch;
//! - [`engine`]: streaming with text deltas, cancellation on handle drop, per-request and
//!   engine metrics, per-request token constraints;
//! - [`spec`]: speculative decoding with prompt-lookup or draft-model drafts, verified in the
//!   engine by the Leviathan et al. acceptance rule;
//! - `guidance` (feature): JSON-schema structured outputs by llguidance's token masks;
//! - `server` (feature): the OpenAI API (chat and text completions, streaming, `n`, stop
//!   strings, logprobs, tools, `response_format`, multi-LoRA), Prometheus metrics, 429s,
//!   hang-up aborts and drain on shutdown. Example `serve_openai`.
//!
//! Next: quantized weights on the serving path and a fast CPU paged-attention kernel (the
//! CPU fast path against llama.cpp). The README's status table tracks what works.
//!
//! ```
//! use burn::tensor::Device;
//! use mlinfra_serve::attention::ReferenceAttention;
//! use mlinfra_serve::engine::{Engine, EngineConfig, StreamEvent};
//! use mlinfra_serve::runner::LlamaRunner;
//! use mlinfra_serve::sampling::SamplingParams;
//! use mlinfra_train::models::LlamaConfig;
//!
//! let config = LlamaConfig {
//!     vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4,
//!     num_kv_heads: 2, head_dim: None, rms_norm_eps: 1e-5, rope_theta: 1e4,
//!     max_seq_len: 128, tie_embeddings: false,
//! };
//! let device = Device::flex();
//! let model = config.init_with_std(0, 0.2, &device)?;
//! let runner = LlamaRunner::new(model, &config, 64, 16, Box::new(ReferenceAttention), &device)?;
//! // The KV pool (64 blocks of 16 slots) is the runner's; the engine schedules over it.
//! let mut engine = Engine::new(runner, EngineConfig::default())?;
//! let handle = engine.add_request(vec![1, 2, 3], SamplingParams::greedy(4))?;
//! engine.run_until_idle()?;
//! let tokens: Vec<u32> = handle
//!     .events()
//!     .try_iter()
//!     .filter_map(|event| match event {
//!         StreamEvent::Token { token, .. } => Some(token),
//!         StreamEvent::Finished { .. } => None,
//!     })
//!     .collect();
//! assert_eq!(tokens.len(), 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `server` | [`server`]: the OpenAI-compatible HTTP server (axum, tokio); implies `guidance` | no |
//! | `guidance` | [`guidance`]: structured outputs, token masks from JSON schemas (llguidance) | no |
//! | `cuda` | NVIDIA GPUs through burn's CUDA backend (needs an LLVM bundle to link) | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attention;
pub mod engine;
mod error;
#[cfg(feature = "guidance")]
#[cfg_attr(docsrs, doc(cfg(feature = "guidance")))]
pub mod guidance;
pub mod host;
pub mod kv;
pub mod runner;
pub mod sampling;
pub mod sched;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod spec;

pub use error::{Error, Result};
