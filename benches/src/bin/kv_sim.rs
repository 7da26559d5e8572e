//! `kv_sim`: a model-free simulation of KV-cache memory under three ways of managing it, on
//! one workload with a realistic (ShareGPT-like) length distribution:
//!
//! - `paged`: mlinfra-serve's [`Scheduler`] over 16-token blocks (vLLM's design), the real
//!   code with a stand-in model that ends each request at its drawn output length;
//! - `static`: each admitted request reserves `prompt + max_tokens` slots up front, as TGI and
//!   most pre-paging servers do;
//! - `slots`: the memory is cut into fixed slots of `capacity / slots` tokens, one request
//!   per slot, as llama.cpp's server does.
//!
//! ```text
//! cargo run --release -p mlinfra-benches --bin kv_sim -- [--requests 2000] [--capacity 16384] [--seed 0]
//! {"system":"paged","waste":0.0x,"utilisation":0.9x,"mean_running":...,"steps":...}
//! ...
//! ```
//!
//! Every request is queued at time 0 (an offline batch), each step computes one token per
//! running request (a prompt takes one step), and the figures are averaged over the steps
//! while requests are still waiting, i.e. while memory is the constraint:
//! - `waste`: allocated slots holding no token, over allocated slots (block tails for paged,
//!   unused reservations for static, unused slot space for slots);
//! - `utilisation`: slots holding a token, over the whole capacity;
//! - `mean_running`: requests running per step (the batch size memory allows);
//! - `steps`: steps to finish the workload (fewer is more throughput).
//!
//! Lengths: prompts lognormal around 160 tokens (σ 0.9) clipped to 8..1024, outputs
//! lognormal around 200 (σ 0.8) clipped to 4..1024, every request asking for
//! `max_tokens = 1024` (what the static scheme must reserve).

use std::collections::VecDeque;

use anyhow::{Context, bail};
use mlinfra_serve::sched::{FinishReason, NewRequest, Scheduler, SchedulerConfig};
use mlinfra_train::SplitMix64;
use serde_json::json;

const MAX_TOKENS: usize = 1024;
const BLOCK: usize = 16;
const STOP: u32 = 0;

#[derive(Clone, Copy)]
struct Request {
    prompt: usize,
    output: usize,
}

fn workload(count: usize, seed: u64) -> Vec<Request> {
    let mut rng = SplitMix64::new(seed);
    let mut lognormal = |median: f64, sigma: f64, low: usize, high: usize| {
        ((median.ln() + sigma * rng.normal()).exp().round() as usize).clamp(low, high)
    };
    (0..count)
        .map(|_| Request {
            prompt: lognormal(160.0, 0.9, 8, 1024),
            output: lognormal(200.0, 0.8, 4, MAX_TOKENS),
        })
        .collect()
}

/// Averages over the steps where requests were waiting.
#[derive(Default)]
struct Tally {
    waste: f64,
    utilisation: f64,
    running: f64,
    samples: usize,
    steps: usize,
}

impl Tally {
    fn step(
        &mut self,
        waiting: bool,
        allocated: usize,
        used: usize,
        capacity: usize,
        running: usize,
    ) {
        self.steps += 1;
        if waiting {
            self.waste += if allocated == 0 {
                0.0
            } else {
                1.0 - used as f64 / allocated as f64
            };
            self.utilisation += used as f64 / capacity as f64;
            self.running += running as f64;
            self.samples += 1;
        }
    }

    fn print(&self, system: &str) {
        let n = self.samples.max(1) as f64;
        println!(
            "{}",
            json!({
                "system": system,
                "waste": self.waste / n,
                "utilisation": self.utilisation / n,
                "mean_running": self.running / n,
                "steps": self.steps,
            })
        );
    }
}

