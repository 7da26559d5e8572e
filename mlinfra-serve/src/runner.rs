//! Model runners: what turns a scheduler's [`StepBatch`] into logits, between
//! [`Scheduler::schedule`](crate::sched::Scheduler::schedule) and
//! [`Scheduler::update`](crate::sched::Scheduler::update).

use std::borrow::Cow;

use burn::tensor::Device;
use mlinfra_train::models::{LayerAttention, Llama, LlamaConfig};

use crate::attention::{BatchLayout, PagedAttention, PagedKv, ReferenceAttention, SeqLayout};
use crate::sched::StepBatch;
use crate::{Error, Result};

/// Runs a model over one step's plan.
pub trait ModelRunner {
    /// Vocabulary size: the length of every logits row.
    fn vocab_size(&self) -> usize;

    /// The longest sequence (prompt plus generated tokens) the model can compute, if it has a
    /// limit: an [`Engine`](crate::engine::Engine) refuses requests that could pass it when
    /// they are added, rather than failing a step (and every request in it) mid-run.
    ///
    /// Defaults to `None`: no limit but the KV pool.
    fn max_seq_len(&self) -> Option<usize> {
        None
    }

    /// The KV pool this runner's memory was built for, when it owns one: an
    /// [`Engine`](crate::engine::Engine) schedules over exactly this pool, so the geometry is
    /// given once, where the memory is allocated. Defaults to `None` (the engine's
    /// [`SchedulerConfig`](crate::sched::SchedulerConfig) decides).
    fn kv_geometry(&self) -> Option<KvGeometry> {
        None
    }

    /// Makes the batch's block copies, computes KV for every token of `batch` (each
    /// request's known tokens, then its [`draft`](crate::sched::Request::draft)), and returns
    /// the logits of its [`logit_rows`](StepBatch::logit_rows), in that order.
    ///
    /// # Errors
    ///
    /// Whatever the model or the attention backend refuses; the step is then lost and the
    /// engine fails its requests.
    fn execute(&mut self, batch: &StepBatch) -> Result<Logits>;

    /// The adapters requests may name ([`StepSeq::adapter`](crate::sched::StepSeq)), each
    /// applied to its own requests' rows of a batch. Defaults to none.
    fn adapters(&self) -> Vec<String> {
        Vec::new()
    }

    /// Loads the PEFT adapter in `dir` under `name`, for requests that follow.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] from runners without adapters (the default); what loading
    /// refuses otherwise.
    fn load_adapter(&mut self, name: &str, dir: &std::path::Path) -> Result<()> {
        let _ = dir;
        Err(Error::InvalidConfig {
            reason: format!("this model runner cannot load adapters (`{name}`)").into(),
        })
    }

    /// Drops adapter `name`. The engine calls it only when no live request uses it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an adapter it does not have.
    fn unload_adapter(&mut self, name: &str) -> Result<()> {
        Err(Error::InvalidConfig {
            reason: format!("no adapter named `{name}`").into(),
        })
    }
}

/// The shape of a paged KV pool: `num_blocks` blocks of `block_size` token slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    /// Blocks the scheduler may hand out.
    pub num_blocks: usize,
    /// Token slots per block.
    pub block_size: usize,
}

/// The logits of one step: `[rows, vocab]` in one row-major buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    values: Vec<f32>,
    vocab: usize,
}

impl Logits {
    /// Rows of `vocab` values each, laid end to end in `values`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] for a zero vocabulary or a buffer that is not whole rows.
    pub fn new(values: Vec<f32>, vocab: usize) -> Result<Self> {
        if vocab == 0 || !values.len().is_multiple_of(vocab) {
            return Err(Error::InvalidBatch {
                reason: format!(
                    "{} logits are not whole rows of a {vocab}-token vocabulary",
                    values.len()
                )
                .into(),
            });
        }
        Ok(Logits { values, vocab })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.vocab
    }

