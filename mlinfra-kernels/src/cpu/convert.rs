//! The block format each GGUF tensor type is multiplied in: its own where a kernel exists
//! (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K: the bytes repacked, nothing converted), else Q8_0,
//! converted at load. Every weight stays quantized (no f32 copy of a tensor); the conversion's
//! error is stated:
//!
//! - from Q5_1, and any other type mlinfra-data dequantizes that has no kernel,
//! - to Q8_0: one source block at a time dequantized, then requantized per 32 values,
//! - with an error against the source of at most half a Q8_0 step (`max|w|/254` of the
//!   32 values) per weight.
//!
//! Types mlinfra-data cannot dequantize (Q2_K, Q3_K, Q5_K, the IQ types) and F32 / F16 /
//! BF16 weights (quantizing them would change the model) get no format.

use std::borrow::Cow;

use half::f16;
use mlinfra_data::tensor::{GgmlType, dequantize_into};

use super::matrix::WeightFormat;
use super::quant::BLOCK;

/// The format the kernels multiply a tensor of `ty` in, or `None` when there is none.
pub(crate) fn target_format(ty: GgmlType) -> Option<WeightFormat> {
    match ty {
        GgmlType::Q4_0 => Some(WeightFormat::Q4_0),
        GgmlType::Q4_1 => Some(WeightFormat::Q4_1),
        GgmlType::Q5_0 => Some(WeightFormat::Q5_0),
        GgmlType::Q8_0 => Some(WeightFormat::Q8_0),
        GgmlType::Q4_K => Some(WeightFormat::Q4_K),
        GgmlType::Q6_K => Some(WeightFormat::Q6_K),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => None,
        _ => dequantizes(ty).then_some(WeightFormat::Q8_0),
    }
}

/// Whether `format`'s blocks are `ty`'s own (repacked as they are, nothing converted).
pub(crate) fn is_native(ty: GgmlType, format: WeightFormat) -> bool {
    ty == format.ggml_type()
}

fn dequantizes(ty: GgmlType) -> bool {
    let mut out = vec![0f32; ty.block_size()];
    dequantize_into(ty, &vec![0u8; ty.type_size()], &mut out)
}

/// `bytes` (whole rows of `ty` blocks) in `format`'s GGUF block layout: borrowed when `ty`
/// is multiplied natively, converted to Q8_0 otherwise; `None` for a conversion
/// [`target_format`] would not choose.
pub(crate) fn convert(ty: GgmlType, bytes: &[u8], format: WeightFormat) -> Option<Cow<'_, [u8]>> {
    if is_native(ty, format) {
        Some(Cow::Borrowed(bytes))
    } else if format == WeightFormat::Q8_0 && target_format(ty) == Some(format) {
        to_q8_0(ty, bytes).map(Cow::Owned)
    } else {
        None
    }
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
                GgmlType::Q5_1 => {
                    scale(block, 0, v);
                    scale(block, 2, -v * 8.0);
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn conversions_keep_the_weights_within_their_stated_error() {
        // Q5_1 is what a model meets; the K-quants exercise 256-value source blocks.
        for ty in [GgmlType::Q5_1, GgmlType::Q6_K, GgmlType::Q4_K] {
            let source = blocks(ty, 6, 7);
            let want = dequantize(ty, &source);
            let converted = to_q8_0(ty, &source).unwrap();
            let got = dequantize(GgmlType::Q8_0, &converted);
            assert_eq!(got.len(), want.len());
            for (block, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
                let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Half a Q8_0 step, plus the f16 rounding of its scale times 127.
                let bound = amax / 254.0 + amax * 2f32.powi(-11) + 1e-7;
                for (i, (g, w)) in g.iter().zip(w).enumerate() {
                    assert!(
                        (g - w).abs() <= bound,
                        "{ty:?} → Q8_0, block {block}, value {i}: {g} vs {w} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn each_type_gets_its_own_kernel_or_q8_0_or_none() {
        use GgmlType::*;
        for (ty, want) in [
            (Q4_0, Some(WeightFormat::Q4_0)),
            (Q4_1, Some(WeightFormat::Q4_1)),
            (Q5_0, Some(WeightFormat::Q5_0)),
            (Q8_0, Some(WeightFormat::Q8_0)),
            (Q4_K, Some(WeightFormat::Q4_K)),
            (Q6_K, Some(WeightFormat::Q6_K)),
            (Q5_1, Some(WeightFormat::Q8_0)),
            (F16, None),
            (F32, None),
            (Q2_K, None),
        ] {
            assert_eq!(target_format(ty), want, "{ty:?}");
        }
        let bytes = [0u8; 24];
        assert!(matches!(
            convert(Q5_0, &bytes[..22], WeightFormat::Q5_0),
            Some(Cow::Borrowed(_))
        ));
        assert!(matches!(
            convert(Q5_1, &bytes, WeightFormat::Q8_0),
            Some(Cow::Owned(_))
        ));
        assert!(convert(Q5_1, &bytes, WeightFormat::Q4_1).is_none());
        assert!(convert(Q4_K, &bytes, WeightFormat::Q8_0).is_none());
    }
}
