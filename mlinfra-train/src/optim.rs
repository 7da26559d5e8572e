//! Optimizers over flat shards, and learning-rate schedules.
//!
//! The trainer keeps the fp32 master weights as one flat vector (see
//! [`ParamLayout`](crate::ParamLayout)) and each rank updates only its shard of it. burn's
//! optimizers step one tensor at a time with an explicit state, so they run unchanged on a
//! shard: [`ShardOptimizer`] is burn's `AdamW` or `Sgd` applied to a 1-D tensor, holding
//! that tensor's state. The state is exactly what a checkpoint stores, and its size is what
//! ZeRO-1 divides by the number of ranks ([`ShardOptimizer::state_bytes`]).
//!
//! Weight decay applies to every parameter of the shard (biases and norms included), as
//! burn's module optimizers do.

use burn::optim::{
    AdamW, AdamWConfig, AdamWState, Optimizer, RecordState, Sgd, SgdConfig, SgdState, StateSink,
    decay::WeightDecayConfig, momentum::MomentumConfig,
};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which optimizer, with its hyperparameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam with decoupled weight decay (Loshchilov & Hutter), burn's `AdamW`.
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Added to the denominator.
        epsilon: f32,
        /// Decoupled weight decay per unit of learning rate.
        weight_decay: f32,
    },
    /// Stochastic gradient descent, burn's `Sgd`, with optional momentum and L2 penalty.
    Sgd {
        /// Momentum factor; 0 for none.
        momentum: f64,
        /// Dampening of the momentum update.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 penalty added to the gradient; 0 for none.
        weight_decay: f32,
    },
}

impl OptimizerConfig {
    /// AdamW with PyTorch's defaults: betas (0.9, 0.999), epsilon 1e-8, weight decay 0.01.
    pub fn adamw() -> Self {
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        }
    }

    /// Plain SGD: no momentum, no weight decay.
    pub fn sgd() -> Self {
        OptimizerConfig::Sgd {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidConfig {
                reason: reason.into(),
            })
        };
        match *self {
            OptimizerConfig::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => {
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return bad(format!(
                        "AdamW betas must be in [0, 1), got ({beta1}, {beta2})"
                    ));
                }
                if !positive(f64::from(epsilon)) || !non_negative(f64::from(weight_decay)) {
                    return bad(format!(
                        "AdamW needs epsilon > 0 and weight_decay >= 0, got {epsilon} and {weight_decay}"
                    ));
                }
            }
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                weight_decay,
                ..
            } => {
                if !non_negative(momentum)
                    || !non_negative(dampening)
                    || !non_negative(f64::from(weight_decay))
                {
                    return bad(format!(
                        "SGD momentum, dampening and weight_decay must be >= 0, got {momentum}, {dampening}, {weight_decay}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Finite and > 0 (false for NaN).
pub(crate) fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Finite and >= 0 (false for NaN).
fn non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// A burn optimizer stepping one flat shard, with that shard's state; see the
/// [module docs](self).
pub struct ShardOptimizer {
    config: OptimizerConfig,
    kind: Kind,
}

// One per rank: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Kind {
    AdamW(AdamW, Option<AdamWState<1>>),
    Sgd(Sgd, Option<SgdState<1>>),
}

impl std::fmt::Debug for ShardOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            Kind::AdamW(..) => "AdamW",
            Kind::Sgd(..) => "Sgd",
        };
        f.debug_struct("ShardOptimizer")
            .field("kind", &name)
            .field("state_bytes", &self.state_bytes())
            .finish()
    }
}

