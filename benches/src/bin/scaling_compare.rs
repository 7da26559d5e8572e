//! Data-parallel scaling of mlinfra-train from 1 to N ranks on a compute-bound model.
//!
//! ```text
//! cargo run --release -p mlinfra-benches --bin scaling_compare -- \
//!     [--width 1024] [--depth 3] [--batch 256] [--steps 8] [--warmup 2] [--reps 3] \
//!     [--ranks 2] [--sharding replicated,zero1,zero2]
//! ```
//!
//! Model: an MLP `width -> width (x depth-1) -> width classes`, AdamW, fp32, synthetic inputs
//! (fixed per rank, so no loader is timed). Ranks are threads of one process over the
//! in-process collective, each confined to its own one-thread rayon pool (burn's CPU kernels
//! parallelise over the current pool), so N ranks use N cores and 1 rank × 1 thread is the
//! base: the scaling of data parallelism itself, not of burn's intra-op threads.
//!
//! Beside the data-parallel job, the same threads run as independent one-rank jobs that never
//! communicate (`independent`): what these cores give this workload at best, the ceiling of
//! any data-parallel speed-up on this machine (two vCPUs of a VM need not be two whole cores).
//!
//! Two measures, each over `--steps` timed steps after `--warmup`:
//!
//! - **weak scaling** (how DDP is usually reported): every rank keeps `--batch` samples per
//!   step, so N ranks train N × batch samples per step;
//! - **strong scaling**: the global batch stays `--batch`, split over the ranks.
//!
//! A step is forward, backward, `DataParallel::accumulate` and `step` (gradient all-reduce or
//! reduce-scatter, clipping, optimizer, weight all-gather, reload into the module).
//!
//! The speed of a shared VM drifts by ±15% from one minute to the next, more than the effects
//! measured here. So the runs go in `--reps` rounds; each round times the 1-rank base and
//! every configuration, in an order that rotates from round to round, and a configuration's
//! speed-up in a round is against the base of that same round (a paired ratio: drift that
//! spans a round cancels). The speed-up reported is the median of the rounds' ratios, with
//! their range. Prints one JSON line per configuration, then a Markdown table.

use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_test_utils::rng::SplitMix64;
use mlinfra_train::collective::{Collective, Single, ThreadGroup};
use mlinfra_train::models::{Mlp, MlpConfig};
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::{DataParallel, Precision, Sharding, StepOptions};
use serde_json::json;

