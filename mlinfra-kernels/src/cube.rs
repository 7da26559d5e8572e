//! serve's [`HostKernels`] on a cubecl device: [`CubeKernels`], what `llama_generate --device
//! wgpu` runs SmolLM2 on.
//!
//! - **Linear layers** live on the device as GGUF blocks ([`DeviceWeights`]): Q8_0, Q4_0 and
//!   Q4_1 as they are, every other type mlinfra-data dequantizes converted to Q8_0 at load
//!   (the CPU kernels' conversion, error stated there). A forward uploads the activations,
//!   quantizes them to Q8_1 ([`quantize_q8_1`]) and runs [`quant_gemv_q8_1`], the CPU
//!   kernels' and llama.cpp's numerics, so that greedy text is the same on either.
//!   [`Activations::F32`] keeps them in f32 ([`quant_gemv`]): closer to the f32 model, and a
//!   near tie can then go the other way (on SmolLM2's "The capital of France is", the sixth
//!   token). Embedding rows come from [`DeviceWeights::dequantize_rows`].
//! - **Attention** reads a copy of each layer's paged cache in device memory, f16 or f32 as
//!   the runner keeps it. The runner's host cache stays the source of truth: the copy is made
//!   whole on a layer's first step, then each step writes only its new tokens' keys and
//!   values ([`PagedKv::store`]) and copy-on-write copies follow
//!   ([`HostKernels::kv_blocks_copied`]). Then [`paged_attention`] with f32 queries and outputs,
//!   whatever the cache's precision. A sequence's prompt chunk of [`FLASH_MIN_TOKENS`] or more
//!   tokens goes to cubek's flash attention instead ([`crate::prefill`], feature `prefill`):
//!   12.7x the paged kernel on a 256-token prompt on lavapipe, 2x at 16 (docs/BENCHMARKS.md,
//!   run K3); where cubek has no routine for the device, the paged kernel takes it.
//! - Norms, RoPE and SwiGLU stay in the runner, on the host.
//!
//! The costs this layout leaves (the cache twice, a host round trip per linear layer: about
//! 150 per SmolLM2 token) are those of plugging device kernels into a host runner, which is
//! what the trait is; a runner that keeps activations on the device removes them. Correctness
//! is what this path proves: the same greedy tokens as the CPU kernels.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use cubecl::prelude::*;
use half::f16;
use mlinfra_data::tensor::GgmlType;
use mlinfra_serve::attention::SeqLayout;
use mlinfra_serve::host::{
    AttentionStep, HostKernels, HostLinear, KvSlice, WeightBlocks, stacked_cols,
};
use mlinfra_serve::kv::BlockCopy;
use rayon::prelude::*;

use crate::Element;
use crate::cpu::convert::convert;
use crate::cpu::matrix::WeightFormat;
use crate::device::DeviceBuffer;
use crate::gemv::{DeviceWeights, quant_gemv, quant_gemv_q8_1, quantize_q8_1};
use crate::paged_attention::{AttentionBatch, PagedKv, paged_attention};
#[cfg(feature = "prefill")]
use crate::prefill::{PrefillRoutine, prefill_attention};

type ServeResult<T> = mlinfra_serve::Result<T>;

/// How the linear layers take their activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Quantized to Q8_1 blocks ([`quant_gemv_q8_1`]): the CPU kernels' and llama.cpp's
    /// numerics, and a quarter of the activation bytes.
    #[default]
    Q8_1,
    /// In f32 ([`crate::gemv::quant_gemv`]): the dequantized weights' product up to f32
    /// rounding, closest to the f32 model.
    F32,
}

/// Prompt chunks of at least this many tokens go to cubek's flash attention by default: the
/// smallest chunk measured (16) already ran 2x the paged kernel on lavapipe.
#[cfg(feature = "prefill")]
pub const FLASH_MIN_TOKENS: usize = 16;

/// How a sequence's prompt chunk attends.
#[cfg(feature = "prefill")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefill {
    /// Every token through the paged kernel.
    Paged,
    /// Chunks of at least `min_tokens` tokens through cubek's flash attention with `routine`
    /// (the paged kernel where the routine cannot run here); shorter ones, and decode tokens,
    /// through the paged kernel.
    Flash {
        /// cubek's routine.
        routine: PrefillRoutine,
        /// The smallest chunk it takes.
        min_tokens: usize,
    },
}

