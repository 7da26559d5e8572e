//! `train_digits`: an MLP on scikit-learn's digits (8×8 images, 10 classes) with
//! `mlinfra-train`, the task with a published reference (scikit-learn's `MLPClassifier`).
//!
//! ```text
//! scripts/digits-export        # once: ~/.cache/mlinfra/bench-data/digits (no download)
//! cargo run --release -p mlinfra-examples --example train_digits -- \
//!     [--data DIR] [--ranks N] [--sharding replicated|zero1|zero2] [--epochs 60] [--batch 64] \
//!     [--hidden 64] [--lr 1e-3] [--seed 0] [--optimizer adamw|sgd] [--micro-batches 1] \
//!     [--checkpoint-dir DIR --checkpoint-every STEPS] [--async] [--resume DIR] \
//!     [--metrics FILE] [--plot FILE.png] [--progress] [--stop-after STEPS] \
//!     [--max-restarts N] [--precision f32|bf16|f16] [--threads-per-rank N]
//! ```
//!
//! - `--ranks N`: N data-parallel ranks as threads of this process (an in-process collective);
//!   each takes `--batch / N` samples of every global batch of `--batch`.
//! - `--resume DIR`: continue from the newest valid checkpoint in DIR (and keep checkpointing
//!   there); without one there, start fresh. `--checkpoint-dir DIR` checkpoints without
//!   resuming. SIGTERM stops after the current step with a final checkpoint.
//! - `--precision bf16|f16`: the model computes in half precision on fp32 master weights; f16
//!   adds dynamic loss scaling (PyTorch `GradScaler`'s defaults).
//! - `--threads-per-rank N`: each rank's compute runs in its own pool of N threads (default:
//!   the machine's cores divided among the ranks), so ranks do not fight over cores.
//! - `--max-restarts N` (with `--checkpoint-dir` or `--resume`): run the training as a child
//!   process under `mlinfra_train::Supervisor`, restarting it from its newest valid checkpoint
//!   up to N times when it dies (try `kill -9` on the child); SIGTERM to this process is passed
//!   on as a graceful stop.
//! - `--plot FILE.png` (default `train_digits-loss.png` next to the metrics, or in the working
//!   directory): the training loss per step and the test loss at each evaluation.
//! - The last line of stdout is one JSON object: `accuracy`, `test_loss`, `steps`,
//!   `samples_per_s` (training samples per second of this run, all ranks), `seconds`,
//!   `resumed_from`, `stopped`, `ranks`, `threads_per_rank`, `precision`.
//!
//! Errors are printed on stderr with their causes; the exit status is then 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use burn::tensor::Device;
use mlinfra_data::{Dataset, IpcCache};
use mlinfra_loader::{Loader, Remainder, Shuffle};
use mlinfra_train::checkpoint::{CheckpointConfig, SaveMode};
use mlinfra_train::collective::{Collective, ThreadGroup};
use mlinfra_train::models::MlpConfig;
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::trainer::{CheckpointSchedule, Classification, Summary, TrainerConfig};
use mlinfra_train::{LossScaling, Precision, Sharding, StepOptions, Supervisor, Trainer};

