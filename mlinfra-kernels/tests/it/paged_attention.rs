//! Paged attention on the software Vulkan adapter against the f64 twin: block tables that
//! scatter a sequence over the cache, contexts of one position, of exactly one partition, one
//! past it, and of several (split-K), decode and prefill tokens in one batch, grouped-query
//! heads, head sizes below the cube's units, outputs and partials poisoned before launch, f32
//! and f16.

use half::f16;
use mlinfra_kernels::paged_attention::{
    AttentionBatch, PARTITION, PagedKv, attention_reference, paged_attention,
};
use mlinfra_kernels::wgpu::software_device;
use mlinfra_kernels::{DeviceBuffer, Element, Error};
use mlinfra_test_utils::rng::SplitMix64;

trait Value: Element {
    /// Absolute, on outputs that are convex combinations of values in [-1, 1].
    const TOLERANCE: f64;
    fn from_f32(value: f32) -> Self;
    fn wide(self) -> f64;
}

impl Value for f32 {
    /// f32 scores, exponentials and sums over up to 700 positions.
    const TOLERANCE: f64 = 2e-6;
    fn from_f32(value: f32) -> Self {
        value
    }
    fn wide(self) -> f64 {
        f64::from(self)
    }
}

impl Value for f16 {
    /// Inputs in f16 (the twin takes the rounded values), f32 arithmetic, the output rounded to
    /// f16: half a step of 2^-11 and the f32 error.
    const TOLERANCE: f64 = 6e-4;
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
    fn wide(self) -> f64 {
        f64::from(self.to_f32())
    }
}

struct Shape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    /// Each sequence's context length.
    contexts: Vec<usize>,
}

fn check<T: Value>(seed: u64, shape: &Shape) {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(seed);
    let Shape {
        heads,
        kv_heads,
        head_dim,
        block_size,
        ref contexts,
    } = *shape;
    let what = format!("{heads}/{kv_heads} heads of {head_dim}, blocks of {block_size}");

    // Every sequence's blocks, shuffled across the cache, and a few spare blocks.
    let needed: usize = contexts.iter().map(|c| c.div_ceil(block_size)).sum();
    let blocks = needed + 3;
    let mut order: Vec<u32> = (0..blocks as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut next = 0;
    let tables: Vec<Vec<u32>> = contexts
        .iter()
        .map(|c| {
            let n = c.div_ceil(block_size);
            next += n;
            order[next - n..next].to_vec()
        })
        .collect();

    let slot_values = kv_heads * head_dim;
    let rounded = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let k = rounded(rng.vec_f32(blocks * block_size * slot_values, -1.0, 1.0));
    let v = rounded(rng.vec_f32(blocks * block_size * slot_values, -1.0, 1.0));

    // Every sequence's decode token, and two prefill tokens of the longest.
    let mut tokens: Vec<(usize, usize)> = contexts
        .iter()
        .enumerate()
        .map(|(s, c)| (s, c - 1))
        .collect();
    let longest = (0..contexts.len()).max_by_key(|&s| contexts[s]).unwrap();
    tokens.push((longest, 0));
    tokens.push((longest, contexts[longest] / 2));
    let q = rounded(rng.vec_f32(tokens.len() * heads * head_dim, -1.0, 1.0));
    let scale = 1.0 / (head_dim as f32).sqrt();

    let table_refs: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
    let batch = AttentionBatch::new(&client, &table_refs, &tokens, block_size).unwrap();
    let cache = PagedKv {
        k: DeviceBuffer::from_slice(&client, &k),
        v: DeviceBuffer::from_slice(&client, &v),
        kv_heads,
        head_dim,
        block_size,
    };
    let out = paged_attention(
        &client,
        &DeviceBuffer::from_slice(&client, &q),
        heads,
        &cache,
        &batch,
        scale,
    )
    .unwrap()
    .to_vec(&client, "paged_attention")
    .unwrap();

    let wide = |values: &[T]| -> Vec<f64> { values.iter().map(|x| x.wide()).collect() };
    let (k, v) = (wide(&k), wide(&v));
    for (t, &(seq, position)) in tokens.iter().enumerate() {
        for h in 0..heads {
            let kv_head = h / (heads / kv_heads);
            let rows = |cache: &'_ [f64]| -> Vec<Vec<f64>> {
                (0..=position)
                    .map(|p| {
                        let slot =
                            tables[seq][p / block_size] as usize * block_size + p % block_size;
                        cache[(slot * kv_heads + kv_head) * head_dim..][..head_dim].to_vec()
                    })
                    .collect()
            };
            let (keys, values) = (rows(&k), rows(&v));
            let key_refs: Vec<&[f64]> = keys.iter().map(Vec::as_slice).collect();
            let value_refs: Vec<&[f64]> = values.iter().map(Vec::as_slice).collect();
            let query = wide(&q[(t * heads + h) * head_dim..][..head_dim]);
            let want = attention_reference(&query, &key_refs, &value_refs, f64::from(scale));
            let got = &out[(t * heads + h) * head_dim..][..head_dim];
            for d in 0..head_dim {
                assert!(
                    (got[d].wide() - want[d]).abs() <= T::TOLERANCE,
                    "{what}: token {t} (seq {seq}, position {position}), head {h}, dim {d}: {} vs {}",
                    got[d].wide(),
                    want[d]
                );
            }
        }
    }
}

