//! Layer 6 of mlinfra: the hot paths as custom kernels.
//!
//! cubecl kernels (one Rust source, compiled for CUDA, Vulkan, Metal) where memory traffic is
//! the bottleneck, and CPU SIMD kernels for the CPU serving path. Each kernel has a naive twin
//! it is tested against and implements an extension trait defined by `mlinfra-serve` or
//! `mlinfra-train`, so the reference path in those crates is always there as the oracle.
//!
//! # Status
//!
//! Today: the runtime plumbing ([`wgpu::software_device`], the adapter every CPU-only test
//! machine runs kernels on), one elementwise kernel, [`gelu_tanh`], proven against its f64
//! twin, and the first CPU kernel, [`cpu::quant`]'s Q4_1 × Q8_1 dot product (AVX2 and
//! portable, against an f64 twin). Quantized GEMV/GEMM, fused norms and paged decode
//! attention are next.
//!
//! # Quick start
//!
//! ```no_run
//! // `no_run`: needs a Vulkan driver (on CPU-only machines, Mesa's `mesa-vulkan-drivers`).
//! let device = mlinfra_kernels::wgpu::software_device()?;
//! println!("running on {}", device.adapter_name());
//! let out = mlinfra_kernels::gelu_tanh(&device.client(), &[-1.0, 0.0, 1.0])?;
//! assert!((out[2] - 0.841_192).abs() < 1e-5); // gelu(1)
//! # Ok::<(), mlinfra_kernels::Error>(())
//! ```
//!
//! # Features
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `cuda` | cubecl's CUDA runtime and burn's CUDA backend (needs an LLVM bundle to link) | no |
//!
//! The `wgpu` runtime is always compiled: it needs no SDK at build time and loads the Vulkan or
//! Metal driver at run time. Its timings on the software driver are not GPU numbers.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cpu;
pub mod elementwise;
mod error;
pub mod wgpu;

pub use elementwise::gelu::{gelu_tanh, gelu_tanh_reference};
pub use error::{Error, Result};
