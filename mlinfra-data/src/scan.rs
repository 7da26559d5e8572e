//! Streaming scans: [`Dataset::scan`].
//!
//! A scan walks the dataset's row groups in order. Up to `readahead` row groups are decoded
//! ahead of the consumer, in parallel on a decode pool of the crate's own (one thread per core;
//! never the caller's rayon pool, which could deadlock), and delivered in dataset order.
//!
//! # Memory bound
//!
//! At most `readahead + 1` decoded row groups are alive at once (the window ahead, plus the one
//! being handed out), whatever the dataset's size. Batches never span row groups: a batch has at
//! most `batch_size` rows and may have fewer at the end of a row group.
//!
//! # Batch size
//!
//! Unless set, the batch size is chosen per row group from its footer: about
//! [`DEFAULT_BATCH_BYTES`] of decoded projected columns, at most [`DEFAULT_BATCH_SIZE`] rows. A
//! fixed row count would make a batch of 4,096-dimension `f32` embeddings 128 MiB; sized in
//! bytes, a batch stays near a core's L2 cache whatever the row width.
//!
//! # Failure
//!
//! The first error ends the scan: it is returned once, then the iterator yields `None`. A panic
//! inside a decoder is contained and returned as [`Error::DecoderPanic`]; the consumer never
//! hangs waiting for a worker that died.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow::array::{ArrayRef, RecordBatch};
use crossbeam_channel::Receiver;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter};
use parquet::arrow::push_decoder::ParquetPushDecoderBuilder;

use crate::dataset::Dataset;
use crate::direct::{self, RowGroupRef};
use crate::error::contain_panics;
use crate::materialize::{self, Tally};
use crate::predicate::{Bound, Predicate};
use crate::storage::ShardReader;
use crate::take::check_row_count;
use crate::{Error, Result};

/// The most rows in a batch of a scan when the batch size is left to the scan: arrow-rs's and
/// pyarrow's default batch size.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// Decoded bytes a batch aims at when the batch size is left to the scan: 512 KiB, so a batch
/// being decoded stays in a core's L2 cache. Wide rows (embeddings) get fewer rows per batch,
/// narrow ones up to [`DEFAULT_BATCH_SIZE`].
pub const DEFAULT_BATCH_BYTES: u64 = 512 << 10;

/// Default row groups decoded ahead of the consumer.
pub const DEFAULT_READAHEAD: usize = 4;

/// Options for a [`Scan`]; from [`Dataset::scan`].
#[derive(Debug, Clone)]
#[must_use = "a scan builder does nothing until `build` is called"]
pub struct ScanBuilder {
    dataset: Dataset,
    /// `None`: chosen per row group (see the [module docs](self#batch-size)).
    batch_size: Option<usize>,
    readahead: usize,
    filter: Option<Arc<Bound>>,
}

impl ScanBuilder {
    /// Rows per batch (at least 1).
    ///
    /// Defaults to about [`DEFAULT_BATCH_BYTES`] per batch, at most [`DEFAULT_BATCH_SIZE`]
    /// rows (see the [module docs](self#batch-size)).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size.max(1));
        self
    }

    /// Row groups decoded ahead of the consumer (at least 1): more overlaps more decoding with
    /// consumption and uses more threads, at the cost of memory (see the module docs).
    ///
    /// Defaults to [`DEFAULT_READAHEAD`].
    pub fn with_readahead(mut self, row_groups: usize) -> Self {
        self.readahead = row_groups.max(1);
        self
    }

    /// Only rows matching `predicate`; row groups and pages that cannot match are skipped
    /// unread (see [`predicate`](crate::predicate)). The predicate may use columns outside
    /// the projection.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchColumn`] or [`Error::InvalidPredicate`] when the predicate does not fit
    /// the schema; checked now, before anything is read.
    pub fn with_filter(mut self, predicate: Predicate) -> Result<Self> {
        let bound = predicate.bind(self.dataset.file_schema())?;
        self.filter = Some(Arc::new(bound));
        Ok(self)
    }

    /// Starts the scan: the first `readahead` row groups begin decoding now.
    pub fn build(self) -> Scan {
        let filter = self.filter.clone();
        let tasks = self
            .dataset
            .shards()
            .iter()
            .enumerate()
            .flat_map(|(shard, s)| {
                let groups = match &filter {
                    Some(bound) => {
                        bound.row_groups_to_read(s.metadata().metadata(), s.metadata().schema())
                    }
                    None => (0..s.num_row_groups()).collect(),
                };
                groups.into_iter().map(move |group| (shard, group))
            })
            .collect();
        let mut scan = Scan {
            dataset: self.dataset,
            batch_size: self.batch_size,
            readahead: self.readahead,
            filter: self.filter,
            tasks,
            in_flight: VecDeque::new(),
            current: Vec::new().into_iter(),
            finished: false,
        };
        scan.fill_window();
        scan
    }
}

