//! [`Llama`]: a Llama-family decoder (RMSNorm, rotary positions, grouped-query attention,
//! SwiGLU, optionally tied embeddings) that trains like any burn module and loads trained
//! weights from GGUF or safetensors through mlinfra-data.
//!
//! ```no_run
//! use mlinfra_data::tensor::GgufFile;
//! use mlinfra_data::tokenizer::Tokenizer;
//! use mlinfra_train::models::Llama;
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tokenizer = Tokenizer::from_gguf(&file)?;
//! let (model, _config) = Llama::from_gguf(&file, &burn::tensor::Device::flex())?;
//! let prompt = tokenizer.encode("The capital of France is")?;
//! let stop: Vec<u32> = tokenizer.eos_id().into_iter().collect();
//! let ids = model.generate_greedy(&prompt, 8, &stop)?;
//! println!("{}", tokenizer.decode(&ids)?); // " Paris.\n\nThe answer is"
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Conventions
//!
//! Parameters carry Hugging Face's names and layout (`layers.0.self_attn.q_proj.weight`;
//! burn's `Linear` stores the transpose, `[in, out]`), and RoPE follows Hugging Face's
//! `rotate_half`. GGUF files, which permute the query and key rows for llama.cpp's
//! adjacent-pair rotation, are un-permuted on load ([`Llama::from_gguf`]).
//!
//! # Costs
//!
//! Weights are held as f32 (or the dtype [`crate::precision::cast_module`] casts them to):
//! about 540 MB for a 135M-parameter model, whatever the quantization on disk. A forward over
//! `s` positions costs about `2 · params · s` flops plus attention's `4 · s² · hidden` per
//! layer; [`KvCache`] makes each generated token cost one position.

mod adapters;
mod config;
mod generate;
mod host;
mod load;
mod model;
mod norm;
mod packed;
mod swiglu;
mod varlen;

pub use adapters::AdapterInfo;
pub use config::LlamaConfig;
pub use model::{KvCache, LayerAttention, Llama, LlamaAttention, LlamaLayer, LlamaMlp};
pub use packed::PackedRows;
pub use varlen::VarlenAttention;
