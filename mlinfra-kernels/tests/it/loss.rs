//! Fused softmax cross-entropy on the software Vulkan adapter against its f64 twin: the loss
//! and log-sum-exp per row, the gradient written over the logits (Liger's in-place form) and
//! the per-row backward, vocabularies below, at and past the cube's units, ignored rows,
//! extreme logits, f32 and f16.

use half::f16;
use mlinfra_kernels::loss::{
    IGNORE_INDEX, Targets, cross_entropy, cross_entropy_backward_in_place, cross_entropy_reference,
    cross_entropy_with_grad_in_place,
};
use mlinfra_kernels::wgpu::software_device;
use mlinfra_kernels::{DeviceBuffer, Error};
use mlinfra_test_utils::rng::SplitMix64;

/// f32: the log-sum-exp of up to 50,000 terms summed in f32, relative to max(|value|, 1).
const F32_LOSS_TOLERANCE: f64 = 2e-5;
/// f32 gradients are probabilities (at most 1 in magnitude): absolute.
const F32_GRAD_TOLERANCE: f64 = 1e-6;
/// f16: logits rounded to f16 (the twin takes the rounded values), sums in f32, gradients
/// rounded to f16 on the way out: absolute on values of magnitude ≤ 1.
const F16_GRAD_TOLERANCE: f64 = 1e-3;

struct Case {
    rows: usize,
    vocab: usize,
    logits: Vec<f32>,
    targets: Vec<i32>,
}

fn case(rng: &mut SplitMix64, rows: usize, vocab: usize) -> Case {
    let mut logits = rng.vec_f32(rows * vocab, -8.0, 8.0);
    // A row dominated by one huge logit and one of large negative values: the online maximum
    // must keep exp() in range.
    if rows > 2 && vocab > 3 {
        logits[vocab + 1] = 80.0;
        for x in &mut logits[2 * vocab..3 * vocab] {
            *x -= 70.0;
        }
    }
    let targets = (0..rows)
        .map(|r| {
            if r % 5 == 3 {
                IGNORE_INDEX
            } else {
                (rng.next_u64() % vocab as u64) as i32
            }
        })
        .collect();
    Case {
        rows,
        vocab,
        logits,
        targets,
    }
}

#[test]
fn cross_entropy_loss_and_gradients_match_the_f64_twin() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0xce);
    for (rows, vocab) in [(1, 1), (4, 3), (6, 256), (5, 257), (9, 1_000), (2, 49_152)] {
        let Case {
            logits, targets, ..
        } = case(&mut rng, rows, vocab);
        let what = format!("{rows}×{vocab}");
        let targets_d = Targets::new(&client, &targets, vocab).unwrap();
        let grad_scale = 1.0 / targets_d.counted().max(1) as f32;

        // Forward only: the logits stay as they were.
        let logits_d = DeviceBuffer::from_slice(&client, &logits);
        let plain = cross_entropy(&client, &logits_d, &targets_d).unwrap();
        assert_eq!(logits_d.to_vec(&client, "cross_entropy").unwrap(), logits);

        // Fused: the logits become the gradient of the mean loss.
        let mut fused_d = DeviceBuffer::from_slice(&client, &logits);
        let fused = cross_entropy_with_grad_in_place(&client, &mut fused_d, &targets_d, grad_scale)
            .unwrap();
        let fused_grad = fused_d.to_vec(&client, "cross_entropy").unwrap();

        // Per-row backward with its own upstream gradient per row.
        let grad_loss: Vec<f32> = (0..rows).map(|r| 0.5 + r as f32).collect();
        let mut backward_d = DeviceBuffer::from_slice(&client, &logits);
        cross_entropy_backward_in_place(
            &client,
            &mut backward_d,
            &targets_d,
            &plain.lse,
            &DeviceBuffer::from_slice(&client, &grad_loss),
            1.0,
        )
        .unwrap();
        let backward_grad = backward_d
            .to_vec(&client, "cross_entropy_backward")
            .unwrap();

        // One upstream value for every row, scaled (a mean's backward): the fused gradient.
        let mut broadcast_d = DeviceBuffer::from_slice(&client, &logits);
        cross_entropy_backward_in_place(
            &client,
            &mut broadcast_d,
            &targets_d,
            &plain.lse,
            &DeviceBuffer::from_slice(&client, &[1.0f32]),
            grad_scale,
        )
        .unwrap();
        let broadcast_grad = broadcast_d
            .to_vec(&client, "cross_entropy_backward")
            .unwrap();
        for (i, (b, f)) in broadcast_grad.iter().zip(&fused_grad).enumerate() {
            assert!(
                (b - f).abs() <= 1e-7,
                "{what}: broadcast grad [{i}] {b} vs fused {f}"
            );
        }

        for rows_out in [&plain, &fused] {
            let loss = rows_out.loss.to_vec(&client, "cross_entropy").unwrap();
            let lse = rows_out.lse.to_vec(&client, "cross_entropy").unwrap();
            for r in 0..rows {
                let row: Vec<f64> = logits[r * vocab..(r + 1) * vocab]
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect();
                let (want_loss, want_lse, want_grad) = cross_entropy_reference(&row, targets[r]);
                for (name, got, want) in [("loss", loss[r], want_loss), ("lse", lse[r], want_lse)] {
                    assert!(
                        (f64::from(got) - want).abs() <= F32_LOSS_TOLERANCE * want.abs().max(1.0),
                        "{what}, row {r}: {name} {got} vs {want}"
                    );
                }
                for (c, want) in want_grad.iter().enumerate() {
                    let i = r * vocab + c;
                    let fused_want = want * f64::from(grad_scale);
                    let backward_want = want * f64::from(grad_loss[r]);
                    assert!(
                        (f64::from(fused_grad[i]) - fused_want).abs() <= F32_GRAD_TOLERANCE,
                        "{what}, row {r}, col {c}: fused grad {} vs {fused_want}",
                        fused_grad[i]
                    );
                    assert!(
                        (f64::from(backward_grad[i]) - backward_want).abs()
                            <= F32_GRAD_TOLERANCE * f64::from(grad_loss[r]),
                        "{what}, row {r}, col {c}: backward grad {} vs {backward_want}",
                        backward_grad[i]
                    );
                }
            }
        }
    }
}

