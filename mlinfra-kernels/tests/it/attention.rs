//! The CPU paged attention (issue 24, item 3) against an f64 twin: random batches of
//! sequences (prefill and decode rows, contexts across block boundaries, blocks out of
//! order), grouped-query heads, head sizes in registers (32, 64, 128), in memory (24) and
//! left to the reference (20); f32 and f16 caches; on every thread split.

use half::f16;
use mlinfra_kernels::cpu::SimdKernels;
use mlinfra_kernels::cpu::pool::Parallelism;
use mlinfra_serve::attention::{BatchLayout, SeqLayout};
use mlinfra_serve::host::{AttentionStep, HostKernels, KvSlice, ReferenceKernels};
use mlinfra_test_utils::rng::SplitMix64;

/// Element `i` of a cache slice, in f64.
fn value(kv: KvSlice<'_>, i: usize) -> f64 {
    match kv {
        KvSlice::F16(values) => f64::from(values[i].to_f32()),
        KvSlice::F32(values) => f64::from(values[i]),
    }
}

/// `softmax(q·Kᵀ·scale)·V` for one piece, in f64 from the same operands.
fn twin(step: &AttentionStep<'_>, piece: usize) -> Vec<f64> {
    let hd = step.head_dim;
    let q = step.query(piece);
    let scores: Vec<f64> = (0..=step.position(piece))
        .map(|p| {
            let at = step.kv_offset(piece, p);
            q.iter()
                .enumerate()
                .map(|(i, &a)| f64::from(a) * value(step.k, at + i))
                .sum::<f64>()
                * f64::from(step.scale)
        })
        .collect();
    let max = scores.iter().copied().fold(f64::MIN, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0f64; hd];
    for (p, w) in weights.iter().enumerate() {
        let at = step.kv_offset(piece, p);
        for (i, o) in out.iter_mut().enumerate() {
            *o += w / total * value(step.v, at + i);
        }
    }
    out
}

#[test]
fn pieces_are_their_f64_twins() {
    let mut rng = SplitMix64::new(64);
    let block_size = 4;
    let blocks = 128;
    for (head_dim, half) in [32usize, 64, 128, 24, 20]
        .into_iter()
        .flat_map(|d| [(d, false), (d, true)])
    {
        let (heads, kv_heads) = (6, 2);
        let slot_len = kv_heads * head_dim;
        let k = rng.vec_f32(blocks * block_size * slot_len, -1.0, 1.0);
        let v = rng.vec_f32(blocks * block_size * slot_len, -1.0, 1.0);
        let (k16, v16): (Vec<f16>, Vec<f16>) = (
            k.iter().map(|&x| f16::from_f32(x)).collect(),
            v.iter().map(|&x| f16::from_f32(x)).collect(),
        );
        let (k, v) = if half {
            (KvSlice::F16(&k16), KvSlice::F16(&v16))
        } else {
            (KvSlice::F32(&k), KvSlice::F32(&v))
        };
        // Five sequences: a 9-token prefill, a decode row at position 13, a 2-token chunk, and
        // past the online softmax's 128-position chunks: a 6-token chunk ending at position
        // 299 (its context three chunks) and a decode row at 199.
        let tables: [Vec<u32>; 5] = [
            vec![7, 3, 11],
            vec![0, 20, 5, 9],
            vec![2, 15],
            (0..75).map(|i| 48 + (i * 7) % 75).collect(),
            (0..50).map(|i| 48 + (i * 11) % 75).collect(),
        ];
        // (queries, context)
        let parts = [(9usize, 9usize), (1, 14), (2, 6), (6, 300), (1, 200)];
        let mut seqs = Vec::new();
        let mut seq_of_token = Vec::new();
        let mut start = 0;
        for (i, ((queries, context), table)) in parts.iter().zip(&tables).enumerate() {
            seqs.push(SeqLayout {
                query_start: start,
                query_len: *queries,
                context_len: *context,
                block_table: table,
            });
            seq_of_token.extend(std::iter::repeat_n(i, *queries));
            start += queries;
        }
        let layout = BatchLayout { seqs, block_size };
        let tokens = seq_of_token.len();
        let qkv_width = (heads + 2 * kv_heads) * head_dim;
        let qkv = rng.vec_f32(tokens * qkv_width, -2.0, 2.0);
        let step = AttentionStep {
            layer: 0,
            k,
            v,
            qkv: &qkv,
            qkv_width,
            heads,
            kv_heads,
            head_dim,
            block_size,
            scale: 1.0 / (head_dim as f32).sqrt(),
            layout: &layout,
            seq_of_token: &seq_of_token,
        };
        let want: Vec<f64> = (0..step.pieces())
            .flat_map(|piece| twin(&step, piece))
            .collect();
        let mut reference = vec![f32::NAN; tokens * heads * head_dim];
        ReferenceKernels.attention(&step, &mut reference).unwrap();
        for kernels in [
            SimdKernels::with_parallelism(Parallelism::Serial),
            SimdKernels::new(3),
        ] {
            let mut out = vec![f32::NAN; tokens * heads * head_dim];
            kernels.attention(&step, &mut out).unwrap();
            for (name, got) in [("simd", &out), ("reference", &reference)] {
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(&g, &w)| (f64::from(g) - w).abs())
                    .fold(0f64, f64::max);
                assert!(
                    worst < 2e-6,
                    "{name}, head size {head_dim}: max |Δ| {worst}"
                );
            }
        }
    }
}

/// A query's output is the same bits whatever tile it falls in: a 9-query chunk of a prefill
/// against the same sequence's last 5 queries alone (a later chunk), and a decode row.
#[test]
fn a_query_gets_the_same_bits_in_any_tile() {
    let mut rng = SplitMix64::new(9);
    let (heads, kv_heads, head_dim, block_size) = (4, 2, 64, 4);
    let cache = |rng: &mut SplitMix64| -> Vec<f16> {
        rng.vec_f32(72 * block_size * kv_heads * head_dim, -1.0, 1.0)
            .into_iter()
            .map(f16::from_f32)
            .collect()
    };
    let (k, v) = (cache(&mut rng), cache(&mut rng));
    let qkv_width = (heads + 2 * kv_heads) * head_dim;
    let qkv = rng.vec_f32(9 * qkv_width, -2.0, 2.0);
    // 262 positions: the queries (253..262) straddle the online softmax's chunk at 256.
    let table: Vec<u32> = (0..66).map(|i| (i * 5) % 66 + 3).collect();
    let run = |queries: usize| -> Vec<u32> {
        let layout = BatchLayout {
            seqs: vec![SeqLayout {
                query_start: 0,
                query_len: queries,
                context_len: 262,
                block_table: &table,
            }],
            block_size,
        };
        let seq_of_token = vec![0; queries];
        let step = AttentionStep {
            layer: 0,
            k: KvSlice::F16(&k),
            v: KvSlice::F16(&v),
            qkv: &qkv[(9 - queries) * qkv_width..],
            qkv_width,
            heads,
            kv_heads,
            head_dim,
            block_size,
            scale: 0.125,
            layout: &layout,
            seq_of_token: &seq_of_token,
        };
        let mut out = vec![f32::NAN; queries * heads * head_dim];
        SimdKernels::new(2).attention(&step, &mut out).unwrap();
        out.iter().map(|v| v.to_bits()).collect()
    };
    let whole = run(9);
    let piece = heads * head_dim;
    assert_eq!(run(5), whole[4 * piece..], "the last 5 queries alone");
    assert_eq!(run(1), whole[8 * piece..], "the last query as a decode row");
}
