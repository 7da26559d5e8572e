//! RMSNorm with an optional fused residual add, forward and backward (Liger Kernel's fused
//! RMSNorm; vLLM's `fused_add_rms_norm` for the residual).
//!
//! Forward, one cube per row: `s = x (+ r)`, `rstd = 1/√(mean(s²) + eps)`,
//! `y = w · (s · rstd)` with the product rounded to the element type before the weight, as
//! Hugging Face's `LlamaRMSNorm` does. It writes `y`, the residual stream `s` (when a residual
//! is added) and `rstd` per row (f32, 4 bytes a row), which is all the backward needs: it
//! recomputes `s · rstd` rather than storing the normalized activations. Traffic in f32 with
//! a residual: 16 bytes per element (read x, r; write s, y).
//!
//! Backward, with `g = dy · w`:
//! - `ds = rstd · g − rstd³ · s · Σ(g · s) / cols` (plus the gradient reaching `s` through the
//!   residual stream, when given), which is `dx` and, with a residual, `dr` too;
//! - `dw = Σ_rows dy · s · rstd`, summed over chunks of rows by a second kernel so that no
//!   unit loops over every row.
//!
//! Sums run in f32 for every element type.

use cubecl::prelude::*;

use crate::Result;
use crate::device::{DeviceBuffer, Element, require, supported};
use crate::reduce::cube_sum;

/// Units per row cube: a power of two (the reductions' tree), a multiple of every vendor's
/// warp size.
const ROW_UNITS: usize = 256;
/// Rows per partial weight-gradient sum.
const ROWS_PER_CHUNK: usize = 64;
/// The most cubes a grid dimension takes on every runtime (wgpu's limit).
const MAX_CUBES_PER_DIM: usize = 65_535;

#[cube(launch)]
fn rms_norm_kernel<F: Float>(
    input: &[F],
    residual: &[F],
    weight: &[F],
    normed: &mut [F],
    stream: &mut [F],
    rstd: &mut [f32],
    rows: usize,
    cols: usize,
    eps: f32,
    #[comptime] units: usize,
    #[comptime] with_residual: bool,
) {
    let row = CUBE_POS;
    if row < rows {
        let base = row * cols;
        let mut shared = Shared::<[f32]>::new_slice(units);
        let mut squares = 0f32;
        let mut c = UNIT_POS as usize;
        while c < cols {
            let mut s = input[base + c];
            if comptime!(with_residual) {
                s += residual[base + c];
                stream[base + c] = s;
            }
            let wide = f32::cast_from(s);
            squares += wide * wide;
            c += units;
        }
        let total = cube_sum(&mut shared, squares, units);
        let r = f32::inverse_sqrt(total / f32::cast_from(cols) + eps);
        if UNIT_POS == 0 {
            rstd[row] = r;
        }
        let mut c = UNIT_POS as usize;
        while c < cols {
            let mut s = input[base + c];
            if comptime!(with_residual) {
                s += residual[base + c];
            }
            normed[base + c] = weight[c] * F::cast_from(f32::cast_from(s) * r);
            c += units;
        }
    }
}

#[cube(launch)]
fn rms_norm_backward_kernel<F: Float>(
    grad: &[F],
    input: &[F],
    weight: &[F],
    rstd: &[f32],
    grad_stream: &[F],
    grad_input: &mut [F],
    rows: usize,
    cols: usize,
    #[comptime] units: usize,
    #[comptime] with_stream_grad: bool,
) {
    let row = CUBE_POS;
    if row < rows {
        let base = row * cols;
        let mut shared = Shared::<[f32]>::new_slice(units);
        let mut dot = 0f32;
        let mut c = UNIT_POS as usize;
        while c < cols {
            dot += f32::cast_from(grad[base + c] * weight[c]) * f32::cast_from(input[base + c]);
            c += units;
        }
        let r = rstd[row];
        let coefficient = r * r * r * cube_sum(&mut shared, dot, units) / f32::cast_from(cols);
        let mut c = UNIT_POS as usize;
        while c < cols {
            let g = f32::cast_from(grad[base + c]) * f32::cast_from(weight[c]);
            let mut ds = r * g - coefficient * f32::cast_from(input[base + c]);
            if comptime!(with_stream_grad) {
                ds += f32::cast_from(grad_stream[base + c]);
            }
            grad_input[base + c] = F::cast_from(ds);
            c += units;
        }
    }
}

