//! How a shard's bytes are read, from local files and object stores alike.
//!
//! # Reads are planned, coalesced, checked and counted
//!
//! The Parquet decoders never read by themselves: they are arrow-rs push decoders
//! ([`ParquetPushDecoder`], [`ParquetMetaDataPushDecoder`]) that say which byte ranges they need
//! next (a footer, the pages of a row group holding selected rows). Each such list is served
//! the same way:
//!
//! 1. Every range is checked against the shard's size *before* anything is allocated. The
//!    ranges come from the footer, which is untrusted: a footer claiming a 1 TB column chunk is
//!    refused, not allocated.
//! 2. Ranges closer than the coalescing gap are merged ([`coalesce`]): one request instead of
//!    many, at the price of reading the bytes in between. The gap is 8 KiB for local files (Arrow
//!    C++'s hole-size limit: a system call costs about as much as copying that much from the page
//!    cache) and 1 MiB for object stores (a request's latency is worth megabytes of bandwidth), or
//!    [`DatasetBuilder::with_coalesce_gap`](crate::DatasetBuilder::with_coalesce_gap).
//! 3. Local files are memory-mapped and fetches are slices of the mapping: no copy, and the
//!    decoder reads straight from the page cache (a scan ran 1.2–1.7x faster than with reads into
//!    buffers, docs/BENCHMARKS.md). A file is mapped on its first read and stays mapped while the
//!    dataset is open (a `take` that mapped and unmapped its files spent most of its time in the
//!    kernel doing so). The contract, as for every mmap-based reader (polars, pyarrow's
//!    `memory_map=True`): a file must not be truncated while a dataset has it open, or the
//!    process may be killed (`SIGBUS`); arrays decoded without a copy (string views) keep the
//!    mapping alive. [`DatasetBuilder::with_memory_map(false)`] reads with positional reads
//!    (`pread`) instead, for files that may change underneath. Object stores are read with
//!    concurrent ranged GETs.
//!
//! [`DatasetBuilder::with_memory_map(false)`]: crate::DatasetBuilder::with_memory_map
//! 4. Bytes and requests are added to the dataset's counters ([`Dataset::bytes_read`],
//!    [`Dataset::read_requests`]); this is how tests prove that `take` reads only the pages
//!    holding the requested rows. Footers read at open are not counted.
//!
//! Opening a shard fetches its last 64 KiB: the footer and, for most files, the page index, in
//! one request.
//!
//! # Object stores
//!
//! Credentials and endpoints come from the environment the way each cloud's own tools read it
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`), then from
//! [`DatasetBuilder::with_storage_option`](crate::DatasetBuilder::with_storage_option), which
//! wins. Keys are `object_store`'s configuration keys (`aws_endpoint`, `aws_region`,
//! `aws_allow_http`, `google_service_account`, `azure_storage_account_name`, and for every store
//! the client keys such as `timeout` and `allow_http`); an unknown key is an error, never
//! silently ignored.
//!
//! A URI naming a `.parquet` object reads that object; a prefix (`s3://bucket/train/`) reads
//! every `*.parquet` object under it, skipping names that start with `_` or `.` as for local
//! directories; a glob (`s3://bucket/train-*.parquet`) lists from its literal prefix. Plain HTTP
//! servers cannot list: an `http(s)://` URI names one file.
//!
//! The API stays synchronous: requests run on a two-thread tokio runtime of the crate's own,
//! started on first use, and callers wait on a channel, so calling from inside another tokio
//! runtime does not panic. Failed requests are retried with `object_store`'s backoff.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use bytes::Bytes;
use parquet::DecodeResult;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::push_decoder::ParquetPushDecoder;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataPushDecoder};

use crate::dataset::{Dataset, Shard};
use crate::{Error, Result};

#[cfg(feature = "remote")]
pub(crate) mod remote;

/// Default coalescing gap for local files: 8 KiB.
pub const DEFAULT_LOCAL_COALESCE_GAP: u64 = 8 << 10;
/// Default coalescing gap for object stores: 1 MiB, as `object_store` and pyarrow's S3
/// filesystem use.
pub const DEFAULT_REMOTE_COALESCE_GAP: u64 = 1 << 20;

/// The bytes at the end of a file fetched first when opening it: the footer and, for most
/// files, the page index too, in one request instead of three.
const FOOTER_PREFETCH: u64 = 64 << 10;

