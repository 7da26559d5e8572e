//! Prefill attention by cubek's flash attention: a prompt chunk's queries over its whole
//! context, causal, read from serve's paged cache.
//!
//! cubek (the kernels burn's cubecl backends run) ships a flash attention (FlashAttention 2's
//! tiling: a tile of queries stays in registers while key and value tiles stream past, online
//! softmax, no `seq_q × seq_kv` score matrix in memory). It reads dense `[batch, heads, seq,
//! head_dim]` tensors, so the sequence's keys and values are first gathered out of the paged
//! cache into one dense buffer each ([`gather_context`]: `context × kv_heads × head_dim`
//! values per buffer, the cache's own size for this sequence). Grouped-query heads need no
//! copies: the batch axis walks the KV heads and the head axis the query group with a key
//! stride of 0, so the group reads its KV head's rows in place. The queries are read and the
//! output written in serve's `[tokens, heads, head_dim]` layout through strides.
//!
//! Why not our own kernel: [`paged_attention`](crate::paged_attention::paged_attention) serves
//! prefill tokens too, but each token reads its whole context from memory (`n²/2` key reads
//! for an `n`-token prompt); a flash kernel reads each key once per query tile. The
//! `prefill` benches (`benches/kernels.rs`, `gpu_bench`) set the two side by side, and the
//! rule that follows from them is [`prefill_attention`]'s caller's: cubek for a chunk of many
//! tokens where a routine runs, the paged kernel for decode tokens and where none does.
//!
//! Two routines, by what the device has: [`PrefillRoutine::Accelerated`] runs the tile
//! matmuls on tensor cores (cmma, f16 fragments whatever the input type, as cubek does; it
//! takes only chunks whose length is a multiple of its query tile), and
//! [`PrefillRoutine::Unit`] on plain units, which needs a plane (warp) size of at least 2.
//! Mesa's software Vulkan driver (plane size 8, no cmma) runs the unit routine; where a
//! routine cannot run, the call is [`Error::Unavailable`] and the caller falls back (the unit
//! routine, then the paged kernel).

use cubecl::prelude::*;
use cubecl::zspace::{Shape, Strides};
use cubek_attention::forward::definition::{
    AccumulatorPrecision, AttentionGlobalTypes, AttentionOptions, AttentionSetupError,
};
use cubek_attention::forward::launch::{BlueprintStrategy, Strategy, launch_ref};
use cubek_attention::forward::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

use crate::device::{DeviceBuffer, Element, require, supported};
use crate::paged_attention::PagedKv;
use crate::{Error, Result};

const KERNEL: &str = "prefill_attention";
/// Units of a gather cube.
const GATHER_UNITS: u32 = 256;

/// Which of cubek's flash-attention routines runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillRoutine {
    /// Tile matmuls on the tensor cores (cmma on f16 fragments), `planes` planes per cube.
    Accelerated {
        /// Planes (warps) per cube: 2, 4 or 8 (burn's autotune tries those).
        planes: u8,
    },
    /// Tile matmuls on plain units; needs plane operations.
    Unit,
}

impl PrefillRoutine {
    /// The routine this device runs best: the tensor-core one where it has f16 cmma, else the
    /// unit one. Neither may run (a device without plane operations): the launch says so.
    pub fn for_device(client: &Client) -> Self {
        let f16 = half::f16::elem_type_native();
        let tensor_cores = client
            .properties()
            .features
            .matmul
            .cmma
            .iter()
            .any(|config| config.a_type == f16 && config.b_type == f16);
        if tensor_cores {
            Self::Accelerated { planes: 4 }
        } else {
            Self::Unit
        }
    }

    fn strategy(self) -> Strategy {
        match self {
            Self::Accelerated { planes } => Strategy::BlackboxAccelerated(
                BlueprintStrategy::Inferred(BlackboxAcceleratedStrategy {
                    num_planes: planes,
                    seq_q: 1,
                    seq_kv: 1,
                }),
            ),
            Self::Unit => Strategy::Unit(BlueprintStrategy::Inferred(())),
        }
    }
}

/// Dense keys and values of one sequence: `[kv_heads, context, head_dim]` each, in `E`.
#[derive(Debug, Clone)]
pub struct DenseContext<E> {
    /// The keys.
    pub k: DeviceBuffer<E>,
    /// The values.
    pub v: DeviceBuffer<E>,
    /// Positions held.
    pub context: usize,
}

#[cube(launch)]
fn gather_kernel<C: Float, E: Float>(
    k: &[C],
    v: &[C],
    table: &[u32],
    dense_k: &mut [E],
    dense_v: &mut [E],
    kv_heads: usize,
    block_size: usize,
    context: usize,
    #[comptime] head_dim: usize,
) {
    if ABSOLUTE_POS < dense_k.len() {
        let d = ABSOLUTE_POS % head_dim;
        let position = (ABSOLUTE_POS / head_dim) % context;
        let kv_head = ABSOLUTE_POS / (head_dim * context);
        let slot = table[position / block_size] as usize * block_size + position % block_size;
        let at = (slot * kv_heads + kv_head) * head_dim + d;
        dense_k[ABSOLUTE_POS] = E::cast_from(k[at]);
        dense_v[ABSOLUTE_POS] = E::cast_from(v[at]);
    }
}