/// `partial[chunk, c] = Σ dy[r, c] · s[r, c] · rstd[r]` over the chunk's rows: one unit per
/// column, reading rows in order (adjacent units, adjacent columns: coalesced).
#[cube(launch)]
fn rms_norm_weight_grad_kernel<F: Float>(
    grad: &[F],
    input: &[F],
    rstd: &[f32],
    partial: &mut [f32],
    rows: usize,
    cols: usize,
    #[comptime] rows_per_chunk: usize,
) {
    let c = ABSOLUTE_POS_X as usize;
    let chunk = CUBE_POS_Y as usize;
    if c < cols {
        let start = chunk * rows_per_chunk;
        let end = min(start + rows_per_chunk, rows);
        let mut sum = 0f32;
        let mut r = start;
        while r < end {
            sum +=
                f32::cast_from(grad[r * cols + c]) * f32::cast_from(input[r * cols + c]) * rstd[r];
            r += 1;
        }
        partial[chunk * cols + c] = sum;
    }
}

/// `out[c] = Σ_chunk partial[chunk, c]`.
#[cube(launch)]
fn column_sum_kernel<F: Float>(partial: &[f32], out: &mut [F], chunks: usize, cols: usize) {
    let c = ABSOLUTE_POS;
    if c < cols {
        let mut sum = 0f32;
        let mut k = 0usize;
        while k < chunks {
            sum += partial[k * cols + c];
            k += 1;
        }
        out[c] = F::cast_from(sum);
    }
}

/// What [`rms_norm`] writes.
#[derive(Debug, Clone)]
pub struct RmsNormOutput<E> {
    /// `w · (s · rstd)`, `rows × cols`.
    pub normed: DeviceBuffer<E>,
    /// The residual stream `s = x + r` when a residual was added (the input of the next
    /// residual add, and what [`rms_norm_backward`] takes as its input).
    pub stream: Option<DeviceBuffer<E>>,
    /// `1/√(mean(s²) + eps)` per row, for the backward.
    pub rstd: DeviceBuffer<f32>,
}

/// The gradients [`rms_norm_backward`] returns.
#[derive(Debug, Clone)]
pub struct RmsNormGrads<E> {
    /// The gradient of the normalized input `s`: of `x`, and of the residual too when one was
    /// added (`s = x + r` passes it to both unchanged).
    pub input: DeviceBuffer<E>,
    /// The gradient of the weight, `cols` values.
    pub weight: DeviceBuffer<E>,
}

/// RMSNorm of the `rows × cols` row-major `input` (plus `residual`, when given) with `weight`
/// (`cols` values), on `client`'s device. Launches one kernel; returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`](crate::Error::Shape) when `input` is not whole rows of `weight.len()`,
/// or `residual` differs from it in length; [`Error::Unsupported`](crate::Error::Unsupported)
/// when the runtime lacks `E`.
pub fn rms_norm<E: Element>(
    client: &Client,
    input: &DeviceBuffer<E>,
    residual: Option<&DeviceBuffer<E>>,
    weight: &DeviceBuffer<E>,
    eps: f32,
) -> Result<RmsNormOutput<E>> {
    const KERNEL: &str = "rms_norm";
    supported::<E>(client, KERNEL)?;
    let (rows, cols) = rows_of(KERNEL, input, weight.len())?;
    if let Some(residual) = residual {
        require(residual.len() == input.len(), KERNEL, || {
            format!(
                "residual of {} values for an input of {}",
                residual.len(),
                input.len()
            )
        })?;
    }
    let normed = DeviceBuffer::poisoned(client, input.len());
    let stream = residual.map(|_| DeviceBuffer::poisoned(client, input.len()));
    let rstd = DeviceBuffer::poisoned(client, rows);
    // Arguments a variant without a residual never reads.
    let placeholder = DeviceBuffer::<E>::poisoned(client, 1);
    rms_norm_kernel::launch::<E>(
        client,
        row_grid(rows),
        CubeDim::new_1d(ROW_UNITS as u32),
        input.arg(),
        residual.unwrap_or(&placeholder).arg(),
        weight.arg(),
        normed.arg(),
        stream.as_ref().unwrap_or(&placeholder).arg(),
        rstd.arg(),
        rows,
        cols,
        eps,
        ROW_UNITS,
        residual.is_some(),
    );
    Ok(RmsNormOutput {
        normed,
        stream,
        rstd,
    })
}