/// Rounds of "needs data" a decoder may ask for on one row group or footer before it is
/// considered stuck. A row group with a filter needs a few (filter columns, then the rest).
const MAX_FETCH_ROUNDS: usize = 64;

/// Where a shard's bytes live.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// A local file; its path is the shard's path.
    Local,
    /// An object in an object store.
    #[cfg(feature = "remote")]
    Remote(remote::RemoteObject),
}

impl Location {
    fn default_coalesce_gap(&self) -> u64 {
        match self {
            Location::Local => DEFAULT_LOCAL_COALESCE_GAP,
            #[cfg(feature = "remote")]
            Location::Remote(_) => DEFAULT_REMOTE_COALESCE_GAP,
        }
    }
}

/// A local shard's memory map, made on first read and kept while the dataset lives: mapping
/// and unmapping a file per `take` costs more than the read (page faults to map it back in,
/// TLB shootdowns to unmap it), and the page cache keeps the bytes either way. One mapping
/// per local shard read; the address space it takes is virtual, the memory it uses is the
/// kernel's page cache, shared and reclaimable.
#[derive(Default)]
pub(crate) struct Mapping(std::sync::OnceLock<Bytes>);

impl Mapping {
    fn get_or_map(&self, path: &Path) -> Result<Bytes> {
        if let Some(map) = self.0.get() {
            return Ok(map.clone());
        }
        let map = Bytes::from_owner(crate::mmap::map_file(path)?);
        // Two threads may map at once; one mapping is kept, the other dropped.
        Ok(self.0.get_or_init(|| map).clone())
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(map) => write!(f, "Mapping({} bytes)", map.len()),
            None => f.write_str("Mapping(not mapped)"),
        }
    }
}

/// What [`Dataset::bytes_read`] and [`Dataset::read_requests`] report.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    bytes: AtomicU64,
    requests: AtomicU64,
}

/// A shard opened for reading; see the [module docs](self).
pub(crate) struct ShardReader<'a> {
    path: &'a Path,
    len: u64,
    backend: Backend<'a>,
    max_gap: u64,
    counters: Option<&'a IoCounters>,
}

