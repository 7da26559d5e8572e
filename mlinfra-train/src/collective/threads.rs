//! [`ThreadGroup`]: N ranks as threads of one process, over shared memory.
//!
//! Each operation is two rendezvous: every rank publishes its contribution in its own slot,
//! waits for all, reads what it needs from every slot (sums in rank order, so the result is
//! the same bits whatever the thread timing), and waits again before a slot may be reused.
//! Reads run in parallel under read locks. A rank whose handle is dropped (it returned early
//! or panicked) breaks the group: the others' pending and future calls fail.

use std::sync::{Arc, Condvar, Mutex, RwLock};

use super::{Collective, check_len, check_root, shard_range};
use crate::{Error, Result};

/// Makes the ranks of an in-process group.
#[derive(Debug)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// Handles for ranks `0..world`, in rank order; move each into its thread.
    ///
    /// # Panics
    ///
    /// If `world` is 0.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize) -> Vec<ThreadCollective> {
        assert!(world > 0, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            world,
            f32s: (0..world).map(|_| RwLock::new(Vec::new())).collect(),
            f64s: (0..world).map(|_| RwLock::new(Vec::new())).collect(),
            barrier: Mutex::new(BarrierState::default()),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadCollective {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`ThreadGroup`].
#[derive(Debug)]
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    /// Each rank's contribution to the current operation.
    f32s: Vec<RwLock<Vec<f32>>>,
    f64s: Vec<RwLock<Vec<f64>>>,
    barrier: Mutex<BarrierState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct BarrierState {
    arrived: usize,
    generation: u64,
    /// A rank left the group.
    broken: bool,
}

impl ThreadCollective {
    /// Waits until every rank has arrived, or fails once the group is broken.
    fn rendezvous(&self) -> Result<()> {
        let shared = &*self.shared;
        let mut state = shared.barrier.lock().unwrap_or_else(|p| p.into_inner());
        if state.broken {
            return Err(aborted(self.rank));
        }
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == shared.world {
            state.arrived = 0;
            state.generation += 1;
            shared.changed.notify_all();
            return Ok(());
        }
        loop {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
            // The generation is checked first: a rank that completed this rendezvous and then
            // left does not fail the ones it released.
            if state.generation != generation {
                return Ok(());
            }
            if state.broken {
                return Err(aborted(self.rank));
            }
        }
    }

    /// Publishes `contribution`, then calls `read` with every rank's (in rank order) once all
    /// have published.
    fn exchange<T: Copy, R>(
        &self,
        slots: impl Fn(&Shared) -> &[RwLock<Vec<T>>],
        contribution: &[T],
        read: impl FnOnce(&[&Vec<T>]) -> Result<R>,
    ) -> Result<R> {
        self.publish(&slots, contribution)?;
        self.read_all(&slots, read)
    }

    /// First half of an exchange: this rank's contribution into its slot, then wait for all.
    fn publish<T: Copy>(
        &self,
        slots: &impl Fn(&Shared) -> &[RwLock<Vec<T>>],
        contribution: &[T],
    ) -> Result<()> {
        {
            let mut mine = slots(&self.shared)[self.rank]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            mine.clear();
            mine.extend_from_slice(contribution);
        }
        self.rendezvous()
    }

    /// Second half: `read` every rank's slot, then wait until all have read before any slot
    /// may be overwritten.
    fn read_all<T: Copy, R>(
        &self,
        slots: &impl Fn(&Shared) -> &[RwLock<Vec<T>>],
        read: impl FnOnce(&[&Vec<T>]) -> Result<R>,
    ) -> Result<R> {
        let result = {
            let guards: Vec<_> = slots(&self.shared)
                .iter()
                .map(|slot| slot.read().unwrap_or_else(|p| p.into_inner()))
                .collect();
            let views: Vec<&Vec<T>> = guards.iter().map(|guard| &**guard).collect();
            read(&views)
        };
        self.rendezvous()?;
        result
    }

    fn f32s(shared: &Shared) -> &[RwLock<Vec<f32>>] {
        &shared.f32s
    }

    fn f64s(shared: &Shared) -> &[RwLock<Vec<f64>>] {
        &shared.f64s
    }
}

/// `out[i] = sum over ranks of slots[r][range.start + i]`, added in rank order.
fn sum_into<T: Copy + std::ops::AddAssign>(
    slots: &[&Vec<T>],
    range: std::ops::Range<usize>,
    out: &mut [T],
) {
    out.copy_from_slice(&slots[0][range.clone()]);
    for slot in &slots[1..] {
        for (acc, &x) in out.iter_mut().zip(&slot[range.clone()]) {
            *acc += x;
        }
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce(&mut self, buffer: &mut [f32]) -> Result<()> {
        // Published from `buffer` itself, which the read then overwrites: no extra copy.
        self.publish(&Self::f32s, buffer)?;
        self.read_all(&Self::f32s, |slots| {
            let len = same_lengths(slots, "all_reduce")?;
            sum_into(slots, 0..len, buffer);
            Ok(())
        })
    }

    fn all_reduce_f64(&mut self, buffer: &mut [f64]) -> Result<()> {
        self.publish(&Self::f64s, buffer)?;
        self.read_all(&Self::f64s, |slots| {
            let len = same_lengths(slots, "all_reduce_f64")?;
            sum_into(slots, 0..len, buffer);
            Ok(())
        })
    }

    fn reduce_scatter(&mut self, input: &[f32], shard: &mut [f32]) -> Result<()> {
        let (rank, world) = (self.rank, self.shared.world);
        self.exchange(Self::f32s, input, |slots| {
            let len = same_lengths(slots, "reduce_scatter")?;
            let range = shard_range(len, rank, world);
            check_len("reduce_scatter shard", shard.len(), range.len())?;
            sum_into(slots, range, shard);
            Ok(())
        })
    }

    fn all_gather(&mut self, shard: &[f32], output: &mut [f32]) -> Result<()> {
        let world = self.shared.world;
        self.exchange(Self::f32s, shard, |slots| {
            for (rank, slot) in slots.iter().enumerate() {
                let range = shard_range(output.len(), rank, world);
                check_len(
                    &format!("all_gather shard of rank {rank}"),
                    slot.len(),
                    range.len(),
                )?;
                output[range].copy_from_slice(slot);
            }
            Ok(())
        })
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.shared.world)?;
        let contribution = if self.rank == root {
            buffer.to_vec()
        } else {
            Vec::new()
        };
        self.exchange(Self::f32s, &contribution, |slots| {
            check_len("broadcast buffer", buffer.len(), slots[root].len())?;
            buffer.copy_from_slice(slots[root]);
            Ok(())
        })
    }

    fn barrier(&mut self) -> Result<()> {
        self.rendezvous()
    }
}

fn aborted(rank: usize) -> Error {
    Error::CollectiveAborted {
        reason: format!("rank {rank} waited on a group that another rank left").into(),
    }
}

/// Every slot has `len` elements: the SPMD contract.
fn same_lengths<T>(slots: &[&Vec<T>], what: &str) -> Result<usize> {
    let len = slots[0].len();
    match slots.iter().position(|slot| slot.len() != len) {
        None => Ok(len),
        Some(rank) => Err(Error::CollectiveMismatch {
            reason: format!(
                "{what}: rank 0 passed {len} elements, rank {rank} {}",
                slots[rank].len()
            )
            .into(),
        }),
    }
}

impl Drop for ThreadCollective {
    fn drop(&mut self) {
        let mut state = self
            .shared
            .barrier
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        state.broken = true;
        self.shared.changed.notify_all();
    }
}
