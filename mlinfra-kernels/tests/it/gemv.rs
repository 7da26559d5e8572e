//! Dequantize-GEMV over Q8_0, Q4_0 and Q4_1 blocks on the software Vulkan adapter against an
//! f64 twin (mlinfra-data's ggml dequantization, then f64 sums): row counts that leave a cube
//! partly empty, rows of one block and of blocks not a multiple of the 32 units, several
//! tokens, outputs poisoned before launch, f32 and f16 activations; and the Q8_1 path: the
//! device quantizer against the CPU one, the integer GEMV against its twin.

use half::f16;
use mlinfra_data::tensor::{GgmlType, dequantize_into};
use mlinfra_kernels::cpu::quant::quantize_q8_1_portable;
use mlinfra_kernels::gemv::{DeviceWeights, quant_gemv, quant_gemv_q8_1, quantize_q8_1};
use mlinfra_kernels::wgpu::software_device;
use mlinfra_kernels::{DeviceBuffer, Error};
use mlinfra_test_utils::rng::SplitMix64;

/// f32 sums of up to 1,536 products, relative to Σ|w·x| (the sum's condition).
const F32_TOLERANCE: f64 = 1e-5;
/// f16 activations (the twin takes the rounded values), f32 sums, the output rounded to f16.
const F16_TOLERANCE: f64 = 1e-3;

/// `rows × cols` random but valid weights of `format`: f16 scales of a realistic size, every
/// code value possible.
fn random_blocks(rng: &mut SplitMix64, format: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let blocks = rows * cols / 32;
    let mut bytes = Vec::with_capacity(blocks * format.type_size());
    for _ in 0..blocks {
        let scale = f16::from_f64(rng.uniform(-0.02, 0.02));
        bytes.extend(scale.to_le_bytes());
        if format == GgmlType::Q4_1 {
            bytes.extend(f16::from_f64(rng.uniform(-0.1, 0.1)).to_le_bytes());
        }
        let codes = format.type_size() - if format == GgmlType::Q4_1 { 4 } else { 2 };
        bytes.extend((0..codes).map(|_| rng.next_u64() as u8));
    }
    bytes
}

/// The twin: every weight dequantized (exact in f32 for Q8_0 and Q4_0; Q4_1's `d·q + m` rounds
/// once), products and sums in f64. Also returns Σ|w·x| per output.
fn reference(
    format: GgmlType,
    bytes: &[u8],
    rows: usize,
    cols: usize,
    x: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut weights = vec![0f32; rows * cols];
    assert!(dequantize_into(format, bytes, &mut weights));
    let tokens = x.len() / cols;
    let mut out = Vec::with_capacity(tokens * rows);
    let mut magnitude = Vec::with_capacity(tokens * rows);
    for t in 0..tokens {
        for r in 0..rows {
            let pairs = weights[r * cols..(r + 1) * cols]
                .iter()
                .zip(&x[t * cols..(t + 1) * cols]);
            let (sum, abs) = pairs.fold((0.0, 0.0), |(s, a), (&w, &x)| {
                (s + f64::from(w) * x, a + (f64::from(w) * x).abs())
            });
            out.push(sum);
            magnitude.push(abs);
        }
    }
    (out, magnitude)
}

#[test]
fn quant_gemv_matches_the_f64_twin_for_every_format() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0x9e37);
    for format in DeviceWeights::FORMATS {
        for (rows, cols, tokens) in [
            (1, 32, 1),
            (7, 64, 2),
            (9, 96, 1),
            (33, 1_184, 3),
            (64, 1_536, 1),
        ] {
            let what = format!("{} {rows}×{cols}, {tokens} tokens", format.name());
            let bytes = random_blocks(&mut rng, format, rows, cols);
            let weights = DeviceWeights::upload(&client, format, rows, cols, &bytes).unwrap();
            assert_eq!(
                (weights.rows(), weights.cols(), weights.format()),
                (rows, cols, format)
            );
            let x = rng.vec_f32(tokens * cols, -2.0, 2.0);
            let got = quant_gemv(&client, &weights, &DeviceBuffer::from_slice(&client, &x))
                .unwrap()
                .to_vec(&client, "quant_gemv")
                .unwrap();
            let x_wide: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let (want, magnitude) = reference(format, &bytes, rows, cols, &x_wide);
            assert_eq!(got.len(), want.len(), "{what}");
            for i in 0..want.len() {
                assert!(
                    (f64::from(got[i]) - want[i]).abs() <= F32_TOLERANCE * magnitude[i] + 1e-12,
                    "{what}: out[{i}] = {} vs {} (Σ|w·x| {})",
                    got[i],
                    want[i],
                    magnitude[i]
                );
            }
        }
    }
}

