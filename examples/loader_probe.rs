//! `loader_probe`: one epoch of `mlinfra-loader` from the command line, for scripts and for
//! the benchmarks. Its flags and its last line are a contract other tools rely on.
//!
//! ```text
//! cargo run --release -p mlinfra-examples --example loader_probe -- \
//!     --data PATH --batch 256 --shuffle exact|block|none --seed 0 --epoch 0 --rank R --world W \
//!     [--stop-after K --state-out FILE] [--resume FILE] [--dump-ids]
//! ```
//!
//! - `--data PATH`: an IPC cache directory (one holding `mlinfra-cache.json`), or Parquet
//!   data (a file, directory or glob, local or `s3://`...). `--cache DIR` reads Parquet data
//!   through an IPC cache in DIR, built on first use.
//! - Iterates this rank's share of one epoch, or its first K batches with `--stop-after K`;
//!   `--state-out FILE` then writes the loader state, and `--resume FILE` continues from one.
//! - `--dump-ids` prints each batch's sample ids on stdout, one line per batch, space-separated.
//! - The last line of stdout is one JSON object: `samples`, `batches`, `samples_per_s`,
//!   `first_batch_ms` (from building the loader to holding its first batch), `wait_ms` (time
//!   blocked waiting for batches after the first), plus `pinned` and the buffer counters.
//! - `--stream-cache DIR --budget BYTES`: read object-store data (`s3://`, `gs://`, `az://`)
//!   through a local shard cache in DIR that never holds more than BYTES (shards fetched ahead,
//!   verified against the dataset's manifest); pair it with `--shuffle block --block ROWS`.
//!   `--storage-option KEY=VALUE` (repeatable) configures the store; `--manifest FILE` names
//!   the dataset's manifest (written by `Manifest::write`), else it is computed here by hashing
//!   every shard once (a full read of the dataset).
//! - Also: `--workers N`, `--prefetch N`, `--columns a,b` (default every column),
//!   `--block N --window M` (block shuffle), `--remainder drop|pad`, `--step-ms MS` (sleep per
//!   batch, a simulated train step), `--progress` (a progress bar on stderr).
//! - `--device cuda:N` (build with `--features cuda`): stage batches in pinned memory and build
//!   a device tensor from every column, as a training step would, synchronizing once at the
//!   end; the JSON then also counts `pinned_bytes` and `stage_ms`.
//!
//! Errors are printed on stderr with their causes; the exit status is then 2.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use mlinfra_data::{DatasetBuilder, IpcCache, Manifest};
use mlinfra_loader::{
    Device, Loader, LoaderState, Remainder, Shuffle, Source, Streaming, TensorBatch, Tensors,
};

