//! The prefetching pipeline: [`Loader`], an iterator of batches that worker threads produce
//! ahead of the consumer.
//!
//! # How a batch is made
//!
//! ```text
//!  next() ──tickets (bounded)──▶ worker 0..N: ids from the plan → source.rows(ids) → collate
//!    ▲                                                                            │
//!    └────────── reorder by batch number ◀──────results (bounded)─────────────────┘
//! ```
//!
//! The consumer hands out *tickets*, batch numbers, through a bounded crossbeam channel; each
//! worker takes a ticket, computes the batch's sample ids from the [`EpochPlan`] (O(1) per
//! sample), reads the rows from the [`Source`] and collates them, and sends the batch back.
//! Batches are delivered in order: one that finishes early waits in a small reorder buffer.
//!
//! # Backpressure
//!
//! The consumer issues a ticket only while fewer than `prefetch` batches are in flight
//! (requested, not yet delivered) and, once batch sizes are known, while the in-flight batches
//! fit the byte budget: at most `max(1, budget / largest batch so far)` of them. Nothing else
//! queues anywhere, so memory stays bounded whatever the speed of the consumer, and a slow
//! consumer simply leaves the workers idle.
//!
//! # Failure
//!
//! A worker that fails or panics (the panic is caught) sends that failure as its batch; the
//! consumer reports it from `next()` at that batch's turn, after every batch before it, as
//! [`Error::Batch`], and the epoch ends there. The [state](Loader::state) still names the last
//! batch delivered, so a job can rebuild the loader and resume. Dropping the loader closes the
//! channels and joins every worker thread before `drop` returns.
//!
//! # Determinism
//!
//! The sample ids of batch `k` depend only on the plan, the rank's share and `k`: the number of
//! workers and the order they finish in change nothing that is delivered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::buffers::BufferPool;
use crate::collate::{Collate, Tensors};
use crate::plan::{EpochPlan, LoaderState, Remainder, Shuffle};
use crate::source::Source;
use crate::stats::{LoaderStats, WorkerCounters};
use crate::{Device, Error, Result};

mod worker;

use worker::{Produced, Work};

/// One batch as the consumer receives it.
#[derive(Debug)]
pub struct Batch<T> {
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Its number among the batches this loader delivered this epoch, from 0 (after a resume,
    /// counted from the resume point).
    pub index: u64,
    /// The sample ids it holds, in order.
    pub ids: Vec<u64>,
    /// The collated data.
    pub data: T,
}

/// Where batches are staged for the device; from [`Loader::staging`].
///
/// For an accelerator ([`Device::Cuda`]) with a collate that stages (the default
/// [`Tensors`] does), each worker moves its finished batch into page-locked host memory from
/// burn's pinned pool ([`Collate::stage`]). `Tensor::from_data` on the training thread then
/// starts an asynchronous host-to-device copy (`cuMemcpyHtoDAsync` from pinned memory) and
/// returns; from pageable memory the same call would block until the driver had copied it
/// through its own bounce buffer. That is PyTorch's `pin_memory=True` plus
/// `non_blocking=True`, with the pinning copy on the loader's workers.
///
/// On the CPU there is no copy to speed up: `pinned` is false and nothing is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staging {
    /// The device batches are meant for.
    pub device: Device,
    /// Whether workers stage batches into pinned host memory: the device is an accelerator
    /// and the collate stages. [`LoaderStats::pinned_bytes`] says how many bytes were.
    pub pinned: bool,
}

/// Configures a [`Loader`]; from [`Loader::builder`].
pub struct LoaderBuilder<C = Tensors> {
    source: Arc<dyn Source>,
    collate: C,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shuffle: Shuffle,
    remainder: Remainder,
    drop_last: bool,
    rank: u64,
    world: u64,
    workers: usize,
    prefetch: Option<usize>,
    max_buffered_bytes: u64,
    resume: Option<LoaderState>,
    device: Device,
}

impl<C> std::fmt::Debug for LoaderBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoaderBuilder")
            .field("batch_size", &self.batch_size)
            .field("shuffle", &self.shuffle)
            .field("seed", &self.seed)
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Most batches a loader keeps in flight, whatever [`LoaderBuilder::prefetch`] asks.
pub const MAX_PREFETCH: usize = 1024;

