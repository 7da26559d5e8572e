//! The decoder as burn modules: [`Llama`] → [`LlamaLayer`] → [`LlamaAttention`] and
//! [`LlamaMlp`], in Hugging Face's layout and naming (parameter paths such as
//! `layers.3.self_attn.q_proj.weight`).

use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm};

use crate::peft::{AdapterRouting, LoraLinear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::norm::rms_norm;
use super::swiglu::swiglu;
use crate::{Error, Result};

/// A Llama-family decoder: token embedding, `num_layers` pre-norm blocks of grouped-query
/// attention with rotary positions and a SwiGLU feed-forward, a final RMSNorm, and an output
/// projection (the embedding itself when tied).
///
/// Built by [`LlamaConfig::init`](super::LlamaConfig::init) (fresh weights), [`Llama::from_gguf`] or
/// [`Llama::from_safetensors`](super::Llama::from_safetensors).
#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab_size, hidden_size]`.
    pub(super) embed_tokens: Embedding,
    pub(super) layers: Vec<LlamaLayer>,
    pub(super) norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    pub(super) lm_head: Option<Linear>,
    pub(super) rope_theta: f64,
    pub(super) max_seq_len: usize,
    /// The adapters, in slot order (see [`Llama::with_adapter`]).
    #[module(skip)]
    pub(super) adapters: Vec<super::adapters::AdapterInfo>,
}

/// One pre-norm decoder block: `x + attn(norm(x))`, then `h + mlp(norm(h))`.
#[derive(Module, Debug)]
pub struct LlamaLayer {
    pub(super) input_layernorm: RmsNorm,
    pub(super) self_attn: LlamaAttention,
    pub(super) post_attention_layernorm: RmsNorm,
    pub(super) mlp: LlamaMlp,
}

/// Grouped-query attention with rotary position embeddings (Hugging Face's `rotate_half`
/// convention: dimension `i` pairs with `i + head_dim/2`).
#[derive(Module, Debug)]
pub struct LlamaAttention {
    pub(super) q_proj: LoraLinear,
    pub(super) k_proj: LoraLinear,
    pub(super) v_proj: LoraLinear,
    pub(super) o_proj: LoraLinear,
    pub(super) num_heads: usize,
    pub(super) num_kv_heads: usize,
    pub(super) head_dim: usize,
}

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    pub(super) gate_proj: LoraLinear,
    pub(super) up_proj: LoraLinear,
    pub(super) down_proj: LoraLinear,
}

/// Keys and values of the positions seen so far, per layer, so that each generated token
/// costs one position's forward instead of the whole sequence's.
///
/// Contiguous per layer (`[batch, kv_heads, positions, head_dim]`, grown by concatenation):
/// appending copies the layer's cache, which is cheap beside the matmuls at the lengths a
/// single sequence reaches. The paged cache for serving many sequences lives in mlinfra-serve.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on (a no-op past the end): speculative drafting
    /// rolls back to the tokens that were accepted. Views, no copy.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().narrow(2, 0, len);
            *v = v.clone().narrow(2, 0, len);
        }
        self.len = len;
    }
}

/// The attention step of [`Llama::forward_tokens`]: the model computes each layer's queries,
/// keys and values for a flattened batch of tokens from many sequences (rotary positions
/// applied), and the implementor attends, typically over a paged KV cache that it also
/// writes (mlinfra-serve's engine). This is how a serving layer plugs its KV memory and
/// attention kernels into the model without the model knowing about either.
pub trait LayerAttention {
    /// Attention output `[tokens, num_heads, head_dim]` of layer `layer` for queries `q`
    /// `[tokens, num_heads, head_dim]` and the new keys and values `k`, `v`
    /// `[tokens, num_kv_heads, head_dim]` of the same tokens.
    ///
    /// # Errors
    ///
    /// Whatever the implementor's attention fails with (out of KV memory, a bad block table):
    /// [`Llama::forward_tokens`] stops at that layer and returns it as [`Error::Attention`].
    fn attend(
        &mut self,
        layer: usize,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
    ) -> std::result::Result<Tensor<3>, Box<dyn std::error::Error + Send + Sync>>;
}