/// [`HostKernels`] on a cubecl device.
pub struct CubeKernels {
    client: Client,
    device: String,
    activations: Activations,
    #[cfg(feature = "prefill")]
    prefill: Prefill,
    /// Prompt chunks cubek's flash attention has served.
    flash_chunks: Arc<AtomicUsize>,
    /// Each layer's cache copy, made on its first step.
    caches: Mutex<Vec<Option<LayerCache>>>,
}

enum LayerCache {
    F16(PagedKv<f16>),
    F32(PagedKv<f32>),
}

/// The cache precisions, and their [`LayerCache`] variant.
trait CacheElement: Element {
    fn wrap(cache: PagedKv<Self>) -> LayerCache;
    fn unwrap(cache: &mut LayerCache) -> Option<&mut PagedKv<Self>>;
}

impl CacheElement for f16 {
    fn wrap(cache: PagedKv<Self>) -> LayerCache {
        LayerCache::F16(cache)
    }
    fn unwrap(cache: &mut LayerCache) -> Option<&mut PagedKv<Self>> {
        match cache {
            LayerCache::F16(cache) => Some(cache),
            LayerCache::F32(_) => None,
        }
    }
}

impl CacheElement for f32 {
    fn wrap(cache: PagedKv<Self>) -> LayerCache {
        LayerCache::F32(cache)
    }
    fn unwrap(cache: &mut LayerCache) -> Option<&mut PagedKv<Self>> {
        match cache {
            LayerCache::F32(cache) => Some(cache),
            LayerCache::F16(_) => None,
        }
    }
}

impl std::fmt::Debug for CubeKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CubeKernels")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl CubeKernels {
    /// Kernels launched on `client`; `device` names it in [`HostKernels::describe`].
    /// Prompt chunks of [`FLASH_MIN_TOKENS`] or more go to cubek's flash attention with the
    /// device's routine ([`PrefillRoutine::for_device`]).
    pub fn new(client: Client, device: impl Into<String>) -> Self {
        Self {
            #[cfg(feature = "prefill")]
            prefill: Prefill::Flash {
                routine: PrefillRoutine::for_device(&client),
                min_tokens: FLASH_MIN_TOKENS,
            },
            client,
            device: device.into(),
            activations: Activations::default(),
            flash_chunks: Arc::default(),
            caches: Mutex::new(Vec::new()),
        }
    }

    /// A counter of the prompt chunks (one per sequence and layer) cubek's flash attention
    /// has served, the rest having gone to the paged kernel; shared, so it can be read after
    /// the kernels move into a runner.
    pub fn flash_chunks(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.flash_chunks)
    }

    /// With prompt chunks attending as `prefill` says.
    #[cfg(feature = "prefill")]
    pub fn with_prefill(mut self, prefill: Prefill) -> Self {
        self.prefill = prefill;
        self
    }

    /// With the linear layers taking `activations`.
    pub fn with_activations(mut self, activations: Activations) -> Self {
        self.activations = activations;
        self
    }

    /// On the first Vulkan adapter ([`crate::wgpu::default_device`]).
    ///
    /// # Errors
    ///
    /// [`crate::Error::NoSoftwareAdapter`] when the machine has no Vulkan adapter.
    pub fn wgpu() -> crate::Result<Self> {
        let adapter = crate::wgpu::default_device()?;
        Ok(Self::new(
            adapter.client(),
            format!("wgpu/Vulkan on {}", adapter.adapter_name()),
        ))
    }

    fn prefill_description(&self) -> String {
        #[cfg(feature = "prefill")]
        if let Prefill::Flash {
            routine,
            min_tokens,
        } = self.prefill
        {
            return format!(
                ", prompt chunks of {min_tokens}+ tokens by cubek's flash attention ({routine:?})"
            );
        }
        String::new()
    }

    fn failed(&self, what: String) -> impl FnOnce(crate::Error) -> mlinfra_serve::Error {
        let device = self.device.clone();
        move |source| mlinfra_serve::Error::Kernels {
            reason: format!("{what} on {device}").into(),
            source: Box::new(source),
        }
    }
}

impl HostKernels for CubeKernels {
    fn describe(&self) -> String {
        format!(
            "cubecl kernels, {}: dequantize-GEMV on Q8_0/Q4_0/Q4_1 blocks (other types as Q8_0), \
             split-K paged attention{}; norms, RoPE and SwiGLU on the host",
            self.device,
            self.prefill_description()
        )
    }

