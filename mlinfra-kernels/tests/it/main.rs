//! Integration tests of `mlinfra-kernels`: one binary, one module per area. Kernels run on the
//! software Vulkan adapter (lavapipe) through cubecl's wgpu runtime.

mod attention;
mod cube;
#[cfg(feature = "fused")]
mod fused;
mod gelu;
mod gemv;
mod host;
mod loss;
mod matrix;
mod norm;
mod paged_attention;
#[cfg(feature = "prefill")]
mod prefill;
mod quant;
mod runtime;
mod swiglu;
