//! Fixed-width columns read straight out of their pages, without a decoder: the fast path of
//! [`Dataset::take`](crate::Dataset::take) and of unfiltered scans.
//!
//! # Why
//!
//! arrow-rs's decoder reaches a row inside a page by decoding every level before it. For an
//! embedding stored as `FixedSizeList<f32, 64>` that is 64 repetition levels per row, and a
//! 1 MiB page (pyarrow's default) holds 4,096 rows: one wanted row costs ~260,000 levels, and
//! a scan decodes and copies every level and value. Yet in a PLAIN-encoded page without nulls,
//! row `r`'s bytes sit at a computable offset, and a run of rows is one `memcpy`.
//!
//! # When
//!
//! A projected column is served here in a row group when all of these hold, and by the
//! decoder otherwise (the answer is the same; only the cost differs):
//!
//! - its Arrow type is a fixed-width primitive whose bytes equal Parquet's (`Int32`, `UInt32`,
//!   `Date32`, `Int64`, `UInt64`, `Float32`, `Float64`), or a `FixedSizeList` of one;
//! - the column chunk is uncompressed, has no dictionary page, is not encrypted, and the file
//!   has an offset index for it;
//! - each page touched is PLAIN-encoded, its levels RLE-encoded, and *dense*: every level
//!   carries a value (no null row, no null element), which the page proves by its sizes alone:
//!   `values = levels = rows × list size`, `value bytes = values × width`;
//! - for lists, the repetition levels say every row holds exactly `list size` elements. The
//!   schema promises it, but the file is untrusted: a row of 63 elements beside one of 65 would
//!   shift every offset after it. Checking costs a pass over the page's run-length-encoded
//!   levels, a few runs per row; a page checked once is remembered by the dataset (one
//!   `(shard, page offset)` entry), so reading the same pages again pays it once.
//!
//! A page failing any check sends its column back to the decoder for that row group. Pages
//! that cannot even be parsed do too, so that the decoder reports the error as it would have.
//!
//! # Cost
//!
//! Per column and row group: one page reader. Per page touched: one header parse and, for
//! lists, the level check on first sight. Per row taken: one copy of its bytes; per scanned
//! batch: one copy per page it spans. The pages are read through the shard's fetch path
//! (coalesced, counted), in one call for all direct columns of the row group.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayData, ArrayRef, make_array};
use arrow::buffer::{Buffer, MutableBuffer};
use arrow::datatypes::{DataType, Field};
use bytes::Bytes;
use parquet::basic::{Compression, ConvertedType, Encoding, LogicalType, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::errors::ParquetError;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;

use crate::Result;
use crate::dataset::Shard;
use crate::storage::ShardReader;

/// Pages whose repetition levels were checked, as `(shard index, page offset)`: shared by every
/// view of a dataset.
#[derive(Debug, Default)]
pub(crate) struct CheckedPages(Mutex<HashSet<(usize, u64)>>);

impl CheckedPages {
    fn contains(&self, key: (usize, u64)) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    fn insert(&self, key: (usize, u64)) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One row group of one shard.
#[derive(Clone, Copy)]
pub(crate) struct RowGroupRef<'a> {
    pub(crate) shard: &'a Shard,
    pub(crate) shard_index: usize,
    pub(crate) group: usize,
}

/// A projected root column the direct path may serve: its single Parquet leaf and layout.
struct DirectColumn<'a> {
    /// Position among the caller's columns.
    position: usize,
    field: &'a Field,
    chunk: &'a ColumnChunkMetaData,
    pages: &'a [PageLocation],
    /// Bytes of one value.
    width: usize,
    /// Values per row: 1, or the fixed list size.
    per_row: usize,
    has_rep_levels: bool,
    has_def_levels: bool,
}

impl DirectColumn<'_> {
    fn row_bytes(&self) -> usize {
        self.width * self.per_row
    }
}

/// `take`: reads `rows` (file-local, sorted, unique, all in `target`'s row group) of the
/// columns of `roots` (root column indices, with their output fields) that the direct path
/// can serve; returns `(position in roots, array)` for each. Columns left out go to the
/// decoder.
pub(crate) fn take_columns(
    target: RowGroupRef<'_>,
    rows: &[u64],
    roots: &[(usize, &Field)],
    reader: &ShardReader<'_>,
    checked: &CheckedPages,
) -> Result<Vec<(usize, ArrayRef)>> {
    let group_start = target.shard.row_group_of(rows[0]).1;
    let local_rows: Vec<u64> = rows.iter().map(|r| r - group_start).collect();
    let pages_needed = |column: &DirectColumn<'_>| pages_of(column.pages, &local_rows);
    let read = |column: &DirectColumn<'_>, reader: &ColumnRead<'_>, pages: &[usize]| {
        let values = reader.page_values(pages)?;
        gather_rows(&values, &local_rows, column.row_bytes())
            .and_then(|buffer| reader.array(buffer, local_rows.len()))
    };
    read_direct(target, roots, reader, checked, pages_needed, read)
}

