//! The epoch plan: which sample comes at each position of an epoch, for every rank.
//!
//! # Contract
//!
//! The global order of an epoch is a pure function of the dataset's fingerprint, its sample
//! count, the seed, the epoch and the [`Shuffle`] mode. Nothing else enters it: not the number
//! of ranks, not the number of workers, not the wall clock. A rank's share is a fixed stride
//! through that one order ([`EpochPlan::slice`]), so changing the world size changes who reads
//! what, never the order itself.
//!
//! Position `k` is computed directly, in O(1) time and memory, whatever `k`: resuming at
//! sample 10⁹ of an epoch reads nothing and replays nothing.
//!
//! # Modes
//!
//! - [`Shuffle::None`]: dataset order.
//! - [`Shuffle::Exact`]: a uniformly chosen permutation of every sample (a keyed pseudo-random
//!   permutation, see `permutation.rs`). Random access everywhere: the mode for memory-mapped
//!   caches.
//! - [`Shuffle::Block`]: for streaming. The samples are cut into blocks of `block` consecutive
//!   ids (a row group, say), the blocks are permuted, and the permuted blocks are taken
//!   `window` at a time; inside each such group of `window × block` samples the samples are
//!   permuted. **Memory bound:** a reader needs the `window` blocks of the current group and
//!   no others, so at most `window × block` samples are resident, however large the dataset.
//!   The price is locality of the shuffle: two samples can only be neighbours if their blocks
//!   fell into the same group.

mod permutation;
mod state;

pub(crate) use permutation::Permutation;
pub use state::LoaderState;

use crate::{Error, Result};

/// How an epoch's samples are ordered; see the [module docs](self#modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Shuffle {
    /// Dataset order.
    None,
    /// A uniformly random permutation of every sample.
    Exact,
    /// Blocks of `block` consecutive samples, permuted, then shuffled `window` blocks at a time.
    Block {
        /// Samples per block (at least 1).
        block: u64,
        /// Blocks shuffled together (at least 1): the memory bound is `window × block` samples.
        window: u64,
    },
}

/// What [`EpochPlan::slice`] does with the samples left over when the world size does not
/// divide the epoch: every rank must take the same number of steps, or collectives hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remainder {
    /// Every rank gets `floor(len / world)` samples; the last `len mod world` positions of the
    /// order are not read this epoch (they are different samples each epoch when shuffled).
    Drop,
    /// Every rank gets `ceil(len / world)` samples; the order wraps around to its start to fill
    /// the last round, so a few samples are read twice.
    Pad,
}

/// The order of one epoch; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct EpochPlan {
    samples: u64,
    shuffle: Shuffle,
    order: Order,
}

#[derive(Debug, Clone)]
enum Order {
    Identity,
    Exact(Permutation),
    Block(BlockOrder),
}

impl EpochPlan {
    /// The plan of epoch `epoch` over `samples` samples of the dataset with `fingerprint`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] for a block shuffle with `block` or `window` of 0, or whose
    /// group of `window × block` samples (after the clamping below) does not fit a `u64`.
    ///
    /// A `block` larger than the epoch orders like one block of the whole epoch, and a
    /// `window` larger than the number of blocks like a window of all of them: both are
    /// clamped (the order is the same), so no size a state or checkpoint may claim reaches the
    /// arithmetic unchecked.
    pub fn new(
        samples: u64,
        fingerprint: &str,
        seed: u64,
        epoch: u64,
        shuffle: Shuffle,
    ) -> Result<EpochPlan> {
        let key = |purpose: &str| {
            let mut hasher = blake3::Hasher::new_derive_key("mlinfra-loader epoch plan");
            for part in [fingerprint.as_bytes(), purpose.as_bytes()] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            for number in [samples, seed, epoch] {
                hasher.update(&number.to_le_bytes());
            }
            *hasher.finalize().as_bytes()
        };
        let order = match shuffle {
            Shuffle::None => Order::Identity,
            Shuffle::Exact => Order::Exact(Permutation::new(samples, &key("exact"))),
            Shuffle::Block { block, window } => {
                if block == 0 || window == 0 {
                    return Err(Error::InvalidPlan {
                        reason: format!(
                            "a block shuffle needs block >= 1 and window >= 1, got block {block}, window {window}"
                        )
                        .into(),
                    });
                }
                // Clamping changes no order (the block count and every group's length stay
                // the same), and bounds every product below by about twice `samples`.
                let block = block.min(samples.max(1));
                let window = window.min(samples.div_ceil(block).max(1));
                if window.checked_mul(block).is_none() || samples.checked_add(block).is_none() {
                    return Err(Error::InvalidPlan {
                        reason: format!(
                            "a block shuffle of {samples} samples in blocks of {block}, \
                             {window} at a time, overflows"
                        )
                        .into(),
                    });
                }
                Order::Block(BlockOrder::new(samples, block, window, key("blocks")))
            }
        };
        Ok(EpochPlan {
            samples,
            shuffle,
            order,
        })
    }