#[derive(Debug)]
struct Args {
    data: String,
    cache: Option<String>,
    stream_cache: Option<String>,
    budget: Option<u64>,
    manifest: Option<String>,
    storage_options: Vec<(String, String)>,
    batch: usize,
    shuffle: String,
    block: u64,
    window: u64,
    seed: u64,
    epoch: u64,
    rank: u64,
    world: u64,
    remainder: Remainder,
    workers: Option<usize>,
    prefetch: Option<usize>,
    columns: Option<Vec<String>>,
    stop_after: Option<u64>,
    state_out: Option<String>,
    resume: Option<String>,
    dump_ids: bool,
    step: Duration,
    progress: bool,
    device: Device,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        data: String::new(),
        cache: None,
        stream_cache: None,
        budget: None,
        manifest: None,
        storage_options: Vec::new(),
        batch: 256,
        shuffle: "none".into(),
        block: 8192,
        window: 16,
        seed: 0,
        epoch: 0,
        rank: 0,
        world: 1,
        remainder: Remainder::Pad,
        workers: None,
        prefetch: None,
        columns: None,
        stop_after: None,
        state_out: None,
        resume: None,
        dump_ids: false,
        step: Duration::ZERO,
        progress: false,
        device: Device::Cpu,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => args.data = value()?,
            "--cache" => args.cache = Some(value()?),
            "--stream-cache" => args.stream_cache = Some(value()?),
            "--budget" => args.budget = Some(value()?.parse().context("--budget")?),
            "--manifest" => args.manifest = Some(value()?),
            "--storage-option" => {
                let option = value()?;
                let (key, value) = option
                    .split_once('=')
                    .context("--storage-option takes KEY=VALUE")?;
                args.storage_options
                    .push((key.to_owned(), value.to_owned()));
            }
            "--batch" => args.batch = value()?.parse().context("--batch")?,
            "--shuffle" => args.shuffle = value()?,
            "--block" => args.block = value()?.parse().context("--block")?,
            "--window" => args.window = value()?.parse().context("--window")?,
            "--seed" => args.seed = value()?.parse().context("--seed")?,
            "--epoch" => args.epoch = value()?.parse().context("--epoch")?,
            "--rank" => args.rank = value()?.parse().context("--rank")?,
            "--world" => args.world = value()?.parse().context("--world")?,
            "--remainder" => {
                args.remainder = match value()?.as_str() {
                    "drop" => Remainder::Drop,
                    "pad" => Remainder::Pad,
                    other => bail!("--remainder takes drop or pad, not {other}"),
                }
            }
            "--workers" => args.workers = Some(value()?.parse().context("--workers")?),
            "--prefetch" => args.prefetch = Some(value()?.parse().context("--prefetch")?),
            "--columns" => {
                args.columns = Some(value()?.split(',').map(str::to_owned).collect());
            }
            "--stop-after" => args.stop_after = Some(value()?.parse().context("--stop-after")?),
            "--state-out" => args.state_out = Some(value()?),
            "--resume" => args.resume = Some(value()?),
            "--step-ms" => {
                args.step = Duration::from_millis(value()?.parse().context("--step-ms")?);
            }
            "--dump-ids" => args.dump_ids = true,
            "--progress" => args.progress = true,
            "--device" => args.device = value()?.parse().context("--device")?,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.data.is_empty() {
        bail!("--data PATH is required");
    }
    Ok(args)
}

fn shuffle(args: &Args) -> anyhow::Result<Shuffle> {
    Ok(match args.shuffle.as_str() {
        "none" => Shuffle::None,
        "exact" => Shuffle::Exact,
        "block" => Shuffle::Block {
            block: args.block,
            window: args.window,
        },
        other => bail!("--shuffle takes exact, block or none, not {other}"),
    })
}

/// The source `--data` (and `--cache`) name.
fn open_source(args: &Args) -> anyhow::Result<Arc<dyn Source>> {
    let is_cache = std::path::Path::new(&args.data)
        .join(mlinfra_data::cache::INDEX_FILE)
        .is_file();
    if is_cache {
        return Ok(Arc::new(IpcCache::open(&args.data)?));
    }
    let mut builder = DatasetBuilder::new(args.data.as_str());
    for (key, value) in &args.storage_options {
        builder = builder.with_storage_option(key, value);
    }
    let dataset = builder.build()?;
    if let Some(dir) = &args.stream_cache {
        let budget = args.budget.context("--stream-cache needs --budget BYTES")?;
        let manifest = match &args.manifest {
            Some(path) => Manifest::read(path)?,
            None => dataset.manifest()?.clone(),
        };
        let mut streaming = Streaming::builder(manifest, dir, budget);
        for (key, value) in &args.storage_options {
            streaming = streaming.storage_option(key, value);
        }
        if let Some(columns) = &args.columns {
            streaming = streaming.columns(columns.iter().cloned());
        }
        return Ok(Arc::new(streaming.build()?));
    }
    let dataset = match &args.columns {
        Some(columns) => dataset.project(columns)?,
        None => dataset,
    };
    Ok(match &args.cache {
        Some(dir) => Arc::new(dataset.ipc_cache(dir).open_or_create()?),
        None => Arc::new(dataset),
    })
}

