//! Workarounds for files that old writers got wrong, applied to the footer the way parquet-cpp
//! (and so pyarrow) applies them, so that what pyarrow reads reads here too.
//!
//! # PARQUET-816: parquet-mr before 1.2.9
//!
//! parquet-mr 1.2.8 and earlier left the dictionary page's header out of a column chunk's
//! `total_compressed_size` (IMPALA-694). A reader that fetches exactly the recorded bytes then
//! misses the end of the chunk ("Invalid page header"). parquet-cpp pads such chunks by up to
//! 100 bytes (`kMaxDictHeaderSize`); arrow-rs does not (a `TODO` in its `serialized_reader.rs`),
//! so the padding is applied to the metadata here, before any reader sees it. Unlike
//! parquet-cpp's page reader, which stops after the chunk's value count, arrow-rs's reads pages
//! until the chunk's bytes run out, so the padding must not reach into the next chunk: each
//! chunk grows to where the next one starts (or the footer does), by at most 100 bytes, which
//! is where parquet-mr, writing chunks back to back, really ended it. Only files whose
//! `created_by` names parquet-mr older than 1.2.9 (or no version) are touched. Cost: a copy of
//! the footer's metadata, for those files only.

use std::sync::Arc;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

/// The most bytes a dictionary page header can add to a chunk: parquet-cpp's
/// `kMaxDictHeaderSize`.
const MAX_DICTIONARY_HEADER: u64 = 100;

/// The first parquet-mr version that counts the dictionary page header: 1.2.9.
const PARQUET_816_FIXED: (u32, u32, u32) = (1, 2, 9);

/// Whether `metadata` needs the workarounds above ([`apply`] is free otherwise).
pub(crate) fn needed(metadata: &ArrowReaderMetadata) -> bool {
    let created_by = metadata.metadata().file_metadata().created_by();
    created_by.is_some_and(wrote_parquet_816)
}

/// `metadata` with the workarounds above applied, for a file whose footer starts at byte
/// `footer_start`; unchanged (and not copied) for files that need none.
///
/// # Errors
///
/// arrow-rs's, when it refuses the patched metadata (chunks only ever grow into the bytes
/// between them).
pub(crate) fn apply(
    metadata: ArrowReaderMetadata,
    footer_start: u64,
    options: ArrowReaderOptions,
) -> Result<ArrowReaderMetadata, ParquetError> {
    if !needed(&metadata) {
        return Ok(metadata);
    }
    let parquet: ParquetMetaData = (**metadata.metadata()).clone();
    let mut starts: Vec<u64> = parquet
        .row_groups()
        .iter()
        .flat_map(|group| group.columns().iter().map(|chunk| chunk.byte_range().0))
        .collect();
    starts.sort_unstable();
    // Where the chunk starting at `start` can end at the latest: the next chunk's start.
    let bound = |start: u64| {
        let next = starts.partition_point(|&s| s <= start);
        starts.get(next).copied().unwrap_or(footer_start)
    };
    let mut builder = parquet.into_builder();
    let row_groups = builder
        .take_row_groups()
        .into_iter()
        .map(|group| {
            let columns = group
                .columns()
                .iter()
                .map(|chunk| {
                    let (start, len) = chunk.byte_range();
                    let left = bound(start).saturating_sub(start.saturating_add(len));
                    let padding = MAX_DICTIONARY_HEADER.min(left);
                    let padded = i64::try_from(len + padding).unwrap_or(i64::MAX);
                    chunk
                        .clone()
                        .into_builder()
                        .set_total_compressed_size(padded)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            group.into_builder().set_column_metadata(columns).build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let patched = builder.set_row_groups(row_groups).build();
    ArrowReaderMetadata::try_new(Arc::new(patched), options)
}

/// Whether `created_by` names a parquet-mr with the PARQUET-816 bug: older than 1.2.9, or no
/// version at all (as parquet-cpp reads it: a missing version is 0.0.0).
fn wrote_parquet_816(created_by: &str) -> bool {
    let Some(rest) = created_by.strip_prefix("parquet-mr") else {
        return false;
    };
    let version = rest
        .trim_start()
        .strip_prefix("version")
        .map(str::trim_start)
        .unwrap_or("");
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let parsed = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    parsed < PARQUET_816_FIXED
}

#[cfg(test)]
mod tests {
    use super::wrote_parquet_816;

    #[test]
    fn only_old_parquet_mr_versions_are_patched() {
        for old in [
            "parquet-mr",
            "parquet-mr version 1.2.8",
            "parquet-mr version 1.2.8 (build abc)",
            "parquet-mr version 1.0.0",
        ] {
            assert!(wrote_parquet_816(old), "{old}");
        }
        for new in [
            "parquet-mr version 1.2.9",
            "parquet-mr version 1.12.0-201812210311360288-a86293f (build cec1a4)",
            "parquet-cpp-arrow version 14.0.0",
            "parquet-rs version 60.1.0",
            "",
        ] {
            assert!(!wrote_parquet_816(new), "{new}");
        }
    }
}
