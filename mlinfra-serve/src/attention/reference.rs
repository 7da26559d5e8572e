//! [`ReferenceAttention`]: paged attention in portable burn tensor ops, the oracle for
//! faster backends.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::{BatchLayout, LayerKv, PagedAttention};
use crate::{Error, Result};

/// Paged attention by definition: each query row attends, with burn's dense attention, to
/// exactly its own positions `0..=p` of its sequence, gathered through the block table.
///
/// Every row's computation has shapes fixed by its position alone (one query against `p + 1`
/// keys), so its result is bitwise the same whether it is a decode, part of a prefill
/// chunk, recomputed after a preemption or next to any other sequences: this is what makes
/// the engine's greedy output batch-invariant (vLLM needs a special mode for that).
///
/// Cost: a gather of each sequence's context per layer, then one small attention per query
/// row, so a prefill chunk of `L` tokens costs `L` calls instead of one. Correct, portable
/// and invariant, not fast: the paged kernels in mlinfra-kernels read blocks in place.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceAttention;

impl PagedAttention for ReferenceAttention {
    fn forward(
        &self,
        memory: &mut LayerKv,
        layout: &BatchLayout<'_>,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        scale: f64,
    ) -> Result<Tensor<3>> {
        let [tokens, heads, dim] = q.dims();
        let [slots, kv_heads, kv_dim] = memory.k.dims();
        layout.validate(slots / layout.block_size)?;
        let fits = tokens == layout.num_tokens()
            && k.dims() == [tokens, kv_heads, dim]
            && v.dims() == [tokens, kv_heads, dim]
            && kv_dim == dim
            && kv_heads > 0
            && heads % kv_heads == 0;
        if !fits {
            return Err(Error::InvalidBatch {
                reason: format!(
                    "q {:?}, k {:?} and v {:?} do not fit a {}-token batch over KV memory \
                     [{slots}, {kv_heads}, {kv_dim}]",
                    q.dims(),
                    k.dims(),
                    v.dims(),
                    layout.num_tokens()
                )
                .into(),
            });
        }
        let device = q.device();
        let new_slots = index_tensor(&layout.new_token_slots(), &device);
        assign_rows(&mut memory.k, new_slots.clone(), k);
        assign_rows(&mut memory.v, new_slots, v);

        let group = heads / kv_heads;
        // Causality by construction: each row is given only the keys it may see.
        let options = AttentionModuleOptions {
            scale: Some(scale),
            ..AttentionModuleOptions::default()
        };
        let mut outputs = Vec::with_capacity(tokens);
        for seq in &layout.seqs {
            let context = index_tensor(&layout.context_slots(seq), &device);
            let gather = |memory: &Tensor<3>| {
                let heads_first = memory.clone().select(0, context.clone()).swap_dims(0, 1);
                repeat_kv(heads_first, group).unsqueeze::<4>()
            };
            let (keys, values) = (gather(&memory.k), gather(&memory.v));
            let first = seq.context_len - seq.query_len;
            for row in 0..seq.query_len {
                let visible = first + row + 1;
                let query = q
                    .clone()
                    .narrow(0, seq.query_start + row, 1)
                    .swap_dims(0, 1)
                    .unsqueeze::<4>();
                let out = attention(
                    query,
                    keys.clone().narrow(2, 0, visible),
                    values.clone().narrow(2, 0, visible),
                    None,
                    None,
                    options,
                );
                outputs.push(out.squeeze_dim::<3>(0).swap_dims(0, 1));
            }
        }
        Ok(Tensor::cat(outputs, 0))
    }
}

/// `[kv_heads, len, dim]` → `[kv_heads · group, len, dim]`, head `h` of the result being
/// KV head `h / group`.
fn repeat_kv(x: Tensor<3>, group: usize) -> Tensor<3> {
    if group == 1 {
        return x;
    }
    let [kv_heads, len, dim] = x.dims();
    x.unsqueeze_dim::<4>(1)
        .expand([kv_heads, group, len, dim])
        .reshape([kv_heads * group, len, dim])
}

/// A 1-D index tensor.
pub(super) fn index_tensor(indices: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(indices.to_vec(), [indices.len()]), device)
}

/// `memory[rows[i]] = values[i]`, in place when `memory` holds the only reference (taking it
/// out of the slot first, so no second handle forces a copy of the whole pool).
pub(super) fn assign_rows(memory: &mut Tensor<3>, rows: Tensor<1, Int>, values: Tensor<3>) {
    let device = memory.device();
    let taken = std::mem::replace(memory, Tensor::zeros([1, 1, 1], &device));
    *memory = taken.select_assign(0, rows, values, IndexingUpdateOp::Assign);
}
