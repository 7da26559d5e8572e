//! Host access to CPU-backend (`Flex`) tensors for the fused autodiff steps ([`super::varlen`],
//! [`super::swiglu`]): their f32 values in place, and new tensors over owned buffers.

use burn::tensor::TensorData;
use burn_flex::FlexTensor;

/// `tensor` with a contiguous, zero-offset layout: itself (a reference count) when it already
/// is, a copy otherwise. Read it with [`values`].
pub(super) fn contiguous(tensor: &FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() {
        tensor.clone()
    } else {
        tensor.to_contiguous()
    }
}

/// The f32 values of a tensor made by [`contiguous`], row-major, in place.
///
/// # Panics
///
/// When `tensor` is not f32 or not contiguous (the fused steps check the dtype first).
pub(super) fn values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .unwrap_or_else(|| unreachable!("a contiguous f32 tensor: {:?}", tensor.dtype()))
}

/// A tensor of `shape` over `values` (row-major), without a copy.
pub(super) fn tensor(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The dimensions of a rank-`D` tensor.
pub(super) fn dims<const D: usize>(tensor: &FlexTensor) -> [usize; D] {
    let dims = tensor.layout().shape().to_vec();
    dims.try_into()
        .unwrap_or_else(|d| unreachable!("a rank-{D} tensor has {D} dimensions: {d:?}"))
}
