//! Paged decode attention on the device, with grouped-query heads and split-K over the
//! context (vLLM's paged attention v2, FlashDecoding): nothing in cubek or burn reads a KV
//! cache through block tables.
//!
//! The cache is serve's: per layer, keys and values as `[slots, kv_heads, head_dim]`, slot
//! `block · block_size + offset`, each sequence's blocks listed in its block table. Each query
//! token attends to its sequence's positions `0..=position` (a decode token's position is its
//! context length minus one; a prefill token's, its own: the same kernel serves both).
//!
//! Two launches:
//! 1. **Partitions.** One cube per (token, KV head, partition of [`PARTITION`] positions). A
//!    cube holds the whole query group that shares its KV head (GQA), so each key and value
//!    is read once for all of them: one unit per position computes the group's scores, trees
//!    over shared memory take each head's maximum and sum, and the units then sweep the
//!    values one dimension each (adjacent units, adjacent values: coalesced), writing an
//!    unnormalized partial output with its maximum and sum.
//! 2. **Combine.** One cube per (token, query head) rescales the partitions' outputs to a
//!    common maximum and divides by the common sum, as an online softmax does.
//!
//! Split-K is what keeps a long context fast at small batch: a 32k-token context is 256
//! partitions working at once instead of one cube walking all of it. Scores, sums and the
//! output accumulate in f32 for every element type.

use cubecl::prelude::*;

use crate::Result;
use crate::device::{DeviceBuffer, Element, require, supported};

/// Positions per partition, and units per partition cube (a power of two for the trees).
pub const PARTITION: usize = 128;
/// Units of a combine cube.
const COMBINE_UNITS: usize = 128;
/// The most cubes a grid dimension takes on every runtime.
const MAX_CUBES_PER_DIM: usize = 65_535;
/// Below every finite f32 score, without the infinities' arithmetic.
const LOWEST: f32 = -3.0e38;

#[cube(launch)]
fn partition_kernel<Q: Float, C: Float>(
    q: &[Q],
    k: &[C],
    v: &[C],
    block_tables: &[u32],
    token_seq: &[u32],
    token_pos: &[u32],
    partial_out: &mut [f32],
    partial_max: &mut [f32],
    partial_sum: &mut [f32],
    heads: usize,
    kv_heads: usize,
    block_size: usize,
    blocks_per_seq: usize,
    partitions: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] group: usize,
) {
    let part = CUBE_POS_X as usize;
    let kv_head = CUBE_POS_Y as usize;
    let token = CUBE_POS_Z as usize;
    let unit = UNIT_POS as usize;
    let pos = token_pos[token] as usize;
    let start = part * PARTITION;
    // The same for every unit of the cube: a partition past the token's position does nothing
    // (the combine reads only the partitions up to it).
    if start <= pos {
        let count = min(start + PARTITION, pos + 1) - start;
        let seq = token_seq[token] as usize;
        let first_head = kv_head * group;

        let mut queries = Shared::<[f32]>::new_slice(group * head_dim);
        let mut scores = Shared::<[f32]>::new_slice(group * PARTITION);
        let mut tree = Shared::<[f32]>::new_slice(group * PARTITION);
        let mut head_max = Shared::<[f32]>::new_slice(group);
        let mut slots = Shared::<[u32]>::new_slice(PARTITION);

        // The group's queries, pre-scaled.
        let mut i = unit;
        while i < group * head_dim {
            queries[i] = f32::cast_from(q[(token * heads + first_head) * head_dim + i]) * scale;
            i += PARTITION;
        }
        if unit < count {
            let p = start + unit;
            slots[unit] = block_tables[seq * blocks_per_seq + p / block_size] * block_size as u32
                + (p % block_size) as u32;
        }
        sync_cube();

        // One position per unit: the group's scores.
        #[unroll]
        for h in 0..group {
            let mut score = f32::new(LOWEST);
            if unit < count {
                let base = (slots[unit] as usize * kv_heads + kv_head) * head_dim;
                score = 0f32;
                for d in 0..head_dim {
                    score += queries[h * head_dim + d] * f32::cast_from(k[base + d]);
                }
            }
            scores[h * PARTITION + unit] = score;
            tree[h * PARTITION + unit] = score;
        }
        sync_cube();
        group_tree(&mut tree, unit, group, true);

        // Probabilities relative to each head's maximum (0 past the context).
        #[unroll]
        for h in 0..group {
            let at = h * PARTITION + unit;
            scores[at] = select(
                unit < count,
                f32::exp(scores[at] - tree[h * PARTITION]),
                0f32,
            );
        }
        if unit < group {
            head_max[unit] = tree[unit * PARTITION];
        }
        sync_cube();
        #[unroll]
        for h in 0..group {
            tree[h * PARTITION + unit] = scores[h * PARTITION + unit];
        }
        sync_cube();
        group_tree(&mut tree, unit, group, false);

        // One value dimension per unit, every position of the partition, the whole group.
        let mut d = unit;
        while d < head_dim {
            let mut acc = Array::<f32>::new(group);
            for j in 0..count {
                let value =
                    f32::cast_from(v[(slots[j] as usize * kv_heads + kv_head) * head_dim + d]);
                #[unroll]
                for h in 0..group {
                    acc[h] += scores[h * PARTITION + j] * value;
                }
            }
            #[unroll]
            for h in 0..group {
                partial_out
                    [((token * heads + first_head + h) * partitions + part) * head_dim + d] =
                    acc[h];
            }
            d += PARTITION;
        }
        if unit < group {
            let at = (token * heads + first_head + unit) * partitions + part;
            partial_max[at] = head_max[unit];
            partial_sum[at] = tree[unit * PARTITION];
        }
    }
}

