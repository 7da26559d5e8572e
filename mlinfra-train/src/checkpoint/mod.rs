//! Step-granular checkpoints: one file per rank plus a manifest, durable and verifiable.
//!
//! A checkpoint is a directory `step-000000001234/` under the checkpoint root:
//!
//! ```text
//! step-000000001234/
//!     rank-00000.bpk     rank 0's shard of the fp32 master weights and optimizer state
//!     rank-00001.bpk     (ZeRO-1: one per rank; replicated: rank 0's only, all are equal)
//!     manifest.json      step, layout, optimizer, loader state, RNG states, each file's
//!                        size and SHA-256: written last
//! ```
//!
//! **Durability.** Every file is written to a temp name, `fsync`ed, renamed into place, and the
//! directory `fsync`ed ([`Checkpointer`]). The manifest goes last, after every rank reports its
//! file durable, so a crash at any moment leaves the newest *complete* checkpoint intact and at
//! worst a directory without a manifest, which loading ignores. A failed write (disk full, no
//! permission) is reported on every rank and touches no earlier checkpoint.
//!
//! **Cost.** A rank file is streamed, never assembled in memory: its bytes are copied from the
//! state through a few cache-sized chunk buffers to the disk with direct I/O (no page-cache
//! copy; `O_DIRECT` where the file system has it), while a second thread computes its SHA-256
//! from the state itself. A save takes about as long as one SHA-256 pass over the file
//! (~1.5 GB/s with SHA-NI), which is as fast as `cp` + `sync` of the same bytes
//! (docs/BENCHMARKS.md, run C2).
//!
//! **Verification.** [`Checkpoint::latest`] takes the newest checkpoint whose manifest parses
//! and whose every file has the recorded size and SHA-256, agreed by all ranks; a truncated or
//! bit-flipped file makes it fall back to the previous one (and say why in
//! [`Checkpoint::skipped`]).
//!
//! **Async.** With [`SaveMode::Async`], `save` returns at once; a background thread copies the
//! state out of a deferred [`Snapshot`] (shared handles to burn's immutable tensors, taken in
//! O(1) by [`DataParallel::snapshot_deferred`](crate::DataParallel::snapshot_deferred)), then
//! writes it while training goes on, and [`Checkpointer::poll`] (called by every rank at each
//! step boundary) publishes the manifest once every rank's file is durable.
//! Changing the weights after `save` returns does not change what is written: the next update
//! makes new tensors rather than writing into ones a snapshot holds.
//!
//! **Resharding.** Files record which elements of the flat parameter vector they hold, so a
//! checkpoint saved by N ranks loads on M: each rank reads the files overlapping its new shard
//! and cuts them to it ([`DataParallel::resume`](crate::DataParallel::resume)).
//!
//! **Retention.** Rank 0 keeps the newest `keep_last` complete checkpoints up to the one it
//! just wrote and removes older ones (manifest first, so a half-removed checkpoint is never
//! taken for a complete one) and abandoned directories older than the one it just wrote. It
//! never removes the checkpoint it just wrote, nor any directory of a higher step (which this
//! run did not write). It does so on a background thread once the new manifest is durable:
//! unlinking a 100 MB+ file costs tens of milliseconds that neither a sync save nor the step
//! publishing an async one should wait for. [`Checkpointer::wait`] and dropping the
//! checkpointer finish it.
//!
//! **One run per directory.** A run that does not resume refuses a directory that already
//! holds complete checkpoints ([`Error::CheckpointDirInUse`], from
//! [`Trainer::new`](crate::Trainer::new); [`complete_steps`] lists them): its checkpoints would
//! interleave with the other run's, and a later resume would take whichever step is higher.

mod direct;
mod files;
mod interval;
mod manifest;
mod rank_file;
mod restore;
mod stream;

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use burn::optim::StateSink;
use mlinfra_loader::LoaderState;

pub use interval::{daly_interval, young_interval};
pub use manifest::{FileRecord, MANIFEST, Manifest};
pub use restore::Checkpoint;

use crate::collective::{Collective, all_gather_u64};
use crate::optim::OptimizerConfig;
use crate::{Error, ParamLayout, Result, Sharding};

