//! Causal attention over sequences laid end to end in one flat batch of tokens
//! (FlashAttention's "varlen" layout, its `cu_seqlens`): how packed training data runs
//! without padding.
//!
//! # Why a custom autodiff step
//!
//! burn's `attention` on the autodiff backend is composed of tensor ops (scores, mask, a
//! softmax of four ops, the weighted sum), and autodiff keeps about five `[heads, seq, seq]`
//! tensors per layer for the backward pass. Like FlashAttention (Dao et al. 2022, §3.1), the
//! step registered here keeps only its inputs, its output and one log-sum-exp per query and
//! head, and recomputes the probabilities in the backward pass. It attends each sequence to
//! itself only, so a batch of sequences of lengths `Lᵢ` costs `Σ Lᵢ²`, not `(Σ Lᵢ)²`, and
//! no padding is computed at all. burn offers no such hook at its tensor level, so like
//! [`crate::peft`]'s quantized step it is written against `burn-autodiff`'s backend-extension
//! API for the CPU backend (`Autodiff<Flex>`) in f32; on other backends and dtypes each
//! sequence goes through burn's `attention` instead (correct and differentiable, but it keeps
//! the intermediates).
//!
//! # Costs
//!
//! Forward: about `Lᵢ² / 2 · heads · head_dim` multiply-adds per sequence for the scores and as
//! many for the weighted sum; backward: about twice the forward. Kept between the passes: the
//! step's inputs and output (already alive in the graph) and `heads` floats per token. The
//! sequences run in parallel on rayon's pool; scratch is one row of scores per sequence.

use std::ops::Range;

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::host::{contiguous, tensor, values};
use super::model::{LayerAttention, repeat_kv};
use crate::{Error, Result};

/// The [`LayerAttention`] of a flat batch of whole sequences: sequence `i` is tokens
/// `starts[i]..starts[i + 1]`, each token attends to the earlier tokens of its own sequence.
/// [`Llama::packed_logits`](super::Llama::packed_logits) trains through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarlenAttention {
    starts: Vec<usize>,
}

impl VarlenAttention {
    /// Sequences starting at `starts` (FlashAttention's `cu_seqlens`: `0`, then the end of each
    /// sequence in turn).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] unless `starts` begins at 0 and strictly increases over at least
    /// one sequence.
    pub fn new(starts: Vec<usize>) -> Result<Self> {
        if starts.len() < 2 || starts[0] != 0 || starts.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidInput {
                operation: "VarlenAttention::new",
                reason: format!(
                    "sequence starts must begin at 0 and strictly increase over one or more \
                     sequences, got {starts:?}"
                )
                .into(),
            });
        }
        Ok(VarlenAttention { starts })
    }

    /// The tokens of the batch, `starts.last()`.
    pub fn tokens(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    fn sequences(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.starts.windows(2).map(|w| w[0]..w[1])
    }
}

impl LayerAttention for VarlenAttention {
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `q` does not hold [`VarlenAttention::tokens`] tokens or the
    /// key/value heads do not divide the query heads (the model's own calls always fit).
    fn attend(
        &mut self,
        _layer: usize,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
    ) -> std::result::Result<Tensor<3>, Box<dyn std::error::Error + Send + Sync>> {
        let [tokens, heads, dim] = q.dims();
        let kv_heads = k.dims()[1];
        if tokens != self.tokens() || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(Box::new(Error::InvalidInput {
                operation: "VarlenAttention::attend",
                reason: format!(
                    "sequences of {} tokens in all got q {:?}, k {:?}",
                    self.tokens(),
                    q.dims(),
                    k.dims()
                )
                .into(),
            }));
        }
        let shape = Heads {
            heads,
            kv_heads,
            dim,
        };
        if q.dtype() == DType::F32 {
            if let Some(out) = self.fused_autodiff(&q, &k, &v, shape) {
                return Ok(out);
            }
            if let Some(out) = self.fused_inference(&q, &k, &v, shape) {
                return Ok(out);
            }
        }
        Ok(self.per_sequence(q, k, v, shape))
    }
}

