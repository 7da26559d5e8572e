//! A worker thread: takes batch numbers, produces batches, never lets a panic escape.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use crate::collate::Collate;
use crate::plan::{EpochPlan, Remainder};
use crate::{Error, Result};

/// What every worker of a run needs to turn a batch number into sample ids.
pub(super) struct Work {
    pub(super) plan: EpochPlan,
    pub(super) epoch: u64,
    /// Global position the run starts at (the state's `consumed`).
    pub(super) start: u64,
    pub(super) rank: u64,
    pub(super) world: u64,
    pub(super) remainder: Remainder,
    pub(super) batch_size: usize,
    /// Samples of the rank's share from `start` on.
    pub(super) slice_len: u64,
    /// How many batches ahead [`Source::prefetch`](crate::Source::prefetch) hints reach.
    pub(super) lookahead: u64,
}

/// A batch as a worker hands it back.
pub(super) struct Produced<T> {
    pub(super) batch: u64,
    pub(super) ids: Vec<u64>,
    pub(super) result: Result<T>,
    /// Bytes it holds, counted in the byte budget until it is delivered.
    pub(super) bytes: u64,
}

/// The worker loop: until the tickets channel closes.
pub(super) fn run<C: Collate>(
    shared: &Shared<C>,
    work: &Work,
    tickets: &Receiver<u64>,
    results: &Sender<Produced<C::Output>>,
) {
    let slice = work
        .plan
        .slice_from(work.start, work.rank, work.world, work.remainder)
        .expect("validated when the loader was built");
    let batch_ids = |batch: u64| -> Vec<u64> {
        let first = batch
            .saturating_mul(work.batch_size as u64)
            .min(work.slice_len);
        let last = (first + work.batch_size as u64).min(work.slice_len);
        (first..last)
            .map(|i| slice.sample_at(i).expect("inside the rank's share"))
            .collect()
    };
    let wants_prefetch = shared.source.wants_prefetch();
    for batch in tickets {
        // Everything that runs user code (a source, a collate) runs inside the guard: a panic
        // becomes this batch's error, never a dead worker holding a ticket.
        let mut ids = Vec::new();
        let result = catch_unwind(AssertUnwindSafe(|| {
            ids = batch_ids(batch);
            // Sources that fetch remote data start on the batch `lookahead` tickets ahead.
            if wants_prefetch {
                let ahead = batch_ids(batch.saturating_add(work.lookahead));
                if !ahead.is_empty() {
                    shared.source.prefetch(work.epoch, &ahead);
                }
            }
            produce(shared, work.epoch, &ids)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::WorkerPanicked {
                message: panic_message(panic.as_ref()).into(),
            })
        });
        let bytes = match &result {
            Ok((_, bytes)) => *bytes,
            Err(_) => 0,
        };
        let counters = &shared.counters;
        counters.buffered_bytes.fetch_add(bytes, Ordering::Relaxed);
        counters.largest_batch.fetch_max(bytes, Ordering::Relaxed);
        let produced = Produced {
            batch,
            ids,
            result: result.map(|(data, _)| data),
            bytes,
        };
        if results.send(produced).is_err() {
            break; // the loader is gone
        }
    }
}

/// Reads and collates one batch; returns it with its size in bytes.
fn produce<C: Collate>(shared: &Shared<C>, epoch: u64, ids: &[u64]) -> Result<(C::Output, u64)> {
    let started = Instant::now();
    let rows = shared.source.rows_in_epoch(epoch, ids)?;
    let read = Instant::now();
    shared.counters.add_read(read - started);
    let mut data = shared.collate.collate(&rows, &shared.pool)?;
    let collated = Instant::now();
    shared.counters.add_collate(collated - read);
    if let Some(device) = &shared.stage_on {
        let pinned = shared.collate.stage(&mut data, device);
        shared.counters.add_stage(collated.elapsed(), pinned);
    }
    let bytes = shared.collate.output_bytes(&data) as u64;
    Ok((data, bytes))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}
