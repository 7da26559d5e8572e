//! The one criterion binary of mlinfra; one module per layer.
//!
//! Run with: `cargo bench -p mlinfra-benches --bench main` (add `-- data` for one group).

use criterion::criterion_main;

mod data;
mod kernels;
mod loader;
mod serve;

criterion_main!(
    data::benches,
    loader::benches,
    kernels::benches,
    serve::benches
);