impl VarlenAttention {
    /// On `Autodiff<Flex>`: the fused forward on the inner tensors, registered as one step.
    fn fused_autodiff(
        &self,
        q: &Tensor<3>,
        k: &Tensor<3>,
        v: &Tensor<3>,
        shape: Heads,
    ) -> Option<Tensor<3>> {
        let q = q.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
        let k = k.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
        let v = v.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
        let inner = [q.primitive(), k.primitive(), v.primitive()].map(contiguous);
        let [q_values, k_values, v_values] = inner.each_ref().map(values);
        let (out, lse) = forward(q_values, k_values, v_values, &self.starts, shape);
        let out = tensor(out, [self.tokens(), shape.heads, shape.dim]);
        let tracked = match VarlenStep
            .prepare::<NoCheckpointing>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let [q, k, v] = inner;
                let saved = Saved {
                    q,
                    k,
                    v,
                    out: out.clone(),
                    lse,
                    starts: self.starts.clone(),
                    shape,
                };
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Some(Tensor::from_primitive::<Autodiff<Flex>>(tracked))
    }

    /// On `Flex` without autodiff (evaluation, generation): the fused forward alone.
    fn fused_inference(
        &self,
        q: &Tensor<3>,
        k: &Tensor<3>,
        v: &Tensor<3>,
        shape: Heads,
    ) -> Option<Tensor<3>> {
        let inner = |x: &Tensor<3>| {
            x.clone()
                .try_into_primitive::<Flex>()
                .ok()
                .map(|x| contiguous(&x))
        };
        let [q, k, v] = [inner(q)?, inner(k)?, inner(v)?];
        let (out, _) = forward(values(&q), values(&k), values(&v), &self.starts, shape);
        Some(Tensor::from_primitive::<Flex>(tensor(
            out,
            [self.tokens(), shape.heads, shape.dim],
        )))
    }

    /// Any backend and dtype: burn's causal `attention` on each sequence in turn.
    fn per_sequence(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, shape: Heads) -> Tensor<3> {
        let group = shape.heads / shape.kv_heads;
        let outputs = self
            .sequences()
            .map(|range| {
                // [len, heads, dim] -> [1, heads, len, dim]
                let part = |x: &Tensor<3>| {
                    x.clone()
                        .narrow(0, range.start, range.len())
                        .swap_dims(0, 1)
                        .unsqueeze_dim::<4>(0)
                };
                let options = AttentionModuleOptions {
                    is_causal: true,
                    ..AttentionModuleOptions::default()
                };
                let out = attention(
                    part(&q),
                    repeat_kv(part(&k), group),
                    repeat_kv(part(&v), group),
                    None,
                    None,
                    options,
                );
                out.squeeze_dim::<3>(0).swap_dims(0, 1)
            })
            .collect();
        Tensor::cat(outputs, 0)
    }
}

/// Head counts and width of one layer's queries (`heads`) and keys and values (`kv_heads`,
/// each serving `heads / kv_heads` query heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heads {
    heads: usize,
    kv_heads: usize,
    dim: usize,
}

impl Heads {
    fn group(self) -> usize {
        self.heads / self.kv_heads
    }

    fn scale(self) -> f32 {
        1.0 / (self.dim as f32).sqrt()
    }
}

/// What the backward step needs: the inputs and the output (contiguous), and the log-sum-exp of each query's
/// scores per head (`[tokens, heads]`).
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Vec<f32>,
    starts: Vec<usize>,
    shape: Heads,
}

#[derive(Debug)]
struct VarlenStep;

impl Backward<Flex, 3> for VarlenStep {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let saved = ops.state;
        let [dq, dk, dv] = backward(&saved, values(&contiguous(&grad)));
        let tokens = saved.starts[saved.starts.len() - 1];
        let Heads {
            heads,
            kv_heads,
            dim,
        } = saved.shape;
        let [node_q, node_k, node_v] = ops.parents;
        for (node, grad, heads) in [
            (node_q, dq, heads),
            (node_k, dk, kv_heads),
            (node_v, dv, kv_heads),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(grad, [tokens, heads, dim]));
            }
        }
    }
}

