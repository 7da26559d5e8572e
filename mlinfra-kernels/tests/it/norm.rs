//! RMSNorm (with and without the fused residual add), forward and backward, on the software
//! Vulkan adapter against the f64 twins: row widths below, at and past the cube's 256 units,
//! enough rows for several weight-gradient chunks, outputs poisoned before launch (the
//! kernels' outputs start as NaN), in f32 and f16.

use half::f16;
use mlinfra_kernels::norm::{
    rms_norm, rms_norm_backward, rms_norm_backward_reference, rms_norm_reference,
};
use mlinfra_kernels::wgpu::software_device;
use mlinfra_kernels::{DeviceBuffer, Element, Error};
use mlinfra_test_utils::rng::SplitMix64;

const EPS: f32 = 1e-5;

/// How close each element type comes to the f64 twin, relative to the larger of the value and
/// the row's largest value (a norm's outputs share one scale; the backward's are differences
/// of terms of that scale).
trait Tolerance: Element {
    const TOLERANCE: f64;
    fn from_f32(value: f32) -> Self;
    fn wide(self) -> f64;
}

impl Tolerance for f32 {
    /// f32 sums over a row of up to 2,000 values, and `inverse_sqrt`.
    const TOLERANCE: f64 = 2e-5;
    fn from_f32(value: f32) -> Self {
        value
    }
    fn wide(self) -> f64 {
        f64::from(self)
    }
}

impl Tolerance for f16 {
    /// Inputs, the residual sum and the outputs rounded to f16 (relative step 2^-11), the sums
    /// in f32: a few steps.
    const TOLERANCE: f64 = 8e-3;
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
    fn wide(self) -> f64 {
        f64::from(self.to_f32())
    }
}

fn assert_close<T: Tolerance>(what: &str, got: &[T], want: &[f64], scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = g.wide();
        assert!(
            (g - w).abs() <= T::TOLERANCE * w.abs().max(scale),
            "{what}[{i}] = {g} vs {w} (scale {scale})"
        );
    }
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(1e-3f64, |m, v| m.max(v.abs()))
}

fn check_shapes<T: Tolerance>(seed: u64, shapes: &[(usize, usize)]) {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(seed);
    let mut rounded = |len: usize, low: f64, high: f64| -> Vec<T> {
        rng.vec_f32(len, low, high)
            .into_iter()
            .map(T::from_f32)
            .collect()
    };
    for &(rows, cols) in shapes {
        for with_residual in [false, true] {
            let what = format!("{rows}×{cols}, residual {with_residual}");
            let input = rounded(rows * cols, -2.0, 2.0);
            let residual = rounded(rows * cols, -1.0, 1.0);
            let weight = rounded(cols, -1.5, 1.5);
            let grad = rounded(rows * cols, -1.0, 1.0);
            let grad_stream = rounded(rows * cols, -0.5, 0.5);
            let wide = |v: &[T]| -> Vec<f64> { v.iter().map(|x| x.wide()).collect() };
            let (input_w, residual_w, weight_w, grad_w, grad_stream_w) = (
                wide(&input),
                wide(&residual),
                wide(&weight),
                wide(&grad),
                wide(&grad_stream),
            );

            let up = |v: &[T]| DeviceBuffer::from_slice(&client, v);
            let (input_d, residual_d, weight_d) = (up(&input), up(&residual), up(&weight));
            let out = rms_norm(
                &client,
                &input_d,
                with_residual.then_some(&residual_d),
                &weight_d,
                EPS,
            )
            .unwrap();
            let normed = out.normed.to_vec(&client, "rms_norm").unwrap();
            let rstd = out.rstd.to_vec(&client, "rms_norm").unwrap();
            let stream_d = out.stream.clone().unwrap_or_else(|| input_d.clone());
            let stream = stream_d.to_vec(&client, "rms_norm").unwrap();
            assert_eq!(out.stream.is_some(), with_residual, "{what}");

            let grad_stream_d = up(&grad_stream);
            let grads = rms_norm_backward(
                &client,
                &up(&grad),
                &stream_d,
                &weight_d,
                &out.rstd,
                with_residual.then_some(&grad_stream_d),
            )
            .unwrap();
            let grad_input = grads.input.to_vec(&client, "rms_norm_backward").unwrap();
            let grad_weight = grads.weight.to_vec(&client, "rms_norm_backward").unwrap();

            let mut want_grad_weight = vec![0.0; cols];
            for row in 0..rows {
                let span = row * cols..(row + 1) * cols;
                let (want, _) = rms_norm_reference(
                    &input_w[span.clone()],
                    with_residual.then(|| &residual_w[span.clone()]),
                    &weight_w,
                    f64::from(EPS),
                );
                let at = format!("{what}, row {row}");
                assert_close(
                    &format!("{at}: normed"),
                    &normed[span.clone()],
                    &want,
                    max_abs(&want),
                );
                if with_residual {
                    let want_stream: Vec<f64> = input_w[span.clone()]
                        .iter()
                        .zip(&residual_w[span.clone()])
                        .map(|(x, r)| x + r)
                        .collect();
                    assert_close(
                        &format!("{at}: stream"),
                        &stream[span.clone()],
                        &want_stream,
                        1.0,
                    );
                }

                // rstd and the backward twin at the stream the kernel wrote and normalized
                // (in f16, the sum rounded to f16).
                let stream_row = wide(&stream[span.clone()]);
                let (_, want_rstd) =
                    rms_norm_reference(&stream_row, None, &weight_w, f64::from(EPS));
                assert_close(&format!("{at}: rstd"), &rstd[row..=row], &[want_rstd], 0.0);
                let (mut want_dx, want_dw) = rms_norm_backward_reference(
                    &grad_w[span.clone()],
                    &stream_row,
                    &weight_w,
                    f64::from(EPS),
                );
                // `d input` is a difference of two terms; the larger, `rstd · dy · w`, sets
                // its scale (with one column they cancel down to the `eps` term).
                let products: Vec<f64> = grad_w[span.clone()]
                    .iter()
                    .zip(&weight_w)
                    .map(|(g, w)| want_rstd * g * w)
                    .collect();
                if with_residual {
                    for (d, g) in want_dx.iter_mut().zip(&grad_stream_w[span.clone()]) {
                        *d += g;
                    }
                }
                assert_close(
                    &format!("{at}: d input"),
                    &grad_input[span.clone()],
                    &want_dx,
                    max_abs(&products).max(max_abs(&want_dx)),
                );
                for (sum, d) in want_grad_weight.iter_mut().zip(want_dw) {
                    *sum += d;
                }
            }
            assert_close(
                &format!("{what}: d weight"),
                &grad_weight,
                &want_grad_weight,
                max_abs(&want_grad_weight),
            );
        }
    }
}

