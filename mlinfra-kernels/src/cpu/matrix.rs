//! Quantized weight matrices, repacked once at load, times Q8_1 activations: the GEMV of a
//! decode step and the GEMM of a prefill, on the threads of a [`Parallelism`].
//!
//! # Layout
//!
//! A GGUF stores a matrix row after row, each row a run of 32-value blocks. At load,
//! [`QuantMatrix::new`] interleaves rows in groups of [`GROUP`] = 8 (ggml's `q4_0_8x8`
//! repack, applied here to Q4_0, Q4_1 and Q8_0): for each group and block index, the 8 rows'
//! scales (and Q4_1's minimums) side by side in f16, then their codes so that 32-bit lane `r`
//! of a 256-bit load holds 4 consecutive codes of row `r`. A block's dot product for all 8
//! rows is then 8 (Q8_0) or 4 (Q4_1) loads, each followed by one `vpdpbusd` (or its AVX2
//! emulation `maddubs` + `madd`) against 4 activation codes broadcast to every lane: no
//! horizontal sums, and one scale multiply per 8 rows. The bytes are the GGUF's own
//! (Q4_1 codes unchanged; Q8_0 codes offset by 128 so they are unsigned for `vpdpbusd`):
//! 0.625 bytes per Q4_1 weight and 1.0625 per Q8_0 weight, as in the file. Rows past the
//! matrix's last (a group's padding) have zero scales.
//!
//! # Numerics and batch invariance
//!
//! Every output `y[t, r]` is `Σ_b fma(isum_b, d_r,b · d_x,b, ·) + Σ_b fma(m_r,b, s_x,b, ·)`
//! over the blocks in order, where `isum_b` is the exact integer dot product of the block's
//! codes: the same operations in the same order whatever the number of tokens, the thread
//! count or the instruction set. So a row's result does not depend on the batch it is in
//! (serve's batch invariance), and the SIMD paths equal the portable one bit for bit (the
//! tests check both).
//!
//! # Cost
//!
//! Weights are read once per call (decode: the whole matrix per token). For several tokens,
//! each thread walks its rows in tiles of about 16 KiB and runs every token over a tile while
//! it is in L1/L2, so a prefill reads the weights from memory once, not once per token; four
//! tokens share each block's loads and nibble decoding, and on a CPU with AVX-512 VNNI two
//! groups share each 512-bit instruction (one token stays on 256 bits: faster for decode,
//! docs/BENCHMARKS.md run S4). Lane for lane these are the same operations, so the bits do
//! not change with the path taken.

use half::f16;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `block_q4_0`: f16 scale, 32 four-bit codes (`w = d·(q - 8)`).
    Q4_0,
    /// `block_q4_1`: f16 scale and minimum, 32 four-bit codes (`w = d·q + m`).
    Q4_1,
    /// `block_q8_0`: f16 scale, 32 signed eight-bit codes (`w = d·q`).
    Q8_0,
}

