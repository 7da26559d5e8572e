//! Integration tests of `mlinfra-agent`: one binary, one module per area.

mod approval;
mod common;
mod http;
mod jobs;
mod lineage;
mod loader;
mod resources;
mod root;
mod sandbox;
mod serving;
mod stdio;
mod trace;
