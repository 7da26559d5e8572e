//! A run-time device choice reaches burn, or fails with a typed error.

use burn::tensor::{Tensor, TensorData, Tolerance};
use mlinfra_loader::{Device, Error};
use mlinfra_test_utils::reference::matmul_f64;

/// The CPU device runs real burn work: a matmul checked against an f64 reference.
#[test]
fn cpu_device_runs_a_matmul() {
    let device = Device::Cpu.to_burn().expect("the cpu is always available");
    let (m, k, n) = (3, 4, 2);
    let lhs: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
    let rhs: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
    let expected = matmul_f64(&lhs, &rhs, m, k, n);

    let a = Tensor::<2>::from_data(TensorData::new(lhs, [m, k]), &device);
    let b = Tensor::<2>::from_data(TensorData::new(rhs, [k, n]), &device);
    let product = a.matmul(b).into_data();

    let expected: Vec<f32> = expected.into_iter().map(|x| x as f32).collect();
    product.assert_approx_eq::<f32>(
        &TensorData::new(expected, [m, n]),
        Tolerance::absolute(1e-5),
    );
}

/// Without the `cuda` feature a GPU request is `FeatureDisabled`, naming the feature.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_typed_error() {
    let device: Device = "cuda:0".parse().unwrap();
    assert!(!device.is_available());
    let error = device.to_burn().expect_err("no cuda in this build");
    assert!(
        matches!(
            error,
            Error::FeatureDisabled {
                feature: "cuda",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "device cuda:0 needs the `cuda` cargo feature, which this build does not enable"
    );
}

/// With the feature but without a GPU (CI), the driver is asked first: a typed error, no panic.
#[cfg(feature = "cuda")]
#[test]
fn cuda_ordinal_past_the_driver_count_is_a_typed_error() {
    let error = Device::Cuda(1 << 20)
        .to_burn()
        .expect_err("no machine has 2^20 GPUs");
    assert!(
        matches!(error, Error::DeviceUnavailable { .. }),
        "{error:?}"
    );
}
