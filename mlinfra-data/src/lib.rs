//! Layer 1 of mlinfra: how training and serving data is stored and read for speed.
//!
//! "Store in Parquet, compute in Arrow, convert to tensors only at the last step." This crate
//! will open Parquet datasets (local or on object stores) with projection, statistics pruning
//! and random access, materialise them into a memory-mapped Arrow IPC cache that is read
//! zero-copy, fingerprint them with a content-hashed manifest, and memory-map tensor files
//! (GGUF, safetensors). Every malformed input yields a typed [`Error`], never a panic.
//!
//! # Status
//!
//! Only the error type exists today; the dataset API is the next milestone. The README's status
//! table tracks what works.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | (none yet) | | |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;

pub use error::{Error, Result};
