//! The Rust half of `benches/compare/data.sh`: scan throughput and `take` latency of
//! `mlinfra-data` over a Parquet file written by pyarrow, printed as JSON lines.
//!
//! ```text
//! data_compare --data FILE [--cache DIR] [--threads 1,2] [--scan-reps 5] [--batch-size 8192]
//!              [--take-rows 256] [--take-reps 200] [--parquet-take-reps N] [--take-warmup 5]
//!              [--seed 42]
//! ```
//!
//! - `scan`, once per thread count: `Dataset::open(..).project(["emb", "label"])` and a full
//!   scan, timed together; GB/s is [`decoded_bytes`] over wall time (median of the reps). The
//!   thread count is the size of the crate's decode pool, a rayon pool built with default
//!   settings, which rayon sizes from `RAYON_NUM_THREADS`; the pool is a process-wide static,
//!   so each thread count runs in a child process with that variable set, and the child
//!   reports how many decode threads it saw (`decode_threads_seen`, from `/proc`). It also
//!   reports the best rep (`best_gbps`) and the bytes per CPU-second of the process
//!   (`gb_per_cpu_s`, median CPU time), both less disturbed by a busy machine. An empty
//!   `--threads ''` skips the scans.
//! - `take_parquet` / `take_cache`: `Dataset::take` and `IpcCache::take` of `--take-rows`
//!   random rows (SplitMix64 from `--seed`, the same rows `data.py` takes), p50/p99 over
//!   `--take-reps` (`--parquet-take-reps` for Parquet when given; 0 skips it), after
//!   `--take-warmup` untimed takes of the first index sets. `take_cache`
//!   runs only with `--cache`, which builds the cache there on first use. `take_parquet` also
//!   reports the page bytes one take fetched (`Dataset::bytes_read`, averaged).
//!
//! Run with: `cargo run --release -p mlinfra-benches --bin data_compare -- --data F --cache D`

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mlinfra_benches::{DATA_COLUMNS, SplitMix64, decoded_bytes, quantile};
use mlinfra_data::Dataset;
use serde_json::json;

#[derive(Debug, Clone)]
struct Options {
    data: PathBuf,
    cache: Option<PathBuf>,
    threads: Vec<usize>,
    scan_reps: usize,
    /// `None`: the crate's default (sized in bytes per row group).
    batch_size: Option<usize>,
    take_rows: usize,
    take_reps: usize,
    parquet_take_reps: Option<usize>,
    take_warmup: usize,
    seed: u64,
    /// Set in the child processes: run the scan only, at this thread count.
    scan_child: bool,
}

fn parse() -> anyhow::Result<Options> {
    let mut options = Options {
        data: PathBuf::new(),
        cache: None,
        threads: vec![1, 2],
        scan_reps: 5,
        batch_size: None,
        take_rows: mlinfra_benches::TAKE_ROWS,
        take_reps: 200,
        parquet_take_reps: None,
        take_warmup: 5,
        seed: 42,
        scan_child: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--scan-child" {
            options.scan_child = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag} {value}"))
        };
        match flag.as_str() {
            "--data" => options.data = value.clone().into(),
            "--cache" => options.cache = Some(value.clone().into()),
            "--threads" => {
                // Empty: no scans (for profiling the takes alone).
                options.threads = value
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(|t| t.parse().with_context(|| format!("--threads {value}")))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--scan-reps" => options.scan_reps = number()?.max(1),
            "--batch-size" => options.batch_size = Some(number()?),
            "--take-rows" => options.take_rows = number()?,
            "--take-reps" => options.take_reps = number()?.max(1),
            "--parquet-take-reps" => options.parquet_take_reps = Some(number()?),
            "--take-warmup" => options.take_warmup = number()?,
            "--seed" => options.seed = value.parse().with_context(|| format!("--seed {value}"))?,
            _ => bail!("unknown option {flag} (see the file's docs)"),
        }
    }
    ensure!(!options.data.as_os_str().is_empty(), "--data is required");
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let options = parse()?;
    let uri = options
        .data
        .to_str()
        .context("--data must be UTF-8")?
        .to_owned();
    if options.scan_child {
        return scan(&options, &uri);
    }
    for &threads in &options.threads {
        // The decode pool is sized once per process, so each thread count gets a process.
        let status = Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .arg("--scan-child")
            .env("RAYON_NUM_THREADS", threads.to_string())
            .status()?;
        ensure!(status.success(), "scan at {threads} threads failed");
    }
    take(&options, &uri)
}

