//! [`HostLlamaRunner`]: a Llama-family GGUF model over host memory (module docs in
//! `host/mod.rs`).

use std::borrow::Cow;

use mlinfra_data::tensor::GgufFile;
use mlinfra_train::models::LlamaConfig;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{AttentionStep, HostKernels, HostLinear, KvSlice, WeightBlocks};
use crate::attention::BatchLayout;

use crate::kv::BlockCopy;
use crate::runner::{KvGeometry, Logits, ModelRunner};
use crate::sched::StepBatch;
use crate::{Error, Result};

/// One decoder layer's weights.
struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `(heads + 2·kv_heads) · head_dim` outputs.
    qkv: Box<dyn HostLinear>,
    output: Box<dyn HostLinear>,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `2 · intermediate` outputs.
    gate_up: Box<dyn HostLinear>,
    down: Box<dyn HostLinear>,
}

/// One layer's keys or values, in the cache's precision.
#[derive(Debug, Clone)]
enum KvBuffer {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvBuffer {
    fn zeros(precision: KvPrecision, len: usize) -> Self {
        match precision {
            KvPrecision::F16 => KvBuffer::F16(vec![f16::ZERO; len]),
            KvPrecision::F32 => KvBuffer::F32(vec![0.0; len]),
        }
    }

    fn as_slice(&self) -> KvSlice<'_> {
        match self {
            KvBuffer::F16(values) => KvSlice::F16(values),
            KvBuffer::F32(values) => KvSlice::F32(values),
        }
    }

    /// `values` into `at..at + values.len()`, rounded to the buffer's precision.
    fn store(&mut self, at: usize, values: &[f32]) {
        match self {
            KvBuffer::F16(memory) => {
                memory[at..at + values.len()].convert_from_f32_slice(values);
            }
            KvBuffer::F32(memory) => memory[at..at + values.len()].copy_from_slice(values),
        }
    }

    fn copy_within(&mut self, src: std::ops::Range<usize>, dst: usize) {
        match self {
            KvBuffer::F16(memory) => memory.copy_within(src, dst),
            KvBuffer::F32(memory) => memory.copy_within(src, dst),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            KvBuffer::F16(values) => values.len() * 2,
            KvBuffer::F32(values) => values.len() * 4,
        }
    }
}

/// Paged KV memory in host memory: per layer, keys and values
/// `[blocks · block_size, kv_heads, head_dim]` (serve's [`PagedKv`](crate::attention::PagedKv)
/// layout), in f16 or f32.
struct HostKv {
    k: Vec<KvBuffer>,
    v: Vec<KvBuffer>,
    num_blocks: usize,
    block_size: usize,
    /// `kv_heads · head_dim`: the values of one slot.
    slot_len: usize,
}

impl HostKv {
    fn zeros(
        precision: KvPrecision,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        slot_len: usize,
    ) -> Self {
        let pool = num_blocks * block_size * slot_len;
        HostKv {
            k: (0..layers)
                .map(|_| KvBuffer::zeros(precision, pool))
                .collect(),
            v: (0..layers)
                .map(|_| KvBuffer::zeros(precision, pool))
                .collect(),
            num_blocks,
            block_size,
            slot_len,
        }
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> Result<()> {
        let block_len = self.block_size * self.slot_len;
        for copy in copies {
            let (src, dst) = (copy.src as usize, copy.dst as usize);
            if src >= self.num_blocks || dst >= self.num_blocks {
                return Err(Error::InvalidBatch {
                    reason: format!(
                        "a block copy {src} → {dst} outside the {}-block pool",
                        self.num_blocks
                    )
                    .into(),
                });
            }
            for memory in self.k.iter_mut().chain(self.v.iter_mut()) {
                memory.copy_within(src * block_len..(src + 1) * block_len, dst * block_len);
            }
        }
        Ok(())
    }
}

/// A Llama-family model over host memory, its compute in a [`HostKernels`]: the serving
/// path of `llama_generate` and `serve_openai` on CPUs.
///
/// RoPE is applied the way ggml does for `llama` files (adjacent pairs), to the Q and K rows
/// as the GGUF stores them (permuted from Hugging Face's order for exactly that), so weights
/// are used as they are.
pub struct HostLlamaRunner {
    config: LlamaConfig,
    kernels: Box<dyn HostKernels>,
    /// The token embedding (and, when tied, the output projection).
    embedding: Box<dyn HostLinear>,
    /// The output projection when the file has its own.
    lm_head: Option<Box<dyn HostLinear>>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// `cos`, `sin` of position `p`, pair `i`: `[p · head_dim / 2 + i]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    kv: HostKv,
    kv_precision: KvPrecision,
    scratch: Scratch,
}

/// The precision keys and values are kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    /// f16, as llama.cpp keeps them by default (`--cache-type-k f16`), and the queries
    /// rounded to f16 against them, as its attention does: its numerics, so that greedy
    /// outputs agree with it where they are close calls. Half the memory of f32.
    #[default]
    F16,
    /// Full f32: the reference numerics.
    F32,
}

