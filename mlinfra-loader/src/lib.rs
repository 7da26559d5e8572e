//! Layer 2 of mlinfra: feeding accelerators so they never wait for the CPU.
//!
//! A [`Loader`] turns a [`Source`] (an `mlinfra-data` [`IpcCache`](mlinfra_data::IpcCache),
//! a Parquet [`Dataset`](mlinfra_data::Dataset), a [`Streaming`] object-store dataset or a
//! weighted [`Mixture`] of them) into a deterministic, resumable stream of batches
//! of burn tensor data, produced ahead of the consumer by worker threads.
//!
//! - **Order** ([`plan`]): the epoch's global order is a pure function of (dataset fingerprint,
//!   seed, epoch, shuffle mode): sequential, exact shuffle, or a block shuffle with a bounded
//!   memory footprint. Every rank gets the same number of samples; the worker count changes
//!   nothing delivered.
//! - **Resume** ([`LoaderState`]): a small serde value; resuming is O(1), with the same or
//!   another world size, batch size or worker count.
//! - **Pipeline** ([`pipeline`]): bounded channels, in-order delivery, backpressure by batch
//!   count and bytes, errors and panics reported from `next()`, threads joined on drop.
//! - **Collate** ([`collate`]): fixed-width columns as burn `TensorData`, without a copy when the
//!   rows are contiguous in the memory-mapped cache and in one copy into recycled buffers
//!   otherwise; token sequences padded with an attention mask; closures.
//! - **Streaming** ([`Streaming`]): shards of an object-store dataset fetched ahead into a
//!   local cache with a byte budget (LRU, shared across processes under a file lock, every
//!   shard verified against the manifest's hash).
//! - **Mixing** ([`Mixture`]): several sources in fixed proportions, exact per epoch, with a
//!   deterministic interleave.
//! - **Stats** ([`LoaderStats`]): consumer wait, queue depth, read and collate time, buffers.
//!
//! # Quick start
//!
//! ```no_run
//! use mlinfra_data::Dataset;
//! use mlinfra_loader::{Device, Loader, Shuffle};
//! use burn::tensor::Tensor;
//!
//! let device = "cpu".parse::<Device>()?.to_burn()?;
//! let cache = Dataset::open("data/train-*.parquet")?
//!     .project(&["emb", "label"])?
//!     .ipc_cache("cache/train")
//!     .open_or_create()?;
//! let mut loader = Loader::builder(cache, 256).shuffle(Shuffle::Exact).seed(7).build()?;
//! for batch in loader.by_ref() {
//!     let mut batch = batch?;
//!     let emb = Tensor::<2>::from_data(batch.data.remove("emb").unwrap(), &device);
//!     # let _ = emb;
//! }
//! let checkpoint = serde_json::to_string(loader.state())?; // resume with `.resume(state)`
//! # let _ = checkpoint;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Without the `cuda` feature, asking for a GPU is a typed error, not a panic:
//!
//! ```
//! use mlinfra_loader::Device;
//! # #[cfg(not(feature = "cuda"))]
//! assert!(matches!(
//!     "cuda:0".parse::<Device>()?.to_burn(),
//!     Err(mlinfra_loader::Error::FeatureDisabled { feature: "cuda", .. })
//! ));
//! # Ok::<(), mlinfra_loader::Error>(())
//! ```
//!
//! # Staging for a GPU
//!
//! With `.device(Device::Cuda(0))` (feature `cuda`), workers copy each finished batch into
//! page-locked host memory, so `Tensor::from_data` on the training thread starts an
//! asynchronous host-to-device copy instead of blocking on one; see [`Staging`]. A device that
//! is missing fails `build()` with a typed error. The CUDA path is type-checked in CI and has
//! not yet run on a GPU.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | NVIDIA GPUs through burn's CUDA backend (needs an LLVM bundle to link) | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod buffers;
pub mod collate;
pub mod device;
mod error;
pub mod mixture;
pub mod pipeline;
pub mod plan;
pub mod source;
mod stats;
pub mod stream;

pub use buffers::{BufferPool, PoolCounters};
pub use collate::{Collate, Pack, Pad, TensorBatch, Tensors, TokenCount};
pub use device::Device;
pub use error::{Error, Result};
pub use mixture::Mixture;
pub use pipeline::{Batch, Loader, LoaderBuilder, Staging};
pub use plan::{EpochPlan, LoaderState, RankSlice, Remainder, Shuffle};
pub use source::{Source, SourceCounters};
pub use stats::LoaderStats;
pub use stream::{Streaming, StreamingBuilder};