/// The backward of [`rms_norm`]: `grad` is the gradient of its `normed` output, `input` the
/// tensor it normalized (its `stream` when a residual was added, else its `input`), `rstd`
/// its `rstd`, and `grad_stream` the gradient reaching the residual stream from later
/// layers, added to the input's gradient. Launches three kernels; returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`](crate::Error::Shape) when the operands' lengths do not agree with
/// `weight.len()` columns; [`Error::Unsupported`](crate::Error::Unsupported) as
/// [`rms_norm`].
pub fn rms_norm_backward<E: Element>(
    client: &Client,
    grad: &DeviceBuffer<E>,
    input: &DeviceBuffer<E>,
    weight: &DeviceBuffer<E>,
    rstd: &DeviceBuffer<f32>,
    grad_stream: Option<&DeviceBuffer<E>>,
) -> Result<RmsNormGrads<E>> {
    const KERNEL: &str = "rms_norm_backward";
    supported::<E>(client, KERNEL)?;
    let (rows, cols) = rows_of(KERNEL, input, weight.len())?;
    let lengths_agree = grad.len() == input.len()
        && rstd.len() == rows
        && grad_stream.is_none_or(|g| g.len() == input.len());
    require(lengths_agree, KERNEL, || {
        format!(
            "grad {} / input {} / rstd {} / grad_stream {:?} values for {rows} rows of {cols}",
            grad.len(),
            input.len(),
            rstd.len(),
            grad_stream.map(DeviceBuffer::len)
        )
    })?;
    let grad_input = DeviceBuffer::poisoned(client, input.len());
    let placeholder = DeviceBuffer::<E>::poisoned(client, 1);
    rms_norm_backward_kernel::launch::<E>(
        client,
        row_grid(rows),
        CubeDim::new_1d(ROW_UNITS as u32),
        grad.arg(),
        input.arg(),
        weight.arg(),
        rstd.arg(),
        grad_stream.unwrap_or(&placeholder).arg(),
        grad_input.arg(),
        rows,
        cols,
        ROW_UNITS,
        grad_stream.is_some(),
    );

    let chunks = rows.div_ceil(ROWS_PER_CHUNK);
    let partial = DeviceBuffer::<f32>::poisoned(client, chunks * cols);
    let column_cubes = cols.div_ceil(ROW_UNITS) as u32;
    rms_norm_weight_grad_kernel::launch::<E>(
        client,
        CubeCount::Static(column_cubes, chunks as u32, 1),
        CubeDim::new_1d(ROW_UNITS as u32),
        grad.arg(),
        input.arg(),
        rstd.arg(),
        partial.arg(),
        rows,
        cols,
        ROWS_PER_CHUNK,
    );
    let grad_weight = DeviceBuffer::poisoned(client, cols);
    column_sum_kernel::launch::<E>(
        client,
        CubeCount::Static(column_cubes, 1, 1),
        CubeDim::new_1d(ROW_UNITS as u32),
        partial.arg(),
        grad_weight.arg(),
        chunks,
        cols,
    );
    Ok(RmsNormGrads {
        input: grad_input,
        weight: grad_weight,
    })
}

