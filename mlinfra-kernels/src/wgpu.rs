//! The cubecl `wgpu` runtime, and the software Vulkan adapter that CPU-only machines run
//! kernels on.
//!
//! wgpu never picks a software adapter by itself, so [`software_device`] names it
//! (`WgpuDeviceKind::Cpu`) and pins the Vulkan API: on Linux that is Mesa's lavapipe. Without
//! the pin wgpu would fall back to OpenGL's llvmpipe when Vulkan is missing, and a test would
//! pass on a different driver than the one it claims to exercise. [`default_device`] takes the
//! first Vulkan adapter instead: a GPU where the machine has one, lavapipe where it has only
//! that. Each is initialised once per process (cubecl registers one runtime per device) and
//! shared by every caller.
//!
//! lavapipe has no bf16 and no plane (warp) operations, so kernels make those comptime choices;
//! and its timings are a CPU emulating a GPU, never reported as GPU numbers.

use std::sync::OnceLock;

use cubecl::client::Client;
use cubecl::wgpu::{RuntimeOptions, Vulkan, WgpuDevice, WgpuDeviceKind, WgpuInitError};

use crate::{Error, Result};

/// The Debian/Ubuntu package that provides the software Vulkan driver.
pub const SOFTWARE_VULKAN_PACKAGE: &str = "mesa-vulkan-drivers";

/// An initialised wgpu device and the adapter behind it.
#[derive(Debug, Clone)]
pub struct Adapter {
    device: WgpuDevice,
    adapter_name: String,
    driver: String,
}

impl Adapter {
    /// A client to launch kernels on. Cheap: clients share the runtime registered at start-up.
    pub fn client(&self) -> Client {
        cubecl::Device::Wgpu(self.device.clone()).client()
    }

    /// The cubecl device.
    pub fn device(&self) -> &WgpuDevice {
        &self.device
    }

    /// The adapter's name as the driver reports it (for example `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    /// The driver's name and version (for example `llvmpipe` / `Mesa 22.3.6`).
    pub fn driver(&self) -> &str {
        &self.driver
    }
}

/// The software (CPU) Vulkan adapter, initialised on first use.
///
/// # Errors
///
/// [`Error::NoSoftwareAdapter`], naming [`SOFTWARE_VULKAN_PACKAGE`], when no such adapter exists. The
/// outcome is remembered: later calls return the same device or an equivalent error.
pub fn software_device() -> Result<Adapter> {
    static DEVICE: OnceLock<Result<Adapter, String>> = OnceLock::new();
    once(&DEVICE, WgpuDeviceKind::Cpu)
}

/// The first Vulkan adapter, hardware or software, initialised on first use: what
/// `llama_generate --device wgpu` runs on.
///
/// # Errors
///
/// As [`software_device`], when the machine has no Vulkan adapter at all.
pub fn default_device() -> Result<Adapter> {
    static DEVICE: OnceLock<Result<Adapter, String>> = OnceLock::new();
    once(&DEVICE, WgpuDeviceKind::DefaultDevice)
}

fn once(cell: &OnceLock<Result<Adapter, String>>, kind: WgpuDeviceKind) -> Result<Adapter> {
    let outcome = cell.get_or_init(|| init(kind).map_err(|e| e.to_string()));
    match outcome {
        Ok(device) => Ok(device.clone()),
        // Initialisation is attempted once per process (cubecl cannot register a device twice);
        // later callers get the first failure's message.
        Err(message) => Err(no_software_adapter(WgpuInitError::InvalidConfiguration {
            message: message.clone(),
        })),
    }
}

fn init(kind: WgpuDeviceKind) -> Result<Adapter, WgpuInitError> {
    let device = WgpuDevice::new(kind);
    let setup = cubecl::wgpu::try_init_setup::<Vulkan>(&device, RuntimeOptions::try_default()?)?;
    let info = setup.adapter.get_info();
    Ok(Adapter {
        device,
        adapter_name: info.name,
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    })
}

fn no_software_adapter(source: WgpuInitError) -> Error {
    Error::NoSoftwareAdapter {
        package: SOFTWARE_VULKAN_PACKAGE,
        source: Box::new(source),
    }
}
