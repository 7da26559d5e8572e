//! SwiGLU, fused: `h = silu(g) · u` with `silu(g) = g · σ(g)`, forward and backward, one unit
//! per element (Liger Kernel's fused SwiGLU, in cubecl).
//!
//! Unfused, a framework writes `σ(g)`, `silu(g)` and the product as separate tensors and reads
//! them back for the backward pass; here the forward reads `g` and `u` and writes `h` (12 bytes
//! per element in f32), and the backward recomputes `σ(g)` from `g` instead of storing it,
//! reading `g`, `u` and `dh` and writing `dg` and `du` (20 bytes per element):
//!
//! - `du = dh · silu(g)`
//! - `dg = dh · u · σ(g) · (1 + g · (1 - σ(g)))`
//!
//! Generic over the float type: the host functions take f32 or f16 ([`Element`]); f16 runs
//! where the runtime has it (lavapipe does) and is a typed error where it does not.

use cubecl::prelude::*;

use super::{Element, grid};
use crate::Result;
use crate::device::{DeviceBuffer, require, supported};

#[cube]
fn sigmoid<F: Float>(x: F) -> F {
    F::new(1.0) / (F::new(1.0) + F::exp(-x))
}

#[cube(launch)]
fn swiglu_kernel<F: Float>(gate: &[F], up: &[F], out: &mut [F]) {
    // The grid may round up past the end; the tail units do nothing.
    if ABSOLUTE_POS < gate.len() {
        let g = gate[ABSOLUTE_POS];
        out[ABSOLUTE_POS] = g * sigmoid::<F>(g) * up[ABSOLUTE_POS];
    }
}

#[cube(launch)]
fn swiglu_backward_kernel<F: Float>(
    gate: &[F],
    up: &[F],
    grad: &[F],
    grad_gate: &mut [F],
    grad_up: &mut [F],
) {
    if ABSOLUTE_POS < gate.len() {
        let g = gate[ABSOLUTE_POS];
        let u = up[ABSOLUTE_POS];
        let dh = grad[ABSOLUTE_POS];
        let s = sigmoid::<F>(g);
        grad_up[ABSOLUTE_POS] = dh * g * s;
        grad_gate[ABSOLUTE_POS] = dh * u * s * (F::new(1.0) + g * (F::new(1.0) - s));
    }
}

/// `silu(gate) · up`, element by element, on `client`'s device: uploads, launches one unit
/// per element, waits and reads back (a convenience for tests and small inputs, not the
/// in-graph path).
///
/// # Errors
///
/// [`Error::Shape`](crate::Error::Shape) when the operands' lengths differ;
/// [`Error::Unsupported`](crate::Error::Unsupported) when the runtime lacks `E`;
/// [`Error::Device`](crate::Error::Device) when it fails to run or read back the kernel.
pub fn swiglu<E: Element>(client: &Client, gate: &[E], up: &[E]) -> Result<Vec<E>> {
    let upload = |values: &[E]| DeviceBuffer::from_slice(client, values);
    swiglu_on_device(client, &upload(gate), &upload(up))?.to_vec(client, "swiglu")
}

/// The backward of [`swiglu`] for the upstream gradient `grad`: `(d gate, d up)`.
///
/// # Errors
///
/// As [`swiglu`].
pub fn swiglu_backward<E: Element>(
    client: &Client,
    gate: &[E],
    up: &[E],
    grad: &[E],
) -> Result<(Vec<E>, Vec<E>)> {
    let upload = |values: &[E]| DeviceBuffer::from_slice(client, values);
    let (grad_gate, grad_up) =
        swiglu_backward_on_device(client, &upload(gate), &upload(up), &upload(grad))?;
    Ok((
        grad_gate.to_vec(client, "swiglu_backward")?,
        grad_up.to_vec(client, "swiglu_backward")?,
    ))
}

