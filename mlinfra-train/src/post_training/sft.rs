//! [`Sft`]: next-token cross-entropy on packed rows, on the tokens a loss mask selects.

use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_loader::TensorBatch;

use super::{integers, take_column};
use crate::models::{Llama, PackedRows};
use crate::rng::SplitMix64;
use crate::trainer::{EvalSums, Task};
use crate::{Error, Result};

/// Supervised fine-tuning of a [`Llama`] on batches packed by mlinfra-loader's
/// [`Pack`](mlinfra_loader::Pack) under the column name `column`: `column` (token ids),
/// `{column}_positions`, `{column}_segments` and `{column}_loss_mask`.
///
/// The loss is the mean cross-entropy of the next token over the scored tokens: those whose
/// loss mask is true and that continue a sequence (the first token of a sequence has nothing
/// before it in its segment). With the assistant mask from
/// [`ChatTemplate::tokenize`](mlinfra_data::chat::ChatTemplate::tokenize) that is TRL's
/// `assistant_only_loss`. Only the scored cells go through the output projection.
///
/// The weight of a batch in a step ([`Task::loss`]'s count) is its number of scored tokens,
/// so that a step's loss is the mean over all its scored tokens, as TRL computes it
/// (`num_items_in_batch`); the trainer's `samples` count these tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sft {
    column: String,
}

impl Sft {
    /// SFT on the packed column `column`.
    pub fn new(column: impl Into<String>) -> Self {
        Sft {
            column: column.into(),
        }
    }

    /// The packed rows of `batch`, the cells whose logits are scored, and the tokens they are
    /// scored against.
    pub fn scored(&self, mut batch: TensorBatch) -> Result<(PackedRows, Vec<usize>, Vec<i64>)> {
        let name = &self.column;
        let tokens = take_column(&mut batch, name)?;
        let shape = tokens.shape().to_vec();
        let [rows, seq_len] = shape[..] else {
            return Err(Error::InvalidConfig {
                reason: format!("`{name}` must be [rows, seq_len], got {shape:?}").into(),
            });
        };
        let column = |suffix: &str, batch: &mut TensorBatch| -> Result<Vec<i64>> {
            let full = format!("{name}_{suffix}");
            let data = take_column(batch, &full)?;
            if data.shape().to_vec() != shape {
                return Err(Error::InvalidConfig {
                    reason: format!("`{full}` has shape {:?}, `{name}` {shape:?}", data.shape())
                        .into(),
                });
            }
            integers(data, &full)
        };
        let positions = column("positions", &mut batch)?;
        let segments = column("segments", &mut batch)?;
        let mask_data = take_column(&mut batch, &format!("{name}_loss_mask"))?;
        let mask = mask_data.as_bytes().to_vec();
        if mask.len() != rows * seq_len {
            return Err(Error::InvalidConfig {
                reason: format!("`{name}_loss_mask` is not [rows, seq_len] bools").into(),
            });
        }
        let convert = |v: i64, what: &str| {
            u32::try_from(v).map_err(|_| Error::InvalidConfig {
                reason: format!("`{name}`: {what} {v} is out of range").into(),
            })
        };
        let rows = PackedRows {
            rows,
            seq_len,
            tokens: integers(tokens, name)?
                .into_iter()
                .map(|t| convert(t, "token"))
                .collect::<Result<_>>()?,
            positions: positions
                .into_iter()
                .map(|p| convert(p, "position").map(|p| p as usize))
                .collect::<Result<_>>()?,
            segments: segments
                .into_iter()
                .map(|s| convert(s, "segment"))
                .collect::<Result<_>>()?,
        };
        let cells: Vec<usize> = (0..rows.cells())
            .filter(|&cell| rows.continues(cell) && mask[cell + 1] != 0)
            .collect();
        let targets = cells
            .iter()
            .map(|&cell| i64::from(rows.tokens[cell + 1]))
            .collect();
        Ok((rows, cells, targets))
    }

    /// The mean loss over the scored tokens, their logits, and the tokens they are scored
    /// against (none when the batch scores nothing; the loss is then a zero).
    fn losses(
        &self,
        model: &Llama,
        batch: TensorBatch,
        device: &Device,
    ) -> Result<(Tensor<1>, Tensor<2>, Vec<i64>)> {
        let (rows, cells, targets) = self.scored(batch)?;
        if cells.is_empty() {
            // Nothing to learn from (every mask false): a zero that still depends on the
            // parameters, so the step's backward pass has a graph to walk.
            let first = rows.segments.iter().position(|&s| s != 0).unwrap_or(0);
            let logits = model.packed_logits(&rows, &[first])?;
            return Ok((logits.clone().sum().mul_scalar(0.0), logits, targets));
        }
        let logits = model.packed_logits(&rows, &cells)?;
        let count = targets.len();
        let targets_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [count]), device);
        let loss = crate::fused::cross_entropy(logits.clone(), targets_tensor);
        Ok((loss, logits, targets))
    }
}

impl Task<Llama> for Sft {
    fn loss(
        &self,
        model: &Llama,
        batch: TensorBatch,
        device: &Device,
        _rng: &mut SplitMix64,
    ) -> Result<(Tensor<1>, u64)> {
        let (loss, _, targets) = self.losses(model, batch, device)?;
        Ok((loss, targets.len() as u64))
    }

    fn evaluate(&self, model: &Llama, batch: TensorBatch, device: &Device) -> Result<EvalSums> {
        let (loss, logits, targets) = self.losses(model, batch, device)?;
        let samples = targets.len() as u64;
        if samples == 0 {
            return Ok(EvalSums::default());
        }
        let mean = loss.into_scalar::<f32>();
        let predicted: Vec<i64> = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| Error::Tensor {
                reason: format!("reading predictions: {e:?}").into(),
            })?;
        let correct = predicted
            .iter()
            .zip(&targets)
            .filter(|(p, t)| p == t)
            .count() as u64;
        Ok(EvalSums {
            loss_sum: f64::from(mean) * samples as f64,
            correct,
            samples,
        })
    }
}
