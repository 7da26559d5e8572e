//! Recycled, 64-byte-aligned batch buffers that burn takes over without a copy.
//!
//! A collate step writes a batch's column into a [`BufferMut`] from a [`BufferPool`], then
//! [`BufferMut::freeze`]s it into burn [`Bytes`]: the tensor data points at the buffer itself,
//! nothing is copied. When the last `TensorData` holding it is dropped (the train step is done
//! with the batch), the allocation goes back to the pool and the next batch reuses it. In a
//! steady state the loader therefore allocates nothing per batch: the pool's
//! [`PoolCounters`] show it (`allocated` stops growing while `reused` climbs).
//!
//! The pool keeps at most `max_free` idle buffers; a buffer returned to a full pool is freed.
//! A buffer that outlives its pool (the loader was dropped first) is simply freed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use burn::tensor::{AllocationProperty, Bytes};

/// One cache line. Buffers are vectors of these, so every buffer starts 64-byte aligned: enough
/// for any element type and for SIMD loads.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; LINE]);

const LINE: usize = 64;

/// A pool of recycled batch buffers; cheap to clone (shared).
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    free: Mutex<Vec<Vec<Line>>>,
    max_free: usize,
    allocated: AtomicU64,
    reused: AtomicU64,
}

/// How a [`BufferPool`] has served its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounters {
    /// Buffers newly allocated.
    pub allocated: u64,
    /// Requests served by a recycled buffer.
    pub reused: u64,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("max_free", &self.inner.max_free)
            .field("counters", &self.counters())
            .finish()
    }
}

impl BufferPool {
    /// A pool that keeps at most `max_free` idle buffers.
    pub fn new(max_free: usize) -> BufferPool {
        BufferPool {
            inner: Arc::new(PoolInner {
                free: Mutex::new(Vec::new()),
                max_free,
                allocated: AtomicU64::new(0),
                reused: AtomicU64::new(0),
            }),
        }
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (a recycled buffer holds
    /// an earlier batch): the caller overwrites all of it.
    pub fn get(&self, len: usize) -> BufferMut {
        let lines_needed = len.div_ceil(LINE);
        let recycled = {
            let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
            // Best fit: the smallest idle buffer that is large enough, and not more than twice
            // that (a huge buffer is not spent on a small request).
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, lines)| {
                    lines.len() >= lines_needed && lines.len() <= 2 * lines_needed.max(1)
                })
                .min_by_key(|(_, lines)| lines.len())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let lines = match recycled {
            Some(lines) => {
                self.inner.reused.fetch_add(1, Ordering::Relaxed);
                lines
            }
            None => {
                self.inner.allocated.fetch_add(1, Ordering::Relaxed);
                vec![Line([0; LINE]); lines_needed]
            }
        };
        BufferMut {
            lines,
            len,
            pool: Arc::downgrade(&self.inner),
        }
    }

    /// What the pool has done so far.
    pub fn counters(&self) -> PoolCounters {
        PoolCounters {
            allocated: self.inner.allocated.load(Ordering::Relaxed),
            reused: self.inner.reused.load(Ordering::Relaxed),
        }
    }
}

/// A writable batch buffer from a [`BufferPool`]; returns to the pool when dropped.
pub struct BufferMut {
    lines: Vec<Line>,
    len: usize,
    pool: Weak<PoolInner>,
}

impl BufferMut {
    /// The buffer's bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `Line` is `repr(C)` over `[u8; 64]`: no padding, every byte initialised, any
        // byte pattern valid; `len <= lines.len() * 64` by construction (`BufferPool::get`).
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// The buffer as burn [`Bytes`], without copying: the tensor data points at this buffer,
    /// which returns to its pool when the last holder drops it.
    pub fn freeze(self) -> Bytes {
        Bytes::from_shared(bytes::Bytes::from_owner(self), AllocationProperty::Native)
    }
}

impl AsRef<[u8]> for BufferMut {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for BufferMut {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut free = pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < pool.max_free {
            free.push(std::mem::take(&mut self.lines));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_buffers_are_not_copied_and_come_back() {
        let pool = BufferPool::new(4);
        let mut buffer = pool.get(1000);
        buffer.as_mut_slice().fill(7);
        let address = buffer.as_mut_slice().as_ptr();
        assert_eq!(address as usize % 64, 0, "64-byte aligned");
        let bytes = buffer.freeze();
        assert_eq!(bytes.as_ptr(), address, "freeze copies nothing");
        assert!(bytes.iter().all(|&b| b == 7) && bytes.len() == 1000);
        drop(bytes);
        // The same allocation serves the next request of a size that fits.
        let mut again = pool.get(900);
        assert_eq!(again.as_mut_slice().as_ptr(), address);
        assert_eq!(
            pool.counters(),
            PoolCounters {
                allocated: 1,
                reused: 1
            }
        );
    }

    #[test]
    fn a_full_pool_frees_and_an_orphan_buffer_is_freed() {
        let pool = BufferPool::new(1);
        let (a, b) = (pool.get(64), pool.get(64));
        drop((a, b)); // only one is kept
        let _kept = pool.get(64);
        let _fresh = pool.get(64);
        assert_eq!(pool.counters().allocated, 3);
        let orphan = pool.get(10);
        drop(pool);
        drop(orphan); // no pool to return to: freed, no panic
    }
}
