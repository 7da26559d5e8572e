//! The quickstart: what each layer of mlinfra does today, and proof of it on this machine.
//!
//! It prints the layers and their status, then runs what exists and checks the results:
//! a matmul on the CPU through burn (against an f64 reference), the GELU kernel on a software
//! Vulkan adapter (against its f64 twin), and a request for `cuda:0` (a typed answer, whether or
//! not the build or the machine has CUDA).
//!
//! Run with: `cargo run --release -p mlinfra-examples --example quickstart`

use anyhow::{Context, Result, ensure};
use burn::tensor::{Tensor, TensorData};
use mlinfra_examples::LAYERS;
use mlinfra_loader::Device;
use mlinfra_test_utils::reference::matmul_f64;

fn main() -> Result<()> {
    println!(
        "mlinfra {}: the infrastructure layer of machine learning\n",
        env!("CARGO_PKG_VERSION")
    );
    for layer in LAYERS.iter().rev() {
        println!("  {:>3}  {:<16} {}", layer.level, layer.krate, layer.status);
    }
    println!();

    cpu_matmul()?;
    gelu_kernel()?;
    cuda_request();
    Ok(())
}

/// burn on the CPU, reached through the run-time device name `cpu`.
fn cpu_matmul() -> Result<()> {
    let device = "cpu".parse::<Device>()?.to_burn()?;
    let (m, k, n) = (64, 128, 32);
    let lhs: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let rhs: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect();
    let expected = matmul_f64(&lhs, &rhs, m, k, n);

    let a = Tensor::<2>::from_data(TensorData::new(lhs, [m, k]), &device);
    let b = Tensor::<2>::from_data(TensorData::new(rhs, [k, n]), &device);
    let got = a
        .matmul(b)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;

    let max_error = got
        .iter()
        .zip(&expected)
        .map(|(&g, &e)| (f64::from(g) - e).abs())
        .fold(0.0, f64::max);
    ensure!(
        max_error < 1e-3,
        "cpu matmul differs from the f64 reference by {max_error:e}"
    );
    println!("cpu     burn flex matmul {m}x{k}x{n}: max |error| vs f64 = {max_error:.1e}  ok");
    Ok(())
}

/// A cubecl kernel on the software Vulkan adapter; a machine without one is told what to install.
fn gelu_kernel() -> Result<()> {
    let device = match mlinfra_kernels::wgpu::software_device() {
        Ok(device) => device,
        Err(error) => {
            println!("kernels unavailable here: {error}");
            return Ok(());
        }
    };
    let input: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5_000.0) / 625.0).collect();
    let output = mlinfra_kernels::gelu_tanh(&device.client(), &input).context("gelu kernel")?;
    let max_error = input
        .iter()
        .zip(&output)
        .map(|(&x, &y)| (f64::from(y) - mlinfra_kernels::gelu_tanh_reference(f64::from(x))).abs())
        .fold(0.0, f64::max);
    ensure!(
        max_error < 1e-5,
        "gelu kernel differs from its f64 twin by {max_error:e}"
    );
    println!(
        "kernels gelu on {} ({} elements): max |error| vs f64 = {max_error:.1e}  ok",
        device.adapter_name(),
        input.len()
    );
    Ok(())
}

/// A GPU request: a device, or a typed error saying why not. Never a panic.
fn cuda_request() {
    match Device::Cuda(0).to_burn() {
        Ok(_) => println!("cuda    cuda:0 is available"),
        Err(error) => println!("cuda    cuda:0 not used: {error}"),
    }
}