#[test]
fn quant_gemv_with_f16_activations_matches_the_f64_twin_within_f16s_tolerance() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0xf16a);
    let (rows, cols) = (20, 576);
    for format in DeviceWeights::FORMATS {
        let bytes = random_blocks(&mut rng, format, rows, cols);
        let weights = DeviceWeights::upload(&client, format, rows, cols, &bytes).unwrap();
        let x: Vec<f16> = rng
            .vec_f32(cols, -2.0, 2.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let got = quant_gemv(&client, &weights, &DeviceBuffer::from_slice(&client, &x))
            .unwrap()
            .to_vec(&client, "quant_gemv")
            .unwrap();
        let x_wide: Vec<f64> = x.iter().map(|v| f64::from(v.to_f32())).collect();
        let (want, magnitude) = reference(format, &bytes, rows, cols, &x_wide);
        for i in 0..rows {
            let got = f64::from(got[i].to_f32());
            assert!(
                (got - want[i]).abs() <= F16_TOLERANCE * magnitude[i].max(want[i].abs()),
                "{}: out[{i}] = {got} vs {}",
                format.name(),
                want[i]
            );
        }
    }
}

#[test]
fn dequantized_rows_equal_mlinfra_datas_dequantization() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0xd0);
    let (rows, cols) = (11, 96);
    for format in DeviceWeights::FORMATS {
        let bytes = random_blocks(&mut rng, format, rows, cols);
        let weights = DeviceWeights::upload(&client, format, rows, cols, &bytes).unwrap();
        let mut want = vec![0f32; rows * cols];
        assert!(dequantize_into(format, &bytes, &mut want));
        let picks = [10u32, 0, 3, 3];
        let got = weights
            .dequantize_rows(&client, &picks)
            .unwrap()
            .to_vec(&client, "dequantize_rows")
            .unwrap();
        for (i, &row) in picks.iter().enumerate() {
            let row = row as usize;
            // Exact for Q8_0 and Q4_0 (`d · q` is exact in f32); Q4_1's `d · q + m` is one
            // rounding, fused or not.
            for c in 0..cols {
                let (g, w) = (got[i * cols + c], want[row * cols + c]);
                assert!(
                    (g - w).abs() <= f32::EPSILON * w.abs(),
                    "{}: row {row}, col {c}: {g} vs {w}",
                    format.name()
                );
            }
        }
        assert!(matches!(
            weights.dequantize_rows(&client, &[11]),
            Err(Error::Shape { .. })
        ));
    }
}

#[test]
fn weights_of_other_formats_or_shapes_are_refused() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    assert!(matches!(
        DeviceWeights::upload(&client, GgmlType::Q6_K, 1, 256, &[0; 210]),
        Err(Error::Format { format: "Q6_K", .. })
    ));
    assert!(matches!(
        DeviceWeights::upload(&client, GgmlType::Q8_0, 2, 32, &[0; 34]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        DeviceWeights::upload(&client, GgmlType::Q8_0, 1, 48, &[0; 34]),
        Err(Error::Shape { .. })
    ));
    let weights = DeviceWeights::upload(&client, GgmlType::Q8_0, 1, 32, &[0; 34]).unwrap();
    assert!(matches!(
        quant_gemv(
            &client,
            &weights,
            &DeviceBuffer::from_slice(&client, &[0f32; 33])
        ),
        Err(Error::Shape { .. })
    ));
}

