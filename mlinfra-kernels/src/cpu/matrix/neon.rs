//! The aarch64 kernels: NEON's 128-bit registers hold half of a group's 32-byte chunk, so
//! every chunk is two registers (rows 0-3, rows 4-7) and every step below is done for both
//! halves. Codes are signed bytes for `sdot` (4-, 5- and 6-bit codes are small positive
//! numbers; Q8_0's stored `q + 128` goes back to `q`), so no offset comes out of the sums
//! but Q4_0's, Q5_0's and Q6_K's own (`- 8`, `- 16`, `- 32`).
//!
//! The int8 dot step is `sdot` where the CPU has the dot-product extension (FEAT_DotProd,
//! detected at run time; Rust's `vdotq_s32` is not stable yet, so it is one instruction of
//! inline assembly), else `smull` and two pairwise adds, which every aarch64 CPU has. Both
//! compute the exact integer sums and the same floating-point steps as the portable kernels,
//! so the results are the same bits (tested under QEMU: docs/BENCHMARKS.md).

use std::arch::aarch64::*;

use super::{BlockQ8_1, GROUP, WeightFormat};

/// `acc + Σ_{4 bytes} a·b` per 32-bit lane, with `sdot`.
///
/// # Safety
///
/// The CPU has the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dot_sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` reads and writes registers only; the caller's promise covers the CPU.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `acc + Σ_{4 bytes} a·b` per 32-bit lane, with baseline NEON: byte products widened to
/// i16 (|product| ≤ 128·127), then adjacent pairs summed twice.
///
/// # Safety
///
/// None beyond NEON, which every aarch64 CPU has.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn dot_smull(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let low = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    let high = vpaddlq_s16(vmull_high_s8(a, b));
    vaddq_s32(acc, vpaddq_s32(low, high))
}

/// Activation codes `qs[at..at + 4]` in every 32-bit lane.
#[inline(always)]
fn broadcast4(qs: &[i8; 32], at: usize) -> int8x16_t {
    let word = i32::from_le_bytes([
        qs[at] as u8,
        qs[at + 1] as u8,
        qs[at + 2] as u8,
        qs[at + 3] as u8,
    ]);
    // SAFETY: value-only NEON operations (NEON is part of every aarch64 target).
    unsafe { vreinterpretq_s8_s32(vdupq_n_s32(word)) }
}

/// 8 f16 at `p` as two vectors of 4 f32 (rows 0-3, rows 4-7), widened exactly.
///
/// # Safety
///
/// `p` points at 16 readable bytes.
#[inline(always)]
unsafe fn scales8(p: *const u8) -> [float32x4_t; 2] {
    let mut widened = [0f32; GROUP];
    for (r, w) in widened.iter_mut().enumerate() {
        // SAFETY: the caller's promise: bytes 2r and 2r + 1 are within the 16.
        *w = half::f16::from_bits(u16::from_le_bytes(unsafe {
            [*p.add(2 * r), *p.add(2 * r + 1)]
        }))
        .to_f32();
    }
    // SAFETY: `widened` is 8 f32.
    unsafe {
        [
            vld1q_f32(widened.as_ptr()),
            vld1q_f32(widened.as_ptr().add(4)),
        ]
    }
}

/// 8 bytes at `p` (one per row) as two vectors of 4 i32: unsigned if `SIGNED` is false.
///
/// # Safety
///
/// `p` points at 8 readable bytes.
#[inline(always)]
unsafe fn bytes8<const SIGNED: bool>(p: *const u8) -> [int32x4_t; 2] {
    // SAFETY: the caller's promise; the rest is value-only.
    unsafe {
        let wide = if SIGNED {
            vmovl_s8(vld1_s8(p.cast()))
        } else {
            vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p)))
        };
        [vmovl_s16(vget_low_s16(wide)), vmovl_high_s16(wide)]
    }
}