/// Most worker threads a loader starts, whatever [`LoaderBuilder::workers`] asks.
pub const MAX_WORKERS: usize = 256;

/// Default bound on the bytes of batches in flight: 512 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 512 << 20;

impl<C: Collate> LoaderBuilder<C> {
    /// How samples are ordered (default [`Shuffle::None`], dataset order).
    pub fn shuffle(mut self, shuffle: Shuffle) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// The seed of the shuffles (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The epoch to start at (default 0).
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// This process's rank among `world` (default 0 of 1). Every rank gets the same number of
    /// samples and batches; see [`Remainder`] for the samples left over.
    pub fn rank(mut self, rank: u64, world: u64) -> Self {
        self.rank = rank;
        self.world = world;
        self
    }

    /// What happens to the samples that do not divide among the ranks (default
    /// [`Remainder::Pad`], as PyTorch's `DistributedSampler`).
    pub fn remainder(mut self, remainder: Remainder) -> Self {
        self.remainder = remainder;
        self
    }

    /// Whether a last batch smaller than the batch size is dropped (default false).
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Worker threads (default: the machine's cores, at most 8; clamped to `1..=MAX_WORKERS`).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.clamp(1, MAX_WORKERS);
        self
    }

    /// Most batches in flight at once (default: twice the workers, as PyTorch's
    /// `prefetch_factor` of 2 per worker; clamped to `1..=MAX_PREFETCH`).
    pub fn prefetch(mut self, batches: usize) -> Self {
        self.prefetch = Some(batches.clamp(1, MAX_PREFETCH));
        self
    }

    /// Most bytes of batches in flight (default [`DEFAULT_MAX_BUFFERED_BYTES`]); see the
    /// [module docs](self#backpressure).
    pub fn max_buffered_bytes(mut self, bytes: u64) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// Continues from a saved state instead of starting at the builder's epoch: the state's
    /// seed, epoch, shuffle, remainder and position win over the builder's. Batch size, rank,
    /// world and workers may differ from the run that saved it.
    pub fn resume(mut self, state: LoaderState) -> Self {
        self.resume = Some(state);
        self
    }

    /// The device the batches are meant for (default [`Device::Cpu`]); see [`Staging`].
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Replaces the collate step (default [`Tensors`]).
    pub fn collate<D: Collate>(self, collate: D) -> LoaderBuilder<D> {
        LoaderBuilder {
            source: self.source,
            collate,
            batch_size: self.batch_size,
            seed: self.seed,
            epoch: self.epoch,
            shuffle: self.shuffle,
            remainder: self.remainder,
            drop_last: self.drop_last,
            rank: self.rank,
            world: self.world,
            workers: self.workers,
            prefetch: self.prefetch,
            max_buffered_bytes: self.max_buffered_bytes,
            resume: self.resume,
            device: self.device,
        }
    }

    /// Builds the loader and starts prefetching the first batches.
    ///
    /// Asks the source for its fingerprint (a [`Dataset`](mlinfra_data::Dataset) hashes its
    /// files on the first call; an [`IpcCache`](mlinfra_data::IpcCache) has it stored).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] for a batch size of 0, a rank outside the world or a bad block
    /// shuffle; [`Error::StateMismatch`] for a resumed state of another dataset;
    /// [`Error::FeatureDisabled`] or [`Error::DeviceUnavailable`] for a GPU this build or
    /// machine lacks; the source's error computing its fingerprint.
    pub fn build(self) -> Result<Loader<C>> {
        if self.batch_size == 0 {
            return Err(Error::InvalidPlan {
                reason: "a batch size of 0".into(),
            });
        }
        let fingerprint = self.source.fingerprint()?;
        let samples = self.source.num_samples();
        let state = match self.resume {
            Some(state) => {
                state.check_dataset(&fingerprint, samples)?;
                state
            }
            None => LoaderState::new(
                &fingerprint,
                samples,
                self.seed,
                self.shuffle,
                self.remainder,
            )
            .with_epoch(self.epoch),
        };
        // Validates the plan and the rank before any thread starts.
        let plan = state.plan()?;
        state.rank_slice(&plan, self.rank, self.world)?;
        // A device that is not there fails here, before any thread starts.
        let target = self.device.to_burn()?;
        let stage_on = (self.device != Device::Cpu && self.collate.stages()).then_some(target);
        let prefetch = self.prefetch.unwrap_or(2 * self.workers);
        let shared = Arc::new(Shared {
            source: self.source,
            collate: self.collate,
            stage_on,
            // Enough idle buffers for every batch in flight and every column of them, so a
            // steady state allocates nothing.
            pool: BufferPool::new(4 * (prefetch + self.workers) * 8),
            counters: WorkerCounters::default(),
        });
        let mut loader = Loader {
            shared,
            state,
            rank: self.rank,
            world: self.world,
            batch_size: self.batch_size,
            drop_last: self.drop_last,
            workers: self.workers,
            prefetch,
            max_buffered_bytes: self.max_buffered_bytes,
            device: self.device,
            run: None,
            built: Instant::now(),
            delivered: Delivered::default(),
        };
        loader.start_run(plan);
        Ok(loader)
    }
}

