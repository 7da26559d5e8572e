//! The CUDA arm of [`Device`](super::Device) in a build without the `cuda` feature: every
//! request is a typed [`Error::FeatureDisabled`].

use crate::{Device, Error, Result};

pub(super) fn dispatch_device(index: usize) -> Result<burn::tensor::Device> {
    Err(Error::FeatureDisabled {
        feature: "cuda",
        device: Device::Cuda(index),
    })
}
