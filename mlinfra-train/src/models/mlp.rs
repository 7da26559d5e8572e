//! [`Mlp`]: a multilayer perceptron classifier (linear layers with ReLU between).

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{DType, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;
use crate::{Error, ParamLayout, Result};

/// Shape and initialisation of an [`Mlp`].
///
/// ```
/// use burn::module::Module;
/// use mlinfra_train::models::MlpConfig;
///
/// let config: MlpConfig =
///     serde_json::from_str(r#"{"input": 64, "hidden": [64], "classes": 10, "seed": 0}"#)?;
/// let model = config.init(&burn::tensor::Device::flex())?;
/// assert_eq!(model.num_params(), 64 * 64 + 64 + 64 * 10 + 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Features per sample.
    pub input: usize,
    /// Widths of the hidden layers, in order (empty: a linear classifier).
    pub hidden: Vec<usize>,
    /// Output classes (logits).
    pub classes: usize,
    /// Seed of the initial weights: PyTorch's `nn.Linear` default, uniform in
    /// `±1/sqrt(fan_in)` for weights and biases, drawn from SplitMix64 in parameter order.
    pub seed: u64,
}

/// A multilayer perceptron: `Linear → ReLU → … → Linear`, producing logits.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl MlpConfig {
    /// The model on `device`, initialised from [`MlpConfig::seed`]: the same weights on every
    /// rank and every run.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero width.
    pub fn init(&self, device: &Device) -> Result<Mlp> {
        let widths: Vec<usize> = std::iter::once(self.input)
            .chain(self.hidden.iter().copied())
            .chain(std::iter::once(self.classes))
            .collect();
        if let Some(position) = widths.iter().position(|&w| w == 0) {
            return Err(Error::InvalidConfig {
                reason: format!("MLP layer width {position} is 0 (widths {widths:?})").into(),
            });
        }
        let layers = widths
            .windows(2)
            .map(|pair| {
                LinearConfig::new(pair[0], pair[1])
                    .with_initializer(Initializer::Zeros)
                    .init(device)
            })
            .collect();
        let model = Mlp { layers };
        let layout = ParamLayout::of(&model)?;
        let mut rng = SplitMix64::new(self.seed);
        let mut values = vec![0.0f32; layout.len()];
        for slot in layout.slots() {
            // Linear weights are [fan_in, fan_out] in burn; a bias belongs to the layer whose
            // weight precedes it, so its fan-in is that weight's first dimension.
            let fan_in = layer_fan_in(&layout, &slot.path);
            let bound = 1.0 / (fan_in as f64).sqrt();
            for value in &mut values[slot.range()] {
                *value = rng.uniform(-bound, bound) as f32;
            }
        }
        layout.load(model, &values)
    }
}

/// The fan-in of the layer a parameter path (`layers.2.weight`, `layers.2.bias`) belongs to.
fn layer_fan_in(layout: &ParamLayout, path: &str) -> usize {
    let layer = path.rsplit_once('.').map_or(path, |(layer, _)| layer);
    layout
        .slot(&format!("{layer}.weight"))
        .map_or(1, |weight| weight.shape[0])
}

impl Mlp {
    /// Logits `[batch, classes]` (fp32) for inputs `[batch, input]`, computed in the dtype of
    /// the weights ([`crate::Precision`]).
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        // Mixed precision: compute in the weights' dtype, return fp32 logits so the loss and
        // its softmax run in full precision (as PyTorch autocast does).
        let dtype = self.layers[0].weight.val().dtype();
        let input = if input.dtype() == dtype {
            input
        } else {
            input.cast(dtype)
        };
        let logits = self.layers.iter().enumerate().fold(input, |x, (i, layer)| {
            let y = layer.forward(x);
            if i < last { relu(y) } else { y }
        });
        if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.cast(DType::F32)
        }
    }

    /// Mean cross-entropy of the logits for `input` against `labels` `[batch]`.
    pub fn loss(&self, input: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
        let logits = self.forward(input);
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, labels)
    }
}