/// What the workers share with the consumer.
pub(crate) struct Shared<C: Collate> {
    pub(crate) source: Arc<dyn Source>,
    pub(crate) collate: C,
    /// The accelerator batches are staged for, when the collate stages (see [`Staging`]).
    pub(crate) stage_on: Option<burn::tensor::Device>,
    pub(crate) pool: BufferPool,
    pub(crate) counters: WorkerCounters,
}

/// Totals over the loader's life.
#[derive(Debug, Default)]
struct Delivered {
    batches: u64,
    samples: u64,
    tokens: u64,
    token_slots: u64,
    wait: Duration,
}

/// A deterministic, resumable, prefetching iterator of batches; see the
/// [module docs](self).
///
/// Iterates one epoch of this rank's share; at its end `next()` returns `None` and
/// [`Loader::next_epoch`] moves on. [`Loader::state`] is what a checkpoint stores.
///
/// ```no_run
/// use mlinfra_data::Dataset;
/// use mlinfra_loader::{Loader, Shuffle};
///
/// let cache = Dataset::open("data/train-*.parquet")?
///     .project(&["emb", "label"])?
///     .ipc_cache("cache/train")
///     .open_or_create()?;
/// let mut loader = Loader::builder(cache, 256).shuffle(Shuffle::Exact).seed(7).build()?;
/// for epoch in 0..3 {
///     for batch in loader.by_ref() {
///         let mut batch = batch?;
///         let emb = batch.data.remove("emb"); // burn TensorData, [256, 64]
///         # let _ = (emb, epoch);
///     }
///     loader.next_epoch()?;
/// }
/// let checkpoint = serde_json::to_string(loader.state()).unwrap();
/// # let _ = checkpoint;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Loader<C: Collate = Tensors> {
    shared: Arc<Shared<C>>,
    state: LoaderState,
    rank: u64,
    world: u64,
    batch_size: usize,
    drop_last: bool,
    workers: usize,
    prefetch: usize,
    max_buffered_bytes: u64,
    device: Device,
    run: Option<Run<C::Output>>,
    built: Instant,
    delivered: Delivered,
}

impl<C: Collate> std::fmt::Debug for Loader<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("state", &self.state)
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("batch_size", &self.batch_size)
            .field("workers", &self.workers)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

/// The pipeline of one epoch (from the state's position to the end of the rank's share).
struct Run<T> {
    tickets: Option<Sender<u64>>,
    results: Option<Receiver<Produced<T>>>,
    threads: Vec<JoinHandle<()>>,
    /// Batches in this run.
    total: u64,
    /// The next batch number to deliver, and the next to hand out as a ticket.
    next: u64,
    issued: u64,
    /// Batches that arrived before their turn.
    early: BTreeMap<u64, Produced<T>>,
    started: Instant,
    first_batch: Option<Duration>,
    /// Set once a batch failed: the run delivers nothing more.
    failed: bool,
}

