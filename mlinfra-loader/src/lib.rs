//! Layer 2 of mlinfra: feeding accelerators so they never wait for the CPU.
//!
//! This crate will turn an `mlinfra-data` dataset into a deterministic, resumable stream of
//! burn batches: an epoch plan that is a pure function of (seed, epoch, dataset fingerprint),
//! equal splits across ranks, O(1) resume, and a prefetch pipeline (IO, decode, collate,
//! staging) over bounded channels.
//!
//! # Status
//!
//! Today it holds [`Device`], the run-time choice of where tensors live, shared by every layer
//! above, and [`EpochPlan`], the deterministic, O(1)-resumable sample order of an epoch and its
//! equal split across ranks. The prefetching pipeline is next; the README's status table tracks
//! what works.
//!
//! # Quick start
//!
//! ```
//! use mlinfra_loader::Device;
//!
//! let device: Device = "cpu".parse()?;
//! let burn_device = device.to_burn()?; // a `burn::tensor::Device`
//! # let _ = burn_device;
//!
//! // Without the `cuda` feature, asking for a GPU is a typed error, not a panic.
//! # #[cfg(not(feature = "cuda"))]
//! assert!(matches!(
//!     "cuda:0".parse::<Device>()?.to_burn(),
//!     Err(mlinfra_loader::Error::FeatureDisabled { feature: "cuda", .. })
//! ));
//! # Ok::<(), mlinfra_loader::Error>(())
//! ```
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | NVIDIA GPUs through burn's CUDA backend (needs an LLVM bundle to link) | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod device;
mod error;
pub mod plan;

pub use device::Device;
pub use error::{Error, Result};
pub use plan::{EpochPlan, LoaderState, RankSlice, Remainder, Shuffle};
