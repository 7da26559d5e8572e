//! The one criterion binary of mlinfra; one module per layer.
//!
//! Run with: `cargo bench -p mlinfra-benches --bench main`

use criterion::criterion_main;

mod kernels;

criterion_main!(kernels::benches);