/// Folds each head's `PARTITION` values of `tree` into its first (maximum or sum), every head
/// of the group in the same sweep: one barrier per level for all of them.
#[cube]
fn group_tree(
    tree: &mut Shared<[f32]>,
    unit: usize,
    #[comptime] group: usize,
    #[comptime] maximum: bool,
) {
    let mut stride = comptime!(PARTITION / 2).runtime();
    while stride > 0 {
        if unit < stride {
            #[unroll]
            for h in 0..group {
                let at = h * PARTITION + unit;
                if comptime!(maximum) {
                    tree[at] = max(tree[at], tree[at + stride]);
                } else {
                    tree[at] += tree[at + stride];
                }
            }
        }
        sync_cube();
        stride /= 2;
    }
}

#[cube(launch)]
fn combine_kernel<Q: Float>(
    token_pos: &[u32],
    partial_out: &[f32],
    partial_max: &[f32],
    partial_sum: &[f32],
    out: &mut [Q],
    heads: usize,
    partitions: usize,
    #[comptime] head_dim: usize,
) {
    let head = CUBE_POS_X as usize;
    let token = CUBE_POS_Y as usize;
    let used = token_pos[token] as usize / PARTITION + 1;
    let row = (token * heads + head) * partitions;
    let mut common_max = f32::new(LOWEST);
    for p in 0..used {
        common_max = max(common_max, partial_max[row + p]);
    }
    let mut common_sum = 0f32;
    for p in 0..used {
        common_sum += partial_sum[row + p] * f32::exp(partial_max[row + p] - common_max);
    }
    let mut d = UNIT_POS as usize;
    while d < head_dim {
        let mut acc = 0f32;
        for p in 0..used {
            acc +=
                partial_out[(row + p) * head_dim + d] * f32::exp(partial_max[row + p] - common_max);
        }
        out[(token * heads + head) * head_dim + d] = Q::cast_from(acc / common_sum);
        d += COMBINE_UNITS;
    }
}

/// `k[slots[t]] ← new_k[t]`, `v[slots[t]] ← new_v[t]`: one unit per value (vLLM's
/// `reshape_and_cache`).
#[cube(launch)]
fn store_kernel<C: Float>(
    new_k: &[C],
    new_v: &[C],
    slots: &[u32],
    k: &mut [C],
    v: &mut [C],
    slot_len: usize,
) {
    if ABSOLUTE_POS < new_k.len() {
        let at = slots[ABSOLUTE_POS / slot_len] as usize * slot_len + ABSOLUTE_POS % slot_len;
        k[at] = new_k[ABSOLUTE_POS];
        v[at] = new_v[ABSOLUTE_POS];
    }
}

