//! Mixed precision: the dtype the model computes in, and dynamic loss scaling for `f16`.
//!
//! The optimizer always works on fp32 master weights ([`DataParallel`](crate::DataParallel));
//! only the model's copy of the parameters is cast to [`Precision::dtype`], so the forward
//! and backward passes run in half precision while updates keep full precision (the
//! "fp32 master weights" recipe of NVIDIA's mixed-precision training and PyTorch AMP).
//!
//! `f16` has 5 exponent bits: small gradients underflow to zero. [`LossScaling`] multiplies
//! the loss by a large scale before the backward pass, divides the gradients by it in fp32,
//! and, when a gradient overflows to inf or NaN, skips the step and halves the scale; after a
//! run of good steps it doubles the scale again (PyTorch's `GradScaler`, with its defaults in
//! [`LossScaling::pytorch`]). `bf16` has fp32's exponent range and needs no scaling.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The dtype a model's forward and backward passes run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Full precision.
    #[default]
    F32,
    /// bfloat16: fp32's range, 8 bits of mantissa. No loss scaling needed.
    Bf16,
    /// IEEE half: 11 bits of mantissa, a small range; use with [`LossScaling`].
    F16,
}

impl Precision {
    /// The burn dtype of the model's parameters.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// Dynamic loss scaling; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaling {
    /// The first scale.
    pub init_scale: f64,
    /// Factor applied after `growth_interval` steps in a row without overflow (> 1).
    pub growth_factor: f64,
    /// Factor applied after an overflow (in (0, 1)).
    pub backoff_factor: f64,
    /// Good steps in a row before the scale grows.
    pub growth_interval: u64,
}

impl LossScaling {
    /// PyTorch's `GradScaler` defaults: 2^16, ×2 every 2000 good steps, ×0.5 on overflow.
    pub fn pytorch() -> Self {
        LossScaling {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let problem = if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            Some("init_scale must be finite and > 0")
        } else if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            Some("growth_factor must be finite and > 1")
        } else if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            Some("backoff_factor must be in (0, 1)")
        } else if self.growth_interval == 0 {
            Some("growth_interval must be at least 1")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::InvalidConfig {
                reason: format!("loss scaling: {problem}, got {self:?}").into(),
            }),
            None => Ok(()),
        }
    }
}

/// Where a [`LossScaling`] stands: saved in checkpoints, so a resumed run scales as the
/// uninterrupted one would.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaleState {
    /// The current scale.
    pub scale: f64,
    /// Steps without overflow since the scale last changed.
    pub good_steps: u64,
}

/// A [`LossScaling`] and its state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LossScaler {
    config: LossScaling,
    state: LossScaleState,
}

impl LossScaler {
    pub(crate) fn new(config: LossScaling, state: Option<LossScaleState>) -> Self {
        LossScaler {
            config,
            state: state.unwrap_or(LossScaleState {
                scale: config.init_scale,
                good_steps: 0,
            }),
        }
    }

    pub(crate) fn state(&self) -> LossScaleState {
        self.state
    }

    pub(crate) fn scale(&self) -> f64 {
        self.state.scale
    }

    /// After a step: back off on overflow, grow after `growth_interval` good steps.
    pub(crate) fn update(&mut self, overflow: bool) {
        let state = &mut self.state;
        if overflow {
            state.scale *= self.config.backoff_factor;
            state.good_steps = 0;
        } else {
            state.good_steps += 1;
            if state.good_steps == self.config.growth_interval {
                state.scale *= self.config.growth_factor;
                state.good_steps = 0;
            }
        }
    }
}

/// `module` with every float parameter cast to `dtype` (gradient tracking kept).
pub fn cast_module<M: Module>(module: M, dtype: DType) -> M {
    module.map(&mut Caster { dtype })
}

struct Caster {
    dtype: DType,
}

impl ModuleMapper for Caster {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.dtype;
        param.map(|tensor| {
            if tensor.dtype() == dtype {
                return tensor;
            }
            let require_grad = tensor.is_require_grad();
            // Untracked first: a cast of a tracked leaf would be a graph node, not a new leaf.
            tensor
                .set_require_grad(false)
                .cast(dtype)
                .set_require_grad(require_grad)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_backs_off_on_overflow_and_grows_after_a_run_of_good_steps() {
        let config = LossScaling {
            init_scale: 1024.0,
            growth_interval: 3,
            ..LossScaling::pytorch()
        };
        let mut scaler = LossScaler::new(config, None);
        scaler.update(false);
        scaler.update(false);
        assert_eq!(scaler.scale(), 1024.0);
        scaler.update(true);
        assert_eq!(
            scaler.state(),
            LossScaleState {
                scale: 512.0,
                good_steps: 0
            }
        );
        for _ in 0..3 {
            scaler.update(false);
        }
        assert_eq!(
            scaler.state(),
            LossScaleState {
                scale: 1024.0,
                good_steps: 0
            }
        );
        let bad = LossScaling {
            backoff_factor: 1.0,
            ..config
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("backoff_factor")
        );
    }
}