/// `out` `[tokens, heads, dim]` and the log-sum-exp of each query's scaled scores
/// `[tokens, heads]`, from `q` `[tokens, heads, dim]` and `k`, `v` `[tokens, kv_heads, dim]`.
fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    starts: &[usize],
    shape: Heads,
) -> (Vec<f32>, Vec<f32>) {
    let Heads {
        heads,
        kv_heads,
        dim,
    } = shape;
    let tokens = starts[starts.len() - 1];
    let (group, scale) = (shape.group(), shape.scale());
    let mut out = vec![0.0; tokens * heads * dim];
    let mut lse = vec![0.0; tokens * heads];
    let out_parts = split(&mut out, starts, heads * dim);
    let lse_parts = split(&mut lse, starts, heads);
    out_parts
        .into_par_iter()
        .zip(lse_parts)
        .zip(starts.par_windows(2))
        .for_each(|((out, lse), w)| {
            let start = w[0];
            let mut scores = vec![0.0; w[1] - w[0]];
            for t in w[0]..w[1] {
                for h in 0..heads {
                    let q = row(q, t, h, heads, dim);
                    let g = h / group;
                    let seen = &mut scores[..=t - start];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in seen.iter_mut().enumerate() {
                        *s = dot(q, row(k, start + j, g, kv_heads, dim)) * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0;
                    for s in seen.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let o = &mut out[((t - start) * heads + h) * dim..][..dim];
                    for (j, &p) in seen.iter().enumerate() {
                        axpy(o, p / sum, row(v, start + j, g, kv_heads, dim));
                    }
                    lse[(t - start) * heads + h] = max + sum.ln();
                }
            }
        });
    (out, lse)
}

/// The gradients of `q`, `k` and `v` from the gradient `d_out` of the output:
/// `dV = Pᵀ dO`, `dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O))`, `dQ = dS K / √d`, `dK = dSᵀ Q / √d`,
/// with the probabilities `P` recomputed from the saved log-sum-exp.
fn backward(saved: &Saved, d_out: &[f32]) -> [Vec<f32>; 3] {
    let Heads {
        heads,
        kv_heads,
        dim,
    } = saved.shape;
    let starts = &saved.starts;
    let [q, k, v, out] = [&saved.q, &saved.k, &saved.v, &saved.out].map(values);
    let tokens = starts[starts.len() - 1];
    let (group, scale) = (saved.shape.group(), saved.shape.scale());
    let mut dq = vec![0.0; tokens * heads * dim];
    let mut dk = vec![0.0; tokens * kv_heads * dim];
    let mut dv = vec![0.0; tokens * kv_heads * dim];
    let dq_parts = split(&mut dq, starts, heads * dim);
    let dk_parts = split(&mut dk, starts, kv_heads * dim);
    let dv_parts = split(&mut dv, starts, kv_heads * dim);
    dq_parts
        .into_par_iter()
        .zip(dk_parts)
        .zip(dv_parts)
        .zip(starts.par_windows(2))
        .for_each(|(((dq, dk), dv), w)| {
            let start = w[0];
            for t in w[0]..w[1] {
                for h in 0..heads {
                    let g = h / group;
                    let q_row = row(q, t, h, heads, dim);
                    let d_o = row(d_out, t, h, heads, dim);
                    let delta = dot(d_o, row(out, t, h, heads, dim));
                    let lse = saved.lse[t * heads + h];
                    let dq_row = &mut dq[((t - start) * heads + h) * dim..][..dim];
                    for j in start..=t {
                        let k_row = row(k, j, g, kv_heads, dim);
                        let v_row = row(v, j, g, kv_heads, dim);
                        let p = (dot(q_row, k_row) * scale - lse).exp();
                        let ds = p * (dot(d_o, v_row) - delta) * scale;
                        axpy(dq_row, ds, k_row);
                        let at = ((j - start) * kv_heads + g) * dim;
                        axpy(&mut dk[at..at + dim], ds, q_row);
                        axpy(&mut dv[at..at + dim], p, d_o);
                    }
                }
            }
        });
    [dq, dk, dv]
}

/// `values` cut into one mutable part per sequence, `width` values per token.
fn split<'a>(mut values: &'a mut [f32], starts: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(starts.len() - 1);
    for w in starts.windows(2) {
        let (part, rest) = values.split_at_mut((w[1] - w[0]) * width);
        parts.push(part);
        values = rest;
    }
    parts
}

/// The `dim` values of token `t`, head `h` in a `[tokens, heads, dim]` buffer.
fn row(values: &[f32], t: usize, h: usize, heads: usize, dim: usize) -> &[f32] {
    &values[(t * heads + h) * dim..][..dim]
}

