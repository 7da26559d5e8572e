//! Fault points: named places in the checkpoint and step code where a crash test can stop the
//! process at an exact moment (mid-write, between the temp file and its rename, mid-step).
//!
//! Compiled into debug builds (so `cargo test` has them) and into release builds with the
//! `fault-injection` feature; elsewhere [`point`] is an empty inline function. Where compiled
//! in, the environment variable `MLINFRA_TRAIN_FAULT` arms one point, read once per process
//! (unset, a point costs one atomic load):
//!
//! ```text
//! MLINFRA_TRAIN_FAULT="<point> <occurrence> <action>"
//!     point       write.partial/<file name>    half of the temp file written, not renamed
//!                 write.unrenamed/<file name>  the whole temp file durable, not renamed
//!                 step.mid                     gradients accumulated, optimizer not stepped
//!     occurrence  1 for the first time the point is reached in this process, 2 for the next...
//!     action      hang: print "mlinfra-fault: reached <point>" on stderr and block forever,
//!                       for the test to `kill -9` the process from outside
//!                 kill: print the same line and SIGKILL this process
//! ```
//!
//! The tests in `tests/it/fault.rs` run real worker processes through these points.

/// Stops the process here if `MLINFRA_TRAIN_FAULT` arms this point and occurrence.
/// The point's name is `kind`, or `kind/subject` when `subject` is not empty.
#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn point(_kind: &str, _subject: &str) {}

/// Stops the process here if `MLINFRA_TRAIN_FAULT` arms this point and occurrence.
/// The point's name is `kind`, or `kind/subject` when `subject` is not empty.
#[cfg(any(debug_assertions, feature = "fault-injection"))]
pub(crate) fn point(kind: &str, subject: &str) {
    armed::reach(kind, subject);
}

#[cfg(any(debug_assertions, feature = "fault-injection"))]
mod armed {
    use std::io::Write;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The environment variable that arms a point.
    const VAR: &str = "MLINFRA_TRAIN_FAULT";

    struct Armed {
        point: String,
        occurrence: u64,
        kill: bool,
        reached: AtomicU64,
    }

    fn armed() -> Option<&'static Armed> {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let spec = std::env::var(VAR).ok()?;
                let mut words = spec.split_whitespace();
                let (Some(point), Some(occurrence), Some(action), None) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    panic!("{VAR}={spec:?}: expected \"<point> <occurrence> <action>\"");
                };
                let occurrence = occurrence
                    .parse()
                    .unwrap_or_else(|_| panic!("{VAR}: occurrence {occurrence:?} is not a number"));
                let kill = match action {
                    "kill" => true,
                    "hang" => false,
                    other => panic!("{VAR}: action {other:?} is neither hang nor kill"),
                };
                Some(Armed {
                    point: point.to_owned(),
                    occurrence,
                    kill,
                    reached: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub(super) fn reach(kind: &str, subject: &str) {
        let Some(armed) = armed() else { return };
        let matches = match armed.point.strip_prefix(kind) {
            Some("") => subject.is_empty(),
            Some(rest) => rest.strip_prefix('/') == Some(subject),
            None => false,
        };
        if !matches || armed.reached.fetch_add(1, Ordering::SeqCst) + 1 != armed.occurrence {
            return;
        }
        let name = &armed.point;
        {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "mlinfra-fault: reached {name}");
            let _ = stderr.flush();
        }
        if armed.kill {
            // SAFETY: kill(2) with this process's own id and a valid signal number has no
            // memory-safety preconditions.
            #[cfg(unix)]
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            #[cfg(not(unix))]
            std::process::abort();
        }
        loop {
            std::thread::park();
        }
    }
}
