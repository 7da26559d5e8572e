//! The error type of `mlinfra-train`.

/// Errors returned by `mlinfra-train`.
///
/// Each variant documents who is at fault: the caller, the machine, or a lower layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading data or choosing a device failed in the layers below.
    #[error(transparent)]
    Loader(#[from] mlinfra_loader::Error),

    /// A model file (GGUF, safetensors, tokenizer) could not be read or converted; the layer
    /// below says what and where.
    #[error(transparent)]
    ModelFile(Box<mlinfra_data::Error>),

    /// Model weights do not fit the architecture: a tensor is missing or has the wrong shape,
    /// or the file's metadata describes a model this crate does not build (input data).
    #[error("weights from {origin} do not fit: {reason}")]
    Weights {
        /// The file or files they came from.
        origin: Box<str>,
        /// What does not fit, naming the tensor or key.
        reason: Box<str>,
    },

    /// A module, flat vector or checkpoint does not have the parameter layout it should
    /// (names, shapes or counts differ; the message names the first difference). Caller error.
    #[error("parameter layout mismatch: {reason}")]
    ModelLayout {
        /// What differs, naming the parameter.
        reason: Box<str>,
    },

    /// A tensor operation failed on its device (a readback, an execution error).
    #[error("tensor operation failed: {reason}")]
    Tensor {
        /// What failed, naming the parameter where there is one.
        reason: Box<str>,
    },

    /// A rank left the collective group (returned early, crashed) while others still needed
    /// it; raised on the ranks left waiting instead of a hang.
    #[error("collective aborted: {reason}")]
    CollectiveAborted {
        /// Which rank noticed.
        reason: Box<str>,
    },

    /// Ranks called a collective with lengths or roots that do not fit together (a bug in the
    /// caller: every rank must make the same calls with the same lengths).
    #[error("collective call mismatch: {reason}")]
    CollectiveMismatch {
        /// What did not fit.
        reason: Box<str>,
    },

    /// A checkpoint file or directory could not be written, read or listed (disk full, no
    /// permission, ...). When saving, earlier checkpoints are untouched.
    #[error("checkpoint I/O failed at {}: {source}", path.display())]
    CheckpointIo {
        /// The file or directory.
        path: Box<std::path::Path>,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A checkpoint file is missing, truncated, altered (its SHA-256 differs from the
    /// manifest's) or malformed. Loading falls back to an older checkpoint.
    #[error("checkpoint is corrupt at {}: {reason}", path.display())]
    CheckpointCorrupt {
        /// The file.
        path: Box<std::path::Path>,
        /// What is wrong with it.
        reason: Box<str>,
    },

    /// A run that does not resume was pointed at a directory that already holds complete
    /// checkpoints: continuing would mix two runs' checkpoints (and a later resume would pick
    /// whichever has the higher step). Resume from them, or give the run an empty directory.
    /// Caller error.
    #[error(
        "checkpoint directory {} already holds checkpoints (the newest at step {newest}): \
         resume from them, or use an empty directory",
        dir.display()
    )]
    CheckpointDirInUse {
        /// The checkpoint root.
        dir: Box<std::path::Path>,
        /// The newest complete checkpoint's step.
        newest: u64,
    },

    /// A valid checkpoint does not fit the model or optimizer it is loaded into (parameter
    /// names or shapes, optimizer kind, optimizer state). Never resolved by silently starting
    /// over. Caller error.
    #[error("checkpoint does not fit: {reason}")]
    CheckpointMismatch {
        /// The first difference, naming the parameter or state.
        reason: Box<str>,
    },

    /// A supervised worker process could not be started (or waited for).
    #[error("cannot run worker {program}: {source}")]
    WorkerSpawn {
        /// The program.
        program: Box<str>,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A supervised worker failed on every allowed attempt.
    #[error("worker failed {attempts} times; the last exit: {status}")]
    WorkerFailed {
        /// Launches made (the first plus every restart).
        attempts: u32,
        /// How the last one ended (`exit status: 3`, `signal: 9 (SIGKILL)`).
        status: Box<str>,
    },

    /// An adapter directory (PEFT's `adapter_config.json` and `adapter_model.safetensors`)
    /// cannot be read or written, or does not fit the model it is loaded into: an unknown
    /// `peft_type`, a rank of 0, a field that is not supported, a tensor whose name or shape
    /// does not fit. Input data (or the machine, for I/O).
    #[error("adapter file {}: {reason}", path.display())]
    AdapterFile {
        /// The file (or directory).
        path: Box<std::path::Path>,
        /// What is wrong, naming the field or tensor.
        reason: Box<str>,
    },

    /// A configuration that cannot work: a trainer's (zero steps, a negative learning
    /// rate...), a model's shape, a collective's. Caller error.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the field.
        reason: Box<str>,
    },

    /// A [`LayerAttention`](crate::models::LayerAttention) hook failed (a serving engine's
    /// paged KV memory, say); its own error is the source.
    #[error("attention of layer {layer} failed: {source}")]
    Attention {
        /// The decoder layer.
        layer: usize,
        /// The hook's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An operation refused its input: an empty prompt, a token outside the vocabulary, a
    /// sequence longer than the model's context. Caller error.
    #[error("{operation} refused its input: {reason}")]
    InvalidInput {
        /// The operation (`Llama::forward`, `Llama::generate_greedy`...).
        operation: &'static str,
        /// What is wrong with the input.
        reason: Box<str>,
    },
}

impl From<mlinfra_data::Error> for Error {
    fn from(error: mlinfra_data::Error) -> Self {
        Error::ModelFile(Box::new(error))
    }
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
