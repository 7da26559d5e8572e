//! Naive f64 twins of numeric operations: the oracles fast paths are compared against.
//!
//! Written for obviousness, not speed: triple loops, f64 accumulation, no blocking.

/// `lhs (m×k) · rhs (k×n)`, row-major f32 inputs, accumulated and returned in f64.
///
/// # Panics
///
/// When the slice lengths do not match the shapes.
pub fn matmul_f64(lhs: &[f32], rhs: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert_eq!(lhs.len(), m * k, "lhs is not {m}x{k}");
    assert_eq!(rhs.len(), k * n, "rhs is not {k}x{n}");
    let mut out = vec![0f64; m * n];
    for row in 0..m {
        for col in 0..n {
            out[row * n + col] = (0..k)
                .map(|i| f64::from(lhs[row * k + i]) * f64::from(rhs[i * n + col]))
                .sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_of_known_matrices() {
        // [[1, 2, 3], [4, 5, 6]] · [[7, 8], [9, 10], [11, 12]] = [[58, 64], [139, 154]]
        let got = matmul_f64(
            &[1., 2., 3., 4., 5., 6.],
            &[7., 8., 9., 10., 11., 12.],
            2,
            3,
            2,
        );
        assert_eq!(got, [58., 64., 139., 154.]);
    }
}
