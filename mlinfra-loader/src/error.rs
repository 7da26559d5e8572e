//! The error type of `mlinfra-loader`.

/// Errors returned by `mlinfra-loader`.
///
/// Each variant documents who is at fault: the caller, the build, the machine, or a lower layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A device name did not parse (caller error). Accepted: `cpu`, `cuda`, `cuda:N`.
    #[error("invalid device `{spec}`: expected `cpu`, `cuda` or `cuda:N`")]
    InvalidDevice {
        /// The text that was given.
        spec: Box<str>,
    },
    /// The caller asked for a device this build left out (build configuration).
    #[error(
        "device {device} needs the `{feature}` cargo feature, which this build does not enable"
    )]
    FeatureDisabled {
        /// The cargo feature that would provide it.
        feature: &'static str,
        /// The device that was asked for.
        device: crate::Device,
    },
    /// The device exists in this build but not on this machine: no driver, or no such ordinal
    /// (the machine).
    #[error("device {device} is unavailable: {available} such device(s) found")]
    DeviceUnavailable {
        /// The device that was asked for.
        device: crate::Device,
        /// How many devices of that kind the driver reports.
        available: usize,
    },
    /// An epoch plan or rank slice was asked for with impossible parameters (caller error):
    /// a world of 0, a rank outside it, a block shuffle with an empty block or window.
    #[error("invalid epoch plan: {reason}")]
    InvalidPlan {
        /// What was wrong.
        reason: Box<str>,
    },
    /// A saved [`LoaderState`](crate::LoaderState) belongs to another dataset (caller error):
    /// resuming on it would silently read a different order.
    #[error("loader state does not match: {reason}")]
    StateMismatch {
        /// Which dataset the state names, and which it was given.
        reason: Box<str>,
    },
    /// A batch could not be collated: a column of a type the collate step does not handle, a
    /// null where a tensor needs a value (caller's data or configuration). Names the column.
    #[error("cannot collate: {reason}")]
    Collate {
        /// What was wrong, and in which column.
        reason: Box<str>,
    },
    /// A user collate closure ([`collate::from_fn`](crate::collate::from_fn)) failed.
    #[error("collate function failed: {0}")]
    UserCollate(Box<dyn std::error::Error + Send + Sync>),
    /// A worker thread panicked while producing a batch (a bug in a collate closure or a
    /// source). The panic was caught; the loader stops this epoch.
    #[error("a loader worker panicked: {message}")]
    WorkerPanicked {
        /// The panic message.
        message: Box<str>,
    },
    /// The loader's pipeline lost its workers without a word (they cannot panic uncaught, so
    /// this means a thread was killed).
    #[error("loader pipeline broken: {reason}")]
    PipelineBroken {
        /// What was observed.
        reason: Box<str>,
    },
    /// Producing a batch failed; says which batch, with the cause.
    #[error("batch {batch} of epoch {epoch}: {source}")]
    Batch {
        /// The epoch.
        epoch: u64,
        /// The batch's number within this rank's epoch.
        batch: u64,
        /// What went wrong.
        source: Box<Error>,
    },
    /// A streaming cache's byte budget cannot hold what it must (configuration): a shard
    /// larger than the budget, or other processes' shards filling a shared directory.
    #[error("shard cache budget of {budget} bytes cannot hold {needed} bytes")]
    CacheBudget {
        /// Bytes that had to fit.
        needed: u64,
        /// The budget.
        budget: u64,
    },
    /// A fetched shard is not the one the manifest describes (the object changed or was
    /// corrupted): its hash or row count differs. Nothing of it is read.
    #[error("shard {uri} does not match its manifest: {reason}")]
    ShardCorrupt {
        /// The shard's URI.
        uri: Box<str>,
        /// What differs.
        reason: Box<str>,
    },
    /// A dataset operation failed in the layer below. Boxed: the data layer's error names
    /// files and rows, and every `Result` of this crate would otherwise carry its size.
    #[error(transparent)]
    Data(Box<mlinfra_data::Error>),
}

impl From<mlinfra_data::Error> for Error {
    fn from(error: mlinfra_data::Error) -> Self {
        Error::Data(Box::new(error))
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned so growth is a decision: box any payload that would push it past this.
    #[test]
    fn error_stays_small() {
        assert!(
            size_of::<Error>() <= 40,
            "Error is {} bytes",
            size_of::<Error>()
        );
    }
}
