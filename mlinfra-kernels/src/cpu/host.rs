//! [`SimdKernels`]: serve's [`HostKernels`] on this crate's CPU kernels, so that
//! [`HostLlamaRunner`](mlinfra_serve::host::HostLlamaRunner) runs with weights in their
//! GGUF blocks, SIMD chosen at run time, and a [`SpinPool`].

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use mlinfra_serve::host::{
    AttentionStep, HostKernels, HostLinear, ReferenceKernels, WeightBlocks, check_forward,
    stacked_cols,
};
use mlinfra_serve::{Error, Result};

use super::CpuFeatures;
use super::matrix::{Isa, LayoutError, QuantMatrix, WeightFormat};
use super::pool::{Parallelism, SpinPool};
use super::quant::{BLOCK, BlockQ8_1, quantize_q8_1_to};
use super::{attention, convert};

/// The CPU serving kernels (module docs).
#[derive(Debug)]
pub struct SimdKernels {
    parallelism: Parallelism,
    isa: Isa,
    /// Tensors of types these kernels do not multiply in place, dequantized to f32 instead.
    fallbacks: AtomicUsize,
    /// Tensors converted to another block type at load (`convert`'s table), as "from → to".
    conversions: Mutex<Vec<String>>,
}

impl SimdKernels {
    /// Kernels on `threads` threads (the caller's and `threads - 1` spinning workers) and the
    /// best instruction set of this CPU.
    pub fn new(threads: usize) -> Self {
        Self::with_parallelism(Parallelism::Spin(SpinPool::new(threads)))
    }

    /// Kernels on `parallelism` (rayon, serial...), for comparisons.
    pub fn with_parallelism(parallelism: Parallelism) -> Self {
        SimdKernels {
            parallelism,
            isa: Isa::best(CpuFeatures::detect()),
            fallbacks: AtomicUsize::new(0),
            conversions: Mutex::new(Vec::new()),
        }
    }

    /// Runs on `isa` instead (tests compare the paths).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when this CPU lacks it.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self> {
        if !isa.is_supported(CpuFeatures::detect()) {
            return Err(Error::InvalidConfig {
                reason: format!("this CPU cannot run {isa:?}").into(),
            });
        }
        self.isa = isa;
        Ok(self)
    }

    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `parts`, stacked, as one matrix in `format`: a single part in its own format is
    /// repacked straight from the file's bytes; stacked or converted parts are gathered first
    /// (a copy of one layer's weights at a time).
    fn matrix(
        &self,
        parts: &[WeightBlocks<'_>],
        format: WeightFormat,
        cols: usize,
    ) -> Result<QuantMatrix> {
        let mut gathered: Vec<Cow<'_, [u8]>> = Vec::with_capacity(parts.len());
        let mut rows = 0;
        for part in parts {
            part.row_bytes()?;
            let converted =
                convert::convert(part.ggml_type, &part.bytes, format).ok_or_else(|| {
                    Error::Weights {
                        tensor: part.name.clone().into(),
                        reason: format!(
                            "{} blocks cannot be converted to {format:?}",
                            part.ggml_type.name()
                        )
                        .into(),
                    }
                })?;
            if !convert::is_native(part.ggml_type, format) {
                self.conversions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{} → {format:?}", part.ggml_type.name()));
            }
            gathered.push(converted);
            rows += part.rows;
        }
        let name = parts
            .iter()
            .map(|p| p.name.as_ref())
            .collect::<Vec<_>>()
            .join(" + ");
        let bytes: Cow<'_, [u8]> = if gathered.len() == 1 {
            gathered.swap_remove(0)
        } else {
            Cow::Owned(gathered.concat())
        };
        QuantMatrix::new(format, rows, cols, &bytes)
            .and_then(|m| m.with_isa(self.isa))
            .map_err(|error| Error::Weights {
                tensor: name.into(),
                reason: error.to_string().into(),
            })
    }
}