/// A 32-value block's codes for both halves: `low[c][h]` are values `4c..4c + 4` of rows
/// `4h..4h + 4`, `high[c][h]` values `16 + 4c..`; `top` the top-bit vectors' bytes (none,
/// Q5_0's one with `WIDTH` 1, Q6_K's two with `WIDTH` 2).
///
/// # Safety
///
/// `codes` points at 128 readable bytes, `top` (when `WIDTH > 0`) at `32 · WIDTH`.
#[inline(always)]
unsafe fn block_codes<const WIDTH: usize>(
    codes: *const u8,
    top: *const u8,
) -> ([[int8x16_t; 2]; 4], [[int8x16_t; 2]; 4]) {
    // SAFETY: the caller's promise on the pointers; the rest is value-only.
    unsafe {
        let nibble = vdupq_n_u8(0x0F);
        let mut low = [[vdupq_n_s8(0); 2]; 4];
        let mut high = [[vdupq_n_s8(0); 2]; 4];
        for h in 0..2 {
            let (mut top_low, mut top_high) = match WIDTH {
                1 => (vld1q_u8(top.add(16 * h)), vdupq_n_u8(0)),
                2 => (vld1q_u8(top.add(16 * h)), vld1q_u8(top.add(32 + 16 * h))),
                _ => (vdupq_n_u8(0), vdupq_n_u8(0)),
            };
            for c in 0..4 {
                let packed = vld1q_u8(codes.add(32 * c + 16 * h));
                let (mut l, mut u) = (vandq_u8(packed, nibble), vshrq_n_u8::<4>(packed));
                if WIDTH == 1 {
                    // Bits c and 4 + c, after c shifts right: bits 0 and 4.
                    l = vorrq_u8(l, vandq_u8(vshlq_n_u8::<4>(top_low), vdupq_n_u8(0x10)));
                    u = vorrq_u8(u, vandq_u8(top_low, vdupq_n_u8(0x10)));
                    top_low = vshrq_n_u8::<1>(top_low);
                } else if WIDTH == 2 {
                    // Bits 2c..2c + 2, after c shifts by 2: bits 0-1, moved to 4-5.
                    l = vorrq_u8(l, vandq_u8(vshlq_n_u8::<4>(top_low), vdupq_n_u8(0x30)));
                    u = vorrq_u8(u, vandq_u8(vshlq_n_u8::<4>(top_high), vdupq_n_u8(0x30)));
                    top_low = vshrq_n_u8::<2>(top_low);
                    top_high = vshrq_n_u8::<2>(top_high);
                }
                low[c][h] = vreinterpretq_s8_u8(l);
                high[c][h] = vreinterpretq_s8_u8(u);
            }
        }
        (low, high)
    }
}

