//! GGUF block types the matrix kernels do not multiply natively, converted at load into
//! ones they do: every weight stays quantized (no f32 copy of a tensor), and the conversion
//! is stated per type.
//!
//! | from | to | how | error against the source |
//! |---|---|---|---|
//! | Q4_0 | Q4_1 | `m = -8·d`, the same codes | none |
//! | Q4_K | Q4_1 | each 32-value sub-block: `d·sc` and `-dmin·m` rounded to f16, the same codes | the two f16 roundings: ≤ 2⁻¹¹ of a sub-block's scale and minimum |
//! | Q6_K, and any other type mlinfra-data dequantizes | Q8_0 | one 256-value super-block (or 32-value block) at a time dequantized, then requantized per 32 | ≤ half a Q8_0 step (`max|w|/254` of the block) per weight |
//!
//! Stacked parts (Q, K and V as one matrix) of different source types take the format that
//! holds them all: Q4_1 if each converts to it exactly or by rounding scales only, else Q8_0.
//! llama.cpp multiplies Q4_K and Q6_K natively; native kernels for them are future work, and
//! these conversions are what the benchmarks' K-quant figures measure.

use std::borrow::Cow;

use half::f16;
use mlinfra_data::tensor::{GgmlType, dequantize_into, q4_k_scale_min};

use super::matrix::WeightFormat;
use super::quant::BLOCK;

/// The format a stack of parts of `types` converts to, or `None` when one of them has none
/// (F32, F16 and BF16 weights stay f32: quantizing them would change the model).
pub(crate) fn target_format(types: &[GgmlType]) -> Option<WeightFormat> {
    let all = |ok: &dyn Fn(GgmlType) -> bool| types.iter().all(|&t| ok(t));
    let native = |t| match t {
        GgmlType::Q4_0 => Some(WeightFormat::Q4_0),
        GgmlType::Q4_1 => Some(WeightFormat::Q4_1),
        GgmlType::Q8_0 => Some(WeightFormat::Q8_0),
        _ => None,
    };
    if let Some(&first) = types.first()
        && all(&|t| t == first)
        && let Some(format) = native(first)
    {
        return Some(format);
    }
    if all(&|t| matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K)) {
        return Some(WeightFormat::Q4_1);
    }
    if all(&|t| !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) && dequantizes(t)) {
        return Some(WeightFormat::Q8_0);
    }
    None
}

fn dequantizes(ty: GgmlType) -> bool {
    let mut out = vec![0f32; ty.block_size()];
    dequantize_into(ty, &vec![0u8; ty.type_size()], &mut out)
}

/// `bytes` (whole rows of `ty` blocks, `cols` values per row) in `format`'s GGUF block
/// layout; `None` for a conversion [`target_format`] would not choose.
/// Blocks already in `format` are borrowed, not copied.
pub(crate) fn convert(ty: GgmlType, bytes: &[u8], format: WeightFormat) -> Option<Cow<'_, [u8]>> {
    match (ty, format) {
        (GgmlType::Q4_0, WeightFormat::Q4_0)
        | (GgmlType::Q4_1, WeightFormat::Q4_1)
        | (GgmlType::Q8_0, WeightFormat::Q8_0) => Some(Cow::Borrowed(bytes)),
        (GgmlType::Q4_0, WeightFormat::Q4_1) => Some(Cow::Owned(q4_0_to_q4_1(bytes))),
        (GgmlType::Q4_K, WeightFormat::Q4_1) => Some(Cow::Owned(q4_k_to_q4_1(bytes))),
        (_, WeightFormat::Q8_0) => to_q8_0(ty, bytes).map(Cow::Owned),
        _ => None,
    }
}

/// Q4_0 (`w = d·(q - 8)`) as Q4_1 (`w = d·q + m`, `m = -8d`: exact in f16, a power-of-two
/// multiple).
fn q4_0_to_q4_1(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 18 * 20);
    for block in bytes.chunks_exact(18) {
        let d = f16::from_le_bytes([block[0], block[1]]);
        out.extend_from_slice(&block[0..2]);
        out.extend_from_slice(&f16::from_f32(-8.0 * d.to_f32()).to_le_bytes());
        out.extend_from_slice(&block[2..18]);
    }
    out
}

