//! Repacked Q4_0 / Q4_1 / Q8_0 matrices times Q8_1 activations (issue 24, item 3): against f64
//! twins on awkward shapes (row counts that are not whole groups, one-token batches), every
//! instruction set this CPU has against the portable path bit for bit, and each token's
//! result the same alone or in a batch, on any number of threads.

use half::f16;
use mlinfra_kernels::cpu::CpuFeatures;
use mlinfra_kernels::cpu::matrix::{Isa, QuantMatrix, WeightFormat};
use mlinfra_kernels::cpu::pool::{Parallelism, SpinPool};
use mlinfra_kernels::cpu::quant::{BlockQ8_1, quantize_q8_1};
use mlinfra_test_utils::rng::SplitMix64;

const FORMATS: [WeightFormat; 3] = [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0];

/// A random `rows × cols` matrix in GGUF blocks: scales and minimums of either sign, every
/// code (Q8_0's -128 included).
fn gguf_matrix(format: WeightFormat, rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / 32 {
        bytes.extend(f16::from_f64(rng.uniform(-0.05, 0.05)).to_le_bytes());
        match format {
            WeightFormat::Q4_0 => bytes.extend((0..16).map(|_| rng.next_u64() as u8)),
            WeightFormat::Q4_1 => {
                bytes.extend(f16::from_f64(rng.uniform(-0.5, 0.5)).to_le_bytes());
                bytes.extend((0..16).map(|_| rng.next_u64() as u8));
            }
            WeightFormat::Q8_0 => bytes.extend((0..32).map(|_| rng.next_u64() as u8)),
        }
    }
    bytes
}

/// The matrix's values in f64, decoded from the GGUF bytes by the twin's own reading of
/// ggml's block layouts.
fn dequantize(format: WeightFormat, bytes: &[u8]) -> Vec<f64> {
    let half = |b: &[u8]| f64::from(f16::from_le_bytes([b[0], b[1]]).to_f32());
    let mut out = Vec::new();
    for block in bytes.chunks_exact(format.block_bytes()) {
        let d = half(&block[0..2]);
        match format {
            WeightFormat::Q4_0 => {
                let mut values = [0f64; 32];
                for (j, &byte) in block[2..].iter().enumerate() {
                    values[j] = d * (f64::from(byte & 0x0F) - 8.0);
                    values[j + 16] = d * (f64::from(byte >> 4) - 8.0);
                }
                out.extend(values);
            }
            WeightFormat::Q4_1 => {
                let m = half(&block[2..4]);
                let mut values = [0f64; 32];
                for (j, &byte) in block[4..].iter().enumerate() {
                    values[j] = d * f64::from(byte & 0x0F) + m;
                    values[j + 16] = d * f64::from(byte >> 4) + m;
                }
                out.extend(values);
            }
            WeightFormat::Q8_0 => out.extend(block[2..].iter().map(|&q| d * f64::from(q as i8))),
        }
    }
    out
}

/// The activations Q8_1 stands for, in f64.
fn activations(x: &[BlockQ8_1]) -> Vec<f64> {
    x.iter()
        .flat_map(|b| b.qs.iter().map(move |&q| f64::from(b.d) * f64::from(q)))
        .collect()
}

fn isas() -> Vec<Isa> {
    let features = CpuFeatures::detect();
    [Isa::Portable, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni]
        .into_iter()
        .filter(|isa| isa.is_supported(features))
        .collect()
}

fn parallelisms() -> Vec<Parallelism> {
    vec![
        Parallelism::Serial,
        Parallelism::Spin(SpinPool::new(2)),
        Parallelism::Spin(SpinPool::new(3)),
        Parallelism::Rayon { parts: 2 },
    ]
}

