//! Layer 5 of mlinfra: an LLM serving core where KV memory, not compute, is managed.
//!
//! This crate will hold a paged KV block pool with reference counts and a prefix cache, a
//! continuous-batching scheduler with chunked prefill and preemption, sampling and speculative
//! decoding, an attention extension trait with a burn reference implementation (fast backends
//! come from `mlinfra-kernels`), an engine with streaming and cancellation, and an
//! OpenAI-compatible HTTP API.
//!
//! # Status
//!
//! [`kv::BlockPool`] (reference-counted KV blocks with an LRU free queue that keeps cached
//! contents until their memory is needed) exists; the prefix cache, scheduler, sampling,
//! speculative decoding and engine come next. The README's status table tracks what works.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | NVIDIA GPUs through burn's CUDA backend (needs an LLVM bundle to link) | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
pub mod kv;

pub use error::{Error, Result};