impl std::fmt::Debug for HostLlamaRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLlamaRunner")
            .field("kernels", &self.kernels.describe())
            .field("layers", &self.layers.len())
            .field("num_blocks", &self.kv.num_blocks)
            .field("block_size", &self.kv.block_size)
            .finish_non_exhaustive()
    }
}

impl HostLlamaRunner {
    /// The model in `file` on `kernels`, with `num_blocks` KV blocks of `block_size` slots
    /// (`2 · layers · blocks · block_size · kv_heads · head_dim · 4` bytes, allocated now).
    ///
    /// Every tensor's type and shape is checked against the architecture before anything is
    /// built.
    ///
    /// # Errors
    ///
    /// [`Error::Model`] when the file is not a Llama-family model this runner can build;
    /// [`Error::Weights`] for a tensor that is missing or does not fit;
    /// [`Error::InvalidConfig`] for a zero-sized pool.
    pub fn from_gguf(
        file: &GgufFile,
        kernels: Box<dyn HostKernels>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file).map_err(|e| Error::Model(Box::new(e)))?;
        config.validate().map_err(|e| Error::Model(Box::new(e)))?;
        if num_blocks == 0 || block_size == 0 {
            return Err(Error::InvalidConfig {
                reason: format!("a KV pool of {num_blocks} blocks of {block_size} slots").into(),
            });
        }
        let (hidden, head_dim) = (config.hidden_size, config.head_dim());
        // A tensor that must exist with exactly `shape` (ggml order: fastest dimension first).
        let fail = |name: &str, reason: String| Error::Weights {
            tensor: name.into(),
            reason: reason.into(),
        };
        let checked =
            |name: &str, shape: &[usize]| -> Result<&mlinfra_data::tensor::GgufTensorInfo> {
                let info = file
                    .tensor_info(name)
                    .ok_or_else(|| fail(name, "missing from the file".into()))?;
                if !info
                    .shape()
                    .iter()
                    .map(|&d| d as usize)
                    .eq(shape.iter().copied())
                {
                    return Err(fail(
                        name,
                        format!(
                            "has shape {:?}, the architecture needs {shape:?}",
                            info.shape()
                        ),
                    ));
                }
                Ok(info)
            };
        let weights = |name: String, rows: usize, cols: usize| -> Result<WeightBlocks<'_>> {
            let info = checked(&name, &[cols, rows])?;
            let tensor = file.tensor(&name).map_err(|e| fail(&name, e.to_string()))?;
            let blocks = WeightBlocks {
                ggml_type: info.ggml_type(),
                rows,
                cols,
                bytes: Cow::Borrowed(tensor.bytes()),
                name: Cow::Owned(name),
            };
            blocks.row_bytes()?;
            Ok(blocks)
        };
        let norm = |name: String| -> Result<Vec<f32>> {
            checked(&name, &[hidden])?;
            file.dequantize_f32(&name)
                .map_err(|e| fail(&name, e.to_string()))
        };
        // Each tensor's file pages are dropped once the kernels hold their own copy, so that
        // the file and the copies are never resident together.
        let linear = |parts: &[WeightBlocks<'_>]| -> Result<Box<dyn HostLinear>> {
            let built = kernels.linear(parts)?;
            for part in parts {
                file.release_tensor_pages(&part.name);
            }
            Ok(built)
        };
        let q_rows = config.num_heads * head_dim;
        let kv_rows = config.num_kv_heads * head_dim;
        let mut layers = Vec::new();
        for i in 0..config.num_layers {
            let w = |part: &str, rows, cols| weights(format!("blk.{i}.{part}.weight"), rows, cols);
            layers.push(Layer {
                attn_norm: norm(format!("blk.{i}.attn_norm.weight"))?,
                qkv: linear(&[
                    w("attn_q", q_rows, hidden)?,
                    w("attn_k", kv_rows, hidden)?,
                    w("attn_v", kv_rows, hidden)?,
                ])?,
                output: linear(&[w("attn_output", hidden, q_rows)?])?,
                ffn_norm: norm(format!("blk.{i}.ffn_norm.weight"))?,
                gate_up: linear(&[
                    w("ffn_gate", config.intermediate_size, hidden)?,
                    w("ffn_up", config.intermediate_size, hidden)?,
                ])?,
                down: linear(&[w("ffn_down", hidden, config.intermediate_size)?])?,
            });
        }
        let embedding = linear(&[weights(
            "token_embd.weight".into(),
            config.vocab_size,
            hidden,
        )?])?;
        let lm_head = match file.tensor_info("output.weight") {
            Some(_) => Some(linear(&[weights(
                "output.weight".into(),
                config.vocab_size,
                hidden,
            )?])?),
            None => None,
        };
        let final_norm = norm("output_norm.weight".into())?;
        let (rope_cos, rope_sin) = rope_tables(config.max_seq_len, head_dim, config.rope_theta);
        let precision = KvPrecision::default();
        let kv = HostKv::zeros(
            precision,
            config.num_layers,
            num_blocks,
            block_size,
            kv_rows,
        );
        Ok(HostLlamaRunner {
            config,
            kernels,
            embedding,
            lm_head,
            layers,
            final_norm,
            rope_cos,
            rope_sin,
            kv,
            kv_precision: precision,
            scratch: Scratch::default(),
        })
    }

    /// Keeps keys and values in `precision` ([`KvPrecision::F16`] by default): the KV
    /// memory is allocated anew (empty), so call it before the first step.
    pub fn with_kv_precision(mut self, precision: KvPrecision) -> Self {
        let kv = &self.kv;
        self.kv = HostKv::zeros(
            precision,
            kv.k.len(),
            kv.num_blocks,
            kv.block_size,
            kv.slot_len,
        );
        self.kv_precision = precision;
        self
    }

    /// Bytes of the paged KV memory.
    pub fn kv_bytes(&self) -> usize {
        self.kv
            .k
            .iter()
            .chain(&self.kv.v)
            .map(KvBuffer::bytes)
            .sum()
    }

    /// What computes (the kernels' own description).
    pub fn kernels(&self) -> String {
        self.kernels.describe()
    }

    /// Bytes of weights the kernels hold (norms and tables aside).
    pub fn weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.resident_bytes()
                    + l.output.resident_bytes()
                    + l.gate_up.resident_bytes()
                    + l.down.resident_bytes()
            })
            .sum::<usize>()
            + self.embedding.resident_bytes()
            + self.lm_head.as_ref().map_or(0, |h| h.resident_bytes())
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn check_batch(&self, batch: &StepBatch, layout: &BatchLayout<'_>) -> Result<()> {
        layout.validate(self.kv.num_blocks)?;
        let fail = |reason: String| {
            Err(Error::InvalidBatch {
                reason: reason.into(),
            })
        };
        if batch.tokens.len() != layout.num_tokens() || batch.positions.len() != batch.tokens.len()
        {
            return fail(format!(
                "{} tokens and {} positions for sequences of {} queries",
                batch.tokens.len(),
                batch.positions.len(),
                layout.num_tokens()
            ));
        }
        if let Some(token) = batch
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return fail(format!(
                "token {token} is outside the {}-token vocabulary",
                self.config.vocab_size
            ));
        }
        for seq in &layout.seqs {
            let first = seq.context_len - seq.query_len;
            let positions = &batch.positions[seq.query_start..seq.query_start + seq.query_len];
            if positions.iter().zip(first..).any(|(&p, want)| p != want) {
                return fail(format!(
                    "positions {positions:?} for a context of {} ending the step",
                    seq.context_len
                ));
            }
            if seq.context_len > self.config.max_seq_len {
                return fail(format!(
                    "a context of {} past the model's {}",
                    seq.context_len, self.config.max_seq_len
                ));
            }
        }
        if let Some(&row) = batch.logit_rows.iter().find(|&&r| r >= batch.tokens.len()) {
            return fail(format!("logit row {row} of {} tokens", batch.tokens.len()));
        }
        Ok(())
    }

    /// One layer over the batch's hidden states `x` (`[tokens, hidden]`), in place.
    ///
    /// `scratch.pending` (when `has_pending`) is the previous layer's MLP output, not yet
    /// added to `x`: its residual add and this layer's first norm are one pass. This layer's
    /// MLP output is left there in turn.
    fn layer(
        &mut self,
        index: usize,
        x: &mut [f32],
        has_pending: bool,
        scratch: &mut Scratch,
        plan: &StepPlan<'_>,
    ) -> Result<()> {
        let StepPlan {
            batch,
            layout,
            seq_of_token,
            slots,
        } = plan;
        let cfg = &self.config;
        let (hidden, head_dim) = (cfg.hidden_size, cfg.head_dim());
        let (heads, kv_heads) = (cfg.num_heads, cfg.num_kv_heads);
        let tokens = batch.tokens.len();
        let layer = &self.layers[index];
        let eps = cfg.rms_norm_eps as f32;
        let Scratch {
            normed,
            qkv,
            attended,
            projected,
            pending,
            gate_up,
            activated,
        } = scratch;

        let normed = sized(normed, tokens * hidden);
        let residual = has_pending.then_some(pending.as_slice());
        add_and_norm(x, residual, &layer.attn_norm, eps, normed);
        let qkv_width = (heads + 2 * kv_heads) * head_dim;
        let qkv = sized(qkv, tokens * qkv_width);
        layer.qkv.forward(normed, qkv)?;
        let f16_queries = self.kv_precision == KvPrecision::F16;
        let half = head_dim / 2;
        self.kernels.for_each_chunk(qkv, qkv_width, &|t, row| {
            let position = batch.positions[t];
            let cos = &self.rope_cos[position * half..(position + 1) * half];
            let sin = &self.rope_sin[position * half..(position + 1) * half];
            // Q and K heads (not V) rotate.
            for head in row[..(heads + kv_heads) * head_dim].chunks_exact_mut(head_dim) {
                rope(head, cos, sin);
            }
            if f16_queries {
                // Against an f16 cache the queries are f16 too, as llama.cpp's attention
                // converts them.
                round_to_f16(&mut row[..heads * head_dim]);
            }
        });
        // The new keys and values into their slots.
        let slot_len = self.kv.slot_len;
        for (row, &slot) in qkv.chunks_exact(qkv_width).zip(slots.iter()) {
            let at = slot as usize * slot_len;
            self.kv.k[index].store(at, &row[heads * head_dim..(heads + kv_heads) * head_dim]);
            self.kv.v[index].store(at, &row[(heads + kv_heads) * head_dim..]);
        }
        // Attention: one piece of the output per (token, head).
        let attended = sized(attended, tokens * heads * head_dim);
        let step = AttentionStep {
            layer: index,
            k: self.kv.k[index].as_slice(),
            v: self.kv.v[index].as_slice(),
            qkv,
            qkv_width,
            heads,
            kv_heads,
            head_dim,
            block_size: self.kv.block_size,
            scale: 1.0 / (head_dim as f32).sqrt(),
            layout,
            seq_of_token,
        };
        self.kernels.attention(&step, attended)?;
        let projected = sized(projected, tokens * hidden);
        layer.output.forward(attended, projected)?;
        add_and_norm(x, Some(projected), &layer.ffn_norm, eps, normed);
        let inter = cfg.intermediate_size;
        let gate_up = sized(gate_up, tokens * 2 * inter);
        layer.gate_up.forward(normed, gate_up)?;
        let activated = sized(activated, tokens * inter);
        let gate_up = &*gate_up;
        self.kernels.for_each_chunk(activated, inter, &|t, out| {
            let (gate, up) = gate_up[t * 2 * inter..(t + 1) * 2 * inter].split_at(inter);
            silu_mul(gate, up, out);
        });
        let pending = sized(pending, tokens * hidden);
        layer.down.forward(activated, pending)?;
        Ok(())
    }
}

