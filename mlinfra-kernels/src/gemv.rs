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
//! over shared memory sums the row. Two kinds of activations:
//!
//! - f32 ([`quant_gemv`]): a block's dot product runs in f32, `d · Σ q·x` (Q8_0),
//!   `d · (Σ q·x − 8 Σ x)` (Q4_0), `d · Σ q·x + m · Σ x` (Q4_1): the dequantized matrix's
//!   product up to f32 rounding.
//! - Q8_1 ([`quantize_q8_1`], then [`quant_gemv_q8_1`]): the activations quantized per 32
//!   values to i8 codes with an f16 scale, as llama.cpp's GPU backends (`mul_mat_vec_q`) and
//!   this crate's CPU kernels do, so that a block's dot product is an integer sum,
//!   `d_w · d_x · Σ q_w·q_x` (`− 8 Σ q_x` for Q4_0, `+ m_w · s_x` for Q4_1). A quarter of the
//!   activation bytes, and the CPU kernels' numerics: the serving path uses it, so that a
//!   model's greedy text is the same on the CPU and on a device.

use cubecl::prelude::*;
use half::f16;
use mlinfra_data::tensor::GgmlType;

use crate::cpu::quant::BlockQ8_1;
use crate::device::{DeviceBuffer, Element, require, supported};
use crate::reduce::tree;
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
    let total = row_sum(sum);
    if lane == 0 && row < rows {
        out[token * rows + row] = F::cast_from(total);
    }
}

/// The sum of a row's 32 lanes' `value`s, for lane 0 (the others get partial sums). Every unit
/// of the cube calls it, the rows past the matrix included: it synchronises.
#[cube]
fn row_sum(value: f32) -> f32 {
    let mut shared = Shared::<[f32]>::new_slice(LANES * ROWS_PER_CUBE);
    let slot = UNIT_POS_Y as usize * LANES + UNIT_POS_X as usize;
    shared[slot] = value;
    sync_cube();
    tree(&mut shared, slot, LANES, false);
    shared[slot]
}

/// `byte` (0..=255) as the two's-complement i8 it stores.
#[cube]
fn signed(byte: u32) -> i32 {
    i32::cast_from(byte) - 256 * i32::cast_from(byte >> 7)
}

/// `x` rounded to the nearest integer, ties to even (as the CPU quantizer's
/// `round_ties_even` and ggml's AVX2 rounding), whatever rounding the runtime's `round` uses.
#[cube]
fn round_ties_even(x: f32) -> f32 {
    let floor = f32::floor(x);
    let above = x - floor;
    let floor_is_odd = floor - 2.0 * f32::floor(floor * 0.5) != 0.0;
    let up = above > 0.5 || (above == 0.5 && floor_is_odd);
    select(up, floor + 1.0, floor)
}

/// One unit per block of 32 activations: i8 codes (four per word), the scale `d` and
/// `s = d · Σq` rounded to f16 (ggml's `block_q8_1`), and `Σq` exact.
#[cube(launch)]
fn quantize_q8_1_kernel(
    x: &[f32],
    codes: &mut [u32],
    scale: &mut [f32],
    scaled_sum: &mut [f32],
    sum: &mut [i32],
) {
    let block = ABSOLUTE_POS;
    if block < scale.len() {
        let base = block * BLOCK;
        let mut amax = 0f32;
        for i in 0..BLOCK {
            amax = max(amax, f32::abs(x[base + i]));
        }
        let d = amax / 127.0;
        let inverse = select(d > 0.0, 1.0 / d, 0.0);
        let mut total = 0i32;
        #[unroll]
        for w in 0..8usize {
            let mut word = 0u32;
            #[unroll]
            for k in 0..4usize {
                let q = i32::cast_from(round_ties_even(x[base + 4 * w + k] * inverse));
                total += q;
                // q + 256 is positive: its low byte is q's two's complement.
                word |= (u32::cast_from(q + 256) & 0xFF) << (8 * k as u32);
            }
            codes[block * 8 + w] = word;
        }
        scale[block] = f32::cast_from(f16::cast_from(d));
        scaled_sum[block] = f32::cast_from(f16::cast_from(d * f32::cast_from(total)));
        sum[block] = total;
    }
}

