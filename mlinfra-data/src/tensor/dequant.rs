//! Conversion of ggml-encoded tensor data to `f32`.
//!
//! Each block function is a transcription of ggml's reference `dequantize_row_*`
//! (`ggml-quants.c`): the same products, in the same order, with no fused multiply-add (Rust
//! never fuses on its own), so the results are bit-identical to ggml's scalar path and to
//! gguf-py's NumPy port, which the integration tests check against a file gguf-py wrote.

use half::{bf16, f16};

use super::GgmlType;

/// The types [`dequantize`] converts, for error messages.
pub(crate) const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K";

/// Converts `bytes`, whole blocks of `ty`, to `f32`; `None` if `ty` is not one of
/// [`SUPPORTED`]. Trailing bytes short of a block are ignored (the parser guarantees there
/// are none).
pub(crate) fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let elements = bytes.len() / ty.type_size() * ty.block_size();
    let mut out = vec![0.0; elements];
    dequantize_into(ty, bytes, &mut out).then_some(out)
}

/// Converts `bytes`, whole blocks of `ty`, to `f32` into `out`, which must hold exactly their
/// elements; false (and `out` untouched) for a type other than F32, F16, BF16, Q8_0, Q4_0,
/// Q4_1, Q5_0, Q5_1, Q4_K and Q6_K, or an `out` of another length. Bit-identical to ggml's reference
/// dequantization. For converting part of a tensor at a time (some rows) into a reused
/// buffer.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> bool {
    if !matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q6_K
    ) || out.len() != bytes.len() / ty.type_size() * ty.block_size()
    {
        return false;
    }
    match ty {
        GgmlType::F32 => elements(bytes, out, f32::from_le_bytes),
        GgmlType::F16 => elements(bytes, out, |b| f16::from_le_bytes(b).to_f32()),
        GgmlType::BF16 => elements(bytes, out, |b| bf16::from_le_bytes(b).to_f32()),
        GgmlType::Q8_0 => blocks(bytes, out, q8_0),
        GgmlType::Q4_0 => blocks(bytes, out, q4_0),
        GgmlType::Q4_1 => blocks(bytes, out, q4_1),
        GgmlType::Q5_0 => blocks(bytes, out, q5_0),
        GgmlType::Q5_1 => blocks(bytes, out, q5_1),
        GgmlType::Q4_K => blocks(bytes, out, q4_k),
        _ => blocks(bytes, out, q6_k),
    }
    true
}

/// Converts a plain type, `N` bytes per element.
fn elements<const N: usize>(bytes: &[u8], out: &mut [f32], decode: impl Fn([u8; N]) -> f32) {
    for (chunk, y) in bytes.chunks_exact(N).zip(out) {
        let mut element = [0; N];
        element.copy_from_slice(chunk);
        *y = decode(element);
    }
}

/// Converts a block type: `S` bytes encode `B` elements.
fn blocks<const S: usize, const B: usize>(
    bytes: &[u8],
    out: &mut [f32],
    block: fn(&[u8; S], &mut [f32; B]),
) {
    for (src, dst) in bytes.chunks_exact(S).zip(out.chunks_exact_mut(B)) {
        // Both conversions succeed: `chunks_exact` yields exactly S and B elements.
        if let (Ok(src), Ok(dst)) = (src.try_into(), dst.try_into()) {
            block(src, dst);
        }
    }
}

/// The f16 at `b[i..i + 2]`, widened exactly.
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `Q8_0`: f16 scale `d`, then 32 `i8` quants; `y = q * d`.
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `Q4_0`: f16 scale `d`, then 16 bytes of nibbles; byte `j` holds element `j` (low nibble)
/// and `j + 16` (high); `y = (q - 8) * d`.
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
        *lo = f32::from((q & 0x0F) as i8 - 8) * d;
        *hi = f32::from((q >> 4) as i8 - 8) * d;
    }
}

/// `Q4_1`: f16 scale `d` and minimum `m`, then nibbles as in `Q4_0`; `y = q * d + m`.
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b[4..]) {
        *lo = f32::from(q & 0x0F) * d + m;
        *hi = f32::from(q >> 4) * d + m;
    }
}

