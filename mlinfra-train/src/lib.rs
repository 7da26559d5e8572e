//! Layers 3–4 of mlinfra: training that survives failures and resumes bit-exactly.
//!
//! Built so far (issue 5 is in progress):
//!
//! - [`ParamLayout`]: a module's float parameters as one flat `f32` vector keyed by module
//!   path (`layers.0.weight`), not by burn's per-process random ids: what collectives reduce,
//!   optimizer shards cut and checkpoints will store.
//! - [`Collective`]: all-reduce, reduce-scatter, all-gather, broadcast, barrier;
//!   [`collective::ThreadGroup`] runs N ranks as threads (deterministic sums in rank order; a
//!   rank that leaves fails the others instead of hanging), `collective::MpiCollective` one
//!   rank per process under `mpirun` (feature `mpi`), `collective::NcclCollective` ranks on
//!   NVIDIA GPUs (feature `cuda`), [`collective::Single`] is one.
//! - [`DataParallel`]: one rank's optimizer step: gradient accumulation that averages over
//!   samples, global-norm clipping, burn's AdamW or SGD ([`optim::ShardOptimizer`]) on fp32
//!   master weights, replicated or ZeRO-1/ZeRO-2 sharded ([`Sharding`]), warmup + cosine schedule.
//! - [`precision`]: mixed precision: the model computes in bf16 or f16 ([`Precision`]) on
//!   fp32 master weights; f16 with dynamic loss scaling ([`LossScaling`], PyTorch
//!   `GradScaler`'s rules: skip a step whose gradients overflow, back off, grow again).
//! - [`models::Mlp`] with a serde [`models::MlpConfig`] and seeded, rank-independent init.
//! - [`models::Llama`]: a Llama-family decoder (RMSNorm, RoPE, grouped-query attention,
//!   SwiGLU, tied embeddings) from a serde [`models::LlamaConfig`], loading GGUF (quantized)
//!   or safetensors weights through mlinfra-data; greedy decoding with a KV cache. On the
//!   CPU backend in f32, attention over packed sequences ([`models::VarlenAttention`]),
//!   SwiGLU and RMSNorm are single autodiff steps that keep only what their backward pass
//!   needs (as FlashAttention and Liger Kernel do), which is what makes LoRA fine-tuning
//!   faster and smaller than PEFT on torch (docs/BENCHMARKS.md).
//! - [`Trainer`]: the loop over an mlinfra-loader: a [`trainer::Task`]'s loss per batch,
//!   gradient accumulation, evaluation, JSON-lines metrics, a progress bar, checkpoints, and a
//!   stop flag for SIGTERM; resumes bit-exactly (weights, optimizer state, step, loader
//!   position, the ranks' generators).
//! - [`checkpoint`]: one burnpack file per rank plus a SHA-256 manifest, written atomically
//!   (sync or async), verified on load with fallback to the previous one, keep-last-k, N-to-M
//!   resharding, typed errors for checkpoints that do not fit; Young/Daly intervals.
//! - [`Supervisor`]: reruns a crashed training process (it resumes from its newest valid
//!   checkpoint) a bounded number of times, and turns its own stop into a graceful SIGTERM.
//!   The crash tests `kill -9` real worker processes mid-step and mid-write and check that
//!   the resumed job ends with the uninterrupted job's weights, bit for bit.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor, TensorData};
//! use mlinfra_train::collective::Single;
//! use mlinfra_train::models::MlpConfig;
//! use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
//! use mlinfra_train::{DataParallel, Precision, Sharding, StepOptions};
//!
//! let device = Device::flex().autodiff();
//! let model = MlpConfig { input: 4, hidden: vec![8], classes: 3, seed: 0 }.init(&device)?;
//! let options = StepOptions {
//!     schedule: LrSchedule::warmup_cosine(1e-2, 10, 100, 0.1),
//!     max_grad_norm: Some(1.0),
//!     sharding: Sharding::Replicated,
//!     precision: Precision::F32,
//!     loss_scaling: None,
//! };
//! // `Single` for one process; a `ThreadGroup` rank (or MPI) for data parallelism.
//! let (mut engine, mut model) = DataParallel::new(Single, model, &OptimizerConfig::adamw(), options)?;
//! for _ in 0..3 {
//!     let x = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 8], [2, 4]), &device);
//!     let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
//!     let grads = model.loss(x, y).backward();
//!     engine.accumulate(&model, &grads, 2)?; // call once per micro-batch
//!     let (next, report) = engine.step(model)?;
//!     model = next;
//!     assert!(report.grad_norm.is_finite());
//! }
//! # Ok::<(), mlinfra_train::Error>(())
//! ```
//!
//! The README's status table tracks what works and what is measured.
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | NVIDIA GPUs through burn's CUDA backend (needs an LLVM bundle to link) and NCCL collectives | no |
//! | `mpi` | `collective::MpiCollective` (needs an MPI library and libclang to build) | no |
//! | `fault-injection` | Fault points for crash tests in release builds (debug builds have them), armed by `MLINFRA_TRAIN_FAULT` | no |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod checkpoint;
pub mod collective;
mod data_parallel;
mod error;
mod fault;
pub mod fused;
pub mod models;
pub mod optim;
mod params;
pub mod peft;
pub mod post_training;
pub mod precision;
mod rng;
pub mod supervisor;
pub mod trainer;

pub use collective::Collective;
pub use data_parallel::{DataParallel, Sharding, StepOptions, StepReport};
pub use error::{Error, Result};
pub use params::{ParamLayout, ParamSlot};
pub use precision::{LossScaling, Precision};
pub use rng::SplitMix64;
pub use supervisor::Supervisor;
pub use trainer::{Trainer, TrainerConfig};
