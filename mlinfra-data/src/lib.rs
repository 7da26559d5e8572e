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
//! - [`Dataset`] / [`DatasetBuilder`]: open, inspect ([`Dataset::shards`]), project.
//! - [`Dataset::take`]: random access by global row number.
//! - [`Scan`] / [`ScanBuilder`]: streaming, in order, `readahead` row groups in flight.
//!
//! # Status
//!
//! Local files, directories and globs. Object stores, the memory-mapped Arrow IPC cache,
//! predicate pruning, manifests, CSV/JSON conversion and tensor files (GGUF, safetensors) are
//! the next milestones; the README's status table tracks what works.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | (none yet) | | |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cache;
mod dataset;
mod error;
pub mod manifest;
mod pool;
pub mod scan;
mod source;
pub mod take;

pub use cache::{IpcCache, IpcCacheBuilder, IpcFile};
pub use dataset::{DEFAULT_MAX_DECODED_BYTES, Dataset, DatasetBuilder, Shard};
pub use error::{Error, Result};
pub use manifest::{Manifest, ShardEntry, Verification};
pub use scan::{Scan, ScanBuilder};
