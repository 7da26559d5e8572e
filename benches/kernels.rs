//! Kernel benchmarks. On CPU-only machines the "device" is Mesa's software Vulkan driver:
//! these figures compare code paths on one machine, they are never GPU numbers.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use mlinfra_benches::ELEMENTWISE_SIZES;
use mlinfra_kernels::cpu::matrix::{QuantMatrix, WeightFormat};
use mlinfra_kernels::cpu::pool::{Parallelism, SpinPool};
use mlinfra_kernels::cpu::quant::quantize_q8_1;
use mlinfra_kernels::{
    gelu_tanh, gelu_tanh_reference, swiglu, swiglu_backward, swiglu_reference,
    wgpu::software_device,
};

fn gelu(c: &mut Criterion) {
    let mut group = c.benchmark_group("gelu_tanh");
    let device = software_device().ok();
    for len in ELEMENTWISE_SIZES {
        let input: Vec<f32> = (0..len)
            .map(|i| ((i % 1024) as f32 - 512.0) / 64.0)
            .collect();
        group.throughput(Throughput::Bytes((len * 2 * size_of::<f32>()) as u64));
        group.bench_with_input(
            BenchmarkId::new("cpu_scalar_f64", len),
            &input,
            |b, input| {
                b.iter(|| {
                    input
                        .iter()
                        .map(|&x| gelu_tanh_reference(f64::from(x)) as f32)
                        .collect::<Vec<_>>()
                })
            },
        );
        if let Some(device) = &device {
            let client = device.client();
            // `gelu_tanh` reads the result back, so each iteration ends synchronised with the device.
            group.bench_with_input(
                BenchmarkId::new("wgpu_software", len),
                &input,
                |b, input| b.iter(|| gelu_tanh(&client, black_box(input)).expect("kernel runs")),
            );
        }
    }
    group.finish();
}

/// Fused SwiGLU on the software Vulkan driver (labelled `wgpu_software`: never a GPU figure),
/// forward and backward, beside the f64 twin on the CPU; bytes are the fused kernels' traffic
/// (12 per element forward, 20 backward, f32), uploads and readback included.
fn swiglu_fused(c: &mut Criterion) {
    let mut group = c.benchmark_group("swiglu");
    let device = software_device().ok();
    for len in ELEMENTWISE_SIZES {
        let gate: Vec<f32> = (0..len)
            .map(|i| ((i % 1024) as f32 - 512.0) / 64.0)
            .collect();
        let up: Vec<f32> = (0..len)
            .map(|i| ((i % 977) as f32 - 488.0) / 128.0)
            .collect();
        group.throughput(Throughput::Bytes((len * 3 * size_of::<f32>()) as u64));
        group.bench_function(BenchmarkId::new("cpu_scalar_f64", len), |b| {
            b.iter(|| {
                gate.iter()
                    .zip(&up)
                    .map(|(&g, &u)| swiglu_reference(f64::from(g), f64::from(u)) as f32)
                    .collect::<Vec<_>>()
            })
        });
        if let Some(device) = &device {
            let client = device.client();
            group.bench_function(BenchmarkId::new("wgpu_software_forward", len), |b| {
                b.iter(|| swiglu(&client, black_box(&gate), &up).expect("kernel runs"))
            });
            group.throughput(Throughput::Bytes((len * 5 * size_of::<f32>()) as u64));
            group.bench_function(BenchmarkId::new("wgpu_software_backward", len), |b| {
                b.iter(|| {
                    swiglu_backward(&client, black_box(&gate), &up, &gate).expect("kernel runs")
                })
            });
        }
    }
    group.finish();
}

