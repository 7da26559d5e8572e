//! The portable kernels: the SIMD paths' operations, lane by lane, in the same order, so the
//! results are the same bits (the integer sums are exact whichever way they are added; the
//! floating-point steps are the same operations on the same operands).

use super::layout::{lane_codes, lane_q8_0, lane_scales};
use super::{BLOCK, BlockQ8_1, GROUP, WeightFormat};

/// The 8 rows of a group (`bytes`: its group blocks) against one token's blocks `x`.
pub(super) fn group_dot(format: WeightFormat, bytes: &[u8], x: &[BlockQ8_1]) -> [f32; GROUP] {
    let gbb = format.group_block_bytes();
    let mut acc = [0f32; GROUP];
    // Q4_1's and Q4_K's minimum terms, added (or taken) at the end.
    let mut mins = [0f32; GROUP];
    let per_block = format.block_values() / BLOCK;
    for (block, xs) in bytes.chunks_exact(gbb).zip(x.chunks_exact(per_block)) {
        for r in 0..GROUP {
            let (d, second) = lane_scales(block, r);
            match format {
                WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::Q8_0 => {
                    let xb = &xs[0];
                    let isum = match format {
                        WeightFormat::Q4_0 => {
                            dot(&lane_codes(&block[16..144], &[], r), xb) - 8 * xb.sum
                        }
                        WeightFormat::Q5_0 => {
                            let codes = lane_codes(&block[16..144], &block[144..176], r);
                            dot(&codes, xb) - 16 * xb.sum
                        }
                        _ => dot_signed(&lane_q8_0(block, r), xb),
                    };
                    acc[r] = (isum as f32).mul_add(d * xb.d, acc[r]);
                }
                WeightFormat::Q4_1 => {
                    let xb = &xs[0];
                    let isum = dot(&lane_codes(&block[32..160], &[], r), xb);
                    acc[r] = (isum as f32).mul_add(d * xb.d, acc[r]);
                    mins[r] = second.mul_add(xb.s, mins[r]);
                }
                WeightFormat::Q4_K => {
                    for (j, xb) in xs.iter().enumerate() {
                        let codes = lane_codes(&block[160 + 128 * j..][..128], &[], r);
                        let isum = dot(&codes, xb) * i32::from(block[32 + 8 * j + r]);
                        acc[r] = (isum as f32).mul_add(d * xb.d, acc[r]);
                        let min = second * f32::from(block[96 + 8 * j + r]);
                        mins[r] = min.mul_add(xb.s, mins[r]);
                    }
                }
                WeightFormat::Q6_K => {
                    for (j, xb) in xs.iter().enumerate() {
                        let at = 144 + 192 * j;
                        let codes = lane_codes(&block[at..at + 128], &block[at + 128..at + 192], r);
                        let scale = |s: usize| i32::from(block[16 + GROUP * s + r] as i8);
                        let (low, high) = dot_halves(&codes, xb);
                        let isum = (low - 32 * xb.sum_low) * scale(2 * j)
                            + (high - 32 * (xb.sum - xb.sum_low)) * scale(2 * j + 1);
                        acc[r] = (isum as f32).mul_add(d * xb.d, acc[r]);
                    }
                }
            }
        }
    }
    match format {
        WeightFormat::Q4_1 => std::array::from_fn(|r| acc[r] + mins[r]),
        WeightFormat::Q4_K => std::array::from_fn(|r| acc[r] - mins[r]),
        _ => acc,
    }
}

/// `Σ q·x` over a block, for unsigned codes.
fn dot(codes: &[u8; BLOCK], xb: &BlockQ8_1) -> i32 {
    let (low, high) = dot_halves(codes, xb);
    low + high
}

/// `Σ q·x` over values `0..16` and `16..32`.
fn dot_halves(codes: &[u8; BLOCK], xb: &BlockQ8_1) -> (i32, i32) {
    let sum = |range: std::ops::Range<usize>| -> i32 {
        range
            .map(|v| i32::from(codes[v]) * i32::from(xb.qs[v]))
            .sum()
    };
    (sum(0..16), sum(16..32))
}

/// `Σ q·x` over a block, for signed codes.
fn dot_signed(codes: &[i8; BLOCK], xb: &BlockQ8_1) -> i32 {
    codes
        .iter()
        .zip(&xb.qs)
        .map(|(&q, &x)| i32::from(q) * i32::from(x))
        .sum()
}
