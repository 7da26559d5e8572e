//! Quantized weight matrices, repacked once at load, times Q8_1 activations: the GEMV of a
//! decode step and the GEMM of a prefill, on the threads of a [`Parallelism`].
//!
//! # Layout
//!
//! A GGUF stores a matrix row after row, each row a run of blocks (32 values, or 256 for the
//! K-quants). At load, [`QuantMatrix::new`] interleaves rows in groups of [`GROUP`] = 8
//! (ggml's `q4_0_8x8` repack, applied here to every format): for each group and block index,
//! the 8 rows' scales side by side, then their codes so that 32-bit lane `r` of a 256-bit
//! load holds 4 consecutive codes of row `r` (`layout` has each format's bytes). A 32-value
//! dot product for all 8 rows is then 4 loads (4-bit codes; 5- and 6-bit codes add their top
//! bits from one or two more) or 8 (Q8_0), each followed by one `vpdpbusd` (or its AVX2
//! emulation `maddubs` + `madd`) against 4 activation codes broadcast to every lane: no
//! horizontal sums, and one scale multiply per 8 rows. The bytes are the GGUF's own: 0.5625
//! bytes per Q4_0 weight, 0.625 per Q4_1, 0.6875 per Q5_0, 1.0625 per Q8_0, 0.8203 per Q6_K;
//! Q4_K's 6-bit sub-block scales are unpacked to a byte each (0.578 bytes per weight against
//! the file's 0.5625). Rows past the matrix's last (a group's padding) have zero scales.
//!
//! # Numerics and batch invariance
//!
//! Every output `y[t, r]` is `Σ_b fma(isum_b, d_r,b · d_x,b, ·) + Σ_b fma(m_r,b, s_x,b, ·)`
//! over the 32-value blocks in order, where `isum_b` is the exact integer dot product of the
//! block's codes (times the K-quants' integer sub-block scales, still exact in f32) and
//! `m_r,b` the block's minimum (Q4_1, Q4_K): the same operations in the same order whatever
//! the number of tokens, the thread count or the instruction set. So a row's result does not
//! depend on the batch it is in (serve's batch invariance), and the SIMD paths equal the
//! portable one bit for bit (the tests check both).
//!
//! # Cost
//!
//! Weights are read once per call (decode: the whole matrix per token). For several tokens,
//! each thread walks its rows in tiles of about 16 KiB and runs every token over a tile while
//! it is in L1/L2, so a prefill reads the weights from memory once, not once per token; four
//! tokens share each block's loads and nibble decoding, and on a CPU with AVX-512 VNNI two
//! groups share each 512-bit instruction for Q4_0, Q4_1, Q5_0 and Q8_0 (one token stays on
//! 256 bits: faster for decode, docs/BENCHMARKS.md run S4). Lane for lane these are the same
//! operations, so the bits do not change with the path taken.
//!
//! On aarch64 the same layout feeds NEON: a 256-bit chunk is two 128-bit registers, and the
//! int8 step is `sdot` (FEAT_DotProd) or `smull` and pairwise adds (`neon`).

mod layout;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use mlinfra_data::tensor::GgmlType;

use super::CpuFeatures;
use super::pool::{Parallelism, SharedOut};
use super::quant::{BLOCK, BlockQ8_1};

/// Rows interleaved together.
pub const GROUP: usize = 8;

/// Tokens that share one decoding of a weight block (prefill and batched decode).
const MICRO_TOKENS: usize = 4;

/// Bytes of weights a thread keeps hot while it runs every token over them.
const TILE_BYTES: usize = 16 * 1024;