/// The 32 five-bit codes of a `Q5_0` / `Q5_1` block from its 4 bytes of fifth bits `qh` and
/// 16 bytes of nibbles `qs`: byte `j` of `qs` holds element `j` (low nibble) and `j + 16`
/// (high), as in `Q4_0`, and bit `j` of the little-endian `qh` is element `j`'s fifth bit.
/// Public for kernels that repack Q5 blocks.
pub fn q5_codes(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let fifth = |element: usize| (((qh >> element) & 1) as u8) << 4;
    let mut codes = [0u8; 32];
    for (j, &q) in qs.iter().enumerate() {
        codes[j] = (q & 0x0F) | fifth(j);
        codes[j + 16] = (q >> 4) | fifth(j + 16);
    }
    codes
}

/// The codes of the `Q5_0` / `Q5_1` block whose fifth bits start at `b[at]`.
fn q5_codes_at(b: &[u8], at: usize) -> [u8; 32] {
    let mut qh = [0u8; 4];
    let mut qs = [0u8; 16];
    qh.copy_from_slice(&b[at..at + 4]);
    qs.copy_from_slice(&b[at + 4..at + 20]);
    q5_codes(qh, &qs)
}

/// `Q5_0`: f16 scale `d`, 4 bytes of fifth bits, 16 bytes of nibbles; `y = (q - 16) * d`.
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (y, q) in y.iter_mut().zip(q5_codes_at(b, 2)) {
        *y = f32::from(q as i8 - 16) * d;
    }
}

/// `Q5_1`: f16 scale `d` and minimum `m`, then as `Q5_0`; `y = q * d + m`.
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (y, q) in y.iter_mut().zip(q5_codes_at(b, 4)) {
        *y = f32::from(q) * d + m;
    }
}

/// The 6-bit scale and minimum of `Q4_K` sub-block `j` from the 12 packed bytes `q`
/// (ggml's `get_scale_min_k4`): sub-blocks 0-3 use the low 6 bits of bytes `j` and `j + 4`;
/// sub-blocks 4-7 take their low 4 bits from byte `j + 4` and their top 2 bits from the top
/// bits of bytes `j - 4` (scale) and `j` (minimum). Public for kernels that repack Q4_K.
///
/// # Panics
///
/// When `j` is not below 8 or `q` is shorter than 12 bytes.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `Q4_K`: f16 super-scale `d` and super-minimum `dmin`, 12 bytes of packed 6-bit sub-block
/// scales and minimums, then 128 bytes of nibbles. Eight sub-blocks of 32; each 32-byte run of
/// nibbles holds two sub-blocks (low nibbles first). `y = (d * sc) * q - (dmin * m)`.
fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (j, (qs, y)) in b[16..]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = y.split_at_mut(32);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
            *lo = d1 * f32::from(q & 0x0F) - m1;
            *hi = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// `Q6_K`: 128 bytes of low nibbles `ql`, 64 bytes of 2-bit high parts `qh`, sixteen `i8`
/// sub-block scales, then the f16 super-scale `d`. Each 128-element half uses 64 bytes of
/// `ql` and 32 of `qh`; element `l + 32k` of a half (k = 0..4) combines a nibble of
/// `ql[l + 32(k % 2)]` (low for k < 2, high otherwise) with bits `2k..2k+2` of `qh[l]`.
/// `y = (d * sc) * (q - 32)`, where `sc` is the scale of the element's 16-element group.
fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (scales, _) = rest.split_at(16);
    let d = f16_at(b, 208);
    let halves = ql.chunks_exact(64).zip(qh.chunks_exact(32));
    for (half, (ql, qh)) in halves.enumerate() {
        let y = &mut y[128 * half..128 * (half + 1)];
        let sc = &scales[8 * half..8 * (half + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let scale = |k: usize| d * f32::from(sc[is + 2 * k] as i8);
            y[l] = scale(0) * f32::from(q1);
            y[l + 32] = scale(1) * f32::from(q2);
            y[l + 64] = scale(2) * f32::from(q3);
            y[l + 96] = scale(3) * f32::from(q4);
        }
    }
}

#[cfg(test)]
mod tests;
