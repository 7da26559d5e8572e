//! [`MpiCollective`]: one rank per process over MPI (feature `mpi`; Open MPI or MPICH).

use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};

use super::{Collective, check_len, check_root, shard_range, unpad_blocks};
use crate::{Error, Result};

/// This process's rank of an MPI job.
///
/// Started by a launcher, `mpirun -np 2 my_trainer`, each process makes one
/// [`MpiCollective::init`] and trains as rank `MPI_COMM_WORLD` gives it. Operations map to the
/// MPI collectives of the same name: `MPI_Allreduce`, `MPI_Reduce_scatter_block`,
/// `MPI_Allgather`, `MPI_Bcast`, `MPI_Barrier`. The last shard of [`shard_range`] can be
/// shorter than the others; reduce-scatter and all-gather pad it to the block size MPI wants
/// (at most `world - 1` elements per call).
///
/// **Failures.** MPI's default error handler aborts the job, and launchers kill every rank when
/// one dies: a crashed rank takes the job down instead of leaving the others hanging, and a
/// [`Supervisor`](crate::Supervisor) around `mpirun` restarts the whole job. Lengths and roots
/// are checked against this rank's expectations before each call; lengths that differ between
/// ranks are an MPI error (the job aborts).
///
/// A rank that *returns* an error is the other way to leave peers waiting: its peers are
/// blocked in the next collective, and `MPI_Finalize` on the way out would block it too. So a
/// clean end is explicit: [`finish`](MpiCollective::finish) (a barrier, then `MPI_Finalize`).
/// Dropping the handle without it (an error or a panic unwinding out of the rank's code)
/// calls `MPI_Abort`, which ends every rank of the job: a failed job exits, with the launcher
/// reporting the failure, instead of hanging.
///
/// **Threads.** MPI is initialised at `MPI_THREAD_SERIALIZED`: calls may come from any thread,
/// one at a time, which `&mut self` on every operation guarantees.
pub struct MpiCollective {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// Scratch for padded blocks and out-of-place results, reused across calls.
    scratch: Vec<f32>,
    /// Finalises MPI when dropped, which only [`MpiCollective::finish`] lets happen (see
    /// `Drop`). Dropping the world communicator after it is safe: that drop does nothing.
    universe: Option<Universe>,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective")
            .field("rank", &self.rank)
            .field("world", &self.size)
            .finish_non_exhaustive()
    }
}

// SAFETY: MPI is initialised at MPI_THREAD_SERIALIZED (checked in `init`), which allows MPI
// calls from any thread as long as no two run at once. Every call goes through `&mut self`
// (or `Drop`), so moving the handle to another thread cannot make two calls overlap.
unsafe impl Send for MpiCollective {}

impl MpiCollective {
    /// Initialises MPI and joins `MPI_COMM_WORLD`. Call once per process; MPI is finalised when
    /// the handle is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::CollectiveAborted`] when MPI was already initialised in this process, or the
    /// library cannot give serialized thread support.
    pub fn init() -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::CollectiveAborted {
                reason:
                    "MPI is already initialised in this process (one MpiCollective per process)"
                        .into(),
            })?;
        if threading < Threading::Serialized {
            return Err(Error::CollectiveAborted {
                reason: format!(
                    "the MPI library gives {threading:?} thread support, not Serialized"
                )
                .into(),
            });
        }
        let world = universe.world();
        let rank = usize::try_from(world.rank()).expect("MPI ranks are non-negative");
        let size = usize::try_from(world.size()).expect("MPI sizes are positive");
        Ok(MpiCollective {
            world,
            rank,
            size,
            scratch: Vec::new(),
            universe: Some(universe),
        })
    }

    /// Ends this rank cleanly: waits for every rank at a barrier, then finalises MPI. The one
    /// way to drop the handle without aborting the job (see **Failures** above).
    ///
    /// # Errors
    ///
    /// None today (MPI's error handler aborts on failure); the `Result` leaves room for one.
    pub fn finish(mut self) -> Result<()> {
        self.world.barrier();
        // `Universe`'s drop is the `MPI_Finalize` call; `Drop for MpiCollective` then finds
        // nothing left to abort.
        drop(self.universe.take());
        Ok(())
    }

    /// The block every rank sends in reduce-scatter and all-gather: the largest shard.
    fn block(&self, len: usize) -> usize {
        len.div_ceil(self.size)
    }
}

impl Drop for MpiCollective {
    fn drop(&mut self) {
        if self.universe.is_some() {
            eprintln!(
                "mlinfra-train: MPI rank {} of {} ended without MpiCollective::finish (an error \
                 or a panic); aborting the job so that no rank waits for it forever",
                self.rank, self.size
            );
            self.world.abort(1);
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.size
    }

    fn all_reduce(&mut self, buffer: &mut [f32]) -> Result<()> {
        self.scratch.clear();
        self.scratch.resize(buffer.len(), 0.0);
        self.world
            .all_reduce_into(&*buffer, &mut self.scratch[..], SystemOperation::sum());
        buffer.copy_from_slice(&self.scratch);
        Ok(())
    }

    fn all_reduce_f64(&mut self, buffer: &mut [f64]) -> Result<()> {
        let mut sum = vec![0.0f64; buffer.len()];
        self.world
            .all_reduce_into(&*buffer, &mut sum[..], SystemOperation::sum());
        buffer.copy_from_slice(&sum);
        Ok(())
    }

    fn reduce_scatter(&mut self, input: &[f32], shard: &mut [f32]) -> Result<()> {
        let range = shard_range(input.len(), self.rank, self.size);
        check_len("reduce_scatter shard", shard.len(), range.len())?;
        let block = self.block(input.len());
        // Padded to `world` equal blocks: the tail of the last shard is zeros.
        self.scratch.clear();
        self.scratch.extend_from_slice(input);
        self.scratch.resize(block * self.size + block, 0.0);
        let (padded, mine) = self.scratch.split_at_mut(block * self.size);
        self.world
            .reduce_scatter_block_into(&*padded, &mut *mine, SystemOperation::sum());
        shard.copy_from_slice(&mine[..range.len()]);
        Ok(())
    }

    fn all_gather(&mut self, shard: &[f32], output: &mut [f32]) -> Result<()> {
        let range = shard_range(output.len(), self.rank, self.size);
        check_len("all_gather shard", shard.len(), range.len())?;
        let block = self.block(output.len());
        self.scratch.clear();
        self.scratch.extend_from_slice(shard);
        self.scratch.resize(block + block * self.size, 0.0);
        let (mine, gathered) = self.scratch.split_at_mut(block);
        self.world.all_gather_into(&*mine, &mut *gathered);
        unpad_blocks(gathered, block, output, self.size);
        Ok(())
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.size)?;
        let root = i32::try_from(root).expect("MPI ranks fit in an int");
        self.world.process_at_rank(root).broadcast_into(buffer);
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}
