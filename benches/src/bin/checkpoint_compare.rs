//! Checkpoint costs of mlinfra-train beside the plain file operations they stand in for.
//!
//! ```text
//! cargo run --release -p mlinfra-benches --bin checkpoint_compare -- \
//!     [--width 2048] [--batch 64] [--reps 5] [--steps 16] [--every 4] [--dir DIR]
//! ```
//!
//! Model: an MLP `width -> width -> width -> width` (3 x width² weights; 12.6 M parameters
//! at 2048), AdamW, fp32: a checkpoint holds 12 bytes per parameter (master weights and the
//! two moments), about 151 MB at 2048.
//!
//! 1. **Write throughput.** `Checkpointer::save` in sync mode (stream the container, SHA-256,
//!    temp file, fsync, rename, directory fsync, manifest; the removal of the checkpoint it
//!    replaces runs in the background and is waited for untimed) against, for the same bytes: a plain
//!    copy of the rank file (`std::fs::copy`, then fsync: what `cp && sync` does), a plain
//!    write of the bytes from memory (`write_all`, then fsync), and (Linux) a direct write of
//!    them from an aligned buffer (`O_DIRECT`, then fsync: what `dd oflag=direct conv=fsync`
//!    does, the ceiling of the checkpointer's own direct path). Median of `--reps` saves.
//! 2. **Step stall.** `--steps` training steps, saving every `--every`: without checkpoints,
//!    with async saves, with sync saves. Reports the median step, the median step that saves,
//!    and the whole loop's overhead over the run without checkpoints.
//!
//! Prints one JSON line per measurement, then a Markdown table. `--dir` (default
//! `$HOME/.cache/mlinfra/bench-checkpoints`) should be on the disk checkpoints would use:
//! `/tmp` may be memory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_test_utils::rng::SplitMix64;
use mlinfra_train::checkpoint::{CheckpointConfig, Checkpointer, MANIFEST, SaveMode, step_dir};
use mlinfra_train::collective::Single;
use mlinfra_train::models::{Mlp, MlpConfig};
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::{DataParallel, Precision, Sharding, StepOptions};
use serde_json::json;

struct Args {
    width: usize,
    batch: usize,
    reps: usize,
    steps: u64,
    every: u64,
    dir: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let mut args = Args {
        width: 2048,
        batch: 64,
        reps: 5,
        steps: 16,
        every: 4,
        dir: home.join(".cache/mlinfra/bench-checkpoints"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--width" => args.width = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--reps" => args.reps = value()?.parse()?,
            "--steps" => args.steps = value()?.parse()?,
            "--every" => args.every = value()?.parse()?,
            "--dir" => args.dir = value()?.into(),
            other => bail!("unknown flag {other}"),
        }
    }
    if args.every == 0 || args.reps == 0 {
        bail!("--every and --reps must be at least 1");
    }
    Ok(args)
}

/// A model, its optimizer engine, and a fixed batch to step on.
struct Job {
    engine: DataParallel<Single>,
    model: Option<Mlp>,
    x: Tensor<2>,
    y: Tensor<1, Int>,
}

impl Job {
    fn new(args: &Args) -> anyhow::Result<Job> {
        let device = Device::flex().autodiff();
        let model = MlpConfig {
            input: args.width,
            hidden: vec![args.width, args.width],
            classes: args.width,
            seed: 0,
        }
        .init(&device)?;
        let options = StepOptions {
            schedule: LrSchedule::constant(1e-4),
            max_grad_norm: Some(1.0),
            sharding: Sharding::Replicated,
            precision: Precision::F32,
            loss_scaling: None,
        };
        let (engine, model) = DataParallel::new(Single, model, &OptimizerConfig::adamw(), options)?;
        let mut rng = SplitMix64::new(1);
        let x = rng.vec_f32(args.batch * args.width, -1.0, 1.0);
        let y: Vec<i64> = (0..args.batch)
            .map(|_| (rng.next_u64() % args.width as u64) as i64)
            .collect();
        Ok(Job {
            engine,
            model: Some(model),
            x: Tensor::from_data(TensorData::new(x, [args.batch, args.width]), &device),
            y: Tensor::from_data(TensorData::new(y, [args.batch]), &device),
        })
    }

