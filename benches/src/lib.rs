//! Shared helpers for the mlinfra benchmarks. The criterion binary is `main.rs`; side-by-side
//! comparison scripts against peer systems live in `compare/`.

/// Element counts the elementwise benchmarks sweep: from launch-bound to bandwidth-bound.
pub const ELEMENTWISE_SIZES: [usize; 3] = [1 << 12, 1 << 16, 1 << 20];
