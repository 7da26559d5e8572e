//! GELU on the software Vulkan adapter against its f64 twin.

use mlinfra_kernels::wgpu::software_device;
use mlinfra_kernels::{gelu_tanh, gelu_tanh_reference};
use mlinfra_test_utils::rng::SplitMix64;

/// f32 evaluation of the tanh form (lavapipe's `tanh` included) stays within this of f64.
const TOLERANCE: f64 = 2e-6;

#[test]
fn gelu_matches_f64_twin_elementwise() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0x6e1);
    // Not a multiple of the cube size, so the tail guard is exercised; edges of the f32 range
    // where tanh saturates; exact zeros and signed zero.
    let mut input = rng.vec_f32(70_001, -8.0, 8.0);
    input.extend([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 1e4, -1e4]);

    let output = gelu_tanh(&client, &input).unwrap();

    assert_eq!(output.len(), input.len());
    for (i, (&x, &y)) in input.iter().zip(&output).enumerate() {
        let expected = gelu_tanh_reference(f64::from(x));
        let error = (f64::from(y) - expected).abs();
        assert!(
            error <= TOLERANCE * expected.abs().max(1.0),
            "element {i}: gelu({x}) = {y}, f64 reference {expected}, error {error:e}"
        );
    }
}

#[test]
fn empty_input_launches_nothing() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    assert!(gelu_tanh(&device.client(), &[]).unwrap().is_empty());
}
