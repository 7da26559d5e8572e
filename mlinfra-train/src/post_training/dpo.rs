//! Direct preference optimisation (Rafailov et al. 2023) as TRL's `DPOTrainer` computes it
//! with its default sigmoid loss.
//!
//! For a prompt `x` with a chosen completion `y_w` and a rejected one `y_l`, with `π` the
//! policy (the model with its adapter) and `π_ref` the reference (the same model with its
//! adapters disabled, so no second copy of the weights exists; or log-probabilities
//! precomputed into the data), and `log π(y|x)` the sum of the completion tokens' log-probs:
//!
//! ```text
//! r_w = β (log π(y_w|x) − log π_ref(y_w|x))        rewards/chosen
//! r_l = β (log π(y_l|x) − log π_ref(y_l|x))        rewards/rejected
//! loss = −log σ(r_w − r_l)                          averaged over pairs
//! ```
//!
//! with `β` = [`DEFAULT_BETA`] unless set. At the start of training, with the adapter's `B` at
//! zero, the policy is the reference and the loss is `ln 2`.
//!
//! # Data
//!
//! A batch holds, for `chosen` and `rejected` alike (column names from [`Dpo::new`]), the
//! token ids of prompt plus completion padded by mlinfra-loader's [`Pad`] (`{c}` and its bool
//! `{c}_mask`), and the completion mask `{c}_completion`: integers, 1 on the completion's
//! tokens, padded with 0 ([`preference_batch`] writes such columns). Optional
//! `ref_{c}_logps` (f32 per pair) columns replace the reference forward passes (TRL's
//! `precompute_ref_log_probs`).
//!
//! [`Pad`]: mlinfra_loader::Pad

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int8Builder, Int32Builder, ListBuilder, RecordBatch};
use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_data::chat::{ChatTemplate, Message};
use mlinfra_data::tokenizer::Tokenizer;
use mlinfra_loader::{Pad, TensorBatch, Tensors};

use super::{integers, take_column};
use crate::models::{Llama, PackedRows};
use crate::rng::SplitMix64;
use crate::trainer::{EvalSums, Task};
use crate::{Error, Result};

/// TRL's default `beta`.
pub const DEFAULT_BETA: f64 = 0.1;

/// The DPO task; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Dpo {
    beta: f64,
    chosen: String,
    rejected: String,
    /// What this rank's micro-batches measured since the trainer last asked.
    sums: Arc<Mutex<DpoSums>>,
}

/// Sums of DPO's per-pair quantities over some pairs; [`DpoSums::metrics`] gives the means
/// under TRL's names.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DpoSums {
    /// Pairs summed over.
    pub pairs: u64,
    /// Sum of the losses.
    pub loss: f64,
    /// Sum of `r_w`.
    pub reward_chosen: f64,
    /// Sum of `r_l`.
    pub reward_rejected: f64,
    /// Pairs with `r_w > r_l`.
    pub correct: u64,
    /// Sum of `log π(y_w|x)`.
    pub logps_chosen: f64,
    /// Sum of `log π(y_l|x)`.
    pub logps_rejected: f64,
}

impl DpoSums {
    /// Adds `other`'s pairs to these.
    pub fn add(&mut self, other: &DpoSums) {
        self.pairs += other.pairs;
        self.loss += other.loss;
        self.reward_chosen += other.reward_chosen;
        self.reward_rejected += other.reward_rejected;
        self.correct += other.correct;
        self.logps_chosen += other.logps_chosen;
        self.logps_rejected += other.logps_rejected;
    }

    /// The means, named as TRL logs them: `rewards/chosen`, `rewards/rejected`,
    /// `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected` (and `loss`).
    /// Empty without pairs.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        if self.pairs == 0 {
            return Vec::new();
        }
        let n = self.pairs as f64;
        [
            ("loss", self.loss / n),
            ("rewards/chosen", self.reward_chosen / n),
            ("rewards/rejected", self.reward_rejected / n),
            ("rewards/accuracies", self.correct as f64 / n),
            (
                "rewards/margins",
                (self.reward_chosen - self.reward_rejected) / n,
            ),
            ("logps/chosen", self.logps_chosen / n),
            ("logps/rejected", self.logps_rejected / n),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// `rewards/accuracies`: the share of pairs whose chosen completion earns the higher
    /// reward (NaN without pairs).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.pairs as f64
    }
}