#[derive(Debug, Clone)]
struct Args {
    data: PathBuf,
    ranks: usize,
    sharding: Sharding,
    epochs: u64,
    batch: usize,
    hidden: usize,
    lr: f64,
    seed: u64,
    optimizer: OptimizerConfig,
    micro_batches: u64,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_every: u64,
    save_mode: SaveMode,
    resume: bool,
    metrics: Option<PathBuf>,
    plot: Option<PathBuf>,
    progress: bool,
    stop_after: Option<u64>,
    max_restarts: Option<u32>,
    precision: Precision,
    threads_per_rank: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let mut args = Args {
        data: std::env::var_os("MLINFRA_BENCH_DATA")
            .map_or_else(|| home.join(".cache/mlinfra/bench-data"), PathBuf::from)
            .join("digits"),
        ranks: 1,
        sharding: Sharding::Replicated,
        epochs: 60,
        batch: 64,
        hidden: 64,
        lr: 1e-3,
        seed: 0,
        optimizer: OptimizerConfig::adamw(),
        micro_batches: 1,
        checkpoint_dir: None,
        checkpoint_every: 0,
        save_mode: SaveMode::Sync,
        resume: false,
        metrics: None,
        plot: None,
        progress: false,
        stop_after: None,
        max_restarts: None,
        precision: Precision::F32,
        threads_per_rank: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => args.data = value()?.into(),
            "--ranks" => args.ranks = value()?.parse().context("--ranks")?,
            "--sharding" => {
                args.sharding = match value()?.as_str() {
                    "replicated" => Sharding::Replicated,
                    "zero1" => Sharding::Zero1,
                    "zero2" => Sharding::Zero2,
                    other => bail!("--sharding is replicated, zero1 or zero2, not {other}"),
                }
            }
            "--epochs" => args.epochs = value()?.parse().context("--epochs")?,
            "--batch" => args.batch = value()?.parse().context("--batch")?,
            "--hidden" => args.hidden = value()?.parse().context("--hidden")?,
            "--lr" => args.lr = value()?.parse().context("--lr")?,
            "--seed" => args.seed = value()?.parse().context("--seed")?,
            "--optimizer" => {
                args.optimizer = match value()?.as_str() {
                    // scikit-learn's MLPClassifier: Adam without weight decay, L2 alpha 1e-4.
                    "adamw" => OptimizerConfig::AdamW {
                        beta1: 0.9,
                        beta2: 0.999,
                        epsilon: 1e-8,
                        weight_decay: 0.0,
                    },
                    "sgd" => OptimizerConfig::Sgd {
                        momentum: 0.9,
                        dampening: 0.0,
                        nesterov: true,
                        weight_decay: 1e-4,
                    },
                    other => bail!("--optimizer is adamw or sgd, not {other}"),
                }
            }
            "--micro-batches" => {
                args.micro_batches = value()?.parse().context("--micro-batches")?
            }
            "--checkpoint-dir" => args.checkpoint_dir = Some(value()?.into()),
            "--checkpoint-every" => {
                args.checkpoint_every = value()?.parse().context("--checkpoint-every")?
            }
            "--async" => args.save_mode = SaveMode::Async,
            "--resume" => {
                args.checkpoint_dir = Some(value()?.into());
                args.resume = true;
            }
            "--metrics" => args.metrics = Some(value()?.into()),
            "--plot" => args.plot = Some(value()?.into()),
            "--progress" => args.progress = true,
            "--stop-after" => args.stop_after = Some(value()?.parse().context("--stop-after")?),
            "--precision" => {
                args.precision = match value()?.as_str() {
                    "f32" => Precision::F32,
                    "bf16" => Precision::Bf16,
                    "f16" => Precision::F16,
                    other => bail!("--precision is f32, bf16 or f16, not {other}"),
                }
            }
            "--threads-per-rank" => {
                args.threads_per_rank = Some(value()?.parse().context("--threads-per-rank")?)
            }
            "--max-restarts" => {
                args.max_restarts = Some(value()?.parse().context("--max-restarts")?)
            }
            other => bail!("unknown flag {other} (see the header of examples/train_digits.rs)"),
        }
    }
    if args.ranks == 0
        || args.batch == 0
        || !args
            .batch
            .is_multiple_of(args.ranks * args.micro_batches as usize)
    {
        bail!(
            "--batch {} must be a positive multiple of --ranks {} × --micro-batches {}",
            args.batch,
            args.ranks,
            args.micro_batches
        );
    }
    if args.optimizer == OptimizerConfig::adamw() {
        args.optimizer = OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        };
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(max_restarts) = args.max_restarts {
        return supervise(&args, max_restarts);
    }
    let (train, test) = open_digits(&args.data)?;
    // The loader drops the last partial batch of an epoch (each rank its share).
    let per_rank_batch = args.batch / args.ranks / args.micro_batches as usize;
    let steps_per_epoch = train.num_rows() / args.batch as u64;
    let steps = steps_per_epoch * args.epochs;
    let metrics = args.metrics.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("train_digits-{}.jsonl", std::process::id()))
    });
    if args.metrics.is_none() || !args.resume {
        let _ = std::fs::remove_file(&metrics);
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))
        .context("installing the SIGTERM handler")?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads_per_rank = args
        .threads_per_rank
        .unwrap_or_else(|| (cores / args.ranks).max(1));
    let summaries: Vec<anyhow::Result<Summary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadGroup::new(args.ranks)
            .into_iter()
            .map(|collective| {
                let (args, train, test, stop, metrics) = (&args, &train, &test, &stop, &metrics);
                scope.spawn(move || {
                    // The rank's own pool: burn's CPU kernels (and their matmuls) parallelise
                    // over the current rayon pool, so this confines the rank to its cores.
                    let rank = collective.rank();
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads_per_rank)
                        .thread_name(move |i| format!("rank-{rank}-{i}"))
                        .build()
                        .context("building the rank's thread pool")?;
                    pool.install(|| {
                        rank_main(
                            collective,
                            args,
                            train,
                            test,
                            stop,
                            metrics,
                            per_rank_batch,
                            steps,
                        )
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a rank panicked")))
            .collect()
    });
    let mut summaries = summaries.into_iter();
    let summary = summaries.next().context("no rank ran")??;
    for other in summaries {
        other?;
    }
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| PathBuf::from("train_digits-loss.png"));
    plot_losses(&metrics, &plot).with_context(|| format!("plotting {}", plot.display()))?;
    eprintln!("loss curve: {}", plot.display());
    let eval = summary.eval.unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "accuracy": eval.accuracy(),
            "test_loss": eval.loss(),
            "steps": summary.steps,
            "samples_per_s": summary.samples_per_s,
            "seconds": summary.seconds,
            "resumed_from": summary.resumed_from,
            "stopped": summary.stopped,
            "ranks": args.ranks,
            "threads_per_rank": threads_per_rank,
            "precision": args.precision,
        })
    );
    Ok(())
}