/// `(rows, cols)` of a row-major buffer of `cols`-wide rows, both at least one, rows within
/// one grid dimension.
fn rows_of<E>(kernel: &'static str, buffer: &DeviceBuffer<E>, cols: usize) -> Result<(usize, usize)>
where
    E: CubeElement,
{
    let fits = cols > 0 && !buffer.is_empty() && buffer.len().is_multiple_of(cols);
    require(fits, kernel, || {
        format!("{} values are not whole rows of {cols}", buffer.len())
    })?;
    let rows = buffer.len() / cols;
    require(
        rows <= MAX_CUBES_PER_DIM * MAX_CUBES_PER_DIM,
        kernel,
        || format!("{rows} rows is more than a grid holds"),
    )?;
    Ok((rows, cols))
}

/// One cube per row, over two grid dimensions when the rows outnumber one (`CUBE_POS` counts
/// across both; the surplus cubes of the last line do nothing).
fn row_grid(rows: usize) -> CubeCount {
    let x = rows.min(MAX_CUBES_PER_DIM);
    CubeCount::Static(x as u32, rows.div_ceil(x) as u32, 1)
}

/// The naive f64 twin of [`rms_norm`] for one row: `(normed, rstd)` of `input + residual`.
pub fn rms_norm_reference(
    input: &[f64],
    residual: Option<&[f64]>,
    weight: &[f64],
    eps: f64,
) -> (Vec<f64>, f64) {
    let stream: Vec<f64> = match residual {
        Some(residual) => input.iter().zip(residual).map(|(x, r)| x + r).collect(),
        None => input.to_vec(),
    };
    let mean_square = stream.iter().map(|s| s * s).sum::<f64>() / stream.len() as f64;
    let rstd = 1.0 / (mean_square + eps).sqrt();
    let normed = stream
        .iter()
        .zip(weight)
        .map(|(s, w)| w * s * rstd)
        .collect();
    (normed, rstd)
}

/// The naive f64 twin of [`rms_norm_backward`] for one row: `(d input, d weight of this
/// row)` for upstream gradient `grad` at the normalized input `input`.
pub fn rms_norm_backward_reference(
    grad: &[f64],
    input: &[f64],
    weight: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let cols = input.len() as f64;
    let rstd = 1.0 / (input.iter().map(|s| s * s).sum::<f64>() / cols + eps).sqrt();
    let dot: f64 = grad
        .iter()
        .zip(weight)
        .zip(input)
        .map(|((g, w), s)| g * w * s)
        .sum();
    let grad_input = grad
        .iter()
        .zip(weight)
        .zip(input)
        .map(|((g, w), s)| rstd * g * w - rstd.powi(3) * s * dot / cols)
        .collect();
    let grad_weight = grad.iter().zip(input).map(|(g, s)| g * s * rstd).collect();
    (grad_input, grad_weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward twin against central differences of the forward twin.
    #[test]
    fn backward_twin_is_the_forward_twins_derivative() {
        let input = [0.3, -1.2, 2.0, 0.05, -0.7];
        let weight = [1.1, 0.9, -0.4, 2.0, 0.5];
        let grad = [0.2, -0.3, 1.0, 0.4, -1.5];
        let eps = 1e-5;
        let loss = |input: &[f64], weight: &[f64]| -> f64 {
            let (normed, _) = rms_norm_reference(input, None, weight, eps);
            normed.iter().zip(&grad).map(|(y, g)| y * g).sum()
        };
        let (grad_input, grad_weight) = rms_norm_backward_reference(&grad, &input, &weight, eps);
        let h = 1e-6;
        for i in 0..input.len() {
            let (mut plus, mut minus) = (input, input);
            plus[i] += h;
            minus[i] -= h;
            let numeric = (loss(&plus, &weight) - loss(&minus, &weight)) / (2.0 * h);
            assert!(
                (grad_input[i] - numeric).abs() < 1e-7,
                "d input[{i}]: {} vs {numeric}",
                grad_input[i]
            );
            let (mut plus, mut minus) = (weight, weight);
            plus[i] += h;
            minus[i] -= h;
            let numeric = (loss(&input, &plus) - loss(&input, &minus)) / (2.0 * h);
            assert!(
                (grad_weight[i] - numeric).abs() < 1e-7,
                "d weight[{i}]: {} vs {numeric}",
                grad_weight[i]
            );
        }
    }
}