/// `a · b` over eight running sums, so that the compiler can keep them in one vector register.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// `y += alpha · x`.
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::rng::SplitMix64;

    /// Sequences of 3, 5, 1 and 6 tokens; 6 query heads over 2 key/value heads of width 12
    /// (not a multiple of `dot`'s 8 lanes).
    const STARTS: [usize; 5] = [0, 3, 8, 9, 15];
    const HEADS: usize = 6;
    const KV_HEADS: usize = 2;
    const DIM: usize = 12;

    fn random(heads: usize, seed: u64, device: &Device) -> Tensor<3> {
        let mut rng = SplitMix64::new(seed);
        let values: Vec<f32> = (0..15 * heads * DIM)
            .map(|_| rng.uniform(-2.0, 2.0) as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, [15, heads, DIM]), device)
    }

    fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The fused step (forward, and the gradients of q, k and v through a random linear
    /// functional of the output) equals burn's own causal attention run on each sequence
    /// alone and differentiated by burn's autodiff.
    #[test]
    fn the_fused_step_computes_what_burn_attention_does_per_sequence() {
        let device = Device::flex().autodiff();
        let attention = VarlenAttention::new(STARTS.to_vec()).unwrap();
        let shape = Heads {
            heads: HEADS,
            kv_heads: KV_HEADS,
            dim: DIM,
        };
        let probe = random(HEADS, 4, &device);
        let run = |fused: bool| {
            let q = random(HEADS, 1, &device).require_grad();
            let k = random(KV_HEADS, 2, &device).require_grad();
            let v = random(KV_HEADS, 3, &device).require_grad();
            let out = if fused {
                attention.fused_autodiff(&q, &k, &v, shape).unwrap()
            } else {
                attention.per_sequence(q.clone(), k.clone(), v.clone(), shape)
            };
            let grads = (out.clone() * probe.clone()).sum().backward();
            let grad = |x: &Tensor<3>| x.grad(&grads).unwrap();
            [out.inner(), grad(&q), grad(&k), grad(&v)]
        };
        let (fused, reference) = (run(true), run(false));
        for (what, (got, want)) in ["out", "dq", "dk", "dv"]
            .iter()
            .zip(fused.into_iter().zip(reference))
        {
            let diff = max_diff(got, want);
            assert!(diff < 1e-5, "{what}: {diff}");
        }
    }

    /// Without autodiff the fused forward runs alone and agrees too; a token attends to no
    /// other sequence (changing another sequence's values leaves it alone).
    #[test]
    fn inference_is_fused_and_sequences_stay_apart() {
        let device = Device::flex();
        let mut attention = VarlenAttention::new(STARTS.to_vec()).unwrap();
        let q = random(HEADS, 1, &device);
        let k = random(KV_HEADS, 2, &device);
        let v = random(KV_HEADS, 3, &device);
        let shape = Heads {
            heads: HEADS,
            kv_heads: KV_HEADS,
            dim: DIM,
        };
        let fused = attention.fused_inference(&q, &k, &v, shape).unwrap();
        let reference = attention.per_sequence(q.clone(), k.clone(), v.clone(), shape);
        assert!(max_diff(fused.clone(), reference) < 1e-5);
        // Values of the second sequence (tokens 3..8) changed: only its outputs move.
        let other = v.clone().slice_assign(
            [3..8, 0..KV_HEADS, 0..DIM],
            random(KV_HEADS, 9, &device).narrow(0, 0, 5),
        );
        let moved = attention.attend(0, q.clone(), k.clone(), other).unwrap();
        let change = (moved - fused).abs().sum_dim(2).sum_dim(1).reshape([15]);
        let change = change.into_data().try_into_vec::<f32>().unwrap();
        for (t, c) in change.iter().enumerate() {
            assert_eq!(*c > 0.0, (3..8).contains(&t), "token {t}: {c}");
        }
    }

    #[test]
    fn sequence_starts_and_shapes_are_checked() {
        for starts in [vec![], vec![0], vec![1, 4], vec![0, 3, 3], vec![0, 5, 2]] {
            let error = VarlenAttention::new(starts.clone())
                .unwrap_err()
                .to_string();
            assert!(error.contains("strictly increase"), "{starts:?}: {error}");
        }
        assert_eq!(VarlenAttention::new(vec![0, 2, 7]).unwrap().tokens(), 7);
        let device = Device::flex();
        let mut attention = VarlenAttention::new(vec![0, 2, 7]).unwrap();
        let error = attention
            .attend(
                0,
                random(HEADS, 1, &device),
                random(KV_HEADS, 2, &device),
                random(KV_HEADS, 3, &device),
            )
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sequences of 7 tokens in all got q [15, 6, 12]"),
            "{error}"
        );
    }
}
