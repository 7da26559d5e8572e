//! Repacked Q4_0 / Q4_1 / Q5_0 / Q8_0 / Q4_K / Q6_K matrices times Q8_1 activations (issue 24,
//! item 3): against f64 twins on awkward shapes (row counts that are not whole groups,
//! one-token batches), every instruction set this CPU has against the portable path bit for
//! bit, and each token's result the same alone or in a batch, on any number of threads.

use half::f16;
use mlinfra_data::tensor::dequantize_into;
use mlinfra_kernels::cpu::CpuFeatures;
use mlinfra_kernels::cpu::matrix::{Isa, QuantMatrix, WeightFormat};
use mlinfra_kernels::cpu::pool::{Parallelism, SpinPool};
use mlinfra_kernels::cpu::quant::{BlockQ8_1, quantize_q8_1};
use mlinfra_test_utils::rng::SplitMix64;

const FORMATS: [WeightFormat; 6] = [
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q8_0,
    WeightFormat::Q4_K,
    WeightFormat::Q6_K,
];

/// A random `rows × cols` matrix in GGUF blocks: scales and minimums of either sign, every
/// code (Q8_0's -128 included), every packed scale byte.
fn gguf_matrix(format: WeightFormat, rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let random = |bytes: &mut Vec<u8>, n: usize, rng: &mut SplitMix64| {
        bytes.extend((0..n).map(|_| rng.next_u64() as u8));
    };
    let half = |v: f64| f16::from_f64(v).to_le_bytes();
    for _ in 0..rows * cols / format.block_values() {
        match format {
            WeightFormat::Q6_K => {
                // ql, qh, 16 i8 scales, then d.
                random(&mut bytes, 128 + 64 + 16, rng);
                bytes.extend(half(rng.uniform(-0.005, 0.005)));
                continue;
            }
            _ => bytes.extend(half(rng.uniform(-0.05, 0.05))),
        }
        match format {
            WeightFormat::Q4_0 => random(&mut bytes, 16, rng),
            WeightFormat::Q4_1 => {
                bytes.extend(half(rng.uniform(-0.5, 0.5)));
                random(&mut bytes, 16, rng);
            }
            WeightFormat::Q5_0 => random(&mut bytes, 4 + 16, rng),
            WeightFormat::Q8_0 => random(&mut bytes, 32, rng),
            WeightFormat::Q4_K => {
                bytes.extend(half(rng.uniform(-0.02, 0.02)));
                random(&mut bytes, 12 + 128, rng);
            }
            WeightFormat::Q6_K => unreachable!(),
        }
    }
    bytes
}

/// Q4_K's 6-bit scale and minimum of sub-block `j` (ggml's `get_scale_min_k4`, read anew
/// here).
fn q4_k_scale_min(j: usize, q: &[u8]) -> (f64, f64) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f64::from(sc), f64::from(m))
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
            WeightFormat::Q5_0 => {
                let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                let mut values = [0f64; 32];
                for (j, &byte) in block[6..].iter().enumerate() {
                    let fifth = |v: usize| f64::from((qh >> v) & 1) * 16.0;
                    values[j] = d * (f64::from(byte & 0x0F) + fifth(j) - 16.0);
                    values[j + 16] = d * (f64::from(byte >> 4) + fifth(j + 16) - 16.0);
                }
                out.extend(values);
            }
            WeightFormat::Q8_0 => out.extend(block[2..].iter().map(|&q| d * f64::from(q as i8))),
            WeightFormat::Q4_K => {
                let dmin = half(&block[2..4]);
                let mut values = [0f64; 256];
                // Each 32-byte run: sub-block 2p in the low nibbles, 2p + 1 in the high.
                for (p, qs) in block[16..].chunks_exact(32).enumerate() {
                    for (h, shift) in [(0, 0), (1, 4)] {
                        let (sc, m) = q4_k_scale_min(2 * p + h, &block[4..16]);
                        for (l, &q) in qs.iter().enumerate() {
                            let code = f64::from((q >> shift) & 0x0F);
                            values[64 * p + 32 * h + l] = d * sc * code - dmin * m;
                        }
                    }
                }
                out.extend(values);
            }
            WeightFormat::Q6_K => {
                // d is the block's last two bytes; `half` above read its first two.
                let d = half(&block[208..210]);
                let mut values = [0f64; 256];
                for n in 0..2 {
                    let ql = &block[64 * n..];
                    let qh = &block[128 + 32 * n..];
                    let sc = |v: usize| f64::from(block[192 + v / 16] as i8);
                    for l in 0..32 {
                        let top = |k: usize| (qh[l] >> (2 * k)) & 3;
                        let codes = [
                            (ql[l] & 0x0F) | top(0) << 4,
                            (ql[l + 32] & 0x0F) | top(1) << 4,
                            (ql[l] >> 4) | top(2) << 4,
                            (ql[l + 32] >> 4) | top(3) << 4,
                        ];
                        for (k, &q) in codes.iter().enumerate() {
                            let v = 128 * n + l + 32 * k;
                            values[v] = d * sc(v) * (f64::from(q) - 32.0);
                        }
                    }
                }
                out.extend(values);
            }
        }
    }
    out
}

