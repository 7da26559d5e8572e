//! Kernel benchmarks. On CPU-only machines the "device" is Mesa's software Vulkan driver:
//! these figures compare code paths on one machine, they are never GPU numbers.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use mlinfra_benches::ELEMENTWISE_SIZES;
use mlinfra_kernels::{gelu_tanh, gelu_tanh_reference, wgpu::software_device};

fn gelu(c: &mut Criterion) {
    let mut group = c.benchmark_group("gelu_tanh");
    let device = software_device().ok();
    for len in ELEMENTWISE_SIZES {
        let input: Vec<f32> = (0..len)
            .map(|i| ((i % 1024) as f32 - 512.0) / 64.0)
            .collect();
        group.throughput(Throughput::Bytes((len * 2 * size_of::<f32>()) as u64));
        group.bench_with_input(
            BenchmarkId::new("cpu_scalar_f64", len),
            &input,
            |b, input| {
                b.iter(|| {
                    input
                        .iter()
                        .map(|&x| gelu_tanh_reference(f64::from(x)) as f32)
                        .collect::<Vec<_>>()
                })
            },
        );
        if let Some(device) = &device {
            let client = device.client();
            // `gelu_tanh` reads the result back, so each iteration ends synchronised with the device.
            group.bench_with_input(
                BenchmarkId::new("wgpu_software", len),
                &input,
                |b, input| b.iter(|| gelu_tanh(&client, black_box(input)).expect("kernel runs")),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, gelu);