enum Backend<'a> {
    Local(File),
    /// The whole local file, memory-mapped: fetches are slices, no copy.
    Mapped(Bytes),
    #[cfg(feature = "remote")]
    Remote(&'a remote::RemoteObject),
    #[cfg(not(feature = "remote"))]
    #[allow(dead_code)]
    Unreachable(std::marker::PhantomData<&'a ()>),
}

impl<'a> ShardReader<'a> {
    /// Opens the shard at `path`. A local file's size is taken now (it may have changed since
    /// the dataset was opened, and reads are checked against what is there); an object's
    /// size is `known_len`, from the listing. With a `mapping`, a local file is read through
    /// it, mapped on first use (see
    /// [`DatasetBuilder::with_memory_map`](crate::DatasetBuilder::with_memory_map)).
    pub(crate) fn open(
        path: &'a Path,
        location: &'a Location,
        known_len: u64,
        max_gap: Option<u64>,
        mapping: Option<&Mapping>,
        counters: Option<&'a IoCounters>,
    ) -> Result<Self> {
        let max_gap = max_gap.unwrap_or_else(|| location.default_coalesce_gap());
        let (backend, len) = match (location, mapping) {
            (Location::Local, Some(mapping)) => {
                let map = mapping.get_or_map(path)?;
                let len = map.len() as u64;
                (Backend::Mapped(map), len)
            }
            (Location::Local, None) => {
                let file = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
                let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
                (Backend::Local(file), len)
            }
            #[cfg(feature = "remote")]
            (Location::Remote(object), _) => (Backend::Remote(object), known_len),
        };
        #[cfg(not(feature = "remote"))]
        let _ = known_len;
        Ok(ShardReader {
            path,
            len,
            backend,
            max_gap,
            counters,
        })
    }

    /// The shard's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The bytes of `ranges`, as coalesced ranges and their bytes: each requested range lies
    /// inside one returned range. See the [module docs](self).
    pub(crate) fn fetch(&self, ranges: &[Range<u64>]) -> Result<(Vec<Range<u64>>, Vec<Bytes>)> {
        for range in ranges {
            if range.start > range.end || range.end > self.len {
                return Err(Error::parquet(
                    self.path,
                    ParquetError::EOF(format!(
                        "range {range:?} runs past the end of the file ({} bytes)",
                        self.len
                    )),
                ));
            }
        }
        let merged = coalesce(ranges, self.max_gap);
        let buffers = match &self.backend {
            Backend::Local(file) => merged
                .iter()
                .map(|range| {
                    let mut buffer = vec![0u8; (range.end - range.start) as usize];
                    file.read_exact_at(&mut buffer, range.start)
                        .map_err(|e| Error::io(self.path, e))?;
                    Ok(Bytes::from(buffer))
                })
                .collect::<Result<Vec<_>>>()?,
            // In bounds: every range was checked against the mapping's length above.
            Backend::Mapped(bytes) => merged
                .iter()
                .map(|range| bytes.slice(range.start as usize..range.end as usize))
                .collect(),
            #[cfg(feature = "remote")]
            Backend::Remote(object) => object.get_ranges(&merged)?,
            #[cfg(not(feature = "remote"))]
            Backend::Unreachable(_) => unreachable!("no such backend without `remote`"),
        };
        if let Some(counters) = self.counters {
            let bytes: u64 = merged.iter().map(|r| r.end - r.start).sum();
            counters.bytes.fetch_add(bytes, Ordering::Relaxed);
            counters
                .requests
                .fetch_add(merged.len() as u64, Ordering::Relaxed);
        }
        Ok((merged, buffers))
    }

    /// Reads the footer (and the page index, when there is one) with `options`.
    pub(crate) fn load_metadata(&self, options: ArrowReaderOptions) -> Result<ArrowReaderMetadata> {
        let parquet = |e| Error::parquet(self.path, e);
        let mut decoder = ParquetMetaDataPushDecoder::try_new(self.len)
            .map_err(parquet)?
            // Page indexes let `take` and filters read only the pages they need; arrow-rs skips
            // them unless asked. `Optional`: files without them still open.
            .with_page_index_policy(PageIndexPolicy::Optional);
        #[cfg(feature = "encryption")]
        {
            decoder = decoder
                .with_file_decryption_properties(options.file_decryption_properties().cloned());
        }
        let tail = self.len.saturating_sub(FOOTER_PREFETCH)..self.len;
        let (ranges, buffers) = self.fetch(std::slice::from_ref(&tail))?;
        decoder.push_ranges(ranges, buffers).map_err(parquet)?;
        for _ in 0..MAX_FETCH_ROUNDS {
            match decoder.try_decode().map_err(parquet)? {
                DecodeResult::NeedsData(needed) => {
                    let (ranges, buffers) = self.fetch(&needed)?;
                    decoder.push_ranges(ranges, buffers).map_err(parquet)?;
                }
                DecodeResult::Data(metadata) => {
                    return ArrowReaderMetadata::try_new(Arc::new(metadata), options)
                        .map_err(parquet);
                }
                DecodeResult::Finished => break,
            }
        }
        Err(Error::CorruptMetadata {
            path: self.path.into(),
            what: "the footer decoder did not finish".into(),
        })
    }

    /// Where the footer starts: the file's length less the 8-byte trailer and the footer length
    /// it records.
    pub(crate) fn footer_start(&self) -> Result<u64> {
        let trailer = self.len.saturating_sub(8)..self.len;
        let (_, bytes) = self.fetch(std::slice::from_ref(&trailer))?;
        let footer_len = bytes
            .first()
            .and_then(|b| b.get(..4))
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        Ok(self
            .len
            .saturating_sub(8)
            .saturating_sub(u64::from(footer_len)))
    }

    /// Runs `decoder` to the end, fetching what it asks for; its batches, in order, each added
    /// to `tally` as it is made (which stops the decode past the cap: see
    /// [`materialize`](crate::materialize)).
    pub(crate) fn decode(
        &self,
        mut decoder: ParquetPushDecoder,
        tally: &mut crate::materialize::Tally<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let parquet = |e| Error::parquet(self.path, e);
        let mut batches = Vec::new();
        let mut rounds_without_data = 0;
        loop {
            match decoder.try_decode().map_err(parquet)? {
                DecodeResult::NeedsData(needed) => {
                    rounds_without_data += 1;
                    if rounds_without_data > MAX_FETCH_ROUNDS {
                        return Err(Error::CorruptMetadata {
                            path: self.path.into(),
                            what: "the page decoder kept asking for data without progress".into(),
                        });
                    }
                    let (ranges, buffers) = self.fetch(&needed)?;
                    decoder.push_ranges(ranges, buffers).map_err(parquet)?;
                }
                DecodeResult::Data(batch) => {
                    rounds_without_data = 0;
                    tally.add(&batch)?;
                    batches.push(batch);
                }
                DecodeResult::Finished => return Ok(batches),
            }
        }
    }
}

/// `ranges` merged where they overlap, touch, or are at most `max_gap` bytes apart; sorted.
/// Every input range lies inside exactly one output range.
pub fn coalesce(ranges: &[Range<u64>], max_gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(max_gap) => {
                last.end = last.end.max(range.end);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// Copies the file at `uri` (a local path or an object-store URI, configured by `options` as
/// [`DatasetBuilder::with_storage_option`](crate::DatasetBuilder::with_storage_option) takes
/// them) to `dest`, hashing it on the way; returns its content hash, `blake3:` and hex, the form
/// [`ShardEntry::content_hash`](crate::ShardEntry::content_hash) has. `dest` must not exist
/// (it is created exclusively, so a symlink planted at its name is never followed); on error
/// it may hold part of the file (write to a temporary name, rename once the hash is checked).
/// The copy stops as soon as more than `max_bytes` arrive: a manifest records each shard's
/// size, and a source larger than that is refused, not downloaded.
///
/// Objects are streamed in 16 MiB ranged GETs; memory use stays bounded whatever the size.
///
/// # Errors
///
/// [`Error::Io`] when `dest` cannot be created or written, a local file read, or the source
/// holds more than `max_bytes` ([`std::io::ErrorKind::FileTooLarge`]); the object store's
/// errors ([`Error::ObjectStore`], a missing object included); [`Error::InvalidOption`] for an
/// unknown option.
pub fn fetch_file<K: AsRef<str>, V: AsRef<str>>(
    uri: &str,
    options: &[(K, V)],
    dest: &Path,
    max_bytes: u64,
) -> Result<String> {
    use std::io::Write;
    let options: Vec<(String, String)> = options
        .iter()
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
        .collect();
    let file = crate::files::create_new(dest).map_err(|e| Error::io(dest, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut copied = 0u64;
    let mut write = |chunk: &[u8]| -> Result<()> {
        copied = copied.saturating_add(chunk.len() as u64);
        if copied > max_bytes {
            return Err(Error::io(
                Path::new(uri),
                std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    format!("holds more than the {max_bytes} bytes expected"),
                ),
            ));
        }
        hasher.update(chunk);
        out.write_all(chunk).map_err(|e| Error::io(dest, e))
    };
    match FileRef::from_uri(uri, &options)? {
        FileRef::Local(path) => {
            let mut source = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let read = std::io::Read::read(&mut source, &mut buffer)
                    .map_err(|e| Error::io(path, e))?;
                if read == 0 {
                    break;
                }
                write(&buffer[..read])?;
            }
        }
        #[cfg(feature = "remote")]
        FileRef::Remote(object) => object.for_each_chunk(&mut write)?,
    }
    out.flush().map_err(|e| Error::io(dest, e))?;
    out.get_ref().sync_all().map_err(|e| Error::io(dest, e))?;
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// `blake3:` and the hex BLAKE3 hash of the local file at `path`, as a [`Manifest`] records a
/// shard's content (hashed through a memory map on all cores).
///
/// [`Manifest`]: crate::Manifest
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be opened (or is not a regular file) or mapped.
pub fn content_hash(path: &Path) -> Result<String> {
    FileRef::Local(path).content_hash()
}

/// A whole file, local or remote, for what is done to whole files: stat and hash.
pub(crate) enum FileRef<'a> {
    Local(&'a Path),
    #[cfg(feature = "remote")]
    Remote(std::borrow::Cow<'a, remote::RemoteObject>),
}

impl<'a> FileRef<'a> {
    pub(crate) fn of_shard(shard: &'a Shard) -> Self {
        match shard.location() {
            Location::Local => FileRef::Local(shard.path()),
            #[cfg(feature = "remote")]
            Location::Remote(object) => FileRef::Remote(std::borrow::Cow::Borrowed(object)),
        }
    }

    /// The file a manifest's shard URI names; object stores are configured by `options`.
    pub(crate) fn from_uri(uri: &'a str, options: &[(String, String)]) -> Result<Self> {
        #[cfg(feature = "remote")]
        if remote::is_remote(uri) {
            return Ok(FileRef::Remote(std::borrow::Cow::Owned(remote::object(
                uri, options,
            )?)));
        }
        #[cfg(not(feature = "remote"))]
        let _ = options;
        Ok(FileRef::Local(Path::new(
            uri.strip_prefix("file://").unwrap_or(uri),
        )))
    }

    /// Size and modification time (nanoseconds since the Unix epoch) now; `None` when the
    /// file does not exist.
    pub(crate) fn stat(&self) -> Result<Option<(u64, u64)>> {
        match self {
            FileRef::Local(path) => match std::fs::metadata(path) {
                Ok(meta) => {
                    let modified = meta.modified().map_err(|e| Error::io(path, e))?;
                    let modified_ns = modified
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                    Ok(Some((meta.len(), modified_ns)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(path, e)),
            },
            #[cfg(feature = "remote")]
            FileRef::Remote(object) => object.stat(),
        }
    }

    /// `blake3:` and the hex BLAKE3 hash of the file's bytes. Local files are hashed through a
    /// memory map on all cores; objects are streamed.
    pub(crate) fn content_hash(&self) -> Result<String> {
        let mut hasher = blake3::Hasher::new();
        match self {
            FileRef::Local(path) => {
                // Opened as every named file is (no FIFO, no device: `files::open_regular`),
                // then hashed through a map on all cores.
                let map = crate::mmap::map_file(path)?;
                hasher.update_rayon(&map);
            }
            #[cfg(feature = "remote")]
            FileRef::Remote(object) => object.hash_into(&mut hasher)?,
        }
        Ok(format!("blake3:{}", hasher.finalize().to_hex()))
    }
}

impl Dataset {
    /// Bytes this dataset (all views of it) has fetched from storage so far, by
    /// [`take`](Dataset::take) and [`scan`](Dataset::scan), gaps read by coalescing included;
    /// footers read at open are not counted. A measure of I/O: compare it with the files' sizes.
    pub fn bytes_read(&self) -> u64 {
        self.shared().io.bytes.load(Ordering::Relaxed)
    }

    /// Read requests (system calls for local files, GETs for object stores) made so far by
    /// [`take`](Dataset::take) and [`scan`](Dataset::scan), after coalescing.
    pub fn read_requests(&self) -> u64 {
        self.shared().io.requests.load(Ordering::Relaxed)
    }

    /// Opens `shard` for reading data pages, counted in [`Dataset::bytes_read`].
    pub(crate) fn shard_reader<'a>(&'a self, shard: &'a Shard) -> Result<ShardReader<'a>> {
        ShardReader::open(
            shard.path(),
            shard.location(),
            shard.size(),
            self.shared().coalesce_gap,
            self.shared().memory_map.then_some(shard.mapping()),
            Some(&self.shared().io),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_within_the_gap_and_keeps_the_rest_apart() {
        let ranges = [20..30, 0..10, 12..15, 100..110, 105..120, 40..40];
        assert_eq!(coalesce(&ranges, 0), vec![0..10, 12..15, 20..30, 100..120]);
        assert_eq!(coalesce(&ranges, 2), vec![0..15, 20..30, 100..120]);
        assert_eq!(coalesce(&ranges, 70), vec![0..120]);
        assert!(coalesce(&[], 10).is_empty());
    }

    #[test]
    fn every_range_lies_inside_one_coalesced_range() {
        let mut rng = mlinfra_test_utils::rng::SplitMix64::new(7);
        let mut below = |n: u64| rng.next_u64() % n;
        for _ in 0..200 {
            let ranges: Vec<Range<u64>> = (0..below(20))
                .map(|_| {
                    let start = below(10_000);
                    start..start + below(500)
                })
                .collect();
            let gap = below(300);
            let merged = coalesce(&ranges, gap);
            for w in merged.windows(2) {
                assert!(
                    w[1].start > w[0].end + gap,
                    "{merged:?} not maximally merged"
                );
            }
            for r in ranges.iter().filter(|r| r.start < r.end) {
                assert_eq!(
                    merged
                        .iter()
                        .filter(|m| m.start <= r.start && r.end <= m.end)
                        .count(),
                    1
                );
            }
        }
    }
}