/// One side (chosen or rejected) of a batch of pairs.
struct Side {
    rows: PackedRows,
    /// Cells whose logits score a completion token, and which pair each belongs to.
    cells: Vec<usize>,
    owners: Vec<usize>,
    targets: Vec<i64>,
    reference: Option<Vec<f32>>,
}

impl Dpo {
    /// DPO with `beta` on the pairs in columns `chosen` and `rejected` (see the
    /// [module docs](self) for the columns each implies).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a `beta` that is not finite and positive.
    pub fn new(beta: f64, chosen: impl Into<String>, rejected: impl Into<String>) -> Result<Self> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(Error::InvalidConfig {
                reason: format!("DPO beta must be finite and positive, got {beta}").into(),
            });
        }
        Ok(Dpo {
            beta,
            chosen: chosen.into(),
            rejected: rejected.into(),
            sums: Arc::default(),
        })
    }

    /// The collate a loader of [`preference_batch`] rows needs for this task: both sides'
    /// token ids and completion masks, each padded with 0 to the batch's longest (the ids get
    /// their `{c}_mask` columns from the padding).
    pub fn collate(&self) -> Tensors {
        let pad = Pad::new(0);
        let mut collate = Tensors::new();
        for side in [&self.chosen, &self.rejected] {
            collate = collate
                .pad(side.as_str(), pad)
                .pad(format!("{side}_completion"), pad);
        }
        collate
    }

    /// `beta`.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The sums of the micro-batches computed since the last call, and resets them.
    pub fn take_sums(&self) -> DpoSums {
        std::mem::take(&mut *self.sums.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The per-pair losses `[pairs]` of `batch` under `model`, with their sums.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for missing or misshapen columns; [`Error::InvalidInput`] for
    /// a pair with an empty completion.
    pub fn pair_losses(
        &self,
        model: &Llama,
        mut batch: TensorBatch,
    ) -> Result<(Tensor<1>, DpoSums)> {
        let chosen = self.side(&mut batch, &self.chosen)?;
        let rejected = self.side(&mut batch, &self.rejected)?;
        if chosen.rows.rows != rejected.rows.rows {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "`{}` has {} pairs, `{}` {}",
                    self.chosen, chosen.rows.rows, self.rejected, rejected.rows.rows
                )
                .into(),
            });
        }
        let pairs = chosen.rows.rows;
        let policy_w = sequence_logps(model, &chosen)?;
        let policy_l = sequence_logps(model, &rejected)?;
        let device = policy_w.device();
        let reference = |side: &Side| -> Result<Tensor<1>> {
            match &side.reference {
                Some(values) => Ok(Tensor::<1>::from_data(
                    TensorData::new(values.clone(), [values.len()]),
                    (&device, policy_w.dtype()),
                )),
                // The same weights with the adapter switched off: no second model.
                None => {
                    Ok(sequence_logps(&model.clone().with_adapters_enabled(false), side)?.detach())
                }
            }
        };
        let (reference_w, reference_l) = (reference(&chosen)?, reference(&rejected)?);
        let reward_w = (policy_w.clone() - reference_w).mul_scalar(self.beta);
        let reward_l = (policy_l.clone() - reference_l).mul_scalar(self.beta);
        let losses = log_sigmoid(reward_w.clone() - reward_l.clone()).neg();
        let host = |t: &Tensor<1>| -> Result<Vec<f64>> {
            t.clone()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .map_err(|e| Error::Tensor {
                    reason: format!("reading DPO values back: {e:?}").into(),
                })
        };
        let (w, l) = (host(&reward_w)?, host(&reward_l)?);
        let sums = DpoSums {
            pairs: pairs as u64,
            loss: host(&losses)?.iter().sum(),
            reward_chosen: w.iter().sum(),
            reward_rejected: l.iter().sum(),
            correct: w.iter().zip(&l).filter(|(w, l)| w > l).count() as u64,
            logps_chosen: host(&policy_w)?.iter().sum(),
            logps_rejected: host(&policy_l)?.iter().sum(),
        };
        Ok((losses, sums))
    }

    /// `log π(y|x)` of each pair's chosen and rejected completions under `model`: what TRL's
    /// `precompute_ref_log_probs` stores as `ref_chosen_logps` / `ref_rejected_logps` (columns
    /// `ref_{c}_logps` here) when the reference is a model other than the policy with its
    /// adapters disabled (the SFT model, for DPO after SFT).
    ///
    /// # Errors
    ///
    /// As [`Dpo::pair_losses`].
    pub fn completion_logps(
        &self,
        model: &Llama,
        mut batch: TensorBatch,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut read = |name: &str| -> Result<Vec<f32>> {
            let side = self.side(&mut batch, name)?;
            sequence_logps(model, &side)?
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| Error::Tensor {
                    reason: format!("reading log-probs back: {e:?}").into(),
                })
        };
        let chosen = read(&self.chosen.clone())?;
        let rejected = read(&self.rejected.clone())?;
        Ok((chosen, rejected))
    }

    /// One side's rows, scored cells and optional reference log-probs.
    fn side(&self, batch: &mut TensorBatch, name: &str) -> Result<Side> {
        let ids = take_column(batch, name)?;
        let shape = ids.shape().to_vec();
        let [pairs, len] = shape[..] else {
            return Err(Error::InvalidConfig {
                reason: format!("`{name}` must be [pairs, len], got {shape:?}").into(),
            });
        };
        let attention = take_column(batch, &format!("{name}_mask"))?;
        let completion = take_column(batch, &format!("{name}_completion"))?;
        if attention.shape().to_vec() != shape || completion.shape().to_vec() != shape {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "`{name}_mask` {:?} and `{name}_completion` {:?} must have `{name}`'s shape \
                     {shape:?}",
                    attention.shape(),
                    completion.shape()
                )
                .into(),
            });
        }
        let attention = attention.as_bytes().to_vec();
        let completion = integers(completion, &format!("{name}_completion"))?;
        let tokens = integers(ids, name)?
            .into_iter()
            .zip(&attention)
            .map(|(t, &real)| {
                // Padding gets a valid id; it is never attended to nor scored.
                let t = if real != 0 { t } else { 0 };
                u32::try_from(t).map_err(|_| Error::InvalidConfig {
                    reason: format!("`{name}`: token {t} is out of range").into(),
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        let rows = PackedRows {
            rows: pairs,
            seq_len: len,
            tokens,
            positions: (0..pairs * len).map(|cell| cell % len).collect(),
            segments: attention.iter().map(|&real| u32::from(real != 0)).collect(),
        };
        let (mut cells, mut owners, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let before = cells.len();
            for cell in pair * len..(pair + 1) * len - 1 {
                if rows.continues(cell) && completion[cell + 1] != 0 {
                    cells.push(cell);
                    owners.push(pair);
                    targets.push(i64::from(rows.tokens[cell + 1]));
                }
            }
            if cells.len() == before {
                return Err(Error::InvalidInput {
                    operation: "Dpo",
                    reason: format!(
                        "pair {pair} of the batch has an empty `{name}` completion (no token \
                         after the prompt is marked in `{name}_completion`)"
                    )
                    .into(),
                });
            }
        }
        let reference = match batch.remove(&format!("ref_{name}_logps")) {
            Some(data) => Some(
                data.convert::<f32>()
                    .try_into_vec::<f32>()
                    .ok()
                    .filter(|v| v.len() == pairs)
                    .ok_or_else(|| Error::InvalidConfig {
                        reason: format!("`ref_{name}_logps` must be {pairs} floats").into(),
                    })?,
            ),
            None => None,
        };
        Ok(Side {
            rows,
            cells,
            owners,
            targets,
            reference,
        })
    }
}

/// `log π(completion | prompt)` per pair, `[pairs]`: the log-probs of the completion tokens,
/// summed per pair (a one-hot `[pairs, cells]` matrix times the per-cell log-probs).
fn sequence_logps(model: &Llama, side: &Side) -> Result<Tensor<1>> {
    let logits = model.packed_logits(&side.rows, &side.cells)?;
    let device = logits.device();
    let count = side.cells.len();
    let targets =
        Tensor::<2, Int>::from_data(TensorData::new(side.targets.clone(), [count, 1]), &device);
    let logps = log_softmax(logits, 1).gather(1, targets); // [cells, 1]
    let pairs = side.rows.rows;
    let mut owner = vec![0f32; pairs * count];
    for (cell, &pair) in side.owners.iter().enumerate() {
        owner[pair * count + cell] = 1.0;
    }
    let owner = Tensor::<2>::from_data(
        TensorData::new(owner, [pairs, count]),
        (&device, logps.dtype()),
    );
    Ok(owner.matmul(logps).reshape([pairs]))
}

impl Task<Llama> for Dpo {
    fn loss(
        &self,
        model: &Llama,
        batch: TensorBatch,
        _device: &Device,
        _rng: &mut SplitMix64,
    ) -> Result<(Tensor<1>, u64)> {
        let (losses, sums) = self.pair_losses(model, batch)?;
        self.sums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&sums);
        Ok((losses.mean(), sums.pairs))
    }

    /// `loss_sum` and `samples` over pairs; `correct`: pairs whose chosen completion earns
    /// the higher reward (so `accuracy()` is `rewards/accuracies`).
    fn evaluate(&self, model: &Llama, batch: TensorBatch, _device: &Device) -> Result<EvalSums> {
        let (_, sums) = self.pair_losses(model, batch)?;
        Ok(EvalSums {
            loss_sum: sums.loss,
            correct: sums.correct,
            samples: sums.pairs,
        })
    }

    fn step_metrics(&self) -> Vec<(String, f64)> {
        self.take_sums()
            .metrics()
            .into_iter()
            .filter(|(name, _)| name != "loss")
            .collect()
    }
}

/// One preference: a conversation so far (ending with the user's turn) and two answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    /// The conversation before the answer.
    pub prompt: Vec<Message>,
    /// The preferred answer.
    pub chosen: String,
    /// The other answer.
    pub rejected: String,
}