    fn linear(&self, parts: &[WeightBlocks<'_>]) -> ServeResult<Box<dyn HostLinear>> {
        let cols = stacked_cols(parts)?;
        let first = parts[0].ggml_type;
        let native = DeviceWeights::FORMATS.contains(&first)
            && parts.iter().all(|part| part.ggml_type == first);
        let format = if native { first } else { GgmlType::Q8_0 };
        let mut bytes = Vec::new();
        for part in parts {
            part.row_bytes()?;
            let converted = if native {
                Some(std::borrow::Cow::Borrowed(&*part.bytes))
            } else {
                convert(part.ggml_type, &part.bytes, WeightFormat::Q8_0)
            };
            let Some(converted) = converted else {
                return Err(mlinfra_serve::Error::Weights {
                    tensor: part.name.clone().into(),
                    reason: format!(
                        "{} weights: these kernels take Q8_0, Q4_0 and Q4_1 blocks, and other \
                         quantized types converted to Q8_0",
                        part.ggml_type.name()
                    )
                    .into(),
                });
            };
            bytes.extend_from_slice(&converted);
        }
        let rows = parts.iter().map(|part| part.rows).sum();
        let name = parts
            .iter()
            .map(|part| &*part.name)
            .collect::<Vec<_>>()
            .join("+");
        let weights = DeviceWeights::upload(&self.client, format, rows, cols, &bytes)
            .map_err(self.failed(format!("uploading {name}")))?;
        Ok(Box::new(CubeLinear {
            client: self.client.clone(),
            device: self.device.clone(),
            name,
            weights,
            activations: self.activations,
        }))
    }

    fn attention(&self, step: &AttentionStep<'_>, out: &mut [f32]) -> ServeResult<()> {
        let failed = || self.failed(format!("attention of layer {}", step.layer));
        let mut caches = self
            .caches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if caches.len() <= step.layer {
            caches.resize_with(step.layer + 1, || None);
        }
        let entry = &mut caches[step.layer];
        let attended = match (step.k, step.v) {
            (KvSlice::F16(k), KvSlice::F16(v)) => self.attend_layer(step, entry, k, v),
            (KvSlice::F32(k), KvSlice::F32(v)) => self.attend_layer(step, entry, k, v),
            _ => {
                return Err(mlinfra_serve::Error::InvalidBatch {
                    reason: "keys and values in different precisions".into(),
                });
            }
        }
        .map_err(failed())?;
        if attended.len() != out.len() {
            return Err(mlinfra_serve::Error::InvalidBatch {
                reason: format!(
                    "an attention output of {} values for {} pieces of {}",
                    out.len(),
                    step.pieces(),
                    step.head_dim
                )
                .into(),
            });
        }
        out.copy_from_slice(&attended);
        Ok(())
    }

    fn kv_blocks_copied(&self, copies: &[BlockCopy]) {
        let pairs: Vec<(u32, u32)> = copies.iter().map(|copy| (copy.src, copy.dst)).collect();
        let mut caches = self
            .caches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for entry in caches.iter_mut() {
            let copied = match entry {
                Some(LayerCache::F16(cache)) => cache.copy_blocks(&self.client, &pairs).is_ok(),
                Some(LayerCache::F32(cache)) => cache.copy_blocks(&self.client, &pairs).is_ok(),
                None => true,
            };
            if !copied {
                // Made whole again from the host cache (already copied) on its next step.
                *entry = None;
            }
        }
    }

    fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk: usize,
        task: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        out.par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(index, piece)| task(index, piece));
    }
}

impl CubeKernels {
    /// The step's attention over the layer's device copy of the cache (`entry`): made whole
    /// from the host cache when missing or of another shape or precision, else brought up to
    /// date with the step's new keys and values.
    fn attend_layer<C: CacheElement>(
        &self,
        step: &AttentionStep<'_>,
        entry: &mut Option<LayerCache>,
        k: &[C],
        v: &[C],
    ) -> crate::Result<Vec<f32>> {
        match entry.as_mut().and_then(C::unwrap) {
            Some(cache) if cache.k.len() == k.len() => {
                store_new(&self.client, cache, step, &new_slots(step), k, v)?;
            }
            _ => *entry = Some(C::wrap(self.whole_cache(step, k, v))),
        }
        let cache = entry
            .as_mut()
            .and_then(C::unwrap)
            .expect("the layer's cache was made above");
        self.attend(step, cache)
    }

