//! [`Streaming`]: a dataset in an object store, read through a local shard cache that never
//! holds more than a byte budget.
//!
//! # How
//!
//! The dataset is described by its [`Manifest`]: every shard's URI, size, rows and content
//! hash. A shard is fetched whole into the cache directory, hashed on the way and renamed into
//! place under its hash only if the hash matches the manifest: a file in the cache is a
//! verified shard, and a changed or corrupted object is an error naming it, never data. Reads
//! are then local `take`s on the memory-mapped file.
//!
//! **Ahead of consumption.** The loader tells the source which samples come a few batches
//! ahead ([`Source::prefetch`]); a fetcher thread downloads their shards while the current ones
//! are read. With a block shuffle whose block is a shard (see [`Streaming::shard_rows`]), an
//! epoch reads shard after shard and each is downloaded before it is needed.
//!
//! **The budget.** Before a download, shards are evicted, least recently used first, until the
//! new one fits: the files in the directory never exceed the budget. A shard is pinned while a
//! worker reads from it and is never evicted then; a download that cannot fit waits for a pin
//! to go. A worker pins one shard at a time, so `budget >= workers × largest shard` keeps every
//! worker busy, and any budget holding the largest shard makes progress.
//!
//! **Processes.** Fetches and evictions hold an exclusive lock on `DIR/.lock`, so several
//! processes (the ranks of one machine) can share one directory: each shard is downloaded once
//! while it stays cached, and usage is computed from the files on disk. A file found there
//! is not trusted for its name: its size and content hash are checked before it is used (one
//! read of it), and a file that fails is downloaded again. A shard is opened and
//! memory-mapped before the lock is released, so a file another process deletes later stays
//! readable here (Unix keeps a deleted file's mapped pages); a process drops its entry for a
//! deleted shard as soon as none of its workers reads it, which frees the disk space. Pins are
//! per process: another process may evict a shard this one reads, at the price of a second
//! download if it is needed again.
//!
//! **Limits.** Downloads run one at a time per directory, under the lock (parallel downloads
//! need per-shard reservations); a stalled GET stalls the others. Only files named like
//! shards (64 hex digits, `.parquet`) are ever counted or evicted. The access pattern matters:
//! an exact shuffle over a streaming source touches every shard in every batch and, with a
//! budget below the dataset, downloads shards over and over; use a block shuffle.
//!
//! MosaicML Streaming's `cache_limit` is the model; unlike it, eviction is by file, shards are
//! verified by content hash, and the whole design keeps the loader's O(1) resume: a resumed
//! epoch fetches only the shards it still reads.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use arrow::datatypes::SchemaRef;
use crossbeam_channel::Sender;
use mlinfra_data::{Dataset, Manifest, RowRefs, ShardEntry};

use crate::source::{Source, SourceCounters};
use crate::{Error, Result};

/// Configures a [`Streaming`] source; from [`Streaming::builder`].
#[derive(Debug, Clone)]
pub struct StreamingBuilder {
    manifest: Manifest,
    dir: PathBuf,
    budget: u64,
    options: Vec<(String, String)>,
    columns: Option<Vec<String>>,
}

