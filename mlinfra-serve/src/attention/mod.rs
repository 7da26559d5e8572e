//! Paged attention: the extension trait a KV backend implements, the paged KV memory it
//! works on, and the portable reference implementation in burn tensor ops.
//!
//! A step's batch is *flat* (vLLM's varlen layout): the new tokens of every scheduled
//! sequence, one after another, `[tokens, heads, head_dim]`, with a [`BatchLayout`] saying
//! where each sequence's queries sit, how long its context is and which blocks hold it. A
//! prefill chunk and a decode are the same thing: `query_len` new tokens at the end of a
//! `context_len`-token context. Fast backends (cubecl and SIMD kernels) live in
//! mlinfra-kernels and implement [`PagedAttention`]; [`ReferenceAttention`] is always
//! available and is the oracle their tests compare against.

mod reference;

use burn::tensor::{Device, Tensor};

use crate::kv::{BlockCopy, BlockId};
use crate::{Error, Result};

pub use reference::ReferenceAttention;

/// One sequence's part of a flat batch.
#[derive(Debug, Clone, Copy)]
pub struct SeqLayout<'a> {
    /// Index of its first query token in the batch.
    pub query_start: usize,
    /// Its new tokens this step (queries, and keys/values to write).
    pub query_len: usize,
    /// Its positions after this step: the new tokens are positions
    /// `context_len - query_len .. context_len`, and each attends to every position up to its
    /// own.
    pub context_len: usize,
    /// Its block table: position `p` lives in block `block_table[p / block_size]`, slot
    /// `p % block_size`.
    pub block_table: &'a [BlockId],
}

/// Where every sequence of a flat batch sits.
#[derive(Debug, Clone)]
pub struct BatchLayout<'a> {
    /// The sequences, in batch order; their query ranges tile `0..tokens`.
    pub seqs: Vec<SeqLayout<'a>>,
    /// Tokens per KV block.
    pub block_size: usize,
}

impl<'a> BatchLayout<'a> {
    /// Where `batch`'s sequences sit, over blocks of `block_size` slots.
    pub fn of_step(batch: &'a crate::sched::StepBatch, block_size: usize) -> Self {
        BatchLayout {
            seqs: batch
                .seqs
                .iter()
                .map(|seq| SeqLayout {
                    query_start: seq.query_start,
                    query_len: seq.query_len,
                    context_len: seq.context_len,
                    block_table: &seq.block_table,
                })
                .collect(),
            block_size,
        }
    }

    /// Tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|seq| seq.query_len).sum()
    }

    /// Checks that the query ranges tile the batch in order, every context holds its
    /// queries, and every block table covers its context and stays inside the pool.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] naming the first sequence that does not.
    pub fn validate(&self, num_blocks: usize) -> Result<()> {
        let mut next = 0;
        for (index, seq) in self.seqs.iter().enumerate() {
            let fail = |what: String| {
                Err(Error::InvalidBatch {
                    reason: format!("sequence {index} of the batch {what}").into(),
                })
            };
            if seq.query_start != next || seq.query_len == 0 {
                return fail(format!(
                    "has queries {}..{}, expected a non-empty range from {next}",
                    seq.query_start,
                    seq.query_start + seq.query_len
                ));
            }
            if seq.context_len < seq.query_len {
                return fail(format!(
                    "has {} queries but a context of {}",
                    seq.query_len, seq.context_len
                ));
            }
            if seq.block_table.len() * self.block_size < seq.context_len {
                return fail(format!(
                    "has {} blocks of {} for a context of {}",
                    seq.block_table.len(),
                    self.block_size,
                    seq.context_len
                ));
            }
            if let Some(block) = seq.block_table.iter().find(|&&b| b as usize >= num_blocks) {
                return fail(format!(
                    "names block {block}, outside the {num_blocks}-block pool"
                ));
            }
            next += seq.query_len;
        }
        Ok(())
    }

    /// The KV slot (`block * block_size + offset`) of every token in the batch, in batch
    /// order: where its key and value are written.
    pub fn new_token_slots(&self) -> Vec<i64> {
        let mut slots = Vec::with_capacity(self.num_tokens());
        for seq in &self.seqs {
            let first = seq.context_len - seq.query_len;
            slots.extend((first..seq.context_len).map(|p| self.slot(seq, p)));
        }
        slots
    }

    /// The KV slots of one sequence's whole context, in position order.
    pub fn context_slots(&self, seq: &SeqLayout<'_>) -> Vec<i64> {
        (0..seq.context_len).map(|p| self.slot(seq, p)).collect()
    }

    fn slot(&self, seq: &SeqLayout<'_>, position: usize) -> i64 {
        let block = seq.block_table[position / self.block_size] as usize;
        (block * self.block_size + position % self.block_size) as i64
    }
}

