//! The host-memory Llama runner and the kernel traits it runs on (issue 24).
//!
//! [`HostLlamaRunner`] runs a Llama-family GGUF model on the CPU without burn: weights stay
//! in the file's quantized blocks, activations and the paged KV memory are plain `f32`
//! buffers, and every step is one flat forward of the batch's tokens, as [`LlamaRunner`]
//! does on burn tensors. What costs time goes through [`HostKernels`], a trait this crate
//! defines and `mlinfra-kernels` implements with SIMD code and its own threads
//! (`mlinfra_kernels::cpu::SimdKernels`); [`ReferenceKernels`] is the portable
//! implementation here: weights dequantized to f32, serial loops. It is the oracle the fast
//! kernels are tested against, and the runner itself is tested against [`LlamaRunner`].
//!
//! Why a second runner: burn's CPU backend dequantizes quantized tensors whole before a
//! matmul (and keeps one byte per 4-bit value), so a decode step reads ~5x the bytes of the
//! GGUF blocks (docs/BENCHMARKS.md, run S3). Decode is memory-bound; the blocks must stay
//! blocks.
//!
//! [`LlamaRunner`]: crate::runner::LlamaRunner

mod attention;
mod llama;

pub use attention::{AttentionStep, KvSlice, exp_slice};
pub use llama::{HostLlamaRunner, KvPrecision};

use std::borrow::Cow;

use mlinfra_data::tensor::{GgmlType, dequantize_into};

use crate::kv::BlockCopy;
use crate::{Error, Result};

/// A weight matrix as the GGUF stores it: `rows × cols` (output × input features), row after
/// row, each row whole blocks of `ggml_type`.
#[derive(Debug, Clone)]
pub struct WeightBlocks<'a> {
    /// Where it comes from (tensor names), for errors.
    pub name: Cow<'a, str>,
    /// The block format.
    pub ggml_type: GgmlType,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `rows` rows of `cols / block_size` blocks.
    pub bytes: Cow<'a, [u8]>,
}

impl WeightBlocks<'_> {
    /// Bytes of one row.
    ///
    /// # Errors
    ///
    /// [`Error::Weights`] when `cols` is not whole blocks or `bytes` is not `rows` rows.
    pub fn row_bytes(&self) -> Result<usize> {
        let ty = self.ggml_type;
        let fail = |reason: String| {
            Err(Error::Weights {
                tensor: self.name.clone().into(),
                reason: reason.into(),
            })
        };
        if self.rows == 0 || self.cols == 0 || !self.cols.is_multiple_of(ty.block_size()) {
            return fail(format!(
                "{}×{} is not whole {}-value {} blocks per row",
                self.rows,
                self.cols,
                ty.block_size(),
                ty.name()
            ));
        }
        let row_bytes = self.cols / ty.block_size() * ty.type_size();
        if self.rows.checked_mul(row_bytes) != Some(self.bytes.len()) {
            return fail(format!(
                "{} bytes are not {} rows of {row_bytes}",
                self.bytes.len(),
                self.rows
            ));
        }
        Ok(row_bytes)
    }
}

/// A linear layer `y = x · Wᵀ` over host memory, in whatever form a [`HostKernels`] keeps
/// its weights.
pub trait HostLinear: Send + Sync {
    /// Output features.
    fn rows(&self) -> usize;

    /// Input features.
    fn cols(&self) -> usize;

    /// `out[t · rows + r] = Σ_c W[r, c] · x[t · cols + c]` for every token `t` of the
    /// row-major `x`. Contract: a token's outputs do not depend on the other tokens of the
    /// call (serve's batch invariance).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] when `x` is not whole rows of `cols` or `out` is not
    /// `tokens × rows`.
    fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()>;

    /// Row `row` of `W` in f32 (embedding lookups).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBatch`] for a row past the matrix or an `out` of another length than
    /// `cols`.
    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()>;

    /// Bytes of weights it holds.
    fn resident_bytes(&self) -> usize;
}

/// The compute a [`HostLlamaRunner`] delegates: its linear layers and its threads.
pub trait HostKernels: Send + Sync {
    /// What runs, for logs (instruction set, threads).
    fn describe(&self) -> String;