impl StreamingBuilder {
    /// Object-store options, as [`DatasetBuilder::with_storage_option`] takes them.
    ///
    /// [`DatasetBuilder::with_storage_option`]: mlinfra_data::DatasetBuilder::with_storage_option
    pub fn storage_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// Only these columns.
    pub fn columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Creates the cache directory if needed, reads the schema from the first shard (fetching
    /// it), and starts the fetcher thread.
    ///
    /// # Errors
    ///
    /// [`Error::CacheBudget`] when the budget cannot hold the largest shard; [`Error::Data`]
    /// when the directory cannot be created or the first shard cannot be fetched or opened;
    /// [`Error::ShardCorrupt`] when its hash differs from the manifest.
    pub fn build(self) -> Result<Streaming> {
        let largest = self.manifest.shards().iter().map(|s| s.bytes).max();
        let Some(largest) = largest else {
            return Err(Error::InvalidPlan {
                reason: "streaming: the manifest lists no shards".into(),
            });
        };
        if let Some(entry) = self
            .manifest
            .shards()
            .iter()
            .find(|entry| hash_hex(&entry.content_hash).is_none())
        {
            return Err(Error::ShardCorrupt {
                uri: entry.uri.as_str().into(),
                reason: format!(
                    "the manifest's content hash `{}` is not `blake3:` and 64 hex digits",
                    entry.content_hash
                )
                .into(),
            });
        }
        if largest > self.budget {
            return Err(Error::CacheBudget {
                needed: largest,
                budget: self.budget,
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut starts = vec![0];
        for shard in self.manifest.shards() {
            starts.push(starts.last().copied().unwrap_or(0) + shard.rows);
        }
        let inner = Arc::new(Inner {
            fingerprint: self.manifest.fingerprint().to_owned(),
            shards: self.manifest.shards().to_vec(),
            starts,
            options: self.options,
            columns: self.columns,
            dir: self.dir,
            budget: self.budget,
            resident: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            queued: Mutex::new(HashSet::new()),
        });
        let schema = inner.acquire(0)?.dataset.schema().clone();
        let (hints, wanted) = crossbeam_channel::unbounded::<usize>();
        let fetcher = {
            let worker = inner.clone();
            std::thread::Builder::new()
                .name("mlinfra-shard-fetcher".into())
                .spawn(move || {
                    for shard in wanted {
                        if worker.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        // A failed prefetch is retried, and reported, by the read that needs it.
                        drop(worker.acquire(shard));
                        worker.lock_queued().remove(&shard);
                    }
                })
                .map_err(|e| io_error(&inner.dir, e))?
        };
        Ok(Streaming {
            inner,
            schema,
            hints: Some(hints),
            fetcher: Some(fetcher),
        })
    }
}

/// A dataset in an object store read through a byte-budgeted local shard cache; see the
/// [module docs](self).
///
/// ```no_run
/// use mlinfra_data::Manifest;
/// use mlinfra_loader::{Loader, Shuffle, Streaming};
///
/// let manifest = Manifest::read("train.manifest.json")?;
/// let source = Streaming::builder(manifest, "/scratch/shards", 20 << 30) // 20 GiB
///     .storage_option("aws_region", "us-east-1")
///     .build()?;
/// let block = source.shard_rows();
/// let loader = Loader::builder(source, 256)
///     .shuffle(Shuffle::Block { block, window: 1 })
///     .build()?;
/// # let _ = loader;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Streaming {
    inner: Arc<Inner>,
    schema: SchemaRef,
    hints: Option<Sender<usize>>,
    fetcher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("dir", &self.inner.dir)
            .field("budget", &self.inner.budget)
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl Streaming {
    /// A streaming source over the shards of `manifest`, cached in `dir`, holding at most
    /// `budget` bytes of shards there.
    pub fn builder(manifest: Manifest, dir: impl Into<PathBuf>, budget: u64) -> StreamingBuilder {
        StreamingBuilder {
            manifest,
            dir: dir.into(),
            budget,
            options: Vec::new(),
            columns: None,
        }
    }

    /// Rows of the largest shard: the block of a block shuffle that reads one shard at a time.
    pub fn shard_rows(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.rows)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// Bytes of shards in the cache directory now (all processes' downloads).
    ///
    /// # Errors
    ///
    /// [`Error::Data`] when the directory cannot be listed.
    pub fn cached_bytes(&self) -> Result<u64> {
        Ok(self.inner.cached_files()?.iter().map(|f| f.bytes).sum())
    }

    /// The most bytes the directory held right after any download by this process.
    pub fn peak_cached_bytes(&self) -> u64 {
        self.inner.counters.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // Queued hints are abandoned, not downloaded: the fetcher stops at the next one.
        self.inner.stop.store(true, Ordering::Relaxed);
        self.hints = None;
        if let Some(fetcher) = self.fetcher.take() {
            let _ = fetcher.join();
        }
    }
}

impl Source for Streaming {
    fn num_samples(&self) -> u64 {
        *self.inner.starts.last().unwrap_or(&0)
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(self.inner.fingerprint.clone())
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn rows(&self, ids: &[u64]) -> Result<RowRefs> {
        if ids.is_empty() {
            return Ok(RowRefs::empty(self.schema.clone()));
        }
        let total = self.num_samples();
        // Group the ids by shard; read each shard with one pin held at a time.
        let mut by_shard: Vec<(usize, Vec<u64>)> = Vec::new();
        let mut order = Vec::with_capacity(ids.len());
        for &id in ids {
            if id >= total {
                return Err(mlinfra_data::Error::RowOutOfRange {
                    index: id,
                    rows: total,
                }
                .into());
            }
            let shard = self.inner.shard_of(id);
            let slot = match by_shard.iter().position(|(s, _)| *s == shard) {
                Some(slot) => slot,
                None => {
                    by_shard.push((shard, Vec::new()));
                    by_shard.len() - 1
                }
            };
            let local = id - self.inner.starts[shard];
            order.push((slot, by_shard[slot].1.len()));
            by_shard[slot].1.push(local);
        }
        let mut parts = Vec::with_capacity(by_shard.len());
        for (shard, locals) in &by_shard {
            // Pinned for the read only: the pin goes when `pinned` drops, also on a panic.
            let pinned = self.inner.acquire(*shard)?;
            let taken = pinned.dataset.take(locals)?;
            drop(pinned);
            parts.push(RowRefs::from_batch(taken));
        }
        RowRefs::merge(parts, &order).ok_or_else(|| Error::InvalidPlan {
            reason: "streaming: a shard's columns differ from the first shard's".into(),
        })
    }

    fn prefetch(&self, _epoch: u64, ids: &[u64]) {
        let Some(hints) = &self.hints else {
            return;
        };
        let mut last = None;
        for &id in ids {
            if id < self.num_samples() {
                let shard = self.inner.shard_of(id);
                if last != Some(shard)
                    && !self.inner.is_resident(shard)
                    && self.inner.lock_queued().insert(shard)
                {
                    let _ = hints.send(shard);
                }
                last = Some(shard);
            }
        }
    }

    fn wants_prefetch(&self) -> bool {
        true
    }

    fn counters(&self) -> SourceCounters {
        let c = &self.inner.counters;
        SourceCounters {
            bytes_read: c.fetched.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            cache_evictions: c.evictions.load(Ordering::Relaxed),
        }
    }
}

/// A local I/O failure on `path`, as the data layer reports them.
fn io_error(path: &Path, source: std::io::Error) -> Error {
    mlinfra_data::Error::Io {
        path: path.into(),
        source,
    }
    .into()
}

struct Inner {
    fingerprint: String,
    shards: Vec<ShardEntry>,
    /// `starts[i]` is the first id of shard `i`; one extra entry holds the total.
    starts: Vec<u64>,
    options: Vec<(String, String)>,
    columns: Option<Vec<String>>,
    dir: PathBuf,
    budget: u64,
    /// Shards this process has open, with their pin counts.
    resident: Mutex<HashMap<usize, Resident>>,
    /// Signalled when a shard becomes ready, or a pin is released.
    changed: Condvar,
    counters: Counters,
    /// Set when the source is dropped: the fetcher abandons what is queued.
    stop: AtomicBool,
    /// Shards hinted and not yet taken up by the fetcher (no duplicate downloads queued).
    queued: Mutex<HashSet<usize>>,
}

/// A shard pinned for reading: this process does not evict it until the guard drops.
struct Pinned<'a> {
    inner: &'a Inner,
    shard: usize,
    dataset: Arc<Dataset>,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.inner.release(self.shard);
    }
}

/// Marks a shard `Fetching` in this process; if the fetch ends without a result (a panic),
/// dropping it clears the mark so that waiters retry instead of waiting forever.
struct FetchingMark<'a> {
    inner: &'a Inner,
    shard: usize,
    done: bool,
}

impl Drop for FetchingMark<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.lock_resident().remove(&self.shard);
            self.inner.changed.notify_all();
        }
    }
}