impl Loader<Tensors> {
    /// A loader of batches of `batch_size` samples from `source`, collated as burn tensor
    /// data ([`Tensors`]); configure it, then [`LoaderBuilder::build`].
    pub fn builder(source: impl Source, batch_size: usize) -> LoaderBuilder<Tensors> {
        LoaderBuilder {
            source: Arc::new(source),
            collate: Tensors::new(),
            batch_size,
            seed: 0,
            epoch: 0,
            shuffle: Shuffle::None,
            remainder: Remainder::Pad,
            drop_last: false,
            rank: 0,
            world: 1,
            workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 8),
            prefetch: None,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            resume: None,
            device: Device::Cpu,
        }
    }
}

impl<C: Collate> Loader<C> {
    /// Where the loader is: the state after the last batch delivered. Save it with a checkpoint
    /// and pass it to [`LoaderBuilder::resume`] to continue with exactly the samples an
    /// uninterrupted run would have delivered.
    pub fn state(&self) -> &LoaderState {
        &self.state
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.state.epoch()
    }

    /// Batches this rank delivers in the current epoch from where it (re)started.
    pub fn batches_in_epoch(&self) -> u64 {
        self.run.as_ref().map_or(0, |run| run.total)
    }

    /// Ends the current epoch (whatever was not delivered is skipped) and starts prefetching
    /// the next one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] after epoch `u64::MAX` (a resumed state can claim it); the
    /// loader then stays at the end of its epoch.
    pub fn next_epoch(&mut self) -> Result<()> {
        self.state.next_epoch()?;
        self.stop_run();
        let plan = self.state.plan()?;
        self.start_run(plan);
        Ok(())
    }

    /// Where batches are staged (see [`Staging`]); [`LoaderStats::pinned_bytes`] counts what
    /// actually landed in pinned memory.
    pub fn staging(&self) -> Staging {
        Staging {
            device: self.device,
            pinned: self.shared.stage_on.is_some(),
        }
    }

    /// A snapshot of the counters; see [`LoaderStats`].
    pub fn stats(&self) -> LoaderStats {
        let counters = &self.shared.counters;
        let (queue_depth, in_flight, first_batch) = match &self.run {
            Some(run) => (
                run.early.len() + run.results.as_ref().map_or(0, Receiver::len),
                (run.issued - run.next) as usize,
                run.first_batch,
            ),
            None => (0, 0, None),
        };
        LoaderStats {
            batches: self.delivered.batches,
            samples: self.delivered.samples,
            tokens: self.delivered.tokens,
            token_slots: self.delivered.token_slots,
            wait: self.delivered.wait,
            first_batch,
            elapsed: self.built.elapsed(),
            queue_depth,
            in_flight,
            buffered_bytes: counters.buffered_bytes.load(Ordering::Relaxed),
            read_time: counters.read_time(),
            collate_time: counters.collate_time(),
            stage_time: counters.stage_time(),
            pinned_bytes: counters.pinned_bytes(),
            source: self.shared.source.counters(),
            buffers: self.shared.pool.counters(),
        }
    }

    fn start_run(&mut self, plan: EpochPlan) {
        let slice_len = self
            .state
            .rank_slice(&plan, self.rank, self.world)
            .expect("validated at build")
            .len();
        let batch = self.batch_size as u64;
        let total = if self.drop_last {
            slice_len / batch
        } else {
            slice_len.div_ceil(batch)
        };
        let (ticket_tx, ticket_rx) = crossbeam_channel::bounded(self.prefetch);
        let (result_tx, result_rx) = crossbeam_channel::bounded(self.prefetch);
        // A state saved after the last batch of a padded epoch counts past the end (the padded
        // positions wrap around); the run then starts at the end, with nothing left.
        let start = self.state.consumed().min(plan.len());
        let work = Arc::new(Work {
            plan,
            epoch: self.state.epoch(),
            start,
            rank: self.rank,
            world: self.world,
            remainder: self.state.remainder(),
            batch_size: self.batch_size,
            slice_len,
            // Past everything in flight: the batches after the prefetched ones.
            lookahead: 2 * self.prefetch as u64,
        });
        // No batches, no threads.
        let workers = (self.workers as u64).min(total) as usize;
        let threads = (0..workers)
            .map(|i| {
                let (shared, work) = (self.shared.clone(), work.clone());
                let (tickets, results) = (ticket_rx.clone(), result_tx.clone());
                std::thread::Builder::new()
                    .name(format!("mlinfra-loader-{i}"))
                    .spawn(move || worker::run(&shared, &work, &tickets, &results))
                    .expect("spawning a loader worker thread")
            })
            .collect();
        self.run = Some(Run {
            tickets: Some(ticket_tx),
            results: Some(result_rx),
            threads,
            total,
            next: 0,
            issued: 0,
            early: BTreeMap::new(),
            started: Instant::now(),
            first_batch: None,
            failed: false,
        });
        self.issue_tickets();
    }