#[test]
fn rms_norm_forward_and_backward_match_their_f64_twins_in_f32() {
    check_shapes::<f32>(
        0x4e02,
        &[(1, 1), (3, 7), (2, 256), (5, 257), (130, 96), (4, 2_049)],
    );
}

#[test]
fn rms_norm_in_f16_matches_its_f64_twins_within_f16s_tolerance() {
    check_shapes::<f16>(0xf16e, &[(3, 7), (67, 300)]);
}

#[test]
fn rms_norm_refuses_operands_that_do_not_fit() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let input = DeviceBuffer::from_slice(&client, &[1.0f32; 10]);
    let weight = DeviceBuffer::from_slice(&client, &[1.0f32; 4]);
    assert!(matches!(
        rms_norm(&client, &input, None, &weight, EPS),
        Err(Error::Shape {
            kernel: "rms_norm",
            ..
        })
    ));
    let weight = DeviceBuffer::from_slice(&client, &[1.0f32; 5]);
    let short = DeviceBuffer::from_slice(&client, &[1.0f32; 5]);
    assert!(matches!(
        rms_norm(&client, &input, Some(&short), &weight, EPS),
        Err(Error::Shape { .. })
    ));
    let rstd = DeviceBuffer::from_slice(&client, &[1.0f32; 3]);
    assert!(matches!(
        rms_norm_backward(&client, &input, &input, &weight, &rstd, None),
        Err(Error::Shape {
            kernel: "rms_norm_backward",
            ..
        })
    ));
}

/// bf16 is a comptime choice like f16: where the runtime has it (not lavapipe) the norm runs
/// within bf16's tolerance (relative step 2^-8), elsewhere it is a typed error, not a panic or
/// a wrong answer.
#[test]
fn rms_norm_in_bf16_runs_where_the_runtime_has_it_and_is_refused_elsewhere() {
    use half::bf16;
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let cols = 300;
    let x: Vec<bf16> = (0..2 * cols)
        .map(|i| bf16::from_f32((i % 17) as f32 / 4.0 - 2.0))
        .collect();
    let w: Vec<bf16> = (0..cols)
        .map(|i| bf16::from_f32(1.0 + (i % 5) as f32 / 10.0))
        .collect();
    let out = rms_norm(
        &client,
        &DeviceBuffer::from_slice(&client, &x),
        None,
        &DeviceBuffer::from_slice(&client, &w),
        EPS,
    );
    if !mlinfra_kernels::supports::<bf16>(&client) {
        assert!(
            matches!(
                out,
                Err(Error::Unsupported {
                    kernel: "rms_norm",
                    ..
                })
            ),
            "{out:?}"
        );
        return;
    }
    let normed = out.unwrap().normed.to_vec(&client, "rms_norm").unwrap();
    let wide = |v: &[bf16]| -> Vec<f64> { v.iter().map(|x| f64::from(x.to_f32())).collect() };
    for row in 0..2 {
        let span = row * cols..(row + 1) * cols;
        let (want, _) =
            rms_norm_reference(&wide(&x[span.clone()]), None, &wide(&w), f64::from(EPS));
        for (g, w) in wide(&normed[span]).iter().zip(&want) {
            assert!((g - w).abs() <= 2e-2 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
}
