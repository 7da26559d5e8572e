//! [`DataParallel`]: one rank's optimizer step (documented on the type).

use burn::module::Module;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, Snapshot};
use crate::collective::{Collective, shard_range};
use crate::optim::{LrSchedule, OptimizerConfig, ShardOptimizer};
use crate::params::read_f32_into;
use crate::precision::{LossScaleState, LossScaler, LossScaling, Precision, cast_module};
use crate::{Error, ParamLayout, Result};

/// How optimizer state is spread over the ranks; see [`DataParallel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharding {
    /// Every rank holds the whole optimizer state (PyTorch DDP).
    #[default]
    Replicated,
    /// Each rank holds 1/N of the optimizer state and master weights (DeepSpeed ZeRO stage 1).
    Zero1,
    /// ZeRO-1, and gradients are reduce-scattered as each micro-batch is accumulated, so a
    /// rank also keeps only 1/N of the gradient sum (DeepSpeed ZeRO stage 2). Costs one
    /// reduce-scatter per micro-batch instead of one per step, and makes
    /// [`DataParallel::accumulate`] collective: every rank calls it equally often.
    Zero2,
}

impl Sharding {
    /// Whether optimizer state and master weights are split over the ranks (ZeRO-1 and up).
    pub fn is_sharded(self) -> bool {
        self != Sharding::Replicated
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The optimizer step just taken (0-based).
    pub step: u64,
    /// Samples the step averaged over, all ranks together.
    pub samples: u64,
    /// Global L2 norm of the averaged gradient, before clipping.
    pub grad_norm: f64,
    /// Whether the gradient was scaled down to the clipping norm.
    pub clipped: bool,
    /// The learning rate used.
    pub lr: f64,
    /// Mean loss over the step's samples, all ranks together, from
    /// [`DataParallel::record_loss`]; NaN when no rank recorded one.
    pub loss: f64,
    /// Whether the update was skipped because a gradient overflowed (loss scaling only; the
    /// weights and optimizer state are unchanged, the step still counts).
    pub skipped: bool,
    /// The loss scale the step's gradients were computed with (1 without loss scaling).
    pub loss_scale: f64,
}

/// One rank's data-parallel optimizer step, from accumulated gradients to new weights.
///
/// Every rank holds the whole model for its forward and backward passes. Gradients leave the
/// module as a flat `f32` vector ([`ParamLayout`]) and meet the other ranks' in a
/// [`Collective`]; the fp32 master weights and the optimizer state are kept per shard:
///
/// | | gradients | master weights + optimizer state | after the update |
/// |---|---|---|---|
/// | [`Sharding::Replicated`] | all-reduce | whole, on every rank | nothing to exchange |
/// | [`Sharding::Zero1`] | reduce-scatter | 1/N per rank ([`shard_range`]) | all-gather |
/// | [`Sharding::Zero2`] | reduce-scatter per micro-batch, 1/N of the sum kept | 1/N per rank | all-gather |
///
/// ZeRO-1 keeps 1/N of the optimizer state (and of the master weights) per rank for the same
/// bytes on the wire: a reduce-scatter plus an all-gather move what one all-reduce does.
///
/// **Averaging.** Each micro-batch contributes its mean-loss gradient weighted by its sample
/// count; the step divides the global sum by the global sample count. The update is therefore
/// the one for the mean loss over every sample of every rank and micro-batch, whatever the
/// split: 2 ranks × 2 micro-batches of 16 equal 1 rank × 1 batch of 64 (to rounding).
///
/// **Clipping** is by the global L2 norm of that averaged gradient, over all parameters and
/// ranks (burn's clipping is per tensor).
///
/// Cost per step, beyond forward and backward: one host copy of the gradients out of the
/// module and one of the weights back in, the collective traffic above, and the optimizer's
/// work on this rank's shard.
pub struct DataParallel<C: Collective> {
    collective: C,
    layout: ParamLayout,
    sharding: Sharding,
    /// This rank's elements of the flat vectors.
    shard: std::ops::Range<usize>,
    /// This rank's shard of the fp32 master weights, on `device`.
    master: Tensor<1>,
    optimizer: ShardOptimizer,
    schedule: LrSchedule,
    max_grad_norm: Option<f64>,
    /// The dtype the model computes in.
    precision: Precision,
    loss_scaler: Option<LossScaler>,
    /// Sum over this rank's micro-batches of (mean gradient × samples); stale unless
    /// `grads_held` (the first micro-batch of a step overwrites it, saving a zeroing pass).
    grad_sum: Vec<f32>,
    /// Whether a micro-batch was accumulated since the last step.
    grads_held: bool,
    samples: u64,
    /// Sum over this rank's micro-batches of (mean loss × samples), see `record_loss`.
    loss_sum: f64,
    loss_samples: u64,
    step: u64,
    /// Where the optimizer runs (the non-autodiff side of the model's device).
    device: Device,
    /// Reused buffers: the full flat weights, the shard of the gradient.
    full: Vec<f32>,
    grad_shard: Vec<f32>,
}

impl<C: Collective> std::fmt::Debug for DataParallel<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("rank", &self.collective.rank())
            .field("world", &self.collective.world())
            .field("sharding", &self.sharding)
            .field("params", &self.layout.len())
            .field("shard", &self.shard)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// Options of a [`DataParallel`] beyond the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepOptions {
    /// The learning rate per step.
    pub schedule: LrSchedule,
    /// Clip the averaged gradient to this global L2 norm; `None` for no clipping.
    pub max_grad_norm: Option<f64>,
    /// Where the optimizer state lives.
    pub sharding: Sharding,
    /// The dtype of the model's forward and backward passes (the master weights and the
    /// optimizer stay fp32).
    #[serde(default)]
    pub precision: Precision,
    /// Dynamic loss scaling (for [`Precision::F16`]): multiply the loss by
    /// [`DataParallel::loss_scale`] before the backward pass.
    #[serde(default)]
    pub loss_scaling: Option<LossScaling>,
}

