//! GELU, tanh form: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
//!
//! This is the approximation GPT-2 and many checkpoints were trained with (PyTorch's
//! `gelu(approximate="tanh")`); within 1e-3 of the erf form. The kernel reads and writes each
//! element once: 8 bytes of traffic per element in f32.

use cubecl::prelude::*;

use super::grid;
use crate::Result;
use crate::device::DeviceBuffer;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const CUBIC_COEFF: f64 = 0.044_715;

#[cube(launch)]
fn gelu_tanh_kernel<F: Float>(input: &[F], output: &mut [F]) {
    // The grid may round up past the end; the tail units do nothing.
    if ABSOLUTE_POS < input.len() {
        let x = input[ABSOLUTE_POS];
        let inner = F::new(SQRT_2_OVER_PI as f32) * (x + F::new(CUBIC_COEFF as f32) * x * x * x);
        output[ABSOLUTE_POS] = F::new(0.5) * x * (F::new(1.0) + inner.tanh());
    }
}

/// GELU (tanh form) of every element of `input`, computed on `client`'s device.
///
/// Uploads `input`, launches one unit per element, waits, and reads the result back: a
/// convenience for tests and small inputs, not the fused in-graph path.
///
/// # Errors
///
/// [`Error::Device`](crate::Error::Device) when the runtime fails to run or read back the
/// kernel.
pub fn gelu_tanh(client: &Client, input: &[f32]) -> Result<Vec<f32>> {
    let output = DeviceBuffer::<f32>::poisoned(client, input.len());
    if !input.is_empty() {
        let (cube_count, cube_dim) = grid(client, input.len());
        gelu_tanh_kernel::launch::<f32>(
            client,
            cube_count,
            cube_dim,
            DeviceBuffer::from_slice(client, input).arg(),
            output.arg(),
        );
    }
    output.to_vec(client, "gelu_tanh")
}

/// The naive f64 twin of [`gelu_tanh`]: the oracle its tests compare against.
pub fn gelu_tanh_reference(x: f64) -> f64 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + CUBIC_COEFF * x * x * x)).tanh())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The twin itself, against values computed offline with CPython 3.11's `math.tanh`
    /// (`0.5*x*(1+math.tanh(math.sqrt(2/math.pi)*(x+0.044715*x**3)))`), and against the exact
    /// erf form (`0.5*x*(1+math.erf(x/math.sqrt(2)))`), a different formula that the tanh form
    /// approximates to within 5e-4 on this range.
    #[test]
    fn reference_matches_independent_values() {
        for (x, tanh_form, erf_form) in [
            (
                -3.0,
                -0.003_637_392_081_772_994_3,
                -0.004_049_694_094_890_31,
            ),
            (-1.0, -0.158_808_009_391_723_24, -0.158_655_253_931_457_07),
            (0.0, 0.0, 0.0),
            (0.5, 0.345_714_009_825_143_94, 0.345_731_230_637_006_56),
            (1.0, 0.841_191_990_608_276_8, 0.841_344_746_068_542_9),
            (2.0, 1.954_597_694_087_775, 1.954_499_736_103_641_6),
        ] {
            let got = gelu_tanh_reference(x);
            assert!(
                (got - tanh_form).abs() < 1e-15,
                "gelu({x}) = {got}, expected {tanh_form}"
            );
            assert!(
                (got - erf_form).abs() < 5e-4,
                "gelu({x}) = {got} is far from erf form {erf_form}"
            );
        }
    }
}
