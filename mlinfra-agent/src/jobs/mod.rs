//! Background jobs: training runs that outlive the request that started them, the client that
//! asked, and the process that ran them.
//!
//! Each job is a directory `<state>/jobs/<id>/`:
//! - `job.json`: its record (what was asked, its state, the outcome), replaced atomically
//!   (written beside, synced, renamed over, the directory synced) at each change of state;
//! - `checkpoints/`: the trainer's checkpoints (mlinfra-train's: atomic and checksummed; the
//!   last [`train::KEEP_CHECKPOINTS`] kept);
//! - `metrics.jsonl`: the trainer's log, one line per step, read for progress.
//!
//! A job whose record says `running` when the store opens was running in a process that is
//! gone (a `kill -9`, a crash, a power cut): it becomes `interrupted`, its checkpoints intact,
//! and [`JobStore::resume`] continues it from the newest valid one. One job trains at a time
//! (training takes every core; two would each run at half speed and finish no sooner).

pub mod finetune;
pub mod inspect;
pub mod train;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::root::DataRoot;
use crate::{Error, Result};
pub use finetune::{AdapterSpec, DpoConfig, Method, SftConfig};
pub use train::{ClassifierConfig, TrainConfig, TrainOutcome};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Training in this server process.
    Running,
    /// Every step done.
    Completed,
    /// Stopped on request, after a final checkpoint; resumable.
    Stopped,
    /// The run failed; the error says why. Resumable when it left checkpoints.
    Failed,
    /// The process running it died mid-run; resumable from its newest checkpoint.
    Interrupted,
}

/// A job's durable record (`job.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// What it trains.
    pub config: TrainConfig,
    /// Where it is.
    pub state: JobState,
    /// The optimizer steps of the whole run.
    pub total_steps: u64,
    /// When it was created, Unix milliseconds.
    pub created_unix_ms: u64,
    /// When its state last changed, Unix milliseconds.
    pub updated_unix_ms: u64,
    /// How many times it has been launched (1, plus its resumes).
    pub launches: u32,
    /// The last launch's outcome, once it ended.
    pub outcome: Option<TrainOutcome>,
    /// Why the last launch failed, if it did.
    pub error: Option<String>,
    /// What it ran with, by content hash (see [`crate::lineage`]).
    #[serde(default)]
    pub lineage: Option<RunLineage>,
}

/// A run's inputs by content hash: the data, the configuration, the tool definition that
/// started it and the software: two runs with equal lineage trained the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunLineage {
    /// The training dataset's content fingerprint (mlinfra-data's).
    pub train_dataset: String,
    /// The evaluation dataset's, if any.
    pub eval_dataset: Option<String>,
    /// A fine-tune's base model file, by content hash.
    #[serde(default)]
    pub model: Option<String>,
    /// The adapter a DPO run started from (its `from_job`'s), by content hash.
    #[serde(default)]
    pub start_adapter: Option<String>,
    /// The configuration's hash.
    pub config: String,
    /// The definition hash of the tool that started the job, when started through one.
    pub tool: Option<String>,
    /// mlinfra-agent's version.
    pub agent_version: String,
}

/// A job's record and its progress, as `train_status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct JobStatus {
    /// The record.
    #[serde(flatten)]
    pub record: JobRecord,
    /// The last step logged (0 before the first).
    pub step: u64,
    /// That step's loss.
    pub loss: Option<f64>,
    /// The steps of the complete checkpoints on disk, newest first.
    pub checkpoints: Vec<u64>,
    /// The job's directory (its checkpoints and metrics log).
    pub dir: String,
}

/// The jobs under one state directory, and those running in this process.
#[derive(Debug)]
pub struct JobStore {
    /// Held open for the store's life: its exclusive lock keeps a second server off this
    /// state directory (it would mark this one's running jobs interrupted).
    _lock: std::fs::File,
    jobs: PathBuf,
    root: Arc<DataRoot>,
    /// Stop flags of the jobs running in this process.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Makes ids unique within a millisecond.
    sequence: AtomicU64,
}