    fn step(&mut self) -> anyhow::Result<()> {
        let model = self.model.take().context("model")?;
        let grads = model.loss(self.x.clone(), self.y.clone()).backward();
        let samples = self.y.dims()[0] as u64;
        self.engine.accumulate(&model, &grads, samples)?;
        let (model, _) = self.engine.step(model)?;
        self.model = Some(model);
        Ok(())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// What part 1 compares, in its rotating order.
const WRITERS: [&str; 4] = [
    "mlinfra sync save",
    "plain copy + fsync",
    "plain write + fsync",
    "direct write + fsync",
];

/// Writes `data` to `target` with `O_DIRECT` from an aligned copy (made before the clock
/// starts), the few tail bytes through a second handle, then fsyncs; returns the seconds.
#[cfg(target_os = "linux")]
fn direct_write(data: &[u8], target: &Path) -> anyhow::Result<f64> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    let mut storage = vec![0u8; data.len() + ALIGN];
    let start = storage.as_ptr().align_offset(ALIGN);
    let aligned = &mut storage[start..start + data.len()];
    aligned.copy_from_slice(data);
    let bulk = data.len() / ALIGN * ALIGN;
    let started = Instant::now();
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(target)?;
    for chunk in aligned[..bulk].chunks(16 << 20) {
        file.write_all(chunk)?;
    }
    drop(file);
    let mut tail = File::options().write(true).open(target)?;
    tail.seek(SeekFrom::Start(bulk as u64))?;
    tail.write_all(&aligned[bulk..])?;
    tail.sync_all()?;
    drop(tail);
    sync_dir(target.parent().context("no parent")?)?;
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(not(target_os = "linux"))]
fn direct_write(_data: &[u8], _target: &Path) -> anyhow::Result<f64> {
    Ok(f64::NAN)
}

/// Part 1: sync saves against a plain copy, a plain write and a direct write of the same
/// bytes. They are timed in a rotating order (each rep starts with the next one), so the
/// disk's state after one (writeback in flight, a warm page cache) does not always favour the
/// same one.
fn write_throughput(args: &Args, job: &mut Job) -> anyhow::Result<[f64; 4]> {
    let root = args.dir.join("throughput");
    fresh_dir(&root)?;
    let plain = args.dir.join("plain");
    fresh_dir(&plain)?;
    let mut checkpointer = Checkpointer::new(CheckpointConfig {
        dir: root.clone(),
        keep_last: 1,
        mode: SaveMode::Sync,
    })?;
    // The bytes the plain operations copy or write: the newest rank file, kept aside untimed.
    let source = args.dir.join("source.bpk");
    let mut save = |job: &mut Job| -> anyhow::Result<(f64, u64)> {
        let snapshot = job.engine.snapshot(None, 0)?;
        let started = Instant::now();
        checkpointer.save(job.engine.collective(), snapshot)?;
        let seconds = started.elapsed().as_secs_f64();
        // A sync save returns once its checkpoint is complete; the removal of the one it
        // replaces (keep_last 1) runs on in the background. Let it end before the next
        // writer is timed, so it slows none of them.
        checkpointer.wait(job.engine.collective())?;
        let dir = step_dir(&root, job.engine.steps());
        let rank_file = dir.join("rank-00000.bpk");
        std::fs::copy(&rank_file, &source)?;
        let bytes =
            std::fs::metadata(&rank_file)?.len() + std::fs::metadata(dir.join(MANIFEST))?.len();
        Ok((seconds, bytes))
    };
    let (_, mut bytes) = save(job)?;
    let mut seconds: [Vec<f64>; 4] = Default::default();
    for rep in 0..args.reps {
        job.step()?;
        for which in (0..WRITERS.len()).map(|i| (i + rep) % WRITERS.len()) {
            match which {
                0 => {
                    let (took, size) = save(job)?;
                    seconds[0].push(took);
                    bytes = size;
                }
                1 => {
                    let target = plain.join(format!("copy-{rep}.bpk"));
                    let started = Instant::now();
                    std::fs::copy(&source, &target)?;
                    File::open(&target)?.sync_all()?;
                    sync_dir(&plain)?;
                    seconds[1].push(started.elapsed().as_secs_f64());
                }
                2 => {
                    let data = std::fs::read(&source)?;
                    let target = plain.join(format!("write-{rep}.bpk"));
                    let started = Instant::now();
                    let mut file = File::create(&target)?;
                    file.write_all(&data)?;
                    file.sync_all()?;
                    drop(file);
                    sync_dir(&plain)?;
                    seconds[2].push(started.elapsed().as_secs_f64());
                }
                _ => {
                    let data = std::fs::read(&source)?;
                    let target = plain.join(format!("direct-{rep}.bpk"));
                    seconds[3].push(direct_write(&data, &target)?);
                }
            }
        }
        for entry in std::fs::read_dir(&plain)? {
            std::fs::remove_file(entry?.path())?;
        }
    }
    let mb_per_s = |seconds: f64| bytes as f64 / seconds / 1e6;
    let result = seconds.map(median);
    for (name, seconds) in WRITERS.iter().zip(result) {
        println!(
            "{}",
            json!({"measure": "write", "who": name, "bytes": bytes, "seconds": seconds,
                   "mb_per_s": mb_per_s(seconds), "reps": args.reps})
        );
    }
    std::fs::remove_dir_all(&root)?;
    std::fs::remove_dir_all(&plain)?;
    std::fs::remove_file(&source)?;
    Ok(result.map(mb_per_s))
}

/// What one loop of part 2 measured.
struct Loop {
    total: f64,
    step: f64,
    save_step: Option<f64>,
    save_call: Option<f64>,
    snapshot: Option<f64>,
}

/// Part 2: `steps` steps, saving every `every` in `mode` (`None`: no checkpoints).
fn step_loop(args: &Args, job: &mut Job, mode: Option<SaveMode>) -> anyhow::Result<Loop> {
    let root = args.dir.join("stall");
    fresh_dir(&root)?;
    let mut checkpointer = match mode {
        Some(mode) => Some(Checkpointer::new(CheckpointConfig {
            dir: root.clone(),
            keep_last: 2,
            mode,
        })?),
        None => None,
    };
    let (mut plain_steps, mut save_steps, mut save_calls) = (Vec::new(), Vec::new(), Vec::new());
    let mut snapshots = Vec::new();
    let started = Instant::now();
    for i in 1..=args.steps {
        let step_started = Instant::now();
        job.step()?;
        let mut saved = false;
        if let Some(checkpointer) = &mut checkpointer {
            if i % args.every == 0 {
                let call = Instant::now();
                // What the trainer does: handles now, copies on the writer (async) or inline.
                let snapshot = job.engine.snapshot_deferred(None, 0)?;
                snapshots.push(call.elapsed().as_secs_f64());
                checkpointer.save(job.engine.collective(), snapshot)?;
                save_calls.push(call.elapsed().as_secs_f64());
                saved = true;
            } else {
                checkpointer.poll(job.engine.collective())?;
            }
        }
        let took = step_started.elapsed().as_secs_f64();
        if saved {
            save_steps.push(took);
        } else {
            plain_steps.push(took);
        }
    }
    if let Some(checkpointer) = &mut checkpointer {
        checkpointer.wait(job.engine.collective())?;
    }
    let total = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&root)?;
    Ok(Loop {
        total,
        step: median(plain_steps),
        save_step: (!save_steps.is_empty()).then(|| median(save_steps)),
        save_call: (!save_calls.is_empty()).then(|| median(save_calls)),
        snapshot: (!snapshots.is_empty()).then(|| median(snapshots)),
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)?;
    let mut job = Job::new(&args)?;
    let params = job.engine.layout().len();
    eprintln!(
        "{params} parameters, about {} MB per checkpoint, in {}",
        params * 12 / 1_000_000,
        args.dir.display()
    );
    // Warm-up: the first steps allocate.
    for _ in 0..2 {
        job.step()?;
    }
    let [ours, copy, write, direct] = write_throughput(&args, &mut job)?;

    let mut loops = Vec::new();
    for (name, mode) in [
        ("no checkpoints", None),
        ("async saves", Some(SaveMode::Async)),
        ("sync saves", Some(SaveMode::Sync)),
    ] {
        let result = step_loop(&args, &mut job, mode)?;
        println!(
            "{}",
            json!({"measure": "stall", "who": name, "steps": args.steps, "every": args.every,
                   "total_s": result.total, "median_step_s": result.step,
                   "median_saving_step_s": result.save_step, "median_save_call_s": result.save_call,
                   "median_snapshot_s": result.snapshot})
        );
        loops.push((name, result));
    }

    println!(
        "\n| write ({params} parameters) | MB/s (median of {}) | mlinfra / this |",
        args.reps
    );
    println!("|---|---|---|");
    println!(
        "| mlinfra sync save (stream, SHA-256, temp, fsync, rename, manifest) | {ours:.0} | 1.00 |"
    );
    println!(
        "| plain copy of the rank file + fsync | {copy:.0} | {:.2} |",
        ours / copy
    );
    println!(
        "| plain write of its bytes + fsync | {write:.0} | {:.2} |",
        ours / write
    );
    println!(
        "| direct write of its bytes (O_DIRECT) + fsync | {direct:.0} | {:.2} |",
        ours / direct
    );
    let base = loops[0].1.total;
    println!(
        "\n| {} steps, a save every {} | loop s | overhead | median step s | median saving step s | snapshot + save() block s | of a step |",
        args.steps, args.every
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, result) in &loops {
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        let stall = result.save_call.map_or_else(
            || "-".to_owned(),
            |v| format!("{:.1}%", v / result.step * 100.0),
        );
        println!(
            "| {name} | {:.2} | {:+.1}% | {:.3} | {} | {} (snapshot {}) | {stall} |",
            result.total,
            (result.total / base - 1.0) * 100.0,
            result.step,
            show(result.save_step),
            show(result.save_call),
            show(result.snapshot),
        );
    }
    Ok(())
}