    /// Samples in the epoch (every rank together).
    pub fn len(&self) -> u64 {
        self.samples
    }

    /// Whether the epoch has no samples.
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// The shuffle mode.
    pub fn shuffle(&self) -> Shuffle {
        self.shuffle
    }

    /// The sample id at `position` of the global order; `None` past the end. O(1).
    pub fn sample_at(&self, position: u64) -> Option<u64> {
        if position >= self.samples {
            return None;
        }
        Some(match &self.order {
            Order::Identity => position,
            Order::Exact(permutation) => permutation.apply(position),
            Order::Block(blocks) => blocks.sample_at(position),
        })
    }

    /// Rank `rank`'s share of the epoch among `world` ranks: positions `rank`, `rank + world`,
    /// `rank + 2 × world`, … of the global order, the same count for every rank.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] when `world` is 0 or `rank >= world`.
    pub fn slice(&self, rank: u64, world: u64, remainder: Remainder) -> Result<RankSlice<'_>> {
        self.slice_from(0, rank, world, remainder)
    }

    /// [`EpochPlan::slice`] of what is left after the first `start` positions of the global
    /// order: positions `start + rank`, `start + rank + world`, …. This is how an epoch resumes,
    /// with the same world size or another: the ranks together continue the one global order
    /// where it stopped. Only the tail differs with the world size: [`Remainder`] applies to
    /// the `len - start` positions left.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] when `world` is 0, `rank >= world` or `start > len()`.
    pub fn slice_from(
        &self,
        start: u64,
        rank: u64,
        world: u64,
        remainder: Remainder,
    ) -> Result<RankSlice<'_>> {
        if world == 0 || rank >= world {
            return Err(Error::InvalidPlan {
                reason: format!("rank {rank} of a world of {world}").into(),
            });
        }
        if start > self.samples {
            return Err(Error::InvalidPlan {
                reason: format!(
                    "resuming at position {start} of a {}-sample epoch",
                    self.samples
                )
                .into(),
            });
        }
        let left = self.samples - start;
        let len = match remainder {
            Remainder::Drop => left / world,
            // An empty epoch has nothing to wrap around to.
            Remainder::Pad if self.samples == 0 => 0,
            Remainder::Pad => left.div_ceil(world),
        };
        Ok(RankSlice {
            plan: self,
            start,
            rank,
            world,
            len,
        })
    }
}

/// One rank's share of an epoch; from [`EpochPlan::slice`].
#[derive(Debug, Clone, Copy)]
pub struct RankSlice<'a> {
    plan: &'a EpochPlan,
    start: u64,
    rank: u64,
    world: u64,
    len: u64,
}