/// An in-order iterator over a dataset's batches; see the [module docs](self).
#[derive(Debug)]
pub struct Scan {
    dataset: Dataset,
    batch_size: Option<usize>,
    readahead: usize,
    filter: Option<Arc<Bound>>,
    /// Row groups not yet started, as (shard, row group), in dataset order.
    tasks: VecDeque<(usize, usize)>,
    /// Row groups started, oldest first: each receiver yields that row group's batches once.
    in_flight: VecDeque<Receiver<Result<Vec<RecordBatch>>>>,
    /// Batches of the row group being handed out.
    current: std::vec::IntoIter<RecordBatch>,
    finished: bool,
}

impl Dataset {
    /// A streaming scan over every row, in order; configure it, then `build`.
    ///
    /// ```no_run
    /// # use mlinfra_data::Dataset;
    /// let dataset = Dataset::open("data/")?;
    /// let mut rows = 0;
    /// for batch in dataset.scan().with_batch_size(4096).build() {
    ///     rows += batch?.num_rows();
    /// }
    /// assert_eq!(rows as u64, dataset.num_rows());
    /// # Ok::<(), mlinfra_data::Error>(())
    /// ```
    pub fn scan(&self) -> ScanBuilder {
        ScanBuilder {
            dataset: self.clone(),
            batch_size: None,
            readahead: DEFAULT_READAHEAD,
            filter: None,
        }
    }

    /// Decodes one row group of one shard, whole. Never panics: it runs on a rayon worker,
    /// where an escaping panic would abort the process.
    fn read_row_group(
        &self,
        shard_index: usize,
        group: usize,
        batch_size: Option<usize>,
        filter: Option<&Arc<Bound>>,
    ) -> Result<Vec<RecordBatch>> {
        let shard = &self.shards()[shard_index];
        let path = shard.path();
        contain_panics(path, || {
            self.check_decode_limit(shard, group)?;
            let reader = self.shard_reader(shard)?;
            let batch_size = batch_size.unwrap_or_else(|| {
                let bytes = self.projected_uncompressed_bytes(shard, group);
                let rows = shard.rows_in_group(group).max(1);
                let row_bytes = (bytes / rows).max(1);
                (DEFAULT_BATCH_BYTES / row_bytes).clamp(1, DEFAULT_BATCH_SIZE as u64) as usize
            });
            // Never a batch that could pass the decode budget, whatever its rows reference.
            let row_bound = materialize::row_bound(self, shard_index, group, &reader)?;
            let batch_size = materialize::batch_rows(batch_size, row_bound);
            let decoded = AtomicU64::new(0);
            let mut tally = Tally::new(path, self.max_decoded_bytes(), &decoded);
            if filter.is_none() {
                let target = RowGroupRef {
                    shard,
                    shard_index,
                    group,
                };
                if let Some(batches) = self.read_direct(target, batch_size, &reader, &mut tally)? {
                    return Ok(batches);
                }
            }
            let mut builder =
                ParquetPushDecoderBuilder::new_with_metadata(shard.metadata().clone())
                    .with_projection(self.mask(shard))
                    .with_row_groups(vec![group])
                    .with_batch_size(batch_size);
            if let Some(bound) = filter {
                let metadata = shard.metadata().metadata();
                let schema = shard.metadata().schema();
                if let Some(selection) = bound.page_selection(metadata, schema, group) {
                    if !selection.selects_any() {
                        return Ok(Vec::new()); // no page can match: nothing read at all
                    }
                    // The predicate cache (decode the filter column once, reuse it for the
                    // output) widens the pages it fetches to whole batches, which would undo
                    // the page pruning; when pages were pruned, decoding twice is cheaper.
                    builder = builder
                        .with_row_selection(selection)
                        .with_max_predicate_cache_size(0);
                }
                builder = builder.with_row_filter(self.row_filter(shard, bound));
            }
            let decoder = builder.build().map_err(|e| Error::parquet(path, e))?;
            let batches = reader
                .decode(decoder, &mut tally)?
                .into_iter()
                .map(|batch| self.arrange(batch, path))
                .collect::<Result<Vec<_>>>()?;
            // A filter makes the count data-dependent; without one it must match the footer.
            if filter.is_none() {
                check_row_count(path, shard.rows_in_group(group), &batches)?;
            }
            Ok(batches)
        })
    }

