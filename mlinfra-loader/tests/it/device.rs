//! A run-time device choice reaches burn, or fails with a typed error.

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData, Tolerance};
use mlinfra_loader::{Device, Error, Loader, Staging, Tensors};
use mlinfra_test_utils::reference::matmul_f64;

use crate::fixtures::Fixture;

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

fn numeric_columns() -> Tensors {
    Tensors::new().columns(["id", "emb", "label"])
}

/// On the CPU nothing is staged, and the loader says so: `pinned` false, no pinned byte, no
/// staging time.
#[test]
fn a_cpu_loader_stages_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture::write(dir.path(), 300);
    let mut loader = Loader::builder(fixture.cache(), 64)
        .collate(numeric_columns())
        .device(Device::Cpu)
        .build()
        .unwrap();
    assert_eq!(
        loader.staging(),
        Staging {
            device: Device::Cpu,
            pinned: false
        }
    );
    let mut bytes = 0;
    for batch in loader.by_ref() {
        let batch = batch.unwrap();
        assert_eq!(batch.data.pinned_bytes(), 0);
        bytes += batch.data.num_bytes();
    }
    assert!(bytes > 0);
    let stats = loader.stats();
    assert_eq!((stats.pinned_bytes, stats.stage_time.is_zero()), (0, true));
}

/// A GPU loader in a build without `cuda` fails at `build()`, before any worker starts (the
/// source is released again), instead of delivering host batches under a GPU's name.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_loader_without_the_feature_fails_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture::write(dir.path(), 50);
    let source = Arc::new(fixture.cache());
    let error = Loader::builder(source.clone(), 8)
        .device(Device::Cuda(0))
        .build()
        .expect_err("no cuda in this build");
    // The same error `Device::to_burn` gives (checked by variant above), naming the device.
    assert_eq!(
        error.to_string(),
        "device cuda:0 needs the `cuda` cargo feature, which this build does not enable"
    );
    assert_eq!(Arc::strong_count(&source), 1);
}

/// On a GPU: every delivered byte sits in pinned memory, and the tensors built from it on the
/// device hold exactly the batch's values. Skips (printing why) where there is no GPU, which
/// is every CI machine; `cargo test --features cuda` on a GPU machine runs it.
#[cfg(feature = "cuda")]
#[test]
fn a_gpu_loader_delivers_pinned_batches_that_copy_exactly() {
    use crate::fixtures::{self, EMB_DIM};
    use mlinfra_loader::Shuffle;

    let gpu = Device::Cuda(0);
    let device = match gpu.to_burn() {
        Ok(device) => device,
        Err(error) => {
            eprintln!("skipped: {error}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture::write(dir.path(), 500);
    let source = Arc::new(fixture.cache());
    let mut loader = Loader::builder(source, 64)
        .collate(numeric_columns())
        .shuffle(Shuffle::Exact)
        .seed(5)
        .device(gpu)
        .build()
        .unwrap();
    assert!(loader.staging().pinned);
    let mut delivered = 0u64;
    for batch in loader.by_ref() {
        let mut batch = batch.unwrap();
        assert_eq!(batch.data.pinned_bytes(), batch.data.num_bytes());
        delivered += batch.data.num_bytes() as u64;
        let emb = Tensor::<2>::from_data(batch.data.remove("emb").unwrap(), &device);
        let want: Vec<f32> = batch
            .ids
            .iter()
            .flat_map(|&id| (0..EMB_DIM).map(move |k| fixtures::emb(id, k)))
            .collect();
        assert_eq!(emb.into_data().as_slice::<f32>().unwrap(), want);
    }
    let stats = loader.stats();
    assert_eq!(stats.pinned_bytes, delivered);
    assert!(!stats.stage_time.is_zero());
}
