//! RMSNorm, `x / sqrt(mean(x²) + ε) · γ` over the last dimension, as one autodiff step.
//!
//! # Why a custom autodiff step
//!
//! Composed of burn's ops (square, mean, add, square root, divide, scale), autodiff keeps four
//! tensors per norm and walks eight elementwise steps back; every decoder layer has two norms.
//! Like Liger Kernel's fused RMSNorm, the step registered here keeps `x`, `γ` and one
//! reciprocal root per row, and computes both gradients in one pass:
//! `dx = r · (dy·γ − x̂ · mean(dy·γ·x̂))`, `dγ = Σ_rows dy · x̂`, with `r = 1/rms(x)` and
//! `x̂ = x · r`. It is written against `burn-autodiff`'s backend-extension API for the CPU
//! backend (`Autodiff<Flex>`) in f32; other backends and dtypes run the composed ops, in f32
//! for half-precision inputs (as burn and transformers compute it) and in the input's own
//! dtype otherwise (burn's own `RmsNorm` casts f64 down to f32, which made f64 gradient checks
//! of the whole model meaningless).
//!
//! # Costs
//!
//! One pass forward and one backward over `x`, rows in parallel on rayon's pool; kept between
//! the passes: `x` (alive in the graph anyway) and one float per row.

use burn::nn::RmsNorm;
use burn::tensor::{DType, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::host::{contiguous, dims, tensor, values};

/// Rows one rayon task normalises.
const ROWS_PER_TASK: usize = 32;

/// `norm` applied to `x` over its last dimension.
pub(super) fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    let gamma = norm.gamma.val();
    if let Some(out) = crate::fused::rms_norm(&x, &gamma, norm.epsilon) {
        return out;
    }
    if x.dtype() == DType::F32 && gamma.dtype() == DType::F32 {
        let epsilon = norm.epsilon as f32;
        if let Some(out) = fused_autodiff(&x, &gamma, epsilon) {
            return out;
        }
        if let Some(out) = fused_inference(&x, &gamma, epsilon) {
            return out;
        }
    }
    composed(x, gamma, norm.epsilon)
}

fn composed<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, epsilon: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let wide = match dtype {
        DType::F16 | DType::BF16 => x.clone().cast(DType::F32),
        _ => x.clone(),
    };
    let rms = (wide.square().mean_dim(D - 1) + epsilon).sqrt();
    let rms = if rms.dtype() == dtype {
        rms
    } else {
        rms.cast(dtype)
    };
    (x / rms) * gamma.unsqueeze()
}

fn fused_autodiff<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    epsilon: f32,
) -> Option<Tensor<D>> {
    let x = x.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let gamma = gamma.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let (x_inner, gamma_inner) = (contiguous(x.primitive()), contiguous(gamma.primitive()));
    let (out, inverse_rms) = forward(values(&x_inner), values(&gamma_inner), epsilon);
    let out = tensor(out, dims::<D>(&x_inner));
    let tracked = match RmsNormStep
        .prepare::<NoCheckpointing>([x.node(), gamma.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x_inner, gamma_inner, inverse_rms), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex>>(tracked))
}

fn fused_inference<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    epsilon: f32,
) -> Option<Tensor<D>> {
    let x = contiguous(&x.clone().try_into_primitive::<Flex>().ok()?);
    let gamma = contiguous(&gamma.clone().try_into_primitive::<Flex>().ok()?);
    let (out, _) = forward(values(&x), values(&gamma), epsilon);
    Some(Tensor::from_primitive::<Flex>(tensor(out, dims::<D>(&x))))
}

#[derive(Debug)]
struct RmsNormStep;

impl Backward<Flex, 2> for RmsNormStep {
    /// `x` and `γ` (contiguous) and each row's `1/rms`.
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, gamma, inverse_rms) = ops.state;
        let [node_x, node_gamma] = ops.parents;
        let (dx, dgamma) = backward(
            values(&x),
            values(&gamma),
            &inverse_rms,
            values(&grad),
            node_gamma.is_some(),
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, x.layout().shape().clone()));
        }
        if let Some(node) = node_gamma {
            let width = dgamma.len();
            grads.register::<Flex>(node.id, tensor(dgamma, [width]));
        }
    }
}

