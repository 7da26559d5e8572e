//! `serve_sim`: the serving engine on a synthetic workload, with a small deterministic
//! random-weight Llama on the CPU. A contract other tools rely on: the flags and JSON keys
//! below are stable.
//!
//! ```text
//! $ cargo run --release -p mlinfra-examples --example serve_sim -- \
//!       --requests 64 --concurrency 16 --prompt-len 16..96 --gen-len 8..48 \
//!       --kv-blocks 128 --block-size 16 --seed 1 [--prefix-share 0.5] \
//!       [--speculative ngram] [--dump]
//! {"id":0,"prompt_ids":[...],"output_ids":[...],"preempted":false,"prefix_hit_tokens":32}   (--dump, per request)
//! {"tokens_per_s":...,"ttft_p50_ms":...,"ttft_p99_ms":...,"preemptions":3,"prefix_hit_rate":0.21,"kv_peak_utilisation":0.98,"blocks_leaked":0,"spec_acceptance_rate":0.0}
//! ```
//!
//! The workload is a pure function of the seed: prompt and generation lengths are uniform
//! in their ranges (inclusive); with probability `--prefix-share` a prompt starts with a
//! shared "system prompt" as long as the shortest prompt; at most `--concurrency` requests
//! are in flight (a new one is submitted when one finishes), in id order. Decoding is
//! greedy and the engine is batch-invariant, so `output_ids` depend on the seed and the
//! prompt only, never on concurrency, KV size or preemptions (tools compare runs on that).
//! A request whose prompt plus generation cannot fit in the KV blocks is refused up front.
//! Bad flags print the error and exit with status 2.

use std::ops::RangeInclusive;
use std::process::ExitCode;

use anyhow::{Context, bail};
use mlinfra_examples::serve_sim::{SimConfig, simulate};

const USAGE: &str = "flags: --requests N --concurrency C --prompt-len A..B --gen-len A..B \
                     --kv-blocks K --block-size S --seed X [--prefix-share P] \
                     [--speculative ngram] [--dump]";

fn range(text: &str, flag: &str) -> anyhow::Result<RangeInclusive<usize>> {
    let (low, high) = text
        .split_once("..")
        .with_context(|| format!("{flag} takes A..B, got {text:?}"))?;
    let (low, high): (usize, usize) = (
        low.parse().with_context(|| format!("{flag} {text:?}"))?,
        high.parse().with_context(|| format!("{flag} {text:?}"))?,
    );
    if low == 0 || low > high {
        bail!("{flag} needs 1 <= A <= B, got {text:?}");
    }
    Ok(low..=high)
}

fn parse_args() -> anyhow::Result<(SimConfig, bool)> {
    let mut dump = false;
    let mut args = SimConfig {
        requests: 32,
        concurrency: 8,
        prompt_len: 16..=64,
        gen_len: 8..=32,
        kv_blocks: 256,
        block_size: 16,
        seed: 0,
        prefix_share: 0.0,
        speculative: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--requests" => args.requests = value()?.parse().context("--requests")?,
            "--concurrency" => args.concurrency = value()?.parse().context("--concurrency")?,
            "--prompt-len" => args.prompt_len = range(&value()?, "--prompt-len")?,
            "--gen-len" => args.gen_len = range(&value()?, "--gen-len")?,
            "--kv-blocks" => args.kv_blocks = value()?.parse().context("--kv-blocks")?,
            "--block-size" => args.block_size = value()?.parse().context("--block-size")?,
            "--seed" => args.seed = value()?.parse().context("--seed")?,
            "--prefix-share" => args.prefix_share = value()?.parse().context("--prefix-share")?,
            "--speculative" => match value()?.as_str() {
                "ngram" => args.speculative = true,
                other => bail!("--speculative takes ngram, got {other:?}"),
            },
            "--dump" => dump = true,
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    if args.concurrency == 0 || !(0.0..=1.0).contains(&args.prefix_share) {
        bail!("--concurrency must be >= 1 and --prefix-share in [0, 1]; {USAGE}");
    }
    Ok((args, dump))
}

fn run() -> anyhow::Result<()> {
    let (args, dump) = parse_args()?;
    let report = simulate(&args)?;
    if dump {
        for request in &report.requests {
            println!("{request}");
        }
    }
    println!("{}", report.metrics);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("serve_sim: {error:#}");
            ExitCode::from(2)
        }
    }
}
