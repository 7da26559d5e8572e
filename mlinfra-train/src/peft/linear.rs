//! [`LoraLinear`]: a linear layer that carries LoRA and DoRA adapters, applied unmerged.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::linear;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use std::sync::Arc;

use super::LoraConfig;
use super::quantized::{QuantizedWeight, quantized_linear};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One adapter's weights in one layer.
#[derive(Module, Debug)]
pub struct LoraWeights {
    /// `[in, r]`: PEFT's `lora_A.weight` transposed.
    pub(crate) a: Param<Tensor<2>>,
    /// `[r, out]`: PEFT's `lora_B.weight` transposed.
    pub(crate) b: Param<Tensor<2>>,
    /// DoRA's magnitude `[out]`: PEFT's `lora_magnitude_vector`.
    pub(crate) magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the adapter's input while training.
    pub(crate) dropout: Dropout,
    /// The factor `s` of the update.
    #[module(skip)]
    pub(crate) scaling: f64,
    /// DoRA, merged: the column norms `n` the merge multiplied by `m/n`, to unmerge with.
    #[module(skip)]
    pub(crate) merged_norm: Option<Tensor<1>>,
}

impl LoraWeights {
    /// These weights trainable or frozen (PEFT trains the active adapter only).
    pub(crate) fn trainable(mut self, trainable: bool) -> Self {
        self.a = self.a.set_require_grad(trainable);
        self.b = self.b.set_require_grad(trainable);
        self.magnitude = self.magnitude.map(|m| m.set_require_grad(trainable));
        self
    }
}

/// Which adapter each token of a flat batch runs with: several adapters (and the base
/// model) served in one forward, each row through its own adapter (Punica and S-LoRA's
/// multi-LoRA batching). Built by [`Llama::adapter_routing`].
///
/// Each adapter's rows are gathered, go through its `A` and `B`, and are added back in place:
/// the base matmul is shared by every row, the adapter matmuls cost `rows · r · (in + out)`
/// per adapter.
///
/// [`Llama::adapter_routing`]: crate::models::Llama::adapter_routing
#[derive(Debug, Clone)]
pub struct AdapterRouting {
    /// (adapter slot, the rows that use it), one entry per adapter in the batch.
    pub(crate) groups: Vec<(usize, Tensor<1, Int>)>,
}

impl AdapterRouting {
    /// Routing from each token's adapter slot (`None`: the base model alone).
    pub(crate) fn new(slots: &[Option<usize>], device: &burn::tensor::Device) -> Self {
        let mut groups: Vec<(usize, Vec<i64>)> = Vec::new();
        for (row, slot) in slots.iter().enumerate() {
            let Some(slot) = *slot else { continue };
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, rows)) => rows.push(row as i64),
                None => groups.push((slot, vec![row as i64])),
            }
        }
        let groups = groups
            .into_iter()
            .map(|(slot, rows)| {
                let count = rows.len();
                (
                    slot,
                    Tensor::<1, Int>::from_data(TensorData::new(rows, [count]), device),
                )
            })
            .collect();
        AdapterRouting { groups }
    }
}

/// Which adapter a [`LoraLinear`] applies, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AdapterState {
    /// The adapter slot in use.
    pub(crate) active: Option<usize>,
    /// Adapters switched off: the base alone.
    pub(crate) disabled: bool,
    /// The slot whose update is folded into `W` now.
    pub(crate) merged: Option<usize>,
}

/// A linear layer `y = x·W + b` that can carry adapters.
///
/// # The computation
///
/// With the base `y = x·W + b` (`W` `[in, out]`, burn's layout: the transpose of PEFT's), an
/// adapter of rank `r` holds `A` `[in, r]` and `B` `[r, out]` and, for DoRA, a magnitude `m`
/// `[out]`. With scaling `s`:
///
/// - **LoRA**: `y = x·W + b + s·(drop(x)·A)·B`. Two skinny matmuls (`in·r + r·out` flops per
///   row), never the dense `W + s·A·B`: burn's own `apply_lora` builds that dense matrix on
///   every forward, an `in × out` product and a second copy of each adapted weight.
/// - **DoRA** (Liu et al. 2024, as PEFT computes it): with `n` the norm of each column of
///   `W + s·A·B` (each output), detached from the graph (the paper's §4.3: its gradient is
///   not taken), `y = x·W + b + (m/n − 1)·(drop(x)·W) + (m/n)·s·(drop(x)·A)·B`, which is
///   `(m/n)·(x·(W + s·A·B)) + b` without dropout. The norm needs the dense `W + s·A·B` once
///   per forward, as in PEFT: DoRA's one dense cost.
///
/// # Merging
///
/// [`Llama::merge_adapter`] folds the active adapter into `W` (`W + s·A·B`; for DoRA
/// `(m/n)·(W + s·A·B)`, keeping `n`), and [`Llama::unmerge_adapter`] takes it out again, so
/// that merged inference costs nothing and training can go on after it.
///
/// [`Llama::merge_adapter`]: crate::models::Llama::merge_adapter
/// [`Llama::unmerge_adapter`]: crate::models::Llama::unmerge_adapter
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// `[in, out]`, frozen once the layer belongs to an adapted model.
    pub(crate) weight: Param<Tensor<2>>,
    /// `[out]`, if any.
    pub(crate) bias: Option<Param<Tensor<1>>>,
    /// One slot per adapter of the model, in the model's order: `None` where that adapter
    /// does not target this layer.
    pub(crate) adapters: Vec<Option<LoraWeights>>,
    #[module(skip)]
    pub(crate) state: AdapterState,
    /// QLoRA: the base weight in its GGUF blocks; `weight` is then a `[1, 1]` placeholder.
    #[module(skip)]
    pub(crate) quantized: Option<Arc<QuantizedWeight>>,
}

