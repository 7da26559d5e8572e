//! Collectives: how data-parallel ranks agree on gradients and parameters.
//!
//! A [`Collective`] is one rank's handle on a group of `world` ranks. Every rank calls the
//! same operations in the same order with buffers of the same lengths (the SPMD contract of
//! MPI and NCCL); a rank that leaves the group early makes the others' pending calls fail
//! with [`Error::CollectiveAborted`](crate::Error::CollectiveAborted) rather than hang.
//!
//! Sums are over `f32` (gradients, parameters) and `f64` (scalars: sample counts, squared
//! norms). Vectors are cut into shards by [`shard_range`], the one rule every rank, optimizer
//! shard and checkpoint uses.
//!
//! Implementations: [`ThreadGroup`] (N ranks as threads of one process; deterministic:
//! sums run in rank order, so results do not depend on thread timing), `MpiCollective` (one
//! rank per process under `mpirun`; feature `mpi`), `NcclCollective` (NVIDIA GPUs over NCCL;
//! feature `cuda`) and [`Single`].

#[cfg(feature = "mpi")]
mod mpi_ranks;
#[cfg(feature = "cuda")]
mod nccl;
mod threads;

#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use mpi_ranks::MpiCollective;
#[cfg(feature = "cuda")]
#[cfg_attr(docsrs, doc(cfg(feature = "cuda")))]
pub use nccl::{NcclCollective, NcclId};
pub use threads::{ThreadCollective, ThreadGroup};

use crate::Result;

/// One rank's handle on a group of ranks; see the [module docs](self).
pub trait Collective: Send {
    /// This rank, in `0..world`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn world(&self) -> usize;

    /// Replaces `buffer` on every rank with the element-wise sum over ranks.
    ///
    /// # Errors
    ///
    /// The group is broken (a rank left) or the ranks' lengths differ.
    fn all_reduce(&mut self, buffer: &mut [f32]) -> Result<()>;

    /// [`Collective::all_reduce`] for `f64` scalars and short vectors.
    ///
    /// # Errors
    ///
    /// As [`Collective::all_reduce`].
    fn all_reduce_f64(&mut self, buffer: &mut [f64]) -> Result<()>;

    /// Sums `input` (the full vector, the same length on every rank) over ranks and leaves
    /// each rank with its own shard of the sum: `shard` is `input[shard_range(input.len(),
    /// rank, world)]` summed.
    ///
    /// # Errors
    ///
    /// As [`Collective::all_reduce`], or `shard` is not this rank's shard length.
    fn reduce_scatter(&mut self, input: &[f32], shard: &mut [f32]) -> Result<()>;

    /// Concatenates every rank's `shard` (rank order, each of its [`shard_range`] length) into
    /// `output` on every rank.
    ///
    /// # Errors
    ///
    /// As [`Collective::all_reduce`], or the lengths do not match the shard rule.
    fn all_gather(&mut self, shard: &[f32], output: &mut [f32]) -> Result<()>;

    /// Replaces `buffer` on every rank with rank `root`'s.
    ///
    /// # Errors
    ///
    /// As [`Collective::all_reduce`], or `root` is not a rank.
    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    ///
    /// # Errors
    ///
    /// The group is broken.
    fn barrier(&mut self) -> Result<()>;
}

/// A borrowed handle is a handle: several engines can take turns on one group (an MPI
/// process initialises MPI once, then trains more than one model).
impl<C: Collective + ?Sized> Collective for &mut C {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn world(&self) -> usize {
        (**self).world()
    }

    fn all_reduce(&mut self, buffer: &mut [f32]) -> Result<()> {
        (**self).all_reduce(buffer)
    }

    fn all_reduce_f64(&mut self, buffer: &mut [f64]) -> Result<()> {
        (**self).all_reduce_f64(buffer)
    }

    fn reduce_scatter(&mut self, input: &[f32], shard: &mut [f32]) -> Result<()> {
        (**self).reduce_scatter(input, shard)
    }

