//! [`Source`]: what a loader reads samples from.
//!
//! A source is a table of samples addressed by id (`0..num_samples`), identified by a
//! fingerprint that the epoch plan is keyed on. The loader asks it for the rows of one batch at
//! a time, from several worker threads at once.
//!
//! Implemented for [`IpcCache`] (the fast path: rows are located in the memory-mapped batches
//! and gathered once, by the collate step), for [`Dataset`] (Parquet, local or remote: `take`
//! reads and decodes only the pages that hold the rows, row groups in parallel on rayon) and
//! for `Arc<S>`. An `IpcCache` keeps its source's fingerprint, so a cache and the Parquet files
//! it was built from yield the same order.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use mlinfra_data::{Dataset, IpcCache, RowRefs};

use crate::Result;

/// Counters a source keeps about its own IO; all zero for a source that does none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceCounters {
    /// Bytes fetched from storage (for a memory-mapped cache: none, the page cache serves it).
    pub bytes_read: u64,
    /// Reads served by a local cache of remote data.
    pub cache_hits: u64,
    /// Entries evicted from that cache to stay within its budget.
    pub cache_evictions: u64,
}

/// A table of samples the loader reads by id; see the [module docs](self).
pub trait Source: Send + Sync + 'static {
    /// Samples in the source; ids are `0..num_samples()`.
    fn num_samples(&self) -> u64;

    /// The identity of the data, which keys the epoch plan: equal fingerprints must mean
    /// equal samples in equal order. May be costly on first call (hashing); called once per
    /// loader.
    ///
    /// # Errors
    ///
    /// Whatever computing it can fail with (reading the files to hash them).
    fn fingerprint(&self) -> Result<String>;

    /// The columns of every batch.
    fn schema(&self) -> SchemaRef;

    /// The rows with these ids, in this order (ids may repeat).
    ///
    /// # Errors
    ///
    /// An id out of range, or a failed read or decode.
    fn rows(&self, ids: &[u64]) -> Result<RowRefs>;

    /// [`Source::rows`] in epoch `epoch`: what the loader calls. Sources whose ids mean other
    /// rows in other epochs (a [`Mixture`](crate::Mixture) drawing a fresh subset of a
    /// down-weighted part each epoch) override it; the default ignores the epoch.
    ///
    /// # Errors
    ///
    /// As [`Source::rows`].
    fn rows_in_epoch(&self, epoch: u64, ids: &[u64]) -> Result<RowRefs> {
        let _ = epoch;
        self.rows(ids)
    }

    /// A hint that the loader will ask for these ids (of epoch `epoch`) soon: a source that
    /// fetches remote data starts fetching them ([`Streaming`](crate::Streaming)). Must not
    /// block. The default does nothing.
    fn prefetch(&self, epoch: u64, ids: &[u64]) {
        let _ = (epoch, ids);
    }

    /// Whether [`Source::prefetch`] does anything: the loader computes the hinted ids only for
    /// sources that want them. False by default.
    fn wants_prefetch(&self) -> bool {
        false
    }

    /// IO counters so far ([`SourceCounters`]); zeros by default.
    fn counters(&self) -> SourceCounters {
        SourceCounters::default()
    }
}

impl Source for IpcCache {
    fn num_samples(&self) -> u64 {
        self.num_rows()
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(self.source_fingerprint().to_owned())
    }

    fn schema(&self) -> SchemaRef {
        IpcCache::schema(self).clone()
    }

    fn rows(&self, ids: &[u64]) -> Result<RowRefs> {
        Ok(self.locate(ids)?)
    }
}

impl Source for Dataset {
    fn num_samples(&self) -> u64 {
        self.num_rows()
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(Dataset::fingerprint(self)?.to_owned())
    }

    fn schema(&self) -> SchemaRef {
        Dataset::schema(self).clone()
    }

    fn rows(&self, ids: &[u64]) -> Result<RowRefs> {
        Ok(RowRefs::from_batch(self.take(ids)?))
    }

    fn counters(&self) -> SourceCounters {
        SourceCounters {
            bytes_read: self.bytes_read(),
            ..SourceCounters::default()
        }
    }
}

impl<S: Source + ?Sized> Source for Arc<S> {
    fn num_samples(&self) -> u64 {
        (**self).num_samples()
    }

    fn fingerprint(&self) -> Result<String> {
        (**self).fingerprint()
    }

    fn schema(&self) -> SchemaRef {
        (**self).schema()
    }

    fn rows(&self, ids: &[u64]) -> Result<RowRefs> {
        (**self).rows(ids)
    }

    fn rows_in_epoch(&self, epoch: u64, ids: &[u64]) -> Result<RowRefs> {
        (**self).rows_in_epoch(epoch, ids)
    }

    fn prefetch(&self, epoch: u64, ids: &[u64]) {
        (**self).prefetch(epoch, ids);
    }

    fn wants_prefetch(&self) -> bool {
        (**self).wants_prefetch()
    }

    fn counters(&self) -> SourceCounters {
        (**self).counters()
    }
}