/// What every layer of a step reads about it.
struct StepPlan<'a> {
    batch: &'a StepBatch,
    layout: &'a BatchLayout<'a>,
    /// Each token's sequence (an index into `layout.seqs`).
    seq_of_token: &'a [usize],
    /// Each token's KV slot.
    slots: &'a [i64],
}

/// The step's working buffers, kept between steps so that a step allocates (and faults in)
/// nothing.
#[derive(Debug, Default)]
struct Scratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attended: Vec<f32>,
    projected: Vec<f32>,
    /// The last layer's MLP output, not yet added to the hidden states.
    pending: Vec<f32>,
    gate_up: Vec<f32>,
    activated: Vec<f32>,
}

/// `buffer` as `len` values (their contents whatever they were: every use overwrites them).
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    &mut buffer[..len]
}

impl ModelRunner for HostLlamaRunner {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_seq_len(&self) -> Option<usize> {
        Some(self.config.max_seq_len)
    }

    fn kv_geometry(&self) -> Option<KvGeometry> {
        Some(KvGeometry {
            num_blocks: self.kv.num_blocks,
            block_size: self.kv.block_size,
        })
    }

    fn load_adapter(&mut self, name: &str, dir: &std::path::Path) -> Result<()> {
        Err(Error::InvalidConfig {
            reason: format!(
                "adapter `{name}` ({}): this runner (quantized host kernels) serves the base \
                 model only; adapters run on the burn runner (`LlamaRunner`; serve_openai \
                 --enable-lora)",
                dir.display()
            )
            .into(),
        })
    }

