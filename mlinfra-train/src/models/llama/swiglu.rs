//! SwiGLU's gate, `silu(g) · u`, as one autodiff step.
//!
//! # Why a custom autodiff step
//!
//! Written as `silu(g) * u` with burn's ops, `silu` is itself `g · sigmoid(g)`, and autodiff
//! keeps `g`, `sigmoid(g)`, `silu(g)` and `u` for the backward pass, which then walks five
//! elementwise steps over `[tokens, intermediate]` (the widest activations of the model). Like
//! Liger Kernel's fused SwiGLU, the step registered here keeps `g` and `u` only and computes
//! both gradients in one pass, recomputing the sigmoid:
//! `d/dg = dy · u · σ(g) · (1 + g · (1 − σ(g)))`, `d/du = dy · g · σ(g)`. It is written against
//! `burn-autodiff`'s backend-extension API for the CPU backend (`Autodiff<Flex>`) in f32; an
//! installed [`FusedOps`](crate::fused::FusedOps) takes the tensors it recognises first; other
//! backends and dtypes compute `silu(g) * u` with burn's ops.
//!
//! # Costs
//!
//! One pass over `g` and `u` forward and one backward, one exponential per element in each, in
//! parallel on rayon's pool; two `[tokens, intermediate]` tensors kept between the passes.

use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::host::{contiguous, dims, tensor, values};

/// Elements one rayon task computes.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) · up`, elementwise, for tensors of one shape.
pub(super) fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if let Some(out) = crate::fused::swiglu(&gate, &up) {
        return out;
    }
    if gate.dtype() == DType::F32 && up.dtype() == DType::F32 && gate.dims() == up.dims() {
        if let Some(out) = fused_autodiff(&gate, &up) {
            return out;
        }
        if let Some(out) = fused_inference(&gate, &up) {
            return out;
        }
    }
    silu(gate) * up
}

fn fused_autodiff<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let gate = gate.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let up = up.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let (g, u) = (contiguous(gate.primitive()), contiguous(up.primitive()));
    let out = tensor(forward(values(&g), values(&u)), dims::<D>(&g));
    let tracked = match SwigluStep
        .prepare::<NoCheckpointing>([gate.node(), up.node()])
        // Under `NoCheckpointing` the bound only labels the step (memory-bound steps must be
        // able to recompute their output, which a checkpointing strategy would ask for).
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((g, u), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex>>(tracked))
}

fn fused_inference<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let g = contiguous(&gate.clone().try_into_primitive::<Flex>().ok()?);
    let u = contiguous(&up.clone().try_into_primitive::<Flex>().ok()?);
    let out = tensor(forward(values(&g), values(&u)), dims::<D>(&g));
    Some(Tensor::from_primitive::<Flex>(out))
}

#[derive(Debug)]
struct SwigluStep;

impl Backward<Flex, 2> for SwigluStep {
    /// `g` and `u`, contiguous.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let (g, u) = ops.state;
        let (dg, du) = backward(values(&g), values(&u), values(&grad));
        let [node_g, node_u] = ops.parents;
        let dims = grad.layout().shape().clone();
        for (node, grad) in [(node_g, dg), (node_u, du)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(grad, dims.clone()));
            }
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(out, (g, u))| {
            for ((y, &g), &u) in out.iter_mut().zip(g).zip(u) {
                *y = g * sigmoid(g) * u;
            }
        });
    out
}

/// The gradients of `g` and `u` from the output's, `dy`.
fn backward(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut dg, mut du) = (vec![0.0; g.len()], vec![0.0; g.len()]);
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .zip(dy.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), dy)| {
            for i in 0..g.len() {
                let s = sigmoid(g[i]);
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                du[i] = dy[i] * g[i] * s;
            }
        });
    (dg, du)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::rng::SplitMix64;

    fn random(seed: u64, device: &Device) -> Tensor<2> {
        let mut rng = SplitMix64::new(seed);
        // Wide enough for several rayon chunks and a ragged last one.
        let values: Vec<f32> = (0..3 * 11_000)
            .map(|_| rng.uniform(-6.0, 6.0) as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, [3, 11_000]), device)
    }

    fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The fused step's output and gradients equal burn's `silu(g) * u` differentiated by
    /// burn's autodiff, on autodiff and plain devices.
    #[test]
    fn the_fused_step_computes_what_burn_ops_do() {
        let device = Device::flex().autodiff();
        let probe = random(3, &device);
        let run = |fused: bool| {
            let g = random(1, &device).require_grad();
            let u = random(2, &device).require_grad();
            let out = if fused {
                fused_autodiff(&g, &u).unwrap()
            } else {
                silu(g.clone()) * u.clone()
            };
            let grads = (out.clone() * probe.clone()).sum().backward();
            [
                out.inner(),
                g.grad(&grads).unwrap(),
                u.grad(&grads).unwrap(),
            ]
        };
        let (fused, reference) = (run(true), run(false));
        for (what, (got, want)) in ["out", "dg", "du"]
            .iter()
            .zip(fused.into_iter().zip(reference))
        {
            let diff = max_diff(got, want);
            assert!(diff < 1e-5, "{what}: {diff}");
        }
        let plain = Device::flex();
        let (g, u) = (random(1, &plain), random(2, &plain));
        let fused = fused_inference(&g, &u).unwrap();
        assert!(max_diff(fused, silu(g) * u) < 1e-6);
    }
}
