//! Q4_1 weights against Q8_1 activations: the dot product of llama.cpp's x86 Q4_1 path.
//!
//! A weight row stays in its GGUF blocks (`block_q4_1`, 20 bytes per 32 values: scale `d`
//! and minimum `m` in f16, then 16 bytes of 4-bit codes, `w = d·q + m`). The activation row
//! is quantized once per matmul to `block_q8_1` (32 i8 codes, scale `d`, and `s = d·Σq`), so
//! that each block's dot product is integer:
//!
//! `Σ w·x = d_w·d_x·Σ q_w·q_x + m_w·s_x`
//!
//! On AVX2 the 32 code products of a block are one `maddubs` (unsigned 4-bit × signed 8-bit
//! into i16 pairs) and one `madd` into i32 lanes; the portable path computes the same integer
//! sums in scalar code. Both add blocks in the same order, so they agree to f32 rounding.

use half::f16;

/// Values per block (ggml's `QK4_1` and `QK8_1`).
pub const BLOCK: usize = 32;
/// Bytes of one `block_q4_1`.
pub const Q4_1_BYTES: usize = 20;

/// 32 activations quantized to i8: `x ≈ d·q`, with `s = d·Σq` kept for the weights' minimum.
/// `d` and `s` are f16 values (held in f32), as in ggml's `block_q8_1`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BlockQ8_1 {
    /// Scale: the block's largest magnitude over 127.
    pub d: f32,
    /// `d` times the sum of the codes.
    pub s: f32,
    /// The sum of the codes, exact (kernels that store weights offset by 128 subtract
    /// `128·sum`).
    pub sum: i32,
    /// The sum of codes 0..16, exact (Q6_K's 16-value sub-blocks take out their offset per
    /// half block).
    pub sum_low: i32,
    /// Codes in `-127..=127`.
    pub qs: [i8; BLOCK],
}

/// A row whose bytes are not whole Q4_1 blocks, or whose length differs from the
/// activations'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Q4_1 row of {row_bytes} bytes against {blocks} activation blocks: {reason}")]
pub struct ShapeError {
    /// The weight row's bytes.
    pub row_bytes: usize,
    /// The activation blocks.
    pub blocks: usize,
    /// What does not fit.
    pub reason: &'static str,
}

/// `x` in Q8_1 blocks, the last one padded with zeros (a row of any length).
pub fn quantize_q8_1(x: &[f32]) -> Vec<BlockQ8_1> {
    let mut out = Vec::new();
    quantize_q8_1_into(x, &mut out);
    out
}

/// [`quantize_q8_1`] into `out` (cleared first), reusing its allocation. A row-major
/// `[tokens, cols]` matrix with `cols` a multiple of 32 gives each token's blocks in turn.
pub fn quantize_q8_1_into(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    out.clear();
    out.resize(x.len().div_ceil(BLOCK), BlockQ8_1::default());
    quantize_q8_1_to(x, out);
}

/// [`quantize_q8_1`] into `out`, which holds exactly `x.len().div_ceil(32)` blocks (a part
/// of a larger buffer, for quantizing rows in parallel); extra blocks are left alone.
pub fn quantize_q8_1_to(x: &[f32], out: &mut [BlockQ8_1]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
        // SAFETY: AVX2 and F16C were just detected.
        return unsafe { quantize_avx2(x, out) };
    }
    quantize_blocks(x, out);
}

/// [`quantize_q8_1`] in portable code, whatever the CPU (the SIMD path's twin in tests).
pub fn quantize_q8_1_portable(x: &[f32]) -> Vec<BlockQ8_1> {
    let mut out = vec![BlockQ8_1::default(); x.len().div_ceil(BLOCK)];
    quantize_blocks(x, &mut out);
    out
}