impl Llama {
    /// Logits `[batch, seq, vocab_size]` (fp32) for `tokens` `[batch, seq]` at positions
    /// `0..seq`, causally masked; computed in the dtype of the weights.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty sequence or one longer than the model's
    /// `max_seq_len`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.forward_from(tokens, 0, None)
    }

    /// [`Llama::forward`] for `tokens` that follow the positions in `cache`, which it extends.
    /// Feeding a prompt and then one token at a time gives the logits a full forward over the
    /// whole sequence would (to rounding).
    ///
    /// # Errors
    ///
    /// As [`Llama::forward`], counting the cached positions; [`Error::InvalidInput`] when the
    /// batch size differs from the cache's.
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<3>> {
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.layers.len()];
        }
        let start = cache.len;
        let logits = self.forward_from(tokens, start, Some(&mut cache.layers))?;
        cache.len = start + logits.dims()[1];
        Ok(logits)
    }

    /// Mean next-token cross-entropy of `tokens` `[batch, seq]`: the logits at positions
    /// `0..seq-1` against the tokens at `1..seq`.
    ///
    /// # Errors
    ///
    /// As [`Llama::forward`]; [`Error::InvalidInput`] for sequences shorter than 2.
    pub fn next_token_loss(&self, tokens: Tensor<2, Int>) -> Result<Tensor<1>> {
        let [batch, seq] = tokens.dims();
        if seq < 2 {
            return Err(invalid(
                "Llama::next_token_loss",
                format!("next-token loss needs 2 or more tokens, got {seq}"),
            ));
        }
        let inputs = tokens.clone().slice([0..batch, 0..seq - 1]);
        let targets = tokens
            .slice([0..batch, 1..seq])
            .reshape([batch * (seq - 1)]);
        let logits = self.forward(inputs)?;
        let vocab = logits.dims()[2];
        let logits = logits.reshape([batch * (seq - 1), vocab]);
        Ok(crate::fused::cross_entropy(logits, targets))
    }

    /// Logits (fp32) for a flattened batch of tokens from several sequences, the way a
    /// serving engine runs them (vLLM's varlen batches): `tokens[i]` sits at `positions[i]`
    /// of its own sequence, `attention` attends within each sequence, and only the rows in
    /// `rows` (the tokens whose next token is sampled) go through the output projection, so
    /// a prefill chunk pays for the vocabulary-sized matmul once. Returns
    /// `[rows.len(), vocab_size]`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for no tokens, `positions` of another length or past
    /// `max_seq_len`, a token id outside the vocabulary, or a row outside the batch.
    pub fn forward_tokens(
        &self,
        tokens: &[u32],
        positions: &[usize],
        rows: &[usize],
        attention: &mut dyn LayerAttention,
    ) -> Result<Tensor<2>> {
        self.forward_tokens_routed(tokens, positions, rows, attention, None)
    }

    /// [`forward_tokens`](Self::forward_tokens) with each token running through the adapter
    /// `routing` assigns it (several adapters and the base model in one batch); the active
    /// adapter is ignored then.
    ///
    /// # Errors
    ///
    /// As [`forward_tokens`](Self::forward_tokens).
    pub fn forward_tokens_routed(
        &self,
        tokens: &[u32],
        positions: &[usize],
        rows: &[usize],
        attention: &mut dyn LayerAttention,
        routing: Option<&AdapterRouting>,
    ) -> Result<Tensor<2>> {
        let weight = self.embed_tokens.weight.val();
        let [vocab, hidden] = weight.dims();
        let count = tokens.len();
        if count == 0 || positions.len() != count {
            return Err(invalid(
                "Llama::forward_tokens",
                format!(
                    "a flat batch needs 1 or more tokens and one position each, got {count} tokens \
                 and {} positions",
                    positions.len()
                ),
            ));
        }
        if let Some(position) = positions.iter().find(|&&p| p >= self.max_seq_len) {
            return Err(invalid(
                "Llama::forward_tokens",
                format!(
                    "position {position} is past the model's {} positions",
                    self.max_seq_len
                ),
            ));
        }
        if let Some(token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(invalid(
                "Llama::forward_tokens",
                format!("token {token} is outside the {vocab}-token vocabulary"),
            ));
        }
        if let Some(row) = rows.iter().find(|&&r| r >= count) {
            return Err(invalid(
                "Llama::forward_tokens",
                format!("logit row {row} is outside the {count}-token batch"),
            ));
        }
        let device = weight.device();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, count]), &device);
        let rope = self.rope(positions.iter().copied());
        let mut x = self.embed_tokens.forward(ids);
        for (index, layer) in self.layers.iter().enumerate() {
            x = layer.try_forward_with(
                x,
                |attn, x| attn.forward_flat(x, &rope, index, attention, routing),
                routing,
            )?;
        }
        let x = rms_norm(&self.norm, x).reshape([count, hidden]);
        let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let selected = rows.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [selected]), &device);
        let x = x.select(0, rows).reshape([1, selected, hidden]);
        Ok(self.logits(x).reshape([selected, vocab]))
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Longest sequence the model accepts.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    fn forward_from(
        &self,
        tokens: Tensor<2, Int>,
        start: usize,
        cache: Option<&mut Vec<Option<(Tensor<4>, Tensor<4>)>>>,
    ) -> Result<Tensor<3>> {
        let [batch, seq] = tokens.dims();
        if seq == 0 || start + seq > self.max_seq_len {
            return Err(invalid(
                "Llama::forward",
                format!(
                    "{seq} tokens at position {start}: a forward needs 1 to {} positions in all",
                    self.max_seq_len
                ),
            ));
        }
        if let Some(Some((k, _))) = cache.as_ref().and_then(|c| c.first())
            && k.dims()[0] != batch
        {
            return Err(invalid(
                "Llama::forward",
                format!(
                    "batch of {batch} against a KV cache of batch {}",
                    k.dims()[0]
                ),
            ));
        }
        let rope = self.rope(start..start + seq);
        Ok(self.logits(self.hidden_states(tokens, &rope, cache)))
    }

    /// The rotary tables for `positions`, in the weights' dtype.
    pub(super) fn rope(&self, positions: impl ExactSizeIterator<Item = usize>) -> Rope {
        let weight = self.embed_tokens.weight.val();
        let head_dim = self.layers.first().map_or(2, |l| l.self_attn.head_dim);
        Rope::new(self.rope_theta, head_dim, positions, &weight)
    }

    /// The final normalised hidden states `[batch, seq, hidden]` of `tokens`: every layer,
    /// causally masked, with `rope`'s positions.
    fn hidden_states(
        &self,
        tokens: Tensor<2, Int>,
        rope: &Rope,
        mut cache: Option<&mut Vec<Option<(Tensor<4>, Tensor<4>)>>>,
    ) -> Tensor<3> {
        let mut x = self.embed_tokens.forward(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|layers| &mut layers[i]);
            x = layer.forward_with(x, |attn, x| attn.forward(x, rope, slot));
        }
        rms_norm(&self.norm, x)
    }

    /// The output projection of normalised hidden states `[batch, seq, hidden]`: fp32 logits
    /// `[batch, seq, vocab]`.
    pub(super) fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let weight = self.embed_tokens.weight.val();
        let logits = match &self.lm_head {
            Some(head) => head.forward(x),
            None => {
                // Tied: x · Eᵀ, computed as (E · xᵀ)ᵀ so the [vocab, hidden] embedding is read
                // in place: a transposed view of it is copied whole (vocab × hidden floats) by
                // the matmul, which made that copy 45% of a decode step.
                let [batch, seq, hidden] = x.dims();
                let vocab = weight.dims()[0];
                let columns = x.reshape([batch * seq, hidden]).transpose();
                weight
                    .matmul(columns)
                    .transpose()
                    .reshape([batch, seq, vocab])
            }
        };
        // Logits in fp32 at least, so the softmax and loss run in full precision under a
        // half-precision compute dtype (as PyTorch autocast does); f64 stays f64 (gradient
        // checks).
        match logits.dtype() {
            DType::F16 | DType::BF16 => logits.cast(DType::F32),
            _ => logits,
        }
    }
}

