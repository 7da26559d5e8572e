//! The error type of `mlinfra-agent`.

use std::path::PathBuf;

/// Errors returned by `mlinfra-agent`.
///
/// Each variant documents who is at fault: the caller (a tool request), the operator (the
/// server's configuration), the machine, or a lower layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kernel or device request failed in the layers below.
    #[error(transparent)]
    Kernels(#[from] mlinfra_kernels::Error),
    /// A dataset could not be opened or read (the file, or the caller's request).
    #[error(transparent)]
    Data(#[from] mlinfra_data::Error),
    /// The loader refused a plan or failed to read (the caller's arguments, or the data).
    #[error(transparent)]
    Loader(#[from] mlinfra_loader::Error),
    /// A training job failed in the trainer (its configuration, its data, a checkpoint).
    #[error(transparent)]
    Train(#[from] mlinfra_train::Error),
    /// A job request cannot be served (the caller: an unknown job, one in the wrong state),
    /// or its state on disk is unreadable (the machine).
    #[error("job `{job}`: {reason}")]
    Job {
        /// The job's id as the client sent it.
        job: Box<str>,
        /// Why.
        reason: Box<str>,
    },
    /// The sandbox cannot run a command (the kernel lacks what it needs, or the command could
    /// not start). What a sandboxed command does is its output, not an error.
    #[error("sandbox: {reason}")]
    Sandbox {
        /// Why.
        reason: Box<str>,
    },
    /// The model server behind the serving tools failed or refused a request (its message).
    #[error("serving: {reason}")]
    Serving {
        /// What failed, with the server's message.
        reason: Box<str>,
    },
    /// The job store's directory could not be read or written (the machine).
    #[error("job store {}: {source}", path.display())]
    JobStore {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A bug in this crate, not the caller's doing (a worker task that panicked).
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: Box<str>,
    },
    /// The data root is not a usable directory (the operator).
    #[error("data root {}: {reason}", path.display())]
    DataRoot {
        /// The directory given.
        path: PathBuf,
        /// Why it cannot serve.
        reason: Box<str>,
    },
    /// A path a client named is refused (the caller): outside the data root, a traversal, a
    /// URI or glob, or missing.
    #[error("path `{path}` refused: {reason}")]
    PathRefused {
        /// The path as the client sent it.
        path: Box<str>,
        /// Why.
        reason: Box<str>,
    },
    /// A tool's arguments are valid JSON of the right shape but out of range (the caller).
    #[error("{tool}: {reason}")]
    InvalidArgument {
        /// The tool.
        tool: &'static str,
        /// What is out of range.
        reason: Box<str>,
    },
    /// A transport could not start or failed (the machine: a port in use, a closed pipe).
    #[error("{transport} transport: {source}")]
    Transport {
        /// `stdio` or `http`.
        transport: &'static str,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        assert!(
            size_of::<Error>() <= 48,
            "Error is {} bytes",
            size_of::<Error>()
        );
    }
}
