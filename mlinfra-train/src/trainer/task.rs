//! [`Task`]: what the trainer computes on a batch; [`Classification`] for classifiers.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_loader::TensorBatch;

use crate::rng::SplitMix64;
use crate::{Error, Result};

/// What a model is trained and evaluated on: turns a loader batch into a loss (training) or
/// into sums of loss and correct predictions (evaluation).
pub trait Task<M> {
    /// The mean loss of `model` over `batch`, with its tensors created on `device` (an
    /// autodiff device), and the number of samples it averages over. `rng` is this rank's
    /// generator (augmentation, dropout masks); it is checkpointed, so a resumed run draws the
    /// same numbers.
    ///
    /// # Errors
    ///
    /// A batch without the columns the task needs, or with the wrong types.
    fn loss(
        &self,
        model: &M,
        batch: TensorBatch,
        device: &Device,
        rng: &mut SplitMix64,
    ) -> Result<(Tensor<1>, u64)>;

    /// Sums over `batch` for evaluation; `model` is in validation mode (no autodiff).
    ///
    /// # Errors
    ///
    /// As [`Task::loss`].
    fn evaluate(&self, model: &M, batch: TensorBatch, device: &Device) -> Result<EvalSums>;

    /// The task's own measurements over this rank's micro-batches since the last call (DPO's
    /// rewards, say), by name; the trainer calls it after every step and adds them to that
    /// step's `train` metrics record. The default has none.
    fn step_metrics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
}

/// Sums of an evaluation over some samples; add them up over batches and ranks.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct EvalSums {
    /// Sum of per-sample losses.
    pub loss_sum: f64,
    /// Samples predicted correctly.
    pub correct: u64,
    /// Samples seen.
    pub samples: u64,
}

impl EvalSums {
    /// Mean loss per sample (NaN with no samples).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.samples as f64
    }

    /// Fraction predicted correctly (NaN with no samples).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.samples as f64
    }
}

/// A model that maps `[batch, features]` to class logits `[batch, classes]`.
pub trait Classifier: Module {
    /// The logits.
    fn logits(&self, input: Tensor<2>) -> Tensor<2>;
}

impl Classifier for crate::models::Mlp {
    fn logits(&self, input: Tensor<2>) -> Tensor<2> {
        self.forward(input)
    }
}

/// Classification with cross-entropy: the batch's `input` column (`[batch, features]` floats)
/// and `label` column (integer class ids), with optional Gaussian input noise as augmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// The features column.
    pub input: String,
    /// The class id column.
    pub label: String,
    /// Standard deviation of Gaussian noise added to the features in training; 0 for none.
    pub input_noise: f32,
}

impl Classification {
    /// Classification of column `input` by column `label`, without noise.
    pub fn new(input: impl Into<String>, label: impl Into<String>) -> Self {
        Classification {
            input: input.into(),
            label: label.into(),
            input_noise: 0.0,
        }
    }

    fn tensors(
        &self,
        mut batch: TensorBatch,
        device: &Device,
        noise: Option<&mut SplitMix64>,
    ) -> Result<(Tensor<2>, Tensor<1, Int>, u64)> {
        let names: Vec<String> = batch.names().map(str::to_owned).collect();
        let missing = |column: &str| Error::InvalidConfig {
            reason: format!("the batch has no column `{column}` (it has {names:?})").into(),
        };
        let input = batch
            .remove(&self.input)
            .ok_or_else(|| missing(&self.input))?;
        let label = batch
            .remove(&self.label)
            .ok_or_else(|| missing(&self.label))?;
        let dims = input.shape().to_vec();
        if dims.len() != 2 || label.shape().to_vec() != [dims[0]] {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "`{}` must be [batch, features] and `{}` [batch], got {dims:?} and {:?}",
                    self.input,
                    self.label,
                    label.shape().to_vec()
                )
                .into(),
            });
        }
        let input = match noise {
            Some(rng) if self.input_noise > 0.0 => {
                let mut values = input.as_slice::<f32>().map(<[f32]>::to_vec).map_err(|e| {
                    Error::InvalidConfig {
                        reason: format!("`{}` is not a float column: {e:?}", self.input).into(),
                    }
                })?;
                for value in &mut values {
                    *value += self.input_noise * rng.normal() as f32;
                }
                TensorData::new(values, dims.clone())
            }
            _ => input,
        };
        let samples = dims[0] as u64;
        let x = Tensor::<2>::from_data(input, device);
        let y = Tensor::<1, Int>::from_data(label, device);
        Ok((x, y, samples))
    }
}

impl<M: Classifier> Task<M> for Classification {
    fn loss(
        &self,
        model: &M,
        batch: TensorBatch,
        device: &Device,
        rng: &mut SplitMix64,
    ) -> Result<(Tensor<1>, u64)> {
        let (x, y, samples) = self.tensors(batch, device, Some(rng))?;
        let logits = model.logits(x);
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, y);
        Ok((loss, samples))
    }

    fn evaluate(&self, model: &M, batch: TensorBatch, device: &Device) -> Result<EvalSums> {
        let (x, y, samples) = self.tensors(batch, device, None)?;
        let logits = model.logits(x);
        let predicted = logits.clone().argmax(1).reshape([samples as usize]);
        let correct = predicted.equal(y.clone()).int().sum();
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, y);
        let read = |e: burn::tensor::TensorReadError| Error::Tensor {
            reason: format!("reading evaluation results: {e:?}").into(),
        };
        Ok(EvalSums {
            loss_sum: f64::from(loss.try_into_scalar::<f32>().map_err(read)?) * samples as f64,
            correct: correct.try_into_scalar::<i64>().map_err(read)? as u64,
            samples,
        })
    }
}
