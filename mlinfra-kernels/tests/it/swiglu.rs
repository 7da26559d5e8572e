//! Fused SwiGLU, forward and backward, on the software Vulkan adapter against its f64 twins
//! (issue 25, items 1 and 2): lengths that are not multiples of the cube size, outputs
//! poisoned with NaN before the launch, operands that do not fit refused.

use mlinfra_kernels::wgpu::software_device;
use mlinfra_kernels::{
    Error, swiglu, swiglu_backward, swiglu_backward_reference, swiglu_reference,
};
use mlinfra_test_utils::rng::SplitMix64;

/// f32 evaluation (lavapipe's `exp` and division included) stays within this of f64,
/// relative to the larger of the value and 1.
const F32_TOLERANCE: f64 = 4e-6;

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
fn operands_that_do_not_fit_are_refused() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    assert!(matches!(
        swiglu(&client, &[1.0, 2.0], &[1.0]),
        Err(Error::Shape {
            kernel: "swiglu",
            ..
        })
    ));
    assert!(matches!(
        swiglu_backward(&client, &[1.0], &[1.0], &[1.0, 2.0]),
        Err(Error::Shape { .. })
    ));
    assert!(swiglu(&client, &[], &[]).unwrap().is_empty());
}
