//! [`Supervisor`]: runs a training process and restarts it when it fails, a bounded number of
//! times (the restart half of TorchElastic's `torchrun --max-restarts`).

use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The environment variable that tells a supervised process how many times it was restarted
/// (0 on the first launch), like TorchElastic's `TORCHELASTIC_RESTART_COUNT`.
pub const RESTART_COUNT_VAR: &str = "MLINFRA_RESTART_COUNT";

/// The environment variable naming the file a supervised worker touches to say it is alive,
/// set when the supervisor has a [`liveness`](Supervisor::liveness) timeout. A
/// [`Trainer`](crate::Trainer) touches it after every step ([`Heartbeat`]); other workers can
/// touch it themselves.
pub const HEARTBEAT_VAR: &str = "MLINFRA_HEARTBEAT_FILE";

/// How often a running worker is polled.
const POLL: Duration = Duration::from_millis(20);

/// Runs a worker process to completion, restarting it after a crash.
///
/// The worker is expected to checkpoint and to resume from its newest valid checkpoint when
/// started again (a [`Trainer`](crate::Trainer) with
/// [`CheckpointSchedule::resume`](crate::trainer::CheckpointSchedule::resume)), so each restart
/// loses at most the steps since the last checkpoint. Any unsuccessful exit counts as a
/// failure: a non-zero status, or death by a signal (`kill -9`, the OOM killer). After
/// `max_restarts` restarts, the next failure is final.
///
/// Between attempts it waits [`backoff`](Supervisor::backoff), doubled after each failure
/// (capped at 30 s), so a worker that cannot start does not spin.
///
/// **Stopping.** Setting [`stop_flag`](Supervisor::stop_flag) (from the supervisor's own
/// SIGTERM handler, say) sends SIGTERM to the worker, which checkpoints and exits; after
/// [`grace`](Supervisor::grace) without an exit it is killed. A stopped run is not restarted.
///
/// **Hangs.** A worker can fail without exiting: a rank blocked forever in a collective, a
/// deadlock. With a [`liveness`](Supervisor::liveness) timeout, the worker is told a heartbeat
/// file ([`HEARTBEAT_VAR`]); when the file has not been touched for that long, the worker is
/// stopped as above (SIGTERM, then SIGKILL after the grace period) and the attempt counts as a
/// failure, so it is restarted (TorchElastic's watchdog timer, the same way).
///
/// **The supervisor's own death.** On Linux each worker is started with a parent-death signal
/// (SIGKILL): if the supervisor is killed, `kill -9` included, its worker goes with it instead
/// of training on, unsupervised, beside the next supervisor's worker.
///
/// One supervised command is one restart unit: for a multi-process job, supervise its
/// launcher (`mpirun`), which fails as a whole when one rank dies.
#[derive(Debug, Clone)]
pub struct Supervisor {
    max_restarts: u32,
    backoff: Duration,
    grace: Duration,
    liveness: Option<Duration>,
    stop: Arc<AtomicBool>,
}

/// One run of the worker.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 0 for the first launch, 1 for the first restart...
    pub restart: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// Its wall time.
    pub seconds: f64,
}

/// What [`Supervisor::run`] saw.
#[derive(Debug, Clone)]
pub struct SupervisorReport {
    /// Every launch in order; the last one succeeded (or was stopped).
    pub attempts: Vec<Attempt>,
    /// Whether the run ended because the stop flag was set.
    pub stopped: bool,
}

impl SupervisorReport {
    /// Restarts it took (launches after the first).
    pub fn restarts(&self) -> u32 {
        self.attempts.len().saturating_sub(1) as u32
    }
}

