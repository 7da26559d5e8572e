//! Elementwise kernels: one unit per element, bound by memory traffic.

pub mod gelu;
pub mod swiglu;