/// The digits export as memory-mapped Arrow caches next to the Parquet files.
/// `--max-restarts`: this process supervises a child running the same command line, minus
/// `--max-restarts`, plus `--resume DIR` so every launch continues from the newest checkpoint.
fn supervise(args: &Args, max_restarts: u32) -> anyhow::Result<()> {
    let Some(dir) = &args.checkpoint_dir else {
        bail!("--max-restarts needs --checkpoint-dir or --resume: restarts resume from there");
    };
    let mut child_args = Vec::new();
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        if arg == "--max-restarts" {
            given.next();
        } else {
            child_args.push(arg);
        }
    }
    // One metrics log across launches (a resumed run appends), so the plot shows them all.
    let metrics = args
        .metrics
        .clone()
        .unwrap_or_else(|| dir.join("metrics.jsonl"));
    if !args.resume {
        // A fresh run: every launch resumes, so the first must not find another run's
        // checkpoints (the trainer refuses them the same way without a supervisor).
        if let Some(&newest) = mlinfra_train::checkpoint::complete_steps(dir)?.first() {
            return Err(mlinfra_train::Error::CheckpointDirInUse {
                dir: dir.as_path().into(),
                newest,
            }
            .into());
        }
        let _ = std::fs::remove_file(&metrics);
    }
    let supervisor = Supervisor::new(max_restarts);
    signal_hook::flag::register(signal_hook::consts::SIGTERM, supervisor.stop_flag())
        .context("installing the SIGTERM handler")?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let report = supervisor.run(|restart| {
        if restart > 0 {
            eprintln!("train_digits: restart {restart} of {max_restarts}");
        }
        let mut command = std::process::Command::new(&exe);
        command
            .args(&child_args)
            .arg("--resume")
            .arg(dir)
            .arg("--metrics")
            .arg(&metrics);
        command
    })?;
    for attempt in &report.attempts {
        eprintln!(
            "train_digits: launch {} ended with {} after {:.1} s",
            attempt.restart, attempt.status, attempt.seconds
        );
    }
    Ok(())
}

