//! The error type of `mlinfra-serve`.

/// Errors returned by `mlinfra-serve`.
///
/// Each variant documents who is at fault: the caller, the machine, or a lower layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model refused a forward pass (a token outside its vocabulary, a position past its
    /// length) or its weights could not be used.
    #[error(transparent)]
    Model(Box<mlinfra_train::Error>),

    /// A weight tensor the model cannot use: missing, of the wrong shape or type for the
    /// architecture, or bytes that are not whole blocks. Caller error (the file).
    #[error("weight tensor {tensor}: {reason}")]
    Weights {
        /// The tensor's name in the file.
        tensor: Box<str>,
        /// What does not fit.
        reason: Box<str>,
    },

    /// Every KV block is referenced: the scheduler must wait or preempt (capacity).
    #[error("all {blocks} KV blocks are in use")]
    OutOfBlocks {
        /// Blocks in the pool.
        blocks: usize,
    },

    /// A block id that is outside the pool, or used in a way its state forbids (freeing a
    /// free block, sharing or caching one nobody references). Caller error.
    #[error("invalid KV block operation: {reason}")]
    InvalidBlock {
        /// The block.
        block: u32,
        /// What was wrong.
        reason: Box<str>,
    },

    /// A sequence used in a way its state forbids (admitted twice, grown without blocks,
    /// freed twice...). Caller error.
    #[error("invalid sequence operation: {reason}")]
    InvalidSequence {
        /// The sequence.
        seq: u64,
        /// What was wrong.
        reason: Box<str>,
    },

    /// A request the scheduler refuses (a duplicate id, an empty prompt, one that could never
    /// fit in KV memory) or an update that does not match the step it answers. Caller error.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// The request.
        request: u64,
        /// What was wrong.
        reason: Box<str>,
    },

    /// Sampling parameters out of range, or logits that cannot be sampled (NaN). Caller
    /// error (or, for NaN logits, a broken model).
    #[error("invalid sampling: {reason}")]
    InvalidSampling {
        /// What was wrong, naming the field.
        reason: Box<str>,
    },

    /// A flat batch whose layout or tensor shapes do not fit the KV memory (overlapping query
    /// ranges, a block table shorter than its context...). Caller error.
    #[error("invalid attention batch: {reason}")]
    InvalidBatch {
        /// What was wrong, naming the sequence.
        reason: Box<str>,
    },

    /// Calls in an order the API forbids (scheduling a step before the last one's update).
    /// Caller error.
    #[error("out-of-order call: {reason}")]
    CallOrder {
        /// What was expected instead.
        reason: Box<str>,
    },

    /// An adapter cannot be unloaded while requests use it: retry once they finish.
    #[error("adapter `{name}` is in use by {requests} live request(s)")]
    AdapterInUse {
        /// The adapter.
        name: Box<str>,
        /// Live requests that use it.
        requests: usize,
    },

    /// The kernels failed to run a step: a device lost, out of memory or misbehaving (the
    /// machine).
    #[error("kernels failed: {reason}")]
    Kernels {
        /// What was running.
        reason: Box<str>,
        /// What the kernels reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A configuration that cannot work (zero blocks...). Caller error.
    #[error("invalid serving configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the field.
        reason: Box<str>,
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
            size_of::<Error>() <= 40,
            "Error is {} bytes",
            size_of::<Error>()
        );
    }

    #[test]
    fn lower_layer_errors_pass_through_unchanged() {
        let below = mlinfra_train::Error::ModelLayout {
            reason: "2 layers, 3 expected".into(),
        };
        let text = below.to_string();
        assert_eq!(Error::Model(Box::new(below)).to_string(), text);
    }
}