/// GEMV (one token) over quantized matrices larger than the last-level cache, in GB/s of
/// weights read: compare with `mem_ceiling`'s read bandwidth (docs/BENCHMARKS.md). Also the
/// two threading schemes side by side on a decode-sized matrix (SmolLM2's `ffn_down`, 576 ×
/// 1536), where dispatch cost shows, and a 64-token tile (prefill) in GFLOP/s.
fn quant_gemv(c: &mut Criterion) {
    let mut group = c.benchmark_group("quant_gemv");
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let schemes = [
        ("serial", Parallelism::Serial),
        ("spin", Parallelism::Spin(SpinPool::new(threads))),
        ("rayon", Parallelism::Rayon { parts: threads }),
    ];
    let shapes = [
        (WeightFormat::Q4_1, 16384, 4096, "large"),
        (WeightFormat::Q4_0, 16384, 4096, "large"),
        (WeightFormat::Q5_0, 16384, 4096, "large"),
        (WeightFormat::Q4_K, 16384, 4096, "large"),
        (WeightFormat::Q6_K, 8192, 4096, "large"),
        (WeightFormat::Q8_0, 8192, 4096, "large"),
        (WeightFormat::Q4_1, 576, 1536, "ffn_down"),
    ];
    for (format, rows, cols, label) in shapes {
        // Arbitrary but fixed bytes (f16 scales among them small and finite): the kernels'
        // cost does not depend on the values.
        let bytes: Vec<u8> = (0..rows * cols / format.block_values() * format.block_bytes())
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x3F)
            .collect();
        let matrix = QuantMatrix::new(format, rows, cols, &bytes).expect("a valid matrix");
        for tokens in [1usize, 64] {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i % 97) as f32 - 48.0) / 17.0)
                .collect();
            let q8 = quantize_q8_1(&x);
            let mut out = vec![0f32; tokens * rows];
            if tokens == 1 {
                group.throughput(Throughput::Bytes(bytes.len() as u64));
            } else {
                group.throughput(Throughput::Elements((2 * rows * cols * tokens) as u64));
            }
            for (name, parallelism) in &schemes {
                if tokens > 1 && *name != "spin" {
                    continue;
                }
                let id = format!("{format:?}_{label}_{rows}x{cols}_t{tokens}_{name}");
                group.bench_function(BenchmarkId::new(id, threads), |b| {
                    b.iter(|| {
                        matrix
                            .matmul(black_box(&q8), &mut out, parallelism)
                            .expect("shapes fit")
                    })
                });
            }
        }
    }
    group.finish();
}

/// Paged attention on the CPU (`SimdKernels::attention`), SmolLM2's shape (9 query heads, 3
/// KV heads, 64 values per head, f16 cache, blocks of 16): decode (16 sequences, one query
/// each, 512 positions of context), in GiB/s of keys and values read; and a 512-token
/// prefill of one sequence, in GFLOP/s (2 · head_dim multiply-adds per query, position and
/// head, for scores and for values).
fn paged_attention(c: &mut Criterion) {
    use half::f16;
    use mlinfra_serve::attention::{BatchLayout, SeqLayout};
    use mlinfra_serve::host::{AttentionStep, HostKernels, KvSlice};

    let mut group = c.benchmark_group("paged_attention");
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let kernels = mlinfra_kernels::cpu::SimdKernels::new(threads);
    let (heads, kv_heads, head_dim, block_size, context) = (9, 3, 64, 16, 512);
    let blocks_per_seq = context / block_size;
    for (label, seqs, queries) in [("decode_16x1", 16usize, 1usize), ("prefill_1x512", 1, 512)] {
        let slots = seqs * blocks_per_seq * block_size;
        let cache: Vec<f16> = (0..slots * kv_heads * head_dim)
            .map(|i| f16::from_f32(((i % 251) as f32 - 125.0) / 256.0))
            .collect();
        let tables: Vec<Vec<u32>> = (0..seqs)
            .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
            .collect();
        let layout = BatchLayout {
            seqs: tables
                .iter()
                .enumerate()
                .map(|(s, table)| SeqLayout {
                    query_start: s * queries,
                    query_len: queries,
                    context_len: context,
                    block_table: table,
                })
                .collect(),
            block_size,
        };
        let seq_of_token: Vec<usize> = (0..seqs)
            .flat_map(|s| std::iter::repeat_n(s, queries))
            .collect();
        let qkv_width = (heads + 2 * kv_heads) * head_dim;
        let qkv: Vec<f32> = (0..seqs * queries * qkv_width)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let step = AttentionStep {
            layer: 0,
            k: KvSlice::F16(&cache),
            v: KvSlice::F16(&cache),
            qkv: &qkv,
            qkv_width,
            heads,
            kv_heads,
            head_dim,
            block_size,
            scale: 0.125,
            layout: &layout,
            seq_of_token: &seq_of_token,
        };
        let mut out = vec![0f32; step.pieces() * head_dim];
        if queries == 1 {
            // Each query head reads its KV head's keys and values once.
            group.throughput(Throughput::Bytes(
                (seqs * heads * context * head_dim * 2 * 2) as u64,
            ));
        } else {
            let pairs = queries * (queries + 1) / 2;
            group.throughput(Throughput::Elements(
                (pairs * heads * head_dim * 2 * 2) as u64,
            ));
        }
        group.bench_function(BenchmarkId::new(label, threads), |b| {
            b.iter(|| {
                kernels
                    .attention(black_box(&step), &mut out)
                    .expect("host kernels do not fail")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gelu, swiglu_fused, quant_gemv, paged_attention);
