//! The Q4_1 × Q8_1 dot product (issue 24, item 3) against f64 twins, on random blocks and
//! awkward lengths: the AVX2 path (where the CPU has it) and the portable one.

use half::f16;
use mlinfra_kernels::cpu::quant::{
    BLOCK, BlockQ8_1, Q4_1_BYTES, dot_q4_1_q8_1, dot_q4_1_q8_1_portable, quantize_q8_1,
};
use mlinfra_test_utils::rng::SplitMix64;

/// `blocks` random Q4_1 blocks: scales and minimums of either sign, every code.
fn q4_1_row(blocks: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut row = Vec::with_capacity(blocks * Q4_1_BYTES);
    for _ in 0..blocks {
        let d = f16::from_f64(rng.uniform(-0.05, 0.05));
        let m = f16::from_f64(rng.uniform(-0.5, 0.5));
        row.extend_from_slice(&d.to_le_bytes());
        row.extend_from_slice(&m.to_le_bytes());
        row.extend((0..16).map(|_| rng.next_u64() as u8));
    }
    row
}

/// The row's values in f64, from its blocks (the twin's own decoder).
fn dequantize(row: &[u8]) -> Vec<f64> {
    let mut out = Vec::new();
    for block in row.chunks_exact(Q4_1_BYTES) {
        let d = f64::from(f16::from_le_bytes([block[0], block[1]]).to_f32());
        let m = f64::from(f16::from_le_bytes([block[2], block[3]]).to_f32());
        let mut values = [0f64; 32];
        for (j, &byte) in block[4..].iter().enumerate() {
            values[j] = d * f64::from(byte & 0x0F) + m;
            values[j + 16] = d * f64::from(byte >> 4) + m;
        }
        out.extend(values);
    }
    out
}

/// The activations Q8_1 stands for, in f64.
fn activations(x: &[BlockQ8_1]) -> Vec<f64> {
    x.iter()
        .flat_map(|b| b.qs.iter().map(move |&q| f64::from(b.d) * f64::from(q)))
        .collect()
}

#[test]
fn the_dot_product_is_its_f64_twins() {
    let mut rng = SplitMix64::new(24);
    // Lengths in values: whole blocks, one block, and tails the last block pads.
    for len in [32usize, 64, 33, 95, 31, 1, 576, 1536, 4096 + 7] {
        for _ in 0..8 {
            let blocks = len.div_ceil(BLOCK);
            let row = q4_1_row(blocks, &mut rng);
            let x = rng.vec_f32(len, -3.0, 3.0);
            let q8 = quantize_q8_1(&x);
            assert_eq!(q8.len(), blocks);
            let weights = dequantize(&row);
            // Exact twin: the same quantized operands, multiplied in f64.
            let exact: f64 = weights
                .iter()
                .zip(activations(&q8))
                .map(|(w, a)| w * a)
                .sum();
            let scale: f64 = weights
                .iter()
                .zip(activations(&q8))
                .map(|(w, a)| (w * a).abs())
                .sum::<f64>()
                .max(1e-6);
            // The kernel multiplies each block's minimum by `s` as stored (f16, as ggml), not
            // by `d·Σq`: the twin takes the same operand.
            let exact = exact
                + row
                    .chunks_exact(Q4_1_BYTES)
                    .zip(&q8)
                    .map(|(block, b)| {
                        let m = f64::from(f16::from_le_bytes([block[2], block[3]]).to_f32());
                        m * (f64::from(b.s) - f64::from(b.d) * f64::from(b.sum))
                    })
                    .sum::<f64>();
            let fast = f64::from(dot_q4_1_q8_1(&row, &q8).unwrap());
            let portable = f64::from(dot_q4_1_q8_1_portable(&row, &q8).unwrap());
            assert!(
                (fast - exact).abs() <= 1e-5 * scale,
                "len {len}: {fast} vs {exact}"
            );
            assert!(
                (portable - exact).abs() <= 1e-5 * scale,
                "len {len}: {portable}"
            );
            // Against the unquantized activations: off by at most the activations' rounding,
            // half a step (d/2) per value, weighted by |w|.
            let reference: f64 = weights.iter().zip(&x).map(|(w, &v)| w * f64::from(v)).sum();
            let bound: f64 = weights
                .chunks(BLOCK)
                .zip(&q8)
                .map(|(ws, b)| ws.iter().map(|w| w.abs()).sum::<f64>() * f64::from(b.d) / 2.0)
                .sum::<f64>()
                + 1e-5 * scale;
            assert!(
                (fast - reference).abs() <= bound,
                "len {len}: {fast} vs {reference}"
            );
        }
    }
}

#[test]
fn activation_blocks_round_to_the_nearest_code() {
    let x: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) * 0.25).collect();
    let q8 = quantize_q8_1(&x);
    assert_eq!(q8.len(), 2);
    for (block, values) in q8.iter().zip(x.chunks(BLOCK)) {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        // ggml's block_q8_1 keeps d and s in f16; codes come from the unrounded scale.
        let d = amax / 127.0;
        assert_eq!(block.d, f16::from_f32(d).to_f32());
        assert!(block.qs.iter().any(|&q| q.unsigned_abs() == 127));
        for (&q, &v) in block.qs.iter().zip(values) {
            // Half a step, plus the f16 rounding of the scale (2^-11 relative) times the code.
            assert!((f32::from(q) * d - v).abs() <= d / 2.0 + 1e-6);
            assert!((f32::from(q) * block.d - v).abs() <= d / 2.0 + 127.0 * d / 2048.0 + 1e-6);
        }
        let sum: i32 = block.qs.iter().map(|&q| i32::from(q)).sum();
        assert_eq!(block.sum, sum);
        assert_eq!(block.s, f16::from_f32(d * sum as f32).to_f32());
    }
    // The padded tail is zero codes.
    assert!(q8[1].qs[8..].iter().all(|&q| q == 0));
    // An all-zero block has scale 0 and zero codes, not NaN.
    let zero = quantize_q8_1(&[0.0; 32]);
    assert_eq!((zero[0].d, zero[0].s), (0.0, 0.0));
}

#[test]
fn rows_that_do_not_fit_are_refused() {
    let q8 = quantize_q8_1(&[0.5; 64]);
    let error = dot_q4_1_q8_1(&[0u8; 41], &q8).unwrap_err();
    assert!(
        error.to_string().contains("whole 20-byte blocks"),
        "{error}"
    );
    let error = dot_q4_1_q8_1(&[0u8; 60], &q8).unwrap_err();
    assert!(error.to_string().contains("block counts"), "{error}");
}

/// The SIMD quantizer gives the portable one's blocks exactly, on random rows of awkward
/// lengths, ties included (values at exact half-steps).
#[test]
fn simd_quantization_is_the_portable_one() {
    use mlinfra_kernels::cpu::quant::quantize_q8_1_portable;
    let mut rng = SplitMix64::new(88);
    for len in [1usize, 31, 32, 33, 64, 576, 1536 + 5] {
        let mut x = rng.vec_f32(len, -4.0, 4.0);
        // Ties: 127 · k / 2 for the block maximum 127 → codes at exact .5 steps.
        for (i, v) in x.iter_mut().enumerate().step_by(7) {
            *v = (i % 9) as f32 - 4.5;
        }
        assert_eq!(
            quantize_q8_1(&x),
            quantize_q8_1_portable(&x),
            "length {len}"
        );
    }
}
