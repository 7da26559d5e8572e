//! The Arrow IPC cache: a dataset (or a projection of it) materialised as uncompressed,
//! 64-byte-aligned Arrow IPC files that are memory-mapped and read without copying.
//!
//! This is the loader's fast path. Parquet is compact but every read decodes; the cache pays
//! that once, after which [`IpcCache::take`] is a gather from the page cache and
//! [`IpcCache::batches`] hands out views of it. pyarrow's memory-mapped IPC files and HF
//! `datasets`' Arrow cache are the same idea.
//!
//! # Layout
//!
//! ```text
//! DIR/mlinfra-cache.json   index: format, source fingerprint, columns, files with row counts
//! DIR/part-00000.arrow     Arrow IPC file format, uncompressed, 64-byte aligned
//! DIR/part-00001.arrow     ...
//! ```
//!
//! The cache records the fingerprint of the dataset it was built from and the projected
//! columns; [`IpcCacheBuilder::open_or_create`] reuses a cache only when both match, so a
//! changed source is never served stale. A cache is built in a temporary sibling directory and
//! renamed into place: readers see a whole cache or none.
//!
//! # Costs
//!
//! Building: one full scan of the projected columns, written at disk speed (and hashed on the
//! way); disk use is the decoded size. Opening: one footer per file. [`IpcCache::take`]: a
//! binary search per row and one copy of each requested row; batches decode lazily on first
//! touch (see [`IpcFile`]).
//!
//! # Integrity
//!
//! Every read validates structure: footers, message headers and buffer bounds, so a damaged
//! file is a typed error, never a panic or an out-of-bounds read. Values are not checked on
//! read: the index records each file's BLAKE3 hash, and [`IpcCache::verify`] compares them (a
//! read of every byte, on all cores). Not on every open, on purpose: opening in O(footers) and
//! reading only the rows asked for is what the cache is for, and hashing a many-gigabyte cache
//! at each start would cost more than most epochs read. Verify after a crash, a copy between
//! machines, or whenever silent corruption would matter more than a minute.

mod ipc_file;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::MetadataVersion;
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use serde::{Deserialize, Serialize};

pub use ipc_file::IpcFile;

use crate::dataset::Dataset;
use crate::manifest::schema_fingerprint;
use crate::materialize::Tally;
use crate::storage::FileRef;
use crate::{Error, Result};

/// The cache format this build writes and reads.
pub const CACHE_FORMAT: u32 = 2;

/// Name of the index file inside a cache directory.
pub const INDEX_FILE: &str = "mlinfra-cache.json";

/// Default rows per record batch in cache files.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// Default size at which a cache file is closed and the next one started: 1 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// The default cap of a cache, as a multiple of its source's Parquet bytes: 100. See
/// [`IpcCacheBuilder::with_max_bytes`].
pub const DEFAULT_MAX_EXPANSION: u64 = 100;

/// The least the default cap of a cache allows: 64 MiB, so that small, highly compressed
/// datasets still build. See [`IpcCacheBuilder::with_max_bytes`].
pub const DEFAULT_MIN_MAX_BYTES: u64 = 64 << 20;

/// Buffer alignment of cache files: a cache line, and what SIMD loads want.
const ALIGNMENT: usize = 64;

/// The index stored as [`INDEX_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheIndex {
    format: u32,
    /// Fingerprint of the dataset the cache was built from.
    source_fingerprint: String,
    /// The projected columns, in order.
    columns: Vec<String>,
    schema_fingerprint: String,
    files: Vec<CacheFileEntry>,
    /// Size and modification time of each source file at build time: the cheap staleness
    /// check of [`IpcCacheBuilder::open_or_create`].
    sources: Vec<SourceStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceStamp {
    path: String,
    bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    modified_ns: u64,
}

