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
/// One supervised command is one restart unit: for a multi-process job, supervise its
/// launcher (`mpirun`), which fails as a whole when one rank dies.
#[derive(Debug, Clone)]
pub struct Supervisor {
    max_restarts: u32,
    backoff: Duration,
    grace: Duration,
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
            stop: Arc::new(AtomicBool::new(false)),
        }
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
            let started = Instant::now();
            let child = command.spawn().map_err(|source| Error::WorkerSpawn {
                program: command.get_program().to_string_lossy().into(),
                source,
            })?;
            let (status, stopped) = self.watch(child)?;
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

    /// Waits for `child` to exit, stopping it when the stop flag is set. Returns its status
    /// and whether it was stopped.
    fn watch(&self, mut child: Child) -> Result<(ExitStatus, bool)> {
        let id = child.id();
        let wait_error = |source| Error::WorkerSpawn {
            program: format!("worker process {id}").into(),
            source,
        };
        loop {
            if let Some(status) = child.try_wait().map_err(wait_error)? {
                return Ok((status, false));
            }
            if self.stop.load(Ordering::Relaxed) {
                terminate(&mut child);
                let deadline = Instant::now() + self.grace;
                while Instant::now() < deadline {
                    if let Some(status) = child.try_wait().map_err(wait_error)? {
                        return Ok((status, true));
                    }
                    std::thread::sleep(POLL);
                }
                let _ = child.kill();
                return Ok((child.wait().map_err(wait_error)?, true));
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