/// One rank's training state at a step boundary: what [`Checkpointer::save`] writes. Either
/// copied out (`master` and `optimizer` filled) or deferred (shared handles to immutable
/// tensors, copied out by [`Snapshot::materialize`]); both are safe to write while training
/// goes on.
#[derive(Debug)]
pub struct Snapshot {
    /// Optimizer steps taken.
    pub step: u64,
    /// Ranks of the job.
    pub world: usize,
    /// This rank's elements of the flat parameter vector.
    pub shard: std::ops::Range<usize>,
    /// Whether this rank writes a file: every rank under ZeRO-1, rank 0 only when replicated
    /// (the others hold the same values).
    pub writes_file: bool,
    /// The shard of the fp32 master weights.
    pub master: Vec<f32>,
    /// The shard's optimizer state (burn's `RecordState` form).
    pub optimizer: StateSink,
    /// How the state is spread.
    pub sharding: Sharding,
    /// The optimizer.
    pub optimizer_config: OptimizerConfig,
    /// The parameters' layout.
    pub layout: ParamLayout,
    /// The loader's state (the same on every rank), if there is a loader.
    pub loader: Option<LoaderState>,
    /// This rank's random generator state.
    pub rng: u64,
    /// The dynamic loss scale, with loss scaling.
    pub loss_scale: Option<crate::precision::LossScaleState>,
    /// Handles to the state not yet copied out ([`DataParallel::snapshot_deferred`]); while
    /// set, `master` and `optimizer` are empty.
    ///
    /// [`DataParallel::snapshot_deferred`]: crate::DataParallel::snapshot_deferred
    pub(crate) deferred: Option<Deferred>,
}

/// The heavy half of a deferred [`Snapshot`]: shared handles to immutable tensors, which no
/// later step can change.
#[derive(Clone)]
pub(crate) struct Deferred {
    pub(crate) master: burn::tensor::Tensor<1>,
    pub(crate) optimizer: crate::optim::StateHandle,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("master", &self.master.dims())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Whether the master weights and optimizer state are still to be copied out (a snapshot
    /// from [`DataParallel::snapshot_deferred`](crate::DataParallel::snapshot_deferred)).
    pub fn is_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// Copies deferred state out to the host, filling `master` and `optimizer`; a snapshot
    /// that is not deferred is returned as it is. [`Checkpointer::save`] does this on its
    /// writer thread, so an async save does not wait for the copy.
    ///
    /// # Errors
    ///
    /// Tensor readback errors.
    pub fn materialize(mut self) -> Result<Snapshot> {
        if let Some(deferred) = self.deferred.take() {
            self.master = crate::params::read_f32(&deferred.master, "master weights")?;
            self.optimizer = deferred.optimizer.flatten();
        }
        Ok(self)
    }
}

/// When [`Checkpointer::save`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveMode {
    /// Once the checkpoint is complete on disk.
    #[default]
    Sync,
    /// Once the write has started on a background thread, which also copies out a deferred
    /// snapshot's state (see the module docs).
    Async,
}

/// Where and how checkpoints are kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointConfig {
    /// The root directory holding `step-…` checkpoints.
    pub dir: PathBuf,
    /// Complete checkpoints to keep (older ones are removed); 0 keeps all.
    pub keep_last: usize,
    /// Synchronous or background writes.
    pub mode: SaveMode,
}

impl CheckpointConfig {
    /// Synchronous saves into `dir`, keeping the last 3.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointConfig {
            dir: dir.into(),
            keep_last: 3,
            mode: SaveMode::Sync,
        }
    }
}

/// The directory of the checkpoint at `step` under `root`.
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:012}"))
}