fn source_stamps(dataset: &Dataset) -> Result<Vec<SourceStamp>> {
    dataset
        .shards()
        .iter()
        .map(|shard| {
            let path = shard.path();
            let (bytes, modified_ns) = FileRef::of_shard(shard)
                .stat()?
                .ok_or_else(|| Error::io(path, std::io::ErrorKind::NotFound.into()))?;
            Ok(SourceStamp {
                path: path.to_string_lossy().into_owned(),
                bytes,
                modified_ns,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFileEntry {
    name: String,
    rows: u64,
    /// `blake3:` and the hex BLAKE3 hash of the file's bytes ([`IpcCache::verify`]).
    content_hash: String,
}

/// Options for building an [`IpcCache`]; from [`Dataset::ipc_cache`].
#[derive(Debug, Clone)]
#[must_use = "a cache builder does nothing until `create` or `open_or_create` is called"]
pub struct IpcCacheBuilder {
    dataset: Dataset,
    dir: PathBuf,
    batch_rows: usize,
    max_file_bytes: u64,
    /// `None`: [`DEFAULT_MAX_EXPANSION`] times the source, at least [`DEFAULT_MIN_MAX_BYTES`].
    max_bytes: Option<u64>,
}

impl Dataset {
    /// A builder for the IPC cache of this view (its projected columns) in `dir`.
    ///
    /// ```no_run
    /// # use mlinfra_data::Dataset;
    /// let dataset = Dataset::open("data/")?.project(&["emb", "label"])?;
    /// let cache = dataset.ipc_cache("/tmp/train-cache").open_or_create()?;
    /// let batch = cache.take(&[42, 7, 99_000])?;
    /// # Ok::<(), mlinfra_data::Error>(())
    /// ```
    pub fn ipc_cache(&self, dir: impl Into<PathBuf>) -> IpcCacheBuilder {
        IpcCacheBuilder {
            dataset: self.clone(),
            dir: dir.into(),
            batch_rows: DEFAULT_BATCH_ROWS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_bytes: None,
        }
    }
}

impl IpcCacheBuilder {
    /// Rows per record batch (at least 1). Batches are the unit of lazy decoding.
    ///
    /// Defaults to [`DEFAULT_BATCH_ROWS`].
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// Start a new cache file once the current one holds this many bytes of arrays.
    ///
    /// Defaults to [`DEFAULT_MAX_FILE_BYTES`].
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes.max(1);
        self
    }

    /// The most bytes of arrays the cache may hold; a build that would write more stops with
    /// [`Error::MaterializeLimit`] and leaves no cache. A cache holds the decoded data, which
    /// is larger than the Parquet it comes from, usually a few times; a file decoding to far
    /// more is a decompression bomb (a 1 KB file whose rows all reference one 1 MB dictionary
    /// value decodes to gigabytes), and this stops it before the disk fills.
    ///
    /// Defaults to [`DEFAULT_MAX_EXPANSION`] times the dataset's Parquet bytes, and at least
    /// [`DEFAULT_MIN_MAX_BYTES`] (Apache POI guards ZIP files the same way, at the same
    /// ratio).
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// The cap in force ([`IpcCacheBuilder::with_max_bytes`]).
    fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or_else(|| {
            let source: u64 = self.dataset.shards().iter().map(|s| s.size()).sum();
            source
                .saturating_mul(DEFAULT_MAX_EXPANSION)
                .max(DEFAULT_MIN_MAX_BYTES)
        })
    }

    /// Opens the cache in the directory if it was built from this dataset with the same
    /// columns; otherwise builds it, replacing a stale cache.
    ///
    /// "This dataset" is decided cheaply first: when every source file still has the size and
    /// modification time recorded at build time, the cache is reused without reading the
    /// source (the check `make` and `rsync` rely on). Otherwise the source is hashed and the
    /// cache reused only if the fingerprint is unchanged (a `touch` costs one hash, not a
    /// rebuild). Rewriting a file in place with the same size *and* restoring its mtime defeats
    /// the cheap check; call [`Manifest::verify`](crate::Manifest::verify) when that matters.
    ///
    /// # Errors
    ///
    /// As [`IpcCacheBuilder::create`]; a damaged existing cache is rebuilt, not an error.
    pub fn open_or_create(self) -> Result<IpcCache> {
        if self.dir.join(INDEX_FILE).exists()
            && let Ok(cache) = IpcCache::open(&self.dir)
            && cache.index.columns == column_names(&self.dataset)
            && (cache.index.sources == source_stamps(&self.dataset)?
                || cache.index.source_fingerprint == self.dataset.fingerprint()?)
        {
            return Ok(cache);
        }
        self.create()
    }

    /// Builds the cache, replacing any cache already in the directory.
    ///
    /// # Errors
    ///
    /// [`Error::CacheDirInUse`] when the directory exists, is not empty, and is not a cache
    /// (nothing is deleted); the dataset's read errors; [`Error::Io`] for the writes.
    pub fn create(self) -> Result<IpcCache> {
        let dir = &self.dir;
        if dir.exists() && !dir.join(INDEX_FILE).exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if entries.next().is_some() {
                return Err(Error::CacheDirInUse {
                    path: dir.as_path().into(),
                });
            }
        }
        let staging = staging_dir(dir);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let index = self
            .write_files(&staging)
            .inspect_err(|_| drop(std::fs::remove_dir_all(&staging)))?;
        // Replace the old cache: the window between removal and rename shows no cache, never
        // a mixed one.
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))?;
        // The rename survives a power cut only once the parent directory is synced.
        let parent = crate::files::parent_dir(dir);
        crate::files::sync_dir(parent).map_err(|e| Error::io(parent, e))?;
        IpcCache::from_index(dir, index)
    }

    /// Writes the cache files and the index into `staging`.
    fn write_files(&self, staging: &Path) -> Result<CacheIndex> {
        // Stamped before reading: a file changed during the build then fails the cheap check.
        let sources = source_stamps(&self.dataset)?;
        let mut files: Vec<CacheFileEntry> = Vec::new();
        let mut current: Option<PartWriter> = None;
        let written = AtomicU64::new(0);
        let mut tally = Tally::new(Path::new(self.dataset.uri()), self.max_bytes(), &written);
        for batch in self.dataset.scan().with_batch_size(self.batch_rows).build() {
            let batch = batch?;
            tally.add(&batch)?;
            let part = match &mut current {
                Some(part) => part,
                None => current.insert(PartWriter::create(staging, files.len(), &batch.schema())?),
            };
            part.write(&batch)?;
            if part.bytes >= self.max_file_bytes {
                files.push(current.take().expect("just written").finish()?);
            }
        }
        // An empty dataset still makes one (empty) file, which carries the schema.
        if current.is_none() && files.is_empty() {
            current = Some(PartWriter::create(staging, 0, self.dataset.schema())?);
        }
        if let Some(part) = current {
            files.push(part.finish()?);
        }
        let index = CacheIndex {
            format: CACHE_FORMAT,
            source_fingerprint: self.dataset.fingerprint()?.to_owned(),
            sources,
            columns: column_names(&self.dataset),
            schema_fingerprint: schema_fingerprint(self.dataset.schema()),
            files,
        };
        let json = serde_json::to_string_pretty(&index).expect("the index is plain data");
        let index_path = staging.join(INDEX_FILE);
        crate::files::write_atomic(&index_path, json.as_bytes())
            .map_err(|e| Error::io(&index_path, e))?;
        Ok(index)
    }
}