    fn all_gather(&mut self, shard: &[f32], output: &mut [f32]) -> Result<()> {
        (**self).all_gather(shard, output)
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<()> {
        (**self).broadcast(buffer, root)
    }

    fn barrier(&mut self) -> Result<()> {
        (**self).barrier()
    }
}

/// The elements of a vector of `len` that rank `rank` of `world` owns: contiguous, in rank
/// order, `ceil(len / world)` each (the last ranks get fewer, possibly none).
///
/// # Panics
///
/// If `world` is 0 or `rank >= world` (a caller bug; collectives validate ranks when built).
pub fn shard_range(len: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    assert!(rank < world, "rank {rank} outside a world of {world}");
    let per = len.div_ceil(world);
    let start = (rank * per).min(len);
    start..(start + per).min(len)
}

/// Every rank's `mine` (the same length on every rank), concatenated in rank order: how ranks
/// share small integers (file sizes, hashes, RNG states) over a collective that only sums.
///
/// Each word travels as four 16-bit pieces in an `f64` slot that only its rank fills, so the
/// sum is exact. Costs one `all_reduce_f64` of `4 × world × mine.len()` values.
///
/// # Errors
///
/// As [`Collective::all_reduce_f64`].
pub fn all_gather_u64<C: Collective + ?Sized>(
    collective: &mut C,
    mine: &[u64],
) -> Result<Vec<u64>> {
    let (rank, world, n) = (collective.rank(), collective.world(), mine.len());
    let mut slots = vec![0.0f64; 4 * world * n];
    for (i, &word) in mine.iter().enumerate() {
        for piece in 0..4 {
            slots[4 * (rank * n + i) + piece] = ((word >> (16 * piece)) & 0xFFFF) as f64;
        }
    }
    collective.all_reduce_f64(&mut slots)?;
    Ok(slots
        .chunks_exact(4)
        .map(|pieces| {
            pieces.iter().enumerate().fold(0u64, |word, (piece, &v)| {
                word | ((v as u64) << (16 * piece))
            })
        })
        .collect())
}

/// A group of one: every operation is the identity. What a single-process run uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_reduce(&mut self, _buffer: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_f64(&mut self, _buffer: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn reduce_scatter(&mut self, input: &[f32], shard: &mut [f32]) -> Result<()> {
        check_len("reduce_scatter shard", shard.len(), input.len())?;
        shard.copy_from_slice(input);
        Ok(())
    }

    fn all_gather(&mut self, shard: &[f32], output: &mut [f32]) -> Result<()> {
        check_len("all_gather output", output.len(), shard.len())?;
        output.copy_from_slice(shard);
        Ok(())
    }

    fn broadcast(&mut self, _buffer: &mut [f32], root: usize) -> Result<()> {
        check_root(root, 1)
    }

    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Copies `world` equal blocks of `block` elements (what MPI and NCCL all-gathers return, each
/// rank's shard padded to the largest) into `output`, cut by [`shard_range`].
#[cfg(any(feature = "mpi", feature = "cuda"))]
pub(crate) fn unpad_blocks(blocks: &[f32], block: usize, output: &mut [f32], world: usize) {
    for rank in 0..world {
        let range = shard_range(output.len(), rank, world);
        let from = rank * block;
        output[range.clone()].copy_from_slice(&blocks[from..from + range.len()]);
    }
}

/// A length mismatch in a collective call: a caller bug, reported rather than corrupting.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(crate::Error::CollectiveMismatch {
            reason: format!("{what} is {got}, expected {want}").into(),
        })
    }
}

pub(crate) fn check_root(root: usize, world: usize) -> Result<()> {
    if root < world {
        Ok(())
    } else {
        Err(crate::Error::CollectiveMismatch {
            reason: format!("broadcast root {root} outside a world of {world}").into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_vector_in_rank_order() {
        for len in [0, 1, 5, 8, 9, 100] {
            for world in 1..=6 {
                let mut next = 0;
                for rank in 0..world {
                    let range = shard_range(len, rank, world);
                    assert_eq!(range.start, next, "len {len} world {world} rank {rank}");
                    assert!(range.len() <= len.div_ceil(world));
                    next = range.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
