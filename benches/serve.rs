//! Serving benchmarks: the scheduler's cost per step with many running sequences (the CPU
//! time a serving loop spends outside the model).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use mlinfra_serve::sched::{NewRequest, Scheduler, SchedulerConfig};

/// Running sequences in the decode benchmark.
const RUNNING: usize = 1024;
/// Steps timed on one scheduler before a fresh one is built (keeps the pool from filling).
const CHUNK: u64 = 256;

/// A scheduler with [`RUNNING`] sequences past their 64-token prompts, decoding.
fn decoding_scheduler(prefix_caching: bool) -> Scheduler {
    let mut scheduler = Scheduler::new(SchedulerConfig {
        num_blocks: RUNNING * (64 + CHUNK as usize + 32) / 16,
        block_size: 16,
        max_batched_tokens: 1 << 20,
        max_running: RUNNING,
        prefix_caching,
        ..SchedulerConfig::default()
    })
    .expect("a valid config");
    for id in 0..RUNNING as u64 {
        let prompt = (0..64).map(|t| (t + id as u32 * 64) % 50_000).collect();
        scheduler
            .add(NewRequest::new(id, prompt, CHUNK as usize + 16))
            .expect("fits");
    }
    let plan = scheduler.schedule().expect("schedules");
    let tokens: Vec<_> = plan.scheduled.iter().map(|s| (s.id, 7)).collect();
    scheduler.update(&tokens).expect("updates");
    scheduler
}

fn scheduler_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("serve/scheduler");
    group.throughput(Throughput::Elements(RUNNING as u64));
    for (name, prefix_caching) in [
        ("decode_step_1k", false),
        ("decode_step_1k_prefix_cache", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let mut scheduler = decoding_scheduler(prefix_caching);
                    let steps = left.min(CHUNK);
                    let mut tokens = Vec::with_capacity(RUNNING);
                    let started = Instant::now();
                    for _ in 0..steps {
                        let plan = scheduler.schedule().expect("schedules");
                        tokens.clear();
                        tokens.extend(plan.scheduled.iter().map(|s| (s.id, 7)));
                        black_box(scheduler.update(&tokens).expect("updates"));
                    }
                    total += started.elapsed();
                    left -= steps;
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, scheduler_step);