impl LlamaLayer {
    /// The block around an attention step (dense or delegated): `x + attend(norm(x))`, then
    /// `h + mlp(norm(h))`.
    fn forward_with(
        &self,
        x: Tensor<3>,
        attend: impl FnOnce(&LlamaAttention, Tensor<3>) -> Tensor<3>,
    ) -> Tensor<3> {
        let infallible = |attn: &LlamaAttention, x| Ok::<_, Error>(attend(attn, x));
        match self.try_forward_with(x, infallible, None) {
            Ok(x) => x,
            Err(never) => unreachable!("an infallible attention step failed: {never}"),
        }
    }

    /// [`forward_with`](Self::forward_with) for an attention step that can fail, with the MLP
    /// routed per row when `routing` is given.
    fn try_forward_with(
        &self,
        x: Tensor<3>,
        attend: impl FnOnce(&LlamaAttention, Tensor<3>) -> Result<Tensor<3>>,
        routing: Option<&AdapterRouting>,
    ) -> Result<Tensor<3>> {
        let h = x.clone() + attend(&self.self_attn, rms_norm(&self.input_layernorm, x))?;
        Ok(h.clone()
            + self
                .mlp
                .forward(rms_norm(&self.post_attention_layernorm, h), routing))
    }
}

impl LlamaAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let heads = |proj: &LoraLinear, count: usize| {
            proj.forward(x.clone())
                .reshape([batch, seq, count, self.head_dim])
                .swap_dims(1, 2)
        };
        let q = rope.apply_seq(heads(&self.q_proj, self.num_heads));
        let mut k = rope.apply_seq(heads(&self.k_proj, self.num_kv_heads));
        let mut v = heads(&self.v_proj, self.num_kv_heads);
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            *cache = Some((k.clone(), v.clone()));
        }
        // Grouped-query attention: each key/value head serves `group` query heads.
        let group = self.num_heads / self.num_kv_heads;
        let (k, v) = (repeat_kv(k, group), repeat_kv(v, group));
        // Causal with the mask aligned bottom-right: with cached positions in front, query
        // `i` of this call sees every cached key and the new ones up to its own.
        let options = AttentionModuleOptions {
            is_causal: true,
            ..AttentionModuleOptions::default()
        };
        let out = attention(q, k, v, None, None, options);
        self.o_proj.forward(out.swap_dims(1, 2).reshape([
            batch,
            seq,
            self.num_heads * self.head_dim,
        ]))
    }
}