/// A scan without a filter: every row of `target`'s row group, in batches of `batch_size`
/// rows (the last may be shorter), for the columns of `roots` the direct path can serve;
/// returns `(position in roots, one array per batch)` for each.
pub(crate) fn scan_columns(
    target: RowGroupRef<'_>,
    batch_size: usize,
    roots: &[(usize, &Field)],
    reader: &ShardReader<'_>,
    checked: &CheckedPages,
) -> Result<Vec<(usize, Vec<ArrayRef>)>> {
    let group_rows = target.shard.rows_in_group(target.group);
    let batch_size = batch_size.max(1) as u64;
    let pages_needed = |column: &DirectColumn<'_>| (0..column.pages.len()).collect();
    let read = |column: &DirectColumn<'_>, reader: &ColumnRead<'_>, pages: &[usize]| {
        let values = reader.page_values(pages)?;
        (0..group_rows)
            .step_by(batch_size as usize)
            .map(|start| {
                let rows = start..(start + batch_size).min(group_rows);
                let len = (rows.end - rows.start) as usize;
                gather_range(&values, rows, column.row_bytes())
                    .and_then(|buffer| reader.array(buffer, len))
            })
            .collect::<Option<Vec<_>>>()
    };
    read_direct(target, roots, reader, checked, pages_needed, read)
}

