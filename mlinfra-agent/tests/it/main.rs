//! Integration tests of `mlinfra-agent`: one binary, one module per area.

mod approval;
mod common;
mod finetune;
mod http;
mod jobs;
mod lineage;
mod loader;
mod resources;
mod root;
mod sandbox;
mod serving;
mod stats;
mod stdio;
mod trace;
mod wasm;