    /// A device copy of the whole host cache of `step`'s layer.
    fn whole_cache<C: Element>(&self, step: &AttentionStep<'_>, k: &[C], v: &[C]) -> PagedKv<C> {
        PagedKv {
            k: DeviceBuffer::from_slice(&self.client, k),
            v: DeviceBuffer::from_slice(&self.client, v),
            kv_heads: step.kv_heads,
            head_dim: step.head_dim,
            block_size: step.block_size,
        }
    }

    /// The step's attention over `cache`, read back: each long enough prompt chunk by the
    /// flash kernel, every other token in one paged launch.
    fn attend<C: Element>(
        &self,
        step: &AttentionStep<'_>,
        cache: &PagedKv<C>,
    ) -> crate::Result<Vec<f32>> {
        let row = step.heads * step.head_dim;
        let mut out = vec![0f32; step.seq_of_token.len() * row];
        let mut paged_tokens = Vec::new();
        for seq in &step.layout.seqs {
            let tokens = seq.query_start..seq.query_start + seq.query_len;
            if !self.flash_prefill(
                step,
                seq,
                cache,
                &mut out[tokens.start * row..tokens.end * row],
            )? {
                paged_tokens.extend(tokens);
            }
        }
        if paged_tokens.is_empty() {
            return Ok(out);
        }
        let positions: Vec<(usize, usize)> = paged_tokens
            .iter()
            .map(|&token| (step.seq_of_token[token], step.position(token * step.heads)))
            .collect();
        let tables: Vec<&[u32]> = step.layout.seqs.iter().map(|seq| seq.block_table).collect();
        let batch = AttentionBatch::new(&self.client, &tables, &positions, step.block_size)?;
        let queries = DeviceBuffer::from_slice(&self.client, &queries(step, &paged_tokens));
        let attended = paged_attention(
            &self.client,
            &queries,
            step.heads,
            cache,
            &batch,
            step.scale,
        )?
        .to_vec(&self.client, "paged_attention")?;
        for (&token, rows) in paged_tokens.iter().zip(attended.chunks_exact(row)) {
            out[token * row..][..row].copy_from_slice(rows);
        }
        Ok(out)
    }