#[cube(launch)]
fn quant_gemv_q8_1_kernel(
    quants: &[u32],
    scales: &[f32],
    mins: &[f32],
    x_codes: &[u32],
    x_scale: &[f32],
    x_scaled_sum: &[f32],
    x_sum: &[i32],
    out: &mut [f32],
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
    let mut min_terms = 0f32;
    if row < rows {
        let mut b = lane;
        while b < blocks {
            let block = row * blocks + b;
            let xb = token * blocks + b;
            let mut isum = 0i32;
            if comptime!(format == Q8_0) {
                #[unroll]
                for w in 0..8usize {
                    let (weights, acts) = (quants[block * 8 + w], x_codes[xb * 8 + w]);
                    #[unroll]
                    for k in 0..4usize {
                        let shift = 8 * k as u32;
                        isum += signed((weights >> shift) & 0xFF) * signed((acts >> shift) & 0xFF);
                    }
                }
            } else {
                #[unroll]
                for w in 0..4usize {
                    let weights = quants[block * 4 + w];
                    // Values 4w.. (low nibbles) and 16 + 4w.. (high nibbles).
                    let (low_acts, high_acts) = (x_codes[xb * 8 + w], x_codes[xb * 8 + 4 + w]);
                    #[unroll]
                    for k in 0..4usize {
                        let shift = 8 * k as u32;
                        let byte = (weights >> shift) & 0xFF;
                        isum += i32::cast_from(byte & 0xF) * signed((low_acts >> shift) & 0xFF)
                            + i32::cast_from(byte >> 4) * signed((high_acts >> shift) & 0xFF);
                    }
                }
                if comptime!(format == Q4_0) {
                    isum -= 8 * x_sum[xb];
                }
            }
            sum = fma(f32::cast_from(isum), scales[block] * x_scale[xb], sum);
            if comptime!(format == Q4_1) {
                min_terms = fma(mins[block], x_scaled_sum[xb], min_terms);
            }
            b += LANES;
        }
    }
    let total = row_sum(sum + min_terms);
    if lane == 0 && row < rows {
        out[token * rows + row] = total;
    }
}

