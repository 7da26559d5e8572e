//! Layer 6 of mlinfra: the hot paths as custom kernels.
//!
//! cubecl kernels (one Rust source, compiled for CUDA, Vulkan, Metal) where memory traffic is
//! the bottleneck, and CPU SIMD kernels for the CPU serving path. Each kernel has a naive twin
//! it is tested against and implements an extension trait defined by `mlinfra-serve` or
//! `mlinfra-train`, so the reference path in those crates is always there as the oracle.
//!
//! # Status
//!
//! - GPU (cubecl, one source for CUDA, Vulkan, Metal; tested on Mesa's software Vulkan,
//!   [`wgpu::software_device`]), each kernel against a naive f64 twin, on [`DeviceBuffer`]s so
//!   that launches chain without host round trips:
//!   - [`norm`]: RMSNorm with an optional fused residual add, forward and backward;
//!   - [`loss`]: softmax cross-entropy whose gradient is written over the logits (Liger's);
//!   - [`elementwise`]: the fused SwiGLU ([`swiglu`], [`swiglu_backward`]) and GELU;
//!   - [`paged_attention`]: decode (and prefill) attention over serve's paged KV cache,
//!     query groups per cube (GQA) and split-K partitions (vLLM's v2, FlashDecoding);
//!   - [`prefill`]: a prompt chunk's causal attention by cubek's flash attention, its context
//!     gathered out of the paged cache (where a cubek routine runs on the device);
//!   - [`gemv`]: dequantize-GEMV on Q8_0 / Q4_0 / Q4_1 blocks, f32 or Q8_1 activations;
//!   - [`roofline`]: each kernel's bytes and FLOPs for a shape, what benchmarks divide by.
//!
//!   They plug into the layers above by their traits: [`cube::CubeKernels`] is serve's
//!   `HostKernels` on a cubecl device (`llama_generate --device wgpu`), [`fused::CubeFusedOps`]
//!   is train's `FusedOps` for burn's cubecl backend (the Llama decoder's norms, gates and loss
//!   as autodiff steps).
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
//! | `fused` | [`fused`]: train's fused ops on burn's cubecl backend (burn's `wgpu` backend built) | yes |
//! | `prefill` | [`prefill`]: cubek's flash attention for prompt chunks (cubek-attention built; in the tree already under `fused`) | yes |
//! | `cuda` | cubecl's CUDA runtime and burn's CUDA backend (links with `scripts/setup-cuda-build`, docs/CUDA.md) | no |
//!
//! The `wgpu` runtime (and burn's cubecl backend on it) is always compiled: it needs no SDK at
//! build time and loads the Vulkan or Metal driver at run time. Its timings on the software
//! driver are not GPU numbers.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cpu;
pub mod cube;
mod device;
pub mod elementwise;
mod error;
#[cfg(feature = "fused")]
pub mod fused;
pub mod gemv;
pub mod loss;
pub mod norm;
pub mod paged_attention;
#[cfg(feature = "prefill")]
pub mod prefill;
mod reduce;
pub mod roofline;
pub mod wgpu;

pub use device::{DeviceBuffer, Element, supports, synchronize};

pub use elementwise::gelu::{gelu_tanh, gelu_tanh_reference};
pub use elementwise::swiglu::{
    swiglu, swiglu_backward, swiglu_backward_reference, swiglu_reference,
};
pub use error::{Error, Result};
