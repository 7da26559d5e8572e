//! Layer 1 of mlinfra: how training and serving data is stored and read for speed.
//!
//! "Store in Parquet, compute in Arrow, convert to tensors only at the last step." A
//! [`Dataset`] is one logical table over one or many Parquet files: opening it reads only the
//! footers (schema, row counts, page indexes); [`Dataset::take`] reads arbitrary rows touching
//! only the pages that hold them; [`Dataset::scan`] streams every row with bounded memory,
//! decoding row groups in parallel. Every malformed input yields a typed [`Error`] naming the
//! file, never a panic.
//!
//! # Quick start
//!
//! ```no_run
//! use mlinfra_data::Dataset;
//!
//! let dataset = Dataset::open("data/train-*.parquet")?.project(&["emb", "label"])?;
//! println!("{} rows in {} files", dataset.num_rows(), dataset.shards().len());
//!
//! let batch = dataset.take(&[42, 7, 1_000_000])?; // rows in the requested order
//! for batch in dataset.scan().with_batch_size(4096).build() {
//!     let batch = batch?;
//!     # let _ = batch;
//! }
//! # let _ = batch;
//! # Ok::<(), mlinfra_data::Error>(())
//! ```
//!
//! # Principal types
//!
//! - [`Dataset`] / [`DatasetBuilder`]: open, inspect ([`Dataset::shards`], [`Dataset::summary`]),
//!   project.
//! - [`Dataset::take`]: random access by global row number, reading only the pages that hold the
//!   rows ([`Dataset::bytes_read`] counts what was fetched).
//! - [`Scan`] / [`ScanBuilder`]: streaming, in order, `readahead` row groups in flight;
//!   [`ScanBuilder::with_filter`] takes a [`Predicate`] and skips row groups and pages that
//!   cannot match.
//! - [`Manifest`]: shards with content hashes; its hash is the dataset's fingerprint
//!   ([`Dataset::fingerprint`]), and [`Manifest::verify`] finds changed or missing shards.
//! - [`IpcCache`]: the dataset materialised as memory-mapped Arrow IPC files read without
//!   copying ([`Dataset::ipc_cache`]); the loader's fast path.
//! - [`convert::Conversion`]: CSV and JSON lines to Parquet.
//! - [`tensor::GgufFile`], [`tensor::SafetensorsFile`]: memory-mapped model weights.
//! - [`tokenizer::Tokenizer`]: the tokenizer a GGUF file or a `tokenizer.json` describes.
//! - [`files`]: opening paths without hanging on FIFOs or devices, bounded reads, atomic and
//!   durable file replacement; what every layer uses.
//!
//! # Where data lives
//!
//! Local files, directories and globs; and object stores: `s3://` (and S3-compatible servers
//! through `aws_endpoint`), `gs://`, `az://`, `http(s)://`, configured from the environment
//! and [`DatasetBuilder::with_storage_option`]. Every read goes through one path
//! ([`storage`]): planned by arrow-rs's push decoders, bounds-checked, coalesced, counted.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `encryption` | Parquet modular encryption: [`DatasetBuilder::with_decryption`] (adds `ring`) | yes |
//! | `cloud` | all four object stores below | yes |
//! | `s3` | `s3://` and S3-compatible stores | via `cloud` |
//! | `gcs` | `gs://` | via `cloud` |
//! | `azure` | `az://`, `abfs://` | via `cloud` |
//! | `http` | `http(s)://` (one file per URI; WebDAV servers can list) | via `cloud` |
//!
//! The object stores add an HTTP client (reqwest, rustls with ring) and a small tokio runtime
//! of the crate's own; `default-features = false, features = ["encryption"]` builds without.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cache;
pub mod chat;
mod compat;
pub mod convert;
mod dataset;
#[cfg(feature = "encryption")]
mod decryption;
mod direct;
mod error;
pub mod files;
pub mod manifest;
pub mod materialize;
mod mmap;
mod pool;
pub mod predicate;
pub mod scan;
mod source;
pub mod storage;
mod summary;
pub mod take;
pub mod tensor;
pub mod tokenizer;

pub use cache::{IpcCache, IpcCacheBuilder, IpcFile, RowRefs};
pub use dataset::{DEFAULT_MAX_DECODED_BYTES, Dataset, DatasetBuilder, Shard};
#[cfg(feature = "encryption")]
pub use decryption::Decryption;
pub use error::{Error, Result};
pub use manifest::{Manifest, ShardEntry, Verification};
pub use predicate::Predicate;
pub use scan::{Scan, ScanBuilder};
pub use summary::{ColumnSummary, Summary};