fn run(args: &Args) -> anyhow::Result<()> {
    let source = open_source(args)?;
    let started = Instant::now();
    let mut collate = Tensors::new();
    if let Some(columns) = &args.columns {
        collate = collate.columns(columns.iter().cloned());
    }
    let mut builder = Loader::builder(source, args.batch)
        .collate(collate)
        .shuffle(shuffle(args)?)
        .seed(args.seed)
        .epoch(args.epoch)
        .rank(args.rank, args.world)
        .remainder(args.remainder)
        .device(args.device);
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    if let Some(prefetch) = args.prefetch {
        builder = builder.prefetch(prefetch);
    }
    if let Some(path) = &args.resume {
        // A regular file of at most 1 MiB: a loader state is a few hundred bytes.
        let json = mlinfra_data::files::read_regular(std::path::Path::new(path), 1 << 20)
            .with_context(|| format!("reading {path}"))?;
        let state: LoaderState = serde_json::from_slice(&json)
            .with_context(|| format!("{path} is not a loader state"))?;
        builder = builder.resume(state);
    }
    let mut loader = builder.build()?;
    // Where batches go: none for the CPU (the probe measures the loader, not a model).
    let upload_to = match args.device {
        Device::Cpu => None,
        gpu => Some(gpu.to_burn()?),
    };

    let total = args.stop_after.map_or(loader.batches_in_epoch(), |k| {
        k.min(loader.batches_in_epoch())
    });
    let bar = if args.progress {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} batches  {msg}  eta {eta}")
                .expect("a valid template"),
        )
    } else {
        ProgressBar::hidden()
    };

    let mut first_batch = None;
    let mut wait_at_first = Duration::ZERO;
    let mut stdout = std::io::stdout().lock();
    let mut delivered = 0u64;
    while delivered < total {
        let Some(batch) = loader.next() else { break };
        let batch = batch?;
        if first_batch.is_none() {
            first_batch = Some(started.elapsed());
            wait_at_first = loader.stats().wait;
        }
        if args.dump_ids {
            use std::io::Write;
            let line: Vec<String> = batch.ids.iter().map(u64::to_string).collect();
            writeln!(stdout, "{}", line.join(" "))?;
        }
        delivered += 1;
        if delivered.is_multiple_of(16) {
            let stats = loader.stats();
            bar.set_message(format!(
                "{:.0} samples/s, waited {:.1} ms, queue {}",
                stats.samples_per_s(),
                stats.wait.as_secs_f64() * 1e3,
                stats.queue_depth
            ));
        }
        bar.set_position(delivered);
        match &upload_to {
            Some(device) => upload(batch.data, device)?,
            None => drop(batch),
        }
        std::thread::sleep(args.step);
    }
    if let Some(device) = &upload_to {
        device
            .sync()
            .context("waiting for the host-to-device copies")?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(path) = &args.state_out {
        std::fs::write(path, serde_json::to_string(loader.state())?)
            .with_context(|| format!("writing {path}"))?;
    }
    let stats = loader.stats();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    use std::io::Write;
    writeln!(
        stdout,
        "{}",
        serde_json::json!({
            "samples": stats.samples,
            "batches": stats.batches,
            "samples_per_s": stats.samples as f64 / elapsed.as_secs_f64().max(1e-9),
            "first_batch_ms": first_batch.map(ms),
            "wait_ms": ms(stats.wait.saturating_sub(wait_at_first)),
            "epoch": loader.epoch(),
            "consumed": loader.state().consumed(),
            "pinned": loader.staging().pinned,
            "read_ms": ms(stats.read_time),
            "collate_ms": ms(stats.collate_time),
            "stage_ms": ms(stats.stage_time),
            "pinned_bytes": stats.pinned_bytes,
            "bytes_read": stats.source.bytes_read,
            "buffers_allocated": stats.buffers.allocated,
            "buffers_reused": stats.buffers.reused,
        })
    )?;
    Ok(())
}

/// Builds a device tensor from every column of `batch`, as a training step would: from pinned
/// memory each is an asynchronous host-to-device copy. Columns are flattened to one
/// dimension (their ranks differ) and keep their dtype.
fn upload(batch: TensorBatch, device: &burn::tensor::Device) -> anyhow::Result<()> {
    for (name, data) in batch.into_columns() {
        let dtype = data.dtype();
        let len = data.num_elements();
        let flat = TensorData::try_from_bytes(data.into_bytes(), vec![len], dtype)
            .with_context(|| format!("column `{name}`"))?;
        let options = (device, dtype);
        if dtype.is_float() {
            drop(Tensor::<1>::from_data(flat, options));
        } else if dtype.is_bool() {
            drop(Tensor::<1, Bool>::from_data(flat, options));
        } else {
            drop(Tensor::<1, Int>::from_data(flat, options));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