    /// `seq`'s chunk through cubek's flash attention into `out` (its tokens' rows), when the
    /// chunk is long enough, the step's scale is cubek's `1/√head_dim` and the routine runs
    /// here; `false` leaves it to the paged kernel.
    #[cfg(feature = "prefill")]
    fn flash_prefill<C: Element>(
        &self,
        step: &AttentionStep<'_>,
        seq: &SeqLayout<'_>,
        cache: &PagedKv<C>,
        out: &mut [f32],
    ) -> crate::Result<bool> {
        let Prefill::Flash {
            routine,
            min_tokens,
        } = self.prefill
        else {
            return Ok(false);
        };
        let cubeks_scale = 1.0 / (step.head_dim as f32).sqrt();
        if seq.query_len < min_tokens.max(2)
            || (step.scale - cubeks_scale).abs() > 1e-6 * cubeks_scale
        {
            return Ok(false);
        }
        let tokens: Vec<usize> = (seq.query_start..seq.query_start + seq.query_len).collect();
        let queries = DeviceBuffer::from_slice(&self.client, &queries(step, &tokens));
        // The tensor-core routine takes only some chunk lengths: the unit routine takes the
        // rest where it runs, the paged kernel where it does not.
        let mut routines = vec![routine];
        if routine != PrefillRoutine::Unit {
            routines.push(PrefillRoutine::Unit);
        }
        for routine in routines {
            match prefill_attention(
                &self.client,
                &queries,
                step.heads,
                cache,
                seq.block_table,
                seq.context_len,
                routine,
            ) {
                Ok(attended) => {
                    out.copy_from_slice(&attended.to_vec(&self.client, "prefill_attention")?);
                    self.flash_chunks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(true);
                }
                Err(crate::Error::Unavailable { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    }

    #[cfg(not(feature = "prefill"))]
    fn flash_prefill<C: Element>(
        &self,
        _: &AttentionStep<'_>,
        _: &SeqLayout<'_>,
        _: &PagedKv<C>,
        _: &mut [f32],
    ) -> crate::Result<bool> {
        Ok(false)
    }
}

/// The queries of `tokens` (RoPE applied), one row of `heads · head_dim` each.
fn queries(step: &AttentionStep<'_>, tokens: &[usize]) -> Vec<f32> {
    let row = step.heads * step.head_dim;
    let mut queries = Vec::with_capacity(tokens.len() * row);
    for &token in tokens {
        queries.extend_from_slice(&step.qkv[token * step.qkv_width..][..row]);
    }
    queries
}

/// Each token's slot this step.
fn new_slots(step: &AttentionStep<'_>) -> Vec<u32> {
    let slot_len = step.kv_heads * step.head_dim;
    (0..step.seq_of_token.len())
        .map(|token| {
            let piece = token * step.heads;
            // Piece `token · heads` is query head 0, whose KV head is 0: the offset is the slot's.
            (step.kv_offset(piece, step.position(piece)) / slot_len) as u32
        })
        .collect()
}

/// The step's new keys and values (written to the host cache by the runner) into the device
/// copy.
fn store_new<C: Element>(
    client: &Client,
    cache: &mut PagedKv<C>,
    step: &AttentionStep<'_>,
    slots: &[u32],
    k: &[C],
    v: &[C],
) -> crate::Result<()> {
    let slot_len = step.kv_heads * step.head_dim;
    let gather = |values: &[C]| -> Vec<C> {
        slots
            .iter()
            .flat_map(|&slot| &values[slot as usize * slot_len..][..slot_len])
            .copied()
            .collect()
    };
    let (new_k, new_v) = (gather(k), gather(v));
    cache.store(
        client,
        &DeviceBuffer::from_slice(client, &new_k),
        &DeviceBuffer::from_slice(client, &new_v),
        slots,
    )
}

/// A linear layer on the device.
struct CubeLinear {
    client: Client,
    device: String,
    name: String,
    weights: DeviceWeights,
    activations: Activations,
}

impl CubeLinear {
    fn failed(&self, what: &str) -> impl FnOnce(crate::Error) -> mlinfra_serve::Error {
        let reason = format!("{what} of {} on {}", self.name, self.device);
        move |source| mlinfra_serve::Error::Kernels {
            reason: reason.into(),
            source: Box::new(source),
        }
    }
}

impl HostLinear for CubeLinear {
    fn rows(&self) -> usize {
        self.weights.rows()
    }

    fn cols(&self) -> usize {
        self.weights.cols()
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) -> ServeResult<()> {
        let (rows, cols) = (self.rows(), self.cols());
        let tokens = x.len() / cols;
        if !x.len().is_multiple_of(cols) || out.len() != tokens * rows {
            return Err(mlinfra_serve::Error::InvalidBatch {
                reason: format!(
                    "{}: {} inputs and {} outputs for a {rows}×{cols} matrix",
                    self.name,
                    x.len(),
                    out.len()
                )
                .into(),
            });
        }
        let x = DeviceBuffer::from_slice(&self.client, x);
        let y = match self.activations {
            Activations::Q8_1 => quantize_q8_1(&self.client, &x, cols)
                .and_then(|x| quant_gemv_q8_1(&self.client, &self.weights, &x)),
            Activations::F32 => quant_gemv(&self.client, &self.weights, &x),
        }
        .and_then(|y| y.to_vec(&self.client, "quant_gemv"))
        .map_err(self.failed("forward"))?;
        out.copy_from_slice(&y);
        Ok(())
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> ServeResult<()> {
        if row >= self.rows() || out.len() != self.cols() {
            return Err(mlinfra_serve::Error::InvalidBatch {
                reason: format!(
                    "{}: row {row} into {} values of a {}×{} matrix",
                    self.name,
                    out.len(),
                    self.rows(),
                    self.cols()
                )
                .into(),
            });
        }
        let values = self
            .weights
            .dequantize_rows(&self.client, &[row as u32])
            .and_then(|values| values.to_vec(&self.client, "dequantize_rows"))
            .map_err(self.failed("dequantize_row"))?;
        out.copy_from_slice(&values);
        Ok(())
    }

    fn resident_bytes(&self) -> usize {
        self.weights.resident_bytes()
    }
}
