//! Bounding what a decode materializes, not only what its pages hold.
//!
//! # Why
//!
//! The decode cap ([`DatasetBuilder::with_max_decoded_bytes`]) was first checked against the
//! footer's uncompressed page sizes ([`Error::DecodeLimit`]). That misses
//! amplification, where few bytes of pages stand for many bytes of values: a dictionary page
//! holding one 1 MB string, referenced by 16,000 rows, is a file of about a kilobyte whose
//! decode gives every row its own copy, 16 GB in all; a run of dictionary indices costs a few
//! bytes for any number of rows. So the cap also bounds what decoding makes, measured in the
//! decoded arrays: value lengths times the rows that reference them.
//!
//! # How
//!
//! 1. **A worst case per row**: each projected leaf column's widest value for
//!    one row. Fixed-width values are their width; a byte array is 4 bytes of offset plus,
//!    when its column chunk has a dictionary page, the longest value in that dictionary (the
//!    page is read and its values' lengths taken; remembered per column chunk, so each is read
//!    once per dataset).
//! 2. **Batches no larger than a budget**: decoders get at most
//!    [`DECODE_BATCH_BYTES`]` / worst case` rows per batch (at least one), so no single batch
//!    can pass the budget however many rows share a value.
//! 3. **Totals**: what each decoded batch holds is added up per decode (a row
//!    group of a scan, the rows of a `take`); past the cap, [`Error::MaterializeLimit`] names
//!    the file and the column holding the most. A `take` counts its reordered output too
//!    (duplicate indices copy rows), and an [`IpcCache`](crate::IpcCache) build its total.
//!
//! # Limits
//!
//! A repeated column's row holds any number of values, which a page's levels can encode in a
//! few bytes; its worst case counts one value per row, and the totals stop it after the batch
//! that crosses the cap. Plain-encoded byte arrays need no per-row term: their values are in
//! the pages, which the footer check counts. Encrypted dictionary pages cannot be read here
//! without the decoder's keys; they count no dictionary width.
//!
//! # Cost
//!
//! One read of each byte-array column chunk's dictionary page per dataset (a slice of the
//! memory map for local files), a pass over its value lengths, and a size sum per decoded
//! batch. On files without long dictionary values, batch sizes are unchanged.
//!
//! [`DatasetBuilder::with_max_decoded_bytes`]: crate::DatasetBuilder::with_max_decoded_bytes

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, RecordBatch};
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::serialized_reader::SerializedPageReader;

use crate::dataset::Dataset;
use crate::direct::Fetched;
use crate::storage::ShardReader;
use crate::{Error, Result};

/// The most bytes one decoded batch may hold in the worst case: 64 MiB. Rows per batch are cut
/// to fit (see the [module docs](self)); the cap applies to the totals.
pub const DECODE_BATCH_BYTES: u64 = 64 << 20;

/// Longest dictionary value of each byte-array column chunk read so far, by
/// `(shard index, row group, leaf column)`: shared by every view of a dataset.
#[derive(Debug, Default)]
pub(crate) struct DictionaryWidths(Mutex<HashMap<(usize, usize, usize), u64>>);

impl DictionaryWidths {
    fn get(&self, key: (usize, usize, usize)) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied()
    }

    fn insert(&self, key: (usize, usize, usize), width: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, width);
    }
}

/// The most bytes one row of `dataset`'s projected columns can decode to in `group` of shard
/// `shard_index` (see the [module docs](self)), at least 1.
///
/// # Errors
///
/// Read errors of the dictionary pages' bytes (a page that cannot be parsed is left to the
/// decoder, which reports it).
pub(crate) fn row_bound(
    dataset: &Dataset,
    shard_index: usize,
    group: usize,
    reader: &ShardReader<'_>,
) -> Result<u64> {
    let shard = &dataset.shards()[shard_index];
    let metadata = shard.metadata().metadata();
    let schema = metadata.file_metadata().schema_descr();
    let roots = dataset.roots();
    let mut bound = 0u64;
    for leaf in 0..schema.num_columns() {
        let root = schema.get_column_root_idx(leaf);
        if !roots.iter().any(|&(r, _)| r == root) {
            continue;
        }
        let descriptor = schema.column(leaf);
        let chunk = metadata.row_group(group).column(leaf);
        let width = match descriptor.physical_type() {
            PhysicalType::BOOLEAN => 1,
            PhysicalType::INT32 | PhysicalType::FLOAT => 4,
            PhysicalType::INT64 | PhysicalType::DOUBLE => 8,
            PhysicalType::INT96 => 12,
            PhysicalType::FIXED_LEN_BYTE_ARRAY => {
                u64::try_from(descriptor.type_length()).unwrap_or(0)
            }
            PhysicalType::BYTE_ARRAY => {
                let key = (shard_index, group, leaf);
                let longest = match dataset.shared().dictionary_widths.get(key) {
                    Some(longest) => longest,
                    None => {
                        let longest = longest_dictionary_value(chunk, reader)?;
                        dataset.shared().dictionary_widths.insert(key, longest);
                        longest
                    }
                };
                4 + longest
            }
        };
        bound = bound.saturating_add(width);
    }
    Ok(bound.max(1))
}