/// [`swiglu`] on device buffers: launches one kernel and returns without waiting.
///
/// # Errors
///
/// As [`swiglu`].
pub fn swiglu_on_device<E: Element>(
    client: &Client,
    gate: &DeviceBuffer<E>,
    up: &DeviceBuffer<E>,
) -> Result<DeviceBuffer<E>> {
    const KERNEL: &str = "swiglu";
    supported::<E>(client, KERNEL)?;
    require(gate.len() == up.len(), KERNEL, || {
        format!("operands of lengths {} and {}", gate.len(), up.len())
    })?;
    let out = DeviceBuffer::poisoned(client, gate.len());
    if gate.is_empty() {
        return Ok(out);
    }
    let (cube_count, cube_dim) = grid(client, gate.len());
    swiglu_kernel::launch::<E>(
        client,
        cube_count,
        cube_dim,
        gate.arg(),
        up.arg(),
        out.arg(),
    );
    Ok(out)
}

/// [`swiglu_backward`] on device buffers: `(d gate, d up)`. Launches one kernel and returns
/// without waiting.
///
/// # Errors
///
/// As [`swiglu`].
pub fn swiglu_backward_on_device<E: Element>(
    client: &Client,
    gate: &DeviceBuffer<E>,
    up: &DeviceBuffer<E>,
    grad: &DeviceBuffer<E>,
) -> Result<(DeviceBuffer<E>, DeviceBuffer<E>)> {
    const KERNEL: &str = "swiglu_backward";
    supported::<E>(client, KERNEL)?;
    require(
        gate.len() == up.len() && grad.len() == gate.len(),
        KERNEL,
        || {
            format!(
                "operands of lengths {}, {} and {}",
                gate.len(),
                up.len(),
                grad.len()
            )
        },
    )?;
    let (grad_gate, grad_up) = (
        DeviceBuffer::poisoned(client, gate.len()),
        DeviceBuffer::poisoned(client, gate.len()),
    );
    if gate.is_empty() {
        return Ok((grad_gate, grad_up));
    }
    let (cube_count, cube_dim) = grid(client, gate.len());
    swiglu_backward_kernel::launch::<E>(
        client,
        cube_count,
        cube_dim,
        gate.arg(),
        up.arg(),
        grad.arg(),
        grad_gate.arg(),
        grad_up.arg(),
    );
    Ok((grad_gate, grad_up))
}

/// The naive f64 twin of [`swiglu`].
pub fn swiglu_reference(gate: f64, up: f64) -> f64 {
    gate / (1.0 + (-gate).exp()) * up
}

/// The naive f64 twin of [`swiglu_backward`]: `(d gate, d up)` for upstream gradient `grad`.
pub fn swiglu_backward_reference(gate: f64, up: f64, grad: f64) -> (f64, f64) {
    let s = 1.0 / (1.0 + (-gate).exp());
    (grad * up * s * (1.0 + gate * (1.0 - s)), grad * gate * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward twin against central differences of the forward twin: an independent
    /// derivation of the same derivative.
    #[test]
    fn backward_twin_is_the_forward_twins_derivative() {
        let h = 1e-6;
        for (g, u) in [
            (-6.0, 0.5),
            (-1.0, 2.0),
            (0.0, -1.5),
            (0.3, 1.0),
            (4.0, -0.25),
        ] {
            let (dg, du) = swiglu_backward_reference(g, u, 1.0);
            let numeric_dg = (swiglu_reference(g + h, u) - swiglu_reference(g - h, u)) / (2.0 * h);
            let numeric_du = (swiglu_reference(g, u + h) - swiglu_reference(g, u - h)) / (2.0 * h);
            assert!(
                (dg - numeric_dg).abs() < 1e-8,
                "d gate at ({g}, {u}): {dg} vs {numeric_dg}"
            );
            assert!(
                (du - numeric_du).abs() < 1e-8,
                "d up at ({g}, {u}): {du} vs {numeric_du}"
            );
        }
        // silu(1) = 1 / (1 + e^-1) = 0.7310585786300049 (CPython 3.11: 1/(1+math.exp(-1))).
        assert!((swiglu_reference(1.0, 1.0) - 0.731_058_578_630_004_9).abs() < 1e-15);
    }
}
