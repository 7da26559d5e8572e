//! The thread pool that decodes row groups ahead of a [`Scan`](crate::Scan)'s consumer.
//!
//! # Why not rayon's global pool
//!
//! A scan's consumer blocks until the next row group is decoded. When the consumer is itself a
//! rayon worker (code inside `par_iter` or `ThreadPool::install`), decode tasks spawned onto
//! that same pool can queue behind the blocked workers and never run: a deadlock. Decoding on a
//! pool of its own removes the cycle. `take` still uses the caller's pool: its parallelism is
//! fork-join (`par_iter`), which never blocks a worker on queued work.

use std::sync::OnceLock;

/// Runs `task` on the decode pool, created on first use with one thread per core. If the pool
/// cannot be created (the process may spawn no threads), `task` runs inline: slower, since
/// decoding no longer overlaps consumption, but it always makes progress.
pub(crate) fn spawn(task: impl FnOnce() + Send + 'static) {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("mlinfra-decode-{i}"))
            .build()
            .ok()
    });
    match pool {
        Some(pool) => pool.spawn(task),
        None => task(),
    }
}