/// The term the kernels compute with `s` as Q8_1 stores it (f16, as ggml), not `d·Σq`:
/// `Σ_blocks min · (s - d·Σq)`, for formats with minimums (zero for the others).
fn minimum_correction(
    format: WeightFormat,
    bytes: &[u8],
    row: usize,
    cols: usize,
    x: &[BlockQ8_1],
) -> f64 {
    let half = |b: &[u8]| f64::from(f16::from_le_bytes([b[0], b[1]]).to_f32());
    let blocks = cols / format.block_values();
    let offset = |xb: &BlockQ8_1| f64::from(xb.s) - f64::from(xb.d) * f64::from(xb.sum);
    let mut total = 0.0;
    for b in 0..blocks {
        let block = &bytes[(row * blocks + b) * format.block_bytes()..][..format.block_bytes()];
        match format {
            WeightFormat::Q4_1 => total += half(&block[2..4]) * offset(&x[b]),
            WeightFormat::Q4_K => {
                for j in 0..8 {
                    let (_, m) = q4_k_scale_min(j, &block[4..16]);
                    total -= half(&block[2..4]) * m * offset(&x[8 * b + j]);
                }
            }
            _ => {}
        }
    }
    total
}

/// The activations Q8_1 stands for, in f64.
fn activations(x: &[BlockQ8_1]) -> Vec<f64> {
    x.iter()
        .flat_map(|b| b.qs.iter().map(move |&q| f64::from(b.d) * f64::from(q)))
        .collect()
}

fn isas() -> Vec<Isa> {
    let features = CpuFeatures::detect();
    [
        Isa::Portable,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDotprod,
    ]
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
        let shapes: &[(usize, usize, usize)] = if format.block_values() == 256 {
            &[
                (1, 256, 1),
                (7, 512, 1),
                (9, 768, 6),
                (33, 256, 2),
                (70, 1536, 2),
            ]
        } else {
            &[
                (1, 32, 1),
                (7, 64, 1),
                (8, 96, 2),
                (9, 576, 6),
                (33, 160, 1),
                (70, 1536, 2),
            ]
        };
        for &(rows, cols, tokens) in shapes {
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
                    let token = &q8[t * cols / 32..(t + 1) * cols / 32];
                    exact += minimum_correction(format, &bytes, r, cols, token);
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
        let (rows, cols) = (
            11,
            if format.block_values() == 256 {
                512
            } else {
                96
            },
        );
        let bytes = gguf_matrix(format, rows, cols, &mut rng);
        let weights = dequantize(format, &bytes);
        // ggml's reference dequantization, as mlinfra-data transcribes it: the same bits.
        let mut ggml = vec![0f32; rows * cols];
        assert!(dequantize_into(format.ggml_type(), &bytes, &mut ggml));
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
                assert_eq!(
                    got.to_bits(),
                    ggml[r * cols + c].to_bits(),
                    "{format:?} row {r} col {c} against ggml's dequantization"
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
        let (block, values) = (format.block_bytes(), format.block_values());
        let bytes = vec![0u8; 4 * block];
        assert!(QuantMatrix::new(format, 2, 2 * values, &bytes).is_ok());
        let refused = |rows, cols, len: usize| {
            QuantMatrix::new(format, rows, cols, &bytes[..len])
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused(2, 2 * values - 4, 4 * block)
                .contains(&format!("not whole {values}-value blocks"))
        );
        if values == 256 {
            // 32-value blocks are not enough for a K-quant.
            assert!(refused(2, 2 * values - 32, 4 * block).contains("256-value"));
        }
        assert!(refused(2, 2 * values, 4 * block - 1).contains("are not 2 rows"));
        assert!(refused(3, 2 * values, 4 * block).contains("are not 3 rows"));
        assert!(refused(0, 2 * values, 0).contains("zero"));
        let matrix = QuantMatrix::new(format, 2, 2 * values, &bytes).unwrap();
        // Three halves of a token's blocks: not whole tokens.
        let x = quantize_q8_1(&vec![1.0; 3 * values]);
        let mut out = vec![0.0; 2];
        assert!(
            matrix
                .matmul(&x, &mut out, &Parallelism::Serial)
                .unwrap_err()
                .to_string()
                .contains("not whole rows")
        );
        let x = quantize_q8_1(&vec![1.0; 2 * values]);
        assert!(
            matrix
                .matmul(&x, &mut out[..1], &Parallelism::Serial)
                .is_err()
        );
        // A part of a stacked output: rows that do not fit are refused.
        let mut stacked = vec![0.0; 3];
        assert!(
            matrix
                .matmul_into(&x, &mut stacked, 3, 1, &Parallelism::Serial)
                .is_ok()
        );
        assert!(
            matrix
                .matmul_into(&x, &mut stacked, 3, 2, &Parallelism::Serial)
                .unwrap_err()
                .to_string()
                .contains("do not fit")
        );
    }
}
