//! Adapters on a [`Llama`]: add, switch, disable, delete, merge and unmerge them, as PEFT's
//! `PeftModel` does (`add_adapter`, `set_adapter`, `disable_adapter`, `delete_adapter`,
//! `merge_adapter`, `unmerge_adapter`).
//!
//! Adding the first adapter freezes the whole base model (`set_require_grad(false)`): the
//! training engine then trains, reduces and checkpoints only the active adapter's weights
//! ([`ParamLayout::trainable`](crate::ParamLayout::trainable)). Only the active adapter's
//! weights are trainable, as in PEFT.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;

use super::Llama;
use crate::peft::{
    ADAPTER_WEIGHTS_FILE, AdapterInit, AdapterRouting, AdapterTensors, LoraConfig, LoraLinear,
    PeftAdapter, SlotValues,
};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One adapter of a model: its name and configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// The name it is addressed by.
    pub name: String,
    /// Its configuration.
    pub config: LoraConfig,
}

impl Llama {
    /// The model with a new adapter `name` on the linear layers `config` targets (Hugging
    /// Face paths: `model.layers.3.self_attn.q_proj`), made active. Its `A` matrices are
    /// drawn from `seed` (Kaiming-uniform, as PEFT), its `B` are zero, so the model's outputs
    /// are unchanged until it trains. The base is frozen.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a config that does not validate, a name already in use,
    /// or targets that match no layer (naming them).
    pub fn with_adapter(self, name: &str, config: &LoraConfig, seed: u64) -> Result<Llama> {
        config.validate()?;
        self.check_new_adapter(name)?;
        self.check_quantized(config)?;
        let matcher = config.target_modules.compile()?;
        if !self.linear_paths().iter().any(|path| matcher.matches(path)) {
            return Err(invalid(format!(
                "LoRA target_modules {:?} match no linear layer of the model",
                config.target_modules
            )));
        }
        let init = AdapterInit::from(config);
        let mut rng = SplitMix64::new(seed);
        let model = self.map(&mut Freeze).map_linears(|path, layer| {
            layer.with_slot(matcher.matches(path).then_some(init), &mut rng)
        });
        Ok(model.with_new_adapter(name, config))
    }

    /// The model with adapter `name` read from a PEFT adapter directory
    /// (`adapter_config.json`, `adapter_model.safetensors`: what PEFT's `save_pretrained`
    /// writes and [`Llama::save_adapter`] writes), made active. Applied unmerged.
    ///
    /// # Errors
    ///
    /// What [`PeftAdapter::read`] refuses; [`Error::AdapterFile`] naming the tensor when the
    /// adapter does not fit this model: a tensor for a layer the model does not have, a shape
    /// that differs from the layer's, a layer its `target_modules` match without tensors (or
    /// tensors for one they do not match); [`Error::InvalidConfig`] for a name in use or while
    /// an adapter is merged.
    pub fn load_adapter(self, dir: impl AsRef<Path>, name: &str) -> Result<Llama> {
        let dir = dir.as_ref();
        let adapter = PeftAdapter::read(dir)?;
        self.with_peft_adapter(name, &adapter).map_err(|e| match e {
            Error::ModelLayout { reason } => Error::AdapterFile {
                path: dir.join(ADAPTER_WEIGHTS_FILE).into_boxed_path(),
                reason,
            },
            other => other,
        })
    }

    /// The model with adapter `name` holding `adapter`'s weights, made active.
    ///
    /// # Errors
    ///
    /// [`Error::ModelLayout`] naming the layer when `adapter` does not fit this model (see
    /// [`Llama::load_adapter`]); [`Error::InvalidConfig`] as [`Llama::with_adapter`].
    pub fn with_peft_adapter(self, name: &str, adapter: &PeftAdapter) -> Result<Llama> {
        let config = &adapter.config;
        config.validate()?;
        self.check_new_adapter(name)?;
        self.check_quantized(config)?;
        let matcher = config.target_modules.compile()?;
        let layers: BTreeMap<String, [usize; 2]> = self
            .linear_layers()
            .into_iter()
            .map(|(path, layer)| (path, layer.dims()))
            .collect();
        let mismatch = |reason: String| {
            Err(Error::ModelLayout {
                reason: reason.into(),
            })
        };
        for (path, tensors) in &adapter.layers {
            let Some(&[input, output]) = layers.get(path) else {
                return mismatch(format!(
                    "tensors for {path}, which is not a linear layer of the model (those are \
                     model.layers.{{0..{}}}.self_attn.{{q,k,v,o}}_proj and \
                     mlp.{{gate,up,down}}_proj)",
                    self.layers.len().saturating_sub(1)
                ));
            };
            if [tensors.input, tensors.output] != [input, output] {
                return mismatch(format!(
                    "{path}: the adapter is for a layer {} -> {}, the model's is {input} -> \
                     {output}",
                    tensors.input, tensors.output
                ));
            }
            if !matcher.matches(path) {
                return mismatch(format!(
                    "tensors for {path}, which target_modules {:?} does not match",
                    config.target_modules
                ));
            }
        }
        if let Some(path) = layers
            .keys()
            .find(|path| matcher.matches(path) && !adapter.layers.contains_key(*path))
        {
            return mismatch(format!(
                "target_modules {:?} matches {path}, which has no tensors",
                config.target_modules
            ));
        }
        let init = AdapterInit::from(config);
        let model = self.map(&mut Freeze).map_linears(|path, layer| {
            let values = adapter.layers.get(path).map(|t| {
                let values = SlotValues {
                    a: layer.tensor2(t.a.clone(), [t.r, t.input]).transpose(),
                    b: layer.tensor2(t.b.clone(), [t.output, t.r]).transpose(),
                    magnitude: t
                        .magnitude
                        .as_ref()
                        .map(|m| layer.tensor2(m.clone(), [1, t.output]).reshape([t.output])),
                };
                (init, values)
            });
            layer.with_slot_values(values)
        });
        Ok(model.with_new_adapter(name, config))
    }