/// Block `dst` ← block `src`, keys and values: one unit per value.
#[cube(launch)]
fn copy_block_kernel<C: Float>(k: &mut [C], v: &mut [C], src: usize, dst: usize, block_len: usize) {
    if ABSOLUTE_POS < block_len {
        k[dst * block_len + ABSOLUTE_POS] = k[src * block_len + ABSOLUTE_POS];
        v[dst * block_len + ABSOLUTE_POS] = v[src * block_len + ABSOLUTE_POS];
    }
}

/// One layer's paged keys and values in device memory: `[slots, kv_heads, head_dim]` each,
/// slot `block · block_size + offset` (serve's layout).
#[derive(Debug, Clone)]
pub struct PagedKv<E> {
    /// The keys.
    pub k: DeviceBuffer<E>,
    /// The values.
    pub v: DeviceBuffer<E>,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Slots per block.
    pub block_size: usize,
}

impl<C: Element> PagedKv<C> {
    /// `blocks` blocks of zeros.
    pub fn zeros(
        client: &Client,
        blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let values = vec![C::from_int(0); blocks * block_size * kv_heads * head_dim];
        Self {
            k: DeviceBuffer::from_slice(client, &values),
            v: DeviceBuffer::from_slice(client, &values),
            kv_heads,
            head_dim,
            block_size,
        }
    }

    /// Blocks the buffers hold.
    pub fn blocks(&self) -> usize {
        self.k.len() / self.block_len().max(1)
    }

    /// Values of one slot (`kv_heads · head_dim`).
    pub fn slot_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn block_len(&self) -> usize {
        self.slot_len() * self.block_size
    }

    /// Writes new tokens' keys and values (`slots.len()` slots of [`slot_len`](Self::slot_len)
    /// values each, in order) into `slots`. Launches one kernel; returns without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`](crate::Error::Shape) for a slot past the cache or rows of another
    /// length; [`Error::Unsupported`](crate::Error::Unsupported) when the runtime lacks `C`.
    pub fn store(
        &mut self,
        client: &Client,
        new_k: &DeviceBuffer<C>,
        new_v: &DeviceBuffer<C>,
        slots: &[u32],
    ) -> Result<()> {
        const KERNEL: &str = "paged_kv_store";
        supported::<C>(client, KERNEL)?;
        let slot_len = self.slot_len();
        let capacity = self.blocks() * self.block_size;
        require(
            new_k.len() == slots.len() * slot_len
                && new_v.len() == new_k.len()
                && slots.iter().all(|&s| (s as usize) < capacity),
            KERNEL,
            || {
                format!(
                    "{}/{} new values for {} slots of {slot_len} in a cache of {capacity} slots (largest slot {:?})",
                    new_k.len(),
                    new_v.len(),
                    slots.len(),
                    slots.iter().max()
                )
            },
        )?;
        if slots.is_empty() {
            return Ok(());
        }
        let cube_dim = CubeDim::new_1d(COMBINE_UNITS as u32);
        store_kernel::launch::<C>(
            client,
            cubecl::calculate_cube_count_elemwise(client, new_k.len(), cube_dim),
            cube_dim,
            new_k.arg(),
            new_v.arg(),
            DeviceBuffer::from_slice(client, slots).arg(),
            self.k.arg(),
            self.v.arg(),
            slot_len,
        );
        Ok(())
    }