    /// A linear layer whose output rows are `parts`' rows, stacked in order (Q, K and V as
    /// one matmul; gate and up as another). Every part has the same `cols`.
    ///
    /// # Errors
    ///
    /// [`Error::Weights`] when a part's bytes do not fit its shape or its type cannot be
    /// used.
    fn linear(&self, parts: &[WeightBlocks<'_>]) -> Result<Box<dyn HostLinear>>;

    /// One layer's attention: piece `i` of `out` (`head_dim` values) is
    /// [`AttentionStep::attend_reference`]'s result for piece `i`, up to rounding. Defaults
    /// to exactly that, spread over [`HostKernels::for_each_chunk`].
    ///
    /// Contract (serve's batch invariance): a piece's result depends on its own query and
    /// sequence only, never on the other pieces of the step.
    ///
    /// # Errors
    ///
    /// [`Error::Kernels`] when the kernels' device fails (host kernels do not fail).
    fn attention(&self, step: &AttentionStep<'_>, out: &mut [f32]) -> Result<()> {
        self.for_each_chunk(out, step.head_dim, &|piece, out| {
            step.attend_reference(piece, out);
        });
        Ok(())
    }

    /// Every layer's cache blocks were copied (`copies`, in order: copy-on-write of shared
    /// blocks) before this step's attention. Kernels that keep their own copy of the cache
    /// (in device memory) follow; the default does nothing, the host cache being the one
    /// [`attention`](Self::attention) reads.
    fn kv_blocks_copied(&self, copies: &[BlockCopy]) {
        let _ = copies;
    }

    /// Calls `task(i, chunk)` for each `chunk`-long piece of `out` (the last may be shorter),
    /// on as many threads as these kernels use.
    fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk: usize,
        task: &(dyn Fn(usize, &mut [f32]) + Sync),
    );
}

/// The portable kernels: every weight dequantized to f32 at load, serial loops, `f32` sums
/// in column order. The oracle for faster [`HostKernels`], not a serving path: it holds 4
/// bytes per weight.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceKernels;

impl HostKernels for ReferenceKernels {
    fn describe(&self) -> String {
        "reference (f32, one thread)".into()
    }

    fn linear(&self, parts: &[WeightBlocks<'_>]) -> Result<Box<dyn HostLinear>> {
        let cols = stacked_cols(parts)?;
        let mut values = Vec::new();
        for part in parts {
            part.row_bytes()?;
            let start = values.len();
            values.resize(start + part.rows * part.cols, 0.0);
            if !dequantize_into(part.ggml_type, &part.bytes, &mut values[start..]) {
                return Err(Error::Weights {
                    tensor: part.name.clone().into(),
                    reason: format!("{} weights cannot be dequantized", part.ggml_type.name())
                        .into(),
                });
            }
        }
        Ok(Box::new(DenseLinear {
            rows: values.len() / cols,
            cols,
            values,
        }))
    }

    fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk: usize,
        task: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        for (index, piece) in out.chunks_mut(chunk.max(1)).enumerate() {
            task(index, piece);
        }
    }
}

/// The common `cols` of stacked parts.
///
/// # Errors
///
/// [`Error::Weights`] for no parts or parts of different widths.
pub fn stacked_cols(parts: &[WeightBlocks<'_>]) -> Result<usize> {
    let Some(first) = parts.first() else {
        return Err(Error::Weights {
            tensor: "(none)".into(),
            reason: "a linear layer of no weights".into(),
        });
    };
    if let Some(other) = parts.iter().find(|part| part.cols != first.cols) {
        return Err(Error::Weights {
            tensor: other.name.clone().into(),
            reason: format!(
                "{} input features, stacked with {}'s {}",
                other.cols, first.name, first.cols
            )
            .into(),
        });
    }
    Ok(first.cols)
}

/// Checks a [`HostLinear::forward`] call's shapes; returns the token count.
///
/// # Errors
///
/// [`Error::InvalidBatch`] as [`HostLinear::forward`] documents.
pub fn check_forward(rows: usize, cols: usize, x: &[f32], out: &[f32]) -> Result<usize> {
    if !x.len().is_multiple_of(cols) || out.len() != x.len() / cols * rows {
        return Err(Error::InvalidBatch {
            reason: format!(
                "a {rows}×{cols} linear layer got {} inputs and {} outputs",
                x.len(),
                out.len()
            )
            .into(),
        });
    }
    Ok(x.len() / cols)
}

/// [`ReferenceKernels`]' linear layer.
struct DenseLinear {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

impl HostLinear for DenseLinear {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        check_forward(self.rows, self.cols, x, out)?;
        for (xt, yt) in x
            .chunks_exact(self.cols)
            .zip(out.chunks_exact_mut(self.rows))
        {
            for (w, y) in self.values.chunks_exact(self.cols).zip(yt.iter_mut()) {
                *y = w.iter().zip(xt).map(|(a, b)| a * b).sum();
            }
        }
        Ok(())
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        if row >= self.rows || out.len() != self.cols {
            return Err(Error::InvalidBatch {
                reason: format!("row {row} of a {}-row matrix into {}", self.rows, out.len())
                    .into(),
            });
        }
        out.copy_from_slice(&self.values[row * self.cols..(row + 1) * self.cols]);
        Ok(())
    }

    fn resident_bytes(&self) -> usize {
        self.values.len() * size_of::<f32>()
    }
}
