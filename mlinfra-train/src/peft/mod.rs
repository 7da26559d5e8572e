//! Post-training: adapters that specialise a pretrained model cheaply, in Hugging Face PEFT's
//! terms and file format.
//!
//! - [`LoraConfig`] / [`TargetModules`]: an adapter's rank, scaling, targets and variant
//!   (LoRA, rsLoRA, DoRA), with PEFT's names and defaults.
//! - [`PeftAdapter`]: PEFT's adapter directory (`adapter_config.json`,
//!   `adapter_model.safetensors`), read and written, so adapters move both ways.
//! - [`LoraLinear`]: the linear layer that carries adapters (what a [`Llama`] is built of),
//!   applied unmerged, merged and unmerged on demand; see its module for the computation.
//!
//! [`Llama`]: crate::models::Llama

mod config;
mod files;
mod linear;
mod quantized;

pub use config::{DEFAULT_ALPHA, DEFAULT_RANK, LoraConfig, TargetModules};
pub use files::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, AdapterTensors, PeftAdapter};
pub(crate) use linear::{AdapterInit, SlotValues};
pub use linear::{LoraLinear, LoraWeights};
pub use quantized::{QuantizedWeight, TILE_ROWS};