impl WeightFormat {
    /// Bytes of one block in a GGUF.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q8_0 => 34,
        }
    }

    /// Where a repacked group block's codes start (after the scales, and Q4_1's minimums).
    fn codes_at(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 32,
            WeightFormat::Q4_0 | WeightFormat::Q8_0 => 16,
        }
    }

    /// Bytes of one repacked block of [`GROUP`] rows.
    fn group_block_bytes(self) -> usize {
        match self {
            // 8 scales, 8 × 16 code bytes.
            WeightFormat::Q4_0 => 16 + GROUP * 16,
            // 8 scales, 8 minimums, 8 × 16 code bytes.
            WeightFormat::Q4_1 => 16 + 16 + GROUP * 16,
            // 8 scales, 8 × 32 code bytes.
            WeightFormat::Q8_0 => 16 + GROUP * 32,
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
}

impl Isa {
    /// The fastest this CPU runs.
    pub fn best(features: CpuFeatures) -> Isa {
        if !features.avx2 {
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
        if !cols.is_multiple_of(BLOCK) {
            return Err(fail(format!(
                "{cols} columns are not whole {BLOCK}-value blocks"
            )));
        }
        let blocks = cols / BLOCK;
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
                dst[2 * lane..2 * lane + 2].copy_from_slice(&src[0..2]);
                let codes_at = format.codes_at();
                match format {
                    WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
                        let src_codes = src.len() - 16;
                        if format == WeightFormat::Q4_1 {
                            dst[16 + 2 * lane..16 + 2 * lane + 2].copy_from_slice(&src[2..4]);
                        }
                        // Byte j holds codes j (low nibble) and 16 + j (high): chunk c, lane
                        // r takes bytes 4c..4c+4, so its low nibbles are values 4c..4c+4 and
                        // its high nibbles 16+4c..16+4c+4.
                        for c in 0..4 {
                            dst[codes_at + 32 * c + 4 * lane..][..4]
                                .copy_from_slice(&src[src_codes + 4 * c..src_codes + 4 * c + 4]);
                        }
                    }
                    WeightFormat::Q8_0 => {
                        for c in 0..8 {
                            for i in 0..4 {
                                // i8 + 128 as u8: unsigned for `vpdpbusd`.
                                dst[16 + 32 * c + 4 * lane + i] = src[2 + 4 * c + i] ^ 0x80;
                            }
                        }
                    }
                }
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
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
            let block = self.group_block(group, b);
            let d = f16_at(block, 2 * lane);
            match self.format {
                WeightFormat::Q4_1 => {
                    let m = f16_at(block, 16 + 2 * lane);
                    for c in 0..4 {
                        for i in 0..4 {
                            let byte = block[32 + 32 * c + 4 * lane + i];
                            values[4 * c + i] = d * f32::from(byte & 0x0F) + m;
                            values[16 + 4 * c + i] = d * f32::from(byte >> 4) + m;
                        }
                    }
                }
                WeightFormat::Q8_0 => {
                    for c in 0..8 {
                        for i in 0..4 {
                            let code = (block[16 + 32 * c + 4 * lane + i] ^ 0x80) as i8;
                            values[4 * c + i] = d * f32::from(code);
                        }
                    }
                }
                WeightFormat::Q4_0 => {
                    for c in 0..4 {
                        for i in 0..4 {
                            let byte = block[16 + 32 * c + 4 * lane + i];
                            values[4 * c + i] = d * (f32::from(byte & 0x0F) - 8.0);
                            values[16 + 4 * c + i] = d * (f32::from(byte >> 4) - 8.0);
                        }
                    }
                }
            }
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
        if !x.len().is_multiple_of(self.blocks) {
            return Err(self.error(format!(
                "{} activation blocks are not whole rows of {}",
                x.len(),
                self.blocks
            )));
        }
        let tokens = x.len() / self.blocks;
        if out.len() != tokens * self.rows {
            return Err(self.error(format!(
                "an output of {} values for {tokens} tokens",
                out.len()
            )));
        }
        if tokens == 0 {
            return Ok(());
        }
        let parts = parallelism.parts().min(self.groups);
        // Even, so that the AVX-512 kernels' pairs of groups stay inside a tile.
        let tile = (TILE_BYTES / (self.blocks * self.format.group_block_bytes())).max(2) & !1;
        let out_rows = SharedOut(out.as_mut_ptr());
        let rows = self.rows;
        parallelism.run(&|part| {
            if part >= parts {
                return;
            }
            let first = self.groups * part / parts;
            let last = self.groups * (part + 1) / parts;
            let tokens: Vec<&[BlockQ8_1]> = x.chunks_exact(self.blocks).collect();
            let write = |t: usize, group: usize, lanes: &[f32; GROUP]| {
                let row = group * GROUP;
                let n = GROUP.min(rows - row);
                // SAFETY: parts own disjoint group ranges, so rows `row..row + n` of every
                // token are written by this part alone, and they lie inside `out`
                // (`tokens × rows`, checked above), which outlives `run`.
                unsafe {
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), out_rows.at(t * rows + row), n);
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
        let mut group = groups.start;
        #[cfg(target_arch = "x86_64")]
        if T > 1 && self.wide {
            let gbb = self.format.group_block_bytes();
            while group + 2 <= groups.end {
                let bytes = &self.data[group * self.blocks * gbb..(group + 2) * self.blocks * gbb];
                let mut lanes = [[0f32; 2 * GROUP]; T];
                // SAFETY: the ISA was checked against this CPU when it was chosen; `bytes`
                // holds two groups' `blocks` group blocks and each of `xs` `blocks` blocks
                // (checked by `matmul`).
                unsafe {
                    match self.format {
                        WeightFormat::Q4_0 => x86::q4_0_pair512(bytes, xs, &mut lanes),
                        WeightFormat::Q4_1 => x86::q4_1_pair512(bytes, xs, &mut lanes),
                        WeightFormat::Q8_0 => x86::q8_0_pair512(bytes, xs, &mut lanes),
                    }
                }
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
            use WeightFormat::{Q4_0, Q4_1, Q8_0};
            // SAFETY: `isa` was checked against this CPU when it was chosen; `bytes` holds
            // `blocks` group blocks and each of `xs` is one token's `blocks` blocks (checked
            // by `matmul`).
            unsafe {
                match (self.isa, self.format) {
                    (Isa::Portable, _) => {}
                    (Isa::Avx2, Q4_1) => return x86::q4_1_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q4_1) => return x86::q4_1_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q4_1) => return x86::q4_1_vnni512(bytes, xs, lanes),
                    (Isa::Avx2, Q4_0) => return x86::q4_0_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q4_0) => return x86::q4_0_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q4_0) => return x86::q4_0_vnni512(bytes, xs, lanes),
                    (Isa::Avx2, Q8_0) => return x86::q8_0_avx2(bytes, xs, lanes),
                    (Isa::AvxVnni, Q8_0) => return x86::q8_0_vnni(bytes, xs, lanes),
                    (Isa::Avx512Vnni, Q8_0) => return x86::q8_0_vnni512(bytes, xs, lanes),
                }
            }
        }
        for (x, lanes) in xs.into_iter().zip(lanes.iter_mut()) {
            match self.format {
                WeightFormat::Q4_0 => q4_0_portable(bytes, x, lanes),
                WeightFormat::Q4_1 => q4_1_portable(bytes, x, lanes),
                WeightFormat::Q8_0 => q8_0_portable(bytes, x, lanes),
            }
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 4 activation codes `qs[at..at + 4]`.
fn codes4(qs: &[i8; BLOCK], at: usize) -> [i32; 4] {
    [0, 1, 2, 3].map(|i| i32::from(qs[at + i]))
}

/// The portable kernel: the SIMD paths' operations, lane by lane, in the same order (so the
/// results are the same bits).
fn q4_1_portable(bytes: &[u8], x: &[BlockQ8_1], lanes: &mut [f32; GROUP]) {
    let gbb = WeightFormat::Q4_1.group_block_bytes();
    let mut acc = [0f32; GROUP];
    let mut mins = [0f32; GROUP];
    for (block, xb) in bytes.chunks_exact(gbb).zip(x) {
        for r in 0..GROUP {
            let mut isum = 0i32;
            for c in 0..4 {
                let (low, high) = (codes4(&xb.qs, 4 * c), codes4(&xb.qs, 16 + 4 * c));
                for i in 0..4 {
                    let byte = block[32 + 32 * c + 4 * r + i];
                    isum += i32::from(byte & 0x0F) * low[i] + i32::from(byte >> 4) * high[i];
                }
            }
            let d = f16_at(block, 2 * r);
            let m = f16_at(block, 16 + 2 * r);
            acc[r] = (isum as f32).mul_add(d * xb.d, acc[r]);
            mins[r] = m.mul_add(xb.s, mins[r]);
        }
    }
    for r in 0..GROUP {
        lanes[r] = acc[r] + mins[r];
    }
}

/// As [`q4_1_portable`], for Q4_0 (`w = d·(q - 8)`: the integer sum is `Σ q·x - 8·Σx`).
fn q4_0_portable(bytes: &[u8], x: &[BlockQ8_1], lanes: &mut [f32; GROUP]) {
    let gbb = WeightFormat::Q4_0.group_block_bytes();
    let mut acc = [0f32; GROUP];
    for (block, xb) in bytes.chunks_exact(gbb).zip(x) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for c in 0..4 {
                let (low, high) = (codes4(&xb.qs, 4 * c), codes4(&xb.qs, 16 + 4 * c));
                for i in 0..4 {
                    let byte = block[16 + 32 * c + 4 * r + i];
                    isum += i32::from(byte & 0x0F) * low[i] + i32::from(byte >> 4) * high[i];
                }
            }
            isum -= 8 * xb.sum;
            let d = f16_at(block, 2 * r);
            *acc = (isum as f32).mul_add(d * xb.d, *acc);
        }
    }
    *lanes = acc;
}

/// As [`q4_1_portable`], for Q8_0 (codes stored as `q + 128`).
fn q8_0_portable(bytes: &[u8], x: &[BlockQ8_1], lanes: &mut [f32; GROUP]) {
    let gbb = WeightFormat::Q8_0.group_block_bytes();
    let mut acc = [0f32; GROUP];
    for (block, xb) in bytes.chunks_exact(gbb).zip(x) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for c in 0..8 {
                let xs = codes4(&xb.qs, 4 * c);
                for (i, &xv) in xs.iter().enumerate() {
                    let code = i32::from((block[16 + 32 * c + 4 * r + i] ^ 0x80) as i8);
                    isum += code * xv;
                }
            }
            let d = f16_at(block, 2 * r);
            *acc = (isum as f32).mul_add(d * xb.d, *acc);
        }
    }
    *lanes = acc;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86 kernels: one body per format, instantiated per instruction set (the int8 dot
    //! step differs; everything else is the same instructions in the same order).

    use std::arch::x86_64::*;

    use super::{BlockQ8_1, GROUP, WeightFormat};

    /// Lane-wise `acc + Σ_{4 bytes} u8(a) · i8(b)` with AVX2: `maddubs` pairs into i16 (no
    /// saturation: |pair| ≤ 2·255·127 only for Q8_0's offset codes, which take the signed
    /// path below instead) and `madd` pairs into i32.
    macro_rules! dot_avx2 {
        ($acc:expr, $a:expr, $b:expr) => {
            _mm256_add_epi32(
                $acc,
                _mm256_madd_epi16(_mm256_maddubs_epi16($a, $b), _mm256_set1_epi16(1)),
            )
        };
    }
    macro_rules! dot_vnni {
        ($acc:expr, $a:expr, $b:expr) => {
            _mm256_dpbusd_avx_epi32($acc, $a, $b)
        };
    }
    macro_rules! dot_vnni512 {
        ($acc:expr, $a:expr, $b:expr) => {
            _mm256_dpbusd_epi32($acc, $a, $b)
        };
    }

    /// Activation codes `qs[at..at + 4]` in every 32-bit lane.
    macro_rules! broadcast4 {
        ($qs:expr, $at:expr) => {
            _mm256_set1_epi32(i32::from_le_bytes([
                $qs[$at] as u8,
                $qs[$at + 1] as u8,
                $qs[$at + 2] as u8,
                $qs[$at + 3] as u8,
            ]))
        };
    }

    /// The 4-bit kernels: Q4_1 (`$min`: scales, minimums, codes; `w = d·q + m`) and Q4_0
    /// (scales, codes; `w = d·(q - 8)`, so `8·Σx` comes out of the integer sum).
    macro_rules! q4_kernel {
        ($name:ident, $features:literal, $dot:ident, $min:literal) => {
            /// # Safety
            ///
            /// The CPU has the enabled features; `bytes` holds as many group blocks of this
            /// kernel's format as each of `xs` has blocks.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const T: usize>(
                bytes: &[u8],
                xs: [&[BlockQ8_1]; T],
                lanes: &mut [[f32; GROUP]; T],
            ) {
                let format = if $min {
                    WeightFormat::Q4_1
                } else {
                    WeightFormat::Q4_0
                };
                let (gbb, codes_at) = (format.group_block_bytes(), format.codes_at());
                let nibble = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); T];
                let mut mins = [_mm256_setzero_ps(); T];
                for (b, block) in bytes.chunks_exact(gbb).enumerate() {
                    let p = block.as_ptr();
                    // SAFETY: a group block is `gbb` bytes: scales at 0, Q4_1's minimums at
                    // 16, code chunks at `codes_at + 32c` (c < 4); unaligned loads.
                    let (d, m, packed) = unsafe {
                        (
                            _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                            if $min {
                                _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast()))
                            } else {
                                _mm256_setzero_ps()
                            },
                            [0, 1, 2, 3]
                                .map(|c| _mm256_loadu_si256(p.add(codes_at + 32 * c).cast())),
                        )
                    };
                    // Chunk c's low nibbles are values 4c.., its high nibbles 16 + 4c...
                    let low = packed.map(|packed| _mm256_and_si256(packed, nibble));
                    let high =
                        packed.map(|packed| _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble));
                    for t in 0..T {
                        let xb = &xs[t][b];
                        let mut isum = _mm256_setzero_si256();
                        for c in 0..4 {
                            isum = $dot!(isum, low[c], broadcast4!(xb.qs, 4 * c));
                            isum = $dot!(isum, high[c], broadcast4!(xb.qs, 16 + 4 * c));
                        }
                        if !$min {
                            // Codes are q, weights q - 8: take 8·Σx back out, exactly.
                            isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(8 * xb.sum));
                        }
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                        if $min {
                            mins[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(xb.s), mins[t]);
                        }
                    }
                }
                for t in 0..T {
                    let out = if $min {
                        _mm256_add_ps(acc[t], mins[t])
                    } else {
                        acc[t]
                    };
                    // SAFETY: `lanes[t]` is 8 f32.
                    unsafe { _mm256_storeu_ps(lanes[t].as_mut_ptr(), out) };
                }
            }
        };
    }

    q4_kernel!(q4_1_avx2, "avx2,fma,f16c", dot_avx2, true);
    q4_kernel!(q4_1_vnni, "avx2,fma,f16c,avxvnni", dot_vnni, true);
    q4_kernel!(
        q4_1_vnni512,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        dot_vnni512,
        true
    );
    q4_kernel!(q4_0_avx2, "avx2,fma,f16c", dot_avx2, false);
    q4_kernel!(q4_0_vnni, "avx2,fma,f16c,avxvnni", dot_vnni, false);
    q4_kernel!(
        q4_0_vnni512,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        dot_vnni512,
        false
    );

    /// The signed int8 step of Q8_0: with VNNI, the offset codes `q + 128` go straight into
    /// `vpdpbusd` and `128·Σx` comes out at the end; on plain AVX2 `maddubs` would saturate
    /// on them (2·255·127 > i16::MAX), so the codes go back to signed and the sign moves onto
    /// the activations (`|w| · sign(x, w)`: |pair| ≤ 2·128·127), with nothing to take out.
    macro_rules! q8_dot_offset {
        ($acc:expr, $codes:expr, $x:expr) => {
            _mm256_dpbusd_avx_epi32($acc, $codes, $x)
        };
    }
    macro_rules! q8_dot_offset512 {
        ($acc:expr, $codes:expr, $x:expr) => {
            _mm256_dpbusd_epi32($acc, $codes, $x)
        };
    }
    macro_rules! q8_dot_signed {
        ($acc:expr, $codes:expr, $x:expr) => {{
            let signed = _mm256_xor_si256($codes, _mm256_set1_epi8(0x80u8 as i8));
            dot_avx2!($acc, _mm256_abs_epi8(signed), _mm256_sign_epi8($x, signed))
        }};
    }

    macro_rules! q8_0_kernel {
        ($name:ident, $features:literal, $dot:ident, $offset:expr) => {
            /// # Safety
            ///
            /// The CPU has the enabled features; `bytes` holds as many Q8_0 group blocks as
            /// each of `xs` has blocks.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const T: usize>(
                bytes: &[u8],
                xs: [&[BlockQ8_1]; T],
                lanes: &mut [[f32; GROUP]; T],
            ) {
                let gbb = WeightFormat::Q8_0.group_block_bytes();
                let mut acc = [_mm256_setzero_ps(); T];
                for (b, block) in bytes.chunks_exact(gbb).enumerate() {
                    let p = block.as_ptr();
                    // SAFETY: a group block is 272 bytes: scales at 0, code chunks at
                    // 16 + 32c (c < 8).
                    let (d, codes) = unsafe {
                        (
                            _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                            [0, 1, 2, 3, 4, 5, 6, 7]
                                .map(|c| _mm256_loadu_si256(p.add(16 + 32 * c).cast())),
                        )
                    };
                    for t in 0..T {
                        let xb = &xs[t][b];
                        let mut isum = _mm256_setzero_si256();
                        for c in 0..8 {
                            isum = $dot!(isum, codes[c], broadcast4!(xb.qs, 4 * c));
                        }
                        if $offset {
                            // The codes are q + 128: take 128·Σx back out, exactly.
                            isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(128 * xb.sum));
                        }
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                    }
                }
                for t in 0..T {
                    // SAFETY: `lanes[t]` is 8 f32.
                    unsafe { _mm256_storeu_ps(lanes[t].as_mut_ptr(), acc[t]) };
                }
            }
        };
    }

    q8_0_kernel!(q8_0_avx2, "avx2,fma,f16c", q8_dot_signed, false);
    q8_0_kernel!(q8_0_vnni, "avx2,fma,f16c,avxvnni", q8_dot_offset, true);
    q8_0_kernel!(
        q8_0_vnni512,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        q8_dot_offset512,
        true
    );

    /// Two consecutive groups' 256-bit vectors at `offset` of their group blocks, as one
    /// 512-bit vector (the first group in the low half).
    macro_rules! pair256 {
        ($p0:expr, $p1:expr, $offset:expr) => {
            _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256($p0.add($offset).cast())),
                _mm256_loadu_si256($p1.add($offset).cast()),
                1,
            )
        };
    }
    /// Two consecutive groups' 8 f16 scales at `offset`, as 16 f32.
    macro_rules! pair_scales {
        ($p0:expr, $p1:expr, $offset:expr) => {
            _mm512_cvtph_ps(_mm256_set_m128i(
                _mm_loadu_si128($p1.add($offset).cast()),
                _mm_loadu_si128($p0.add($offset).cast()),
            ))
        };
    }

    /// The 4-bit kernels on two groups at once (512-bit), lane for lane the operations of
    /// `q4_kernel`.
    macro_rules! q4_pair_kernel {
        ($name:ident, $min:literal) => {
            /// # Safety
            ///
            /// The CPU has AVX-512 F, BW, VL and VNNI (and AVX2, FMA, F16C); `bytes` holds two
            /// groups of as many group blocks as each of `xs` has blocks.
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            pub(super) unsafe fn $name<const T: usize>(
                bytes: &[u8],
                xs: [&[BlockQ8_1]; T],
                lanes: &mut [[f32; 2 * GROUP]; T],
            ) {
                let format = if $min {
                    WeightFormat::Q4_1
                } else {
                    WeightFormat::Q4_0
                };
                let (gbb, codes_at) = (format.group_block_bytes(), format.codes_at());
                let (g0, g1) = bytes.split_at(bytes.len() / 2);
                let nibble = _mm512_set1_epi8(0x0F);
                let mut acc = [_mm512_setzero_ps(); T];
                let mut mins = [_mm512_setzero_ps(); T];
                for (b, (block0, block1)) in
                    g0.chunks_exact(gbb).zip(g1.chunks_exact(gbb)).enumerate()
                {
                    let (p0, p1) = (block0.as_ptr(), block1.as_ptr());
                    // SAFETY: each group block is `gbb` bytes: scales at 0, Q4_1's minimums
                    // at 16, code chunks at `codes_at + 32c` (c < 4); unaligned loads.
                    let (d, m, packed) = unsafe {
                        (
                            pair_scales!(p0, p1, 0),
                            if $min {
                                pair_scales!(p0, p1, 16)
                            } else {
                                _mm512_setzero_ps()
                            },
                            [0, 1, 2, 3].map(|c| pair256!(p0, p1, codes_at + 32 * c)),
                        )
                    };
                    let low = packed.map(|packed| _mm512_and_si512(packed, nibble));
                    let high =
                        packed.map(|packed| _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble));
                    for t in 0..T {
                        let xb = &xs[t][b];
                        let mut isum = _mm512_setzero_si512();
                        for c in 0..4 {
                            isum = _mm512_dpbusd_epi32(isum, low[c], broadcast4_512!(xb.qs, 4 * c));
                            isum = _mm512_dpbusd_epi32(
                                isum,
                                high[c],
                                broadcast4_512!(xb.qs, 16 + 4 * c),
                            );
                        }
                        if !$min {
                            isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(8 * xb.sum));
                        }
                        let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[t]);
                        if $min {
                            mins[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(xb.s), mins[t]);
                        }
                    }
                }
                for t in 0..T {
                    let out = if $min {
                        _mm512_add_ps(acc[t], mins[t])
                    } else {
                        acc[t]
                    };
                    // SAFETY: `lanes[t]` is 16 f32.
                    unsafe { _mm512_storeu_ps(lanes[t].as_mut_ptr(), out) };
                }
            }
        };
    }

    /// Activation codes `qs[at..at + 4]` in every 32-bit lane of a 512-bit vector.
    macro_rules! broadcast4_512 {
        ($qs:expr, $at:expr) => {
            _mm512_set1_epi32(i32::from_le_bytes([
                $qs[$at] as u8,
                $qs[$at + 1] as u8,
                $qs[$at + 2] as u8,
                $qs[$at + 3] as u8,
            ]))
        };
    }

    q4_pair_kernel!(q4_1_pair512, true);
    q4_pair_kernel!(q4_0_pair512, false);

    /// Q8_0 on two groups at once (512-bit): lane for lane `q8_0_vnni512`.
    ///
    /// # Safety
    ///
    /// As [`q4_1_pair512`], for Q8_0 group blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn q8_0_pair512<const T: usize>(
        bytes: &[u8],
        xs: [&[BlockQ8_1]; T],
        lanes: &mut [[f32; 2 * GROUP]; T],
    ) {
        let gbb = WeightFormat::Q8_0.group_block_bytes();
        let (g0, g1) = bytes.split_at(bytes.len() / 2);
        let mut acc = [_mm512_setzero_ps(); T];
        for (b, (block0, block1)) in g0.chunks_exact(gbb).zip(g1.chunks_exact(gbb)).enumerate() {
            let (p0, p1) = (block0.as_ptr(), block1.as_ptr());
            // SAFETY: each group block is 272 bytes: scales at 0, code chunks at 16 + 32c.
            let (d, codes) = unsafe {
                (
                    pair_scales!(p0, p1, 0),
                    [0, 1, 2, 3, 4, 5, 6, 7].map(|c| pair256!(p0, p1, 16 + 32 * c)),
                )
            };
            for t in 0..T {
                let xb = &xs[t][b];
                let mut isum = _mm512_setzero_si512();
                for (c, &codes) in codes.iter().enumerate() {
                    isum = _mm512_dpbusd_epi32(isum, codes, broadcast4_512!(xb.qs, 4 * c));
                }
                isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(128 * xb.sum));
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[t]);
            }
        }
        for t in 0..T {
            // SAFETY: `lanes[t]` is 16 f32.
            unsafe { _mm512_storeu_ps(lanes[t].as_mut_ptr(), acc[t]) };
        }
    }
}
