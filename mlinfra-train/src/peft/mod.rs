//! Adapters that specialise a pretrained model cheaply, in Hugging Face PEFT's terms and file
//! format (the training tasks, SFT and DPO, are in [`post_training`](crate::post_training)).
//!
//! ```no_run
//! use mlinfra_data::tensor::GgufFile;
//! use mlinfra_train::models::Llama;
//! use mlinfra_train::peft::{LoraConfig, TargetModules};
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let device = burn::tensor::Device::flex().autodiff();
//! // QLoRA: the projections stay in their Q4_1 blocks; `Llama::from_gguf` for LoRA on f32.
//! let (base, _) = Llama::from_gguf_quantized(&file, &device)?;
//! let config = LoraConfig::new(16, 32.0).with_target_modules(TargetModules::names(["q_proj", "v_proj"]));
//! let model = base.with_adapter("default", &config, 0)?;
//! // ... train it (mlinfra_train::post_training::Sft with the Trainer) ...
//! model.save_adapter("default", "out/", Some("HuggingFaceTB/SmolLM2-135M-Instruct"))?;
//! // PeftModel.from_pretrained(model, "out/") loads it; so does Llama::load_adapter.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`LoraConfig`] / [`TargetModules`]: an adapter's rank, scaling, targets and variant
//!   (LoRA, rsLoRA, DoRA), with PEFT's names and defaults.
//! - [`PeftAdapter`]: PEFT's adapter directory (`adapter_config.json`,
//!   `adapter_model.safetensors`), read and written, so adapters move both ways.
//! - [`LoraLinear`]: the linear layer that carries adapters (what a [`Llama`] is built of),
//!   applied unmerged, merged and unmerged on demand; see its module for the computation.
//! - [`QuantizedWeight`]: QLoRA's frozen base in its GGUF blocks, dequantized a tile of rows
//!   at a time in the forward and backward passes.
//!
//! # What is built by hand, and why
//!
//! burn 0.22's `apply_lora` forms the dense `W + s·A·B` on every forward and adapts every 2-D
//! parameter; it has no unmerge, no DoRA and no PEFT files, and burn's quantized tensors are
//! symmetric (no Q4_1 zero-point) and dequantized whole before a matmul. So the adapter layer,
//! the PEFT file format and the quantized base are written here; the tensors, autodiff and
//! optimizers are burn's.
//!
//! [`Llama`]: crate::models::Llama

mod config;
mod files;
mod linear;
mod quantized;

pub use config::{DEFAULT_ALPHA, DEFAULT_RANK, LoraConfig, TargetModules};
pub use files::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, AdapterTensors, PeftAdapter};
pub(crate) use linear::{AdapterInit, SlotValues};
pub use linear::{AdapterRouting, LoraLinear, LoraWeights};
pub use quantized::{QuantizedWeight, TILE_ROWS};