impl HostKernels for SimdKernels {
    fn describe(&self) -> String {
        let threads = self.parallelism.parts();
        let scheme = match self.parallelism {
            Parallelism::Serial => "serial",
            Parallelism::Spin(_) => "spin pool",
            Parallelism::Rayon { .. } => "rayon",
        };
        let plural = if threads == 1 { "" } else { "s" };
        let mut text = format!("simd ({:?}, {threads} thread{plural}, {scheme})", self.isa);
        let fallbacks = self.fallbacks.load(Ordering::Relaxed);
        if fallbacks > 0 {
            text.push_str(&format!(
                "; {fallbacks} layers of types without a kernel run dequantized to f32"
            ));
        }
        let conversions = self.conversions.lock().unwrap_or_else(|p| p.into_inner());
        if !conversions.is_empty() {
            let mut kinds: Vec<&String> = conversions.iter().collect();
            kinds.sort();
            kinds.dedup();
            let kinds: Vec<String> = kinds
                .into_iter()
                .map(|kind| {
                    let n = conversions.iter().filter(|c| *c == kind).count();
                    format!("{kind} ×{n}")
                })
                .collect();
            text.push_str(&format!("; converted at load: {}", kinds.join(", ")));
        }
        if self.isa == Isa::Portable {
            text.push_str(if Isa::best(CpuFeatures::detect()) != Isa::Portable {
                "; portable code (chosen)"
            } else {
                "; portable code: this CPU has neither AVX2 nor NEON"
            });
        } else if matches!(self.isa, Isa::Neon | Isa::NeonDotprod) {
            // The attention kernels are x86 only so far.
            text.push_str("; attention in portable code");
        }
        text
    }

    fn linear(&self, parts: &[WeightBlocks<'_>]) -> Result<Box<dyn HostLinear>> {
        let cols = stacked_cols(parts)?;
        let formats: Option<Vec<WeightFormat>> = parts
            .iter()
            .map(|p| convert::target_format(p.ggml_type))
            .collect();
        let Some(formats) = formats else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return ReferenceKernels.linear(parts);
        };
        // Consecutive parts in one format share a matrix (Q, K and V of one type: one
        // matmul); a stack of mixed types (SmolLM2 Q4_K_M: Q5_0 Q and K, a Q8_0 V in some
        // layers) is one matrix per run, each writing its rows of the output.
        let mut matrices = Vec::new();
        let mut first = 0;
        while first < parts.len() {
            let format = formats[first];
            let end = (first..parts.len())
                .find(|&i| formats[i] != format)
                .unwrap_or(parts.len());
            matrices.push(self.matrix(&parts[first..end], format, cols)?);
            first = end;
        }
        Ok(Box::new(QuantLinear {
            rows: matrices.iter().map(|m| m.rows()).sum(),
            cols,
            matrices,
            parallelism: self.parallelism.clone(),
        }))
    }

    fn attention(&self, step: &AttentionStep<'_>, out: &mut [f32]) -> Result<()> {
        attention::attention(step, out, self.isa, &self.parallelism);
        Ok(())
    }

    fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk: usize,
        task: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        self.parallelism.for_each_chunk(out, chunk, task);
    }
}

/// [`QuantMatrix`]es stacked as serve's linear layer: activations quantized to Q8_1 once per
/// call, then each matrix writes its rows of the output.
struct QuantLinear {
    matrices: Vec<QuantMatrix>,
    rows: usize,
    cols: usize,
    parallelism: Parallelism,
}

fn batch_error(error: LayoutError) -> Error {
    Error::InvalidBatch {
        reason: error.to_string().into(),
    }
}

