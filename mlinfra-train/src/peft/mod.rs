//! Post-training: adapters that specialise a pretrained model cheaply, in Hugging Face PEFT's
//! terms and file format.
//!
//! - [`LoraConfig`] / [`TargetModules`]: an adapter's rank, scaling, targets and variant
//!   (LoRA, rsLoRA, DoRA), with PEFT's names and defaults.
//! - [`LoraLinear`]: the linear layer that carries adapters (what a [`Llama`] is built of),
//!   applied unmerged, merged and unmerged on demand; see its module for the computation.
//!
//! [`Llama`]: crate::models::Llama

mod config;
mod linear;

pub use config::{DEFAULT_ALPHA, DEFAULT_RANK, LoraConfig, TargetModules};
pub(crate) use linear::AdapterInit;
pub use linear::{LoraLinear, LoraWeights};