    /// A whole row group with its fixed-width columns read straight out of their pages (see
    /// `direct.rs`) and the rest decoded; `None` when no column can be read directly.
    fn read_direct(
        &self,
        target: RowGroupRef<'_>,
        batch_size: usize,
        reader: &ShardReader<'_>,
        tally: &mut Tally<'_>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let path = target.shard.path();
        let roots = self.roots();
        let checked = &self.shared().checked_pages;
        let direct = direct::scan_columns(target, batch_size, &roots, reader, checked)?;
        if direct.is_empty() {
            return Ok(None);
        }
        let rows = target.shard.rows_in_group(target.group);
        let batch_count = rows.div_ceil(batch_size.max(1) as u64) as usize;
        let mut per_batch: Vec<Vec<Option<ArrayRef>>> = vec![vec![None; roots.len()]; batch_count];
        for (position, arrays) in direct {
            for (slots, array) in per_batch.iter_mut().zip(arrays) {
                slots[position] = Some(array);
            }
        }
        let left = direct::roots_left(&roots, per_batch.first().map_or(&[], |b| b.as_slice()));
        let decoded = if left.is_empty() || batch_count == 0 {
            Vec::new()
        } else {
            let mask =
                ProjectionMask::roots(target.shard.metadata().parquet_schema(), left.clone());
            let decoder =
                ParquetPushDecoderBuilder::new_with_metadata(target.shard.metadata().clone())
                    .with_projection(mask)
                    .with_row_groups(vec![target.group])
                    .with_batch_size(batch_size)
                    .build()
                    .map_err(|e| Error::parquet(path, e))?;
            let decoded = reader.decode(decoder, tally)?;
            check_row_count(path, rows, &decoded)?;
            // Both sides cut the row group at the same row counts.
            if decoded.len() != batch_count {
                return Err(Error::RowCountMismatch {
                    path: path.into(),
                    expected: batch_count as u64,
                    decoded: decoded.len() as u64,
                });
            }
            decoded
        };
        per_batch
            .into_iter()
            .enumerate()
            .map(|(i, columns)| {
                direct::assemble(self.schema(), &roots, columns, &left, decoded.get(i))
                    .map_err(|e| Error::arrow(path, e))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The exact row filter: the predicate's columns are decoded first, the projection only
    /// for rows that pass.
    fn row_filter(&self, shard: &crate::Shard, bound: &Arc<Bound>) -> RowFilter {
        let mut names = Vec::new();
        bound.columns(&mut names);
        let schema = shard.metadata().schema();
        let roots = names.iter().filter_map(|name| schema.index_of(name).ok());
        let mask = ProjectionMask::roots(shard.metadata().parquet_schema(), roots);
        let bound = Arc::clone(bound);
        RowFilter::new(vec![Box::new(ArrowPredicateFn::new(mask, move |batch| {
            bound.evaluate(&batch)
        }))])
    }
}

impl Scan {
    /// Starts row groups until `readahead` are in flight or none are left.
    fn fill_window(&mut self) {
        while self.in_flight.len() < self.readahead {
            let Some((shard, group)) = self.tasks.pop_front() else {
                break;
            };
            let (sender, receiver) = crossbeam_channel::bounded(1);
            let dataset = self.dataset.clone();
            let batch_size = self.batch_size;
            let filter = self.filter.clone();
            crate::pool::spawn(move || {
                // `read_row_group` contains panics itself; a send error only means the scan was
                // dropped, and the result is not wanted.
                let _ =
                    sender.send(dataset.read_row_group(shard, group, batch_size, filter.as_ref()));
            });
            self.in_flight.push_back(receiver);
        }
    }
}

impl Iterator for Scan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.current.next() {
                return Some(Ok(batch));
            }
            if self.finished {
                return None;
            }
            let Some(receiver) = self.in_flight.pop_front() else {
                self.finished = true;
                return None;
            };
            self.fill_window();
            // A disconnected channel means the worker ended without sending; `read_row_group`
            // contains panics, so this is only reachable through a bug here. Still an error,
            // never a hang.
            let outcome = receiver.recv().unwrap_or_else(|_| {
                Err(Error::DecoderPanic {
                    path: self.dataset.shards()[0].path().into(),
                    message: "scan worker exited without a result".into(),
                })
            });
            match outcome {
                Ok(batches) => self.current = batches.into_iter(),
                Err(error) => {
                    self.finished = true;
                    self.in_flight.clear();
                    self.tasks.clear();
                    return Some(Err(error));
                }
            }
        }
    }
}

impl std::iter::FusedIterator for Scan {}