impl Supervisor {
    /// A supervisor allowing `max_restarts` restarts, with a 100 ms initial backoff and a
    /// 30 s grace period on stop.
    pub fn new(max_restarts: u32) -> Self {
        Supervisor {
            max_restarts,
            backoff: Duration::from_millis(100),
            grace: Duration::from_secs(30),
            liveness: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Treats a worker whose heartbeat file is untouched for `timeout` as hung: it is stopped
    /// and restarted (see **Hangs** above). The clock starts at launch, so `timeout` must
    /// cover start-up (loading data and the model) and the longest step or checkpoint.
    /// Defaults to none: a worker may run silent for ever.
    pub fn liveness(mut self, timeout: Duration) -> Self {
        self.liveness = Some(timeout);
        self
    }

    /// The wait before the first restart; it doubles after each further failure.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a stopped worker may take to checkpoint and exit before it is killed.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Uses `flag` as the stop flag (see [`Supervisor::stop_flag`]).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = flag;
        self
    }

    /// Set it to stop the worker gracefully and return without restarting.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Launches `launch(restart)` (with [`RESTART_COUNT_VAR`] set) until one launch exits
    /// successfully, restarting after failures.
    ///
    /// # Errors
    ///
    /// [`Error::WorkerSpawn`] when the command cannot be started; [`Error::WorkerFailed`] when
    /// it failed `max_restarts + 1` times.
    pub fn run(&self, mut launch: impl FnMut(u32) -> Command) -> Result<SupervisorReport> {
        let mut attempts = Vec::new();
        let mut backoff = self.backoff;
        let mut restart = 0;
        loop {
            let mut command = launch(restart);
            command.env(RESTART_COUNT_VAR, restart.to_string());
            let heartbeat = match self.liveness {
                Some(_) => Some(HeartbeatFile::create(restart)?),
                None => None,
            };
            if let Some(file) = &heartbeat {
                command.env(HEARTBEAT_VAR, &file.path);
            }
            die_with_parent(&mut command);
            let started = Instant::now();
            let child = command.spawn().map_err(|source| Error::WorkerSpawn {
                program: command.get_program().to_string_lossy().into(),
                source,
            })?;
            let (status, stopped) = self.watch(child, heartbeat.as_ref())?;
            attempts.push(Attempt {
                restart,
                status,
                seconds: started.elapsed().as_secs_f64(),
            });
            if stopped || status.success() {
                return Ok(SupervisorReport { attempts, stopped });
            }
            if restart >= self.max_restarts {
                return Err(Error::WorkerFailed {
                    attempts: restart + 1,
                    status: status.to_string().into(),
                });
            }
            if self.sleep_unless_stopped(backoff) {
                return Ok(SupervisorReport {
                    attempts,
                    stopped: true,
                });
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            restart += 1;
        }
    }

    /// Waits for `child` to exit, stopping it when the stop flag is set or its heartbeat
    /// goes quiet for the liveness timeout. Returns its status and whether it was stopped by
    /// the flag (a hung worker's attempt is a failure, not a stop).
    fn watch(
        &self,
        mut child: Child,
        heartbeat: Option<&HeartbeatFile>,
    ) -> Result<(ExitStatus, bool)> {
        let id = child.id();
        let wait_error = |source| Error::WorkerSpawn {
            program: format!("worker process {id}").into(),
            source,
        };
        let launched = std::time::SystemTime::now();
        loop {
            if let Some(status) = child.try_wait().map_err(wait_error)? {
                return Ok((status, false));
            }
            let stopped = self.stop.load(Ordering::Relaxed);
            let hung = match (self.liveness, heartbeat) {
                (Some(timeout), Some(file)) => file.quiet_since(launched) > timeout,
                _ => false,
            };
            if stopped || hung {
                if hung {
                    eprintln!(
                        "mlinfra-train supervisor: worker {id} sent no heartbeat for {:?}; \
                         stopping it",
                        self.liveness.unwrap_or_default()
                    );
                }
                terminate(&mut child);
                let deadline = Instant::now() + self.grace;
                while Instant::now() < deadline {
                    if let Some(status) = child.try_wait().map_err(wait_error)? {
                        return Ok((status, stopped));
                    }
                    std::thread::sleep(POLL);
                }
                let _ = child.kill();
                return Ok((child.wait().map_err(wait_error)?, stopped));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sleeps `duration` in small steps; true if the stop flag was set meanwhile.
    fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            if self.stop.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(POLL.min(deadline - Instant::now()));
        }
        self.stop.load(Ordering::Relaxed)
    }
}

/// The heartbeat file of one launch: created empty before it, removed after.
struct HeartbeatFile {
    path: std::path::PathBuf,
}

impl HeartbeatFile {
    fn create(restart: u32) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "mlinfra-heartbeat-{}-{restart}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        mlinfra_data::files::create_new(&path).map_err(|source| Error::WorkerSpawn {
            program: format!("heartbeat file {}", path.display()).into(),
            source,
        })?;
        Ok(HeartbeatFile { path })
    }

    /// How long since the worker last touched the file, or since `launched` if never.
    fn quiet_since(&self, launched: std::time::SystemTime) -> Duration {
        let touched = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .map_or(launched, |modified| modified.max(launched));
        touched.elapsed().unwrap_or_default()
    }
}

impl Drop for HeartbeatFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The worker's side of a liveness timeout: touches the file named by [`HEARTBEAT_VAR`], if
/// the environment names one. A [`Trainer`](crate::Trainer) beats after every step; one
/// `utimensat` call per beat.
#[derive(Debug)]
pub struct Heartbeat {
    file: Option<std::fs::File>,
}

impl Heartbeat {
    /// The heartbeat the environment asks for; a no-op one when it asks for none (or the
    /// file cannot be opened: liveness is the supervisor's concern, never a reason to fail).
    pub fn from_env() -> Self {
        let file = std::env::var_os(HEARTBEAT_VAR)
            .and_then(|path| std::fs::File::options().write(true).open(path).ok());
        Heartbeat { file }
    }

    /// Says "alive".
    pub fn beat(&self) {
        if let Some(file) = &self.file {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }
}

/// On Linux, makes the worker receive SIGKILL when the thread that started it (the
/// supervisor's, which waits in [`Supervisor::run`] for as long as the worker lives) dies.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe functions may be called: prctl(2), getppid(2) and _exit(2) are,
        // and it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor may have died before the prctl: then nobody would send it.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Asks `child` to stop: SIGTERM on Unix (the trainer checkpoints on it), a kill elsewhere.
fn terminate(child: &mut Child) {
    #[cfg(unix)]
    {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's id with a valid signal number has no
            // memory-safety preconditions; the child is not yet reaped, so the id is its.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child.kill();
    }
}