impl StepOptions {
    /// Full precision, replicated, no clipping, with `schedule`.
    pub fn new(schedule: LrSchedule) -> Self {
        StepOptions {
            schedule,
            max_grad_norm: None,
            sharding: Sharding::Replicated,
            precision: Precision::F32,
            loss_scaling: None,
        }
    }
}

impl<C: Collective> DataParallel<C> {
    /// Takes over the training of `model` on this rank. Every rank must pass a model with the
    /// same layout; rank 0's weights are broadcast so all start identical. Parameters frozen
    /// with `Param::set_require_grad(false)` are left alone: not trained, not synchronized,
    /// not checkpointed ([`ParamLayout::trainable`]).
    ///
    /// Returns the engine and the model (with rank 0's weights).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for bad options; [`Error::ModelLayout`] for a model without
    /// trainable float parameters; collective errors.
    pub fn new<M: Module>(
        collective: C,
        model: M,
        optimizer: &OptimizerConfig,
        options: StepOptions,
    ) -> Result<(Self, M)> {
        Self::start(collective, model, optimizer, options, None)
    }

    /// Takes over the training of `model` from `checkpoint`: the weights, this rank's shard of
    /// the optimizer state and the step count are restored, whatever number of ranks or
    /// sharding saved it (its shards are re-cut to this job's: N to M resharding). Then
    /// training continues exactly as it would have without the interruption.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointMismatch`] when the checkpoint's parameter names or shapes differ from
    /// the model's, it holds another optimizer's state, or state is missing;
    /// [`Error::CheckpointCorrupt`] for a file that changed since it was verified; as
    /// [`DataParallel::new`] otherwise.
    pub fn resume<M: Module>(
        collective: C,
        model: M,
        optimizer: &OptimizerConfig,
        options: StepOptions,
        checkpoint: &Checkpoint,
    ) -> Result<(Self, M)> {
        Self::start(collective, model, optimizer, options, Some(checkpoint))
    }