/// Plans the direct columns of `roots`, fetches the pages each needs (`pages_needed`) in one
/// call, and runs `read` on each with its pages; a column whose `read` gives `None` is left to
/// the decoder.
fn read_direct<T>(
    target: RowGroupRef<'_>,
    roots: &[(usize, &Field)],
    reader: &ShardReader<'_>,
    checked: &CheckedPages,
    pages_needed: impl Fn(&DirectColumn<'_>) -> Vec<usize>,
    read: impl Fn(&DirectColumn<'_>, &ColumnRead<'_>, &[usize]) -> Option<T>,
) -> Result<Vec<(usize, T)>> {
    let columns: Vec<(DirectColumn<'_>, Vec<usize>)> = roots
        .iter()
        .enumerate()
        .filter_map(|(position, &(root, field))| plan(target, position, root, field))
        .map(|column| {
            let pages = pages_needed(&column);
            (column, pages)
        })
        .collect();
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for (column, pages) in &columns {
        for &page in pages {
            match byte_range(&column.pages[page]) {
                Some(range) => ranges.push(range),
                None => return Ok(Vec::new()), // a negative offset or size: the decoder's case
            }
        }
    }
    ranges.sort_unstable_by_key(|r| r.start);
    let (fetched_ranges, fetched_bytes) = reader.fetch(&ranges)?;
    let fetched = Arc::new(Fetched::new(reader.len(), fetched_ranges, fetched_bytes));
    let group_rows = target.shard.rows_in_group(target.group);
    Ok(columns
        .iter()
        .filter_map(|(column, pages)| {
            let column_read = ColumnRead {
                column,
                fetched: &fetched,
                group_rows,
                shard_index: target.shard_index,
                checked,
            };
            read(column, &column_read, pages).map(|result| (column.position, result))
        })
        .collect())
}

/// The dense values of some pages of a column: `(row-group-local rows, values)` per page.
type PageValues = Vec<(Range<u64>, Bytes)>;

/// The bytes of `rows` (row-group-local, sorted), one row after another.
fn gather_rows(pages: &PageValues, rows: &[u64], row_bytes: usize) -> Option<Buffer> {
    let mut out = MutableBuffer::new(rows.len().checked_mul(row_bytes)?);
    let mut pages = pages.iter().peekable();
    for &row in rows {
        while pages
            .next_if(|(page_rows, _)| page_rows.end <= row)
            .is_some()
        {}
        let (page_rows, values) = pages.peek()?;
        let start = usize::try_from(row.checked_sub(page_rows.start)?).ok()? * row_bytes;
        out.extend_from_slice(values.get(start..start + row_bytes)?);
    }
    Some(out.into())
}

/// The bytes of the contiguous `rows`, one copy per page they span.
fn gather_range(pages: &PageValues, rows: Range<u64>, row_bytes: usize) -> Option<Buffer> {
    let len = usize::try_from(rows.end - rows.start).ok()?;
    let mut out = MutableBuffer::new(len.checked_mul(row_bytes)?);
    for (page_rows, values) in pages {
        let (start, end) = (rows.start.max(page_rows.start), rows.end.min(page_rows.end));
        if start < end {
            let from = usize::try_from(start - page_rows.start).ok()? * row_bytes;
            let to = usize::try_from(end - page_rows.start).ok()? * row_bytes;
            out.extend_from_slice(values.get(from..to)?);
        }
    }
    (out.len() == len * row_bytes).then(|| out.into())
}

/// The roots of `roots` a decoder must still read (their slot in `columns` is empty), in
/// file order, each once: the order a decoder returns them in.
pub(crate) fn roots_left(roots: &[(usize, &Field)], columns: &[Option<ArrayRef>]) -> Vec<usize> {
    let mut left: Vec<usize> = roots
        .iter()
        .zip(columns)
        .filter(|(_, column)| column.is_none())
        .map(|((root, _), _)| *root)
        .collect();
    left.sort_unstable();
    left.dedup();
    left
}

/// Fills the empty slots of `columns` from `decoded`, a batch of the columns `left` (from
/// [`roots_left`]), then builds the batch.
pub(crate) fn assemble(
    schema: &arrow::datatypes::SchemaRef,
    roots: &[(usize, &Field)],
    columns: Vec<Option<ArrayRef>>,
    left: &[usize],
    decoded: Option<&arrow::array::RecordBatch>,
) -> std::result::Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let columns = columns
        .into_iter()
        .zip(roots)
        .map(|(column, (root, _))| match (column, decoded) {
            (Some(column), _) => Ok(column),
            (None, Some(decoded)) => {
                let at = left
                    .binary_search(root)
                    .expect("every root left to the decoder was decoded");
                Ok(Arc::clone(decoded.column(at)))
            }
            (None, None) => Err(arrow::error::ArrowError::InvalidArgumentError(
                "a column was neither read directly nor decoded".into(),
            )),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    arrow::array::RecordBatch::try_new(Arc::clone(schema), columns)
}

/// The static checks of the [module docs](self): types, codec, dictionary, encryption, index.
fn plan<'a>(
    target: RowGroupRef<'a>,
    position: usize,
    root: usize,
    field: &'a Field,
) -> Option<DirectColumn<'a>> {
    let metadata = target.shard.metadata().metadata();
    let schema = metadata.file_metadata().schema_descr();
    let mut leaves = (0..schema.num_columns()).filter(|&l| schema.get_column_root_idx(l) == root);
    let leaf = leaves.next()?;
    if leaves.next().is_some() {
        return None;
    }
    let descriptor = schema.column(leaf);
    let (value_type, per_row, has_rep_levels) = match field.data_type() {
        DataType::FixedSizeList(child, size) => {
            (child.data_type(), usize::try_from(*size).ok()?, true)
        }
        other => (other, 1, false),
    };
    if per_row == 0
        || (descriptor.max_rep_level() > 0) != has_rep_levels
        || descriptor.max_rep_level() > 1
    {
        return None;
    }
    let unsigned = matches!(descriptor.logical_type_ref(), Some(LogicalType::Integer(int)) if !int.is_signed)
        || matches!(
            descriptor.converted_type(),
            ConvertedType::UINT_8
                | ConvertedType::UINT_16
                | ConvertedType::UINT_32
                | ConvertedType::UINT_64
        );
    let width = match (value_type, descriptor.physical_type(), unsigned) {
        (DataType::Int32 | DataType::Date32, PhysicalType::INT32, false)
        | (DataType::UInt32, PhysicalType::INT32, true)
        | (DataType::Float32, PhysicalType::FLOAT, _) => 4,
        (DataType::Int64, PhysicalType::INT64, false)
        | (DataType::UInt64, PhysicalType::INT64, true)
        | (DataType::Float64, PhysicalType::DOUBLE, _) => 8,
        _ => return None,
    };
    let chunk = metadata.row_group(target.group).column(leaf);
    if chunk.compression() != Compression::UNCOMPRESSED
        || chunk.dictionary_page_offset().is_some()
        || chunk
            .encodings()
            .any(|e| !matches!(e, Encoding::PLAIN | Encoding::RLE))
        || is_encrypted(chunk)
    {
        return None;
    }
    let pages = metadata
        .page_index()?
        .offset_index(target.group, leaf)?
        .page_locations()
        .as_slice();
    // The page reader takes a gap before the first page for a dictionary page.
    let first = pages.first()?;
    if u64::try_from(first.offset).ok()? != chunk.byte_range().0 {
        return None;
    }
    Some(DirectColumn {
        position,
        field,
        chunk,
        pages,
        width,
        per_row,
        has_rep_levels,
        has_def_levels: descriptor.max_def_level() > 0,
    })
}

#[cfg(feature = "encryption")]
fn is_encrypted(chunk: &ColumnChunkMetaData) -> bool {
    chunk.crypto_metadata().is_some()
}

#[cfg(not(feature = "encryption"))]
fn is_encrypted(_chunk: &ColumnChunkMetaData) -> bool {
    // Without decryption support, encrypted files fail to open; pages of a plaintext-footer
    // file that are encrypted fail the header parse below and go to the decoder.
    false
}

/// Indices of the pages holding `rows` (row-group-local, sorted), ascending and unique.
fn pages_of(pages: &[PageLocation], rows: &[u64]) -> Vec<usize> {
    let mut found: Vec<usize> = Vec::new();
    for &row in rows {
        let page = pages
            .partition_point(|p| u64::try_from(p.first_row_index).unwrap_or(0) <= row)
            .saturating_sub(1);
        if found.last() != Some(&page) {
            found.push(page);
        }
    }
    found
}

fn byte_range(page: &PageLocation) -> Option<Range<u64>> {
    let start = u64::try_from(page.offset).ok()?;
    let len = u64::try_from(page.compressed_page_size).ok()?;
    Some(start..start.checked_add(len)?)
}

/// One column's rows out of its pages.
struct ColumnRead<'a> {
    column: &'a DirectColumn<'a>,
    fetched: &'a Arc<Fetched>,
    group_rows: u64,
    shard_index: usize,
    checked: &'a CheckedPages,
}