    /// Adapter `name` in PEFT's terms: its configuration and tensors, ready to
    /// [write](PeftAdapter::write).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an unknown name; [`Error::Tensor`] when a weight cannot be
    /// read back from its device.
    pub fn peft_adapter(&self, name: &str) -> Result<PeftAdapter> {
        let slot = self
            .adapter_slot(name)
            .ok_or_else(|| invalid(format!("no adapter named `{name}`")))?;
        let mut layers = BTreeMap::new();
        for (path, layer) in self.linear_layers() {
            let Some(Some(weights)) = layer.adapters.get(slot) else {
                continue;
            };
            let [input, output] = layer.dims();
            let [_, r] = weights.a.lazy_shape().dims();
            let tensors = AdapterTensors {
                input,
                output,
                r,
                a: read_f32(weights.a.val().transpose(), &path)?,
                b: read_f32(weights.b.val().transpose(), &path)?,
                magnitude: match &weights.magnitude {
                    Some(m) => Some(read_f32(m.val(), &path)?),
                    None => None,
                },
            };
            layers.insert(path, tensors);
        }
        Ok(PeftAdapter {
            config: self.adapters[slot].config.clone(),
            base_model_name_or_path: None,
            layers,
        })
    }

    /// Writes adapter `name` to `dir` in PEFT's format (`adapter_config.json`,
    /// `adapter_model.safetensors`), which PEFT's `PeftModel.from_pretrained` and
    /// [`Llama::load_adapter`] read. `base_model_name_or_path` goes into the config.
    ///
    /// # Errors
    ///
    /// As [`Llama::peft_adapter`] and [`PeftAdapter::write`].
    pub fn save_adapter(
        &self,
        name: &str,
        dir: impl AsRef<Path>,
        base_model_name_or_path: Option<&str>,
    ) -> Result<()> {
        let mut adapter = self.peft_adapter(name)?;
        adapter.base_model_name_or_path = base_model_name_or_path.map(str::to_owned);
        adapter.write(dir)
    }

    /// Per-row adapters for [`Llama::forward_tokens_routed`]: token `i` of the batch runs
    /// with adapter `adapters[i]` (`None`: the base model), whatever adapter is active.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an unknown name, a DoRA adapter (whose column norms are
    /// per adapter and layer: served one at a time, not per row), or while one is merged.
    pub fn adapter_routing(&self, adapters: &[Option<&str>]) -> Result<AdapterRouting> {
        if self.merged() {
            return Err(invalid(
                "per-row adapters while an adapter is merged: unmerge it first".into(),
            ));
        }
        let mut slots = Vec::with_capacity(adapters.len());
        for name in adapters {
            let slot = match name {
                None => None,
                Some(name) => {
                    let slot = self
                        .adapter_slot(name)
                        .ok_or_else(|| invalid(format!("no adapter named `{name}`")))?;
                    if self.adapters[slot].config.use_dora {
                        return Err(invalid(format!(
                            "adapter `{name}` is DoRA: per-row serving takes LoRA adapters"
                        )));
                    }
                    Some(slot)
                }
            };
            slots.push(slot);
        }
        let device = self.embed_tokens.weight.val().device();
        Ok(AdapterRouting::new(&slots, &device))
    }

    /// The adapters, in the order they were added.
    pub fn adapters(&self) -> &[AdapterInfo] {
        &self.adapters
    }

    /// The active adapter's name.
    pub fn active_adapter(&self) -> Option<&str> {
        let slot = self.first_linear().state.active?;
        self.adapters.get(slot).map(|info| info.name.as_str())
    }

