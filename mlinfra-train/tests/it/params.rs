//! Flat parameter layouts: paths, round trips, gradients, and mismatches as typed errors.

use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_train::models::MlpConfig;
use mlinfra_train::{Error, ParamLayout};

fn mlp(hidden: Vec<usize>, seed: u64, device: &Device) -> mlinfra_train::models::Mlp {
    MlpConfig {
        input: 5,
        hidden,
        classes: 3,
        seed,
    }
    .init(device)
    .unwrap()
}

#[test]
fn parameters_are_laid_out_by_module_path() {
    let model = mlp(vec![4], 0, &Device::flex());
    let layout = ParamLayout::of(&model).unwrap();
    let slots: Vec<(&str, &[usize], usize)> = layout
        .slots()
        .iter()
        .map(|s| (s.path.as_str(), s.shape.as_slice(), s.offset))
        .collect();
    assert_eq!(
        slots,
        [
            ("layers.0.weight", &[5, 4][..], 0),
            ("layers.0.bias", &[4][..], 20),
            ("layers.1.weight", &[4, 3][..], 24),
            ("layers.1.bias", &[3][..], 36),
        ]
    );
    assert_eq!(layout.len(), 39);
}

/// The seed decides the weights (same seed, same bits; in the PyTorch bound ±1/sqrt(fan_in)),
/// and values survive a load/read round trip exactly.
#[test]
fn seeded_init_is_reproducible_and_round_trips() {
    let device = Device::flex();
    let a = mlp(vec![4], 7, &device);
    let layout = ParamLayout::of(&a).unwrap();
    let values = layout.values(&a).unwrap();
    assert_eq!(values, layout.values(&mlp(vec![4], 7, &device)).unwrap());
    assert_ne!(values, layout.values(&mlp(vec![4], 8, &device)).unwrap());
    let first = layout.slot("layers.0.weight").unwrap();
    let bound = 1.0 / 5f32.sqrt();
    assert!(values[first.range()].iter().all(|v| v.abs() <= bound));
    let second = layout.slot("layers.1.bias").unwrap();
    let bound = 1.0 / 4f32.sqrt();
    assert!(values[second.range()].iter().all(|v| v.abs() <= bound));

    let new: Vec<f32> = (0..layout.len()).map(|i| i as f32 * 0.125 - 2.0).collect();
    let b = layout.load(a, &new).unwrap();
    assert_eq!(layout.values(&b).unwrap(), new);
}

/// Gradients come out in layout order and match a hand-derived case: for a linear classifier
/// with zero weights, d(mean CE)/d(bias) = softmax(0) - onehot, averaged over the batch.
#[test]
fn gradients_come_out_flat_in_layout_order() {
    let device = Device::flex().autodiff();
    let model = mlp(vec![], 0, &device);
    let layout = ParamLayout::of(&model).unwrap();
    let model = layout.load(model, &vec![0.0; layout.len()]).unwrap();
    let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 10], [2, 5]), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
    let grads = model.loss(x, y).backward();
    let flat = layout.grads(&model, &grads).unwrap();
    let bias = &flat[layout.slot("layers.0.bias").unwrap().range()];
    let third = 1.0 / 3.0;
    let want = [third - 0.5, third, third - 0.5];
    for (got, want) in bias.iter().zip(want) {
        assert!((f64::from(*got) - want).abs() < 1e-6, "{bias:?}");
    }
}

#[test]
fn a_different_model_or_length_is_a_typed_error_naming_the_parameter() {
    let device = Device::flex();
    let layout = ParamLayout::of(&mlp(vec![4], 0, &device)).unwrap();
    let other = mlp(vec![6], 0, &device);
    let error = layout.values(&other).unwrap_err();
    assert!(matches!(error, Error::ModelLayout { .. }), "{error:?}");
    assert!(error.to_string().contains("layers.0.weight"), "{error}");
    let error = layout.load(other, &vec![0.0; layout.len()]).unwrap_err();
    assert!(error.to_string().contains("layers.0.weight"), "{error}");
    let error = layout
        .load(mlp(vec![4], 0, &device), &[0.0; 3])
        .unwrap_err();
    assert!(error.to_string().contains("3 values"), "{error}");
}
