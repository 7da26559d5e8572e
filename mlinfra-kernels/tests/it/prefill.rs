//! Prefill attention (cubek's flash attention over a context gathered out of the paged cache)
//! on the software Vulkan adapter against the f64 twin: whole prompts and chunks after a
//! cached prefix, token counts that are not multiples of cubek's tiles, grouped-query heads
//! (the group stride of 0), scattered block tables, outputs poisoned before launch, f32 and
//! f16; the gather alone, exactly; and the refusals.

use half::f16;
use mlinfra_kernels::paged_attention::{PagedKv, attention_reference};
use mlinfra_kernels::prefill::{PrefillRoutine, gather_context, prefill_attention};
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
    /// f32 scores, exponentials and sums over up to 300 positions, in cubek's tile order.
    const TOLERANCE: f64 = 5e-6;
    fn from_f32(value: f32) -> Self {
        value
    }
    fn wide(self) -> f64 {
        f64::from(self)
    }
}

impl Value for f16 {
    /// Inputs in f16 (the twin takes the rounded values); cubek's unit routine keeps its tiles
    /// in the input type (probabilities rounded to f16 before the value product, 2^-11
    /// relative) and accumulates in f32; the output rounded to f16.
    const TOLERANCE: f64 = 2e-3;
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
    fn wide(self) -> f64 {
        f64::from(self.to_f32())
    }
}

/// One sequence's cache, scattered over more blocks than it needs.
struct Case<T> {
    cache: PagedKv<T>,
    table: Vec<u32>,
    k: Vec<T>,
    v: Vec<T>,
}

fn case<T: Value>(
    client: &cubecl::client::Client,
    rng: &mut SplitMix64,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    context: usize,
) -> Case<T> {
    let blocks = context.div_ceil(block_size) + 2;
    let mut order: Vec<u32> = (0..blocks as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let table = order[..context.div_ceil(block_size)].to_vec();
    let values = blocks * block_size * kv_heads * head_dim;
    let mut random = || -> Vec<T> {
        rng.vec_f32(values, -1.0, 1.0)
            .into_iter()
            .map(T::from_f32)
            .collect()
    };
    let (k, v) = (random(), random());
    Case {
        cache: PagedKv {
            k: DeviceBuffer::from_slice(client, &k),
            v: DeviceBuffer::from_slice(client, &v),
            kv_heads,
            head_dim,
            block_size,
        },
        table,
        k,
        v,
    }
}

/// `tokens` queries at the end of a `context`-position sequence against the twin.
fn check<T: Value>(
    seed: u64,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    block_size: usize,
    context: usize,
    tokens: usize,
) {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(seed);
    let Case { cache, table, k, v } =
        case::<T>(&client, &mut rng, kv_heads, head_dim, block_size, context);
    let q: Vec<T> = rng
        .vec_f32(tokens * heads * head_dim, -1.0, 1.0)
        .into_iter()
        .map(T::from_f32)
        .collect();
    let routine = PrefillRoutine::for_device(&client);
    let out = prefill_attention(
        &client,
        &DeviceBuffer::from_slice(&client, &q),
        heads,
        &cache,
        &table,
        context,
        routine,
    )
    .unwrap_or_else(|error| panic!("{routine:?}: {error}"))
    .to_vec(&client, "prefill_attention")
    .unwrap();

    let what = format!(
        "{heads}/{kv_heads} heads of {head_dim}, blocks of {block_size}, {tokens} tokens over {context}"
    );
    let wide = |values: &[T]| -> Vec<f64> { values.iter().map(|x| x.wide()).collect() };
    let (k, v) = (wide(&k), wide(&v));
    let scale = 1.0 / (head_dim as f64).sqrt();
    for t in 0..tokens {
        let position = context - tokens + t;
        for h in 0..heads {
            let kv_head = h / (heads / kv_heads);
            fn rows<'a>(
                cache: &'a [f64],
                table: &[u32],
                (block_size, kv_heads, kv_head, head_dim): (usize, usize, usize, usize),
                position: usize,
            ) -> Vec<&'a [f64]> {
                (0..=position)
                    .map(|p| {
                        let slot = table[p / block_size] as usize * block_size + p % block_size;
                        &cache[(slot * kv_heads + kv_head) * head_dim..][..head_dim]
                    })
                    .collect()
            }
            let at = (block_size, kv_heads, kv_head, head_dim);
            let query = wide(&q[(t * heads + h) * head_dim..][..head_dim]);
            let want = attention_reference(
                &query,
                &rows(&k, &table, at, position),
                &rows(&v, &table, at, position),
                scale,
            );
            let got = &out[(t * heads + h) * head_dim..][..head_dim];
            for d in 0..head_dim {
                assert!(
                    (got[d].wide() - want[d]).abs() <= T::TOLERANCE,
                    "{what}: token {t} (position {position}), head {h}, dim {d}: {} vs {}",
                    got[d].wide(),
                    want[d]
                );
            }
        }
    }
}