/// The kernels of every format with one dot step (`$dot`, enabled by `$features`).
macro_rules! kernels {
    ($features:literal, $dot:ident) => {
        use super::*;

        /// Per half, the integer sums of a block's low-nibble and high-nibble chunks
        /// against token block `xb`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn sums(
            low: &[[int8x16_t; 2]; 4],
            high: &[[int8x16_t; 2]; 4],
            xb: &BlockQ8_1,
        ) -> [[int32x4_t; 2]; 2] {
            let mut out = [[vdupq_n_s32(0); 2]; 2];
            for c in 0..4 {
                let (a, b) = (broadcast4(&xb.qs, 4 * c), broadcast4(&xb.qs, 16 + 4 * c));
                for h in 0..2 {
                    // SAFETY: the enclosing function's features.
                    unsafe {
                        out[0][h] = $dot(out[0][h], low[c][h], a);
                        out[1][h] = $dot(out[1][h], high[c][h], b);
                    }
                }
            }
            out
        }

        /// Stores each token's two halves (plus or minus its minimum terms).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn store<const T: usize>(
            acc: &[[float32x4_t; 2]; T],
            mins: Option<(&[[float32x4_t; 2]; T], bool)>,
            lanes: &mut [[f32; GROUP]; T],
        ) {
            for t in 0..T {
                for h in 0..2 {
                    let out = match mins {
                        Some((mins, true)) => vaddq_f32(acc[t][h], mins[t][h]),
                        Some((mins, false)) => vsubq_f32(acc[t][h], mins[t][h]),
                        None => acc[t][h],
                    };
                    // SAFETY: `lanes[t]` is 8 f32.
                    unsafe { vst1q_f32(lanes[t].as_mut_ptr().add(4 * h), out) };
                }
            }
        }

        /// Q4_0, Q4_1 and Q5_0: 32-value blocks of nibbles (and Q5_0's fifth bits), with
        /// `offset` taken out of the codes and Q4_1's minimums added.
        ///
        /// # Safety
        ///
        /// The CPU has the enabled features; `bytes` holds as many group blocks of `format`
        /// (one of the three) as each of `xs` has blocks.
        #[target_feature(enable = $features)]
        pub(in super::super) unsafe fn small<const T: usize>(
            format: WeightFormat,
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let (offset, codes_at) = match format {
                WeightFormat::Q4_0 => (8, 16),
                WeightFormat::Q5_0 => (16, 16),
                _ => (0, 32),
            };
            let min = format == WeightFormat::Q4_1;
            let zero = vdupq_n_f32(0.0);
            let mut acc = [[zero; 2]; T];
            let mut mins = [[zero; 2]; T];
            for (b, block) in bytes.chunks_exact(format.group_block_bytes()).enumerate() {
                let p = block.as_ptr();
                // SAFETY: scales at 0, Q4_1's minimums at 16, codes at `codes_at`, Q5_0's
                // fifth bits at 144, all within the group block.
                let (d, m, (low, high)) = unsafe {
                    (
                        scales8(p),
                        if min { scales8(p.add(16)) } else { [zero; 2] },
                        if format == WeightFormat::Q5_0 {
                            block_codes::<1>(p.add(codes_at), p.add(144))
                        } else {
                            block_codes::<0>(p.add(codes_at), p)
                        },
                    )
                };
                for t in 0..T {
                    let xb = &xs[t][b];
                    // SAFETY: the enclosing function's features.
                    let [l, u] = unsafe { sums(&low, &high, xb) };
                    let scale = vdupq_n_f32(xb.d);
                    for h in 0..2 {
                        let isum = vsubq_s32(vaddq_s32(l[h], u[h]), vdupq_n_s32(offset * xb.sum));
                        acc[t][h] =
                            vfmaq_f32(acc[t][h], vcvtq_f32_s32(isum), vmulq_f32(d[h], scale));
                        if min {
                            mins[t][h] = vfmaq_f32(mins[t][h], m[h], vdupq_n_f32(xb.s));
                        }
                    }
                }
            }
            // SAFETY: plain stores into `lanes`.
            unsafe { store(&acc, min.then_some((&mins, true)), lanes) };
        }

        /// Q8_0: 8 chunks of `q + 128`, back to signed.
        ///
        /// # Safety
        ///
        /// As [`small`], for Q8_0 group blocks.
        #[target_feature(enable = $features)]
        pub(in super::super) unsafe fn q8_0<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            for (b, block) in bytes
                .chunks_exact(WeightFormat::Q8_0.group_block_bytes())
                .enumerate()
            {
                let p = block.as_ptr();
                let mut codes = [[vdupq_n_s8(0); 2]; 8];
                // SAFETY: scales at 0, chunk c's halves at 16 + 32c + 16h.
                let d = unsafe {
                    for (c, codes) in codes.iter_mut().enumerate() {
                        for (h, code) in codes.iter_mut().enumerate() {
                            let stored = vld1q_u8(p.add(16 + 32 * c + 16 * h));
                            *code = vreinterpretq_s8_u8(veorq_u8(stored, vdupq_n_u8(0x80)));
                        }
                    }
                    scales8(p)
                };
                for t in 0..T {
                    let xb = &xs[t][b];
                    let mut isum = [vdupq_n_s32(0); 2];
                    for (c, codes) in codes.iter().enumerate() {
                        let x = broadcast4(&xb.qs, 4 * c);
                        for h in 0..2 {
                            // SAFETY: the enclosing function's features.
                            isum[h] = unsafe { $dot(isum[h], codes[h], x) };
                        }
                    }
                    let scale = vdupq_n_f32(xb.d);
                    for h in 0..2 {
                        acc[t][h] =
                            vfmaq_f32(acc[t][h], vcvtq_f32_s32(isum[h]), vmulq_f32(d[h], scale));
                    }
                }
            }
            // SAFETY: plain stores into `lanes`.
            unsafe { store(&acc, None, lanes) };
        }

        /// Q4_K: per 32-value sub-block, the sums times the rows' 6-bit scales (exact), one
        /// fma with `d · d_x`; minimums `dmin · m` times `s_x`, taken out at the end.
        ///
        /// # Safety
        ///
        /// The CPU has the enabled features; `bytes` holds Q4_K group blocks, each of `xs` 8
        /// blocks per group block.
        #[target_feature(enable = $features)]
        pub(in super::super) unsafe fn q4_k<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let zero = vdupq_n_f32(0.0);
            let mut acc = [[zero; 2]; T];
            let mut mins = [[zero; 2]; T];
            for (sb, block) in bytes
                .chunks_exact(WeightFormat::Q4_K.group_block_bytes())
                .enumerate()
            {
                let p = block.as_ptr();
                // SAFETY: `d` at 0, `dmin` at 16.
                let (d, dmin) = unsafe { (scales8(p), scales8(p.add(16))) };
                for j in 0..8 {
                    // SAFETY: scales at 32 + 8j, minimums at 96 + 8j, codes at 160 + 128j.
                    let (sc, m, (low, high)) = unsafe {
                        (
                            bytes8::<false>(p.add(32 + 8 * j)),
                            bytes8::<false>(p.add(96 + 8 * j)),
                            block_codes::<0>(p.add(160 + 128 * j), p),
                        )
                    };
                    let min = [0, 1].map(|h| vmulq_f32(dmin[h], vcvtq_f32_s32(m[h])));
                    for t in 0..T {
                        let xb = &xs[t][8 * sb + j];
                        // SAFETY: the enclosing function's features.
                        let [l, u] = unsafe { sums(&low, &high, xb) };
                        let (scale, s) = (vdupq_n_f32(xb.d), vdupq_n_f32(xb.s));
                        for h in 0..2 {
                            let isum = vmulq_s32(vaddq_s32(l[h], u[h]), sc[h]);
                            acc[t][h] =
                                vfmaq_f32(acc[t][h], vcvtq_f32_s32(isum), vmulq_f32(d[h], scale));
                            mins[t][h] = vfmaq_f32(mins[t][h], min[h], s);
                        }
                    }
                }
            }
            // SAFETY: plain stores into `lanes`.
            unsafe { store(&acc, Some((&mins, false)), lanes) };
        }

        /// Q6_K: per 32 values, each half's sums less `32·Σx` of its half, times their i8
        /// scales (exact), then one fma with `d · d_x`.
        ///
        /// # Safety
        ///
        /// As [`q4_k`], for Q6_K group blocks.
        #[target_feature(enable = $features)]
        pub(in super::super) unsafe fn q6_k<const T: usize>(
            bytes: &[u8],
            xs: [&[BlockQ8_1]; T],
            lanes: &mut [[f32; GROUP]; T],
        ) {
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            for (sb, block) in bytes
                .chunks_exact(WeightFormat::Q6_K.group_block_bytes())
                .enumerate()
            {
                let p = block.as_ptr();
                // SAFETY: `d` at 0.
                let d = unsafe { scales8(p) };
                for j in 0..8 {
                    let at = 144 + 192 * j;
                    // SAFETY: sub-block scales at 16 + 8s; codes at `at`, top bits at `at + 128`.
                    let (sc_low, sc_high, (low, high)) = unsafe {
                        (
                            bytes8::<true>(p.add(16 + 16 * j)),
                            bytes8::<true>(p.add(24 + 16 * j)),
                            block_codes::<2>(p.add(at), p.add(at + 128)),
                        )
                    };
                    for t in 0..T {
                        let xb = &xs[t][8 * sb + j];
                        // SAFETY: the enclosing function's features.
                        let [l, u] = unsafe { sums(&low, &high, xb) };
                        let scale = vdupq_n_f32(xb.d);
                        let (off_low, off_high) = (
                            vdupq_n_s32(32 * xb.sum_low),
                            vdupq_n_s32(32 * (xb.sum - xb.sum_low)),
                        );
                        for h in 0..2 {
                            let isum = vaddq_s32(
                                vmulq_s32(vsubq_s32(l[h], off_low), sc_low[h]),
                                vmulq_s32(vsubq_s32(u[h], off_high), sc_high[h]),
                            );
                            acc[t][h] =
                                vfmaq_f32(acc[t][h], vcvtq_f32_s32(isum), vmulq_f32(d[h], scale));
                        }
                    }
                }
            }
            // SAFETY: plain stores into `lanes`.
            unsafe { store(&acc, None, lanes) };
        }
    };
}

/// The kernels on `sdot` (FEAT_DotProd).
pub(super) mod dotprod {
    kernels!("neon,dotprod", dot_sdot);
}

/// The kernels on baseline NEON.
pub(super) mod baseline {
    kernels!("neon", dot_smull);
}