struct Args {
    width: usize,
    depth: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    reps: usize,
    ranks: usize,
    shardings: Vec<Sharding>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        width: 1024,
        depth: 3,
        batch: 256,
        steps: 8,
        warmup: 2,
        reps: 3,
        ranks: 2,
        shardings: vec![Sharding::Replicated, Sharding::Zero1, Sharding::Zero2],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--width" => args.width = value()?.parse()?,
            "--depth" => args.depth = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--steps" => args.steps = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--reps" => args.reps = value()?.parse()?,
            "--ranks" => args.ranks = value()?.parse()?,
            "--sharding" => {
                args.shardings = value()?
                    .split(',')
                    .map(|s| match s {
                        "replicated" => Ok(Sharding::Replicated),
                        "zero1" => Ok(Sharding::Zero1),
                        "zero2" => Ok(Sharding::Zero2),
                        other => bail!("unknown sharding {other}"),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if args.depth == 0 || args.steps == 0 || args.reps == 0 || args.ranks == 0 {
        bail!("--depth, --steps, --reps and --ranks must be at least 1");
    }
    if !args.batch.is_multiple_of(args.ranks) {
        bail!("--batch must be a multiple of --ranks (strong scaling splits it)");
    }
    Ok(args)
}

/// One rank's run: `warmup` untimed steps, then `steps` timed ones on a `batch`-sample batch.
/// Returns the timed seconds (the slowest rank's clock is what the group achieves; every step
/// ends in a collective, so the ranks finish together).
fn rank_run<C: Collective>(
    collective: C,
    args: &Args,
    sharding: Sharding,
    batch: usize,
) -> anyhow::Result<f64> {
    let device = Device::flex().autodiff();
    let model = MlpConfig {
        input: args.width,
        hidden: vec![args.width; args.depth - 1],
        classes: args.width,
        seed: 0,
    }
    .init(&device)?;
    let options = StepOptions {
        schedule: LrSchedule::constant(1e-4),
        max_grad_norm: Some(1.0),
        sharding,
        precision: Precision::F32,
        loss_scaling: None,
    };
    let rank = collective.rank() as u64;
    let (mut engine, mut model): (DataParallel<C>, Mlp) =
        DataParallel::new(collective, model, &OptimizerConfig::adamw(), options)?;
    let mut rng = SplitMix64::new(1 + rank);
    let x = Tensor::<2>::from_data(
        TensorData::new(
            rng.vec_f32(batch * args.width, -1.0, 1.0),
            [batch, args.width],
        ),
        &device,
    );
    let labels: Vec<i64> = (0..batch)
        .map(|_| (rng.next_u64() % args.width as u64) as i64)
        .collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let mut started = Instant::now();
    for step in 0..args.warmup + args.steps {
        if step == args.warmup {
            started = Instant::now();
        }
        let grads = model.loss(x.clone(), y.clone()).backward();
        engine.accumulate(&model, &grads, batch as u64)?;
        model = engine.step(model)?.0;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// What a group of threads runs.
#[derive(Clone, Copy)]
enum Group {
    /// The ranks of one data-parallel job.
    DataParallel(Sharding),
    /// As many independent one-rank jobs, which never communicate: the most that this many
    /// cores give this workload, the ceiling data parallelism is measured against.
    Independent,
}

/// `ranks` threads, each on a one-thread pool, `batch` samples each; the slowest's seconds.
fn group_run(args: &Args, ranks: usize, group: Group, batch: usize) -> anyhow::Result<f64> {
    let seconds: Vec<anyhow::Result<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadGroup::new(ranks)
            .into_iter()
            .map(|collective| {
                scope.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .context("building the rank's thread pool")?;
                    pool.install(|| match group {
                        Group::DataParallel(sharding) => {
                            rank_run(collective, args, sharding, batch)
                        }
                        Group::Independent => {
                            drop(collective);
                            rank_run(Single, args, Sharding::Replicated, batch)
                        }
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a rank panicked")))
            .collect()
    });
    let mut slowest = 0.0f64;
    for s in seconds {
        slowest = slowest.max(s?);
    }
    Ok(slowest)
}

/// One configuration over every round.
struct Summary {
    /// Median samples/s.
    rate: f64,
    /// Median, lowest and highest of the per-round speed-ups over the base.
    speedup: f64,
    low: f64,
    high: f64,
}

impl Summary {
    fn of(rates: &[f64], speedups: &[f64]) -> Summary {
        let mut sorted = speedups.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            rate: median(rates),
            speedup: median(speedups),
            low: sorted[0],
            high: sorted[sorted.len() - 1],
        }
    }
}

/// The middle value (the upper middle of an even count); `values` is not empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn sharding_name(sharding: Sharding) -> &'static str {
    match sharding {
        Sharding::Replicated => "replicated",
        Sharding::Zero1 => "zero1",
        Sharding::Zero2 => "zero2",
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let params = {
        let w = args.width;
        args.depth * (w * w + w)
    };
    eprintln!(
        "MLP {}x{} ({params} parameters), batch {}, {} timed steps, median of {}",
        args.depth, args.width, args.batch, args.steps, args.reps
    );
    // Every configuration: (ranks, sharding, per-rank batch). The base first, then per
    // sharding the weak and the strong run.
    let mut configs = vec![
        (1, Group::Independent, args.batch),
        (args.ranks, Group::Independent, args.batch),
        (args.ranks, Group::Independent, args.batch / args.ranks),
    ];
    for &sharding in &args.shardings {
        configs.push((args.ranks, Group::DataParallel(sharding), args.batch));
        configs.push((
            args.ranks,
            Group::DataParallel(sharding),
            args.batch / args.ranks,
        ));
    }
    // One untimed pass over all of them (thread arenas, first-touch page faults, caches), so
    // the one measured first is not the one that pays for them.
    for &(ranks, group, batch) in &configs {
        group_run(&args, ranks, group, batch)?;
    }
    // Then `reps` rounds, each over every configuration (the base included) in an order that
    // rotates, so a slow spell of this shared machine does not always fall on the same one.
    let mut rates = vec![Vec::new(); configs.len()];
    for rep in 0..args.reps {
        for k in (0..configs.len()).map(|i| (i + rep) % configs.len()) {
            let (ranks, group, batch) = configs[k];
            let seconds = group_run(&args, ranks, group, batch)?;
            rates[k].push((ranks * batch * args.steps) as f64 / seconds);
        }
    }
    // Speed-ups round by round, against the base of the same round.
    let speedups: Vec<Vec<f64>> = rates
        .iter()
        .map(|runs| {
            runs.iter()
                .zip(&rates[0])
                .map(|(r, base)| r / base)
                .collect()
        })
        .collect();
    let summaries: Vec<Summary> = rates
        .iter()
        .zip(&speedups)
        .map(|(runs, ratios)| Summary::of(runs, ratios))
        .collect();
    for (&(ranks, group, batch), summary) in configs.iter().zip(&summaries) {
        let name = match group {
            Group::DataParallel(sharding) => sharding_name(sharding),
            Group::Independent => "independent",
        };
        println!(
            "{}",
            json!({"ranks": ranks, "group": name, "batch_per_rank": batch,
                   "steps": args.steps, "samples_per_s": summary.rate,
                   "speedup_median": summary.speedup, "speedup_min": summary.low,
                   "speedup_max": summary.high, "reps": args.reps})
        );
    }
    let base = &summaries[0];
    let rows: Vec<_> = std::iter::once(format!("{} independent jobs (ceiling)", args.ranks))
        .chain(args.shardings.iter().map(|&s| sharding_name(s).to_owned()))
        .zip(summaries[1..].chunks(2))
        .collect();
    println!(
        "\n| {} ranks × 1 thread, {} rounds | weak: samples/s | weak speed-up (range) | strong: samples/s | strong speed-up (range) |",
        args.ranks, args.reps
    );
    println!("|---|---|---|---|---|");
    println!(
        "| 1 rank × 1 thread (base) | {:.0} | 1.00x | {:.0} | 1.00x |",
        base.rate, base.rate
    );
    for (name, pair) in rows {
        let (weak, strong) = (&pair[0], &pair[1]);
        println!(
            "| {name} | {:.0} | {:.2}x ({:.2}–{:.2}) | {:.0} | {:.2}x ({:.2}–{:.2}) |",
            weak.rate,
            weak.speedup,
            weak.low,
            weak.high,
            strong.rate,
            strong.speedup,
            strong.low,
            strong.high
        );
    }
    Ok(())
}