    fn start<M: Module>(
        mut collective: C,
        model: M,
        optimizer: &OptimizerConfig,
        options: StepOptions,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(Self, M)> {
        options.schedule.validate()?;
        if let Some(norm) = options.max_grad_norm
            && !crate::optim::positive(norm)
        {
            return Err(Error::InvalidConfig {
                reason: format!("max_grad_norm must be > 0, got {norm}").into(),
            });
        }
        if let Some(scaling) = &options.loss_scaling {
            scaling.validate()?;
        }
        let mut optimizer = ShardOptimizer::new(optimizer)?;
        // Frozen parameters (the base under adapters) are not laid out, reduced, optimized
        // or checkpointed: see `ParamLayout::trainable`.
        let layout = ParamLayout::trainable(&model)?;
        if layout.is_empty() {
            return Err(Error::ModelLayout {
                reason: "the model has no trainable float parameters".into(),
            });
        }
        let shard = match options.sharding {
            Sharding::Replicated => 0..layout.len(),
            Sharding::Zero1 | Sharding::Zero2 => {
                shard_range(layout.len(), collective.rank(), collective.world())
            }
        };
        let device = model_device(&model);
        let (full, step, scale_state) = match checkpoint {
            None => {
                let mut full = layout.values(&model)?;
                collective.broadcast(&mut full, 0)?;
                (full, 0, None)
            }
            Some(checkpoint) => {
                let manifest = checkpoint.manifest();
                check_fits(&layout, &manifest.layout)?;
                if std::mem::discriminant(&manifest.optimizer)
                    != std::mem::discriminant(optimizer.config())
                {
                    return Err(Error::CheckpointMismatch {
                        reason: format!(
                            "the checkpoint holds {:?} state, this run uses {:?}",
                            manifest.optimizer,
                            optimizer.config()
                        )
                        .into(),
                    });
                }
                let state = checkpoint.read_state(shard.clone())?;
                let (tensors, scalars) = state.optimizer;
                optimizer.restore(tensors, scalars, &device, manifest.step)?;
                (state.master, manifest.step, manifest.loss_scale)
            }
        };
        // The master weights were read in the model's own dtype; from here on the model holds
        // them in the compute dtype.
        let model = layout.load(cast_module(model, options.precision.dtype()), &full)?;
        let master = flat_tensor(&full[shard.clone()], &device);
        Ok((
            DataParallel {
                // ZeRO-2 sums only this rank's shard of the gradients.
                grad_sum: vec![
                    0.0;
                    if options.sharding == Sharding::Zero2 {
                        shard.len()
                    } else {
                        layout.len()
                    }
                ],
                grads_held: false,
                grad_shard: vec![0.0; shard.len()],
                collective,
                layout,
                sharding: options.sharding,
                shard,
                master,
                optimizer,
                schedule: options.schedule,
                max_grad_norm: options.max_grad_norm,
                precision: options.precision,
                loss_scaler: options
                    .loss_scaling
                    .map(|config| LossScaler::new(config, scale_state)),
                samples: 0,
                loss_sum: 0.0,
                loss_samples: 0,
                step,
                device,
                full,
            },
            model,
        ))
    }

    /// Copies this rank's state out for a checkpoint ([`Checkpointer::save`]): its shard of the
    /// master weights and of the optimizer state. Costs one host copy of each.
    ///
    /// [`Checkpointer::save`]: crate::checkpoint::Checkpointer::save
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] between `accumulate` and `step` (checkpoints are taken at step
    /// boundaries, where no gradient is pending); tensor readback errors.
    pub fn snapshot(
        &self,
        loader: Option<mlinfra_loader::LoaderState>,
        rng: u64,
    ) -> Result<Snapshot> {
        self.snapshot_deferred(loader, rng)?.materialize()
    }

    /// [`DataParallel::snapshot`] without the copies: the snapshot holds shared handles to
    /// this step's master weights and optimizer state (O(1)), copied out when it is
    /// [materialized](Snapshot::materialize), which [`Checkpointer::save`] does on its writer
    /// thread in async mode. Later steps cannot change what it holds: burn's tensors are
    /// immutable values, updated in place only when nothing else holds them. The price is
    /// that the next update of the held tensors allocates instead of writing in place.
    ///
    /// [`Checkpointer::save`]: crate::checkpoint::Checkpointer::save
    ///
    /// # Errors
    ///
    /// As [`DataParallel::snapshot`].
    pub fn snapshot_deferred(
        &self,
        loader: Option<mlinfra_loader::LoaderState>,
        rng: u64,
    ) -> Result<Snapshot> {
        if self.samples != 0 {
            return Err(Error::InvalidConfig {
                reason: "snapshot() with gradients accumulated since the last step".into(),
            });
        }
        Ok(Snapshot {
            step: self.step,
            world: self.collective.world(),
            shard: self.shard.clone(),
            writes_file: self.sharding.is_sharded() || self.collective.rank() == 0,
            master: Vec::new(),
            optimizer: burn::optim::StateSink::default(),
            sharding: self.sharding,
            optimizer_config: self.optimizer.config().clone(),
            layout: self.layout.clone(),
            loader,
            rng,
            loss_scale: self.loss_scale_state(),
            deferred: Some(crate::checkpoint::Deferred {
                master: self.master.clone(),
                optimizer: self.optimizer.state_handle(),
            }),
        })
    }

    /// Adds one micro-batch's gradients: `grads` of the mean loss over `samples` samples,
    /// taken from `model` (the one [`DataParallel::new`] returned or [`DataParallel::step`]
    /// last updated).
    ///
    /// Ranks may accumulate different numbers of micro-batches (none at all included) before
    /// a step, except under [`Sharding::Zero2`], where each call is a reduce-scatter that
    /// every rank makes together.
    ///
    /// # Errors
    ///
    /// [`Error::ModelLayout`] when `model` is not the model this engine trains.
    pub fn accumulate<M: Module>(
        &mut self,
        model: &M,
        grads: &Gradients,
        samples: u64,
    ) -> Result<()> {
        let mut grads = self.layout.grads(model, grads)?;
        // Gradients of the scaled loss: unscaled here, in fp32.
        let weight = (samples as f64 / self.loss_scale()) as f32;
        let first = !self.grads_held;
        if self.sharding == Sharding::Zero2 {
            // Summed over the ranks now; this rank keeps its shard of the sum.
            grads.iter_mut().for_each(|g| *g *= weight);
            self.collective
                .reduce_scatter(&grads, &mut self.grad_shard)?;
            if first {
                self.grad_sum.copy_from_slice(&self.grad_shard);
            } else {
                for (sum, g) in self.grad_sum.iter_mut().zip(&self.grad_shard) {
                    *sum += g;
                }
            }
        } else if first {
            for (sum, g) in self.grad_sum.iter_mut().zip(&grads) {
                *sum = g * weight;
            }
        } else {
            for (sum, g) in self.grad_sum.iter_mut().zip(&grads) {
                *sum += g * weight;
            }
        }
        self.grads_held = true;
        self.samples += samples;
        Ok(())
    }

    /// Records the mean loss of a micro-batch of `samples` samples, for [`StepReport::loss`]
    /// (averaged over every sample of every rank at the step, at no extra communication).
    pub fn record_loss(&mut self, mean_loss: f64, samples: u64) {
        self.loss_sum += mean_loss * samples as f64;
        self.loss_samples += samples;
    }

    /// Averages the accumulated gradients over every rank, clips, updates this rank's shard,
    /// and returns `model` with the new weights. Collective: every rank calls it together.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when no rank accumulated a sample; collective and layout
    /// errors. [`DataParallel::try_step`] hands `model` back with the error.
    pub fn step<M: Module>(&mut self, model: M) -> Result<(M, StepReport)> {
        self.try_step(model).map_err(|(_, error)| error)
    }

    /// [`DataParallel::step`] that hands `model` back when it fails, as it was: the layout is
    /// checked against it before anything else, and it is only consumed by the final load of
    /// the new weights, after every operation that can fail. (The engine's own state may have
    /// moved on by then: after a failed step, resume from a checkpoint rather than step again.)
    ///
    /// # Errors
    ///
    /// As [`DataParallel::step`], with the model.
    pub fn try_step<M: Module>(
        &mut self,
        model: M,
    ) -> std::result::Result<(M, StepReport), (M, Error)> {
        if let Err(error) = self.check_layout(&model) {
            return Err((model, error));
        }
        let report = match self.update() {
            Ok(report) => report,
            Err(error) => return Err((model, error)),
        };
        if report.skipped {
            return Ok((model, report));
        }
        match self.layout.load(model, &self.full) {
            Ok(model) => Ok((model, report)),
            // The layout matched `model` above, and `full` has its length: unreachable.
            Err(error) => unreachable!("loading weights into a checked layout failed: {error}"),
        }
    }

    /// [`Error::ModelLayout`] unless `model` has the parameters this engine trains.
    fn check_layout<M: Module>(&self, model: &M) -> Result<()> {
        let layout = ParamLayout::trainable(model)?;
        if layout != self.layout {
            return Err(Error::ModelLayout {
                reason: "the model passed to step() is not the one this engine trains".into(),
            });
        }
        Ok(())
    }

    /// Everything a step does but load the new weights into the model: the new full vector
    /// is in `self.full` unless the returned report says the step was skipped.
    fn update(&mut self) -> Result<StepReport> {
        let mut sums = [self.samples as f64, self.loss_sum, self.loss_samples as f64];
        self.collective.all_reduce_f64(&mut sums)?;
        let total = sums[0];
        let loss = if sums[2] > 0.0 {
            sums[1] / sums[2]
        } else {
            f64::NAN
        };
        if total < 1.0 {
            return Err(Error::InvalidConfig {
                reason: "step() with no accumulated samples on any rank".into(),
            });
        }
        if !self.grads_held {
            // This rank had no micro-batch (others did): it contributes zeros.
            self.grad_sum.iter_mut().for_each(|g| *g = 0.0);
        }
        let inv = (1.0 / total) as f32;
        let mut square_sum = 0.0f64;
        let mut average = |g: &mut f32, sum: f32| {
            *g = sum * inv;
            square_sum += f64::from(*g) * f64::from(*g);
        };
        // The sums of this rank's shard, averaged into `grad_shard` in the same pass that
        // takes the squared norm.
        match self.sharding {
            Sharding::Replicated => {
                self.collective.all_reduce(&mut self.grad_sum)?;
                for (g, &sum) in self.grad_shard.iter_mut().zip(&self.grad_sum) {
                    average(g, sum);
                }
            }
            Sharding::Zero1 => {
                self.collective
                    .reduce_scatter(&self.grad_sum, &mut self.grad_shard)?;
                for g in &mut self.grad_shard {
                    average(g, *g);
                }
            }
            // Reduced micro-batch by micro-batch in `accumulate`.
            Sharding::Zero2 => {
                for (g, &sum) in self.grad_shard.iter_mut().zip(&self.grad_sum) {
                    average(g, sum);
                }
            }
        }
        if self.sharding.is_sharded() {
            let mut partial = [square_sum];
            self.collective.all_reduce_f64(&mut partial)?;
            square_sum = partial[0];
        }
        let grad_norm = square_sum.sqrt();
        let loss_scale = self.loss_scale();
        if let Some(scaler) = &mut self.loss_scaler {
            // Every rank sees the same global sum, so all skip or step together.
            let overflow = !square_sum.is_finite();
            scaler.update(overflow);
            if overflow {
                let report = StepReport {
                    step: self.step,
                    samples: total as u64,
                    grad_norm,
                    clipped: false,
                    lr: self.schedule.at(self.step),
                    loss,
                    skipped: true,
                    loss_scale,
                };
                self.finish_step();
                return Ok(report);
            }
        }
        let clipped = match self.max_grad_norm {
            Some(max) if grad_norm > max => {
                // PyTorch's clip_grad_norm_: scale by max / (norm + 1e-6).
                let scale = (max / (grad_norm + 1e-6)) as f32;
                self.grad_shard.iter_mut().for_each(|g| *g *= scale);
                true
            }
            _ => false,
        };

        let lr = self.schedule.at(self.step);
        let grads = flat_tensor(&self.grad_shard, &self.device);
        let master = std::mem::replace(&mut self.master, Tensor::empty([0], &self.device));
        self.master = self.optimizer.step(lr, master, grads);
        match self.sharding {
            Sharding::Replicated => {
                read_f32_into(&self.master, "master weights", &mut self.full)?;
            }
            Sharding::Zero1 | Sharding::Zero2 => {
                // The gradients went into `grads`: their buffer takes the new master shard.
                read_f32_into(&self.master, "master weights", &mut self.grad_shard)?;
                self.collective
                    .all_gather(&self.grad_shard, &mut self.full)?
            }
        }
        let report = StepReport {
            step: self.step,
            samples: total as u64,
            grad_norm,
            clipped,
            lr,
            loss,
            skipped: false,
            loss_scale,
        };
        self.finish_step();
        Ok(report)
    }

    /// Clears the accumulators and counts the step.
    fn finish_step(&mut self) {
        self.grads_held = false;
        self.samples = 0;
        self.loss_sum = 0.0;
        self.loss_samples = 0;
        self.step += 1;
    }

    /// What to multiply the loss by before the backward pass: the loss scale with
    /// [`StepOptions::loss_scaling`], 1 without. [`DataParallel::accumulate`] divides it out.
    pub fn loss_scale(&self) -> f64 {
        self.loss_scaler.map_or(1.0, |scaler| scaler.scale())
    }

    /// The loss scaler's state, for checkpoints (`None` without loss scaling).
    pub fn loss_scale_state(&self) -> Option<LossScaleState> {
        self.loss_scaler.map(|scaler| scaler.state())
    }

    /// The dtype the model computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The model's parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// This rank's elements of the flat parameter vector (all of it when replicated).
    pub fn shard(&self) -> std::ops::Range<usize> {
        self.shard.clone()
    }

    /// Bytes of optimizer state on this rank (moments, velocities).
    pub fn optimizer_state_bytes(&self) -> usize {
        self.optimizer.state_bytes()
    }

    /// Bytes this rank keeps for gradients between micro-batches and the step: the gradient
    /// sum and this rank's shard of the averaged gradient (the whole vector and a shard,
    /// or 2 shards under [`Sharding::Zero2`]). The transient copy out of the module in
    /// [`DataParallel::accumulate`] is not counted.
    pub fn gradient_bytes(&self) -> usize {
        (self.grad_sum.len() + self.grad_shard.len()) * size_of::<f32>()
    }

    /// The rank's collective.
    pub fn collective(&mut self) -> &mut C {
        &mut self.collective
    }
}

/// The device of the model's parameters, without autodiff: the optimizer's math is not
/// differentiated.
fn model_device<M: Module>(model: &M) -> Device {
    model
        .devices()
        .into_iter()
        .next()
        .map_or_else(Device::flex, Device::inner)
}

fn flat_tensor(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// A checkpoint's layout must equal the model's, parameter by parameter.
fn check_fits(model: &ParamLayout, saved: &ParamLayout) -> Result<()> {
    let mismatch = |reason: String| {
        Err(Error::CheckpointMismatch {
            reason: reason.into(),
        })
    };
    for (ours, theirs) in model.slots().iter().zip(saved.slots()) {
        if ours.path != theirs.path {
            return mismatch(format!(
                "parameter `{}` of the model is `{}` in the checkpoint",
                ours.path, theirs.path
            ));
        }
        if ours.shape != theirs.shape {
            return mismatch(format!(
                "parameter `{}` has shape {:?} in the model and {:?} in the checkpoint",
                ours.path, ours.shape, theirs.shape
            ));
        }
    }
    if model.slots().len() != saved.slots().len() {
        let (longer, which) = if model.slots().len() > saved.slots().len() {
            (model, "the checkpoint lacks")
        } else {
            (saved, "the model lacks")
        };
        let first = &longer.slots()[model.slots().len().min(saved.slots().len())];
        return mismatch(format!("{which} parameter `{}`", first.path));
    }
    Ok(())
}
