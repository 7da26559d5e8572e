//! Collate: turning the rows of one batch into what the training step consumes.
//!
//! A [`Collate`] runs on the loader's worker threads, once per batch, and gets the batch's rows
//! where they already are ([`RowRefs`]: views of memory-mapped batches) plus the loader's
//! [`BufferPool`]. Built in:
//!
//! - [`Tensors`] (the default): fixed-width columns as burn [`TensorData`](burn::tensor::TensorData)
//!   in a [`TensorBatch`], gathered straight from the source into recycled buffers (one copy),
//!   or handed over with no copy at all when the rows are contiguous in a memory-mapped cache;
//!   variable-length token columns padded with an attention mask ([`Pad`]) or packed several
//!   sequences to a row ([`Pack`]).
//! - [`ArrowRows`]: an Arrow `RecordBatch`, for code that wants Arrow.
//! - [`from_fn`]: any closure over the rows, with the user's own error type.

mod pack;
mod pad;
mod tensors;

use arrow::array::{Array, RecordBatch};
use mlinfra_data::RowRefs;

pub use pack::Pack;
pub use pad::{Pad, PadSide};
pub use tensors::{TensorBatch, Tensors, TokenCount};

use crate::buffers::BufferPool;
use crate::{Error, Result};

/// Turns the rows of one batch into the loader's output; see the [module docs](self).
///
/// Called on worker threads, concurrently for different batches.
pub trait Collate: Send + Sync + 'static {
    /// What each batch becomes.
    type Output: Send + 'static;

    /// Collates `rows` (the batch's samples, in order), taking output buffers from `pool`.
    ///
    /// # Errors
    ///
    /// A column that cannot be collated (the message names it); the loader reports it from
    /// `next()` with the batch it happened in.
    fn collate(&self, rows: &RowRefs, pool: &BufferPool) -> Result<Self::Output>;

    /// Bytes `output` holds, for the loader's byte budget. The default, 0, leaves only the
    /// batch-count bound (`prefetch`) in force.
    fn output_bytes(&self, output: &Self::Output) -> usize {
        let _ = output;
        0
    }

    /// Real and total token positions in `output`, for [`LoaderStats::tokens`] and
    /// [`LoaderStats::token_slots`]. The default, zero, is for outputs that are not token
    /// sequences.
    ///
    /// [`LoaderStats::tokens`]: crate::LoaderStats::tokens
    /// [`LoaderStats::token_slots`]: crate::LoaderStats::token_slots
    fn token_count(&self, output: &Self::Output) -> TokenCount {
        let _ = output;
        TokenCount::default()
    }

    /// Whether [`Collate::stage`] moves outputs into transfer memory. The default, false,
    /// makes the loader skip staging and report [`Staging::pinned`](crate::Staging) false.
    fn stages(&self) -> bool {
        false
    }

    /// Moves `output`'s buffers into the memory `device` copies from fastest (page-locked
    /// host memory on CUDA), so that building tensors from them on the training thread
    /// starts an asynchronous host-to-device copy instead of a blocking one. Runs on a
    /// worker thread, after [`Collate::collate`], only when the loader's device is an
    /// accelerator and [`Collate::stages`] is true. Returns the bytes of `output` that are
    /// now pinned (counted in [`LoaderStats::pinned_bytes`](crate::LoaderStats)).
    ///
    /// Costs one host copy of the batch, on the worker instead of the training thread:
    /// PyTorch's `pin_memory=True`.
    fn stage(&self, output: &mut Self::Output, device: &burn::tensor::Device) -> u64 {
        let _ = (output, device);
        0
    }
}

/// Collates into an Arrow `RecordBatch` (a slice when the rows are contiguous, else one copy).
#[derive(Debug, Clone, Copy, Default)]
pub struct ArrowRows;

impl Collate for ArrowRows {
    type Output = RecordBatch;

    fn collate(&self, rows: &RowRefs, _pool: &BufferPool) -> Result<RecordBatch> {
        rows.interleave().map_err(|e| Error::Collate {
            reason: format!("cannot gather the batch's rows: {e}").into(),
        })
    }

    fn output_bytes(&self, output: &RecordBatch) -> usize {
        // The slice's own bytes: a slice of a memory-mapped batch shares the whole mapping,
        // which `get_array_memory_size` would count.
        output
            .columns()
            .iter()
            .map(|column| column.to_data().get_slice_memory_size().unwrap_or(0))
            .sum()
    }
}

/// A [`Collate`] from a closure; its errors become [`Error::UserCollate`].
///
/// ```
/// use mlinfra_loader::collate;
///
/// // The number of rows of each batch, say.
/// let rows = collate::from_fn(|rows| Ok::<_, std::io::Error>(rows.len()));
/// # let _ = rows;
/// ```
pub fn from_fn<T, E, F>(f: F) -> FromFn<F>
where
    F: Fn(&RowRefs) -> std::result::Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    FromFn(f)
}

/// The [`Collate`] made by [`from_fn`].
#[derive(Debug, Clone, Copy)]
pub struct FromFn<F>(F);

impl<T, E, F> Collate for FromFn<F>
where
    F: Fn(&RowRefs) -> std::result::Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = T;

    fn collate(&self, rows: &RowRefs, _pool: &BufferPool) -> Result<T> {
        (self.0)(rows).map_err(|e| Error::UserCollate(e.into()))
    }
}