    /// Copies block `src` over block `dst` for each `(src, dst)`, in order (serve's
    /// copy-on-write). Launches one kernel per copy; returns without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`](crate::Error::Shape) for a block past the cache.
    pub fn copy_blocks(&mut self, client: &Client, copies: &[(u32, u32)]) -> Result<()> {
        const KERNEL: &str = "paged_kv_copy";
        let blocks = self.blocks();
        if let Some(&(src, dst)) = copies
            .iter()
            .find(|&&(src, dst)| src as usize >= blocks || dst as usize >= blocks)
        {
            return Err(crate::Error::Shape {
                kernel: KERNEL,
                reason: format!("a copy {src} → {dst} outside the {blocks}-block cache").into(),
            });
        }
        let block_len = self.block_len();
        let cube_dim = CubeDim::new_1d(COMBINE_UNITS as u32);
        for &(src, dst) in copies {
            copy_block_kernel::launch::<C>(
                client,
                cubecl::calculate_cube_count_elemwise(client, block_len, cube_dim),
                cube_dim,
                self.k.arg(),
                self.v.arg(),
                src as usize,
                dst as usize,
                block_len,
            );
        }
        Ok(())
    }
}

/// Which positions each query token attends to: its sequence's block table and its own last
/// position, checked and on the device.
#[derive(Debug, Clone)]
pub struct AttentionBatch {
    block_tables: DeviceBuffer<u32>,
    blocks_per_seq: usize,
    token_seq: DeviceBuffer<u32>,
    token_pos: DeviceBuffer<u32>,
    max_pos: usize,
    /// The largest block id in a table (checked against the cache at launch).
    max_block: u32,
    block_size: usize,
}

impl AttentionBatch {
    /// `tables[s]` lists sequence `s`'s blocks in order; token `i` of the query is
    /// `tokens[i] = (sequence, position)` and attends to the sequence's positions
    /// `0..=position`.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`](crate::Error::Shape) for a token of a sequence not in `tables`, a
    /// position its table does not reach, or more tokens than a grid dimension holds.
    pub fn new(
        client: &Client,
        tables: &[&[u32]],
        tokens: &[(usize, usize)],
        block_size: usize,
    ) -> Result<Self> {
        const KERNEL: &str = "paged_attention";
        require(block_size > 0, KERNEL, || "blocks of 0 slots".into())?;
        require(tokens.len() <= MAX_CUBES_PER_DIM, KERNEL, || {
            format!(
                "{} tokens is more than a grid dimension holds",
                tokens.len()
            )
        })?;
        for (i, &(seq, position)) in tokens.iter().enumerate() {
            let table = tables.get(seq).copied();
            require(
                table.is_some_and(|t| position / block_size < t.len()),
                KERNEL,
                || match table {
                    None => format!("token {i}: sequence {seq} of {}", tables.len()),
                    Some(t) => format!(
                        "token {i}: position {position} is past its table of {} blocks of {block_size}",
                        t.len()
                    ),
                },
            )?;
        }
        let blocks_per_seq = tables.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; tables.len().max(1) * blocks_per_seq];
        for (row, table) in flat.chunks_exact_mut(blocks_per_seq).zip(tables) {
            row[..table.len()].copy_from_slice(table);
        }
        let to_u32 = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Self {
            max_block: tables
                .iter()
                .flat_map(|t| t.iter().copied())
                .max()
                .unwrap_or(0),
            block_tables: DeviceBuffer::from_slice(client, &flat),
            blocks_per_seq,
            token_seq: DeviceBuffer::from_slice(
                client,
                &tokens.iter().map(|t| to_u32(t.0)).collect::<Vec<_>>(),
            ),
            token_pos: DeviceBuffer::from_slice(
                client,
                &tokens.iter().map(|t| to_u32(t.1)).collect::<Vec<_>>(),
            ),
            max_pos: tokens.iter().map(|t| t.1).max().unwrap_or(0),
            block_size,
        })
    }

    /// Query tokens.
    pub fn tokens(&self) -> usize {
        self.token_pos.len()
    }
}

