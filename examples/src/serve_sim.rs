//! The engine of the `serve_sim` example, as a function its tests can call: a synthetic
//! workload, a small deterministic random-weight Llama, and the serving engine over it.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::Device;
use mlinfra_serve::attention::ReferenceAttention;
use mlinfra_serve::engine::{Engine, EngineConfig, RequestHandle, StreamEvent};
use mlinfra_serve::runner::LlamaRunner;
use mlinfra_serve::sampling::SamplingParams;
use mlinfra_serve::sched::SchedulerConfig;
use mlinfra_serve::spec::NgramProposer;
use mlinfra_train::SplitMix64;
use mlinfra_train::models::LlamaConfig;
use serde_json::{Value, json};

/// A simulation: the example's flags.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Requests in the workload.
    pub requests: usize,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Prompt lengths, uniform, inclusive.
    pub prompt_len: RangeInclusive<usize>,
    /// Generation lengths, uniform, inclusive.
    pub gen_len: RangeInclusive<usize>,
    /// KV blocks.
    pub kv_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Seed of the workload and the model.
    pub seed: u64,
    /// Share of prompts that start with the shared system prompt.
    pub prefix_share: f64,
    /// Speculative decoding with prompt-lookup (n-gram) drafts.
    pub speculative: bool,
}

/// What a simulation produced.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// One JSON object per request, in id order: `id`, `prompt_ids`, `output_ids`,
    /// `preempted`, `prefix_hit_tokens`.
    pub requests: Vec<Value>,
    /// Engine metrics: `tokens_per_s`, `ttft_p50_ms`, `ttft_p99_ms`, `preemptions`,
    /// `prefix_hit_rate`, `kv_peak_utilisation`, `blocks_leaked`, and
    /// `spec_acceptance_rate` (accepted over drafted tokens; 0 without speculation).
    pub metrics: Value,
}

/// The deterministic stand-in model: small enough for a 2-core CPU, context-sensitive
/// enough that its outputs differ per prompt.
pub fn model_config(max_seq_len: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_seq_len,
        tie_embeddings: false,
    }
}

struct Workload {
    prompt: Vec<u32>,
    gen_len: usize,
}

fn workload(args: &SimConfig, vocab: u32) -> Vec<Workload> {
    let mut rng = SplitMix64::new(args.seed);
    let uniform = |range: &RangeInclusive<usize>, rng: &mut SplitMix64| {
        range.start() + (rng.next_u64() % (range.end() - range.start() + 1) as u64) as usize
    };
    let system: Vec<u32> = (0..*args.prompt_len.start())
        .map(|_| (rng.next_u64() % u64::from(vocab)) as u32)
        .collect();
    (0..args.requests)
        .map(|_| {
            let len = uniform(&args.prompt_len, &mut rng);
            let gen_len = uniform(&args.gen_len, &mut rng);
            let shared = rng.uniform(0.0, 1.0) < args.prefix_share;
            let mut prompt = if shared { system.clone() } else { Vec::new() };
            while prompt.len() < len {
                prompt.push((rng.next_u64() % u64::from(vocab)) as u32);
            }
            Workload { prompt, gen_len }
        })
        .collect()
}

/// Runs the workload `args` describes to the end.
///
/// # Errors
///
/// A request the engine refuses (too long for the KV blocks) or a failed step.
pub fn simulate(args: &SimConfig) -> anyhow::Result<SimReport> {
    let max_seq_len = args.prompt_len.end() + args.gen_len.end();
    let config = model_config(max_seq_len);
    let device = Device::flex();
    let std = 1.0 / (config.hidden_size as f64).sqrt();
    let model = config.init_with_std(args.seed, std, &device)?;
    let runner = LlamaRunner::new(
        model,
        &config,
        args.kv_blocks,
        args.block_size,
        Box::new(ReferenceAttention),
        &device,
    )?;
    let mut engine = Engine::new(
        runner,
        EngineConfig {
            // The KV pool is the runner's (args.kv_blocks of args.block_size).
            scheduler: SchedulerConfig::default(),
            seed: args.seed,
            speculative: args.speculative.then(NgramProposer::default),
        },
    )?;

    let work = workload(args, config.vocab_size as u32);
    let mut pending: VecDeque<(usize, &Workload)> = work.iter().enumerate().collect();
    let mut in_flight: Vec<(usize, RequestHandle, Vec<u32>)> = Vec::new();
    let mut records = vec![Value::Null; work.len()];
    let started = Instant::now();
    while !pending.is_empty() || !in_flight.is_empty() {
        while in_flight.len() < args.concurrency
            && let Some((index, request)) = pending.pop_front()
        {
            let handle = engine
                .add_request(
                    request.prompt.clone(),
                    SamplingParams::greedy(request.gen_len),
                )
                .with_context(|| format!("request {index}"))?;
            in_flight.push((index, handle, Vec::new()));
        }
        engine.step()?;
        let mut still = Vec::with_capacity(in_flight.len());
        for (index, handle, mut output) in in_flight {
            let mut done = None;
            for event in handle.events().try_iter() {
                match event {
                    StreamEvent::Token { token, .. } => output.push(token),
                    StreamEvent::Finished { metrics, .. } => done = Some(metrics),
                }
            }
            match done {
                Some(metrics) => {
                    records[index] = json!({
                        "id": index,
                        "prompt_ids": work[index].prompt,
                        "output_ids": output,
                        "preempted": metrics.preemptions > 0,
                        "prefix_hit_tokens": metrics.prefix_hit_tokens,
                    });
                }
                None => still.push((index, handle, output)),
            }
        }
        in_flight = still;
    }
    let seconds = started.elapsed().as_secs_f64();
    let metrics = engine.metrics();
    let pool = engine.scheduler().kv().pool();
    Ok(SimReport {
        requests: records,
        metrics: json!({
            "tokens_per_s": metrics.tokens_generated as f64 / seconds,
            "ttft_p50_ms": metrics.ttft_p50_ms,
            "ttft_p99_ms": metrics.ttft_p99_ms,
            "preemptions": metrics.preemptions,
            "prefix_hit_rate": metrics.prefix_hit_rate,
            "kv_peak_utilisation": metrics.kv_peak_usage,
            "blocks_leaked": pool.num_blocks() - pool.num_free(),
            "spec_acceptance_rate": if metrics.draft_tokens == 0 {
                0.0
            } else {
                metrics.accepted_tokens as f64 / metrics.draft_tokens as f64
            },
        }),
    })
}