    /// Row `i`.
    ///
    /// # Panics
    ///
    /// When `i` is not below [`Logits::rows`].
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The rows in order.
    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.values.chunks_exact(self.vocab)
    }

    /// The vocabulary size: every row's length.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// All values, row after row.
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }
}

/// A [`Llama`] over paged KV memory: every step is one flat (varlen) forward of all scheduled
/// tokens, with attention through a [`PagedAttention`] backend.
pub struct LlamaRunner {
    model: Llama,
    memory: PagedKv,
    attention: Box<dyn PagedAttention + Send>,
    vocab_size: usize,
    max_seq_len: usize,
    scale: f64,
    /// A block outside the scheduler's pool for padding tokens' KV.
    scratch_block: u32,
}

impl std::fmt::Debug for LlamaRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaRunner")
            .field("vocab_size", &self.vocab_size)
            .field("num_blocks", &self.memory.num_blocks())
            .field("block_size", &self.memory.block_size())
            .finish_non_exhaustive()
    }
}

impl LlamaRunner {
    /// A runner for `model` (of shape `config`) with `num_blocks` KV blocks of `block_size`
    /// slots (the scheduler's pool) plus one scratch block, allocated now on `device`
    /// (`2 · layers · (blocks + 1) · block_size · kv_heads · head_dim` f32 values).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `config` does not validate.
    pub fn new(
        model: Llama,
        config: &LlamaConfig,
        num_blocks: usize,
        block_size: usize,
        attention: Box<dyn PagedAttention + Send>,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(|error| Error::InvalidConfig {
            reason: format!("the model's configuration: {error}").into(),
        })?;
        let memory = PagedKv::zeros(
            config.num_layers,
            num_blocks + 1,
            block_size,
            config.num_kv_heads,
            config.head_dim(),
            device,
        );
        Ok(LlamaRunner {
            model,
            memory,
            attention,
            vocab_size: config.vocab_size,
            max_seq_len: config.max_seq_len,
            scale: 1.0 / (config.head_dim() as f64).sqrt(),
            scratch_block: num_blocks as u32,
        })
    }

    /// The Llama-family model in a GGUF file (weights dequantized to f32, as
    /// [`Llama::from_gguf`] loads them) with `num_blocks` KV blocks of `block_size` slots,
    /// attending through the [`ReferenceAttention`] backend.
    ///
    /// # Errors
    ///
    /// [`Error::Model`] when the file's architecture or weights cannot be built.
    pub fn from_gguf(
        file: &mlinfra_data::tensor::GgufFile,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let (model, config) =
            Llama::from_gguf(file, device).map_err(|error| Error::Model(Box::new(error)))?;
        Self::new(
            model,
            &config,
            num_blocks,
            block_size,
            Box::new(ReferenceAttention),
            device,
        )
    }

    /// The KV memory (tests read it through block tables).
    pub fn memory(&self) -> &PagedKv {
        &self.memory
    }
}

impl ModelRunner for LlamaRunner {
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_seq_len(&self) -> Option<usize> {
        Some(self.max_seq_len)
    }

    fn kv_geometry(&self) -> Option<KvGeometry> {
        Some(KvGeometry {
            // The scratch block past the pool is the runner's own.
            num_blocks: self.scratch_block as usize,
            block_size: self.memory.block_size(),
        })
    }

    fn adapters(&self) -> Vec<String> {
        self.model
            .adapters()
            .iter()
            .map(|info| info.name.clone())
            .collect()
    }

    fn load_adapter(&mut self, name: &str, dir: &std::path::Path) -> Result<()> {
        let loaded = self
            .model
            .clone()
            .load_adapter(dir, name)
            .map_err(|error| Error::Model(Box::new(error)))?;
        // Refused now rather than at the first step that would route a row through it.
        loaded
            .adapter_routing(&[Some(name)])
            .map_err(|error| Error::Model(Box::new(error)))?;
        self.model = loaded;
        Ok(())
    }

