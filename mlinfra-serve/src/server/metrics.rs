//! `/metrics`: the server's Prometheus metrics (OpenMetrics text), named after vLLM's with an
//! `mlinfra_` prefix so dashboards written for one read the other with a rename.
//!
//! Latencies are measured where the engine thread hands a token to the HTTP side, which is
//! what a client sees up to the network.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sched::{FinishReason, SchedulerStats};

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the server exports, and the registry that encodes them.
pub(super) struct ServerMetrics {
    registry: Registry,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e_latency: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    finished: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    steps: Counter,
    preemptions: Counter,
    prefix_queried: Counter,
    prefix_hits: Counter,
    prefix_hit_rate: Gauge<f64, AtomicU64>,
    kv_usage: Gauge<f64, AtomicU64>,
    waiting: Gauge,
    running: Gauge,
    /// Cumulative scheduler totals last seen, to turn them into counter increments.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    preemptions: u64,
    prefix_queried: u64,
    prefix_hits: u64,
}

impl ServerMetrics {
    pub(super) fn new() -> Self {
        // 1 ms to ~65 s, doubling: what vLLM's buckets span.
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let metrics = ServerMetrics {
            registry: Registry::default(),
            time_to_first_token: latency(),
            inter_token_latency: latency(),
            e2e_latency: latency(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            finished: Family::default(),
            rejected: Family::default(),
            steps: Counter::default(),
            preemptions: Counter::default(),
            prefix_queried: Counter::default(),
            prefix_hits: Counter::default(),
            prefix_hit_rate: Gauge::default(),
            kv_usage: Gauge::default(),
            waiting: Gauge::default(),
            running: Gauge::default(),
            seen: Mutex::new(Seen::default()),
        };
        let mut metrics = metrics;
        let r = &mut metrics.registry;
        r.register(
            "mlinfra_time_to_first_token_seconds",
            "Arrival to first token",
            metrics.time_to_first_token.clone(),
        );
        r.register(
            "mlinfra_inter_token_latency_seconds",
            "Gap between consecutive tokens of a request",
            metrics.inter_token_latency.clone(),
        );
        r.register(
            "mlinfra_e2e_request_latency_seconds",
            "Arrival to finish",
            metrics.e2e_latency.clone(),
        );
        r.register(
            "mlinfra_prompt_tokens",
            "Prompt tokens of finished requests",
            metrics.prompt_tokens.clone(),
        );
        r.register(
            "mlinfra_generation_tokens",
            "Tokens generated",
            metrics.generation_tokens.clone(),
        );
        r.register(
            "mlinfra_request_success",
            "Finished requests by finish reason (stop, length, abort)",
            metrics.finished.clone(),
        );
        r.register(
            "mlinfra_requests_rejected",
            "Requests refused before reaching the engine, by reason",
            metrics.rejected.clone(),
        );
        r.register(
            "mlinfra_engine_steps",
            "Engine steps run",
            metrics.steps.clone(),
        );
        r.register(
            "mlinfra_num_preemptions",
            "Requests preempted (KV dropped, to be recomputed)",
            metrics.preemptions.clone(),
        );
        r.register(
            "mlinfra_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            metrics.prefix_queried.clone(),
        );
        r.register(
            "mlinfra_prefix_cache_hits",
            "Prompt tokens served from the prefix cache",
            metrics.prefix_hits.clone(),
        );
        r.register(
            "mlinfra_prefix_cache_hit_rate",
            "Share of looked-up prompt tokens served from the prefix cache",
            metrics.prefix_hit_rate.clone(),
        );
        r.register(
            "mlinfra_kv_cache_usage_perc",
            "Share of KV blocks in use (0 to 1)",
            metrics.kv_usage.clone(),
        );
        r.register(
            "mlinfra_num_requests_waiting",
            "Requests queued for the running batch",
            metrics.waiting.clone(),
        );
        r.register(
            "mlinfra_num_requests_running",
            "Requests in the running batch",
            metrics.running.clone(),
        );
        metrics
    }

    pub(super) fn first_token(&self, since_arrival: Duration) {
        self.time_to_first_token
            .observe(since_arrival.as_secs_f64());
    }

    pub(super) fn token(&self, gap: Option<Duration>) {
        self.generation_tokens.inc();
        if let Some(gap) = gap {
            self.inter_token_latency.observe(gap.as_secs_f64());
        }
    }

    pub(super) fn finished(&self, reason: FinishReason, prompt_tokens: usize, e2e: Duration) {
        let reason = match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Aborted => "abort",
        };
        self.finished
            .get_or_create(&vec![("finished_reason", reason)])
            .inc();
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.e2e_latency.observe(e2e.as_secs_f64());
    }

    /// A request refused before the engine saw it (`queue_full`, `draining`).
    pub(super) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// The engine's state after a step.
    pub(super) fn engine(&self, stats: &SchedulerStats, stepped: bool) {
        if stepped {
            self.steps.inc();
        }
        self.kv_usage.set(stats.kv_usage);
        self.waiting.set(stats.waiting as i64);
        self.running.set(stats.running as i64);
        self.prefix_hit_rate.set(stats.prefix.hit_rate());
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.preemptions
            .inc_by(stats.preemptions.saturating_sub(seen.preemptions));
        self.prefix_queried.inc_by(
            stats
                .prefix
                .queried_tokens
                .saturating_sub(seen.prefix_queried),
        );
        self.prefix_hits
            .inc_by(stats.prefix.hit_tokens.saturating_sub(seen.prefix_hits));
        *seen = Seen {
            preemptions: stats.preemptions,
            prefix_queried: stats.prefix.queried_tokens,
            prefix_hits: stats.prefix.hit_tokens,
        };
    }

    /// The OpenMetrics text of every metric.
    pub(super) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
