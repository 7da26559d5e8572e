//! Layers 3–4 of mlinfra: training that survives failures and resumes bit-exactly.
//!
//! This crate will hold burn model families (an MLP, a Llama-style decoder), a trainer loop
//! with gradient accumulation, global-norm clipping and mixed precision, data parallelism over
//! a `Collective` (threads, MPI, NCCL), ZeRO-style optimizer-state sharding, atomic,
//! checksummed, re-shardable step checkpoints, and post-training (LoRA, DoRA, DPO).
//!
//! # Status
//!
//! Only the error type exists today; the trainer is a later milestone. Devices are chosen with
//! [`mlinfra_loader::Device`]. The README's status table tracks what works.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | NVIDIA GPUs through burn's CUDA backend (needs an LLVM bundle to link) | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;

pub use error::{Error, Result};