#[test]
fn cross_entropy_in_f16_matches_the_f64_twin_within_f16s_tolerance() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    let mut rng = SplitMix64::new(0xf16c);
    let Case {
        rows,
        vocab,
        logits,
        targets,
    } = case(&mut rng, 7, 3_001);
    let logits: Vec<f16> = logits.into_iter().map(f16::from_f32).collect();
    let targets_d = Targets::new(&client, &targets, vocab).unwrap();
    let mut logits_d = DeviceBuffer::from_slice(&client, &logits);
    let out = cross_entropy_with_grad_in_place(&client, &mut logits_d, &targets_d, 1.0).unwrap();
    let loss = out.loss.to_vec(&client, "cross_entropy").unwrap();
    let grad = logits_d.to_vec(&client, "cross_entropy").unwrap();
    for r in 0..rows {
        let row: Vec<f64> = logits[r * vocab..(r + 1) * vocab]
            .iter()
            .map(|x| f64::from(x.to_f32()))
            .collect();
        let (want_loss, _, want_grad) = cross_entropy_reference(&row, targets[r]);
        // The loss sums in f32 over f16 inputs taken exactly.
        assert!(
            (f64::from(loss[r]) - want_loss).abs() <= F32_LOSS_TOLERANCE * want_loss.abs().max(1.0),
            "row {r}: loss {} vs {want_loss}",
            loss[r]
        );
        for c in 0..vocab {
            let got = f64::from(grad[r * vocab + c].to_f32());
            assert!(
                (got - want_grad[c]).abs() <= F16_GRAD_TOLERANCE,
                "row {r}, col {c}: grad {got} vs {}",
                want_grad[c]
            );
        }
    }
}

#[test]
fn targets_outside_the_vocabulary_and_mismatched_logits_are_refused() {
    let device = software_device().unwrap_or_else(|error| panic!("{error}"));
    let client = device.client();
    for bad in [[0, 5], [0, -1]] {
        let error = Targets::new(&client, &bad, 5).unwrap_err();
        assert!(
            matches!(&error, Error::Shape { kernel: "cross_entropy", reason } if reason.contains("row 1")),
            "{error}"
        );
    }
    let targets = Targets::new(&client, &[1, IGNORE_INDEX], 5).unwrap();
    assert_eq!(targets.counted(), 1);
    let logits = DeviceBuffer::from_slice(&client, &[0.0f32; 9]);
    assert!(matches!(
        cross_entropy(&client, &logits, &targets),
        Err(Error::Shape { .. })
    ));
}