impl ShardOptimizer {
    /// A fresh optimizer (no state yet: it is created on the first step).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for hyperparameters out of range.
    pub fn new(config: &OptimizerConfig) -> Result<Self> {
        config.validate()?;
        let kind = match *config {
            OptimizerConfig::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => Kind::AdamW(
                AdamWConfig::new()
                    .with_beta_1(beta1)
                    .with_beta_2(beta2)
                    .with_epsilon(epsilon)
                    .with_weight_decay(weight_decay)
                    .build(),
                None,
            ),
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                let mut sgd = SgdConfig::new();
                if momentum > 0.0 {
                    sgd = sgd.with_momentum(Some(MomentumConfig {
                        momentum,
                        dampening,
                        nesterov,
                    }));
                }
                if weight_decay > 0.0 {
                    sgd = sgd.with_weight_decay(Some(WeightDecayConfig {
                        penalty: weight_decay,
                    }));
                }
                Kind::Sgd(sgd.build(), None)
            }
        };
        Ok(ShardOptimizer {
            config: config.clone(),
            kind,
        })
    }

    /// One update of `params` (this rank's shard of the master weights) with `grads` (the
    /// same shard of the averaged gradient) at learning rate `lr`; returns the new shard.
    pub fn step(&mut self, lr: f64, params: Tensor<1>, grads: Tensor<1>) -> Tensor<1> {
        match &mut self.kind {
            Kind::AdamW(optimizer, state) => {
                let (params, next) = optimizer.step(lr, params, grads, state.take());
                *state = next;
                params
            }
            Kind::Sgd(optimizer, state) => {
                let (params, next) = optimizer.step(lr, params, grads, state.take());
                *state = next;
                params
            }
        }
    }

    /// The state as named tensors and scalars (burn's `RecordState` form): what a checkpoint
    /// stores. Empty before the first step and for stateless SGD. Copies every state tensor
    /// to the host; a checkpoint's deferred snapshot copies them on its writer thread instead.
    pub fn state(&self) -> StateSink {
        self.state_handle().flatten()
    }

    /// The state as shared tensor handles, in O(1): burn's tensors are immutable values (an
    /// update makes new ones, or writes in place only when nothing else holds them), so the
    /// handle keeps this step's state whatever later steps do.
    pub(crate) fn state_handle(&self) -> StateHandle {
        match &self.kind {
            Kind::AdamW(_, Some(state)) => StateHandle::AdamW(Box::new(state.clone())),
            Kind::Sgd(_, Some(state)) => StateHandle::Sgd(Box::new(state.clone())),
            _ => StateHandle::Empty,
        }
    }

    /// The optimizer and its hyperparameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Whether the optimizer keeps state between steps (AdamW's moments, SGD's velocity).
    pub fn is_stateful(&self) -> bool {
        match self.config {
            OptimizerConfig::AdamW { .. } => true,
            OptimizerConfig::Sgd { momentum, .. } => momentum > 0.0,
        }
    }

    /// Replaces the state with one read from a checkpoint ([`ShardOptimizer::state`]'s form),
    /// on `device`. `steps` is how many steps the checkpoint had taken: after one, a stateful
    /// optimizer must find its state.
    ///
    /// burn's own loading skips state it cannot match to a parameter without a word; here
    /// every leaf must be used and every leaf the optimizer needs must be present.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointMismatch`] naming the missing or unexpected leaves.
    pub fn restore(
        &mut self,
        tensors: Vec<(String, burn::tensor::TensorData)>,
        scalars: Vec<(String, burn_pack::Scalar)>,
        device: &burn::tensor::Device,
        steps: u64,
    ) -> Result<()> {
        let mut expected: Vec<String> = tensors
            .iter()
            .map(|(n, _)| n.clone())
            .chain(scalars.iter().map(|(n, _)| n.clone()))
            .collect();
        expected.sort();
        let mut source = burn::optim::StateSource::new(scalars.into_iter().collect());
        for (name, data) in tensors {
            source.insert_tensor(name, data);
        }
        let restored = match &mut self.kind {
            Kind::AdamW(_, state) => {
                *state = AdamWState::state_unflatten("", &mut source, device);
                state.is_some()
            }
            Kind::Sgd(_, state) => {
                *state = SgdState::state_unflatten("", &mut source, device);
                state.as_ref().is_some_and(|s| s.momentum.is_some())
            }
        };
        let sink = self.state();
        let mut found: Vec<String> = sink
            .tensors
            .iter()
            .map(|(n, _)| n.clone())
            .chain(sink.scalars.iter().map(|(n, _)| n.clone()))
            .collect();
        found.sort();
        let name = match self.config {
            OptimizerConfig::AdamW { .. } => "AdamW",
            OptimizerConfig::Sgd { .. } => "SGD",
        };
        if found != expected {
            return Err(Error::CheckpointMismatch {
                reason: format!(
                    "optimizer state leaves {expected:?} do not fit {name}, which uses {found:?}"
                )
                .into(),
            });
        }
        if steps > 0 && self.is_stateful() && !restored {
            return Err(Error::CheckpointMismatch {
                reason: format!(
                    "the checkpoint is {steps} steps in but holds no {name} state (it would restart from zero)"
                )
                .into(),
            });
        }
        Ok(())
    }

    /// Bytes of tensor state held (moments, velocities): the optimizer memory of this rank.
    pub fn state_bytes(&self) -> usize {
        self.state()
            .tensors
            .iter()
            .map(|(_, data)| data.bytes().len())
            .sum()
    }
}

