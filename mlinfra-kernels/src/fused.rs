//! mlinfra-train's [`FusedOps`] for burn's cubecl backend ([`Cube`]: wgpu, CUDA...): the
//! Llama decoder's RMSNorm, SwiGLU gate and cross-entropy as this crate's kernels, each one
//! burn-autodiff step with its own backward (Liger Kernel's fusions, as burn steps).
//!
//! [`install`] hands them to the decoder for the rest of the process (Liger's
//! `apply_liger_kernel_to_llama()`). They take f32 tensors living on a cubecl device, under
//! autodiff or not, and decline everything else (the CPU backend keeps its own fused steps).
//!
//! What each step keeps between the passes:
//! - RMSNorm: `x`, `γ` and one f32 per row (`rstd`); the normalized activations are recomputed.
//! - SwiGLU: `g` and `u`; the sigmoid is recomputed.
//! - Cross-entropy: the logits and one f32 per row (the log-sum-exp); the backward writes the
//!   gradient over the logits when nothing else holds them (a copy otherwise), so no second
//!   logits-sized buffer exists.
//!
//! The kernels run on the tensors' own client, so one implementation serves every cubecl
//! runtime burn was built with.

use std::sync::Arc;

use burn::backend::{Autodiff, Cube};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use mlinfra_train::fused::FusedOps;

use crate::device::DeviceBuffer;
use crate::elementwise::swiglu::{swiglu_backward_on_device, swiglu_on_device};
use crate::loss::{Targets, cross_entropy, cross_entropy_backward_in_place};
use crate::norm::{rms_norm, rms_norm_backward};

type Tracked = Autodiff<Cube>;

/// The kernels as [`FusedOps`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CubeFusedOps;

/// Installs [`CubeFusedOps`] for the Llama decoder (see [`mlinfra_train::fused`]). Idempotent
/// in effect: a second installation is never offered a tensor the first declined.
pub fn install() {
    mlinfra_train::fused::install(Arc::new(CubeFusedOps));
}

/// The contiguous f32 contents of a cubecl tensor as a device buffer (sharing its memory).
fn contiguous_f32(tensor: CubeTensor) -> (CubeTensor, DeviceBuffer<f32>) {
    let tensor = into_contiguous(tensor);
    let buffer =
        DeviceBuffer::from_handle(tensor.handle.clone(), tensor.meta.shape().num_elements());
    (tensor, buffer)
}

/// A buffer as an f32 tensor of `shape` on `like`'s device.
fn tensor_like(like: &CubeTensor, buffer: DeviceBuffer<f32>, shape: Shape) -> CubeTensor {
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        buffer.into_handle(),
        DType::F32,
    )
}

fn both_f32(a: &Tensor<2>, b_dtype: DType) -> bool {
    a.dtype() == DType::F32 && b_dtype == DType::F32
}

impl FusedOps for CubeFusedOps {
    fn describe(&self) -> String {
        "mlinfra-kernels cubecl fused ops (RMSNorm, SwiGLU, cross-entropy; f32)".into()
    }