impl LlamaAttention {
    /// Attention for a flat batch `x` `[1, tokens, hidden]`, delegated to `attention`.
    fn forward_flat(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        layer: usize,
        attention: &mut dyn LayerAttention,
        routing: Option<&AdapterRouting>,
    ) -> Result<Tensor<3>> {
        let [_, count, _] = x.dims();
        let heads = |proj: &LoraLinear, heads: usize| {
            proj.forward_routed(x.clone(), routing)
                .reshape([count, heads, self.head_dim])
        };
        let q = rope.apply_tokens(heads(&self.q_proj, self.num_heads));
        let k = rope.apply_tokens(heads(&self.k_proj, self.num_kv_heads));
        let v = heads(&self.v_proj, self.num_kv_heads);
        let out = attention
            .attend(layer, q, k, v)
            .map_err(|source| Error::Attention { layer, source })?;
        Ok(self.o_proj.forward_routed(
            out.reshape([1, count, self.num_heads * self.head_dim]),
            routing,
        ))
    }
}

impl LlamaMlp {
    fn forward(&self, x: Tensor<3>, routing: Option<&AdapterRouting>) -> Tensor<3> {
        let gate = self.gate_proj.forward_routed(x.clone(), routing);
        let up = self.up_proj.forward_routed(x, routing);
        self.down_proj.forward_routed(swiglu(gate, up), routing)
    }
}