#[test]
fn products_are_their_f64_twins_on_every_isa_and_bit_identical_across_them() {
    let mut rng = SplitMix64::new(2424);
    let isas = isas();
    eprintln!("instruction sets on this CPU: {isas:?}");
    let serial = Parallelism::Serial;
    for format in FORMATS {
        for (rows, cols, tokens) in [
            (1, 32, 1),
            (7, 64, 1),
            (8, 96, 2),
            (9, 576, 6),
            (33, 160, 1),
            (70, 1536, 2),
        ] {
            let bytes = gguf_matrix(format, rows, cols, &mut rng);
            let weights = dequantize(format, &bytes);
            let x = rng.vec_f32(tokens * cols, -3.0, 3.0);
            let q8 = quantize_q8_1(&x);
            let xs = activations(&q8);
            let mut portable = vec![f32::NAN; tokens * rows];
            let matrix = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
            matrix
                .clone()
                .with_isa(Isa::Portable)
                .unwrap()
                .matmul(&q8, &mut portable, &serial)
                .unwrap();
            for t in 0..tokens {
                for r in 0..rows {
                    let (mut exact, mut magnitude) = (0f64, 0f64);
                    for c in 0..cols {
                        let term = weights[r * cols + c] * xs[t * cols + c];
                        exact += term;
                        magnitude += term.abs();
                    }
                    if format == WeightFormat::Q4_1 {
                        // The kernel multiplies a block's minimum by `s` as Q8_1 stores it
                        // (f16, as ggml): the twin takes the same operand.
                        let blocks = cols / 32;
                        for b in 0..blocks {
                            let block = &bytes[(r * blocks + b) * 20..][..20];
                            let m = f64::from(f16::from_le_bytes([block[2], block[3]]).to_f32());
                            let xb = &q8[t * blocks + b];
                            exact += m * (f64::from(xb.s) - f64::from(xb.d) * f64::from(xb.sum));
                        }
                    }
                    let got = f64::from(portable[t * rows + r]);
                    assert!(
                        (got - exact).abs() <= 1e-5 * magnitude + 1e-6,
                        "{format:?} {rows}×{cols}, token {t}, row {r}: {got} vs {exact} (Σ|wx| \
                         {magnitude})"
                    );
                }
            }
            for &isa in &isas {
                let mut out = vec![f32::NAN; tokens * rows];
                matrix
                    .clone()
                    .with_isa(isa)
                    .unwrap()
                    .matmul(&q8, &mut out, &serial)
                    .unwrap();
                assert!(
                    out.iter()
                        .zip(&portable)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{format:?} {rows}×{cols} on {isa:?} differs from the portable path"
                );
            }
        }
    }
}

#[test]
fn each_token_gets_the_same_bits_alone_or_batched_on_any_threads() {
    let mut rng = SplitMix64::new(16);
    for format in FORMATS {
        // Many groups, so that the threads split it and tiles are several.
        let (rows, cols, tokens) = (203, 1536, 16);
        let bytes = gguf_matrix(format, rows, cols, &mut rng);
        let matrix = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
        let q8 = quantize_q8_1(&rng.vec_f32(tokens * cols, -2.0, 2.0));
        let mut alone = vec![0f32; tokens * rows];
        for (t, token) in q8.chunks_exact(cols / 32).enumerate() {
            matrix
                .matmul(
                    token,
                    &mut alone[t * rows..(t + 1) * rows],
                    &Parallelism::Serial,
                )
                .unwrap();
        }
        for parallelism in parallelisms() {
            let mut batched = vec![f32::NAN; tokens * rows];
            matrix.matmul(&q8, &mut batched, &parallelism).unwrap();
            assert!(
                batched
                    .iter()
                    .zip(&alone)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{format:?}: a batch of {tokens} on {} parts is not each token alone",
                parallelism.parts()
            );
        }
    }
}

#[test]
fn rows_dequantize_to_the_twins_values() {
    let mut rng = SplitMix64::new(7);
    for format in FORMATS {
        let (rows, cols) = (11, 96);
        let bytes = gguf_matrix(format, rows, cols, &mut rng);
        let weights = dequantize(format, &bytes);
        let matrix = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
        let mut row = vec![f32::NAN; cols];
        for r in 0..rows {
            matrix.dequantize_row(r, &mut row).unwrap();
            for (c, &got) in row.iter().enumerate() {
                let want = weights[r * cols + c];
                assert!(
                    (f64::from(got) - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{format:?} row {r} col {c}: {got} vs {want}"
                );
            }
        }
        assert!(matrix.dequantize_row(rows, &mut row).is_err());
        assert!(matrix.dequantize_row(0, &mut row[1..]).is_err());
    }
}

#[test]
fn shapes_that_do_not_fit_are_refused() {
    for format in FORMATS {
        let block = format.block_bytes();
        let bytes = vec![0u8; 4 * block];
        assert!(QuantMatrix::new(format, 2, 64, &bytes).is_ok());
        let refused = |rows, cols, len: usize| {
            QuantMatrix::new(format, rows, cols, &bytes[..len])
                .unwrap_err()
                .to_string()
        };
        assert!(refused(2, 60, 4 * block).contains("not whole 32-value blocks"));
        assert!(refused(2, 64, 4 * block - 1).contains("are not 2 rows"));
        assert!(refused(3, 64, 4 * block).contains("are not 3 rows"));
        assert!(refused(0, 64, 0).contains("zero"));
        let matrix = QuantMatrix::new(format, 2, 64, &bytes).unwrap();
        let x = quantize_q8_1(&[1.0; 96]); // three blocks: not whole tokens of two
        let mut out = vec![0.0; 2];
        assert!(
            matrix
                .matmul(&x, &mut out, &Parallelism::Serial)
                .unwrap_err()
                .to_string()
                .contains("not whole rows")
        );
        let x = quantize_q8_1(&[1.0; 64]);
        assert!(
            matrix
                .matmul(&x, &mut out[..1], &Parallelism::Serial)
                .is_err()
        );
    }
}