/// An adapter slot's weights in burn's layout: `a` `[in, r]`, `b` `[r, out]`, DoRA's
/// magnitude `[out]` when known.
pub(crate) struct SlotValues {
    pub(crate) a: Tensor<2>,
    pub(crate) b: Tensor<2>,
    pub(crate) magnitude: Option<Tensor<1>>,
}

/// What a fresh adapter slot is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdapterInit {
    pub(crate) r: usize,
    pub(crate) scaling: f64,
    pub(crate) dropout: f64,
    pub(crate) dora: bool,
    /// `B` at zero (PEFT's `init_lora_weights=True`), or drawn like `A`.
    pub(crate) zero_b: bool,
}

impl From<&LoraConfig> for AdapterInit {
    fn from(config: &LoraConfig) -> Self {
        AdapterInit {
            r: config.r,
            scaling: config.scaling(),
            dropout: config.dropout,
            dora: config.use_dora,
            zero_b: config.init_lora_weights,
        }
    }
}

impl LoraLinear {
    /// A layer without adapters over `weight` `[in, out]`.
    pub(crate) fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        LoraLinear {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            adapters: Vec::new(),
            state: AdapterState::default(),
            quantized: None,
        }
    }

    /// A bias-free layer over a frozen quantized base (QLoRA), on `device`.
    pub(crate) fn quantized(weight: QuantizedWeight, device: &burn::tensor::Device) -> Self {
        let placeholder = Tensor::<2>::zeros([1, 1], device);
        LoraLinear {
            weight: Param::from_tensor(placeholder).set_require_grad(false),
            bias: None,
            adapters: Vec::new(),
            state: AdapterState::default(),
            quantized: Some(Arc::new(weight)),
        }
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match &self.quantized {
            Some(q) => {
                let [out, input] = q.shape();
                [input, out]
            }
            None => self.weight.lazy_shape().dims(),
        }
    }

    /// The quantized base weight, for a QLoRA layer.
    pub fn quantized_weight(&self) -> Option<&QuantizedWeight> {
        self.quantized.as_deref()
    }

    /// Bytes the frozen base weight (and bias) occupy: the blocks for a quantized layer,
    /// 4 per f32 weight otherwise.
    pub fn base_bytes(&self) -> usize {
        let bias = self
            .bias
            .as_ref()
            .map_or(0, |b| b.lazy_shape().num_elements() * 4);
        bias + match &self.quantized {
            Some(q) => q.resident_bytes(),
            None => self.weight.lazy_shape().num_elements() * self.weight.val().dtype().size(),
        }
    }

    /// The adapter applied now: the active one, unless adapters are disabled or it is merged.
    fn applied(&self) -> Option<&LoraWeights> {
        match self.state {
            AdapterState {
                active: Some(slot),
                disabled: false,
                merged: None,
            } => self.adapters.get(slot).and_then(Option::as_ref),
            _ => None,
        }
    }

    /// The output for `x` `[..., in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_with_norm(x, None)
    }

    /// The output for a flat batch `x` `[1, tokens, in]` whose rows run with the adapters
    /// `routing` names (LoRA only; the active adapter is ignored), or [`forward`](Self::forward)
    /// without routing.
    pub fn forward_routed(&self, x: Tensor<3>, routing: Option<&AdapterRouting>) -> Tensor<3> {
        let Some(routing) = routing else {
            return self.forward(x);
        };
        let [batch, count, input] = x.dims();
        let base = self.base_forward(x.clone());
        let output = base.dims()[2];
        let mut out = base.reshape([batch * count, output]);
        let rows = x.reshape([batch * count, input]);
        for (slot, selected) in &routing.groups {
            let Some(Some(adapter)) = self.adapters.get(*slot) else {
                continue; // this adapter does not target this layer
            };
            // Batch invariance: the CPU matmul sums a lone row in another order than two or
            // more, so a lone row goes through with its twin and one result is kept.
            let lone = selected.dims()[0] == 1;
            let gathered = if lone {
                Tensor::cat(vec![selected.clone(), selected.clone()], 0)
            } else {
                selected.clone()
            };
            let mut update = linear(
                linear(rows.clone().select(0, gathered), adapter.a.val(), None),
                adapter.b.val(),
                None,
            )
            .mul_scalar(adapter.scaling);
            if lone {
                update = update.narrow(0, 0, 1);
            }
            out = out.select_assign(0, selected.clone(), update, IndexingUpdateOp::Add);
        }
        out.reshape([batch, count, output])
    }

    /// `x·W + b`, without adapters.
    fn base_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(Param::val);
        match &self.quantized {
            Some(quantized) => match bias {
                Some(bias) => quantized_linear(x, quantized) + along_last::<D>(bias),
                None => quantized_linear(x, quantized),
            },
            None => linear(x, self.weight.val(), bias),
        }
    }

    /// [`LoraLinear::forward`], with DoRA's column norms given (a constant) instead of
    /// computed from the current weights: the function whose gradient the detached norm
    /// gives, which finite differences can check.
    fn forward_with_norm<const D: usize>(
        &self,
        x: Tensor<D>,
        norm: Option<Tensor<1>>,
    ) -> Tensor<D> {
        let weight = self.weight.val();
        // QLoRA: the blocks, a tile at a time (LoRA only: DoRA and merging need the dense
        // weight and are refused for a quantized layer).
        let base = self.base_forward(x.clone());
        let Some(adapter) = self.applied() else {
            return base;
        };
        // The adapter's input; `x` itself unless dropout is on (training, p > 0).
        let dropped = adapter.dropout.forward(x);
        let update = linear(
            linear(dropped.clone(), adapter.a.val(), None),
            adapter.b.val(),
            None,
        )
        .mul_scalar(adapter.scaling);
        let Some(magnitude) = &adapter.magnitude else {
            return base + update;
        };
        let norm = norm.unwrap_or_else(|| column_norms(&weight, adapter).detach());
        let factor = magnitude.val() / norm;
        // PEFT's DoRA: the rescaling term is recomputed on the dropped input, without the
        // bias, when dropout is on; without dropout it is `(m/n − 1)·(x·W)`.
        base + along_last::<D>(factor.clone() - 1.0) * linear(dropped, weight, None)
            + along_last::<D>(factor) * update
    }

    /// This layer with one more adapter slot: `Some` fresh weights (`A` Kaiming-uniform as
    /// PEFT initialises it, `B` zero, so the output is unchanged; DoRA's magnitude the column
    /// norms of `W`) or `None` where the adapter does not target this layer. The base is
    /// frozen.
    pub(crate) fn with_slot(self, init: Option<AdapterInit>, rng: &mut SplitMix64) -> Self {
        let slot = init.map(|init| {
            let [input, output] = self.dims();
            // PEFT: kaiming_uniform_(lora_A.weight, a=sqrt(5)), whose bound is
            // gain·sqrt(3/fan_in) = sqrt(1/3)·sqrt(3/in) = 1/sqrt(in).
            let a = uniform(input * init.r, 1.0 / (input as f64).sqrt(), rng);
            let b = if init.zero_b {
                vec![0.0; init.r * output]
            } else {
                // PEFT with `init_lora_weights=False` keeps nn.Linear's initialisation of
                // lora_B [out, r]: the same Kaiming-uniform, fan_in = r.
                uniform(init.r * output, 1.0 / (init.r as f64).sqrt(), rng)
            };
            let values = SlotValues {
                a: self.tensor2(a, [input, init.r]),
                b: self.tensor2(b, [init.r, output]),
                magnitude: None,
            };
            (init, values)
        });
        self.with_slot_values(slot)
    }

    /// This layer with one more adapter slot holding `values` (`None` where the adapter does
    /// not target this layer), frozen. A DoRA slot without a magnitude starts from the column
    /// norms of `W + s·A·B` (PEFT's `update_layer` with `use_dora`), so that the output is
    /// unchanged by it.
    pub(crate) fn with_slot_values(self, slot: Option<(AdapterInit, SlotValues)>) -> Self {
        let mut layer = self.frozen();
        let weights = slot.map(|(init, values)| {
            let SlotValues { a, b, magnitude } = values;
            let magnitude = match magnitude {
                Some(m) => Some(m),
                None if init.dora => {
                    let [_, output] = layer.dims();
                    let update = a.clone().matmul(b.clone()).mul_scalar(init.scaling);
                    let norms = (layer.weight.val() + update)
                        .powf_scalar(2.0)
                        .sum_dim(0)
                        .sqrt()
                        .reshape([output]);
                    Some(norms.detach())
                }
                None => None,
            };
            LoraWeights {
                a: Param::from_tensor(a),
                b: Param::from_tensor(b),
                magnitude: magnitude.map(Param::from_tensor),
                dropout: DropoutConfig::new(init.dropout).init(),
                scaling: init.scaling,
                merged_norm: None,
            }
        });
        layer.adapters.push(weights);
        layer
    }

    /// `values` as a tensor of `shape` on this layer's device, in its dtype.
    pub(crate) fn tensor2(&self, values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        let weight = self.weight.val();
        Tensor::from_data(
            TensorData::new(values, shape),
            (&weight.device(), weight.dtype()),
        )
    }

    /// This layer without adapter slot `slot` (the later slots move down one).
    pub(crate) fn without_slot(mut self, slot: usize) -> Self {
        if slot < self.adapters.len() {
            self.adapters.remove(slot);
        }
        self
    }

    /// The active adapter folded into `W` (nothing to do without one).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when an adapter is merged already.
    pub(crate) fn merged(mut self) -> Result<Self> {
        let Some(slot) = self.state.active else {
            return Ok(self);
        };
        if self.quantized.is_some() {
            return Err(Error::InvalidConfig {
                reason: "merging into a quantized base (QLoRA) would requantize it: load the \
                         base dense to merge"
                    .into(),
            });
        }
        if self.state.merged.is_some() {
            return Err(Error::InvalidConfig {
                reason: "an adapter is merged already: unmerge it first".into(),
            });
        }
        let weight = self.weight.val();
        let Some(adapter) = self.adapters.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(self);
        };
        let updated = weight.clone() + delta(adapter);
        let merged = match &adapter.magnitude {
            None => updated,
            Some(magnitude) => {
                let norm = column_norms(&weight, adapter).detach();
                let factor = (magnitude.val().detach() / norm.clone()).unsqueeze_dim::<2>(0);
                adapter.merged_norm = Some(norm);
                updated * factor
            }
        };
        self.state.merged = Some(slot);
        Ok(self.with_weight(merged))
    }

    /// The merged adapter taken out of `W` again (nothing to do when none is merged).
    pub(crate) fn unmerged(mut self) -> Self {
        let Some(slot) = self.state.merged.take() else {
            return self;
        };
        let weight = self.weight.val();
        let Some(adapter) = self.adapters.get_mut(slot).and_then(Option::as_mut) else {
            return self;
        };
        let restored = match (&adapter.magnitude, adapter.merged_norm.take()) {
            (Some(magnitude), Some(norm)) => {
                let factor = (magnitude.val().detach() / norm).unsqueeze_dim::<2>(0);
                weight / factor - delta(adapter)
            }
            _ => weight - delta(adapter),
        };
        self.with_weight(restored)
    }

    /// This layer with `W`'s values replaced (same parameter id), frozen.
    fn with_weight(mut self, values: Tensor<2>) -> Self {
        let values = values.detach();
        self.weight = self.weight.map(|_| values).set_require_grad(false);
        self
    }

    /// This layer with its base weight and bias frozen: adapters train, the base does not.
    pub(crate) fn frozen(mut self) -> Self {
        self.weight = self.weight.set_require_grad(false);
        self.bias = self.bias.map(|bias| bias.set_require_grad(false));
        self
    }
}

