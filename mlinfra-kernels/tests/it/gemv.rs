//! Dequantize-GEMV over Q8_0, Q4_0 and Q4_1 blocks on the software Vulkan adapter against an
//! f64 twin (mlinfra-data's ggml dequantization, then f64 sums): row counts that leave a cube
//! partly empty, rows of one block and of blocks not a multiple of the 32 units, several
//! tokens, outputs poisoned before launch, f32 and f16 activations.

use half::f16;
use mlinfra_data::tensor::{GgmlType, dequantize_into};
use mlinfra_kernels::gemv::{DeviceWeights, quant_gemv};
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
