//! Dequantize-GEMV over GGUF blocks on the device: `y = W · x` with `W` in Q8_0, Q4_0 or Q4_1
//! blocks of 32 weights, dequantized in registers and never written out (llama.cpp's
//! `mul_mat_vec_q`, in cubecl).
//!
//! Decode reads every weight once per token, so its speed is the weights' bytes over the
//! memory bandwidth. The blocks stay blocks: [`DeviceWeights::upload`] repacks them once into
//! three arrays the kernel reads aligned, the quants as `u32` words and the f16 scales (and
//! Q4_1's minimums) widened to f32, which costs 2 bytes per block over the file (Q4_0: 20
//! bytes per 32 weights instead of 18; Q8_0: 36 instead of 34) and buys one aligned load per
//! scale on every runtime, the f16-less included.
//!
//! One cube computes 8 rows; 32 units share a row, each taking every 32nd block, and a tree
//! over shared memory sums the row. A block's dot product runs in f32: `d · Σ q·x` (Q8_0),
//! `d · (Σ q·x − 8 Σ x)` (Q4_0), `d · Σ q·x + m · Σ x` (Q4_1).

use cubecl::prelude::*;
use half::f16;
use mlinfra_data::tensor::GgmlType;

use crate::device::{DeviceBuffer, Element, require, supported};
use crate::{Error, Result};

/// Values per block in every format here.
const BLOCK: usize = 32;
/// Units per row, and rows per cube.
const LANES: usize = 32;
const ROWS_PER_CUBE: usize = 8;

const Q8_0: u32 = 0;
const Q4_0: u32 = 1;
const Q4_1: u32 = 2;

#[cube(launch)]
fn quant_gemv_kernel<F: Float>(
    quants: &[u32],
    scales: &[f32],
    mins: &[f32],
    x: &[F],
    out: &mut [F],
    rows: usize,
    cols: usize,
    #[comptime] format: u32,
) {
    let lane = UNIT_POS_X as usize;
    let row_in_cube = UNIT_POS_Y as usize;
    let row = CUBE_POS_X as usize * ROWS_PER_CUBE + row_in_cube;
    let token = CUBE_POS_Y as usize;
    let blocks = cols / BLOCK;
    let mut sum = 0f32;
    if row < rows {
        let mut b = lane;
        while b < blocks {
            let block = row * blocks + b;
            let xb = token * cols + b * BLOCK;
            let mut dot = 0f32;
            if comptime!(format == Q8_0) {
                #[unroll]
                for w in 0..8usize {
                    let word = quants[block * 8 + w];
                    #[unroll]
                    for k in 0..4usize {
                        let byte = (word >> (8 * k as u32)) & 0xFF;
                        // Two's complement: bytes 128..=255 stand for -128..=-1.
                        let q = f32::cast_from(byte) - 256.0 * f32::cast_from(byte >> 7);
                        dot += q * f32::cast_from(x[xb + 4 * w + k]);
                    }
                }
                sum += scales[block] * dot;
            } else {
                // Byte j holds value j (low nibble) and value j + 16 (high nibble).
                let mut x_sum = 0f32;
                #[unroll]
                for w in 0..4usize {
                    let word = quants[block * 4 + w];
                    #[unroll]
                    for k in 0..4usize {
                        let byte = (word >> (8 * k as u32)) & 0xFF;
                        let x_low = f32::cast_from(x[xb + 4 * w + k]);
                        let x_high = f32::cast_from(x[xb + 16 + 4 * w + k]);
                        dot +=
                            f32::cast_from(byte & 0xF) * x_low + f32::cast_from(byte >> 4) * x_high;
                        x_sum += x_low + x_high;
                    }
                }
                if comptime!(format == Q4_0) {
                    sum += scales[block] * (dot - 8.0 * x_sum);
                } else {
                    sum += scales[block] * dot + mins[block] * x_sum;
                }
            }
            b += LANES;
        }
    }
    // Every unit reaches the barriers, the rows past the end included.
    let mut shared = Shared::<[f32]>::new_slice(LANES * ROWS_PER_CUBE);
    let slot = row_in_cube * LANES + lane;
    shared[slot] = sum;
    sync_cube();
    let mut stride = comptime!(LANES / 2).runtime();
    while stride > 0 {
        if lane < stride {
            shared[slot] += shared[slot + stride];
        }
        sync_cube();
        stride /= 2;
    }
    if lane == 0 && row < rows {
        out[token * rows + row] = F::cast_from(shared[slot]);
    }
}