/// The paged KV memory of one layer: keys and values of every slot of every block,
/// `[num_blocks · block_size, kv_heads, head_dim]` each (slot-major, so block `b` is rows
/// `b·S..(b+1)·S`, vLLM's `[blocks, block_size, heads, dim]` flattened).
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys.
    pub k: Tensor<3>,
    /// Values.
    pub v: Tensor<3>,
}

/// The paged KV memory of a whole model: one [`LayerKv`] per layer over the same blocks.
#[derive(Debug, Clone)]
pub struct PagedKv {
    layers: Vec<LayerKv>,
    num_blocks: usize,
    block_size: usize,
}

impl PagedKv {
    /// Zeroed memory for `num_blocks` blocks of `block_size` slots, per layer, in f32.
    /// Costs `2 · layers · blocks · block_size · kv_heads · head_dim · 4` bytes.
    pub fn zeros(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> Self {
        let shape = [num_blocks * block_size, kv_heads, head_dim];
        let layers = (0..num_layers)
            .map(|_| LayerKv {
                k: Tensor::zeros(shape, device),
                v: Tensor::zeros(shape, device),
            })
            .collect();
        PagedKv {
            layers,
            num_blocks,
            block_size,
        }
    }

    /// Blocks per layer.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// One layer's memory.
    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }

    /// One layer's memory, to write.
    pub fn layer_mut(&mut self, layer: usize) -> &mut LayerKv {
        &mut self.layers[layer]
    }

    /// Copies whole blocks, every layer (copy-on-write from the scheduler, `src → dst`).
    pub fn copy_blocks(&mut self, copies: &[BlockCopy]) {
        if copies.is_empty() {
            return;
        }
        let size = self.block_size;
        let rows = |blocks: &mut dyn Iterator<Item = BlockId>| -> Vec<i64> {
            blocks
                .flat_map(|b| (0..size).map(move |i| (b as usize * size + i) as i64))
                .collect()
        };
        let Some(first) = self.layers.first() else {
            return;
        };
        let device = first.k.device();
        let src = reference::index_tensor(&rows(&mut copies.iter().map(|copy| copy.src)), &device);
        let dst = reference::index_tensor(&rows(&mut copies.iter().map(|copy| copy.dst)), &device);
        for layer in &mut self.layers {
            for memory in [&mut layer.k, &mut layer.v] {
                let values = memory.clone().select(0, src.clone());
                reference::assign_rows(memory, dst.clone(), values);
            }
        }
    }
}

/// A paged-attention backend: writes a flat batch's new keys and values into the paged KV
/// memory and attends each query to its own sequence's context, causally.
///
/// Contract, which [`ReferenceAttention`] defines and the tests check other backends
/// against: for the token at position `p` of a sequence, the output is
/// `softmax(q · Kᵀ · scale) · V` over the sequence's positions `0..=p`, with grouped-query
/// heads (query head `h` reads KV head `h / (heads / kv_heads)`); the new tokens' keys and
/// values are in memory before any query reads them.
pub trait PagedAttention {
    /// `q` `[tokens, heads, head_dim]`, `k`, `v` `[tokens, kv_heads, head_dim]` for the batch
    /// `layout` describes; returns `[tokens, heads, head_dim]`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] when the layout or the shapes do not fit the memory.
    fn forward(
        &self,
        memory: &mut LayerKv,
        layout: &BatchLayout<'_>,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        scale: f64,
    ) -> Result<Tensor<3>>;
}