impl RankSlice<'_> {
    /// Samples this rank reads this epoch (the same for every rank).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether this rank reads nothing this epoch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th sample id of this rank; `None` past [`RankSlice::len`]. O(1).
    pub fn sample_at(&self, i: u64) -> Option<u64> {
        if i >= self.len {
            return None;
        }
        // Only `Pad` reaches past the end, and by less than one round: wrap to the start.
        let position = (self.start + self.rank + i * self.world) % self.plan.samples;
        self.plan.sample_at(position)
    }

    /// This rank's sample ids from its `i`-th on.
    pub fn iter_from(&self, i: u64) -> impl Iterator<Item = u64> + '_ {
        (i..self.len).filter_map(move |i| self.sample_at(i))
    }
}

/// The key of the block shuffle's per-group permutations, from the plan's block key.
fn group_key(key: &[u8; 32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("mlinfra-loader block group");
    hasher.update(key);
    *hasher.finalize().as_bytes()
}

/// The block shuffle's order (see the [module docs](self#modes)).
#[derive(Debug, Clone)]
struct BlockOrder {
    samples: u64,
    block: u64,
    window: u64,
    blocks: u64,
    /// Samples in the last block (`block` when it divides `samples`).
    last_block_len: u64,
    /// Permutation of block indices: slot `s` of the shuffled block sequence holds block
    /// `block_order.apply(s)`.
    block_order: Permutation,
    /// The group holding the short last block, and that block's slot inside the group.
    short_group: u64,
    short_slot: u64,
    /// The keys each group's permutation is tweaked from ([`Permutation::tweaked`]).
    groups: Permutation,
}

impl BlockOrder {
    fn new(samples: u64, block: u64, window: u64, key: [u8; 32]) -> BlockOrder {
        let blocks = samples.div_ceil(block);
        let block_order = Permutation::new(blocks, &key);
        let last_block_len = samples - blocks.saturating_sub(1) * block;
        let short_position = if blocks == 0 {
            0
        } else {
            block_order.invert(blocks - 1)
        };
        BlockOrder {
            samples,
            block,
            window,
            blocks,
            last_block_len,
            block_order,
            short_group: short_position / window,
            short_slot: short_position % window,
            groups: Permutation::new(1, &group_key(&key)),
        }
    }

    /// Samples a full group holds.
    fn group_span(&self) -> u64 {
        self.window * self.block
    }

    /// Samples missing from the short block.
    fn shortfall(&self) -> u64 {
        self.block - self.last_block_len
    }

    /// Samples in group `group`.
    fn group_len(&self, group: u64) -> u64 {
        let slots = self.window.min(self.blocks - group * self.window);
        let short = if group == self.short_group {
            self.shortfall()
        } else {
            0
        };
        slots * self.block - short
    }

    fn sample_at(&self, position: u64) -> u64 {
        debug_assert!(position < self.samples);
        let span = self.group_span();
        // Groups after the short one start `shortfall` samples earlier.
        let (group, offset) = if position + self.shortfall() >= (self.short_group + 1) * span {
            let shifted = position + self.shortfall();
            (shifted / span, shifted % span)
        } else {
            (position / span, position % span)
        };
        let within = self.group_permutation(group).apply(offset);
        let (slot, inner) = self.locate_in_group(group, within);
        self.block_order.apply(group * self.window + slot) * self.block + inner
    }

    /// The permutation of the samples of `group`.
    fn group_permutation(&self, group: u64) -> Permutation {
        self.groups.tweaked(self.group_len(group), group)
    }

    /// The (slot, offset in the block) of the `within`-th sample of `group`, its blocks laid
    /// out slot after slot (the short block, if here, holding fewer).
    fn locate_in_group(&self, group: u64, within: u64) -> (u64, u64) {
        let b = self.block;
        if group != self.short_group {
            return (within / b, within % b);
        }
        let short_start = self.short_slot * b;
        if within < short_start {
            (within / b, within % b)
        } else if within < short_start + self.last_block_len {
            (self.short_slot, within - short_start)
        } else {
            let rest = within - short_start - self.last_block_len;
            (self.short_slot + 1 + rest / b, rest % b)
        }
    }
}

#[cfg(test)]
mod tests;
