//! [`LoaderState`]: where a loader is in its data, as a small serde value a checkpoint stores.

use super::{EpochPlan, RankSlice, Remainder, Shuffle};
use crate::{Error, Result};

/// The state format this build writes and reads.
const FORMAT: u32 = 1;

/// Where a loader is: enough to rebuild its [`EpochPlan`] and continue where it stopped.
///
/// `consumed` counts positions of the epoch's *global* order, all ranks together: ranks step
/// in lockstep (equal shares, see [`EpochPlan::slice`]), so after `k` samples per rank in a
/// world of `w`, `consumed = k × w`. Resuming is O(1) whatever `consumed` is: the plan computes
/// position `consumed` directly ([`EpochPlan::slice_from`]). Because the state names global
/// positions, a job may resume with another world size or worker count and the ranks together
/// continue the same global order.
///
/// ```
/// use mlinfra_loader::{LoaderState, Remainder, Shuffle};
///
/// let mut state = LoaderState::new("blake3:ab12", 1_000, 42, Shuffle::Exact, Remainder::Drop);
/// state.advance(8, 4); // 8 samples on each of 4 ranks
/// let json = serde_json::to_string(&state).unwrap();
/// let resumed: LoaderState = serde_json::from_str(&json).unwrap();
/// assert_eq!(resumed.consumed(), 32);
/// // Two ranks now: each continues from global position 32.
/// let plan = resumed.plan()?;
/// let rank0 = resumed.rank_slice(&plan, 0, 2)?;
/// assert_eq!(rank0.sample_at(0), plan.sample_at(32));
/// # Ok::<(), mlinfra_loader::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    format: u32,
    fingerprint: String,
    samples: u64,
    seed: u64,
    epoch: u64,
    shuffle: Shuffle,
    remainder: Remainder,
    consumed: u64,
}

impl LoaderState {
    /// The start of epoch 0 over the dataset with `fingerprint` and `samples` samples.
    pub fn new(
        fingerprint: &str,
        samples: u64,
        seed: u64,
        shuffle: Shuffle,
        remainder: Remainder,
    ) -> LoaderState {
        LoaderState {
            format: FORMAT,
            fingerprint: fingerprint.to_owned(),
            samples,
            seed,
            epoch: 0,
            shuffle,
            remainder,
            consumed: 0,
        }
    }

    /// The same state moved to the start of `epoch`.
    pub fn with_epoch(mut self, epoch: u64) -> LoaderState {
        self.epoch = epoch;
        self.consumed = 0;
        self
    }

    /// What happens to the samples that do not divide among the ranks.
    pub fn remainder(&self) -> Remainder {
        self.remainder
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Positions of this epoch's global order already delivered, all ranks together.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The fingerprint of the dataset this state belongs to.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The current epoch's plan.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] for a state of another format, or one whose parameters no plan
    /// accepts (a hand-edited or corrupted file).
    pub fn plan(&self) -> Result<EpochPlan> {
        if self.format != FORMAT {
            return Err(Error::InvalidPlan {
                reason: format!(
                    "loader state format {} (this build reads {FORMAT})",
                    self.format
                )
                .into(),
            });
        }
        EpochPlan::new(
            self.samples,
            &self.fingerprint,
            self.seed,
            self.epoch,
            self.shuffle,
        )
    }