impl ColumnRead<'_> {
    /// The dense values of `pages` (ascending indices), with the rows each holds; `None` when
    /// a page fails a check.
    fn page_values(&self, pages: &[usize]) -> Option<PageValues> {
        let column = self.column;
        let mut reader = SerializedPageReader::new(
            Arc::clone(self.fetched),
            column.chunk,
            usize::try_from(self.group_rows).ok()?,
            Some(column.pages.to_vec()),
        )
        .ok()?;
        let mut next_page = 0usize;
        let mut values = Vec::with_capacity(pages.len());
        for &page in pages {
            while next_page < page {
                reader.skip_next_page().ok()?;
                next_page += 1;
            }
            let rows = self.page_first_row(page)?..self.page_first_row(page + 1)?;
            let bytes = self.dense_values(reader.get_next_page().ok()??, page, &rows)?;
            next_page += 1;
            values.push((rows, bytes));
        }
        Some(values)
    }

    /// The first row-group-local row of `page`; the row group's row count past the last page.
    fn page_first_row(&self, page: usize) -> Option<u64> {
        match self.column.pages.get(page) {
            Some(location) => u64::try_from(location.first_row_index).ok(),
            None => Some(self.group_rows),
        }
    }

    /// The values of a data page holding `rows`, when the page is PLAIN and dense (see the
    /// [module docs](self)); `None` otherwise.
    fn dense_values(&self, page: Page, index: usize, rows: &Range<u64>) -> Option<Bytes> {
        let column = self.column;
        let page_rows = usize::try_from(rows.end.checked_sub(rows.start)?).ok()?;
        let levels = page_rows.checked_mul(column.per_row)?;
        let (rep_levels, values) = match page {
            Page::DataPage {
                buf,
                num_values,
                encoding: Encoding::PLAIN,
                def_level_encoding,
                rep_level_encoding,
                ..
            } if num_values as usize == levels => {
                let mut rest = buf;
                let mut rep_levels = Bytes::new();
                if column.has_rep_levels {
                    if rep_level_encoding != Encoding::RLE {
                        return None;
                    }
                    rep_levels = split_length_prefixed(&mut rest)?;
                }
                if column.has_def_levels {
                    if def_level_encoding != Encoding::RLE {
                        return None;
                    }
                    split_length_prefixed(&mut rest)?;
                }
                (rep_levels, rest)
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding: Encoding::PLAIN,
                num_nulls: 0,
                num_rows,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } if num_values as usize == levels && num_rows as usize == page_rows => {
                let rep_end = rep_levels_byte_len as usize;
                let levels_end = rep_end.checked_add(def_levels_byte_len as usize)?;
                if levels_end > buf.len() {
                    return None;
                }
                (buf.slice(..rep_end), buf.slice(levels_end..))
            }
            _ => return None,
        };
        if values.len() != levels.checked_mul(column.width)? {
            return None;
        }
        if column.has_rep_levels && column.per_row > 1 {
            let key = (
                self.shard_index,
                u64::try_from(column.pages[index].offset).ok()?,
            );
            if !self.checked.contains(key) {
                if !rep_levels_are_fixed(&rep_levels, page_rows, column.per_row) {
                    return None;
                }
                self.checked.insert(key);
            }
        }
        Some(values)
    }

    /// `rows` rows of this column's output type over `values`.
    fn array(&self, values: Buffer, rows: usize) -> Option<ArrayRef> {
        let field = self.column.field;
        let data = match field.data_type() {
            DataType::FixedSizeList(child, _) => {
                let child = ArrayData::builder(child.data_type().clone())
                    .len(rows * self.column.per_row)
                    .add_buffer(values)
                    .build()
                    .ok()?;
                ArrayData::builder(field.data_type().clone())
                    .len(rows)
                    .add_child_data(child)
                    .build()
                    .ok()?
            }
            other => ArrayData::builder(other.clone())
                .len(rows)
                .add_buffer(values)
                .build()
                .ok()?,
        };
        Some(make_array(data))
    }
}

