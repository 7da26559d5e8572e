//! Kernel benchmarks. On CPU-only machines the "device" is Mesa's software Vulkan driver:
//! these figures compare code paths on one machine, they are never GPU numbers.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use mlinfra_benches::ELEMENTWISE_SIZES;
use mlinfra_data::tensor::GgmlType;
use mlinfra_kernels::cpu::matrix::{QuantMatrix, WeightFormat};
use mlinfra_kernels::cpu::pool::{Parallelism, SpinPool};
use mlinfra_kernels::cpu::quant::quantize_q8_1;
use mlinfra_kernels::gemv::{
    DeviceWeights, quant_gemv as device_gemv, quant_gemv_q8_1, quantize_q8_1 as device_quantize,
};
use mlinfra_kernels::loss::{Targets, cross_entropy_with_grad_in_place};
use mlinfra_kernels::norm::{rms_norm, rms_norm_backward};
use mlinfra_kernels::paged_attention::{
    AttentionBatch, PagedKv, paged_attention as device_attention,
};
use mlinfra_kernels::prefill::{PrefillRoutine, prefill_attention};
use mlinfra_kernels::{
    DeviceBuffer, gelu_tanh, gelu_tanh_reference, roofline, swiglu, swiglu_backward,
    swiglu_reference, synchronize, wgpu::software_device,
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

/// The cubecl kernels of issue 25 on the software Vulkan driver, inputs resident on the
/// device and each iteration ending synchronised with it; throughput is the kernels' minimum
/// traffic ([`mlinfra_kernels::roofline`]). Labelled `wgpu_software`: a CPU emulating a GPU,
/// never compared with GPU figures (those come from the `gpu_bench` example).
fn cubecl_kernels(c: &mut Criterion) {
    let Ok(adapter) = software_device() else {
        eprintln!("cubecl_kernels: no software Vulkan adapter; skipped");
        return;
    };
    let client = adapter.client();
    let sync = || synchronize(&client).expect("device runs");
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7 + seed) % 1024) as f32 - 512.0) / 256.0)
            .collect()
    };
    let mut group = c.benchmark_group("cubecl_kernels");
    group.sample_size(10);

    // RMSNorm with the residual add over 2,048 tokens of SmolLM2's 576 features.
    let (rows, cols) = (2048, 576);
    let x = DeviceBuffer::from_slice(&client, &values(rows * cols, 1));
    let r = DeviceBuffer::from_slice(&client, &values(rows * cols, 2));
    let w = DeviceBuffer::from_slice(&client, &values(cols, 3));
    group.throughput(Throughput::Bytes(
        roofline::rms_norm(rows, cols, true, 4).bytes,
    ));
    group.bench_function("wgpu_software/rms_norm_residual_2048x576", |b| {
        b.iter(|| {
            black_box(rms_norm(&client, &x, Some(&r), &w, 1e-5).expect("kernel runs"));
            sync()
        })
    });
    let out = rms_norm(&client, &x, Some(&r), &w, 1e-5).expect("kernel runs");
    let stream = out.stream.expect("a residual was added");
    group.throughput(Throughput::Bytes(
        roofline::rms_norm_backward(rows, cols, false, 4).bytes,
    ));
    group.bench_function("wgpu_software/rms_norm_backward_2048x576", |b| {
        b.iter(|| {
            black_box(
                rms_norm_backward(&client, &x, &stream, &w, &out.rstd, None).expect("kernel runs"),
            );
            sync()
        })
    });

    // Cross-entropy with the gradient in place: 16 tokens of a 49,152-token vocabulary.
    let (tokens, vocab) = (16, 49_152);
    let logits = values(tokens * vocab, 4);
    let targets: Vec<i32> = (0..tokens as i32).map(|t| t * 997).collect();
    let targets = Targets::new(&client, &targets, vocab).expect("targets fit");
    group.throughput(Throughput::Bytes(
        roofline::cross_entropy(tokens, vocab, true, 4).bytes,
    ));
    group.bench_function("wgpu_software/cross_entropy_grad_16x49152", |b| {
        b.iter_batched(
            || DeviceBuffer::from_slice(&client, &logits),
            |mut logits| {
                black_box(
                    cross_entropy_with_grad_in_place(&client, &mut logits, &targets, 1.0 / 16.0)
                        .expect("kernel runs"),
                );
                sync()
            },
            criterion::BatchSize::LargeInput,
        )
    });

    // Dequantize-GEMV, one token through SmolLM2's ffn_down (576 × 1536) in Q4_1, f32 and Q8_1
    // activations. Arbitrary but valid blocks: the cost does not depend on the values.
    let (rows, cols) = (576, 1536);
    let blocks: Vec<u8> = (0..rows * cols / 32)
        .flat_map(|i| {
            let mut block = vec![0u8; 20];
            block[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            block[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
            block[4..]
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i * 31 + j * 17) as u8);
            block
        })
        .collect();
    let weights =
        DeviceWeights::upload(&client, GgmlType::Q4_1, rows, cols, &blocks).expect("blocks fit");
    let x = DeviceBuffer::from_slice(&client, &values(cols, 5));
    let traffic = roofline::quant_gemv(rows, cols, 1, weights.resident_bytes(), 4);
    group.throughput(Throughput::Bytes(traffic.bytes));
    group.bench_function("wgpu_software/quant_gemv_q4_1_f32_576x1536", |b| {
        b.iter(|| {
            black_box(device_gemv(&client, &weights, &x).expect("kernel runs"));
            sync()
        })
    });
    group.bench_function("wgpu_software/quant_gemv_q4_1_q8_1_576x1536", |b| {
        b.iter(|| {
            let quantized = device_quantize(&client, &x, cols).expect("kernel runs");
            black_box(quant_gemv_q8_1(&client, &weights, &quantized).expect("kernel runs"));
            sync()
        })
    });

    // Paged decode attention: 8 sequences at 1,024 positions, SmolLM2's heads (9 over 3 KV
    // heads of 64), an f16 cache in blocks of 16, 8 partitions each (split-K).
    let (seqs, context, heads, kv_heads, head_dim, block_size) = (8, 1024, 9, 3, 64, 16);
    let blocks_per_seq = context / block_size;
    let cache_values = seqs * context * kv_heads * head_dim;
    let half_values = |seed| -> Vec<half::f16> {
        values(cache_values, seed)
            .into_iter()
            .map(half::f16::from_f32)
            .collect()
    };
    let cache = PagedKv {
        k: DeviceBuffer::from_slice(&client, &half_values(6)),
        v: DeviceBuffer::from_slice(&client, &half_values(7)),
        kv_heads,
        head_dim,
        block_size,
    };
    let tables: Vec<Vec<u32>> = (0..seqs)
        .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
        .collect();
    let table_refs: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
    let decode: Vec<(usize, usize)> = (0..seqs).map(|s| (s, context - 1)).collect();
    let batch = AttentionBatch::new(&client, &table_refs, &decode, block_size).expect("batch fits");
    let q = DeviceBuffer::from_slice(&client, &values(seqs * heads * head_dim, 8));
    let traffic = roofline::paged_attention(&vec![context; seqs], heads, kv_heads, head_dim, 2, 4);
    group.throughput(Throughput::Bytes(traffic.bytes));
    group.bench_function("wgpu_software/paged_attention_8x1024_f16", |b| {
        b.iter(|| {
            black_box(
                device_attention(&client, &q, heads, &cache, &batch, 0.125).expect("kernel runs"),
            );
            sync()
        })
    });

    // Prefill of one prompt over the same cache (sequence 0's first positions), f32 queries:
    // the paged kernel (each token reads its whole context) beside cubek's flash attention
    // (the context gathered once, read once per query tile). Equal FLOPs; throughput in them.
    let routine = PrefillRoutine::for_device(&client);
    for prompt in [16, 64, 256] {
        let positions: Vec<(usize, usize)> = (0..prompt).map(|p| (0, p)).collect();
        let batch =
            AttentionBatch::new(&client, &table_refs, &positions, block_size).expect("batch fits");
        let q = DeviceBuffer::from_slice(&client, &values(prompt * heads * head_dim, 9));
        group.throughput(Throughput::Elements(
            roofline::prefill_attention(prompt, prompt, (heads, kv_heads, head_dim), 2, 4).flops,
        ));
        group.bench_function(format!("wgpu_software/prefill_paged_{prompt}_f16"), |b| {
            b.iter(|| {
                black_box(
                    device_attention(&client, &q, heads, &cache, &batch, 0.125)
                        .expect("kernel runs"),
                );
                sync()
            })
        });
        // Compiled outside the measurement: lavapipe takes seconds to build cubek's kernel.
        prefill_attention(&client, &q, heads, &cache, &tables[0], prompt, routine)
            .expect("cubek runs here");
        sync();
        group.bench_function(format!("wgpu_software/prefill_cubek_{prompt}_f16"), |b| {
            b.iter(|| {
                black_box(
                    prefill_attention(&client, &q, heads, &cache, &tables[0], prompt, routine)
                        .expect("cubek runs here"),
                );
                sync()
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    gelu,
    swiglu_fused,
    quant_gemv,
    paged_attention,
    cubecl_kernels
);