/// A weight matrix in device memory, in its GGUF blocks (repacked for aligned loads).
#[derive(Debug, Clone)]
pub struct DeviceWeights {
    format: GgmlType,
    rows: usize,
    cols: usize,
    quants: DeviceBuffer<u32>,
    scales: DeviceBuffer<f32>,
    /// Q4_1's minimums; one unread value for the other formats.
    mins: DeviceBuffer<f32>,
}

impl DeviceWeights {
    /// The formats [`quant_gemv`] takes.
    pub const FORMATS: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

    /// Repacks `rows × cols` weights of `format` (`rows` rows of `cols / 32` blocks, as the GGUF
    /// stores them) and copies them to the device.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] for a format other than [`Self::FORMATS`]; [`Error::Shape`] when
    /// `cols` is not whole blocks or `bytes` is not `rows` rows of them.
    pub fn upload(
        client: &Client,
        format: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self> {
        const KERNEL: &str = "quant_gemv";
        if !Self::FORMATS.contains(&format) {
            return Err(Error::Format {
                kernel: KERNEL,
                format: format.name(),
            });
        }
        let block_bytes = format.type_size();
        require(
            rows > 0
                && cols > 0
                && cols.is_multiple_of(BLOCK)
                && rows * cols / BLOCK * block_bytes == bytes.len(),
            KERNEL,
            || {
                format!(
                    "{} bytes are not {rows} rows of {cols} {} weights",
                    bytes.len(),
                    format.name()
                )
            },
        )?;
        let blocks = rows * cols / BLOCK;
        let mut scales = Vec::with_capacity(blocks);
        let mut mins = Vec::with_capacity(if format == GgmlType::Q4_1 { blocks } else { 1 });
        let mut quants = Vec::with_capacity(blocks * 8);
        let half_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        for block in bytes.chunks_exact(block_bytes) {
            scales.push(half_at(block, 0));
            let codes = if format == GgmlType::Q4_1 {
                mins.push(half_at(block, 2));
                &block[4..]
            } else {
                &block[2..]
            };
            quants.extend(
                codes
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            );
        }
        if mins.is_empty() {
            mins.push(0.0);
        }
        Ok(Self {
            format,
            rows,
            cols,
            quants: DeviceBuffer::from_slice(client, &quants),
            scales: DeviceBuffer::from_slice(client, &scales),
            mins: DeviceBuffer::from_slice(client, &mins),
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The block format.
    pub fn format(&self) -> GgmlType {
        self.format
    }

    /// Bytes held on the device.
    pub fn resident_bytes(&self) -> usize {
        4 * (self.quants.len() + self.scales.len() + self.mins.len())
    }
}

/// `out[t · rows + r] = Σ_c W[r, c] · x[t · cols + c]` for every token `t` of the row-major
/// `x`. Launches one kernel; returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`] when `x` is not whole rows of `weights.cols()` (or more tokens than a grid
/// dimension holds); [`Error::Unsupported`] when the runtime lacks `E`.
pub fn quant_gemv<E: Element>(
    client: &Client,
    weights: &DeviceWeights,
    x: &DeviceBuffer<E>,
) -> Result<DeviceBuffer<E>> {
    const KERNEL: &str = "quant_gemv";
    supported::<E>(client, KERNEL)?;
    let cols = weights.cols;
    let tokens = x.len() / cols;
    require(
        x.len().is_multiple_of(cols) && tokens <= 65_535,
        KERNEL,
        || {
            format!(
                "{} inputs are not whole tokens of {cols} (at most 65,535)",
                x.len()
            )
        },
    )?;
    let out = DeviceBuffer::poisoned(client, tokens * weights.rows);
    if tokens == 0 {
        return Ok(out);
    }
    let format = match weights.format {
        GgmlType::Q8_0 => Q8_0,
        GgmlType::Q4_0 => Q4_0,
        _ => Q4_1,
    };
    quant_gemv_kernel::launch::<E>(
        client,
        CubeCount::Static(
            weights.rows.div_ceil(ROWS_PER_CUBE) as u32,
            tokens as u32,
            1,
        ),
        CubeDim::new_2d(LANES as u32, ROWS_PER_CUBE as u32),
        weights.quants.arg(),
        weights.scales.arg(),
        weights.mins.arg(),
        x.arg(),
        out.arg(),
        weights.rows,
        cols,
        format,
    );
    Ok(out)
}