/// `y = x · r · γ` row by row, and each row's `r = 1/sqrt(mean(x²) + ε)`.
fn forward(x: &[f32], gamma: &[f32], epsilon: f32) -> (Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    let mut out = vec![0.0; x.len()];
    let mut inverse_rms = vec![0.0; x.len() / width];
    out.par_chunks_mut(ROWS_PER_TASK * width)
        .zip(inverse_rms.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(ROWS_PER_TASK * width))
        .for_each(|((out, inverse_rms), x)| {
            for ((y, x), r) in out
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(inverse_rms)
            {
                let mean_square = x.iter().map(|v| v * v).sum::<f32>() / width as f32;
                *r = 1.0 / (mean_square + epsilon).sqrt();
                for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
                    *y = x * *r * g;
                }
            }
        });
    (out, inverse_rms)
}

/// The gradients of `x` and (when `want_gamma`) of `γ` from the output's, `dy`.
fn backward(
    x: &[f32],
    gamma: &[f32],
    inverse_rms: &[f32],
    dy: &[f32],
    want_gamma: bool,
) -> (Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    let mut dx = vec![0.0; x.len()];
    let dgamma = dx
        .par_chunks_mut(ROWS_PER_TASK * width)
        .zip(x.par_chunks(ROWS_PER_TASK * width))
        .zip(dy.par_chunks(ROWS_PER_TASK * width))
        .zip(inverse_rms.par_chunks(ROWS_PER_TASK))
        .map(|(((dx, x), dy), inverse_rms)| {
            let mut dgamma = if want_gamma {
                vec![0.0; width]
            } else {
                Vec::new()
            };
            for (((dx, x), dy), &r) in dx
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(dy.chunks_exact(width))
                .zip(inverse_rms)
            {
                let mean: f32 =
                    (0..width).map(|i| dy[i] * gamma[i] * x[i] * r).sum::<f32>() / width as f32;
                for i in 0..width {
                    let normalised = x[i] * r;
                    dx[i] = r * (dy[i] * gamma[i] - normalised * mean);
                    if want_gamma {
                        dgamma[i] += dy[i] * normalised;
                    }
                }
            }
            dgamma
        })
        .reduce(Vec::new, |a, b| {
            if a.is_empty() {
                return b;
            }
            if b.is_empty() {
                return a;
            }
            a.iter().zip(&b).map(|(a, b)| a + b).collect()
        });
    (dx, dgamma)
}

#[cfg(test)]
mod tests {
    use burn::nn::RmsNormConfig;
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::rng::SplitMix64;

    fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
        let mut rng = SplitMix64::new(seed);
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The fused step's output and the gradients of `x` and `γ` equal the composed ops'
    /// under burn's autodiff (more rows than one rayon task, a ragged last task), and the
    /// plain-device forward agrees too.
    #[test]
    fn the_fused_step_computes_what_the_composed_ops_do() {
        let device = Device::flex().autodiff();
        let shape = [2, 45, 24];
        let probe = random(shape, 3, &device);
        let run = |fused: bool| {
            let x = random(shape, 1, &device).require_grad();
            let gamma = random([24], 2, &device).require_grad();
            let out = if fused {
                fused_autodiff(&x, &gamma, 1e-5).unwrap()
            } else {
                composed(x.clone(), gamma.clone(), 1e-5)
            };
            let grads = (out.clone() * probe.clone()).sum().backward();
            let dgamma = gamma.grad(&grads).unwrap().unsqueeze::<3>();
            [out.inner(), x.grad(&grads).unwrap(), dgamma]
        };
        let (fused, reference) = (run(true), run(false));
        for (what, (got, want)) in ["out", "dx", "dgamma"]
            .iter()
            .zip(fused.into_iter().zip(reference))
        {
            let diff = max_diff(got, want);
            assert!(diff < 1e-4, "{what}: {diff}");
        }
        let plain = Device::flex();
        let norm = RmsNormConfig::new(24).with_epsilon(1e-5).init(&plain);
        let x = random(shape, 1, &plain);
        let fused = rms_norm(&norm, x.clone());
        assert!(max_diff(fused, composed(x, norm.gamma.val(), 1e-5)) < 1e-5);
    }
}