enum Resident {
    /// Some thread of this process is fetching it.
    Fetching,
    Ready {
        dataset: Arc<Dataset>,
        pins: usize,
    },
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    evictions: AtomicU64,
    fetched: AtomicU64,
    peak: AtomicU64,
}

/// A verified shard file in the cache directory.
struct CachedFile {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

impl Inner {
    fn shard_of(&self, id: u64) -> usize {
        self.starts.partition_point(|&start| start <= id) - 1
    }

    fn is_resident(&self, shard: usize) -> bool {
        self.lock_resident().contains_key(&shard)
    }

    fn lock_resident(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Resident>> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_queued(&self) -> std::sync::MutexGuard<'_, HashSet<usize>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open shard, fetched first if needed, pinned until the returned guard drops.
    fn acquire(&self, shard: usize) -> Result<Pinned<'_>> {
        let path = self.dir.join(self.file_name(shard));
        let mut resident = self.lock_resident();
        loop {
            match resident.get_mut(&shard) {
                Some(Resident::Ready { dataset, pins }) => {
                    // Another process may have evicted the file. If nobody here reads it, the
                    // entry goes (its mapping with it, so the disk space is freed) and the
                    // shard is fetched again; a shard being read stays valid: it is mapped.
                    if *pins == 0 && !path.is_file() {
                        resident.remove(&shard);
                        continue;
                    }
                    *pins += 1;
                    let dataset = dataset.clone();
                    drop(resident);
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    touch(&path);
                    return Ok(Pinned {
                        inner: self,
                        shard,
                        dataset,
                    });
                }
                Some(Resident::Fetching) => {
                    resident = self
                        .changed
                        .wait(resident)
                        .unwrap_or_else(|e| e.into_inner());
                }
                None => break,
            }
        }
        resident.insert(shard, Resident::Fetching);
        drop(resident);
        let mut mark = FetchingMark {
            inner: self,
            shard,
            done: false,
        };
        let opened = self.fetch(shard);
        let mut resident = self.lock_resident();
        mark.done = true;
        let result = match opened {
            Ok(dataset) => {
                let dataset = Arc::new(dataset);
                resident.insert(
                    shard,
                    Resident::Ready {
                        dataset: dataset.clone(),
                        pins: 1,
                    },
                );
                Ok(Pinned {
                    inner: self,
                    shard,
                    dataset,
                })
            }
            Err(error) => {
                resident.remove(&shard);
                Err(error)
            }
        };
        self.changed.notify_all();
        result
    }