/// The device quantizer gives the CPU quantizer's blocks, bit for bit: codes (ties to even),
/// f16 scales and sums.
#[test]
fn activations_quantize_to_the_cpu_quantizers_q8_1_blocks() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0x81);
    let cols = 96;
    let mut x = rng.vec_f32(3 * cols, -3.0, 3.0);
    // A zero block, and values landing exactly on ties (127/2 steps of a block whose largest
    // magnitude is 127).
    x[32..64].fill(0.0);
    x[64] = 127.0;
    x[65] = 2.5;
    x[66] = -3.5;
    x[67] = 0.5;
    let got = quantize_q8_1(&client, &DeviceBuffer::from_slice(&client, &x), cols)
        .unwrap()
        .to_blocks(&client)
        .unwrap();
    let want = quantize_q8_1_portable(&x);
    assert_eq!(got.len(), want.len());
    for (b, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "block {b}: device vs CPU quantizer");
    }
}

/// Integer block sums against Q8_1 activations: the f64 twin is the same formula over the CPU
/// quantizer's blocks, `Σ d_w·d_x·Σq_w·q_x (− 8·Σq_x) (+ m_w·s_x)`.
#[test]
fn quant_gemv_against_q8_1_activations_matches_the_integer_twin() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0x818);
    for format in DeviceWeights::FORMATS {
        let (rows, cols, tokens) = (19, 320, 2);
        let bytes = random_blocks(&mut rng, format, rows, cols);
        let weights = DeviceWeights::upload(&client, format, rows, cols, &bytes).unwrap();
        let x = rng.vec_f32(tokens * cols, -2.0, 2.0);
        let quantized =
            quantize_q8_1(&client, &DeviceBuffer::from_slice(&client, &x), cols).unwrap();
        let got = quant_gemv_q8_1(&client, &weights, &quantized)
            .unwrap()
            .to_vec(&client, "quant_gemv_q8_1")
            .unwrap();
        let blocks = quantize_q8_1_portable(&x);
        let per_row = cols / 32;
        let block_bytes = format.type_size();
        for t in 0..tokens {
            for r in 0..rows {
                let (mut want, mut magnitude) = (0f64, 0f64);
                for b in 0..per_row {
                    let block = &bytes[(r * per_row + b) * block_bytes..][..block_bytes];
                    let xb = &blocks[t * per_row + b];
                    let half = |at: usize| {
                        f64::from(f16::from_le_bytes([block[at], block[at + 1]]).to_f32())
                    };
                    let codes: Vec<i32> = match format {
                        GgmlType::Q8_0 => block[2..].iter().map(|&q| i32::from(q as i8)).collect(),
                        _ => {
                            let nibbles = if format == GgmlType::Q4_1 {
                                &block[4..]
                            } else {
                                &block[2..]
                            };
                            let low = nibbles.iter().map(|&q| i32::from(q & 0xF));
                            low.chain(nibbles.iter().map(|&q| i32::from(q >> 4)))
                                .collect()
                        }
                    };
                    let mut isum: i32 = codes
                        .iter()
                        .zip(&xb.qs)
                        .map(|(&w, &q)| w * i32::from(q))
                        .sum();
                    if format == GgmlType::Q4_0 {
                        isum -= 8 * xb.sum;
                    }
                    let term = half(0) * f64::from(xb.d) * f64::from(isum);
                    let min = if format == GgmlType::Q4_1 {
                        half(2) * f64::from(xb.s)
                    } else {
                        0.0
                    };
                    want += term + min;
                    magnitude += term.abs() + min.abs();
                }
                let g = f64::from(got[t * rows + r]);
                assert!(
                    (g - want).abs() <= F32_TOLERANCE * magnitude + 1e-12,
                    "{} token {t}, row {r}: {g} vs {want}",
                    format.name()
                );
            }
        }
    }
}