fn paged(requests: &[Request], capacity: usize) -> anyhow::Result<Tally> {
    let mut scheduler = Scheduler::new(SchedulerConfig {
        num_blocks: capacity / BLOCK,
        block_size: BLOCK,
        max_batched_tokens: capacity,
        max_running: requests.len(),
        ..SchedulerConfig::default()
    })?;
    for (id, request) in requests.iter().enumerate() {
        // Distinct prompts (no prefix sharing: this measures paging alone).
        let prompt = (0..request.prompt as u32)
            .map(|t| 1 + (t + id as u32) % 30_000)
            .collect();
        scheduler.add(NewRequest::new(id as u64, prompt, MAX_TOKENS))?;
    }
    let mut tally = Tally::default();
    while !scheduler.is_idle() {
        let plan = scheduler.schedule()?;
        let kv = scheduler.kv();
        let used: usize = scheduler.running().map(|id| kv.num_tokens(id)).sum();
        let allocated = (kv.pool().num_blocks() - kv.pool().num_free()) * BLOCK;
        let waiting = scheduler.waiting().next().is_some();
        tally.step(
            waiting,
            allocated,
            used,
            capacity,
            scheduler.running().count(),
        );
        let mut sampled = Vec::new();
        let mut stopped = Vec::new();
        for work in plan.scheduled.iter().filter(|work| work.samples) {
            let request = scheduler.request(work.id).expect("scheduled");
            // The request "generates" its drawn output length, then a stop token.
            if request.output().len() + 1 >= requests[work.id as usize].output {
                sampled.push((work.id, vec![STOP]));
                stopped.push((work.id, FinishReason::Stop));
            } else {
                sampled.push((work.id, vec![1]));
            }
        }
        scheduler.update_speculative(&sampled, &stopped)?;
    }
    Ok(tally)
}

/// Static reservation (`fixed_slots: None`) or fixed slots of `capacity / slots` tokens.
fn reserved(requests: &[Request], capacity: usize, slots: Option<usize>) -> anyhow::Result<Tally> {
    let mut waiting: VecDeque<Request> = requests.iter().copied().collect();
    // (reserved slots, tokens so far, final tokens)
    let mut running: Vec<(usize, usize, usize)> = Vec::new();
    let mut tally = Tally::default();
    while !waiting.is_empty() || !running.is_empty() {
        // Admit in order while the reservation fits.
        while let Some(next) = waiting.front() {
            let need = match slots {
                None => next.prompt + MAX_TOKENS,
                Some(count) => capacity / count,
            };
            if next.prompt + MAX_TOKENS > need {
                bail!("a request does not fit a slot of {need} tokens");
            }
            let taken: usize = running.iter().map(|r| r.0).sum();
            if taken + need > capacity {
                break;
            }
            let request = waiting.pop_front().expect("peeked");
            // The prompt is computed in the admission step.
            running.push((need, request.prompt, request.prompt + request.output - 1));
        }
        let allocated: usize = running.iter().map(|r| r.0).sum();
        let used: usize = running.iter().map(|r| r.1).sum();
        let allocated = if slots.is_some() { capacity } else { allocated };
        tally.step(
            !waiting.is_empty(),
            allocated,
            used,
            capacity,
            running.len(),
        );
        for request in &mut running {
            request.1 += 1;
        }
        running.retain(|request| request.1 <= request.2);
    }
    Ok(tally)
}

fn main() -> anyhow::Result<()> {
    let (mut count, mut capacity, mut seed) = (2000usize, 16_384usize, 0u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--requests" => count = value.parse()?,
            "--capacity" => capacity = value.parse()?,
            "--seed" => seed = value.parse()?,
            other => bail!("unknown flag {other}; flags: --requests N --capacity TOKENS --seed S"),
        }
    }
    let requests = workload(count, seed);
    paged(&requests, capacity)?.print("paged");
    reserved(&requests, capacity, None)?.print("static");
    // llama.cpp-style: slots big enough for the longest request (prompt + max_tokens).
    let slots = capacity / (1024 + MAX_TOKENS);
    reserved(&requests, capacity, Some(slots))?.print(&format!("slots_{slots}"));
    Ok(())
}