    fn release(&self, shard: usize) {
        let mut resident = self.lock_resident();
        if let Some(Resident::Ready { pins, .. }) = resident.get_mut(&shard) {
            *pins = pins.saturating_sub(1);
        }
        self.changed.notify_all();
    }

    /// The cache file name of a shard: its content hash, so a file there is a verified shard.
    fn file_name(&self, shard: usize) -> String {
        let hash = &self.shards[shard].content_hash;
        // Checked at build: every hash is `blake3:` and 64 hex digits.
        format!("{}.parquet", hash_hex(hash).unwrap_or("invalid"))
    }

    /// Makes shard `shard` a verified file in the cache (evicting others to fit), then opens
    /// it.
    fn fetch(&self, shard: usize) -> Result<Dataset> {
        let entry = &self.shards[shard];
        let path = self.dir.join(self.file_name(shard));
        let _lock = self.lock_dir()?;
        if path.is_file() && self.cached_file_is_intact(shard, &path) {
            // Downloaded already (by another process, or before an eviction here).
            touch(&path);
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            // Gone, or not what its name says (another process's bug, a disk error, a hostile
            // writer in a shared directory): downloaded again.
            let _ = std::fs::remove_file(&path);
            self.remove_stale_downloads()?;
            self.make_room(entry.bytes, &path)?;
            let tmp = self
                .dir
                .join(format!(".fetch-{}-{shard}", std::process::id()));
            // Stopped at the manifest's size (which its fingerprint covers): the budget holds
            // whatever the object store serves.
            let hash =
                mlinfra_data::storage::fetch_file(&entry.uri, &self.options, &tmp, entry.bytes);
            let hash = match hash {
                Ok(hash) => hash,
                Err(error) => {
                    let _ = std::fs::remove_file(&tmp);
                    let oversized = matches!(&error, mlinfra_data::Error::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::FileTooLarge);
                    if oversized {
                        return Err(Error::ShardCorrupt {
                            uri: entry.uri.as_str().into(),
                            reason: format!(
                                "holds more than the {} bytes the manifest records",
                                entry.bytes
                            )
                            .into(),
                        });
                    }
                    return Err(error.into());
                }
            };
            if hash != entry.content_hash {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::ShardCorrupt {
                    uri: entry.uri.as_str().into(),
                    reason: format!(
                        "content hash {hash}, the manifest records {}",
                        entry.content_hash
                    )
                    .into(),
                });
            }
            std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
            mlinfra_data::files::sync_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
            self.counters
                .fetched
                .fetch_add(entry.bytes, Ordering::Relaxed);
            let usage: u64 = self.cached_files()?.iter().map(|f| f.bytes).sum();
            self.counters.peak.fetch_max(usage, Ordering::Relaxed);
        }
        // Opened (and mapped) while the directory lock is still held: see `open_mapped`.
        self.open_mapped(shard, &path)
    }

    /// Opens the cached file of `shard` and maps it now. A dataset maps its file on first read;
    /// once mapped, the file may be evicted (deleted) by another process without harm, but
    /// before that a deletion would make the first read fail. So this runs under the directory
    /// lock, with one single-row read forcing the mapping.
    fn open_mapped(&self, shard: usize, path: &Path) -> Result<Dataset> {
        let entry = &self.shards[shard];
        let dataset = Dataset::open(path.to_str().ok_or_else(|| Error::InvalidPlan {
            reason: format!("streaming: cache path {} is not UTF-8", path.display()).into(),
        })?)?;
        if dataset.num_rows() != entry.rows {
            return Err(Error::ShardCorrupt {
                uri: entry.uri.as_str().into(),
                reason: format!(
                    "{} rows, the manifest records {}",
                    dataset.num_rows(),
                    entry.rows
                )
                .into(),
            });
        }
        let dataset = match &self.columns {
            Some(columns) => dataset.project(columns)?,
            None => dataset,
        };
        if entry.rows > 0 {
            dataset.take(&[0])?;
        }
        Ok(dataset)
    }

