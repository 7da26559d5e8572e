//! The error type of `mlinfra-agent`.

/// Errors returned by `mlinfra-agent`.
///
/// Each variant documents who is at fault: the caller (a tool request), the machine, or a lower
/// layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kernel or device request failed in the layers below.
    #[error(transparent)]
    Kernels(#[from] mlinfra_kernels::Error),
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