/// Splits a V1 page's length-prefixed level section off the front of `rest`.
fn split_length_prefixed(rest: &mut Bytes) -> Option<Bytes> {
    let prefix: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(prefix) as usize;
    let end = len.checked_add(4)?;
    if end > rest.len() {
        return None;
    }
    let section = rest.slice(4..end);
    *rest = rest.slice(end..);
    Some(section)
}

/// Whether the RLE/bit-packed hybrid repetition levels `encoded` (bit width 1) describe exactly
/// `rows` rows of `per_row` elements: `0, 1, 1, …, 1` repeated, nothing else.
///
/// The format: runs headed by a varint; `count << 1` is a run of one value repeated `count`
/// times, checked in O(1) (it must stay inside one row); `groups << 1 | 1` is `groups × 8`
/// bit-packed levels, checked level by level. Bit-packed padding past the last level is ignored,
/// as the format allows.
pub(crate) fn rep_levels_are_fixed(encoded: &[u8], rows: usize, per_row: usize) -> bool {
    let Some(total) = rows.checked_mul(per_row) else {
        return false;
    };
    if per_row == 0 {
        return false;
    }
    let mut at = 0usize;
    let mut input = encoded;
    while at < total {
        let Some((header, rest)) = read_uleb128(input) else {
            return false;
        };
        input = rest;
        if header & 1 == 1 {
            let groups = (header >> 1) as usize;
            // Bit width 1: one byte per group of eight levels.
            if groups == 0 || groups > input.len() {
                return false;
            }
            let levels = (groups * 8).min(total - at);
            for i in 0..levels {
                let is_row_start = (input[i / 8] >> (i % 8)) & 1 == 0;
                if is_row_start != (at + i).is_multiple_of(per_row) {
                    return false;
                }
            }
            input = &input[groups..];
            at += levels;
        } else {
            let count = (header >> 1) as usize;
            let Some((&value, rest)) = input.split_first() else {
                return false;
            };
            input = rest;
            if count == 0 || count > total - at {
                return false;
            }
            let offset = at % per_row;
            let fits = match value {
                // A run of row starts: only rows of one element each.
                0 => offset == 0 && (count == 1 || per_row == 1),
                // A run of continuations, inside the current row.
                1 => offset != 0 && offset + count <= per_row,
                _ => false,
            };
            if !fits {
                return false;
            }
            at += count;
        }
    }
    true
}

/// An unsigned LEB128 varint of at most 32 bits, and the bytes after it.
fn read_uleb128(input: &[u8]) -> Option<(u32, &[u8])> {
    let mut value = 0u32;
    for (i, &byte) in input.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &input[i + 1..]));
        }
    }
    None
}