/// Rows per decoded batch: `wanted`, cut so that `rows × row_bound` stays within
/// [`DECODE_BATCH_BYTES`]; at least 1.
pub(crate) fn batch_rows(wanted: usize, row_bound: u64) -> usize {
    let fits = usize::try_from(DECODE_BATCH_BYTES / row_bound.max(1)).unwrap_or(usize::MAX);
    wanted.min(fits).max(1)
}

/// The longest value of a byte-array column chunk's dictionary page; 0 without one (or when it
/// cannot be read here: see the [module docs](self#limits)).
fn longest_dictionary_value(chunk: &ColumnChunkMetaData, reader: &ShardReader<'_>) -> Result<u64> {
    let (start, len) = chunk.byte_range();
    let end = start.saturating_add(len);
    let data_page = u64::try_from(chunk.data_page_offset()).unwrap_or(0);
    let declared = chunk
        .dictionary_page_offset()
        .and_then(|offset| u64::try_from(offset).ok());
    let range = match declared {
        // The dictionary page, before the data pages (0 is what some writers put for "none").
        Some(offset) if offset > 0 && offset < data_page && data_page <= end => offset..data_page,
        // No usable offset, but dictionary-encoded: the page reader finds it first in the
        // chunk, so the chunk is read.
        _ if chunk
            .encodings()
            .any(|e| matches!(e, Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY)) =>
        {
            start..end
        }
        _ => return Ok(0),
    };
    let (ranges, bytes) = reader.fetch(std::slice::from_ref(&range))?;
    let fetched = Arc::new(Fetched::new(reader.len(), ranges, bytes));
    let values = usize::try_from(chunk.num_values()).unwrap_or(0);
    let Ok(mut pages) = SerializedPageReader::new(fetched, chunk, values, None) else {
        return Ok(0);
    };
    Ok(match pages.get_next_page() {
        Ok(Some(Page::DictionaryPage {
            buf, num_values, ..
        })) => longest_plain_byte_array(&buf, num_values),
        _ => 0,
    })
}

/// The longest of `count` PLAIN byte-array values (a little-endian `u32` length, then the
/// bytes) in `page`. A page that ends early bounds every value by its own length.
fn longest_plain_byte_array(page: &[u8], count: u32) -> u64 {
    let mut rest = page;
    let mut longest = 0u64;
    for _ in 0..count {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return page.len() as u64;
        };
        let len = u32::from_le_bytes(*len) as usize;
        let Some(tail) = tail.get(len..) else {
            return page.len() as u64;
        };
        longest = longest.max(len as u64);
        rest = tail;
    }
    longest
}

/// What a decode has materialized so far, against the cap: see the [module docs](self). The
/// count lives in an atomic the caller owns, so that decodes running in parallel for one
/// operation (the row groups of a `take`) share one cap.
#[derive(Debug)]
pub(crate) struct Tally<'a> {
    path: &'a Path,
    limit: u64,
    used: &'a AtomicU64,
}

impl<'a> Tally<'a> {
    /// A tally for a decode of `path` under `limit` bytes, counting into `used`.
    pub(crate) fn new(path: &'a Path, limit: u64, used: &'a AtomicU64) -> Self {
        Tally { path, limit, used }
    }

    /// Adds `batch`'s decoded bytes.
    ///
    /// # Errors
    ///
    /// [`Error::MaterializeLimit`] once the total passes the limit, naming the batch's largest
    /// column.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let sizes: Vec<u64> = batch.columns().iter().map(|c| decoded_bytes(c)).collect();
        let added = sizes.iter().fold(0u64, |sum, &s| sum.saturating_add(s));
        let used = self
            .used
            .fetch_add(added, Ordering::Relaxed)
            .saturating_add(added);
        if used <= self.limit {
            return Ok(());
        }
        let largest = (0..sizes.len()).max_by_key(|&i| sizes[i]).unwrap_or(0);
        let column = batch
            .schema()
            .fields()
            .get(largest)
            .map_or_else(String::new, |f| f.name().clone());
        Err(Error::MaterializeLimit {
            path: self.path.into(),
            column: column.into(),
            limit: self.limit,
        })
    }
}

/// The bytes `array` holds for its own rows: the referenced range of its buffers (a slice of
/// a larger array counts its part), or its whole buffers for types without a slice measure.
pub(crate) fn decoded_bytes(array: &dyn Array) -> u64 {
    let data = array.to_data();
    let bytes = data
        .get_slice_memory_size()
        .unwrap_or_else(|_| array.get_buffer_memory_size());
    bytes as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_plain_value_is_found_and_a_short_page_bounds_it() {
        let mut page = Vec::new();
        for value in [&b"ab"[..], b"", b"hello", b"x"] {
            page.extend_from_slice(&(value.len() as u32).to_le_bytes());
            page.extend_from_slice(value);
        }
        assert_eq!(longest_plain_byte_array(&page, 4), 5);
        assert_eq!(longest_plain_byte_array(&page, 2), 2);
        // A length past the page's end: bounded by the page.
        assert_eq!(longest_plain_byte_array(&page, 5), page.len() as u64);
        let mut lying = page.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(longest_plain_byte_array(&lying, 1), lying.len() as u64);
    }

    #[test]
    fn batches_are_cut_to_the_budget() {
        assert_eq!(batch_rows(8192, 8), 8192);
        assert_eq!(batch_rows(8192, 1 << 20), 64);
        assert_eq!(batch_rows(8192, u64::MAX), 1);
        assert_eq!(batch_rows(0, 1), 1);
    }
}
