//! Shared helpers for the mlinfra examples. Not a library for users: each example is a file
//! under `examples/` with its own run command.

pub mod arithmetic;
pub mod plot;
pub mod serve_sim;

/// SmolLM2-135M-Instruct's GGUF where `scripts/fetch-model` puts it (`$MLINFRA_MODELS`, default
/// `~/.cache/mlinfra/models`): the model examples use when none is given.
pub fn default_model() -> std::path::PathBuf {
    mlinfra_test_utils::models_dir()
        .unwrap_or_default()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// What one layer of the stack can do today. The README's status table says the same in prose.
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    /// The layer number in the design (1 = data, 7 = agent).
    pub level: &'static str,
    /// The crate that implements it.
    pub krate: &'static str,
    /// What works today, honestly.
    pub status: &'static str,
}

/// The seven layers, bottom first.
pub const LAYERS: [Layer; 6] = [
    Layer {
        level: "1",
        krate: "mlinfra-data",
        status: "Parquet datasets (take, scan), fingerprints, mmap IPC cache, CSV/JSON conversion, GGUF/safetensors",
    },
    Layer {
        level: "2",
        krate: "mlinfra-loader",
        status: "run-time device choice (cpu, cuda:N); O(1)-resumable epoch plans and rank splits; prefetching loader of burn tensor data (zero-copy from the IPC cache), weighted mixing, byte-budgeted object-store streaming, example loader_probe",
    },
    Layer {
        level: "3-4",
        krate: "mlinfra-train",
        status: "data-parallel trainer over the loader (threads, ZeRO-1), verified atomic checkpoints with bit-identical resume and N-to-M resharding, example train_digits",
    },
    Layer {
        level: "5",
        krate: "mlinfra-serve",
        status: "paged KV blocks with prefix caching, continuous-batching scheduler with preemption, sampling, batch-invariant paged attention, Llama runner, streaming engine with n-gram speculative decoding, example serve_sim",
    },
    Layer {
        level: "6",
        krate: "mlinfra-kernels",
        status: "software-Vulkan runtime probe; GELU kernel checked against an f64 twin",
    },
    Layer {
        level: "7",
        krate: "mlinfra-agent",
        status: "error type only",
    },
];