/// `n` values uniform in `±bound`.
fn uniform(n: usize, bound: f64, rng: &mut SplitMix64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
}

/// `s·A·B` `[in, out]`, detached.
fn delta(adapter: &LoraWeights) -> Tensor<2> {
    adapter
        .a
        .val()
        .matmul(adapter.b.val())
        .mul_scalar(adapter.scaling)
        .detach()
}

/// The norm of each column (output) of `W + s·A·B`, `[out]`.
fn column_norms(weight: &Tensor<2>, adapter: &LoraWeights) -> Tensor<1> {
    let [_, output] = weight.dims();
    (weight.clone() + delta(adapter))
        .powf_scalar(2.0)
        .sum_dim(0)
        .sqrt()
        .reshape([output])
}

/// `v` `[out]` shaped `[1, ..., 1, out]`, to scale a `[..., out]` tensor along its last
/// dimension.
fn along_last<const D: usize>(v: Tensor<1>) -> Tensor<D> {
    let [out] = v.dims();
    let mut shape = [1usize; D];
    shape[D - 1] = out;
    v.reshape(shape)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Device};

    use super::*;

    const IN: usize = 5;
    const OUT: usize = 3;

    fn tensor2(values: &[f64], shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), shape),
            (device, DType::F64),
        )
    }

    /// A layer with one adapter of rank 2 and a non-zero `B`, in f64 on an autodiff device.
    fn layer(dora: bool, device: &Device) -> LoraLinear {
        let mut rng = SplitMix64::new(3);
        let weight: Vec<f64> = (0..IN * OUT).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let bias = Tensor::<1>::from_data(
            TensorData::new(vec![0.1, -0.2, 0.3], [OUT]),
            (device, DType::F64),
        );
        let init = AdapterInit {
            r: 2,
            scaling: 1.5,
            dropout: 0.0,
            dora,
            zero_b: false,
        };
        let mut layer = LoraLinear::new(tensor2(&weight, [IN, OUT], device), Some(bias))
            .with_slot(Some(init), &mut rng);
        layer.state.active = Some(0);
        layer
    }

    /// `sum(forward(x) · w)` for fixed `x` `[2, 4, IN]` and `w`, DoRA's norm `norm` when given.
    fn loss(layer: &LoraLinear, norm: Option<Tensor<1>>, device: &Device) -> Tensor<1> {
        let x: Vec<f64> = (0..2 * 4 * IN)
            .map(|i| ((i * 13 % 17) as f64 - 8.0) / 8.0)
            .collect();
        let w: Vec<f64> = (0..2 * 4 * OUT)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
            .collect();
        let x = Tensor::<3>::from_data(TensorData::new(x, [2, 4, IN]), (device, DType::F64));
        let w = Tensor::<3>::from_data(TensorData::new(w, [2, 4, OUT]), (device, DType::F64));
        (layer.forward_with_norm(x, norm) * w).sum()
    }

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
        tensor
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap()
    }

    /// Issue 22, item 2: the gradients of `A`, `B` and DoRA's magnitude against central
    /// finite differences in f64. The norm is detached (the paper's §4.3, as PEFT), so its
    /// gradient is not taken: the differences hold it at its value at the point of
    /// evaluation, which is the function that gradient is of.
    #[test]
    fn adapter_gradients_match_finite_differences_in_f64() {
        let device = Device::flex().autodiff();
        for dora in [false, true] {
            let layer = layer(dora, &device);
            let grads = loss(&layer, None, &device).backward();
            let adapter = layer.adapters[0].as_ref().unwrap();
            // What the forward detached: the norms at this point, held fixed while probing.
            let norm = column_norms(&layer.weight.val(), adapter).detach();
            let mut params: Vec<(&str, Tensor<2>)> =
                vec![("a", adapter.a.val()), ("b", adapter.b.val())];
            if let Some(m) = &adapter.magnitude {
                params.push(("m", m.val().unsqueeze_dim::<2>(0)));
            }
            for (name, param) in params {
                let analytic = values(match name {
                    "a" => adapter.a.val().grad(&grads).unwrap().reshape([-1]),
                    "b" => adapter.b.val().grad(&grads).unwrap().reshape([-1]),
                    _ => adapter
                        .magnitude
                        .as_ref()
                        .unwrap()
                        .val()
                        .grad(&grads)
                        .unwrap(),
                });
                let base = values(param.clone().detach().reshape([-1]));
                let shape = param.dims();
                for i in 0..base.len() {
                    let at = |delta: f64| {
                        let mut moved = base.clone();
                        moved[i] += delta;
                        let mut probe = layer.clone();
                        let slot = probe.adapters[0].as_mut().unwrap();
                        let t = tensor2(&moved, shape, &device);
                        match name {
                            "a" => slot.a = Param::from_tensor(t),
                            "b" => slot.b = Param::from_tensor(t),
                            _ => slot.magnitude = Some(Param::from_tensor(t.reshape([shape[1]]))),
                        }
                        values(loss(&probe, Some(norm.clone()), &device))[0]
                    };
                    let h = 1e-6;
                    let numeric = (at(h) - at(-h)) / (2.0 * h);
                    let exact = analytic[i];
                    assert!(
                        (numeric - exact).abs() < 1e-6 * (1.0 + exact.abs()),
                        "dora {dora}, {name}[{i}]: autodiff {exact}, finite differences {numeric}"
                    );
                }
            }
        }
    }
}