    fn unload_adapter(&mut self, name: &str) -> Result<()> {
        self.model = self
            .model
            .clone()
            .without_adapter(name)
            .map_err(|error| Error::Model(Box::new(error)))?;
        Ok(())
    }

    fn execute(&mut self, batch: &StepBatch) -> Result<Logits> {
        if batch.seqs.is_empty() {
            return Logits::new(Vec::new(), self.vocab_size);
        }
        self.memory.copy_blocks(&batch.copies);
        // Borrowed unless the batch-invariance padding below must extend them.
        let mut tokens = Cow::Borrowed(batch.tokens.as_slice());
        let mut positions = Cow::Borrowed(batch.positions.as_slice());
        let mut rows = Cow::Borrowed(batch.logit_rows.as_slice());
        let scratch = [self.scratch_block];
        let mut seqs = BatchLayout::of_step(batch, self.memory.block_size()).seqs;
        // Batch invariance: the CPU matmul takes another path (with another summation order)
        // for a single row than for two or more, and is row-invariant from two rows up. A
        // lone token gets a padding token beside it, a lone logit row a twin; the padding's KV
        // goes to the scratch block past the scheduler's pool.
        if tokens.len() == 1 {
            seqs.push(SeqLayout {
                query_start: 1,
                query_len: 1,
                context_len: 1,
                block_table: &scratch,
            });
            tokens.to_mut().push(0);
            positions.to_mut().push(0);
        }
        let lone_row = rows.len() == 1;
        if lone_row {
            let row = rows[0];
            rows.to_mut().push(row);
        }
        let layout = BatchLayout {
            seqs,
            block_size: self.memory.block_size(),
        };
        let mut hook = PagedHook {
            memory: &mut self.memory,
            layout: &layout,
            backend: &*self.attention,
            scale: self.scale,
        };
        // With adapters loaded, every row runs with its own request's adapter (or none): one
        // batch serves several adapters and the base model.
        let routing = if self.model.adapters().is_empty() {
            None
        } else {
            let mut names: Vec<Option<&str>> = Vec::with_capacity(tokens.len());
            for seq in &batch.seqs {
                names.extend(std::iter::repeat_n(seq.adapter.as_deref(), seq.query_len));
            }
            names.resize(tokens.len(), None); // padding
            Some(
                self.model
                    .adapter_routing(&names)
                    .map_err(|error| Error::Model(Box::new(error)))?,
            )
        };
        let logits = self
            .model
            .forward_tokens_routed(&tokens, &positions, &rows, &mut hook, routing.as_ref())
            .map_err(|error| match error {
                // The paged backend's own error, as it raised it.
                mlinfra_train::Error::Attention { source, layer } => match source
                    .downcast::<Error>()
                {
                    Ok(error) => *error,
                    Err(source) => {
                        Error::Model(Box::new(mlinfra_train::Error::Attention { layer, source }))
                    }
                },
                error => Error::Model(Box::new(error)),
            })?;
        let values =
            logits
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|error| Error::InvalidBatch {
                    reason: format!("logits could not be read back: {error:?}").into(),
                })?;
        let mut values = values;
        if lone_row {
            values.truncate(self.vocab_size);
        }
        Logits::new(values, self.vocab_size)
    }
}

/// The model's attention step, delegated to the paged backend.
struct PagedHook<'a> {
    memory: &'a mut PagedKv,
    layout: &'a BatchLayout<'a>,
    backend: &'a (dyn PagedAttention + Send),
    scale: f64,
}

impl LayerAttention for PagedHook<'_> {
    fn attend(
        &mut self,
        layer: usize,
        q: burn::tensor::Tensor<3>,
        k: burn::tensor::Tensor<3>,
        v: burn::tensor::Tensor<3>,
    ) -> std::result::Result<burn::tensor::Tensor<3>, Box<dyn std::error::Error + Send + Sync>>
    {
        self.backend
            .forward(
                self.memory.layer_mut(layer),
                self.layout,
                q,
                k,
                v,
                self.scale,
            )
            .map_err(|error| Box::new(error) as _)
    }
}