#[test]
fn paged_attention_matches_the_f64_twin_across_partitions_and_head_groups() {
    // One position; exactly one partition; one past it; several partitions (split-K).
    let contexts = vec![1, 5, PARTITION, PARTITION + 1, 3 * PARTITION + 60];
    for (seed, heads, kv_heads, head_dim, block_size) in [
        (1, 4, 4, 64, 16),
        (2, 6, 2, 48, 7),
        (3, 9, 3, 64, 16),
        (4, 8, 1, 130, 32),
    ] {
        check::<f32>(
            seed,
            &Shape {
                heads,
                kv_heads,
                head_dim,
                block_size,
                contexts: contexts.clone(),
            },
        );
    }
}

#[test]
fn paged_attention_in_f16_matches_the_f64_twin_within_f16s_tolerance() {
    check::<f16>(
        5,
        &Shape {
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            block_size: 16,
            contexts: vec![3, 2 * PARTITION + 1],
        },
    );
}

#[test]
fn batches_and_caches_that_do_not_fit_are_refused() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let table: &[u32] = &[0, 1];
    // A position past the table's two blocks of 4, and a sequence that does not exist.
    for tokens in [[(0, 8)], [(1, 0)]] {
        assert!(matches!(
            AttentionBatch::new(&client, &[table], &tokens, 4),
            Err(Error::Shape {
                kernel: "paged_attention",
                ..
            })
        ));
    }
    // A block id past the cache (one block of 4 slots, 1 head of 8).
    let batch = AttentionBatch::new(&client, &[table], &[(0, 7)], 4).unwrap();
    let cache = PagedKv {
        k: DeviceBuffer::from_slice(&client, &[0f32; 32]),
        v: DeviceBuffer::from_slice(&client, &[0f32; 32]),
        kv_heads: 1,
        head_dim: 8,
        block_size: 4,
    };
    let q = DeviceBuffer::from_slice(&client, &[0f32; 8]);
    assert!(matches!(
        paged_attention(&client, &q, 1, &cache, &batch, 1.0),
        Err(Error::Shape { .. })
    ));
    // Heads not a multiple of the KV heads.
    let batch = AttentionBatch::new(&client, &[&[0]], &[(0, 3)], 4).unwrap();
    let q = DeviceBuffer::from_slice(&client, &[0f32; 24]);
    let cache = PagedKv {
        kv_heads: 2,
        head_dim: 4,
        ..cache
    };
    assert!(matches!(
        paged_attention(&client, &q, 3, &cache, &batch, 1.0),
        Err(Error::Shape { .. })
    ));
}

/// New tokens' keys and values land in their slots, and block copies copy whole blocks, as
/// the same operations on a host copy do.
#[test]
fn stores_and_block_copies_match_the_same_operations_on_the_host() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let (blocks, block_size, kv_heads, head_dim) = (5, 4, 2, 3);
    let slot_len = kv_heads * head_dim;
    let mut cache = PagedKv::<f32>::zeros(&client, blocks, block_size, kv_heads, head_dim);
    assert_eq!((cache.blocks(), cache.slot_len()), (blocks, slot_len));
    let mut host_k = vec![0f32; blocks * block_size * slot_len];
    let mut host_v = host_k.clone();
    let slots = [0u32, 5, 6, 19];
    let new_k: Vec<f32> = (0..slots.len() * slot_len)
        .map(|i| i as f32 + 1.0)
        .collect();
    let new_v: Vec<f32> = new_k.iter().map(|x| -x).collect();
    cache
        .store(
            &client,
            &DeviceBuffer::from_slice(&client, &new_k),
            &DeviceBuffer::from_slice(&client, &new_v),
            &slots,
        )
        .unwrap();
    for (i, &slot) in slots.iter().enumerate() {
        let at = slot as usize * slot_len;
        host_k[at..at + slot_len].copy_from_slice(&new_k[i * slot_len..][..slot_len]);
        host_v[at..at + slot_len].copy_from_slice(&new_v[i * slot_len..][..slot_len]);
    }
    // Block 1 over 3, then 3 over 0: in order.
    cache.copy_blocks(&client, &[(1, 3), (3, 0)]).unwrap();
    let block_len = block_size * slot_len;
    for (src, dst) in [(1, 3), (3, 0)] {
        host_k.copy_within(src * block_len..(src + 1) * block_len, dst * block_len);
        host_v.copy_within(src * block_len..(src + 1) * block_len, dst * block_len);
    }
    assert_eq!(cache.k.to_vec(&client, "paged_kv_store").unwrap(), host_k);
    assert_eq!(cache.v.to_vec(&client, "paged_kv_store").unwrap(), host_v);

    let one = DeviceBuffer::from_slice(&client, &[0f32; 6]);
    assert!(matches!(
        cache.store(&client, &one, &one, &[20]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        cache.copy_blocks(&client, &[(0, 5)]),
        Err(Error::Shape { .. })
    ));
}
