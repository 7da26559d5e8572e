//! [`SimdKernels`]: serve's [`HostKernels`] on this crate's CPU kernels, so that
//! [`HostLlamaRunner`](mlinfra_serve::host::HostLlamaRunner) runs with weights in their
//! GGUF blocks, SIMD chosen at run time, and a [`SpinPool`].

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mlinfra_data::tensor::GgmlType;
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
            text.push_str(if CpuFeatures::detect().avx2 {
                "; portable code (chosen)"
            } else {
                "; portable code: this CPU has no AVX2"
            });
        }
        text
    }

    fn linear(&self, parts: &[WeightBlocks<'_>]) -> Result<Box<dyn HostLinear>> {
        let cols = stacked_cols(parts)?;
        let types: Vec<GgmlType> = parts.iter().map(|p| p.ggml_type).collect();
        let Some(format) = convert::target_format(&types) else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return ReferenceKernels.linear(parts);
        };
        // One part in its own format is repacked straight from the file's bytes; stacked or
        // converted parts are gathered first (a copy of one layer's weights at a time).
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
            if !matches!(
                (part.ggml_type, format),
                (GgmlType::Q4_0, WeightFormat::Q4_0)
                    | (GgmlType::Q4_1, WeightFormat::Q4_1)
                    | (GgmlType::Q8_0, WeightFormat::Q8_0)
            ) {
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
        let matrix = QuantMatrix::new(format, rows, cols, &bytes)
            .and_then(|m| m.with_isa(self.isa))
            .map_err(|error| Error::Weights {
                tensor: name.into(),
                reason: error.to_string().into(),
            })?;
        Ok(Box::new(QuantLinear {
            matrix: Arc::new(matrix),
            parallelism: self.parallelism.clone(),
        }))
    }

    fn attention(&self, step: &AttentionStep<'_>, out: &mut [f32]) {
        attention::attention(step, out, self.isa, &self.parallelism);
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

/// A [`QuantMatrix`] as serve's linear layer: activations quantized to Q8_1 per call.
struct QuantLinear {
    matrix: Arc<QuantMatrix>,
    parallelism: Parallelism,
}

fn batch_error(error: LayoutError) -> Error {
    Error::InvalidBatch {
        reason: error.to_string().into(),
    }
}

impl HostLinear for QuantLinear {
    fn rows(&self) -> usize {
        self.matrix.rows()
    }

    fn cols(&self) -> usize {
        self.matrix.cols()
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        thread_local! {
            /// The calling thread's activation blocks, reused by every call (a decode step
            /// makes over a hundred).
            static ACTIVATIONS: RefCell<Vec<BlockQ8_1>> = const { RefCell::new(Vec::new()) };
        }
        let tokens = check_forward(self.rows(), self.cols(), x, out)?;
        let (cols, per_token) = (self.cols(), self.cols() / BLOCK);
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
            self.matrix
                .matmul(blocks, out, &self.parallelism)
                .map_err(batch_error)
        })
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        self.matrix.dequantize_row(row, out).map_err(batch_error)
    }

    fn resident_bytes(&self) -> usize {
        self.matrix.resident_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