impl JobStore {
    /// The store in `state_dir/jobs` (created if missing), whose jobs read datasets under
    /// `root`. Jobs left `running` by a process that died become `interrupted`.
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`] when the directory cannot be created or listed, or an interrupted
    /// job's record cannot be rewritten.
    pub fn open(state_dir: impl AsRef<Path>, root: Arc<DataRoot>) -> Result<Self> {
        let jobs = state_dir.as_ref().join("jobs");
        std::fs::create_dir_all(&jobs).map_err(|source| Error::JobStore {
            path: jobs.clone(),
            source,
        })?;
        let lock = lock(&state_dir.as_ref().join("lock"))?;
        let store = Self {
            _lock: lock,
            jobs,
            root,
            running: Mutex::default(),
            sequence: AtomicU64::new(0),
        };
        for mut record in store.records()? {
            if record.state == JobState::Running {
                record.state = JobState::Interrupted;
                record.updated_unix_ms = now_ms();
                store.write(&record)?;
            }
        }
        Ok(store)
    }

    /// Creates a job for `config` and starts it in the background.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] or [`Error::PathRefused`] for a configuration that cannot
    /// run (checked before the job exists); [`Error::Job`] while another job trains;
    /// [`Error::JobStore`] when its directory cannot be written.
    pub fn start(self: &Arc<Self>, config: TrainConfig, tool: Option<String>) -> Result<JobStatus> {
        let total_steps = config.plan(&self.root, &self.jobs)?;
        let lineage = Some(config.lineage(&self.root, &self.jobs, tool)?);
        let now = now_ms();
        let id = format!(
            "train-{now}-{}",
            self.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let record = JobRecord {
            id: id.clone(),
            config,
            state: JobState::Running,
            total_steps,
            created_unix_ms: now,
            updated_unix_ms: now,
            launches: 1,
            outcome: None,
            error: None,
            lineage,
        };
        self.launch(record, false)?;
        self.status(&id)
    }

    /// The adapter directory finished fine-tune `id` wrote.
    ///
    /// # Errors
    ///
    /// [`Error::Job`] for an unknown job, or one that wrote no adapter (not a fine-tune, or not
    /// finished).
    pub fn adapter(&self, id: &str) -> Result<PathBuf> {
        finetune::finished_adapter(&self.jobs, id)
    }

    /// Continues a stopped, failed or interrupted job from its newest valid checkpoint (from
    /// the start when it has none).
    ///
    /// # Errors
    ///
    /// [`Error::Job`] for an unknown job, one running or completed, or while another trains.
    pub fn resume(self: &Arc<Self>, id: &str) -> Result<JobStatus> {
        let mut record = self.record(id)?;
        if matches!(record.state, JobState::Running | JobState::Completed) {
            return Err(job_error(
                id,
                format!("it is {:?}: nothing to resume", record.state),
            ));
        }
        // The checkpoints were trained on the data as it was: a resume on changed data would
        // mix two datasets under one lineage.
        if let Some(lineage) = &record.lineage {
            let now = record
                .config
                .lineage(&self.root, &self.jobs, lineage.tool.clone())?;
            let changed = if now.train_dataset != lineage.train_dataset
                || now.eval_dataset != lineage.eval_dataset
            {
                Some(format!(
                    "its data changed since it started (training data {} then, {} now)",
                    lineage.train_dataset, now.train_dataset
                ))
            } else if now.model != lineage.model || now.start_adapter != lineage.start_adapter {
                Some(format!(
                    "its base model or starting adapter changed since it started ({} then, {} now)",
                    lineage.model.as_deref().unwrap_or("none"),
                    now.model.as_deref().unwrap_or("none")
                ))
            } else {
                None
            };
            if let Some(changed) = changed {
                return Err(job_error(id, format!("{changed}: start a new job")));
            }
        }
        record.state = JobState::Running;
        record.launches += 1;
        record.error = None;
        record.outcome = None;
        record.updated_unix_ms = now_ms();
        self.launch(record, true)?;
        self.status(id)
    }

    /// Asks a running job to stop: it checkpoints after its current step and becomes
    /// `stopped`. Returns at once; [`JobStore::wait`] waits for it.
    ///
    /// # Errors
    ///
    /// [`Error::Job`] for an unknown job or one not running in this process.
    pub fn stop(&self, id: &str) -> Result<JobStatus> {
        let flag = self
            .running
            .lock()
            .map_err(|_| job_error(id, "the job table is poisoned"))?
            .get(id)
            .cloned();
        match flag {
            Some(flag) => flag.store(true, Ordering::Relaxed),
            None => {
                let record = self.record(id)?;
                return Err(job_error(
                    id,
                    format!("it is {:?}, not running", record.state),
                ));
            }
        }
        self.status(id)
    }

    /// A job's record and progress.
    ///
    /// # Errors
    ///
    /// [`Error::Job`] for an unknown id or an unreadable record.
    pub fn status(&self, id: &str) -> Result<JobStatus> {
        let record = self.record(id)?;
        let dir = self.dir(id)?;
        let (step, loss) = last_step(&dir.join("metrics.jsonl"));
        let checkpoints =
            mlinfra_train::checkpoint::complete_steps(&dir.join("checkpoints")).unwrap_or_default();
        Ok(JobStatus {
            record,
            step,
            loss,
            checkpoints,
            dir: dir.display().to_string(),
        })
    }

    /// Job `id`'s checkpoints, newest first (only `step`'s when given), each verified.
    ///
    /// # Errors
    ///
    /// [`Error::Job`] for an unknown job, or a step it has no checkpoint of.
    pub fn checkpoints(
        &self,
        id: &str,
        step: Option<u64>,
    ) -> Result<Vec<inspect::CheckpointReport>> {
        self.record(id)?;
        inspect::inspect(&self.dir(id)?.join("checkpoints"), id, step)
    }

    /// Every job's status, newest first. A job whose record cannot be read is left out (its
    /// directory stays for inspection).
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`] when the store's directory cannot be listed.
    pub fn list(&self) -> Result<Vec<JobStatus>> {
        let mut records = self.records()?;
        records.sort_by(|a, b| {
            b.created_unix_ms
                .cmp(&a.created_unix_ms)
                .then(b.id.cmp(&a.id))
        });
        Ok(records
            .into_iter()
            .filter_map(|record| self.status(&record.id).ok())
            .collect())
    }

    /// Deletes job `id`: its record, checkpoints and metrics. Irreversible: the
    /// `job_delete` tool asks the user first.
    ///
    /// # Errors
    ///
    /// [`Error::Job`] for an unknown or running job; [`Error::JobStore`] when the directory
    /// cannot be removed.
    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.dir(id)?;
        let running = self
            .running
            .lock()
            .map_err(|_| job_error(id, "the job table is poisoned"))?;
        if running.contains_key(id) {
            return Err(job_error(id, "it is running: stop it first"));
        }
        // The record goes first: a crash part-way leaves a directory no listing reads as a job.
        let record = dir.join("job.json");
        std::fs::remove_file(&record).map_err(|source| Error::JobStore {
            path: record,
            source,
        })?;
        std::fs::remove_dir_all(&dir).map_err(|source| Error::JobStore { path: dir, source })
    }

    /// Waits until job `id` is no longer running, or `timeout` passes; returns its status.
    ///
    /// # Errors
    ///
    /// As [`JobStore::status`].
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<JobStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.status(id)?;
            if status.record.state != JobState::Running || std::time::Instant::now() >= deadline {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records `record` (state `running`) and trains it on a thread of its own.
    fn launch(self: &Arc<Self>, record: JobRecord, resume: bool) -> Result<()> {
        let id = record.id.clone();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let mut running = self
                .running
                .lock()
                .map_err(|_| job_error(&id, "the job table is poisoned"))?;
            if let Some(other) = running.keys().next() {
                return Err(job_error(
                    &id,
                    format!("job {other} is training; stop it or wait for it first"),
                ));
            }
            let dir = self.jobs.join(&id);
            std::fs::create_dir_all(&dir)
                .map_err(|source| Error::JobStore { path: dir, source })?;
            self.write(&record)?;
            running.insert(id.clone(), Arc::clone(&stop));
        }
        let store = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || store.train(record, resume, stop));
        if let Err(error) = spawned {
            self.forget(&id);
            return Err(job_error(
                &id,
                format!("could not start its thread: {error}"),
            ));
        }
        Ok(())
    }

    /// The job's thread: runs the training, then records how it ended.
    fn train(&self, mut record: JobRecord, resume: bool, stop: Arc<AtomicBool>) {
        let dir = self.jobs.join(&record.id);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train::run(
                &self.root,
                &dir,
                &record.config,
                record.total_steps,
                resume,
                stop,
            )
        }));
        match result {
            Ok(Ok(outcome)) => {
                record.state = if outcome.stopped {
                    JobState::Stopped
                } else {
                    JobState::Completed
                };
                record.outcome = Some(outcome);
            }
            Ok(Err(error)) => {
                record.state = JobState::Failed;
                record.error = Some(crate::server::error_text(&error));
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                record.state = JobState::Failed;
                record.error = Some(format!("the trainer panicked: {message}"));
            }
        }
        record.updated_unix_ms = now_ms();
        if let Err(error) = self.write(&record) {
            tracing::error!(job = %record.id, %error, "could not record the job's end");
        }
        self.forget(&record.id);
    }

    fn forget(&self, id: &str) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(id);
        }
    }

    /// The directory of job `id`, after checking the id names one (and cannot name anything
    /// else: ids are `[a-z0-9-]`, so no separator or `..` gets through).
    fn dir(&self, id: &str) -> Result<PathBuf> {
        let well_formed = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let dir = self.jobs.join(id);
        if !well_formed || !dir.join("job.json").is_file() {
            return Err(job_error(id, "no such job"));
        }
        Ok(dir)
    }

    fn record(&self, id: &str) -> Result<JobRecord> {
        let path = self.dir(id)?.join("job.json");
        let bytes = mlinfra_data::files::read_regular(&path, 1 << 20)
            .map_err(|error| job_error(id, format!("reading its record: {error}")))?;
        serde_json::from_slice(&bytes).map_err(|error| {
            job_error(
                id,
                format!("its record {} is corrupt: {error}", path.display()),
            )
        })
    }

    /// Every readable record.
    fn records(&self) -> Result<Vec<JobRecord>> {
        let entries = std::fs::read_dir(&self.jobs).map_err(|source| Error::JobStore {
            path: self.jobs.clone(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter_map(|id| match self.record(&id) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::warn!(%error, "skipping a job directory");
                    None
                }
            })
            .collect())
    }

    /// Replaces `job.json` atomically and durably (mlinfra-data's write protocol): a crash
    /// leaves the old record or the new, never half of one.
    fn write(&self, record: &JobRecord) -> Result<()> {
        let path = self.jobs.join(&record.id).join("job.json");
        let json = serde_json::to_vec_pretty(record)
            .map_err(|error| job_error(&record.id, error.to_string()))?;
        mlinfra_data::files::write_atomic(&path, &json)
            .map_err(|source| Error::JobStore { path, source })
    }
}

