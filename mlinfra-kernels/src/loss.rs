//! Softmax cross-entropy over a vocabulary, fused, with the gradient written over the logits
//! (Liger Kernel's cross-entropy).
//!
//! A language model's logits are the largest activation of a training step (`tokens ×
//! vocab`: 8 × 2,048 tokens of a 49,152-token vocabulary are 3.2 GB in f32). Unfused, a
//! framework keeps them, the softmax, and a logits-sized gradient. Here one cube per row makes
//! one pass for an online maximum and sum (the log-sum-exp), writes the row's loss, and, in
//! [`cross_entropy_with_grad_in_place`], a second pass overwrites the row's logits with
//! `scale · (softmax − onehot)`: the gradient takes the logits' memory, and no other
//! logits-sized buffer exists. Traffic: one read per logit for the loss, one more read and a
//! write for the gradient.
//!
//! Rows whose target is [`IGNORE_INDEX`] (PyTorch's default) have loss 0 and a zero
//! gradient. Sums run in f32 for every element type.

use cubecl::prelude::*;

use crate::device::{DeviceBuffer, Element, require, supported};
use crate::reduce::{cube_max, cube_sum};
use crate::{Error, Result};

/// The target that marks a row as not counted (PyTorch's `ignore_index` default).
pub const IGNORE_INDEX: i32 = -100;

/// Units per row cube (a power of two for the reductions).
const ROW_UNITS: usize = 256;
/// Below every finite f32 logit, without the infinities' arithmetic.
const LOWEST: f32 = -3.0e38;

#[cube(launch)]
fn cross_entropy_kernel<F: Float>(
    logits: &mut [F],
    targets: &[i32],
    loss: &mut [f32],
    lse: &mut [f32],
    vocab: usize,
    grad_scale: f32,
    #[comptime] units: usize,
    #[comptime] write_grad: bool,
) {
    let row = CUBE_POS;
    if row < targets.len() {
        let base = row * vocab;
        let mut shared = Shared::<[f32]>::new_slice(units);
        // Each unit's running maximum and sum of exp(x - maximum) over its columns.
        let mut unit_max = f32::new(LOWEST);
        let mut unit_sum = 0f32;
        let mut c = UNIT_POS as usize;
        while c < vocab {
            let x = f32::cast_from(logits[base + c]);
            let new_max = max(unit_max, x);
            unit_sum = unit_sum * f32::exp(unit_max - new_max) + f32::exp(x - new_max);
            unit_max = new_max;
            c += units;
        }
        let row_max = cube_max(&mut shared, unit_max, units);
        let total = cube_sum(&mut shared, unit_sum * f32::exp(unit_max - row_max), units);
        let log_sum = row_max + f32::ln(total);
        let target = targets[row];
        if UNIT_POS == 0 {
            lse[row] = log_sum;
            if target >= 0 {
                loss[row] = log_sum - f32::cast_from(logits[base + usize::cast_from(target)]);
            } else {
                loss[row] = 0f32;
            }
        }
        if comptime!(write_grad) {
            // Unit 0 has read the target's logit before any unit overwrites it.
            sync_cube();
            let scale = select(target >= 0, grad_scale, 0f32);
            let mut c = UNIT_POS as usize;
            while c < vocab {
                let p = f32::exp(f32::cast_from(logits[base + c]) - log_sum);
                let onehot = select(i32::cast_from(c) == target, 1f32, 0f32);
                logits[base + c] = F::cast_from((p - onehot) * scale);
                c += units;
            }
        }
    }
}

/// One unit per logit: `logits[r, c] ← scale · g_r · (exp(logits[r, c] − lse[r]) − [c = t_r])`,
/// `g_r` the row's upstream gradient, or the one value of `grad_loss` for every row.
#[cube(launch)]
fn cross_entropy_backward_kernel<F: Float>(
    logits: &mut [F],
    targets: &[i32],
    lse: &[f32],
    grad_loss: &[f32],
    vocab: usize,
    scale: f32,
) {
    if ABSOLUTE_POS < logits.len() {
        let row = ABSOLUTE_POS / vocab;
        let c = ABSOLUTE_POS % vocab;
        let target = targets[row];
        let p = f32::exp(f32::cast_from(logits[ABSOLUTE_POS]) - lse[row]);
        let onehot = select(i32::cast_from(c) == target, 1f32, 0f32);
        let upstream = grad_loss[select(grad_loss.len() == 1, 0, row)];
        let factor = select(target >= 0, upstream * scale, 0f32);
        logits[ABSOLUTE_POS] = F::cast_from((p - onehot) * factor);
    }
}