    /// The model with adapter `name` active (and the only one trainable).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an unknown name, or while an adapter is merged.
    pub fn set_adapter(self, name: &str) -> Result<Llama> {
        let slot = self
            .adapter_slot(name)
            .ok_or_else(|| invalid(format!("no adapter named `{name}`")))?;
        if self.merged() {
            return Err(invalid(
                "switching adapters while one is merged: unmerge it first".into(),
            ));
        }
        Ok(self.with_active(Some(slot)))
    }

    /// The model computing as its base alone (`enabled` false) or with its active adapter
    /// again (PEFT's `disable_adapter` context). DPO's reference model is the policy with
    /// adapters disabled.
    pub fn with_adapters_enabled(self, enabled: bool) -> Llama {
        self.map_linears(|_, mut layer| {
            layer.state.disabled = !enabled;
            layer
        })
    }

    /// Whether adapters are disabled.
    pub fn adapters_disabled(&self) -> bool {
        self.first_linear().state.disabled
    }

    /// The model without adapter `name` (its weights dropped; the others keep theirs). The
    /// active adapter becomes none when it was the one deleted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an unknown name, or while an adapter is merged.
    pub fn without_adapter(mut self, name: &str) -> Result<Llama> {
        let slot = self
            .adapter_slot(name)
            .ok_or_else(|| invalid(format!("no adapter named `{name}`")))?;
        if self.merged() {
            return Err(invalid(format!(
                "deleting adapter `{name}` while an adapter is merged: unmerge it first"
            )));
        }
        self.adapters.remove(slot);
        let active = self
            .first_linear()
            .state
            .active
            .and_then(|a| match a.cmp(&slot) {
                std::cmp::Ordering::Less => Some(a),
                std::cmp::Ordering::Equal => None,
                std::cmp::Ordering::Greater => Some(a - 1),
            });
        Ok(self
            .map_linears(|_, layer| layer.without_slot(slot))
            .with_active(active))
    }

    /// The model with its active adapter folded into the base weights: outputs unchanged, no
    /// adapter cost per forward. [`Llama::unmerge_adapter`] takes it out again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] without an active adapter, or with one merged already.
    pub fn merge_adapter(self) -> Result<Llama> {
        if self.active_adapter().is_none() {
            return Err(invalid("no active adapter to merge".into()));
        }
        if self.merged() {
            return Err(invalid("an adapter is merged already".into()));
        }
        let mut failure = None;
        let model = self.map_linears(|_, layer| {
            // `merged` only fails when a layer has an adapter merged, checked above; a layer
            // that failed anyway comes back unmerged and the error is returned.
            let (layer, outcome) = try_merge(layer);
            failure = failure.take().or(outcome.err());
            layer
        });
        match failure {
            Some(error) => Err(error),
            None => Ok(model),
        }
    }

    /// The model with its merged adapter taken out of the base weights again (nothing to do
    /// when none is merged).
    pub fn unmerge_adapter(self) -> Llama {
        self.map_linears(|_, layer| layer.unmerged())
    }