    fn execute(&mut self, batch: &StepBatch) -> Result<Logits> {
        let vocab = self.config.vocab_size;
        if batch.seqs.is_empty() {
            return Logits::new(Vec::new(), vocab);
        }
        let layout = BatchLayout::of_step(batch, self.kv.block_size);
        self.check_batch(batch, &layout)?;
        if let Some(seq) = batch.seqs.iter().find(|seq| seq.adapter.is_some()) {
            return Err(Error::InvalidBatch {
                reason: format!(
                    "request {} names an adapter; this runner serves the base model only",
                    seq.id
                )
                .into(),
            });
        }
        self.kv.copy_blocks(&batch.copies)?;
        if !batch.copies.is_empty() {
            self.kernels.kv_blocks_copied(&batch.copies);
        }
        let hidden = self.config.hidden_size;
        let mut x = vec![0f32; batch.tokens.len() * hidden];
        for (&token, row) in batch.tokens.iter().zip(x.chunks_exact_mut(hidden)) {
            self.embedding.dequantize_row(token as usize, row)?;
        }
        // What every layer needs to know of the step, worked out once.
        let mut seq_of_token = Vec::with_capacity(batch.tokens.len());
        for (s, seq) in layout.seqs.iter().enumerate() {
            seq_of_token.extend(std::iter::repeat_n(s, seq.query_len));
        }
        let plan = StepPlan {
            batch,
            layout: &layout,
            seq_of_token: &seq_of_token,
            slots: &layout.new_token_slots(),
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        for index in 0..self.layers.len() {
            self.layer(index, &mut x, index > 0, &mut scratch, &plan)?;
        }
        for (a, &b) in x.iter_mut().zip(&scratch.pending) {
            *a += b;
        }
        self.scratch = scratch;
        // Only the rows whose logits are wanted go through the output projection.
        let mut rows = Vec::with_capacity(batch.logit_rows.len() * hidden);
        for &row in &batch.logit_rows {
            rows.extend_from_slice(&x[row * hidden..(row + 1) * hidden]);
        }
        let mut normed = vec![0f32; rows.len()];
        add_and_norm(
            &mut rows,
            None,
            &self.final_norm,
            self.config.rms_norm_eps as f32,
            &mut normed,
        );
        let mut logits = vec![0f32; batch.logit_rows.len() * vocab];
        self.lm_head
            .as_ref()
            .unwrap_or(&self.embedding)
            .forward(&normed, &mut logits)?;
        Logits::new(logits, vocab)
    }
}

/// `x += residual` (when there is one), then `normed = x / rms(x) · weight`, row by row
/// (`weight.len()` values per row), fused: the squares are summed as the residual is added,
/// in f64 as ggml does.
fn add_and_norm(
    x: &mut [f32],
    residual: Option<&[f32]>,
    weight: &[f32],
    eps: f32,
    normed: &mut [f32],
) {
    let width = weight.len();
    for (r, (row, out)) in x
        .chunks_exact_mut(width)
        .zip(normed.chunks_exact_mut(width))
        .enumerate()
    {
        let mut squares = 0f64;
        match residual {
            Some(residual) => {
                for (v, &add) in row.iter_mut().zip(&residual[r * width..(r + 1) * width]) {
                    *v += add;
                    squares += f64::from(*v) * f64::from(*v);
                }
            }
            None => {
                for &v in row.iter() {
                    squares += f64::from(v) * f64::from(v);
                }
            }
        }
        let mean = (squares / width as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row.iter()).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// `x` rounded to f16 values, in place (F16C where the CPU has it).
fn round_to_f16(x: &mut [f32]) {
    let mut halves = [f16::ZERO; 64];
    for chunk in x.chunks_mut(64) {
        let halves = &mut halves[..chunk.len()];
        halves.convert_from_f32_slice(chunk);
        halves.convert_to_f32_slice(chunk);
    }
}

/// `out = silu(gate) · up`, `silu(g) = g / (1 + e^{-g})` as ggml writes it, with libm's
/// `expf`. (A vectorized polynomial `exp` here moved the chat prompt's close call at
/// position 12 away from llama.cpp's choice: this product is where the two agree.)
fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// ggml's `llama` RoPE: pair `(2i, 2i + 1)` rotated by `position · θ^(-2i / head_dim)`.
fn rope(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// The cos and sin of every (position, pair), computed in f64.
fn rope_tables(positions: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for i in 0..half {
            let angle = p as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
