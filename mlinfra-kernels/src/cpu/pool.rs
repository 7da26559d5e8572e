//! The threads a kernel call splits its rows over.
//!
//! A decode step is hundreds of small matmuls (SmolLM2: 121 per token, each a few
//! microseconds of work per thread), so what it costs to start and join the threads matters
//! as much as the kernels. [`SpinPool`] does what llama.cpp's threadpool does: workers stay
//! awake between calls, spinning on an epoch counter, so a dispatch is one atomic store and a
//! join one atomic counter; a worker that has seen no work for a while parks and is woken
//! with an `unpark`, so an idle server does not burn its cores. [`Parallelism::Rayon`] is
//! the alternative it is measured against (`benches/kernels.rs`, `quant_gemv`); the serving
//! path uses whichever won there (docs/BENCHMARKS.md).

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a worker spins on the epoch before it parks: longer than the gaps between one
/// step's matmuls (the norms, RoPE and attention run on the caller's thread between them),
/// far shorter than the gap between requests.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);

/// Where a kernel call runs its parts.
#[derive(Debug, Clone)]
pub enum Parallelism {
    /// On the calling thread only.
    Serial,
    /// On a [`SpinPool`]'s threads (the caller is one of them).
    Spin(Arc<SpinPool>),
    /// On rayon's global pool, `parts` parts per call.
    Rayon {
        /// How many parts a call is split into (usually the pool's thread count).
        parts: usize,
    },
}

impl Parallelism {
    /// The number of parts a call is split into.
    pub fn parts(&self) -> usize {
        match self {
            Parallelism::Serial => 1,
            Parallelism::Spin(pool) => pool.threads(),
            Parallelism::Rayon { parts } => (*parts).max(1),
        }
    }

    /// Runs `job(part)` for every part in `0..self.parts()`, returning when all have.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        match self {
            Parallelism::Serial => job(0),
            Parallelism::Spin(pool) => pool.run(job),
            Parallelism::Rayon { parts } => {
                rayon::scope(|scope| {
                    for part in 1..(*parts).max(1) {
                        scope.spawn(move |_| job(part));
                    }
                    job(0);
                });
            }
        }
    }
}

impl Parallelism {
    /// Calls `task(i, piece)` for each `chunk`-long piece of `out` (the last may be
    /// shorter). Part `p` takes pieces `p, p + parts, p + 2·parts...`: interleaved, so that
    /// pieces whose cost grows with their index (causal attention) balance.
    pub fn for_each_chunk<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        task: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let len = out.len();
        let pieces = len.div_ceil(chunk);
        let parts = self.parts().min(pieces);
        if parts <= 1 {
            for (index, piece) in out.chunks_mut(chunk).enumerate() {
                task(index, piece);
            }
            return;
        }
        let base = SharedOut(out.as_mut_ptr());
        self.run(&|part| {
            if part >= parts {
                return;
            }
            for index in (part..pieces).step_by(parts) {
                let start = index * chunk;
                let end = (start + chunk).min(len);
                // SAFETY: pieces are disjoint and each is handed to one part only; they lie
                // inside `out`, which is borrowed mutably for the whole call.
                let piece = unsafe { std::slice::from_raw_parts_mut(base.at(start), end - start) };
                task(index, piece);
            }
        });
    }
}

/// A mutable buffer's base pointer, shared by the parts of a call that each write their own
/// disjoint elements.
pub(crate) struct SharedOut<T = f32>(pub(crate) *mut T);
// SAFETY: users write disjoint elements only (each use says why), of a `Send` type.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// # Safety
    ///
    /// `offset` must be inside the buffer.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut T {
        // SAFETY: the caller's promise.
        unsafe { self.0.add(offset) }
    }
}

/// Worker threads that stay awake between calls (see the module docs).
pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One call at a time: the job slot is single.
    calls: Mutex<()>,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinPool")
            .field("threads", &self.threads())
            .finish()
    }
}