/// A writer that hashes what passes through it: a cache file's hash, with no second read.
struct HashingWriter {
    file: File,
    hasher: blake3::Hasher,
}

impl std::io::Write for HashingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// One cache file being written.
struct PartWriter {
    writer: FileWriter<BufWriter<HashingWriter>>,
    name: String,
    path: PathBuf,
    /// Array bytes written so far, the measure for rolling to the next file.
    bytes: u64,
    rows: u64,
}

impl PartWriter {
    fn create(dir: &Path, number: usize, schema: &arrow::datatypes::Schema) -> Result<Self> {
        let name = format!("part-{number:05}.arrow");
        let path = dir.join(&name);
        let file = crate::files::create_new(&path).map_err(|e| Error::io(&path, e))?;
        let options = IpcWriteOptions::try_new(ALIGNMENT, false, MetadataVersion::V5)
            .expect("64 is a valid IPC alignment");
        let hashing = HashingWriter {
            file,
            hasher: blake3::Hasher::new(),
        };
        let writer = FileWriter::try_new_with_options(
            BufWriter::with_capacity(8 << 20, hashing),
            schema,
            options,
        )
        .map_err(|e| Error::arrow(&path, e))?;
        Ok(PartWriter {
            writer,
            name,
            path,
            bytes: 0,
            rows: 0,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| Error::arrow(&self.path, e))?;
        self.bytes += batch.get_array_memory_size() as u64;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Writes the footer and flushes the file to disk.
    fn finish(mut self) -> Result<CacheFileEntry> {
        let path = &self.path;
        self.writer.finish().map_err(|e| Error::arrow(path, e))?;
        let HashingWriter { file, hasher } = self
            .writer
            .into_inner()
            .map_err(|e| Error::arrow(path, e))?
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        Ok(CacheFileEntry {
            name: self.name,
            rows: self.rows,
            content_hash: format!("blake3:{}", hasher.finalize().to_hex()),
        })
    }
}

fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    dir.with_file_name(name)
}

fn column_names(dataset: &Dataset) -> Vec<String> {
    dataset
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// A dataset materialised as memory-mapped Arrow IPC files; see the [module docs](self).
#[derive(Debug)]
pub struct IpcCache {
    dir: PathBuf,
    index: CacheIndex,
    files: Vec<IpcFile>,
    schema: SchemaRef,
    /// Every (file, batch) in row order, with the global first row of each; one extra entry
    /// holds the row count.
    chunk_starts: Vec<u64>,
    chunks: Vec<(usize, usize)>,
}

impl IpcCache {
    /// Opens the cache in `dir`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] for a missing index or file; [`Error::InvalidManifest`] for an index that
    /// is not valid; [`Error::CorruptMetadata`] when a file disagrees with the index (rows,
    /// schema); the errors of [`IpcFile::open`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let index_path = dir.join(INDEX_FILE);
        let json = crate::files::read_regular(&index_path, crate::manifest::MAX_MANIFEST_BYTES)
            .map_err(|e| Error::io(&index_path, e))?;
        let invalid = |what: String| Error::InvalidManifest {
            path: index_path.as_path().into(),
            what: what.into(),
        };
        let index: CacheIndex = serde_json::from_slice(&json)
            .map_err(|e| invalid(format!("not a cache index: {e}")))?;
        if index.format != CACHE_FORMAT {
            return Err(invalid(format!(
                "format {} (this build reads format {CACHE_FORMAT})",
                index.format
            )));
        }
        Self::from_index(dir, index)
    }

    fn from_index(dir: &Path, index: CacheIndex) -> Result<Self> {
        let mut files = Vec::with_capacity(index.files.len());
        let mut chunks = Vec::new();
        let mut chunk_starts = vec![0u64];
        for (i, entry) in index.files.iter().enumerate() {
            if entry.name.contains(['/', '\\']) || entry.name.starts_with('.') {
                return Err(Error::InvalidManifest {
                    path: dir.join(INDEX_FILE).into(),
                    what: format!("file name `{}` leaves the cache directory", entry.name).into(),
                });
            }
            let file = IpcFile::open(dir.join(&entry.name))?;
            let mismatch = |what: String| Error::CorruptMetadata {
                path: file.path().into(),
                what: what.into(),
            };
            if file.num_rows() != entry.rows {
                return Err(mismatch(format!(
                    "holds {} rows where the cache index records {}",
                    file.num_rows(),
                    entry.rows
                )));
            }
            if schema_fingerprint(file.schema()) != index.schema_fingerprint {
                return Err(mismatch("schema differs from the cache index".into()));
            }
            let base = *chunk_starts.last().expect("starts with 0");
            for (batch, start) in file.batch_starts()[1..].iter().enumerate() {
                chunks.push((i, batch));
                // Each file's counts were checked; their sum across files is checked here.
                let end = base.checked_add(*start).ok_or_else(|| {
                    mismatch("row counts overflow across the cache's files".into())
                })?;
                chunk_starts.push(end);
            }
            files.push(file);
        }
        let schema = match files.first() {
            Some(file) => file.schema().clone(),
            // The builder always writes at least one file, which carries the schema.
            None => {
                return Err(Error::InvalidManifest {
                    path: dir.join(INDEX_FILE).into(),
                    what: "the cache holds no files".into(),
                });
            }
        };
        Ok(IpcCache {
            dir: dir.to_path_buf(),
            index,
            files,
            schema,
            chunk_starts,
            chunks,
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The schema of the cached columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows in the cache.
    pub fn num_rows(&self) -> u64 {
        *self.chunk_starts.last().expect("never empty")
    }

    /// Fingerprint of the dataset the cache was built from.
    pub fn source_fingerprint(&self) -> &str {
        &self.index.source_fingerprint
    }

    /// The cache files, in row order.
    pub fn files(&self) -> &[IpcFile] {
        &self.files
    }

    /// Checks every file's bytes against the hash the index recorded when the cache was built
    /// (see [Integrity](self#integrity)): a read of the whole cache, hashed on all cores.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptMetadata`] naming the first file whose bytes changed.
    pub fn verify(&self) -> Result<()> {
        for (file, entry) in self.files.iter().zip(&self.index.files) {
            let mut hasher = blake3::Hasher::new();
            hasher.update_rayon(file.mapped_bytes());
            let actual = format!("blake3:{}", hasher.finalize().to_hex());
            if actual != entry.content_hash {
                return Err(Error::CorruptMetadata {
                    path: file.path().into(),
                    what: format!(
                        "content hash {actual}, the cache index records {} (changed since the \
                         cache was built)",
                        entry.content_hash
                    )
                    .into(),
                });
            }
        }
        Ok(())
    }

    /// Every batch in row order, decoded on first touch; each is a view of the mapping (an
    /// `Arc` clone, no data copied).
    pub fn batches(&self) -> impl Iterator<Item = Result<RecordBatch>> + '_ {
        self.chunks
            .iter()
            .map(|&(file, batch)| self.files[file].batch(batch).cloned())
    }

    /// The rows at `indices` (global row numbers), in that order; indices may repeat. One copy
    /// per requested row (arrow's `interleave`; none when they are consecutive rows of one
    /// batch: a slice of it), no decoding beyond first touch of a batch.
    ///
    /// # Errors
    ///
    /// As [`IpcCache::locate`]; [`Error::Arrow`] if the batches cannot be interleaved.
    pub fn take(&self, indices: &[u64]) -> Result<RecordBatch> {
        self.locate(indices)?
            .interleave()
            .map_err(|e| Error::arrow(&self.dir, e))
    }

    /// Where the rows at `indices` live, without copying them: views of the batches that hold
    /// them and each row's place in those batches. What [`IpcCache::take`] copies from, and
    /// what a collate step gathers straight into its own buffers (one copy in all, not two).
    ///
    /// Costs a binary search per index and a sort of the distinct batches touched.
    ///
    /// # Errors
    ///
    /// [`Error::RowOutOfRange`] for an index `>= num_rows()`, checked before any read; the
    /// decode errors of [`IpcFile::batch`].
    pub fn locate(&self, indices: &[u64]) -> Result<RowRefs> {
        let rows = self.num_rows();
        if let Some(&index) = indices.iter().find(|&&i| i >= rows) {
            return Err(Error::RowOutOfRange { index, rows });
        }
        // Each index as (chunk, row in chunk); then the distinct chunks, decoded once each.
        let located: Vec<(usize, usize)> = indices
            .iter()
            .map(|&i| {
                let chunk = self.chunk_starts.partition_point(|&start| start <= i) - 1;
                (chunk, (i - self.chunk_starts[chunk]) as usize)
            })
            .collect();
        let mut touched: Vec<usize> = located.iter().map(|&(chunk, _)| chunk).collect();
        touched.sort_unstable();
        touched.dedup();
        let batches = touched
            .iter()
            .map(|&chunk| {
                let (file, batch) = self.chunks[chunk];
                self.files[file].batch(batch).cloned()
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = located
            .iter()
            .map(|&(chunk, row)| {
                let slot = touched.binary_search(&chunk).expect("every chunk kept");
                (slot, row)
            })
            .collect();
        Ok(RowRefs {
            schema: self.schema.clone(),
            batches,
            rows,
        })
    }
}

/// Rows referenced where they already are: record batches (views, no copy) and, for each row
/// in request order, the batch that holds it and its row number there.
///
/// From [`IpcCache::locate`]; [`RowRefs::from_batch`] wraps a batch that is already gathered.
#[derive(Debug, Clone)]
pub struct RowRefs {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rows: Vec<(usize, usize)>,
}

impl RowRefs {
    /// No rows, of `schema`.
    pub fn empty(schema: SchemaRef) -> RowRefs {
        RowRefs {
            schema,
            batches: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Every row of `batch`, in order.
    pub fn from_batch(batch: RecordBatch) -> RowRefs {
        let rows = (0..batch.num_rows()).map(|row| (0, row)).collect();
        RowRefs {
            schema: batch.schema(),
            batches: vec![batch],
            rows,
        }
    }

    /// Rows of several [`RowRefs`] in one: `order` lists `(part, row of that part)` pairs, and
    /// the result references those rows in that order, without copying any. How a source made
    /// of other sources (a weighted mixture) answers for a batch drawn from all of them.
    ///
    /// Parts must have the same fields; schema metadata may differ (writers such as pandas
    /// record per-file details there) and the first part's is kept.
    ///
    /// `None` when `parts` is empty, their fields differ, or a pair is out of range.
    pub fn merge(parts: Vec<RowRefs>, order: &[(usize, usize)]) -> Option<RowRefs> {
        let schema = parts.first()?.schema.clone();
        if parts
            .iter()
            .any(|part| part.schema.fields() != schema.fields())
        {
            return None;
        }
        // Each part's batches go after the previous parts' batches.
        let mut batch_base = Vec::with_capacity(parts.len());
        let mut total = 0;
        for part in &parts {
            batch_base.push(total);
            total += part.batches.len();
        }
        let rows = order
            .iter()
            .map(|&(part, row)| {
                let (batch, row) = *parts.get(part)?.rows.get(row)?;
                Some((batch_base[part] + batch, row))
            })
            .collect::<Option<Vec<_>>>()?;
        let batches = parts.into_iter().flat_map(|part| part.batches).collect();
        Some(RowRefs {
            schema,
            batches,
            rows,
        })
    }

    /// The schema every batch shares.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The batches the rows live in.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// For each row, in request order: (index into [`RowRefs::batches`], row in that batch).
    pub fn rows(&self) -> &[(usize, usize)] {
        &self.rows
    }

    /// Number of rows referenced.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is referenced.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// When the rows are consecutive rows of one batch: that batch's index in
    /// [`RowRefs::batches`] and the first row. Such rows can be handed on as a slice of the
    /// batch, without copying.
    pub fn as_contiguous(&self) -> Option<(usize, usize)> {
        let &(batch, first) = self.rows.first()?;
        let consecutive = self
            .rows
            .iter()
            .enumerate()
            .all(|(i, &(b, row))| b == batch && row == first + i);
        consecutive.then_some((batch, first))
    }

    /// The rows copied into one batch, in order (arrow's `interleave`; a slice when the rows
    /// are contiguous).
    ///
    /// # Errors
    ///
    /// Arrow's error if the batches cannot be interleaved (they share a schema by
    /// construction, so only allocation limits apply).
    pub fn interleave(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        if self.rows.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        if let Some((batch, first)) = self.as_contiguous() {
            return Ok(self.batches[batch].slice(first, self.rows.len()));
        }
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        arrow::compute::interleave_record_batch(&batches, &self.rows)
    }
}