/// The byte ranges fetched for one row group, served to the page reader as a file.
pub(crate) struct Fetched {
    len: u64,
    /// Sorted, non-overlapping.
    ranges: Vec<Range<u64>>,
    bytes: Vec<Bytes>,
}

impl Fetched {
    /// The bytes of `ranges` (sorted, non-overlapping, as [`ShardReader::fetch`] returns
    /// them) of a file of `len` bytes, for a page reader.
    pub(crate) fn new(len: u64, ranges: Vec<Range<u64>>, bytes: Vec<Bytes>) -> Self {
        Fetched { len, ranges, bytes }
    }

    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let end = start + length as u64;
        let i = self.ranges.partition_point(|r| r.end < end);
        match self.ranges.get(i) {
            Some(range) if range.start <= start && end <= range.end => {
                let from = (start - range.start) as usize;
                Ok(self.bytes[i].slice(from..from + length))
            }
            _ => Err(ParquetError::General(format!(
                "bytes {start}..{end} were not fetched"
            ))),
        }
    }
}

impl Length for Fetched {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Fetched {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let i = self.ranges.partition_point(|r| r.end <= start);
        let length = match self.ranges.get(i) {
            Some(range) if range.start <= start => (range.end - start) as usize,
            _ => 0,
        };
        Ok(self.slice(start, length)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

#[cfg(test)]
mod tests {
    use super::rep_levels_are_fixed;

    /// Bit-packed groups (header `groups << 1 | 1`) of 1-bit levels, LSB first.
    fn bit_packed(levels: &[u8]) -> Vec<u8> {
        let groups = levels.len().div_ceil(8);
        let mut out = vec![(groups << 1 | 1) as u8];
        for chunk in levels.chunks(8) {
            out.push(chunk.iter().enumerate().map(|(i, &l)| l << i).sum());
        }
        out
    }

    /// One run-length run (header `count << 1`).
    fn run(count: u8, value: u8) -> Vec<u8> {
        vec![count << 1, value]
    }

    fn row_of(len: usize) -> Vec<u8> {
        let mut levels = vec![1; len];
        levels[0] = 0;
        levels
    }

    #[test]
    fn accepts_fixed_rows_in_either_encoding() {
        // Rows of 4, bit-packed: 0111 0111.
        let levels: Vec<u8> = [row_of(4), row_of(4)].concat();
        assert!(rep_levels_are_fixed(&bit_packed(&levels), 2, 4));
        // Rows of 12: one bit-packed group (0 + seven 1s), then a run of four 1s; twice.
        let mut encoded = Vec::new();
        for _ in 0..2 {
            encoded.extend(bit_packed(&row_of(8)));
            encoded.extend(run(4, 1));
        }
        assert!(rep_levels_are_fixed(&encoded, 2, 12));
        // Rows of one element: a single run of zeros.
        assert!(rep_levels_are_fixed(&run(9, 0), 9, 1));
    }

    #[test]
    fn rejects_rows_of_the_wrong_length_even_when_the_total_matches() {
        // 3 + 5 levels = 2 rows × 4, but neither row has 4.
        let levels: Vec<u8> = [row_of(3), row_of(5)].concat();
        assert!(!rep_levels_are_fixed(&bit_packed(&levels), 2, 4));
        // A run of 1s crossing into the next row.
        let mut encoded = bit_packed(&row_of(8));
        encoded.extend(run(5, 1));
        assert!(!rep_levels_are_fixed(&encoded, 1, 12));
        // A run of zeros where rows have 12 elements.
        assert!(!rep_levels_are_fixed(&run(2, 0), 2, 12));
    }

    #[test]
    fn rejects_truncated_or_malformed_input() {
        let levels: Vec<u8> = [row_of(4), row_of(4)].concat();
        let encoded = bit_packed(&levels);
        assert!(!rep_levels_are_fixed(&encoded[..1], 2, 4));
        assert!(!rep_levels_are_fixed(&[], 1, 4));
        // Too few levels for the rows claimed.
        assert!(!rep_levels_are_fixed(&encoded, 3, 4));
        // A zero-length run or group would never advance.
        assert!(!rep_levels_are_fixed(&[0, 0], 1, 4));
        assert!(!rep_levels_are_fixed(&[1], 1, 4));
        // A level value other than 0 and 1.
        assert!(!rep_levels_are_fixed(&run(1, 2), 1, 1));
        // An unterminated varint.
        assert!(!rep_levels_are_fixed(&[0xff; 6], 1, 4));
    }
}