/// A job as the workers see it: a pointer to the caller's closure, valid from the epoch
/// store that publishes it until the last worker reports done.
type JobPtr = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per call; workers run the job when they see it change.
    epoch: AtomicUsize,
    job: UnsafeCell<Option<JobPtr>>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// A worker's job panicked in the current call.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Per worker: it is parked (or about to park) and needs an `unpark`.
    parked: Vec<AtomicBool>,
}

// SAFETY: `job` is written only by the caller holding `SpinPool::calls` while no worker reads
// it (every worker has finished the previous epoch: `pending` is 0), and read by workers only
// after the Release/Acquire pair on `epoch` that publishes it.
unsafe impl Sync for Shared {}
// SAFETY: as above; the pointer is only dereferenced while the caller keeps the closure alive.
unsafe impl Send for Shared {}

impl SpinPool {
    /// A pool of `threads` threads in all: the caller and `threads - 1` workers (at least 1).
    pub fn new(threads: usize) -> Arc<Self> {
        let workers = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            parked: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        });
        let handles = (0..workers)
            .map(|index| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("mlinfra-cpu-{}", index + 1))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a kernel thread")
            })
            .collect();
        Arc::new(SpinPool {
            shared,
            workers: handles,
            calls: Mutex::new(()),
        })
    }

    /// Threads a call runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(part)` for every part in `0..self.threads()`: part 0 on the caller, the
    /// others on the workers. Returns when all have. Calls from several threads take turns;
    /// a job must not call `run` on its own pool (it would wait for itself).
    ///
    /// # Panics
    ///
    /// When `job` panics on any thread (after every part has ended).
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            return job(0);
        }
        let _one_call = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let shared = &*self.shared;
        // SAFETY: see `Shared`: no worker reads `job` until the epoch store below, and the
        // closure outlives this call, which waits for every worker.
        unsafe {
            let erased: JobPtr = std::mem::transmute::<&(dyn Fn(usize) + Sync), JobPtr>(job);
            *shared.job.get() = Some(erased);
        }
        shared.pending.store(self.workers.len(), Ordering::Relaxed);
        // SeqCst here and around the worker's park: the store-then-load on each side must
        // not reorder, or a worker could park while the caller saw it awake.
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        for (index, parked) in shared.parked.iter().enumerate() {
            if parked.load(Ordering::SeqCst) {
                self.workers[index].thread().unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        assert!(
            !shared.panicked.swap(false, Ordering::Relaxed),
            "a kernel part panicked on a worker thread"
        );
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for handle in self.workers.drain(..) {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        // Spin, then park until the caller's unpark (or a timeout, in case the unpark raced
        // with the flag).
        let mut spun_since = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                break epoch;
            }
            spins = spins.wrapping_add(1);
            // The clock is read every 1024 spins only: reading it is a few percent of a core.
            if !spins.is_multiple_of(1024) || spun_since.elapsed() < SPIN_BEFORE_PARK {
                std::hint::spin_loop();
                continue;
            }
            shared.parked[index].store(true, Ordering::SeqCst);
            if shared.epoch.load(Ordering::SeqCst) == seen {
                thread::park_timeout(Duration::from_millis(50));
            }
            shared.parked[index].store(false, Ordering::Release);
            spun_since = Instant::now();
        };
        seen = epoch;
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the epoch changed (Acquire), so the caller published a job and waits for
        // `pending` before it returns: the closure is alive.
        let job = unsafe { (*shared.job.get()).map(|job| &*job) };
        if let Some(job) = job
            && catch_unwind(AssertUnwindSafe(|| job(index + 1))).is_err()
        {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_call() {
        for parallelism in [
            Parallelism::Serial,
            Parallelism::Spin(SpinPool::new(3)),
            Parallelism::Rayon { parts: 3 },
        ] {
            let parts = parallelism.parts();
            let counts: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..1000 {
                parallelism.run(&|part| {
                    counts[part].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1000));
        }
    }

    #[test]
    fn a_parked_pool_wakes_up() {
        let pool = SpinPool::new(2);
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        thread::sleep(SPIN_BEFORE_PARK * 3);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller() {
        let pool = SpinPool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|part| assert!(part == 0, "part {part} fails"));
        }));
        assert!(result.is_err());
        // The pool still works.
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