/// How long opening a store waits for another holder of its lock (a server shutting down).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// `path` opened and exclusively locked (`flock`), waiting up to [`LOCK_WAIT`].
fn lock(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let failed = |source| Error::JobStore {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(failed)?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock || std::time::Instant::now() >= deadline {
            return Err(failed(std::io::Error::new(
                error.kind(),
                format!("another server holds this state directory ({error})"),
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn job_error(job: &str, reason: impl Into<String>) -> Error {
    Error::Job {
        job: job.into(),
        reason: reason.into().into_boxed_str(),
    }
}

/// The last training step in a metrics log and its loss; `(0, None)` before the first.
///
/// Reads the log from its end, a window that grows fourfold until it holds a training record
/// (or is the whole file): `train_status` and `train_wait` poll it, and a long job's log runs
/// to millions of lines. A line torn by a crash mid-write does not parse and is passed over.
fn last_step(metrics: &Path) -> (u64, Option<f64>) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(metrics) else {
        return (0, None);
    };
    let Ok(len) = file.metadata().map(|meta| meta.len()) else {
        return (0, None);
    };
    let mut window: u64 = 64 << 10;
    loop {
        let start = len.saturating_sub(window);
        let mut tail = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err()
            || (&mut file)
                .take(len - start)
                .read_to_end(&mut tail)
                .is_err()
        {
            return (0, None);
        }
        let mut lines = tail.split(|&b| b == b'\n');
        if start > 0 {
            // The window's first line may begin mid-record.
            lines.next();
        }
        let found = lines.rev().find_map(|line| {
            let record: serde_json::Value = serde_json::from_slice(line).ok()?;
            (record.get("kind")?.as_str()? == "train").then(|| {
                (
                    record.get("step").and_then(|s| s.as_u64()).unwrap_or(0),
                    record.get("loss").and_then(|l| l.as_f64()),
                )
            })
        });
        match found {
            Some(found) => return found,
            None if start == 0 => return (0, None),
            None => window = window.saturating_mul(4),
        }
    }
}

/// The time now, Unix milliseconds (0 before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::last_step;

    fn train(step: u64) -> String {
        format!(
            "{{\"kind\":\"train\",\"step\":{step},\"loss\":{}}}\n",
            1.0 / step as f64
        )
    }

    #[test]
    fn the_last_step_is_read_from_the_end_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        assert_eq!(last_step(&path), (0, None), "no log yet");

        // 200,000 steps (~9 MB), then a line torn mid-write.
        let mut log: String = (1..=200_000).map(train).collect();
        log.push_str("{\"kind\":\"train\",\"step\":200001,\"lo");
        std::fs::write(&path, &log).unwrap();
        assert_eq!(last_step(&path), (200_000, Some(1.0 / 200_000.0)));

        // 300 KB of evaluation records after the last step: the window grows past them.
        let eval = "{\"kind\":\"eval\",\"step\":200000,\"accuracy\":0.5}\n".repeat(6_000);
        std::fs::write(
            &path,
            format!("{}{eval}", (1..=5).map(train).collect::<String>()),
        )
        .unwrap();
        assert_eq!(last_step(&path), (5, Some(0.2)));

        // Only evaluations: no step.
        std::fs::write(&path, &eval).unwrap();
        assert_eq!(last_step(&path), (0, None));
    }
}