/// A row's targets on the device, checked against the vocabulary.
#[derive(Debug, Clone)]
pub struct Targets {
    ids: DeviceBuffer<i32>,
    vocab: usize,
    counted: usize,
}

impl Targets {
    /// Uploads `targets`, one per row: a token id below `vocab`, or [`IGNORE_INDEX`].
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] naming the first row whose target is neither, or for an empty vocabulary.
    pub fn new(client: &Client, targets: &[i32], vocab: usize) -> Result<Self> {
        const KERNEL: &str = "cross_entropy";
        require(vocab > 0, KERNEL, || "an empty vocabulary".into())?;
        let is_token = |t: i32| usize::try_from(t).is_ok_and(|t| t < vocab);
        if let Some((row, target)) = targets
            .iter()
            .enumerate()
            .find(|&(_, &t)| t != IGNORE_INDEX && !is_token(t))
        {
            return Err(Error::Shape {
                kernel: KERNEL,
                reason: format!(
                    "row {row}: target {target} is not a token of a {vocab}-token vocabulary nor {IGNORE_INDEX}"
                )
                .into(),
            });
        }
        Ok(Self {
            ids: DeviceBuffer::from_slice(client, targets),
            vocab,
            counted: targets.iter().filter(|&&t| t != IGNORE_INDEX).count(),
        })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Rows not ignored: the divisor of a mean loss.
    pub fn counted(&self) -> usize {
        self.counted
    }

    /// The vocabulary they index.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

/// Per-row results of a cross-entropy launch.
#[derive(Debug, Clone)]
pub struct CrossEntropyRows {
    /// `lse − logit[target]` per row (0 for ignored rows), f32.
    pub loss: DeviceBuffer<f32>,
    /// `log Σ exp(logits)` per row, what [`cross_entropy_backward_in_place`] needs.
    pub lse: DeviceBuffer<f32>,
}

/// The cross-entropy of each row of the `rows × vocab` `logits` against `targets`. Reads
/// every logit once and leaves them as they are. Launches one kernel; returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`] when `logits` is not `targets.rows() × targets.vocab()`;
/// [`Error::Unsupported`] when the runtime lacks `E`.
pub fn cross_entropy<E: Element>(
    client: &Client,
    logits: &DeviceBuffer<E>,
    targets: &Targets,
) -> Result<CrossEntropyRows> {
    // The kernel writes no gradient: `logits` is only read, whatever the argument's mutability.
    launch_rows(client, logits, targets, None)
}

/// [`cross_entropy`], and the logits overwritten with the gradient of
/// `grad_scale · Σ_rows loss`: `grad_scale · (softmax − onehot)` per counted row, zeros for
/// ignored rows. For a mean over counted rows, `grad_scale = 1 / targets.counted()`.
///
/// # Errors
///
/// As [`cross_entropy`].
pub fn cross_entropy_with_grad_in_place<E: Element>(
    client: &Client,
    logits: &mut DeviceBuffer<E>,
    targets: &Targets,
    grad_scale: f32,
) -> Result<CrossEntropyRows> {
    launch_rows(client, logits, targets, Some(grad_scale))
}

/// The backward of [`cross_entropy`] for the upstream gradient `grad_loss`, one value per
/// row or one for every row (a mean's, with `scale = 1 / rows`): the logits, as
/// [`cross_entropy`] read them, are overwritten with `scale · g_r · (softmax − onehot)`. One
/// unit per logit; the gradient takes the logits' memory.
///
/// # Errors
///
/// [`Error::Shape`] when the lengths do not agree; [`Error::Unsupported`] as
/// [`cross_entropy`].
pub fn cross_entropy_backward_in_place<E: Element>(
    client: &Client,
    logits: &mut DeviceBuffer<E>,
    targets: &Targets,
    lse: &DeviceBuffer<f32>,
    grad_loss: &DeviceBuffer<f32>,
    scale: f32,
) -> Result<()> {
    const KERNEL: &str = "cross_entropy_backward";
    supported::<E>(client, KERNEL)?;
    check_logits(KERNEL, logits, targets)?;
    require(
        lse.len() == targets.rows() && (grad_loss.len() == targets.rows() || grad_loss.len() == 1),
        KERNEL,
        || {
            format!(
                "lse of {} and grad_loss of {} values for {} rows (grad_loss: one per row, or one)",
                lse.len(),
                grad_loss.len(),
                targets.rows()
            )
        },
    )?;
    if logits.is_empty() {
        return Ok(());
    }
    let cube_dim = CubeDim::new_1d(ROW_UNITS as u32);
    cross_entropy_backward_kernel::launch::<E>(
        client,
        cubecl::calculate_cube_count_elemwise(client, logits.len(), cube_dim),
        cube_dim,
        logits.arg(),
        targets.ids.arg(),
        lse.arg(),
        grad_loss.arg(),
        targets.vocab,
        scale,
    );
    Ok(())
}

fn launch_rows<E: Element>(
    client: &Client,
    logits: &DeviceBuffer<E>,
    targets: &Targets,
    grad_scale: Option<f32>,
) -> Result<CrossEntropyRows> {
    const KERNEL: &str = "cross_entropy";
    supported::<E>(client, KERNEL)?;
    check_logits(KERNEL, logits, targets)?;
    let rows = targets.rows();
    require(rows <= 65_535 * 65_535, KERNEL, || {
        format!("{rows} rows is more than a grid holds")
    })?;
    let out = CrossEntropyRows {
        loss: DeviceBuffer::poisoned(client, rows),
        lse: DeviceBuffer::poisoned(client, rows),
    };
    if rows == 0 {
        return Ok(out);
    }
    let x = rows.min(65_535);
    cross_entropy_kernel::launch::<E>(
        client,
        CubeCount::Static(x as u32, rows.div_ceil(x) as u32, 1),
        CubeDim::new_1d(ROW_UNITS as u32),
        logits.arg(),
        targets.ids.arg(),
        out.loss.arg(),
        out.lse.arg(),
        targets.vocab,
        grad_scale.unwrap_or(0.0),
        ROW_UNITS,
        grad_scale.is_some(),
    );
    Ok(out)
}

fn check_logits<E: Element>(
    kernel: &'static str,
    logits: &DeviceBuffer<E>,
    targets: &Targets,
) -> Result<()> {
    require(
        logits.len() == targets.rows() * targets.vocab,
        kernel,
        || {
            format!(
                "{} logits for {} rows of a {}-token vocabulary",
                logits.len(),
                targets.rows(),
                targets.vocab
            )
        },
    )
}

/// The naive f64 twin of one row: `(loss, lse, d logits)` for `target` (the gradient of the
/// loss itself, scale 1; zeros and loss 0 for [`IGNORE_INDEX`]).
pub fn cross_entropy_reference(logits: &[f64], target: i32) -> (f64, f64, Vec<f64>) {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let Ok(target) = usize::try_from(target) else {
        return (0.0, lse, vec![0.0; logits.len()]);
    };
    let grad = logits
        .iter()
        .enumerate()
        .map(|(c, x)| (x - lse).exp() - if c == target { 1.0 } else { 0.0 })
        .collect();
    (lse - logits[target], lse, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The twin's gradient against central differences of its loss.
    #[test]
    fn twin_gradient_is_the_twin_losss_derivative() {
        let logits = [1.5, -0.3, 2.2, 0.0, -4.0];
        let (_, lse, grad) = cross_entropy_reference(&logits, 2);
        // log(e^1.5 + e^-0.3 + e^2.2 + 1 + e^-4), by hand: 2.7234...
        assert!(
            (lse - (1.5f64.exp() + (-0.3f64).exp() + 2.2f64.exp() + 1.0 + (-4.0f64).exp()).ln())
                .abs()
                < 1e-12
        );
        let h = 1e-6;
        for i in 0..logits.len() {
            let (mut plus, mut minus) = (logits, logits);
            plus[i] += h;
            minus[i] -= h;
            let numeric = (cross_entropy_reference(&plus, 2).0
                - cross_entropy_reference(&minus, 2).0)
                / (2.0 * h);
            assert!(
                (grad[i] - numeric).abs() < 1e-8,
                "d logit {i}: {} vs {numeric}",
                grad[i]
            );
        }
        assert_eq!(cross_entropy_reference(&logits, IGNORE_INDEX).0, 0.0);
    }
}