/// The step a checkpoint directory name stands for.
fn parse_step_dir(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// The steps of the complete checkpoints (directories with a manifest) under `root`, newest
/// first; none when `root` does not exist. Not verified: what a run that does not resume
/// checks, to refuse a directory in use.
///
/// # Errors
///
/// [`Error::CheckpointIo`] when `root` exists but cannot be listed.
pub fn complete_steps(root: &Path) -> Result<Vec<u64>> {
    let mut steps: Vec<u64> = restore::list_steps(root)?
        .into_iter()
        .filter(|&step| step_dir(root, step).join(MANIFEST).is_file())
        .collect();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    Ok(steps)
}

fn rank_file_name(rank: usize) -> String {
    format!("rank-{rank:05}.bpk")
}

/// What a rank's write produced: its file's size and SHA-256 (`None`: this rank writes no
/// file), or why it failed.
type Written = Result<Option<(u64, String)>>;

/// A save whose rank file is (being) written and whose manifest is not yet.
struct Pending {
    step: u64,
    dir: PathBuf,
    manifest: Manifest,
    shard: std::ops::Range<usize>,
    rng: u64,
    writer: Writer,
}

/// This rank's write of a pending save: finished (sync mode) or on its thread (async).
enum Writer {
    Done(Written),
    Running(JoinHandle<Written>),
}

impl Writer {
    fn is_finished(&self) -> bool {
        match self {
            Writer::Done(_) => true,
            Writer::Running(handle) => handle.is_finished(),
        }
    }

    fn join(self, dir: &Path) -> Written {
        match self {
            Writer::Done(written) => written,
            Writer::Running(handle) => handle.join().unwrap_or_else(|_| {
                Err(Error::CheckpointIo {
                    path: dir.into(),
                    source: std::io::Error::other("the checkpoint writer thread panicked"),
                })
            }),
        }
    }
}

/// Writes one rank's checkpoints; see the [module docs](self). Every rank of a job holds one
/// and calls [`save`](Checkpointer::save), [`poll`](Checkpointer::poll) and
/// [`wait`](Checkpointer::wait) at the same steps (they talk over the collective).
pub struct Checkpointer {
    config: CheckpointConfig,
    pending: Option<Pending>,
    /// The newest complete checkpoint's step.
    last_complete: Option<u64>,
    /// The chunk buffers rank files stream through, reused from save to save (see
    /// [`stream`]).
    scratch: std::sync::Arc<std::sync::Mutex<Vec<direct::AlignedBuffer>>>,
    /// Rank 0's removal of old checkpoints, running after a publish.
    retiring: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("config", &self.config)
            .field("pending", &self.pending.as_ref().map(|p| p.step))
            .field("last_complete", &self.last_complete)
            .finish()
    }
}

