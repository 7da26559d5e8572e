//! Paged attention (`attention::ReferenceAttention`) against dense causal attention computed
//! naively in f64 on contiguous keys and values.

use burn::tensor::{Device, Tensor, TensorData};
use mlinfra_serve::Error;
use mlinfra_serve::attention::{
    BatchLayout, PagedAttention, PagedKv, ReferenceAttention, SeqLayout,
};
use mlinfra_serve::kv::BlockCopy;
use mlinfra_test_utils::rng::SplitMix64;

const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const DIM: usize = 8;
const BLOCK: usize = 4;
const BLOCKS: usize = 40;

fn tensor(values: &[f32], rows: usize, heads: usize) -> Tensor<3> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [rows, heads, DIM]),
        &Device::flex(),
    )
}

/// softmax(q·kᵀ·scale)·v over positions 0..=position, in f64; `k`, `v` are
/// `[positions][kv_heads][dim]` flattened; the result is `[heads][dim]`.
fn naive(q: &[f32], k: &[f32], v: &[f32], position: usize, scale: f64) -> Vec<f64> {
    let group = HEADS / KV_HEADS;
    let mut out = vec![0.0; HEADS * DIM];
    for h in 0..HEADS {
        let kv = h / group;
        let row = |m: &[f32], p: usize| {
            m[(p * KV_HEADS + kv) * DIM..][..DIM]
                .iter()
                .map(|&x| f64::from(x))
                .collect::<Vec<_>>()
        };
        let scores: Vec<f64> = (0..=position)
            .map(|p| {
                let key = row(k, p);
                (0..DIM)
                    .map(|d| f64::from(q[h * DIM + d]) * key[d])
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for (p, w) in weights.iter().enumerate() {
            let value = row(v, p);
            for d in 0..DIM {
                out[h * DIM + d] += w / total * value[d];
            }
        }
    }
    out
}

/// Three sequences on shuffled blocks, fed over four steps of prefill chunks and decodes
/// (different chunk shapes each step): every output row equals the naive dense attention
/// over that sequence's positions so far.
#[test]
fn paged_attention_equals_dense_causal_attention_on_random_block_tables() {
    let mut rng = SplitMix64::new(3);
    let mut free: Vec<u32> = (0..BLOCKS as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    // Chunk lengths per step; 0 means the sequence sits the step out.
    let steps = [[5usize, 9, 1], [1, 3, 6], [0, 1, 1], [7, 1, 4]];
    let mut tables: Vec<Vec<u32>> = vec![Vec::new(); 3];
    let mut keys: Vec<Vec<f32>> = vec![Vec::new(); 3];
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); 3];
    let mut memory = PagedKv::zeros(1, BLOCKS, BLOCK, KV_HEADS, DIM, &Device::flex());
    let scale = 1.0 / (DIM as f64).sqrt();
    for chunk in steps {
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let mut queries = Vec::new(); // (sequence, position)
        for (s, &len) in chunk.iter().enumerate() {
            let start = keys[s].len() / (KV_HEADS * DIM);
            while tables[s].len() * BLOCK < start + len {
                tables[s].push(free.pop().unwrap());
            }
            for position in start..start + len {
                q.extend(rng.vec_f32(HEADS * DIM, -1.0, 1.0));
                let key = rng.vec_f32(KV_HEADS * DIM, -1.0, 1.0);
                let value = rng.vec_f32(KV_HEADS * DIM, -1.0, 1.0);
                k.extend(&key);
                v.extend(&value);
                keys[s].extend(key);
                values[s].extend(value);
                queries.push((s, position));
            }
        }
        let mut seqs = Vec::new();
        let mut at = 0;
        for (s, &len) in chunk.iter().enumerate() {
            if len > 0 {
                seqs.push(SeqLayout {
                    query_start: at,
                    query_len: len,
                    context_len: keys[s].len() / (KV_HEADS * DIM),
                    block_table: &tables[s],
                });
                at += len;
            }
        }
        let layout = BatchLayout {
            seqs,
            block_size: BLOCK,
        };
        let n = layout.num_tokens();
        let out = ReferenceAttention
            .forward(
                memory.layer_mut(0),
                &layout,
                tensor(&q, n, HEADS),
                tensor(&k, n, KV_HEADS),
                tensor(&v, n, KV_HEADS),
                scale,
            )
            .unwrap();
        assert_eq!(out.dims(), [n, HEADS, DIM]);
        let out = out.into_data().try_to_vec::<f32>().unwrap();
        for (row, &(s, position)) in queries.iter().enumerate() {
            let expected = naive(
                &q[row * HEADS * DIM..][..HEADS * DIM],
                &keys[s],
                &values[s],
                position,
                scale,
            );
            for (got, want) in out[row * HEADS * DIM..][..HEADS * DIM]
                .iter()
                .zip(&expected)
            {
                assert!(
                    (f64::from(*got) - want).abs() < 1e-5,
                    "sequence {s} position {position}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn block_copies_move_every_layer() {
    let mut memory = PagedKv::zeros(2, 4, 2, 1, DIM, &Device::flex());
    let table = [3u32];
    let layout = BatchLayout {
        seqs: vec![SeqLayout {
            query_start: 0,
            query_len: 2,
            context_len: 2,
            block_table: &table,
        }],
        block_size: 2,
    };
    let kv: Vec<f32> = (0..2 * DIM).map(|i| i as f32).collect();
    for layer in 0..2 {
        let q = Tensor::from_data(
            TensorData::new(vec![0.0f32; 2 * DIM], [2, 1, DIM]),
            &Device::flex(),
        );
        let kv = Tensor::from_data(TensorData::new(kv.clone(), [2, 1, DIM]), &Device::flex());
        ReferenceAttention
            .forward(memory.layer_mut(layer), &layout, q, kv.clone(), kv, 1.0)
            .unwrap();
    }
    memory.copy_blocks(&[BlockCopy { src: 3, dst: 1 }]);
    for layer in 0..2 {
        for side in [&memory.layer(layer).k, &memory.layer(layer).v] {
            let all = side.clone().into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(
                all[2 * DIM..4 * DIM],
                kv[..],
                "layer {layer}: block 1 holds block 3's slots"
            );
            assert_eq!(all[6 * DIM..8 * DIM], kv[..]);
        }
    }
}

#[test]
fn layouts_that_do_not_fit_are_typed_errors() {
    let mut memory = PagedKv::zeros(1, 4, BLOCK, KV_HEADS, DIM, &Device::flex());
    let run = |memory: &mut PagedKv, seqs: Vec<SeqLayout<'_>>, tokens: usize| {
        let q = tensor(&vec![0.0; tokens * HEADS * DIM], tokens, HEADS);
        let k = tensor(&vec![0.0; tokens * KV_HEADS * DIM], tokens, KV_HEADS);
        ReferenceAttention.forward(
            memory.layer_mut(0),
            &BatchLayout {
                seqs,
                block_size: BLOCK,
            },
            q,
            k.clone(),
            k,
            1.0,
        )
    };
    let short = [0u32];
    let outside = [9u32];
    let cases = [
        (
            vec![SeqLayout {
                query_start: 0,
                query_len: 2,
                context_len: 6,
                block_table: &short,
            }],
            2,
            "1 blocks of 4 for a context of 6",
        ),
        (
            vec![SeqLayout {
                query_start: 0,
                query_len: 2,
                context_len: 2,
                block_table: &outside,
            }],
            2,
            "outside the 4-block pool",
        ),
        (
            vec![SeqLayout {
                query_start: 1,
                query_len: 2,
                context_len: 2,
                block_table: &short,
            }],
            2,
            "expected a non-empty range from 0",
        ),
        (
            vec![SeqLayout {
                query_start: 0,
                query_len: 3,
                context_len: 2,
                block_table: &short,
            }],
            3,
            "3 queries but a context of 2",
        ),
        (
            vec![SeqLayout {
                query_start: 0,
                query_len: 2,
                context_len: 2,
                block_table: &short,
            }],
            3,
            "do not fit a 2-token batch",
        ),
    ];
    for (seqs, tokens, what) in cases {
        let error = run(&mut memory, seqs, tokens).unwrap_err();
        assert!(matches!(error, Error::InvalidBatch { .. }), "{error}");
        assert!(error.to_string().contains(what), "{error}");
    }
}