impl HostLinear for QuantLinear {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        thread_local! {
            /// The calling thread's activation blocks, reused by every call (a decode step
            /// makes over a hundred).
            static ACTIVATIONS: RefCell<Vec<BlockQ8_1>> = const { RefCell::new(Vec::new()) };
        }
        let tokens = check_forward(self.rows, self.cols, x, out)?;
        let (cols, per_token) = (self.cols, self.cols / BLOCK);
        ACTIVATIONS.with_borrow_mut(|blocks| {
            blocks.resize(tokens * per_token, BlockQ8_1::default());
            // A prefill's activations are quantized on every thread, a token per piece.
            if tokens >= 2 * self.parallelism.parts() {
                self.parallelism
                    .for_each_chunk(blocks, per_token, &|t, token| {
                        quantize_q8_1_to(&x[t * cols..(t + 1) * cols], token);
                    });
            } else {
                quantize_q8_1_to(x, blocks);
            }
            let mut first_row = 0;
            for matrix in &self.matrices {
                matrix
                    .matmul_into(blocks, out, self.rows, first_row, &self.parallelism)
                    .map_err(batch_error)?;
                first_row += matrix.rows();
            }
            Ok(())
        })
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let mut first_row = 0;
        for matrix in &self.matrices {
            if row < first_row + matrix.rows() {
                return matrix
                    .dequantize_row(row - first_row, out)
                    .map_err(batch_error);
            }
            first_row += matrix.rows();
        }
        Err(Error::InvalidBatch {
            reason: format!("row {row} of a {}-row matrix", self.rows).into(),
        })
    }

    fn resident_bytes(&self) -> usize {
        self.matrices.iter().map(|m| m.resident_bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use mlinfra_data::tensor::GgmlType;

    use super::*;

    /// Pseudo-random blocks of `ty` with small finite f16 scales (`scale_at`: their offsets).
    fn blocks(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let count = rows * cols / ty.block_size();
        let mut bytes: Vec<u8> = (0..count * ty.type_size())
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 33) as u8
            })
            .collect();
        let scale_at: &[usize] = match ty {
            GgmlType::Q6_K => &[208],
            GgmlType::Q4_K | GgmlType::Q5_1 => &[0, 2],
            _ => &[0],
        };
        for block in bytes.chunks_exact_mut(ty.type_size()) {
            for &at in scale_at {
                block[at..at + 2].copy_from_slice(&half::f16::from_f32(0.002).to_le_bytes());
            }
        }
        bytes
    }

    /// A stack of parts in different types (a Q4_K_M model's layers; Q5_1 converted to Q8_0)
    /// is one matrix per run of a format, each writing its rows: the same as the f32
    /// reference's stack within the 8-bit activations' error, row for row, and its rows read
    /// back where they were stacked.
    #[test]
    fn mixed_stacks_are_the_references_stack() {
        let cols = 512;
        let types = [
            (GgmlType::Q4_K, 24),
            (GgmlType::Q4_K, 8),
            (GgmlType::Q6_K, 16),
            (GgmlType::Q5_1, 9),
            (GgmlType::Q5_0, 7),
        ];
        let parts: Vec<WeightBlocks<'_>> = types
            .iter()
            .enumerate()
            .map(|(i, &(ty, rows))| WeightBlocks {
                name: format!("part{i}").into(),
                ggml_type: ty,
                rows,
                cols,
                bytes: blocks(ty, rows, cols, 7 + i as u64).into(),
            })
            .collect();
        let kernels = SimdKernels::new(2);
        let ours = kernels.linear(&parts).unwrap();
        let reference = ReferenceKernels.linear(&parts).unwrap();
        let rows = types.iter().map(|t| t.1).sum::<usize>();
        assert_eq!((ours.rows(), ours.cols()), (rows, cols));
        assert!(
            kernels.describe().contains("Q5_1 → Q8_0 ×1"),
            "{}",
            kernels.describe()
        );
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let (mut got, mut want) = (vec![f32::NAN; 2 * rows], vec![0f32; 2 * rows]);
        ours.forward(&x, &mut got).unwrap();
        reference.forward(&x, &mut want).unwrap();
        let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 0.02 * spread,
                "output {i}: {g} vs {w} (max |y| {spread})"
            );
        }
        let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
        for row in [0, 23, 24, 32, 47, 48, 56, 57, rows - 1] {
            ours.dequantize_row(row, &mut a).unwrap();
            reference.dequantize_row(row, &mut b).unwrap();
            // Q5_1 went through Q8_0: within half a step; the others are the file's values.
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 0.01),
                "row {row}"
            );
        }
        assert!(ours.dequantize_row(rows, &mut a).is_err());
    }

    /// What runs is in the log line: the instruction set, the threads, and the portable path
    /// named as such (a CPU without AVX2 gets it, never SIGILL).
    #[test]
    fn the_description_names_what_runs() {
        let kernels = SimdKernels::new(2);
        let text = kernels.describe();
        assert!(text.contains(&format!("{:?}", kernels.isa())), "{text}");
        assert!(text.contains("2 threads, spin pool"), "{text}");
        let portable = SimdKernels::with_parallelism(Parallelism::Serial)
            .with_isa(Isa::Portable)
            .unwrap()
            .describe();
        assert!(
            portable.contains("Portable") && portable.contains("portable code"),
            "{portable}"
        );
        assert!(portable.contains("1 thread, serial"), "{portable}");
    }
}
