//! The error type of `mlinfra-data`.

use std::path::PathBuf;

/// Errors returned by `mlinfra-data`.
///
/// Each variant documents who is at fault: the caller, the input data, or external I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a local file failed (external I/O).
    #[error("i/o error on {path}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors travel through every `Result` in the crate; keep them small (box big payloads).
    #[test]
    fn error_stays_small() {
        assert!(
            size_of::<Error>() <= 32,
            "Error is {} bytes",
            size_of::<Error>()
        );
    }

    #[test]
    fn io_error_names_the_path_and_keeps_the_cause_as_source() {
        let error = Error::Io {
            path: PathBuf::from("/data/shard-0.parquet"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(error.to_string(), "i/o error on /data/shard-0.parquet");
        let source = std::error::Error::source(&error).expect("the cause is kept as source");
        assert_eq!(
            source.to_string(),
            std::io::Error::from(std::io::ErrorKind::NotFound).to_string()
        );
    }
}
