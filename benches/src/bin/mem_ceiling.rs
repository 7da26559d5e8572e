//! `mem_ceiling`: the decode ceiling of this machine (issue 24, item 1). Decoding one token
//! reads every weight once, so a memory-bound decoder cannot beat read bandwidth divided by
//! the bytes a step reads; this measures both.
//!
//! ```text
//! cargo run --release -p mlinfra-benches --bin mem_ceiling -- [--model PATH.gguf] [--mib 1024] [--rounds 7]
//! {"threads":1,"read_gb_s":...}
//! {"threads":2,"read_gb_s":...}
//! {"model":"...","bytes_per_token":...,"f32_bytes_per_token":...,"ceiling_tokens_per_s":{"1":...,"2":...}}
//! ```
//!
//! Bandwidth: a max-reduction over a buffer far larger than the last-level cache (1 GiB by
//! default), split evenly over 1 thread, then over every core (`available_parallelism`), the
//! best of `--rounds` passes after one untimed pass (pages faulted in). A max-reduction reads
//! each byte once and keeps 16 independent lanes, so it is bound by reads, not by the
//! adder's latency (an f64 sum reads ~3x slower and measures the FPU, not memory).
//!
//! Bytes per token: every tensor of the GGUF, in its stored (quantized) size, except the
//! token embedding, of which one row is read (all of it when the output projection is tied to
//! it: `output.weight` absent). `f32_bytes_per_token` is the same with every weight in f32,
//! what a decoder that dequantizes at load reads.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use mlinfra_data::tensor::GgufFile;
use serde_json::json;

/// The largest value of `data`, 16 lanes at a time (vectorized by the compiler).
fn max_reduce(data: &[f32]) -> f32 {
    let mut lanes = [f32::MIN; 16];
    let mut chunks = data.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(value);
        }
    }
    let tail = chunks.remainder().iter().copied().fold(f32::MIN, f32::max);
    lanes.iter().copied().fold(tail, f32::max)
}

/// Read bandwidth in GB/s over `data` with `threads` threads: the best of `rounds` passes.
fn read_bandwidth(data: &[f32], threads: usize, rounds: usize) -> f64 {
    let per = data.len().div_ceil(threads);
    let pass = || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = data
                .chunks(per)
                .map(|part| scope.spawn(move || max_reduce(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a reduction thread"))
                .fold(f32::MIN, f32::max)
        })
    };
    std::hint::black_box(pass());
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let started = Instant::now();
        std::hint::black_box(pass());
        best = best.min(started.elapsed().as_secs_f64());
    }
    (data.len() * 4) as f64 / best / 1e9
}

/// (bytes a decode step reads as stored, the same in f32).
fn bytes_per_token(file: &GgufFile) -> (u64, u64) {
    let tied = file.tensor_info("output.weight").is_none();
    let (mut stored, mut f32_bytes) = (0u64, 0u64);
    for tensor in file.tensors() {
        let (bytes, elements) = (tensor.byte_len() as u64, tensor.n_elements());
        if tensor.name() == "token_embd.weight" {
            // GGUF shapes list the fastest dimension first: [hidden, vocab].
            let rows = tensor.shape().last().copied().unwrap_or(1).max(1);
            let (row, row_f32) = (bytes / rows, elements / rows * 4);
            if tied {
                stored += bytes + row;
                f32_bytes += elements * 4 + row_f32;
            } else {
                stored += row;
                f32_bytes += row_f32;
            }
        } else {
            stored += bytes;
            f32_bytes += elements * 4;
        }
    }
    (stored, f32_bytes)
}

fn main() -> anyhow::Result<()> {
    let mut model: Option<PathBuf> = mlinfra_test_utils::models_dir()
        .map(|dir| dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .filter(|path| path.is_file());
    let mut mib = 1024usize;
    let mut rounds = 7usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(value()?.into()),
            "--mib" => mib = value()?.parse().context("--mib")?,
            "--rounds" => rounds = value()?.parse().context("--rounds")?,
            other => bail!("unknown flag {other}; flags: --model PATH.gguf --mib N --rounds N"),
        }
    }
    if mib == 0 || rounds == 0 {
        bail!("--mib and --rounds must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Distinct values, so no page is a shared zero page.
    let data: Vec<f32> = (0..mib << 18).map(|i| (i % 4093) as f32).collect();
    let mut ceilings = serde_json::Map::new();
    let (stored, f32_bytes) = match &model {
        Some(path) => bytes_per_token(&GgufFile::open(path)?),
        None => (0, 0),
    };
    let mut levels = vec![1];
    if cores > 1 {
        levels.push(cores);
    }
    for threads in levels {
        let gb_s = read_bandwidth(&data, threads, rounds);
        println!("{}", json!({"threads": threads, "read_gb_s": gb_s}));
        if stored > 0 {
            ceilings.insert(threads.to_string(), json!(gb_s * 1e9 / stored as f64));
        }
    }
    if let Some(path) = model {
        println!(
            "{}",
            json!({
                "model": path.display().to_string(),
                "bytes_per_token": stored,
                "f32_bytes_per_token": f32_bytes,
                "ceiling_tokens_per_s": ceilings,
            })
        );
    }
    Ok(())
}