    fn rms_norm(&self, x: &Tensor<2>, gamma: &Tensor<1>, epsilon: f64) -> Option<Tensor<2>> {
        if !both_f32(x, gamma.dtype()) {
            return None;
        }
        let epsilon = epsilon as f32;
        if let Ok(x) = x.clone().try_into_primitive::<Tracked>() {
            let gamma = gamma.clone().try_into_primitive::<Tracked>().ok()?;
            let (x_inner, x_buffer) = contiguous_f32(x.primitive().clone());
            let (gamma_inner, gamma_buffer) = contiguous_f32(gamma.primitive().clone());
            let out = rms_norm(&x_inner.client, &x_buffer, None, &gamma_buffer, epsilon).ok()?;
            let y = tensor_like(&x_inner, out.normed, x_inner.meta.shape().clone());
            let tracked = match RmsNormStep
                .prepare::<NoCheckpointing>([x.node(), gamma.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((x_inner, gamma_inner, out.rstd), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            return Some(Tensor::from_primitive::<Tracked>(tracked));
        }
        let (x_inner, x_buffer) = contiguous_f32(x.clone().try_into_primitive::<Cube>().ok()?);
        let (_, gamma_buffer) = contiguous_f32(gamma.clone().try_into_primitive::<Cube>().ok()?);
        let out = rms_norm(&x_inner.client, &x_buffer, None, &gamma_buffer, epsilon).ok()?;
        let y = tensor_like(&x_inner, out.normed, x_inner.meta.shape().clone());
        Some(Tensor::from_primitive::<Cube>(y))
    }

    fn swiglu(&self, gate: &Tensor<2>, up: &Tensor<2>) -> Option<Tensor<2>> {
        if !both_f32(gate, up.dtype()) || gate.dims() != up.dims() {
            return None;
        }
        if let Ok(gate) = gate.clone().try_into_primitive::<Tracked>() {
            let up = up.clone().try_into_primitive::<Tracked>().ok()?;
            let (g_inner, g) = contiguous_f32(gate.primitive().clone());
            let (u_inner, u) = contiguous_f32(up.primitive().clone());
            let h = swiglu_on_device(&g_inner.client, &g, &u).ok()?;
            let h = tensor_like(&g_inner, h, g_inner.meta.shape().clone());
            let tracked = match SwigluStep
                .prepare::<NoCheckpointing>([gate.node(), up.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((g_inner, u_inner), h),
                OpsKind::UnTracked(prep) => prep.finish(h),
            };
            return Some(Tensor::from_primitive::<Tracked>(tracked));
        }
        let (g_inner, g) = contiguous_f32(gate.clone().try_into_primitive::<Cube>().ok()?);
        let (_, u) = contiguous_f32(up.clone().try_into_primitive::<Cube>().ok()?);
        let h = swiglu_on_device(&g_inner.client, &g, &u).ok()?;
        let h = tensor_like(&g_inner, h, g_inner.meta.shape().clone());
        Some(Tensor::from_primitive::<Cube>(h))
    }

    fn cross_entropy(&self, logits: &Tensor<2>, targets: &Tensor<1, Int>) -> Option<Tensor<1>> {
        if logits.dtype() != DType::F32 {
            return None;
        }
        let [rows, vocab] = logits.dims();
        if rows == 0 || targets.dims() != [rows] {
            return None;
        }
        let tracked = logits.clone().try_into_primitive::<Tracked>().ok();
        let inner = match &tracked {
            Some(logits) => logits.primitive().clone(),
            None => logits.clone().try_into_primitive::<Cube>().ok()?,
        };
        // The targets are checked on the host (a row's worth of ids): an id past the
        // vocabulary declines, and burn's loss reports it.
        let ids = targets
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .ok()?;
        let ids: Vec<i32> = ids
            .iter()
            .map(|&t| i32::try_from(t).ok())
            .collect::<Option<_>>()?;
        let (inner, buffer) = contiguous_f32(inner);
        let targets = Targets::new(&inner.client, &ids, vocab).ok()?;
        let per_row = cross_entropy(&inner.client, &buffer, &targets).ok()?;
        // The mean over rows with burn's own reduction, on the same device.
        let losses = tensor_like(&inner, per_row.loss, Shape::new([rows]));
        let mean = Tensor::<1>::from_primitive::<Cube>(losses)
            .mean()
            .try_into_primitive::<Cube>()
            .ok()?;
        let Some(logits) = tracked else {
            return Some(Tensor::from_primitive::<Cube>(mean));
        };
        let tracked = match CrossEntropyStep
            .prepare::<NoCheckpointing>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((inner, targets, per_row.lse), mean),
            OpsKind::UnTracked(prep) => prep.finish(mean),
        };
        Some(Tensor::from_primitive::<Tracked>(tracked))
    }
}

/// The kernels' shapes were checked when the forward launched; a failure here is the device's,
/// which a backward step has no way to return.
const DEVICE_FAILED: &str =
    "a cubecl kernel failed in a backward step (shapes were checked in the forward)";

#[derive(Debug)]
struct RmsNormStep;

impl Backward<Cube, 2> for RmsNormStep {
    /// `x` and `γ` (contiguous) and each row's `rstd`.
    type State = (CubeTensor, CubeTensor, DeviceBuffer<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (_, grad) = contiguous_f32(grads.consume::<Cube>(&ops.node));
        let (x, gamma, rstd) = ops.state;
        let [node_x, node_gamma] = ops.parents;
        let x_buffer = DeviceBuffer::from_handle(x.handle.clone(), x.meta.shape().num_elements());
        let gamma_buffer =
            DeviceBuffer::from_handle(gamma.handle.clone(), gamma.meta.shape().num_elements());
        let out = rms_norm_backward(&x.client, &grad, &x_buffer, &gamma_buffer, &rstd, None)
            .expect(DEVICE_FAILED);
        if let Some(node) = node_x {
            grads.register::<Cube>(node.id, tensor_like(&x, out.input, x.meta.shape().clone()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Cube>(
                node.id,
                tensor_like(&gamma, out.weight, gamma.meta.shape().clone()),
            );
        }
    }
}

#[derive(Debug)]
struct SwigluStep;

impl Backward<Cube, 2> for SwigluStep {
    /// `g` and `u`, contiguous.
    type State = (CubeTensor, CubeTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (_, grad) = contiguous_f32(grads.consume::<Cube>(&ops.node));
        let (gate, up) = ops.state;
        let [node_gate, node_up] = ops.parents;
        let len = gate.meta.shape().num_elements();
        let (dg, du) = swiglu_backward_on_device(
            &gate.client,
            &DeviceBuffer::from_handle(gate.handle.clone(), len),
            &DeviceBuffer::from_handle(up.handle.clone(), len),
            &grad,
        )
        .expect(DEVICE_FAILED);
        if let Some(node) = node_gate {
            grads.register::<Cube>(node.id, tensor_like(&gate, dg, gate.meta.shape().clone()));
        }
        if let Some(node) = node_up {
            grads.register::<Cube>(node.id, tensor_like(&up, du, up.meta.shape().clone()));
        }
    }
}

#[derive(Debug)]
struct CrossEntropyStep;

impl Backward<Cube, 1> for CrossEntropyStep {
    /// The logits (contiguous), the targets and each row's log-sum-exp.
    type State = (CubeTensor, Targets, DeviceBuffer<f32>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        // The mean's gradient: one value, spread as `g / rows` over every row.
        let (_, grad) = contiguous_f32(grads.consume::<Cube>(&ops.node));
        let (logits, targets, lse) = ops.state;
        let [node] = ops.parents;
        let Some(node) = node else {
            return;
        };
        // In place when the step holds the logits' only reference, else on a copy.
        let logits = if logits.can_mut() {
            logits
        } else {
            logits.copy()
        };
        let shape = logits.meta.shape().clone();
        let mut buffer = DeviceBuffer::from_handle(logits.handle.clone(), shape.num_elements());
        let scale = 1.0 / targets.rows() as f32;
        cross_entropy_backward_in_place(&logits.client, &mut buffer, &targets, &lse, &grad, scale)
            .expect(DEVICE_FAILED);
        grads.register::<Cube>(node.id, tensor_like(&logits, buffer, shape));
    }
}
