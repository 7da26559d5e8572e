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
//! Two measures, each the median of `--reps` runs of `--steps` timed steps after `--warmup`:
//!
//! - **weak scaling** (how DDP is usually reported): every rank keeps `--batch` samples per
//!   step, so N ranks train N × batch samples per step;
//! - **strong scaling**: the global batch stays `--batch`, split over the ranks.
//!
//! A step is forward, backward, `DataParallel::accumulate` and `step` (gradient all-reduce or
//! reduce-scatter, clipping, optimizer, weight all-gather, reload into the module). Prints one
//! JSON line per configuration, then a Markdown table of samples/s and speed-ups.

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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
    // Then `reps` passes in a rotating order, so a slow spell of this shared machine does not
    // always fall on the same configuration.
    let mut seconds = vec![Vec::new(); configs.len()];
    for rep in 0..args.reps {
        for k in (0..configs.len()).map(|i| (i + rep) % configs.len()) {
            let (ranks, group, batch) = configs[k];
            seconds[k].push(group_run(&args, ranks, group, batch)?);
        }
    }
    let mut samples_per_s = Vec::new();
    for (&(ranks, group, batch), runs) in configs.iter().zip(seconds) {
        let seconds = median(runs);
        let rate = (ranks * batch * args.steps) as f64 / seconds;
        let name = match group {
            Group::DataParallel(sharding) => sharding_name(sharding),
            Group::Independent => "independent",
        };
        println!(
            "{}",
            json!({"ranks": ranks, "group": name, "batch_per_rank": batch,
                   "steps": args.steps, "seconds": seconds, "samples_per_s": rate,
                   "reps": args.reps})
        );
        samples_per_s.push(rate);
    }
    let base = samples_per_s[0];
    let rows: Vec<_> = std::iter::once(format!("{} independent jobs (ceiling)", args.ranks))
        .chain(args.shardings.iter().map(|&s| sharding_name(s).to_owned()))
        .zip(samples_per_s[1..].chunks(2))
        .map(|(name, pair)| (name, pair[0], pair[1]))
        .collect();
    println!(
        "\n| {} ranks × 1 thread | weak: samples/s | weak speed-up | strong: samples/s | strong speed-up |",
        args.ranks
    );
    println!("|---|---|---|---|---|");
    println!("| 1 rank × 1 thread (base) | {base:.0} | 1.00x | {base:.0} | 1.00x |");
    for (name, weak, strong) in rows {
        println!(
            "| {name} | {weak:.0} | {:.2}x | {strong:.0} | {:.2}x |",
            weak / base,
            strong / base
        );
    }
    Ok(())
}