/// Attention of the `tokens × heads × head_dim` queries `q` over the cache, scores scaled by
/// `scale` (`1/√head_dim` for Llama): `tokens × heads × head_dim` outputs of the queries'
/// type (an f16 cache may serve f32 queries). Query head `h` reads KV head
/// `h / (heads / kv_heads)`. Launches two kernels; returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`](crate::Error::Shape) when the shapes disagree (heads not a multiple of
/// the KV heads, `q` not `tokens × heads × head_dim`, a block id past the cache, a block size
/// other than the batch's) or the context needs more partitions than a grid dimension holds;
/// [`Error::Unsupported`](crate::Error::Unsupported) when the runtime lacks `E`.
pub fn paged_attention<Q: Element, C: Element>(
    client: &Client,
    q: &DeviceBuffer<Q>,
    heads: usize,
    cache: &PagedKv<C>,
    batch: &AttentionBatch,
    scale: f32,
) -> Result<DeviceBuffer<Q>> {
    const KERNEL: &str = "paged_attention";
    supported::<Q>(client, KERNEL)?;
    supported::<C>(client, KERNEL)?;
    let PagedKv {
        kv_heads,
        head_dim,
        block_size,
        ..
    } = *cache;
    let tokens = batch.tokens();
    let slot_values = kv_heads * head_dim * block_size;
    require(
        kv_heads > 0
            && head_dim > 0
            && heads.is_multiple_of(kv_heads)
            && heads > 0
            && q.len() == tokens * heads * head_dim
            && block_size == batch.block_size
            && cache.k.len() == cache.v.len()
            && cache.k.len().is_multiple_of(slot_values)
            && (batch.max_block as usize) < cache.blocks(),
        KERNEL,
        || {
            format!(
                "{} query values for {tokens} tokens × {heads} heads × {head_dim}; {kv_heads} KV heads; \
                 K/V of {}/{} values in blocks of {block_size} slots (batch: {}); largest block id {}",
                q.len(),
                cache.k.len(),
                cache.v.len(),
                batch.block_size,
                batch.max_block
            )
        },
    )?;
    let partitions = batch.max_pos / PARTITION + 1;
    require(partitions <= MAX_CUBES_PER_DIM, KERNEL, || {
        format!("a context of {} positions", batch.max_pos + 1)
    })?;
    let out = DeviceBuffer::poisoned(client, q.len());
    if tokens == 0 {
        return Ok(out);
    }
    let group = heads / kv_heads;
    let partials = tokens * heads * partitions;
    let partial_out = DeviceBuffer::<f32>::poisoned(client, partials * head_dim);
    let partial_max = DeviceBuffer::<f32>::poisoned(client, partials);
    let partial_sum = DeviceBuffer::<f32>::poisoned(client, partials);
    partition_kernel::launch::<Q, C>(
        client,
        CubeCount::Static(partitions as u32, kv_heads as u32, tokens as u32),
        CubeDim::new_1d(PARTITION as u32),
        q.arg(),
        cache.k.arg(),
        cache.v.arg(),
        batch.block_tables.arg(),
        batch.token_seq.arg(),
        batch.token_pos.arg(),
        partial_out.arg(),
        partial_max.arg(),
        partial_sum.arg(),
        heads,
        kv_heads,
        block_size,
        batch.blocks_per_seq,
        partitions,
        scale,
        head_dim,
        group,
    );
    combine_kernel::launch::<Q>(
        client,
        CubeCount::Static(heads as u32, tokens as u32, 1),
        CubeDim::new_1d(COMBINE_UNITS as u32),
        batch.token_pos.arg(),
        partial_out.arg(),
        partial_max.arg(),
        partial_sum.arg(),
        out.arg(),
        heads,
        partitions,
        head_dim,
    );
    Ok(out)
}

/// The naive f64 twin of one query head: `softmax(q · Kᵀ · scale) · V` over `keys` and
/// `values` (one `head_dim` row per position, in position order).
pub fn attention_reference(q: &[f64], keys: &[&[f64]], values: &[&[f64]], scale: f64) -> Vec<f64> {
    let scores: Vec<f64> = keys
        .iter()
        .map(|k| q.iter().zip(*k).map(|(a, b)| a * b).sum::<f64>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0.0; q.len()];
    for (w, v) in weights.iter().zip(values) {
        for (o, x) in out.iter_mut().zip(*v) {
            *o += w / total * x;
        }
    }
    out
}
