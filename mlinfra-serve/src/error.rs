//! The error type of `mlinfra-serve`.

/// Errors returned by `mlinfra-serve`.
///
/// Each variant documents who is at fault: the caller, the machine, or a lower layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Choosing a device failed in the layers below.
    #[error(transparent)]
    Loader(#[from] mlinfra_loader::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        assert!(
            size_of::<Error>() <= 40,
            "Error is {} bytes",
            size_of::<Error>()
        );
    }

    #[test]
    fn lower_layer_errors_pass_through_unchanged() {
        let below = mlinfra_loader::Error::InvalidDevice { spec: "tpu".into() };
        let text = below.to_string();
        assert_eq!(Error::from(below).to_string(), text);
    }
}