fn open_digits(dir: &Path) -> anyhow::Result<(Arc<IpcCache>, Arc<IpcCache>)> {
    if !dir.join("meta.json").is_file() {
        bail!(
            "no digits export in {} (run scripts/digits-export, or pass --data DIR)",
            dir.display()
        );
    }
    let open = |name: &str| -> anyhow::Result<Arc<IpcCache>> {
        let parquet = dir.join(format!("{name}.parquet"));
        let cache = Dataset::open(parquet.to_str().context("data path is not UTF-8")?)?
            .ipc_cache(dir.join(format!("cache-{name}")))
            .open_or_create()?;
        Ok(Arc::new(cache))
    };
    Ok((open("train")?, open("test")?))
}

#[allow(clippy::too_many_arguments)]
fn rank_main(
    collective: mlinfra_train::collective::ThreadCollective,
    args: &Args,
    train: &Arc<IpcCache>,
    test: &Arc<IpcCache>,
    stop: &Arc<AtomicBool>,
    metrics: &Path,
    per_rank_batch: usize,
    steps: u64,
) -> anyhow::Result<Summary> {
    let rank = collective.rank();
    let device = Device::flex().autodiff();
    let model = MlpConfig {
        input: 64,
        hidden: vec![args.hidden],
        classes: 10,
        seed: args.seed,
    }
    .init(&device)?;
    let loader = Loader::builder(Arc::clone(train), per_rank_batch)
        .shuffle(Shuffle::Exact)
        .seed(args.seed)
        .remainder(Remainder::Drop)
        .workers(1);
    let checkpoint = args.checkpoint_dir.as_ref().map(|dir| CheckpointSchedule {
        config: CheckpointConfig {
            dir: dir.clone(),
            keep_last: 3,
            mode: args.save_mode,
        },
        every: args.checkpoint_every,
        resume: args.resume,
    });
    let config = TrainerConfig {
        steps: args.stop_after.map_or(steps, |s| s.min(steps)),
        micro_batches: args.micro_batches,
        eval_every: Some((steps / 10).max(1)),
        checkpoint,
        metrics: Some(metrics.to_path_buf()),
        progress: args.progress,
        seed: args.seed,
    };
    let options = StepOptions {
        schedule: LrSchedule::constant(args.lr),
        max_grad_norm: None,
        sharding: args.sharding,
        precision: args.precision,
        loss_scaling: (args.precision == Precision::F16).then(LossScaling::pytorch),
    };
    let test = Arc::clone(test);
    let mut trainer = Trainer::new(
        collective,
        model,
        Classification::new("pixels", "label"),
        loader,
        &args.optimizer,
        options,
        config,
    )?
    .with_stop_flag(Arc::clone(stop))
    .with_eval(move |rank, world| {
        Ok(Loader::builder(Arc::clone(&test), 512)
            .rank(rank as u64, world as u64)
            .workers(1)
            .build()?)
    });
    if rank == 0
        && let Some(step) = trainer.resumed_from()
    {
        eprintln!("resumed from step {step}");
    }
    Ok(trainer.fit()?)
}

/// Train loss per step and test loss per evaluation, from the metrics log.
fn plot_losses(metrics: &Path, out: &Path) -> anyhow::Result<()> {
    let mut train = Vec::new();
    let mut test = Vec::new();
    let log = mlinfra_train::trainer::read_metrics(metrics)?;
    if log.torn_lines > 0 {
        eprintln!(
            "train_digits: skipped {} torn line(s) in {} (a launch killed mid-write)",
            log.torn_lines,
            metrics.display()
        );
    }
    for value in &log.records {
        let (Some(step), Some(loss)) = (
            value.get("step").and_then(|v| v.as_f64()),
            value.get("loss").and_then(|v| v.as_f64()),
        ) else {
            continue;
        };
        match value.get("kind").and_then(|v| v.as_str()) {
            Some("train") => train.push((step, loss)),
            Some("eval") => test.push((step, loss)),
            _ => {}
        }
    }
    mlinfra_examples::plot::loss_curves(
        out,
        "train_digits: cross-entropy",
        &[("train (per step)", train), ("test (per evaluation)", test)],
    )
}