/// [`quantize_blocks`] in AVX2 intrinsics: 32 values per block in four registers, the
/// maximum magnitude by a max tree, codes by one multiply, `vroundps` (ties to even, as
/// `round_ties_even`) and two saturating packs. The same results as the scalar body for
/// finite inputs (the multiply and the rounding are the same operations; the sum is exact).
///
/// # Safety
///
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], out: &mut [BlockQ8_1]) {
    use std::arch::x86_64::*;
    let mut whole = x.chunks_exact(BLOCK);
    let sign = _mm256_set1_ps(-0.0);
    // `packs` interleaves 128-bit lanes; this puts the 32 codes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut blocks = out.iter_mut();
    for (chunk, block) in (&mut whole).zip(&mut blocks) {
        // SAFETY: `chunk` is 32 f32.
        let v = [0, 8, 16, 24].map(|i| unsafe { _mm256_loadu_ps(chunk.as_ptr().add(i)) });
        let magnitude = v.map(|v| _mm256_andnot_ps(sign, v));
        let m = _mm256_max_ps(
            _mm256_max_ps(magnitude[0], magnitude[1]),
            _mm256_max_ps(magnitude[2], magnitude[3]),
        );
        let quad = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
        let amax = _mm_cvtss_f32(_mm_max_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
        let d = amax / 127.0;
        let inverse = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let codes = v.map(|v| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v, inverse),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let lanes_sum = |v: __m256i| {
            let half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b01_00_11_10));
            _mm_cvtsi128_si32(_mm_add_epi32(half, _mm_shuffle_epi32(half, 0b10_11_00_01)))
        };
        let sum_low = lanes_sum(_mm256_add_epi32(codes[0], codes[1]));
        let sum = sum_low + lanes_sum(_mm256_add_epi32(codes[2], codes[3]));
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(codes[0], codes[1]),
            _mm256_packs_epi32(codes[2], codes[3]),
        );
        let mut qs = [0i8; BLOCK];
        // SAFETY: `qs` is 32 bytes.
        unsafe {
            _mm256_storeu_si256(
                qs.as_mut_ptr().cast(),
                _mm256_permutevar8x32_epi32(packed, order),
            )
        };
        *block = BlockQ8_1 {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            sum,
            sum_low,
            qs,
        };
    }
    // A last, partial block (a row whose length is not a multiple of 32).
    let rest = whole.remainder();
    if !rest.is_empty() {
        quantize_blocks(rest, blocks.into_slice());
    }
}

/// The quantizer in portable code (and [`quantize_avx2`]'s twin).
fn quantize_blocks(x: &[f32], out: &mut [BlockQ8_1]) {
    for (chunk, block) in x.chunks(BLOCK).zip(out.iter_mut()) {
        let mut amax = 0f32;
        for &v in chunk {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; BLOCK];
        for (q, &v) in qs.iter_mut().zip(chunk) {
            // |v·inverse| ≤ 127 by construction; NaN becomes 0. Ties to even, as ggml's
            // AVX2 quantizer rounds.
            *q = (v * inverse).round_ties_even() as i8;
        }
        let sum_of = |codes: &[i8]| codes.iter().map(|&q| i32::from(q)).sum::<i32>();
        let sum_low = sum_of(&qs[..16]);
        let sum = sum_low + sum_of(&qs[16..]);
        // ggml keeps `d` and `s` in f16 (`block_q8_1`): the same rounding here, so that the
        // products are llama.cpp's.
        *block = BlockQ8_1 {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            sum,
            sum_low,
            qs,
        };
    }
}

/// The 32 codes (0..16) of a Q4_1 block, in value order.
fn codes(block: &[u8]) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    for (j, &byte) in block[4..Q4_1_BYTES].iter().enumerate() {
        out[j] = byte & 0x0F;
        out[j + 16] = byte >> 4;
    }
    out
}

fn scale_and_min(block: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
    (d, m)
}

