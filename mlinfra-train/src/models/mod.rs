//! Model families, as burn modules built from serde configs.

mod llama;
mod mlp;

pub use llama::{
    AdapterInfo, KvCache, LayerAttention, Llama, LlamaAttention, LlamaConfig, LlamaLayer, LlamaMlp,
    PackedRows, VarlenAttention,
};
pub use mlp::{Mlp, MlpConfig};
