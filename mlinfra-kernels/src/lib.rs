//! Layer 6 of mlinfra: the hot paths as custom kernels.
//!
//! cubecl kernels (one Rust source, compiled for CUDA, Vulkan, Metal) where memory traffic is
//! the bottleneck, and CPU SIMD kernels for the CPU serving path. Each kernel has a naive twin
//! it is tested against and implements an extension trait defined by `mlinfra-serve` or
//! `mlinfra-train`, so the reference path in those crates is always there as the oracle.
//!
//! # Status
//!
//! - GPU: the runtime plumbing ([`wgpu::software_device`], the adapter every CPU-only test
//!   machine runs kernels on) and elementwise kernels proven against their f64 twins:
//!   [`gelu_tanh`] and the fused SwiGLU, [`swiglu`] and [`swiglu_backward`] (Liger's fusion:
//!   the backward recomputes the sigmoid instead of storing it). They take host slices and
//!   plug into no trait yet; the serving and training kernels are next (issue 25).
//! - CPU: [`cpu::SimdKernels`], serve's `HostKernels` for its `HostLlamaRunner` and the
//!   default of the `llama_generate` and `serve_openai` examples: quantized GEMV/GEMM on
//!   repacked GGUF blocks (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K; other types converted to Q8_0
//!   at load), x86 or NEON SIMD chosen at run time with a portable path computing the same
//!   bits, paged attention over an f16 cache with an online softmax, and a spinning thread
//!   pool. docs/BENCHMARKS.md (runs S4, S5) sets it beside llama.cpp.

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
pub mod cube;
mod device;
pub mod elementwise;
mod error;
pub mod fused;
pub mod gemv;
pub mod loss;
pub mod norm;
pub mod paged_attention;
mod reduce;
pub mod roofline;
pub mod wgpu;

pub use device::{DeviceBuffer, Element, synchronize};

pub use elementwise::gelu::{gelu_tanh, gelu_tanh_reference};
pub use elementwise::swiglu::{
    swiglu, swiglu_backward, swiglu_backward_reference, swiglu_reference,
};
pub use error::{Error, Result};