/// The GGUF block formats [`QuantMatrix`] multiplies in place.
// The GGUF's own names.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `block_q4_0`: f16 scale, 32 four-bit codes (`w = d·(q - 8)`).
    Q4_0,
    /// `block_q4_1`: f16 scale and minimum, 32 four-bit codes (`w = d·q + m`).
    Q4_1,
    /// `block_q5_0`: f16 scale, 32 five-bit codes (`w = d·(q - 16)`).
    Q5_0,
    /// `block_q8_0`: f16 scale, 32 signed eight-bit codes (`w = d·q`).
    Q8_0,
    /// `block_q4_K`: 256 values in 8 sub-blocks of 32, f16 super-scale `d` and super-minimum
    /// `dmin`, 6-bit sub-block scales `sc` and minimums `m`, 4-bit codes
    /// (`w = d·sc·q - dmin·m`).
    Q4_K,
    /// `block_q6_K`: 256 values in 16 sub-blocks of 16, f16 super-scale `d`, i8 sub-block
    /// scales `sc`, 6-bit codes (`w = d·sc·(q - 32)`).
    Q6_K,
}

impl WeightFormat {
    /// Bytes of one block in a GGUF.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q5_0 => 22,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4_K => 144,
            WeightFormat::Q6_K => 210,
        }
    }

    /// The GGUF tensor type whose blocks these are.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            WeightFormat::Q4_0 => GgmlType::Q4_0,
            WeightFormat::Q4_1 => GgmlType::Q4_1,
            WeightFormat::Q5_0 => GgmlType::Q5_0,
            WeightFormat::Q8_0 => GgmlType::Q8_0,
            WeightFormat::Q4_K => GgmlType::Q4_K,
            WeightFormat::Q6_K => GgmlType::Q6_K,
        }
    }

    /// Values in one block: 32, or 256 for the K-quants' super-blocks.
    pub fn block_values(self) -> usize {
        match self {
            WeightFormat::Q4_K | WeightFormat::Q6_K => 256,
            _ => BLOCK,
        }
    }

    /// Where a repacked group block's codes start (after the scales, and Q4_1's minimums).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn codes_at(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 32,
            WeightFormat::Q4_K => 160,
            WeightFormat::Q6_K => 144,
            WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::Q8_0 => 16,
        }
    }

    /// Bytes of one repacked block of [`GROUP`] rows: the GGUF's bytes for 8 rows, but for
    /// Q4_K, whose 6-bit scales and minimums are unpacked to a byte each (+2.8%).
    fn group_block_bytes(self) -> usize {
        match self {
            // 8 scales, 8 × 16 code bytes.
            WeightFormat::Q4_0 => 16 + GROUP * 16,
            // 8 scales, 8 minimums, 8 × 16 code bytes.
            WeightFormat::Q4_1 => 16 + 16 + GROUP * 16,
            // 8 scales, 8 × 16 nibble bytes, 8 × 4 bytes of fifth bits.
            WeightFormat::Q5_0 => 16 + GROUP * 16 + GROUP * 4,
            // 8 scales, 8 × 32 code bytes.
            WeightFormat::Q8_0 => 16 + GROUP * 32,
            // 8 `d`, 8 `dmin`, 8 × 8 scales, 8 × 8 minimums, 8 sub-blocks of 8 × 16 nibbles.
            WeightFormat::Q4_K => 16 + 16 + 64 + 64 + 8 * GROUP * 16,
            // 8 `d`, 16 × 8 scales, 8 blocks of 32 of 8 × (16 nibbles + 8 bytes of top bits).
            WeightFormat::Q6_K => 16 + 128 + 8 * GROUP * 24,
        }
    }
}

/// The instruction set a matrix's kernels run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Scalar Rust: any CPU.
    Portable,
    /// AVX2, FMA and F16C: `maddubs` + `madd` for the int8 dot products.
    Avx2,
    /// AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX-encoded).
    AvxVnni,
    /// AVX-512 VNNI and VL (`vpdpbusd` on 256-bit registers, EVEX-encoded).
    Avx512Vnni,
    /// aarch64 NEON: `smull` and pairwise adds for the int8 dot products.
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDotprod,
}

