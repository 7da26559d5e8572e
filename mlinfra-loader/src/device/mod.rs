//! Where tensors live, chosen at run time.
//!
//! [`Device`] is a name (`cpu`, `cuda:1`) that a command line, a config file or an agent can
//! carry. [`Device::to_burn`] turns it into a [`burn::tensor::Device`]: since burn 0.22 tensors
//! carry their device at run time and every operation is dispatched to the backend that device
//! belongs to (`flex` on the CPU, CUDA on NVIDIA GPUs). One binary can therefore train or serve
//! on either, chosen by a flag.
//!
//! # Design: why a name and not burn's device
//!
//! burn's factories (`burn::tensor::Device::cuda(0)`) exist only in builds with the matching
//! feature, and initialising a GPU that is not there panics inside burn. This type exists in
//! every build, parses and prints, and is the fallible way in: a GPU that this build or this
//! machine cannot provide is an [`Error`], never a panic.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

// The CUDA arm lives behind the feature at the module boundary; the stub returns a typed error.
#[cfg(feature = "cuda")]
#[path = "cuda.rs"]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "no_cuda.rs"]
mod cuda;

/// A compute device, named at run time.
///
/// Parses from and displays as `cpu`, `cuda:N` (`cuda` alone means `cuda:0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    /// The host CPU, through burn's `flex` backend. Always available.
    Cpu,
    /// The NVIDIA GPU with this ordinal, through burn's CUDA backend (feature `cuda`).
    Cuda(usize),
}

impl Device {
    /// The burn device this names.
    ///
    /// For CUDA this asks the driver first, so a missing driver or GPU is an error rather than a
    /// panic inside burn. Cheap for [`Device::Cpu`]; the first CUDA call loads the driver.
    ///
    /// # Errors
    ///
    /// - [`Error::FeatureDisabled`] for a GPU when this build lacks the `cuda` feature;
    /// - [`Error::DeviceUnavailable`] when the driver is missing or reports fewer GPUs.
    pub fn to_burn(self) -> Result<burn::tensor::Device> {
        match self {
            Device::Cpu => Ok(burn::tensor::Device::flex()),
            Device::Cuda(index) => cuda::dispatch_device(index),
        }
    }

    /// Whether [`Device::to_burn`] succeeds. Initialises nothing: burn devices are created
    /// lazily, on their first tensor.
    pub fn is_available(self) -> bool {
        self.to_burn().is_ok()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let invalid = || Error::InvalidDevice { spec: spec.into() };
        match spec.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(invalid)?;
                // `usize::from_str` accepts a leading `+`; a device ordinal is digits only.
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                index.parse().map(Device::Cuda).map_err(|_| invalid())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_round_trip() {
        for (spec, device) in [
            ("cpu", Device::Cpu),
            ("CPU", Device::Cpu),
            (" cuda ", Device::Cuda(0)),
            ("gpu", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            let parsed: Device = spec.parse().unwrap();
            assert_eq!(parsed, device, "{spec:?}");
            assert_eq!(parsed.to_string().parse::<Device>().unwrap(), device);
        }
    }

    #[test]
    fn rejects_malformed_names_with_the_text_given() {
        for spec in [
            "",
            "tpu",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda:x",
            "cuda:99999999999999999999999",
        ] {
            match spec.parse::<Device>() {
                Err(Error::InvalidDevice { spec: given }) => assert_eq!(&*given, spec),
                other => panic!("{spec:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn cpu_is_always_available_and_maps_to_flex() {
        assert!(Device::Cpu.is_available());
        let device = Device::Cpu.to_burn().unwrap();
        assert!(matches!(
            device.as_dispatch(),
            burn::backend::DispatchDevice::Flex(_)
        ));
    }
}
