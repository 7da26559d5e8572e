//! [`LoaderStats`]: what the pipeline is doing, for progress bars and for finding the
//! bottleneck (a consumer that waits is starved; a full queue means the consumer is the limit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::buffers::PoolCounters;
use crate::source::SourceCounters;

/// A snapshot of a loader's counters, from [`Loader::stats`](crate::Loader::stats). Counts
/// and times are totals over the loader's life unless said otherwise.
#[derive(Debug, Clone, Default)]
pub struct LoaderStats {
    /// Batches delivered.
    pub batches: u64,
    /// Samples delivered.
    pub samples: u64,
    /// Real tokens in the padded or packed columns of the batches delivered
    /// ([`Collate::token_count`](crate::Collate::token_count)).
    pub tokens: u64,
    /// Token positions (real plus padding) of those columns.
    pub token_slots: u64,
    /// Time the consumer spent blocked in `next()`, waiting for a batch. The target is zero
    /// after the first batch: then the accelerator never waits for the loader.
    pub wait: Duration,
    /// Time from the start of the current epoch's pipeline to its first batch.
    pub first_batch: Option<Duration>,
    /// Time since the loader was built.
    pub elapsed: Duration,
    /// Batches produced and waiting for the consumer, now.
    pub queue_depth: usize,
    /// Batches requested from the workers and not yet delivered, now (queued ones included).
    pub in_flight: usize,
    /// Bytes of batches produced and not yet delivered, now.
    pub buffered_bytes: u64,
    /// Worker time spent reading rows from the source (IO, and for Parquet sources decoding).
    pub read_time: Duration,
    /// Worker time spent collating (gathering rows into batch buffers).
    pub collate_time: Duration,
    /// Worker time spent staging batches for an accelerator (copying them into pinned host
    /// memory); zero on the CPU. See [`Staging`](crate::Staging).
    pub stage_time: Duration,
    /// Bytes of produced batches that workers placed in pinned host memory; zero on the CPU.
    pub pinned_bytes: u64,
    /// The source's own IO counters: bytes read, cache hits and evictions.
    pub source: SourceCounters,
    /// Batch buffers allocated versus recycled.
    pub buffers: PoolCounters,
}

impl LoaderStats {
    /// Samples delivered per second of the loader's life.
    pub fn samples_per_s(&self) -> f64 {
        self.samples as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The share of delivered token positions that hold a real token, `tokens / token_slots`
    /// (1.0: no padding at all): how well [`Pack`](crate::Pack) filled its rows, or how much
    /// [`Pad`](crate::Pad) padded. `None` before any padded or packed batch.
    pub fn packing_efficiency(&self) -> Option<f64> {
        (self.token_slots > 0).then(|| self.tokens as f64 / self.token_slots as f64)
    }
}

/// Counters the workers update (nanoseconds and counts).
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    read_ns: AtomicU64,
    collate_ns: AtomicU64,
    stage_ns: AtomicU64,
    pinned_bytes: AtomicU64,
    /// Bytes of produced, undelivered batches.
    pub(crate) buffered_bytes: AtomicU64,
    /// The largest batch produced so far, in bytes: sizes the byte budget.
    pub(crate) largest_batch: AtomicU64,
}

impl WorkerCounters {
    pub(crate) fn add_read(&self, time: Duration) {
        self.read_ns.fetch_add(nanos(time), Ordering::Relaxed);
    }

    pub(crate) fn add_collate(&self, time: Duration) {
        self.collate_ns.fetch_add(nanos(time), Ordering::Relaxed);
    }

    pub(crate) fn add_stage(&self, time: Duration, pinned_bytes: u64) {
        self.stage_ns.fetch_add(nanos(time), Ordering::Relaxed);
        self.pinned_bytes.fetch_add(pinned_bytes, Ordering::Relaxed);
    }

    pub(crate) fn stage_time(&self) -> Duration {
        Duration::from_nanos(self.stage_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn read_time(&self) -> Duration {
        Duration::from_nanos(self.read_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn collate_time(&self) -> Duration {
        Duration::from_nanos(self.collate_ns.load(Ordering::Relaxed))
    }
}

fn nanos(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}
