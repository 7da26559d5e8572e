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

/// Keeps freed memory in the process instead of handing it back to the kernel after every
/// tensor: call once at the start of a training or inference binary.
///
/// burn's `flex` backend allocates a fresh buffer for each operation's output. glibc serves
/// buffers above its mmap threshold (128 KiB, raised adaptively) with `mmap` and trims the heap
/// top above 128 KiB, so each step maps, zero-faults and unmaps the same megabytes again: a
/// quarter of a LoRA fine-tune's CPU time went to the kernel (page faults, and TLB shootdowns
/// across the gemm threads). Serving up to 32 MiB from the heap (glibc's ceiling for the
/// threshold), trimming only above 1 GiB and growing the heap 256 MiB at a time halved that and
/// made `finetune` 1.2x faster at the same peak RSS (docs/BENCHMARKS.md). Other allocators
/// are left alone; mimalloc's defaults measured slower here, for the same reason (it returns
/// freed pages eagerly).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's tuning parameters; it is called before any threads
    // that allocate are started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
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

/// The process's peak resident set (`VmHWM`), in bytes; 0 where /proc does not say.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// An async example's `main`: runs `run` on a multi-threaded tokio runtime; an error (or a
/// runtime that cannot start) is printed as `NAME: error: causes` on stderr and exits 2.
pub fn block_on_main(
    name: &str,
    run: impl Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let outcome = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