/// Scans the dataset `scan_reps` times (after one untimed scan that warms the page cache).
fn scan(options: &Options, uri: &str) -> anyhow::Result<()> {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    let run = || -> anyhow::Result<(u64, u64)> {
        let dataset = Dataset::open(uri)?.project(&DATA_COLUMNS)?;
        let (mut rows, mut bytes) = (0, 0);
        let mut scan = dataset.scan();
        if let Some(rows) = options.batch_size {
            scan = scan.with_batch_size(rows);
        }
        for batch in scan.build() {
            let batch = black_box(batch?);
            rows += batch.num_rows() as u64;
            bytes += decoded_bytes(&batch);
        }
        Ok((rows, bytes))
    };
    let (rows, bytes) = run()?;
    let mut seconds = Vec::with_capacity(options.scan_reps);
    let mut cpu_seconds = Vec::with_capacity(options.scan_reps);
    for _ in 0..options.scan_reps {
        let (start, cpu_start) = (Instant::now(), cpu_time());
        let again = run()?;
        seconds.push(start.elapsed().as_secs_f64());
        if let (Some(end), Some(start)) = (cpu_time(), cpu_start) {
            cpu_seconds.push(end - start);
        }
        ensure!(again == (rows, bytes), "scans disagree");
    }
    let best = seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let median = quantile(&mut seconds, 0.5);
    let cpu = (!cpu_seconds.is_empty()).then(|| quantile(&mut cpu_seconds, 0.5));
    println!(
        "{}",
        json!({
            "side": "mlinfra", "bench": "scan", "threads": threads.parse::<usize>().ok(),
            "decode_threads_seen": decode_threads(), "batch_size": options.batch_size,
            "rows": rows, "bytes": bytes, "reps": options.scan_reps,
            "median_s": median, "best_s": best, "gbps": bytes as f64 / median / 1e9,
            "best_gbps": bytes as f64 / best / 1e9, "cpu_s": cpu,
            "gb_per_cpu_s": cpu.map(|cpu| bytes as f64 / cpu / 1e9),
        })
    );
    Ok(())
}

/// CPU seconds this process's live threads have run (the sum of `/proc/self/task/*/schedstat`,
/// nanoseconds), or `None` where `/proc` is not readable. Less disturbed than wall time by other
/// processes competing for the cores; threads that have exited are not counted (the decode
/// pool's threads live as long as the process).
fn cpu_time() -> Option<f64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let nanos: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(nanos as f64 / 1e9)
}

/// Threads of the crate's decode pool alive in this process (named `mlinfra-decode-N`; Linux
/// shows the first 15 bytes of a name), or `None` where `/proc` is not readable.
fn decode_threads() -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("mlinfra-decode"))
            .count(),
    )
}

fn take(options: &Options, uri: &str) -> anyhow::Result<()> {
    let dataset = Dataset::open(uri)?.project(&DATA_COLUMNS)?;
    let rows = dataset.num_rows();
    let mut rng = SplitMix64::new(options.seed);
    let index_sets: Vec<Vec<u64>> = (0..options.take_warmup + options.take_reps)
        .map(|_| rng.indices(options.take_rows, rows))
        .collect();

    let parquet_reps = options.parquet_take_reps.unwrap_or(options.take_reps);
    if parquet_reps > 0 {
        let sets = &index_sets[..options.take_warmup + parquet_reps.min(options.take_reps)];
        let before = dataset.bytes_read();
        // The first take after open maps the file and checks the list pages it touches (see
        // mlinfra_data::take); later takes reuse both. Timed apart, so both costs are shown.
        let start = Instant::now();
        dataset.take(&sets[0])?;
        let first_take_ms = start.elapsed().as_secs_f64() * 1e3;
        let parquet = time_takes(options, sets, |indices| {
            Ok(dataset.take(indices)?.num_rows())
        })?;
        // Page bytes fetched per take (warm-up included): how much of the file a take touches.
        let per_take = (dataset.bytes_read() - before) / (sets.len() as u64 + 1);
        report(
            "take_parquet",
            options,
            parquet,
            json!({ "bytes_read_per_take": per_take, "first_take_ms": first_take_ms }),
        );
    }

    if let Some(dir) = &options.cache {
        let start = Instant::now();
        let cache = dataset.ipc_cache(dir).open_or_create()?;
        println!(
            "{}",
            json!({
                "side": "mlinfra", "bench": "cache_open_or_create",
                "seconds": start.elapsed().as_secs_f64(),
            })
        );
        let cached = time_takes(options, &index_sets, |indices| {
            Ok(cache.take(indices)?.num_rows())
        })?;
        report("take_cache", options, cached, json!({}));
    }
    Ok(())
}

/// Runs `take` over the warm-up sets untimed, then times it over the rest.
fn time_takes(
    options: &Options,
    index_sets: &[Vec<u64>],
    mut take: impl FnMut(&[u64]) -> anyhow::Result<usize>,
) -> anyhow::Result<Vec<f64>> {
    let (warmup, timed) = index_sets.split_at(options.take_warmup);
    for indices in warmup {
        take(indices)?;
    }
    timed
        .iter()
        .map(|indices| {
            let start = Instant::now();
            let taken = take(black_box(indices))?;
            let elapsed: Duration = start.elapsed();
            ensure!(
                taken == indices.len(),
                "took {taken} rows of {}",
                indices.len()
            );
            Ok(elapsed.as_secs_f64() * 1e3)
        })
        .collect()
}

fn report(bench: &str, options: &Options, mut millis: Vec<f64>, extra: serde_json::Value) {
    let mut line = json!({
        "side": "mlinfra", "bench": bench, "rows": options.take_rows,
        "reps": millis.len(), "p50_ms": quantile(&mut millis, 0.5),
        "p99_ms": quantile(&mut millis, 0.99),
    });
    if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
        line.extend(extra.clone());
    }
    println!("{line}");
}