    /// Closes the channels and joins the workers.
    fn stop_run(&mut self) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        // Receiver first: a worker blocked sending (it cannot be, by the ticket accounting,
        // but a closed channel makes that certain) fails and exits; then the tickets.
        run.results = None;
        run.tickets = None;
        for thread in run.threads.drain(..) {
            // Workers catch panics around user code; a panic here would be in the loop itself.
            let _ = thread.join();
        }
        // The workers are gone: whatever was produced and not delivered is dropped with `run`.
        self.shared
            .counters
            .buffered_bytes
            .store(0, Ordering::Relaxed);
    }

    /// Hands out tickets while the batch count and the byte budget allow.
    fn issue_tickets(&mut self) {
        let largest = self.shared.counters.largest_batch.load(Ordering::Relaxed);
        let depth = match self.max_buffered_bytes.checked_div(largest) {
            Some(fit) => usize::try_from(fit)
                .unwrap_or(usize::MAX)
                .clamp(1, self.prefetch),
            // No batch measured yet: one per worker, to learn the size without overshooting.
            None => self.prefetch.min(self.workers),
        };
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let Some(tickets) = run.tickets.as_ref() else {
            return;
        };
        // `depth >= 1`, so the batch the consumer waits for always has its ticket.
        while run.issued < run.total && ((run.issued - run.next) as usize) < depth {
            if tickets.try_send(run.issued).is_err() {
                break;
            }
            run.issued += 1;
        }
    }

    fn deliver(&mut self, produced: Produced<C::Output>) -> Result<Batch<C::Output>> {
        let run = self.run.as_mut().expect("delivering from a run");
        let index = run.next;
        run.next += 1;
        self.shared
            .counters
            .buffered_bytes
            .fetch_sub(produced.bytes, Ordering::Relaxed);
        match produced.result {
            Ok(data) => {
                run.first_batch.get_or_insert_with(|| run.started.elapsed());
                let samples = produced.ids.len() as u64;
                self.state.advance(samples, self.world);
                self.delivered.batches += 1;
                self.delivered.samples += samples;
                let tokens = self.shared.collate.token_count(&data);
                self.delivered.tokens += tokens.real;
                self.delivered.token_slots += tokens.slots;
                Ok(Batch {
                    epoch: self.state.epoch(),
                    index,
                    ids: produced.ids,
                    data,
                })
            }
            Err(error) => {
                run.failed = true;
                Err(Error::Batch {
                    epoch: self.state.epoch(),
                    batch: index,
                    source: Box::new(error),
                })
            }
        }
    }
}

impl<C: Collate> Iterator for Loader<C> {
    type Item = Result<Batch<C::Output>>;

    fn next(&mut self) -> Option<Self::Item> {
        let produced = loop {
            let run = self.run.as_mut()?;
            if run.failed || run.next >= run.total {
                return None;
            }
            if let Some(produced) = run.early.remove(&run.next) {
                break produced;
            }
            let results = run.results.as_ref()?;
            // Only time spent blocked counts as waiting: a batch already queued is not a wait.
            let received = match results.try_recv() {
                Ok(produced) => Ok(produced),
                Err(_) => {
                    let blocked = Instant::now();
                    let received = results.recv();
                    self.delivered.wait += blocked.elapsed();
                    received
                }
            };
            match received {
                Ok(produced) => {
                    run.early.insert(produced.batch, produced);
                }
                Err(_) => {
                    run.failed = true;
                    return Some(Err(Error::PipelineBroken {
                        reason: "every worker thread exited with batches outstanding".into(),
                    }));
                }
            }
        };
        let batch = self.deliver(produced);
        self.issue_tickets();
        Some(batch)
    }
}

impl<C: Collate> Drop for Loader<C> {
    fn drop(&mut self) {
        self.stop_run();
    }
}
