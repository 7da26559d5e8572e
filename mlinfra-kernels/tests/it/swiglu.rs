//! Fused SwiGLU, forward and backward, on the software Vulkan adapter against its f64 twins
//! (issue 25, items 1 and 2): lengths that are not multiples of the cube size, outputs
//! poisoned with NaN before the launch, operands that do not fit refused.

use half::f16;
use mlinfra_kernels::wgpu::software_device;
use mlinfra_kernels::{
    Error, swiglu, swiglu_backward, swiglu_backward_reference, swiglu_reference,
};
use mlinfra_test_utils::rng::SplitMix64;

/// f32 evaluation (lavapipe's `exp` and division included) stays within this of f64,
/// relative to the larger of the value and 1.
const F32_TOLERANCE: f64 = 4e-6;
/// f16: inputs rounded to f16 (the twin takes the rounded values), arithmetic and the result
/// in f16: a few units of f16's 2^-11 relative step.
const F16_TOLERANCE: f64 = 4e-3;

fn close(got: f32, want: f64) -> bool {
    (f64::from(got) - want).abs() <= F32_TOLERANCE * want.abs().max(1.0)
}

#[test]
fn swiglu_forward_and_backward_match_their_f64_twins() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0x5719);
    for len in [1usize, 255, 257, 70_001] {
        let mut gate = rng.vec_f32(len, -10.0, 10.0);
        let up = rng.vec_f32(len, -3.0, 3.0);
        let grad = rng.vec_f32(len, -2.0, 2.0);
        // Saturated sigmoids and exact zeros.
        if len > 8 {
            gate[..6].copy_from_slice(&[0.0, -0.0, 40.0, -40.0, 88.0, -88.0]);
        }
        let h = swiglu(&client, &gate, &up).unwrap();
        let (dg, du) = swiglu_backward(&client, &gate, &up, &grad).unwrap();
        assert_eq!((h.len(), dg.len(), du.len()), (len, len, len));
        for i in 0..len {
            let (g, u, d) = (f64::from(gate[i]), f64::from(up[i]), f64::from(grad[i]));
            let want = swiglu_reference(g, u);
            let (want_dg, want_du) = swiglu_backward_reference(g, u, d);
            assert!(close(h[i], want), "len {len}, h[{i}] = {} vs {want}", h[i]);
            assert!(
                close(dg[i], want_dg),
                "len {len}, dg[{i}] = {} vs {want_dg}",
                dg[i]
            );
            assert!(
                close(du[i], want_du),
                "len {len}, du[{i}] = {} vs {want_du}",
                du[i]
            );
        }
    }
}

#[test]
fn swiglu_in_f16_matches_its_f64_twin_within_f16s_tolerance() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0xf16);
    let len = 4_099;
    let half = |v: Vec<f32>| -> Vec<f16> { v.into_iter().map(f16::from_f32).collect() };
    let (gate, up, grad) = (
        half(rng.vec_f32(len, -6.0, 6.0)),
        half(rng.vec_f32(len, -2.0, 2.0)),
        half(rng.vec_f32(len, -2.0, 2.0)),
    );
    let h = swiglu(&client, &gate, &up).unwrap();
    let (dg, du) = swiglu_backward(&client, &gate, &up, &grad).unwrap();
    let wide = |v: f16| f64::from(v.to_f32());
    for i in 0..len {
        let (g, u, d) = (wide(gate[i]), wide(up[i]), wide(grad[i]));
        let (want_dg, want_du) = swiglu_backward_reference(g, u, d);
        for (name, got, want) in [
            ("h", h[i], swiglu_reference(g, u)),
            ("dg", dg[i], want_dg),
            ("du", du[i], want_du),
        ] {
            assert!(
                (wide(got) - want).abs() <= F16_TOLERANCE * want.abs().max(1.0),
                "{name}[{i}] = {got} vs {want}"
            );
        }
    }
}

#[test]
fn operands_that_do_not_fit_are_refused() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    assert!(matches!(
        swiglu(&client, &[1.0f32, 2.0], &[1.0]),
        Err(Error::Shape {
            kernel: "swiglu",
            ..
        })
    ));
    assert!(matches!(
        swiglu_backward(&client, &[1.0f32], &[1.0], &[1.0, 2.0]),
        Err(Error::Shape { .. })
    ));
    assert!(swiglu::<f32>(&client, &[], &[]).unwrap().is_empty());
}