    /// The Hugging Face path of every adaptable linear layer, in layer order, with the layer.
    pub fn linear_layers(&self) -> Vec<(String, &LoraLinear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7);
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let mlp = &layer.mlp;
            for (part, linear) in [
                ("self_attn.q_proj", &attn.q_proj),
                ("self_attn.k_proj", &attn.k_proj),
                ("self_attn.v_proj", &attn.v_proj),
                ("self_attn.o_proj", &attn.o_proj),
                ("mlp.gate_proj", &mlp.gate_proj),
                ("mlp.up_proj", &mlp.up_proj),
                ("mlp.down_proj", &mlp.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{part}"), linear));
            }
        }
        out
    }

    fn linear_paths(&self) -> Vec<String> {
        self.linear_layers()
            .into_iter()
            .map(|(path, _)| path)
            .collect()
    }

    /// The model with `f` applied to every adaptable linear layer, given its Hugging Face path.
    pub(crate) fn map_linears(
        mut self,
        mut f: impl FnMut(&str, LoraLinear) -> LoraLinear,
    ) -> Llama {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let path = |part: &str| format!("model.layers.{i}.{part}");
            let attn = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            for (part, linear) in [
                ("self_attn.q_proj", &mut attn.q_proj),
                ("self_attn.k_proj", &mut attn.k_proj),
                ("self_attn.v_proj", &mut attn.v_proj),
                ("self_attn.o_proj", &mut attn.o_proj),
                ("mlp.gate_proj", &mut mlp.gate_proj),
                ("mlp.up_proj", &mut mlp.up_proj),
                ("mlp.down_proj", &mut mlp.down_proj),
            ] {
                replace_with(linear, |l| f(&path(part), l));
            }
        }
        self
    }

    /// Whether the decoder's projections are quantized ([`Llama::from_gguf_quantized`]).
    pub fn is_quantized(&self) -> bool {
        self.linear_layers()
            .iter()
            .any(|(_, layer)| layer.quantized_weight().is_some())
    }

    /// Bytes the frozen base weights occupy: the projections' ggml blocks when quantized
    /// (QLoRA), f32 otherwise, plus the embedding, norms and output projection. Adapters are
    /// not counted.
    pub fn base_weight_bytes(&self) -> u64 {
        let projections: usize = self
            .linear_layers()
            .iter()
            .map(|(_, layer)| layer.base_bytes())
            .sum();
        (projections + 4 * self.dense_base_parameters()) as u64
    }

    /// The bytes the base weights take as f32: what [`Llama::from_gguf`] holds, to set
    /// [`Llama::base_weight_bytes`] against.
    pub fn base_weight_bytes_f32(&self) -> u64 {
        4 * self.base_parameter_count()
    }

    /// Parameters of the base model (quantized ones counted as weights), adapters excluded.
    pub fn base_parameter_count(&self) -> u64 {
        let projections: usize = self
            .linear_layers()
            .iter()
            .map(|(_, layer)| {
                let [input, output] = layer.dims();
                input * output
            })
            .sum();
        (projections + self.dense_base_parameters()) as u64
    }

    /// Parameters outside the adaptable projections, always f32: the embedding, the norms
    /// and an untied output projection.
    fn dense_base_parameters(&self) -> usize {
        let norms = (self.layers.len() * 2 + 1) * self.norm.gamma.lazy_shape().num_elements();
        let embedding = self.embed_tokens.weight.lazy_shape().num_elements();
        let head = self
            .lm_head
            .as_ref()
            .map_or(0, |head| head.weight.lazy_shape().num_elements());
        norms + embedding + head
    }

    /// Refuses a name in use, and any new adapter while one is merged.
    fn check_new_adapter(&self, name: &str) -> Result<()> {
        if self.adapter_slot(name).is_some() {
            return Err(invalid(format!("an adapter named `{name}` exists already")));
        }
        if self.merged() {
            return Err(invalid(format!(
                "adding adapter `{name}` to a model with a merged adapter: unmerge it first"
            )));
        }
        Ok(())
    }

    /// Refuses what a quantized base cannot carry: DoRA needs the dense weight's norms.
    fn check_quantized(&self, config: &LoraConfig) -> Result<()> {
        if config.use_dora && self.is_quantized() {
            return Err(invalid(
                "DoRA over a quantized base is not supported (its magnitude needs the dense \
                 weight's norms): use LoRA (QLoRA), or load the base with Llama::from_gguf"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Records the adapter whose slot every layer has just gained, and makes it active.
    fn with_new_adapter(mut self, name: &str, config: &LoraConfig) -> Llama {
        self.adapters.push(AdapterInfo {
            name: name.to_owned(),
            config: config.clone(),
        });
        let slot = self.adapters.len() - 1;
        self.with_active(Some(slot))
    }

    /// Slot `active` in use everywhere, its weights the only trainable ones.
    fn with_active(self, active: Option<usize>) -> Llama {
        self.map_linears(|_, mut layer| {
            layer.state.active = active;
            layer.adapters = std::mem::take(&mut layer.adapters)
                .into_iter()
                .enumerate()
                .map(|(slot, weights)| weights.map(|w| w.trainable(Some(slot) == active)))
                .collect();
            layer
        })
    }

    fn adapter_slot(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|info| info.name == name)
    }

    fn merged(&self) -> bool {
        self.linear_layers()
            .iter()
            .any(|(_, layer)| layer.state.merged.is_some())
    }

    fn first_linear(&self) -> &LoraLinear {
        &self.layers[0].self_attn.q_proj
    }
}

/// Merges `layer`'s active adapter, handing the layer back either way.
fn try_merge(layer: LoraLinear) -> (LoraLinear, Result<()>) {
    // `merged` consumes the layer; on its one error path it has changed nothing, so a clone
    // (parameter handles, no data copied) stands in for it.
    let backup = layer.clone();
    match layer.merged() {
        Ok(layer) => (layer, Ok(())),
        Err(error) => (backup, Err(error)),
    }
}

/// Replaces `*slot` with `f` of its value.
fn replace_with(slot: &mut LoraLinear, f: impl FnOnce(LoraLinear) -> LoraLinear) {
    let taken = slot.clone();
    *slot = f(taken);
}

/// Freezes every parameter it maps.
struct Freeze;

impl ModuleMapper for Freeze {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.set_require_grad(false)
    }
}

/// A tensor's values as f32, in logical (row-major) order.
fn read_f32<const D: usize>(tensor: Tensor<D>, path: &str) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Tensor {
            reason: format!("reading the adapter of {path}: {e:?}").into(),
        })
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig {
        reason: reason.into(),
    }
}
