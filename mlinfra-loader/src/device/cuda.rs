//! The CUDA arm of [`Device`](super::Device): asks the driver before burn touches a GPU,
//! because burn panics when it initialises a device that is not there.

use cubecl::device::DeviceUnavailable;

use crate::{Device, Error, Result};

pub(super) fn dispatch_device(index: usize) -> Result<burn::tensor::Device> {
    // cubecl checks that `libcuda` exists before loading it, and counts the GPUs it reports.
    match cubecl::Device::cuda(index) {
        Ok(_) => Ok(burn::tensor::Device::cuda(index)),
        Err(DeviceUnavailable::NoSuchDevice { available, .. }) => Err(Error::DeviceUnavailable {
            device: Device::Cuda(index),
            available,
        }),
        // `NotLinked` cannot happen (this module exists only with cubecl's `cuda` feature), but
        // answering it as "no GPU" is still the truth.
        Err(_) => Err(Error::DeviceUnavailable {
            device: Device::Cuda(index),
            available: 0,
        }),
    }
}
