//! Layer 7 of mlinfra: the stack as Model Context Protocol tools.
//!
//! This crate will hold an MCP server runtime (stdio and Streamable HTTP) whose tools are the
//! layers below (inspect a dataset, run and watch a training job, generate text and read
//! serving metrics), with sandboxed execution, a trace of every call, content-hash versioning
//! of tools, prompts, models and data, and refusal of hostile input.
//!
//! # Status
//!
//! Only the error type exists today; the runtime is a later milestone. The README's status
//! table tracks what works.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | Run the tools' device work on NVIDIA GPUs | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;

pub use error::{Error, Result};