impl Checkpointer {
    /// Checkpoints under `config.dir` (created if missing).
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointIo`] when the directory cannot be created.
    pub fn new(config: CheckpointConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.dir).map_err(|source| Error::CheckpointIo {
            path: config.dir.as_path().into(),
            source,
        })?;
        Ok(Checkpointer {
            config,
            pending: None,
            last_complete: None,
            scratch: Default::default(),
            retiring: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    /// The step of a save not yet complete, if any.
    pub fn pending(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.step)
    }

    /// Saves `snapshot`. Sync mode: returns once the checkpoint is complete. Async mode: first
    /// completes the previous save if one is pending, then returns once the write has started;
    /// a deferred snapshot ([`DataParallel::snapshot_deferred`]) is also copied out on the
    /// writer thread, so the call costs no copy of the state.
    ///
    /// [`DataParallel::snapshot_deferred`]: crate::DataParallel::snapshot_deferred
    ///
    /// Collective: every rank calls it at the same step.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointIo`] when a file cannot be written (on the rank that failed; the others
    /// get [`Error::CheckpointIo`] naming that rank's file); collective errors. The previous
    /// checkpoints are untouched either way.
    pub fn save<C: Collective + ?Sized>(
        &mut self,
        collective: &mut C,
        snapshot: Snapshot,
    ) -> Result<()> {
        self.complete(collective)?;
        let dir = step_dir(&self.config.dir, snapshot.step);
        let manifest = Manifest {
            format: manifest::FORMAT,
            step: snapshot.step,
            world: snapshot.world,
            sharding: snapshot.sharding,
            optimizer: snapshot.optimizer_config.clone(),
            layout: snapshot.layout.clone(),
            loader: snapshot.loader.clone(),
            rng: Vec::new(),
            loss_scale: snapshot.loss_scale,
            files: Vec::new(),
        };
        let (step, shard, rng) = (snapshot.step, snapshot.shard.clone(), snapshot.rng);
        let rank = collective.rank();
        let target = dir.clone();
        let scratch = std::sync::Arc::clone(&self.scratch);
        let write = move || write_rank_file(&target, rank, snapshot, &scratch);
        let writer = match self.config.mode {
            SaveMode::Sync => Writer::Done(write()),
            SaveMode::Async => Writer::Running(
                std::thread::Builder::new()
                    .name(format!("mlinfra-ckpt-{step}"))
                    .spawn(write)
                    .map_err(|source| Error::CheckpointIo {
                        path: dir.as_path().into(),
                        source,
                    })?,
            ),
        };
        self.pending = Some(Pending {
            step,
            dir,
            manifest,
            shard,
            rng,
            writer,
        });
        if self.config.mode == SaveMode::Sync {
            self.complete(collective)?;
        }
        Ok(())
    }

    /// Completes a pending async save if every rank's file is written; cheap otherwise (one
    /// small all-reduce while a save is pending, nothing when none is). Returns the step of the
    /// checkpoint it completed.
    ///
    /// Collective: every rank calls it at the same points (each step boundary).
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::save`].
    pub fn poll<C: Collective + ?Sized>(&mut self, collective: &mut C) -> Result<Option<u64>> {
        let Some(pending) = &self.pending else {
            return Ok(None);
        };
        let mut done = [f64::from(u8::from(pending.writer.is_finished()))];
        collective.all_reduce_f64(&mut done)?;
        if done[0] < collective.world() as f64 {
            return Ok(None);
        }
        self.complete(collective)
    }

    /// Blocks until a pending save is complete and old checkpoints are removed (what a clean
    /// shutdown calls). Returns the step of the checkpoint it completed.
    ///
    /// Collective.
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::save`].
    pub fn wait<C: Collective + ?Sized>(&mut self, collective: &mut C) -> Result<Option<u64>> {
        let completed = self.complete(collective);
        self.finish_retiring();
        completed
    }

    /// Waits for the removal of old checkpoints, if one is running.
    fn finish_retiring(&mut self) {
        if let Some(retiring) = self.retiring.take() {
            // Retention is best effort and cannot fail; a panic there is a bug to surface.
            retiring
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
    }

    /// Blocks until a pending save is complete; [`wait`](Self::wait) without waiting for the
    /// retention it starts.
    fn complete<C: Collective + ?Sized>(&mut self, collective: &mut C) -> Result<Option<u64>> {
        let Some(pending) = self.pending.take() else {
            return Ok(None);
        };
        let Pending {
            step,
            dir,
            mut manifest,
            shard,
            rng,
            writer,
        } = pending;
        let written = writer.join(&dir);
        // Every rank learns every rank's outcome, so all fail together or none does:
        // [ok, writes_file, bytes, sha256 × 4, rng, shard start, shard end].
        let mut mine = match &written {
            Ok(Some((bytes, sha))) => {
                let mut words = vec![1, 1, *bytes];
                words.extend(files::sha256_words(sha));
                words
            }
            Ok(None) => vec![1, 0, 0, 0, 0, 0, 0],
            Err(_) => vec![0; 7],
        };
        mine.extend([rng, shard.start as u64, shard.end as u64]);
        let all = all_gather_u64(collective, &mine)?;
        let per = mine.len();
        if let Some(failed) = all.chunks_exact(per).position(|r| r[0] == 0) {
            return Err(match written {
                Err(error) => error,
                Ok(_) => Error::CheckpointIo {
                    path: dir.join(rank_file_name(failed)).into(),
                    source: std::io::Error::other(format!(
                        "rank {failed} failed to write its part of step {step}"
                    )),
                },
            });
        }
        manifest.rng = all.chunks_exact(per).map(|r| r[7]).collect();
        manifest.files = all
            .chunks_exact(per)
            .enumerate()
            .filter(|(_, r)| r[1] == 1)
            .map(|(rank, r)| FileRecord {
                name: rank_file_name(rank),
                rank,
                shard: [r[8] as usize, r[9] as usize],
                bytes: r[2],
                sha256: files::sha256_from_words(&r[3..7]),
            })
            .collect();
        let mut published = [1.0f64];
        let mut outcome = Ok(());
        if collective.rank() == 0 {
            outcome = self.publish(&dir, &manifest);
            published[0] = f64::from(u8::from(outcome.is_ok()));
        }
        collective.all_reduce_f64(&mut published)?;
        outcome?;
        if published[0] < 1.0 {
            return Err(Error::CheckpointIo {
                path: dir.join(MANIFEST).into(),
                source: std::io::Error::other(format!(
                    "rank 0 failed to write the manifest of step {step}"
                )),
            });
        }
        self.last_complete = Some(step);
        Ok(Some(step))
    }

    /// Rank 0: the manifest, then retention in the background.
    fn publish(&mut self, dir: &Path, manifest: &Manifest) -> Result<()> {
        let path = dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::CheckpointIo {
            path: path.as_path().into(),
            source: std::io::Error::other(e),
        })?;
        files::write_atomic(&path, &json).map_err(|source| Error::CheckpointIo {
            path: path.as_path().into(),
            source,
        })?;
        files::sync_dir(&self.config.dir).map_err(|source| Error::CheckpointIo {
            path: self.config.dir.as_path().into(),
            source,
        })?;
        // One retention at a time, and never one still scanning when this manifest appears.
        self.finish_retiring();
        let (root, keep_last, newest) = (
            self.config.dir.clone(),
            self.config.keep_last,
            manifest.step,
        );
        let job = move || retire(&root, keep_last, newest);
        match std::thread::Builder::new()
            .name("mlinfra-ckpt-retire".to_owned())
            .spawn(job.clone())
        {
            Ok(handle) => self.retiring = Some(handle),
            // No thread to be had: retire inline rather than not at all.
            Err(_) => job(),
        }
        Ok(())
    }
}