impl Isa {
    /// The fastest this CPU runs.
    pub fn best(features: CpuFeatures) -> Isa {
        if features.dotprod {
            Isa::NeonDotprod
        } else if features.neon {
            Isa::Neon
        } else if !features.avx2 {
            Isa::Portable
        } else if features.avx_vnni {
            Isa::AvxVnni
        } else if features.avx512_vnni {
            Isa::Avx512Vnni
        } else {
            Isa::Avx2
        }
    }

    /// Whether several tokens run two groups per 512-bit instruction with this kernel on a
    /// CPU with `features` (AVX-512 VNNI there, and a VNNI kernel chosen).
    fn wide_on(self, features: CpuFeatures) -> bool {
        features.avx512_vnni && matches!(self, Isa::AvxVnni | Isa::Avx512Vnni)
    }

    /// Whether this CPU can run it.
    pub fn is_supported(self, features: CpuFeatures) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => features.avx2,
            Isa::AvxVnni => features.avx2 && features.avx_vnni,
            Isa::Avx512Vnni => features.avx2 && features.avx512_vnni,
            Isa::Neon => features.neon,
            Isa::NeonDotprod => features.dotprod,
        }
    }
}

/// A matrix whose bytes do not fit its shape, or operands that do not fit the matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format:?} matrix of {rows}×{cols}: {reason}")]
pub struct LayoutError {
    /// The matrix's format.
    pub format: WeightFormat,
    /// Its rows (output features).
    pub rows: usize,
    /// Its columns (input features).
    pub cols: usize,
    /// What does not fit.
    pub reason: String,
}

/// A weight matrix in its GGUF blocks, rows interleaved for the kernels (module docs).
#[derive(Clone)]
pub struct QuantMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    /// Blocks per row.
    blocks: usize,
    groups: usize,
    data: Vec<u8>,
    isa: Isa,
    /// Several tokens run two groups per 512-bit instruction (AVX-512 VNNI present, a VNNI
    /// kernel chosen).
    wide: bool,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