/// `Σ w·x` for a Q4_1 weight row (`row`, its GGUF bytes) and Q8_1 activations, on the best
/// instruction set this CPU has.
///
/// # Errors
///
/// [`ShapeError`] when `row` is not whole blocks or has another block count than `x`.
pub fn dot_q4_1_q8_1(row: &[u8], x: &[BlockQ8_1]) -> Result<f32, ShapeError> {
    check(row, x)?;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected on this CPU just above; the shapes are checked.
        return Ok(unsafe { dot_avx2(row, x) });
    }
    Ok(dot_portable(row, x))
}

/// [`dot_q4_1_q8_1`] in portable scalar code (the fallback, and the SIMD paths' twin).
///
/// # Errors
///
/// As [`dot_q4_1_q8_1`].
pub fn dot_q4_1_q8_1_portable(row: &[u8], x: &[BlockQ8_1]) -> Result<f32, ShapeError> {
    check(row, x)?;
    Ok(dot_portable(row, x))
}

fn check(row: &[u8], x: &[BlockQ8_1]) -> Result<(), ShapeError> {
    let fail = |reason| {
        Err(ShapeError {
            row_bytes: row.len(),
            blocks: x.len(),
            reason,
        })
    };
    if !row.len().is_multiple_of(Q4_1_BYTES) {
        return fail("the row is not whole 20-byte blocks");
    }
    if row.len() / Q4_1_BYTES != x.len() {
        return fail("the block counts differ");
    }
    Ok(())
}

fn dot_portable(row: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut total = 0f32;
    for (block, act) in row.chunks_exact(Q4_1_BYTES).zip(x) {
        let (d, m) = scale_and_min(block);
        let sum: i32 = codes(block)
            .iter()
            .zip(&act.qs)
            .map(|(&q, &a)| i32::from(q) * i32::from(a))
            .sum();
        total += d * act.d * sum as f32 + m * act.s;
    }
    total
}

/// # Safety
///
/// The CPU must have AVX2 and FMA; `row` must hold `x.len()` whole Q4_1 blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(row: &[u8], x: &[BlockQ8_1]) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut minimums = 0f32;
    for (block, act) in row.chunks_exact(Q4_1_BYTES).zip(x) {
        let (d, m) = scale_and_min(block);
        // SAFETY: `block` holds 20 bytes, so 16 bytes from offset 4 are in bounds (unaligned
        // load); `act.qs` is 32 bytes.
        let (packed, activations) = unsafe {
            (
                _mm_loadu_si128(block.as_ptr().add(4).cast()),
                _mm256_loadu_si256(act.qs.as_ptr().cast()),
            )
        };
        // Codes 0..16 in value order: low nibbles are values 0..16, high nibbles 16..32.
        let lo = _mm_and_si128(packed, low);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
        let weights = _mm256_set_m128i(hi, lo);
        // Unsigned codes × signed activations, adjacent pairs summed (|sum| ≤ 2·15·127: no
        // saturation), then pairs of i16 into i32.
        let pairs = _mm256_maddubs_epi16(weights, activations);
        let sums = _mm256_madd_epi16(pairs, ones);
        let scale = _mm256_set1_ps(d * act.d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
        minimums += m * act.s;
    }
    // Horizontal sum of the 8 lanes.
    let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let single = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
    _mm_cvtss_f32(single) + minimums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_ggml_order() {
        let mut block = [0u8; Q4_1_BYTES];
        block[4] = 0x21; // value 0 = 1, value 16 = 2
        block[19] = 0xF3; // value 15 = 3, value 31 = 15
        let codes = codes(&block);
        assert_eq!((codes[0], codes[16], codes[15], codes[31]), (1, 2, 3, 15));
    }

    #[test]
    fn shapes_are_checked() {
        let x = quantize_q8_1(&[1.0; 64]);
        assert!(dot_q4_1_q8_1(&[0; 40], &x).is_ok());
        assert!(dot_q4_1_q8_1(&[0; 39], &x).is_err());
        assert!(dot_q4_1_q8_1(&[0; 20], &x).is_err());
    }
}
