//! Helpers for tests of hostile inputs: files that are not regular files, and operations
//! that must not hang.

use std::path::Path;
use std::time::Duration;

/// Runs `f` on another thread and returns its result, or panics naming `what` if it has not
/// finished after 20 s: for tests whose defect was a hang (the thread is left behind).
pub fn within_seconds<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} still blocks after 20 s"))
}

/// Makes a FIFO (a named pipe) at `path`: `open` for reading blocks on one until a writer
/// appears, which is the hang the tests guard against.
///
/// # Panics
///
/// If the FIFO cannot be made.
pub fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("running mkfifo");
    assert!(status.success(), "mkfifo {}: {status}", path.display());
}