/// Tokenizes `preferences` with `template` into the columns [`Dpo`] reads, named from
/// `chosen` and `rejected`: the ids of prompt plus answer (list of int32) and the completion
/// mask (`{c}_completion`, list of int8, 1 on the answer's tokens and the end of its turn).
///
/// # Errors
///
/// [`Error::InvalidInput`] naming the row for an empty answer (nothing to prefer);
/// [`Error::ModelFile`] from the template or tokenizer.
pub fn preference_batch(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    preferences: &[Preference],
    chosen: &str,
    rejected: &str,
) -> Result<RecordBatch> {
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for (name, pick) in [
        (
            chosen,
            (|p: &Preference| &p.chosen) as fn(&Preference) -> &String,
        ),
        (rejected, |p: &Preference| &p.rejected),
    ] {
        let mut ids = ListBuilder::new(Int32Builder::new());
        let mut masks = ListBuilder::new(Int8Builder::new());
        for (row, preference) in preferences.iter().enumerate() {
            let answer = pick(preference);
            if answer.trim().is_empty() {
                return Err(Error::InvalidInput {
                    operation: "preference_batch",
                    reason: format!("row {row}: the {name} completion is empty").into(),
                });
            }
            let mut messages = preference.prompt.clone();
            messages.push(Message::new("assistant", answer.clone()));
            let tokens = template.tokenize(tokenizer, &messages)?;
            for (&id, &mask) in tokens.ids.iter().zip(&tokens.assistant_mask) {
                let id = i32::try_from(id).map_err(|_| Error::InvalidInput {
                    operation: "preference_batch",
                    reason: format!("row {row}: token id {id} overflows int32").into(),
                })?;
                ids.values().append_value(id);
                masks.values().append_value(i8::from(mask));
            }
            ids.append(true);
            masks.append(true);
        }
        columns.push((name.to_owned(), Arc::new(ids.finish())));
        columns.push((format!("{name}_completion"), Arc::new(masks.finish())));
    }
    RecordBatch::try_from_iter(columns).map_err(|e| Error::InvalidInput {
        operation: "preference_batch",
        reason: format!("building the batch: {e}").into(),
    })
}