/// The learning rate at each step: linear warmup from 0, then cosine decay to a floor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// The peak learning rate, reached at the end of warmup.
    pub peak: f64,
    /// Steps of linear warmup (the first step runs at `peak / warmup`).
    pub warmup: u64,
    /// Total optimizer steps; cosine decay runs from the end of warmup to here.
    pub total: u64,
    /// The rate at and after `total`, as a fraction of `peak`.
    pub floor: f64,
}

impl LrSchedule {
    /// A constant rate.
    pub fn constant(lr: f64) -> Self {
        LrSchedule {
            peak: lr,
            warmup: 0,
            total: 0,
            floor: 1.0,
        }
    }

    /// Warmup then cosine decay to `floor * peak` at step `total`.
    pub fn warmup_cosine(peak: f64, warmup: u64, total: u64, floor: f64) -> Self {
        LrSchedule {
            peak,
            warmup,
            total,
            floor,
        }
    }

    /// The rate for optimizer step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let decay = self.total.saturating_sub(self.warmup);
        if decay == 0 || step >= self.total {
            return self.peak * self.floor;
        }
        let progress = (step - self.warmup) as f64 / decay as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.floor + (1.0 - self.floor) * cosine)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !positive(self.peak) || !(0.0..=1.0).contains(&self.floor) {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "learning rate schedule needs a finite peak > 0 and a floor in [0, 1], got {} and {}",
                    self.peak, self.floor
                )
                .into(),
            });
        }
        Ok(())
    }
}

/// An optimizer's state held by shared tensor handles ([`ShardOptimizer::state_handle`]),
/// read out to the host by [`StateHandle::flatten`], possibly on another thread.
#[derive(Clone)]
pub(crate) enum StateHandle {
    /// Before the first step, or stateless SGD.
    Empty,
    // Boxed: the states differ in size by hundreds of bytes, and a handle is moved around.
    AdamW(Box<AdamWState<1>>),
    Sgd(Box<SgdState<1>>),
}

impl StateHandle {
    /// The state as named host tensors and scalars (what [`ShardOptimizer::state`] returns).
    pub(crate) fn flatten(self) -> StateSink {
        let mut sink = StateSink::default();
        match self {
            StateHandle::AdamW(state) => state.state_flatten("", &mut sink),
            StateHandle::Sgd(state) => state.state_flatten("", &mut sink),
            StateHandle::Empty => {}
        }
        sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_and_cosine_reaches_the_floor() {
        let schedule = LrSchedule::warmup_cosine(1.0, 4, 14, 0.1);
        assert_eq!(schedule.at(0), 0.25);
        assert_eq!(schedule.at(3), 1.0);
        assert_eq!(schedule.at(4), 1.0);
        // Halfway through the decay the cosine term is 1/2.
        assert!((schedule.at(9) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!((schedule.at(14) - 0.1).abs() < 1e-12);
        assert!((schedule.at(1000) - 0.1).abs() < 1e-12);
        let steps: Vec<f64> = (4..=14).map(|s| schedule.at(s)).collect();
        assert!(steps.windows(2).all(|w| w[1] <= w[0]), "{steps:?}");
        assert_eq!(LrSchedule::constant(0.3).at(7), 0.3);
    }

    #[test]
    fn bad_hyperparameters_are_refused_by_name() {
        let error = ShardOptimizer::new(&OptimizerConfig::AdamW {
            beta1: 1.0,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        })
        .unwrap_err();
        assert!(error.to_string().contains("betas"), "{error}");
        assert!(LrSchedule::constant(f64::NAN).validate().is_err());
    }
}