impl QuantMatrix {
    /// Repacks `bytes`, a `rows × cols` matrix as a GGUF stores it (row-major, whole blocks
    /// per row), for the best instruction set of this CPU.
    ///
    /// # Errors
    ///
    /// [`LayoutError`] when `cols` is not a multiple of 32, a dimension is zero, or `bytes`
    /// is not exactly `rows` rows of blocks.
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, LayoutError> {
        let fail = |reason: String| LayoutError {
            format,
            rows,
            cols,
            reason,
        };
        if rows == 0 || cols == 0 {
            return Err(fail("a dimension is zero".into()));
        }
        let block_values = format.block_values();
        if !cols.is_multiple_of(block_values) {
            return Err(fail(format!(
                "{cols} columns are not whole {block_values}-value blocks"
            )));
        }
        let blocks = cols / block_values;
        let row_bytes = blocks * format.block_bytes();
        if rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(fail(format!(
                "{} bytes are not {rows} rows of {row_bytes}",
                bytes.len()
            )));
        }
        let groups = rows.div_ceil(GROUP);
        let gbb = format.group_block_bytes();
        let mut data = vec![0u8; groups * blocks * gbb];
        for (row, src_row) in bytes.chunks_exact(row_bytes).enumerate() {
            let (group, lane) = (row / GROUP, row % GROUP);
            for (b, src) in src_row.chunks_exact(format.block_bytes()).enumerate() {
                let dst = &mut data[(group * blocks + b) * gbb..][..gbb];
                layout::write_lane(format, src, dst, lane);
            }
        }
        if format == WeightFormat::Q8_0 {
            // Padding rows: code 0 is byte 0x80 (their scale is 0 anyway).
            for row in rows..groups * GROUP {
                let (group, lane) = (row / GROUP, row % GROUP);
                for b in 0..blocks {
                    let dst = &mut data[(group * blocks + b) * gbb..][..gbb];
                    for c in 0..8 {
                        dst[16 + 32 * c + 4 * lane..][..4].fill(0x80);
                    }
                }
            }
        }
        let features = CpuFeatures::detect();
        let isa = Isa::best(features);
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            blocks,
            groups,
            data,
            isa,
            wide: isa.wide_on(features),
        })
    }

    /// Runs this matrix's kernels on `isa` instead (tests compare the paths).
    ///
    /// # Errors
    ///
    /// [`LayoutError`] when this CPU lacks `isa`.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self, LayoutError> {
        let features = CpuFeatures::detect();
        if !isa.is_supported(features) {
            return Err(self.error(format!("this CPU cannot run {isa:?}")));
        }
        self.isa = isa;
        self.wide = isa.wide_on(features);
        Ok(self)
    }

    /// The format of its blocks.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The instruction set its kernels run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes it holds (the repacked blocks, padding rows included).
    pub fn resident_bytes(&self) -> usize {
        self.data.len()
    }

    fn error(&self, reason: String) -> LayoutError {
        LayoutError {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            reason,
        }
    }

    fn group_block(&self, group: usize, block: usize) -> &[u8] {
        let gbb = self.format.group_block_bytes();
        &self.data[(group * self.blocks + block) * gbb..][..gbb]
    }

    /// Row `row`'s values in f32 (an embedding lookup).
    ///
    /// # Errors
    ///
    /// [`LayoutError`] for a row past the matrix or an `out` of another length than
    /// [`QuantMatrix::cols`].
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), LayoutError> {
        if row >= self.rows || out.len() != self.cols {
            return Err(self.error(format!(
                "row {row} into {} values is out of range",
                out.len()
            )));
        }
        let (group, lane) = (row / GROUP, row % GROUP);
        for (b, values) in out.chunks_exact_mut(self.format.block_values()).enumerate() {
            layout::read_lane(self.format, self.group_block(group, b), lane, values);
        }
        Ok(())
    }

    /// `out[t · rows + r] = Σ_c W[r, c] · x[t, c]` for every token `t`, where `x` holds each
    /// token's activations quantized to Q8_1 ([`quantize_q8_1`](super::quant::quantize_q8_1)
    /// of the row-major `[tokens, cols]` matrix), split over `parallelism`'s threads by rows.
    ///
    /// # Errors
    ///
    /// [`LayoutError`] when `x` is not whole rows of `cols / 32` blocks or `out` is not
    /// `tokens × rows`.
    pub fn matmul(
        &self,
        x: &[BlockQ8_1],
        out: &mut [f32],
        parallelism: &Parallelism,
    ) -> Result<(), LayoutError> {
        self.matmul_into(x, out, self.rows, 0, parallelism)
    }

    /// [`QuantMatrix::matmul`] into rows `first_row..first_row + rows` of an output of
    /// `out_rows` per token (`out`: `tokens × out_rows`), leaving its other rows alone: the
    /// parts of a stacked projection whose parts have different formats.
    ///
    /// # Errors
    ///
    /// As [`QuantMatrix::matmul`], and when the rows do not fit in `out_rows`.
    pub fn matmul_into(
        &self,
        x: &[BlockQ8_1],
        out: &mut [f32],
        out_rows: usize,
        first_row: usize,
        parallelism: &Parallelism,
    ) -> Result<(), LayoutError> {
        let x_blocks = self.cols / BLOCK;
        if !x.len().is_multiple_of(x_blocks) {
            return Err(self.error(format!(
                "{} activation blocks are not whole rows of {x_blocks}",
                x.len(),
            )));
        }
        let tokens = x.len() / x_blocks;
        if first_row + self.rows > out_rows {
            return Err(self.error(format!(
                "rows {first_row}..{} do not fit in {out_rows}",
                first_row + self.rows
            )));
        }
        if out.len() != tokens * out_rows {
            return Err(self.error(format!(
                "an output of {} values for {tokens} tokens of {out_rows}",
                out.len()
            )));
        }
        if tokens == 0 {
            return Ok(());
        }
        let parts = parallelism.parts().min(self.groups);
        // Even, so that the AVX-512 kernels' pairs of groups stay inside a tile.
        let tile = (TILE_BYTES / (self.blocks * self.format.group_block_bytes())).max(2) & !1;
        let out_ptr = SharedOut(out.as_mut_ptr());
        let rows = self.rows;
        parallelism.run(&|part| {
            if part >= parts {
                return;
            }
            let first = self.groups * part / parts;
            let last = self.groups * (part + 1) / parts;
            let tokens: Vec<&[BlockQ8_1]> = x.chunks_exact(x_blocks).collect();
            let write = |t: usize, group: usize, lanes: &[f32; GROUP]| {
                let row = group * GROUP;
                let n = GROUP.min(rows - row);
                // SAFETY: parts own disjoint group ranges, so rows `row..row + n` of every
                // token are written by this part alone, and they lie inside `out`
                // (`tokens × out_rows`, `first_row + rows ≤ out_rows`, checked above), which
                // outlives `run`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        lanes.as_ptr(),
                        out_ptr.at(t * out_rows + first_row + row),
                        n,
                    );
                }
            };
            for tile_start in (first..last).step_by(tile) {
                let tile_end = (tile_start + tile).min(last);
                // Four tokens share each weight block's loads and decoding; the rest go one
                // at a time. Either way a token's result is computed by the same operations.
                let mut quads = tokens.chunks_exact(MICRO_TOKENS);
                for (q, quad) in (&mut quads).enumerate() {
                    let quad: [&[BlockQ8_1]; MICRO_TOKENS] = std::array::from_fn(|i| quad[i]);
                    self.tile_dot(tile_start..tile_end, quad, &mut |i, group, lanes| {
                        write(q * MICRO_TOKENS + i, group, lanes);
                    });
                }
                let done = tokens.len() - quads.remainder().len();
                for (i, &token) in quads.remainder().iter().enumerate() {
                    self.tile_dot(tile_start..tile_end, [token], &mut |_, group, lanes| {
                        write(done + i, group, lanes);
                    });
                }
            }
        });
        Ok(())
    }

    /// Every group in `groups` against `T` tokens' blocks, handing each token's 8 results
    /// per group to `write(token, group, lanes)`. For several tokens on a CPU with AVX-512
    /// VNNI (and a VNNI kernel chosen), two groups at a time share each 512-bit instruction:
    /// each lane's operations are the 256-bit kernels', so the results are the same bits.
    /// One token stays on 256 bits: measured faster for decode (run S4).
    fn tile_dot<const T: usize>(
        &self,
        groups: std::ops::Range<usize>,
        xs: [&[BlockQ8_1]; T],
        write: &mut dyn FnMut(usize, usize, &[f32; GROUP]),
    ) {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut group = groups.start;
        #[cfg(target_arch = "x86_64")]
        if T > 1 && self.wide {
            type Pair<const T: usize> =
                unsafe fn(&[u8], [&[BlockQ8_1]; T], &mut [[f32; 2 * GROUP]; T]);
            let pair: Option<Pair<T>> = match self.format {
                WeightFormat::Q4_0 => Some(x86::q4_0_pair512::<T>),
                WeightFormat::Q4_1 => Some(x86::q4_1_pair512::<T>),
                WeightFormat::Q8_0 => Some(x86::q8_0_pair512::<T>),
                WeightFormat::Q5_0 => Some(x86::q5_0_pair512::<T>),
                // The K-quants have 256-bit kernels only.
                WeightFormat::Q4_K | WeightFormat::Q6_K => None,
            };
            let gbb = self.format.group_block_bytes();
            while let Some(pair) = pair
                && group + 2 <= groups.end
            {
                let bytes = &self.data[group * self.blocks * gbb..(group + 2) * self.blocks * gbb];
                let mut lanes = [[0f32; 2 * GROUP]; T];
                // SAFETY: the ISA was checked against this CPU when it was chosen; `bytes`
                // holds two groups' `blocks` group blocks and each of `xs` `blocks` blocks
                // (checked by `matmul`).
                unsafe { pair(bytes, xs, &mut lanes) };
                for (t, lanes) in lanes.iter().enumerate() {
                    let (first, second) = lanes.split_at(GROUP);
                    write(t, group, first.try_into().expect("8 lanes"));
                    write(t, group + 1, second.try_into().expect("8 lanes"));
                }
                group += 2;
            }
        }
        for group in group..groups.end {
            let mut lanes = [[0f32; GROUP]; T];
            self.group_dot(group, xs, &mut lanes);
            for (t, lanes) in lanes.iter().enumerate() {
                write(t, group, lanes);
            }
        }
    }

    /// The 8 rows of `group` against `T` tokens' blocks.
    fn group_dot<const T: usize>(
        &self,
        group: usize,
        xs: [&[BlockQ8_1]; T],
        lanes: &mut [[f32; GROUP]; T],
    ) {
        let gbb = self.format.group_block_bytes();
        let bytes = &self.data[group * self.blocks * gbb..(group + 1) * self.blocks * gbb];
        #[cfg(target_arch = "x86_64")]
        {
            use WeightFormat::{Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0};
            // SAFETY: `isa` was checked against this CPU when it was chosen; `bytes` holds
            // `blocks` group blocks and each of `xs` is one token's `blocks` blocks (checked
            // by `matmul`).
            unsafe {
                match (self.isa, self.format) {
                    (Isa::Portable | Isa::Neon | Isa::NeonDotprod, _) => {}
                    (Isa::Avx2, Q4_1) => return x86::q4_1_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q4_1) => return x86::q4_1_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q4_1) => return x86::q4_1_vnni512(bytes, xs, lanes),
                    (Isa::Avx2, Q4_0) => return x86::q4_0_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q4_0) => return x86::q4_0_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q4_0) => return x86::q4_0_vnni512(bytes, xs, lanes),
                    (Isa::Avx2, Q8_0) => return x86::q8_0_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q8_0) => return x86::q8_0_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q8_0) => return x86::q8_0_vnni512(bytes, xs, lanes),
                    (Isa::Avx2, Q5_0) => return x86::q5_0_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q5_0) => return x86::q5_0_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q5_0) => return x86::q5_0_vnni512(bytes, xs, lanes),
                    (Isa::Avx2, Q4_K) => return x86::q4_k_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q4_K) => return x86::q4_k_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q4_K) => return x86::q4_k_vnni512(bytes, xs, lanes),
                    (Isa::Avx2, Q6_K) => return x86::q6_k_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q6_K) => return x86::q6_k_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q6_K) => return x86::q6_k_vnni512(bytes, xs, lanes),
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use WeightFormat::{Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0};
            // SAFETY: as for x86 above.
            unsafe {
                match (self.isa, self.format) {
                    (Isa::NeonDotprod, Q4_0 | Q4_1 | Q5_0) => {
                        return neon::dotprod::small(self.format, bytes, xs, lanes);
                    }
                    (Isa::NeonDotprod, Q8_0) => return neon::dotprod::q8_0(bytes, xs, lanes),
                    (Isa::NeonDotprod, Q4_K) => return neon::dotprod::q4_k(bytes, xs, lanes),
                    (Isa::NeonDotprod, Q6_K) => return neon::dotprod::q6_k(bytes, xs, lanes),
                    (Isa::Neon, Q4_0 | Q4_1 | Q5_0) => {
                        return neon::baseline::small(self.format, bytes, xs, lanes);
                    }
                    (Isa::Neon, Q8_0) => return neon::baseline::q8_0(bytes, xs, lanes),
                    (Isa::Neon, Q4_K) => return neon::baseline::q4_k(bytes, xs, lanes),
                    (Isa::Neon, Q6_K) => return neon::baseline::q6_k(bytes, xs, lanes),
                    _ => {}
                }
            }
        }
        for (x, lanes) in xs.into_iter().zip(lanes.iter_mut()) {
            *lanes = portable::group_dot(self.format, bytes, x);
        }
    }
}