/// `out[i · cols + c] = W[rows[i], c]` in f32: one unit per value (ggml's `get_rows`, the
/// embedding lookup).
#[cube(launch)]
fn dequantize_rows_kernel(
    quants: &[u32],
    scales: &[f32],
    mins: &[f32],
    rows: &[u32],
    out: &mut [f32],
    cols: usize,
    #[comptime] format: u32,
) {
    if ABSOLUTE_POS < out.len() {
        let c = ABSOLUTE_POS % cols;
        let block = rows[ABSOLUTE_POS / cols] as usize * (cols / BLOCK) + c / BLOCK;
        let j = c % BLOCK;
        if comptime!(format == Q8_0) {
            let byte = (quants[block * 8 + j / 4] >> (8 * (j % 4) as u32)) & 0xFF;
            let q = f32::cast_from(byte) - 256.0 * f32::cast_from(byte >> 7);
            out[ABSOLUTE_POS] = scales[block] * q;
        } else {
            let low = j % 16;
            let byte = (quants[block * 4 + low / 4] >> (8 * (low % 4) as u32)) & 0xFF;
            let code = f32::cast_from(select(j < 16, byte & 0xF, byte >> 4));
            if comptime!(format == Q4_0) {
                out[ABSOLUTE_POS] = scales[block] * (code - 8.0);
            } else {
                out[ABSOLUTE_POS] = scales[block] * code + mins[block];
            }
        }
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

    /// Rows `rows` in f32, `rows.len() × cols` values (embedding lookups). Launches one
    /// kernel; returns without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] for a row past the matrix.
    pub fn dequantize_rows(&self, client: &Client, rows: &[u32]) -> Result<DeviceBuffer<f32>> {
        const KERNEL: &str = "dequantize_rows";
        if let Some(row) = rows.iter().find(|&&r| r as usize >= self.rows) {
            return Err(Error::Shape {
                kernel: KERNEL,
                reason: format!("row {row} of a {}-row matrix", self.rows).into(),
            });
        }
        let out = DeviceBuffer::poisoned(client, rows.len() * self.cols);
        if rows.is_empty() {
            return Ok(out);
        }
        let cube_dim = CubeDim::new_1d(256);
        dequantize_rows_kernel::launch(
            client,
            cubecl::calculate_cube_count_elemwise(client, out.len(), cube_dim),
            cube_dim,
            self.quants.arg(),
            self.scales.arg(),
            self.mins.arg(),
            DeviceBuffer::from_slice(client, rows).arg(),
            out.arg(),
            self.cols,
            self.format_code(),
        );
        Ok(out)
    }

    fn format_code(&self) -> u32 {
        match self.format {
            GgmlType::Q8_0 => Q8_0,
            GgmlType::Q4_0 => Q4_0,
            _ => Q4_1,
        }
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
        weights.format_code(),
    );
    Ok(out)
}

/// Activations quantized to Q8_1 blocks in device memory ([`quantize_q8_1`]).
#[derive(Debug, Clone)]
pub struct DeviceQ8_1 {
    codes: DeviceBuffer<u32>,
    scale: DeviceBuffer<f32>,
    scaled_sum: DeviceBuffer<f32>,
    sum: DeviceBuffer<i32>,
    cols: usize,
}

impl DeviceQ8_1 {
    /// Tokens (rows) quantized.
    pub fn tokens(&self) -> usize {
        self.scale.len() * BLOCK / self.cols
    }

    /// The blocks read back, in the CPU kernels' type (`sum_low` computed from the codes).
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the read fails.
    pub fn to_blocks(&self, client: &Client) -> Result<Vec<BlockQ8_1>> {
        const KERNEL: &str = "quantize_q8_1";
        let codes = self.codes.to_vec(client, KERNEL)?;
        let scale = self.scale.to_vec(client, KERNEL)?;
        let scaled_sum = self.scaled_sum.to_vec(client, KERNEL)?;
        let sum = self.sum.to_vec(client, KERNEL)?;
        Ok((0..scale.len())
            .map(|b| {
                let mut qs = [0i8; BLOCK];
                for (i, q) in qs.iter_mut().enumerate() {
                    *q = (codes[b * 8 + i / 4] >> (8 * (i % 4))) as u8 as i8;
                }
                BlockQ8_1 {
                    d: scale[b],
                    s: scaled_sum[b],
                    sum: sum[b],
                    sum_low: qs[..16].iter().map(|&q| i32::from(q)).sum(),
                    qs,
                }
            })
            .collect())
    }
}

/// The row-major `tokens × cols` activations `x` as Q8_1 blocks of 32 (`cols` a multiple of
/// 32): one unit per block. Launches one kernel; returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`] when `cols` is not whole blocks or `x` not whole rows of it;
/// [`Error::Unsupported`] when the runtime lacks f16 (the scales are rounded through it).
pub fn quantize_q8_1(client: &Client, x: &DeviceBuffer<f32>, cols: usize) -> Result<DeviceQ8_1> {
    const KERNEL: &str = "quantize_q8_1";
    supported::<f16>(client, KERNEL)?;
    require(
        cols > 0 && cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols),
        KERNEL,
        || {
            format!(
                "{} values are not whole rows of {cols} (a multiple of {BLOCK})",
                x.len()
            )
        },
    )?;
    let blocks = x.len() / BLOCK;
    let out = DeviceQ8_1 {
        codes: DeviceBuffer::poisoned(client, blocks * 8),
        scale: DeviceBuffer::poisoned(client, blocks),
        scaled_sum: DeviceBuffer::poisoned(client, blocks),
        sum: DeviceBuffer::poisoned(client, blocks),
        cols,
    };
    if blocks == 0 {
        return Ok(out);
    }
    let cube_dim = CubeDim::new_1d(64);
    quantize_q8_1_kernel::launch(
        client,
        cubecl::calculate_cube_count_elemwise(client, blocks, cube_dim),
        cube_dim,
        x.arg(),
        out.codes.arg(),
        out.scale.arg(),
        out.scaled_sum.arg(),
        out.sum.arg(),
    );
    Ok(out)
}

/// [`quant_gemv`] against Q8_1 activations: integer block sums, f32 outputs
/// (`tokens × rows`). Launches one kernel; returns without waiting.
///
/// # Errors
///
/// [`Error::Shape`] when `x` was quantized with another width than `weights.cols()` (or more
/// tokens than a grid dimension holds).
pub fn quant_gemv_q8_1(
    client: &Client,
    weights: &DeviceWeights,
    x: &DeviceQ8_1,
) -> Result<DeviceBuffer<f32>> {
    const KERNEL: &str = "quant_gemv_q8_1";
    let tokens = x.tokens();
    require(x.cols == weights.cols && tokens <= 65_535, KERNEL, || {
        format!(
            "{tokens} tokens of {} activations for {} weight columns",
            x.cols, weights.cols
        )
    })?;
    let out = DeviceBuffer::poisoned(client, tokens * weights.rows);
    if tokens == 0 {
        return Ok(out);
    }
    quant_gemv_q8_1_kernel::launch(
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
        x.codes.arg(),
        x.scale.arg(),
        x.scaled_sum.arg(),
        x.sum.arg(),
        out.arg(),
        weights.rows,
        weights.cols,
        weights.format_code(),
    );
    Ok(out)
}