/// `[batch, kv_heads, seq, dim]` → `[batch, kv_heads · group, seq, dim]`, each head repeated
/// `group` times in place (head `h` of the result is key/value head `h / group`).
pub(super) fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [batch, kv_heads, seq, dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, group, seq, dim])
        .reshape([batch, kv_heads * group, seq, dim])
}

/// Rotary position embedding for the positions of one forward call: the cosines and sines
/// `[positions, head_dim]`, each half repeating the `head_dim/2` frequencies. The positions
/// are one sequence's (shared by every row of a batch) or, for packed rows, every row's in
/// turn (`rows · seq` of them).
pub(super) struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    half: usize,
}

impl Rope {
    /// The angles are computed in f64 and rounded once to the weights' dtype, so long
    /// positions keep their precision (`position · frequency` in f32 loses digits past a
    /// few thousand).
    pub(super) fn new(
        theta: f64,
        head_dim: usize,
        positions: impl ExactSizeIterator<Item = usize>,
        like: &Tensor<2>,
    ) -> Self {
        let half = head_dim / 2;
        let frequencies: Vec<f64> = (0..half)
            .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64))
            .collect();
        let count = positions.len();
        let mut cos = Vec::with_capacity(count * head_dim);
        let mut sin = Vec::with_capacity(count * head_dim);
        for position in positions {
            for _ in 0..2 {
                for frequency in &frequencies {
                    let angle = position as f64 * frequency;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let device = like.device();
        let table = |values: Vec<f32>| {
            let t = Tensor::<2>::from_data(TensorData::new(values, [count, head_dim]), &device);
            if like.dtype() == DType::F32 {
                t
            } else {
                t.cast(like.dtype())
            }
        };
        Rope {
            cos: table(cos),
            sin: table(sin),
            half,
        }
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]`, positions along `seq`: the same for every
    /// row, or each row its own when the table holds `batch · seq` positions.
    fn apply_seq(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, _, seq, _] = x.dims();
        let [count, dim] = self.cos.dims();
        let rows = if count == batch * seq && count != seq {
            batch
        } else {
            1
        };
        let table = |t: &Tensor<2>| t.clone().reshape([rows, 1, count / rows, dim]);
        self.rotate(x, table(&self.cos), table(&self.sin))
    }

    /// Rotates `x` `[tokens, heads, head_dim]`, one position per token.
    fn apply_tokens(&self, x: Tensor<3>) -> Tensor<3> {
        let [count, dim] = self.cos.dims();
        let table = |t: &Tensor<2>| t.clone().reshape([count, 1, dim]);
        self.rotate(x, table(&self.cos), table(&self.sin))
    }

    /// `x · cos + rotate_half(x) · sin`, with `rotate_half([a, b]) = [-b, a]` over the last
    /// dimension.
    fn rotate<const D: usize>(&self, x: Tensor<D>, cos: Tensor<D>, sin: Tensor<D>) -> Tensor<D> {
        let first = x.clone().narrow(D - 1, 0, self.half);
        let second = x.clone().narrow(D - 1, self.half, self.half);
        let rotated = Tensor::cat(vec![second.neg(), first], D - 1);
        x * cos + rotated * sin
    }
}

fn invalid(operation: &'static str, reason: String) -> Error {
    Error::InvalidInput {
        operation,
        reason: reason.into(),
    }
}