/// The first `context` positions of the sequence whose blocks `table` lists, out of `cache`
/// into dense `[kv_heads, context, head_dim]` buffers of `E` (one launch; returns without
/// waiting). Moves the sequence's keys and values once: `2 · context · kv_heads · head_dim`
/// values read and written.
///
/// # Errors
///
/// [`Error::Shape`] for a context its table does not reach or a block past the cache;
/// [`Error::Unsupported`] when the runtime lacks `E` or `C`.
pub fn gather_context<E: Element, C: Element>(
    client: &Client,
    cache: &PagedKv<C>,
    table: &[u32],
    context: usize,
) -> Result<DenseContext<E>> {
    supported::<E>(client, KERNEL)?;
    supported::<C>(client, KERNEL)?;
    let blocks = cache.blocks();
    require(
        context > 0
            && cache.block_size > 0
            && context.div_ceil(cache.block_size) <= table.len()
            && table.iter().all(|&b| (b as usize) < blocks),
        KERNEL,
        || {
            format!(
                "a context of {context} positions over a table of {} blocks of {} (cache of {blocks} blocks, largest id {:?})",
                table.len(),
                cache.block_size,
                table.iter().max()
            )
        },
    )?;
    let len = cache.kv_heads * context * cache.head_dim;
    let dense = DenseContext {
        k: DeviceBuffer::poisoned(client, len),
        v: DeviceBuffer::poisoned(client, len),
        context,
    };
    let cube_dim = CubeDim::new_1d(GATHER_UNITS);
    gather_kernel::launch::<C, E>(
        client,
        cubecl::calculate_cube_count_elemwise(client, len, cube_dim),
        cube_dim,
        cache.k.arg(),
        cache.v.arg(),
        DeviceBuffer::from_slice(client, table).arg(),
        dense.k.arg(),
        dense.v.arg(),
        cache.kv_heads,
        cache.block_size,
        context,
        cache.head_dim,
    );
    Ok(dense)
}

/// Causal attention of `q`, the `tokens × heads × head_dim` queries of a sequence's last
/// `tokens` positions, over its first `context` positions in `cache` (its blocks listed in
/// `table`): query `i` attends to positions `0..=context - tokens + i`, scores scaled by
/// `1/√head_dim` (cubek's fixed scale; Llama's). Output in `q`'s layout and type. Query head
/// `h` reads KV head `h / (heads / kv_heads)`. Launches the gather and cubek's kernel;
/// returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`] when the shapes disagree (as [`gather_context`], heads not a multiple of
/// the KV heads, more tokens than the context); [`Error::Unavailable`] when `routine` cannot
/// run here (no tensor cores, no plane operations) or cubek has no blueprint for the shape;
/// [`Error::Unsupported`] when the runtime lacks `E`.
pub fn prefill_attention<E: Element, C: Element>(
    client: &Client,
    q: &DeviceBuffer<E>,
    heads: usize,
    cache: &PagedKv<C>,
    table: &[u32],
    context: usize,
    routine: PrefillRoutine,
) -> Result<DeviceBuffer<E>> {
    let (kv_heads, head_dim) = (cache.kv_heads, cache.head_dim);
    let row = heads * head_dim;
    let tokens = q.len() / row.max(1);
    require(
        kv_heads > 0
            && heads > 0
            && head_dim > 0
            && heads.is_multiple_of(kv_heads)
            && q.len() == tokens * row
            && (1..=context).contains(&tokens),
        KERNEL,
        || {
            format!(
                "{} query values for {heads} heads × {head_dim} ({kv_heads} KV heads) over a context of {context}",
                q.len()
            )
        },
    )?;
    let dense = gather_context::<E, C>(client, cache, table, context)?;
    let out = DeviceBuffer::<E>::poisoned(client, q.len());
    let group = heads / kv_heads;
    // [batch = KV head, head = query in its group, position, dim]: serve's token-major rows
    // for queries and output, the dense context's head-major rows with a group stride of 0.
    let token_major = |buffer: &DeviceBuffer<E>| TensorBinding {
        handle: buffer.handle().clone().binding(),
        shape: Shape::new([kv_heads, group, tokens, head_dim]),
        strides: Strides::new(&[group * head_dim, head_dim, row, 1]),
        tiling: Default::default(),
    };
    let head_major = |buffer: &DeviceBuffer<E>| TensorBinding {
        handle: buffer.handle().clone().binding(),
        shape: Shape::new([kv_heads, group, context, head_dim]),
        strides: Strides::new(&[context * head_dim, 0, head_dim, 1]),
        tiling: Default::default(),
    };
    let element = E::elem_type_native();
    let types = AttentionGlobalTypes {
        query: element,
        key: element,
        value: element,
        mask: u8::elem_type_native(),
        out: element,
    };
    launch_ref(
        routine.strategy(),
        client,
        token_major(q),
        head_major(&dense.k),
        head_major(&dense.v),
        None,
        token_major(&out),
        &types,
        AttentionOptions {
            causal: true,
            accumulator_precision: AccumulatorPrecision::Strict(f32::elem_type_native()),
        },
    )
    .map_err(|error| match error {
        AttentionSetupError::Execution(source) => Error::Device {
            kernel: KERNEL,
            source: Box::new(source.into()),
        },
        other => Error::Unavailable {
            kernel: KERNEL,
            reason: format!("{routine:?}: {other}").into(),
        },
    })?;
    Ok(out)
}