/// Removes complete checkpoints under `root` older than `newest` (the one just written) beyond
/// the newest `keep_last` up to it, and abandoned directories older than `newest`. Nothing at
/// or above `newest` is touched. Best effort: a checkpoint that cannot be removed stays.
fn retire(root: &Path, keep_last: usize, newest: u64) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut complete = Vec::new();
    for entry in entries.flatten() {
        let Some(step) = entry.file_name().to_str().and_then(parse_step_dir) else {
            continue;
        };
        if step > newest {
            continue; // not this run's
        }
        let path = entry.path();
        if path.join(MANIFEST).is_file() {
            complete.push((step, path));
        } else if step < newest {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    if keep_last == 0 {
        return;
    }
    complete.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    // `newest` itself is complete (its manifest was just written) and sorts first, so it is
    // always among the kept; the guard makes that independent of the listing.
    for (_, path) in complete
        .into_iter()
        .filter(|(step, _)| *step != newest)
        .skip(keep_last.saturating_sub(1))
    {
        // The manifest first: from then on the directory no longer counts.
        if std::fs::remove_file(path.join(MANIFEST)).is_ok() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(retiring) = self.retiring.take() {
            // Best effort, and a panic while dropping would abort: ignore its outcome.
            let _ = retiring.join();
        }
    }
}

/// Streams this rank's file of `snapshot` durably into `dir` (created if missing).
fn write_rank_file(
    dir: &Path,
    rank: usize,
    snapshot: Snapshot,
    scratch: &std::sync::Mutex<Vec<direct::AlignedBuffer>>,
) -> Written {
    if !snapshot.writes_file {
        return Ok(None);
    }
    let snapshot = snapshot.materialize()?;
    let io = |path: &Path, source| Error::CheckpointIo {
        path: path.into(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let path = dir.join(rank_file_name(rank));
    let master = burn_pack::Bytes::from_elems(snapshot.master);
    let container = rank_file::container(&master, &snapshot.optimizer, snapshot.step, rank)
        .map_err(|reason| io(&path, std::io::Error::other(reason)))?;
    // One save at a time holds the buffers (`save` waits for the previous one first); a
    // poisoned lock only means a writer panicked mid-save, and buffers are rewritten anyway.
    let mut pool = scratch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sha256 = files::write_atomic_with(&path, |temp, name| {
        let (file, sha256, _) = container.write(temp, name, &mut pool)?;
        Ok((file, sha256))
    })
    .map_err(|e| io(&path, e))?;
    Ok(Some((container.len() as u64, sha256)))
}