    /// What rank `rank` of `world` reads from here to the end of the epoch.
    ///
    /// # Errors
    ///
    /// As [`EpochPlan::slice_from`].
    pub fn rank_slice<'p>(
        &self,
        plan: &'p EpochPlan,
        rank: u64,
        world: u64,
    ) -> Result<RankSlice<'p>> {
        plan.slice_from(self.consumed.min(plan.len()), rank, world, self.remainder)
    }

    /// Records that each of `world` ranks consumed `per_rank` more samples.
    pub fn advance(&mut self, per_rank: u64, world: u64) {
        self.consumed = self.consumed.saturating_add(per_rank.saturating_mul(world));
    }

    /// Moves to the start of the next epoch.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] after epoch `u64::MAX` (only a hand-edited or corrupted state
    /// gets there): wrapping to epoch 0 would silently replay its order. The state is
    /// unchanged.
    pub fn next_epoch(&mut self) -> Result<()> {
        self.epoch = self
            .epoch
            .checked_add(1)
            .ok_or_else(|| Error::InvalidPlan {
                reason: format!("epoch {} is the last one a loader can number", self.epoch).into(),
            })?;
        self.consumed = 0;
        Ok(())
    }

    /// Checks that this state belongs to the dataset with `fingerprint` and `samples` samples.
    ///
    /// # Errors
    ///
    /// [`Error::StateMismatch`] naming both fingerprints: resuming on other data would
    /// silently read a different order.
    pub fn check_dataset(&self, fingerprint: &str, samples: u64) -> Result<()> {
        if self.fingerprint != fingerprint || self.samples != samples {
            return Err(Error::StateMismatch {
                reason: format!(
                    "the state is for dataset {} ({} samples), this dataset is {fingerprint} ({samples} samples)",
                    self.fingerprint, self.samples
                )
                .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples every rank reads over one epoch, in global position order, when the job
    /// runs `first` steps on `world_before` ranks, stops, and resumes on `world_after` ranks.
    fn interrupted(
        state: &LoaderState,
        first: u64,
        world_before: u64,
        world_after: u64,
    ) -> Vec<u64> {
        let plan = state.plan().unwrap();
        let mut read: Vec<(u64, u64)> = Vec::new(); // (global position, sample)
        for rank in 0..world_before {
            let slice = state.rank_slice(&plan, rank, world_before).unwrap();
            for i in 0..first {
                read.push((rank + i * world_before, slice.sample_at(i).unwrap()));
            }
        }
        let mut saved = state.clone();
        saved.advance(first, world_before);
        // A restart: the state goes through JSON, the plan is rebuilt from it.
        let resumed: LoaderState =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
        let plan = resumed.plan().unwrap();
        for rank in 0..world_after {
            let slice = resumed.rank_slice(&plan, rank, world_after).unwrap();
            for (i, sample) in slice.iter_from(0).enumerate() {
                read.push((resumed.consumed() + rank + i as u64 * world_after, sample));
            }
        }
        read.sort_unstable();
        read.into_iter().map(|(_, sample)| sample).collect()
    }

    #[test]
    fn resuming_continues_the_global_order_for_any_world_size() {
        // Every (before, after) pair leaves a multiple of `after` samples, so no tail is
        // dropped; with a tail, only which samples are dropped depends on the world size.
        for shuffle in [
            Shuffle::None,
            Shuffle::Exact,
            Shuffle::Block {
                block: 16,
                window: 4,
            },
        ] {
            let state = LoaderState::new("blake3:x", 840, 5, shuffle, Remainder::Drop);
            let plan = state.plan().unwrap();
            let uninterrupted: Vec<u64> = (0..840).map(|p| plan.sample_at(p).unwrap()).collect();
            for (before, after) in [(4, 4), (4, 2), (2, 8), (3, 5), (1, 5)] {
                assert_eq!(
                    interrupted(&state, 20, before, after),
                    uninterrupted,
                    "{shuffle:?}: {before} ranks, then {after}"
                );
            }
        }
    }

    #[test]
    fn epochs_differ_and_restart_at_zero() {
        let mut state = LoaderState::new("blake3:x", 100, 5, Shuffle::Exact, Remainder::Pad);
        let first = state.plan().unwrap();
        state.advance(10, 2);
        state.next_epoch().unwrap();
        assert_eq!((state.epoch(), state.consumed()), (1, 0));
        let second = state.plan().unwrap();
        let order = |plan: &EpochPlan| {
            (0..100)
                .map(|p| plan.sample_at(p).unwrap())
                .collect::<Vec<_>>()
        };
        assert_ne!(order(&first), order(&second));
    }

    #[test]
    fn a_state_for_other_data_or_format_is_refused() {
        let state = LoaderState::new("blake3:x", 100, 5, Shuffle::Exact, Remainder::Drop);
        assert!(state.check_dataset("blake3:x", 100).is_ok());
        assert!(matches!(
            state.check_dataset("blake3:y", 100),
            Err(Error::StateMismatch { .. })
        ));
        assert!(matches!(
            state.check_dataset("blake3:x", 99),
            Err(Error::StateMismatch { .. })
        ));
        let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
        json["format"] = 2.into();
        let future: LoaderState = serde_json::from_value(json).unwrap();
        assert!(matches!(future.plan(), Err(Error::InvalidPlan { .. })));
    }

    #[test]
    fn the_last_epoch_does_not_wrap_to_the_first() {
        let mut state = LoaderState::new("blake3:x", 100, 5, Shuffle::Exact, Remainder::Drop)
            .with_epoch(u64::MAX);
        state.advance(10, 1);
        assert!(matches!(state.next_epoch(), Err(Error::InvalidPlan { .. })));
        assert_eq!((state.epoch(), state.consumed()), (u64::MAX, 10));
    }
}
