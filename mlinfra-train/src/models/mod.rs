//! Model families, as burn modules built from serde configs.

mod mlp;

pub use mlp::{Mlp, MlpConfig};