    /// Evicts least-recently-used shards not pinned here until `incoming` bytes fit; waits for
    /// pins to go when nothing can be evicted yet. Called with the directory lock held.
    fn make_room(&self, incoming: u64, keep: &Path) -> Result<()> {
        loop {
            let mut files = self.cached_files()?;
            let usage: u64 = files.iter().map(|f| f.bytes).sum();
            if usage + incoming <= self.budget {
                return Ok(());
            }
            files.sort_by_key(|f| f.used);
            let mut resident = self.lock_resident();
            // Shards being read stay. (A shard being fetched is opened and mapped before the
            // directory lock is released, so no file is ever deleted between its fetch and its
            // first read.)
            let pinned: Vec<PathBuf> = resident
                .iter()
                .filter(|(_, r)| matches!(r, Resident::Ready { pins, .. } if *pins > 0))
                .map(|(&shard, _)| self.dir.join(self.file_name(shard)))
                .collect();
            let victim = files
                .iter()
                .find(|f| f.path != keep && !pinned.contains(&f.path));
            match victim {
                Some(victim) => {
                    // Forget it here first, so no thread of this process reads it after.
                    resident.retain(|&shard, r| {
                        !(matches!(r, Resident::Ready { .. })
                            && self.dir.join(self.file_name(shard)) == victim.path)
                    });
                    drop(resident);
                    std::fs::remove_file(&victim.path).map_err(|e| io_error(&victim.path, e))?;
                    self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None if pinned.is_empty() => {
                    // Nothing of ours is pinned and nothing can go: other processes' files
                    // fill the budget beyond what one shard needs.
                    return Err(Error::CacheBudget {
                        needed: usage + incoming,
                        budget: self.budget,
                    });
                }
                None => {
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(stopped(&self.dir));
                    }
                    // Wait for a worker to finish with its shard.
                    let _unused = self
                        .changed
                        .wait_timeout(resident, std::time::Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Whether the cached file of `shard` is the verified shard its name promises: the
    /// manifest's size and content hash, re-read now. A file in a shared directory is not
    /// trusted because of its name: whoever wrote it, this process checks what it maps. Costs
    /// one read of the shard (hashed on all cores), each time this process takes the shard from
    /// disk rather than from the network.
    fn cached_file_is_intact(&self, shard: usize, path: &Path) -> bool {
        let entry = &self.shards[shard];
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() == entry.bytes)
            && mlinfra_data::storage::content_hash(path)
                .is_ok_and(|hash| hash == entry.content_hash)
    }

    /// Deletes partial downloads left by a process killed mid-fetch. Called with the directory
    /// lock held: only the lock holder downloads, so every `.fetch-*` file then is stale.
    fn remove_stale_downloads(&self) -> Result<()> {
        let io = |e| io_error(&self.dir, e);
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with(".fetch-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The verified shard files in the directory (not temporary or lock files).
    fn cached_files(&self) -> Result<Vec<CachedFile>> {
        let io = |e| io_error(&self.dir, e);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Only files this cache names (64 hex digits): never a user's own Parquet files.
            let is_shard = name.strip_suffix(".parquet").is_some_and(|stem| {
                stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !is_shard {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue; // evicted by another process meanwhile
            };
            files.push(CachedFile {
                path: entry.path(),
                bytes: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        Ok(files)
    }

    /// The directory-wide lock that serializes fetches and evictions across processes. Polled
    /// rather than blocked on, so that a dropped source's fetcher gives up while another
    /// process holds the lock for a long download, instead of holding up the drop.
    fn lock_dir(&self) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(stopped(&self.dir));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&path, e)),
            }
        }
    }
}

/// What a fetch of a dropped source returns instead of waiting on.
fn stopped(dir: &Path) -> Error {
    io_error(
        dir,
        std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "the streaming source was dropped",
        ),
    )
}

/// The 64 hex digits of a `blake3:` content hash; `None` for anything else.
fn hash_hex(hash: &str) -> Option<&str> {
    let hex = hash.strip_prefix("blake3:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Sets a cached shard's modification time to now: its last use, which eviction orders by.
fn touch(path: &Path) {
    // Best effort: a file evicted meanwhile has no time to set.
    let _ = File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}