#[test]
fn prefill_matches_the_f64_twin_for_whole_prompts_and_chunks_after_a_prefix() {
    // (seed, heads, kv heads, head dim, block size, context, tokens)
    for (seed, heads, kv_heads, head_dim, block_size, context, tokens) in [
        (1, 4, 4, 64, 16, 1, 1),
        (2, 6, 2, 64, 16, 45, 45),
        (3, 9, 3, 64, 7, 130, 37),
        (4, 8, 1, 32, 32, 300, 300),
        (5, 3, 3, 64, 16, 67, 1),
    ] {
        check::<f32>(
            seed,
            (heads, kv_heads, head_dim),
            block_size,
            context,
            tokens,
        );
    }
}

#[test]
fn prefill_in_f16_matches_the_f64_twin_within_f16s_tolerance() {
    check::<f16>(6, (9, 3, 64), 16, 77, 50);
}

#[test]
fn the_gathered_context_is_the_paged_cache_in_position_order() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(7);
    let (kv_heads, head_dim, block_size, context) = (3, 5, 4, 11);
    let Case { cache, table, k, v } =
        case::<f32>(&client, &mut rng, kv_heads, head_dim, block_size, context);
    let dense = gather_context::<f32, f32>(&client, &cache, &table, context).unwrap();
    for (gathered, paged) in [(&dense.k, &k), (&dense.v, &v)] {
        let gathered = gathered.to_vec(&client, "gather_context").unwrap();
        let mut want = Vec::new();
        for kv_head in 0..kv_heads {
            for p in 0..context {
                let slot = table[p / block_size] as usize * block_size + p % block_size;
                want.extend_from_slice(
                    &paged[(slot * kv_heads + kv_head) * head_dim..][..head_dim],
                );
            }
        }
        assert_eq!(gathered, want);
    }
}

#[test]
fn prefills_that_do_not_fit_are_refused() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(8);
    let Case { cache, table, .. } = case::<f32>(&client, &mut rng, 2, 64, 16, 20);
    let q = |tokens: usize| DeviceBuffer::from_slice(&client, &vec![0.5f32; tokens * 4 * 64]);
    let routine = PrefillRoutine::Unit;
    // More tokens than the context; a context past the table; heads not a multiple of KV heads.
    for (tokens, heads, context) in [(21, 4, 20), (4, 4, 33), (4, 3, 20)] {
        let result =
            prefill_attention(&client, &q(tokens), heads, &cache, &table, context, routine);
        assert!(
            matches!(
                result,
                Err(Error::Shape {
                    kernel: "prefill_attention",
                    ..
                })
            ),
            "{tokens} tokens, {heads} heads, context {context}: {result:?}"
        );
    }
    // lavapipe has no tensor cores: the accelerated routine says so instead of running.
    let result = prefill_attention(
        &client,
        &q(4),
        4,
        &cache,
        &table,
        20,
        PrefillRoutine::Accelerated { planes: 4 },
    );
    assert!(
        matches!(
            result,
            Err(Error::Unavailable {
                kernel: "prefill_attention",
                ..
            })
        ),
        "{result:?}"
    );
}
