//! Per-request timings and engine counters.

use std::time::{Duration, Instant};

use crate::sched::{FinishReason, Request, SchedulerStats};

/// A finished request's timings and counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestMetrics {
    /// Arrival to first token (`None` if it produced none).
    pub time_to_first_token: Option<Duration>,
    /// Mean gap between consecutive tokens (`None` under two tokens).
    pub mean_inter_token_latency: Option<Duration>,
    /// Arrival to finish.
    pub end_to_end: Duration,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub output_tokens: usize,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Prompt tokens served from the prefix cache at its first admission.
    pub prefix_hit_tokens: usize,
}

/// A live request's clock.
#[derive(Debug, Clone)]
pub(super) struct RequestClock {
    arrived: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    tokens: usize,
    prompt_tokens: usize,
}

impl RequestClock {
    pub(super) fn new(prompt_tokens: usize) -> Self {
        RequestClock {
            arrived: Instant::now(),
            first: None,
            last: None,
            tokens: 0,
            prompt_tokens,
        }
    }

    pub(super) fn token(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.tokens += 1;
    }

    /// The metrics of `request`, finished at `now`.
    pub(super) fn finish(&self, now: Instant, request: &Request) -> RequestMetrics {
        let gaps = self.tokens.saturating_sub(1) as u32;
        RequestMetrics {
            time_to_first_token: self.first.map(|first| first - self.arrived),
            mean_inter_token_latency: match (self.first, self.last) {
                (Some(first), Some(last)) if gaps > 0 => Some((last - first) / gaps),
                _ => None,
            },
            end_to_end: now - self.arrived,
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.tokens,
            preemptions: request.num_preemptions(),
            prefix_hit_tokens: request.prefix_hit_tokens(),
        }
    }
}

/// Engine-wide counters and gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineMetrics {
    /// Requests waiting now.
    pub waiting: usize,
    /// Requests running now.
    pub running: usize,
    /// Share of KV blocks referenced now.
    pub kv_usage: f64,
    /// Highest KV usage after any step.
    pub kv_peak_usage: f64,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Share of admitted prompt tokens served from the prefix cache.
    pub prefix_hit_rate: f64,
    /// Steps run.
    pub steps: u64,
    /// Tokens generated.
    pub tokens_generated: u64,
    /// Requests finished by a stop token, stop string or length.
    pub requests_completed: u64,
    /// Requests aborted (by the caller, a dropped handle or a failed step).
    pub requests_aborted: u64,
    /// Median time to first token over finished requests, in milliseconds.
    pub ttft_p50_ms: f64,
    /// 99th percentile of the same.
    pub ttft_p99_ms: f64,
    /// Since the engine was created.
    pub uptime: Duration,
    /// Speculative tokens verified.
    pub draft_tokens: u64,
    /// Of those, tokens accepted (`accepted / draft` is the acceptance rate).
    pub accepted_tokens: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Counters {
    pub(super) started: Instant,
    pub(super) steps: u64,
    pub(super) tokens_generated: u64,
    pub(super) draft_tokens: u64,
    pub(super) accepted_tokens: u64,
    completed: u64,
    aborted: u64,
    /// Time to first token of every finished request that had one, in ms (4 bytes each).
    ttft_ms: Vec<f32>,
}

impl Counters {
    pub(super) fn new() -> Self {
        Counters {
            started: Instant::now(),
            steps: 0,
            tokens_generated: 0,
            draft_tokens: 0,
            accepted_tokens: 0,
            completed: 0,
            aborted: 0,
            ttft_ms: Vec::new(),
        }
    }

    pub(super) fn record(&mut self, metrics: &RequestMetrics, reason: FinishReason) {
        match reason {
            FinishReason::Aborted => self.aborted += 1,
            FinishReason::Stop | FinishReason::Length => self.completed += 1,
        }
        if let Some(ttft) = metrics.time_to_first_token {
            self.ttft_ms.push(ttft.as_secs_f32() * 1e3);
        }
    }

    pub(super) fn snapshot(&self, stats: &SchedulerStats) -> EngineMetrics {
        let mut sorted = self.ttft_ms.clone();
        sorted.sort_by(f32::total_cmp);
        EngineMetrics {
            waiting: stats.waiting,
            running: stats.running,
            kv_usage: stats.kv_usage,
            kv_peak_usage: stats.kv_peak_usage,
            preemptions: stats.preemptions,
            prefix_hit_rate: stats.prefix.hit_rate(),
            steps: self.steps,
            tokens_generated: self.tokens_generated,
            requests_completed: self.completed,
            requests_aborted: self.aborted,
            ttft_p50_ms: percentile(&sorted, 0.50),
            ttft_p99_ms: percentile(&sorted, 0.99),
            uptime: self.started.elapsed(),
            draft_tokens: self.draft_tokens,
            accepted_tokens: self.accepted_tokens,
        }
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