/// Q4_K super-blocks (144 bytes per 256 values) as 8 Q4_1 blocks each.
fn q4_k_to_q4_1(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 144 * 8 * 20);
    for block in bytes.chunks_exact(144) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let dmin = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let scales = &block[4..16];
        for (pair, qs) in block[16..].chunks_exact(32).enumerate() {
            // A 32-byte run holds sub-block 2·pair in its low nibbles, 2·pair + 1 in its high.
            for (half, shift) in [(0, 0u8), (1, 4u8)] {
                let (sc, m) = q4_k_scale_min(2 * pair + half, scales);
                out.extend_from_slice(&f16::from_f32(d * f32::from(sc)).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(-dmin * f32::from(m)).to_le_bytes());
                let code = |i: usize| (qs[i] >> shift) & 0x0F;
                // Q4_1 byte i: value i in the low nibble, value 16 + i in the high.
                out.extend((0..16).map(|i| code(i) | (code(16 + i) << 4)));
            }
        }
    }
    out
}

/// Any block type mlinfra-data dequantizes, as Q8_0: one source block at a time through f32
/// (never the tensor), requantized per 32 values with ggml's `quantize_row_q8_0` rounding.
fn to_q8_0(ty: GgmlType, bytes: &[u8]) -> Option<Vec<u8>> {
    let values_per_block = ty.block_size();
    if !values_per_block.is_multiple_of(BLOCK) {
        return None;
    }
    let mut values = vec![0f32; values_per_block];
    let mut out = Vec::with_capacity(bytes.len() / ty.type_size() * values_per_block / BLOCK * 34);
    for block in bytes.chunks_exact(ty.type_size()) {
        if !dequantize_into(ty, block, &mut values) {
            return None;
        }
        for chunk in values.chunks_exact(BLOCK) {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend(chunk.iter().map(|&v| (v * inverse).round() as i8 as u8));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; bytes.len() / ty.type_size() * ty.block_size()];
        assert!(dequantize_into(ty, bytes, &mut out));
        out
    }

    /// Pseudo-random bytes with valid (finite, moderate) f16 scales where a type keeps them.
    fn blocks(ty: GgmlType, count: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        };
        let mut out: Vec<u8> = (0..count * ty.type_size()).map(|_| next()).collect();
        let scale = |out: &mut [u8], at: usize, v: f32| {
            out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        };
        for (i, block) in out.chunks_exact_mut(ty.type_size()).enumerate() {
            let v = 0.001 * (1 + i % 7) as f32;
            match ty {
                GgmlType::Q4_0 | GgmlType::Q8_0 => scale(block, 0, v),
                GgmlType::Q4_K => {
                    scale(block, 0, v);
                    scale(block, 2, v / 2.0);
                }
                GgmlType::Q6_K => scale(block, 208, v),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn conversions_keep_the_weights_within_their_stated_error() {
        for (ty, format) in [
            (GgmlType::Q4_0, WeightFormat::Q4_1),
            (GgmlType::Q4_K, WeightFormat::Q4_1),
            (GgmlType::Q6_K, WeightFormat::Q8_0),
            (GgmlType::Q4_K, WeightFormat::Q8_0),
        ] {
            let source = blocks(ty, 6, 7);
            let want = dequantize(ty, &source);
            let converted = convert(ty, &source, format).unwrap();
            let target = match format {
                WeightFormat::Q4_1 => GgmlType::Q4_1,
                WeightFormat::Q8_0 => GgmlType::Q8_0,
                WeightFormat::Q4_0 => GgmlType::Q4_0,
            };
            let got = dequantize(target, &converted);
            assert_eq!(got.len(), want.len());
            for (block, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
                let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                let bound = match (ty, format) {
                    (GgmlType::Q4_0, _) => 0.0,
                    // Scale and minimum each rounded by ≤ 2^-11: ≤ 2^-11 · (15·|d·sc| + |m|).
                    (_, WeightFormat::Q4_1) => amax * 2.0 * 2f32.powi(-11) * 2.0,
                    // Half a Q8_0 step, plus the f16 rounding of its scale times 127.
                    _ => amax / 254.0 + amax * 2f32.powi(-11) + 1e-7,
                };
                for (i, (g, w)) in g.iter().zip(w).enumerate() {
                    assert!(
                        (g - w).abs() <= bound,
                        "{ty:?} → {format:?}, block {block}, value {i}: {g} vs {w} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn stacks_take_a_format_that_holds_every_part() {
        use GgmlType::*;
        assert_eq!(target_format(&[Q4_1, Q4_1]), Some(WeightFormat::Q4_1));
        assert_eq!(target_format(&[Q4_0]), Some(WeightFormat::Q4_0));
        assert_eq!(target_format(&[Q4_K, Q4_0]), Some(WeightFormat::Q4_1));
        assert_eq!(target_format(&[Q4_K, Q6_K]), Some(WeightFormat::Q8_0));
        assert_eq!(target_format(&[Q8_0, Q4_1]), Some(WeightFormat::Q8_0));
        assert_eq!(target_format(&[F16]), None);
        assert_eq!(target_format(&[Q8_0, F32]), None);
    }
}
