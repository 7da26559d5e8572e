//! CPU kernels for the serving path (issue 24): quantized weights that stay in their GGUF
//! blocks, multiplied against activations quantized on the fly, in SIMD chosen at run time.
//!
//! - [`quant`]: activations quantized to Q8_1 blocks, and the plain Q4_1 × Q8_1 dot product
//!   (ggml's `vec_dot_q4_1_q8_1`) as a reference point;
//! - [`matrix`]: Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K weight matrices repacked 8 rows at a
//!   time, multiplied by Q8_1 activations (GEMV for decode, tiled for prefill) with AVX2,
//!   AVX-VNNI or AVX-512-VNNI on x86-64, NEON (with `sdot` where present) on aarch64, chosen
//!   at run time, and a portable path that computes the same bits;
//! - [`pool`]: the threads a call is split over;
//! - `convert`: the format each GGUF type is multiplied in (Q5_1 and other types without a
//!   kernel converted to Q8_0 at load, with the error stated);
//! - [`SimdKernels`]: all of it as serve's `HostKernels`, the compute of its
//!   `HostLlamaRunner`.

mod attention;
pub(crate) mod convert;
mod host;
pub mod matrix;
pub mod pool;
pub mod quant;

pub use host::SimdKernels;

/// The instruction sets this CPU offers the kernels, detected at run time (never assumed:
/// a CPU without them runs the portable code, never SIGILL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2, FMA and F16C: 256-bit integer, fused multiply-add, and f16 conversions (every
    /// AVX2 CPU has all three; the kernels need all three).
    pub avx2: bool,
    /// AVX-VNNI: 256-bit int8 dot products (`vpdpbusd`).
    pub avx_vnni: bool,
    /// AVX-512 F, BW and VNNI.
    pub avx512_vnni: bool,
    /// aarch64's NEON (every aarch64 CPU).
    pub neon: bool,
    /// aarch64's dot-product extension (`sdot`, FEAT_DotProd).
    pub dotprod: bool,
}

impl CpuFeatures {
    /// What this CPU has.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx2: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c"),
                avx_vnni: is_x86_feature_detected!("avxvnni"),
                avx512_vnni: is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni"),
                neon: false,
                dotprod: false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            CpuFeatures {
                avx2: false,
                avx_vnni: false,
                avx512_vnni: false,
                neon: std::arch::is_aarch64_feature_detected!("neon"),
                dotprod: std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod"),
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            CpuFeatures {
                avx2: false,
                avx_vnni: false,
                avx512_vnni: false,
                neon: false,
                dotprod: false,
            }
        }
    }
}
