//! The error type of `mlinfra-kernels`.

/// Errors returned by `mlinfra-kernels`.
///
/// Each variant documents who is at fault: the caller (operands that do not fit), the machine
/// (a missing driver) or the device runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No software (CPU) Vulkan adapter exists on this machine (the machine). On Debian or
    /// Ubuntu the driver comes from `package`.
    #[error("no software Vulkan adapter found: install `{package}` (apt-get install {package})")]
    NoSoftwareAdapter {
        /// The distribution package that provides it.
        package: &'static str,
        /// What wgpu reported.
        #[source]
        source: Box<cubecl::wgpu::WgpuInitError>,
    },
    /// Operands whose shapes do not fit the kernel (the caller).
    #[error("kernel `{kernel}`: {reason}")]
    Shape {
        /// The kernel that was asked to run.
        kernel: &'static str,
        /// What does not fit.
        reason: Box<str>,
    },
    /// The runtime has no support for the element type asked for (the machine: f16 on a
    /// device without it).
    #[error("kernel `{kernel}`: this device does not support {element}")]
    Unsupported {
        /// The kernel that was asked to run.
        kernel: &'static str,
        /// The element type.
        element: &'static str,
    },
    /// A kernel library (cubek) has no routine for this device or shape (the machine: no
    /// tensor cores or plane operations; or a shape outside its blueprints). The caller falls
    /// back to another kernel.
    #[error("kernel `{kernel}` cannot run here: {reason}")]
    Unavailable {
        /// The kernel that was asked to run.
        kernel: &'static str,
        /// Why, as the library says it.
        reason: Box<str>,
    },
    /// Weights in a block format the kernel does not take (the caller).
    #[error("kernel `{kernel}` does not take {format} weights")]
    Format {
        /// The kernel that was asked to run.
        kernel: &'static str,
        /// The format's name.
        format: &'static str,
    },
    /// The device runtime failed to run or read back a kernel (the device, or an internal bug).
    #[error("kernel `{kernel}` failed on the device")]
    Device {
        /// The kernel that was running.
        kernel: &'static str,
        /// What the runtime reported.
        #[source]
        source: Box<cubecl::server::ServerError>,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        assert!(
            size_of::<Error>() <= 40,
            "Error is {} bytes",
            size_of::<Error>()
        );
    }
}
