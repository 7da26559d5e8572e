//! The tools over the stack, one module per layer: arguments and results as Rust types (their
//! JSON schemas are derived), the work as plain functions the server runs.

pub mod datasets;
pub mod jobs;
pub mod loader;
pub mod sandbox;
pub mod stats;
pub mod wasm;
