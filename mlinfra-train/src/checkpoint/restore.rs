//! [`Checkpoint`]: finding the newest valid checkpoint and reading shards of it back.

use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use burn_pack::Scalar;

use super::manifest::{MANIFEST, Manifest};
use super::{files, parse_step_dir, rank_file};
use crate::collective::{Collective, all_gather_u64};
use crate::{Error, Result};

/// Optimizer state as named tensors and named scalars (burn's `RecordState` leaves).
pub(crate) type OptimizerLeaves = (Vec<(String, TensorData)>, Vec<(String, Scalar)>);

/// What [`Checkpoint::read_state`] gives a rank.
pub(crate) struct RestoredState {
    /// The whole flat vector of fp32 master weights.
    pub(crate) master: Vec<f32>,
    /// The optimizer state of this rank's shard.
    pub(crate) optimizer: OptimizerLeaves,
}

/// A complete, verified checkpoint: its manifest and where its files are.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    manifest: Manifest,
    skipped: Vec<(PathBuf, String)>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir` (a `step-…` directory) and verifies every file's size and
    /// SHA-256 against its manifest. Reads every byte once.
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointCorrupt`] naming the first file that is missing, truncated or
    /// altered, or a manifest that is missing, malformed, or records another step than the
    /// directory's name.
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let dir = dir.as_ref().to_path_buf();
        let step = dir
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(parse_step_dir)
            .ok_or_else(|| Error::CheckpointCorrupt {
                path: dir.as_path().into(),
                reason: "not a checkpoint directory (named `step-` and a step number)".into(),
            })?;
        let manifest = Manifest::read(&dir.join(MANIFEST), step)?;
        for file in &manifest.files {
            let path = dir.join(&file.name);
            files::verify(&path, file.bytes, &file.sha256).map_err(|reason| {
                Error::CheckpointCorrupt {
                    path: path.as_path().into(),
                    reason: reason.into(),
                }
            })?;
        }
        Ok(Checkpoint {
            dir,
            manifest,
            skipped: Vec::new(),
        })
    }

    /// The newest checkpoint under `root` that is complete and verifies on every rank, or `None`
    /// when there is none (a fresh start). Newer directories that fail verification are passed
    /// over and listed in [`Checkpoint::skipped`].
    ///
    /// Collective: every rank calls it, and all get the same checkpoint. Each rank verifies the
    /// candidates it considers (a full read of their files).
    ///
    /// # Errors
    ///
    /// [`Error::CheckpointIo`] when `root` exists but cannot be listed; collective errors.
    pub fn latest<C: Collective + ?Sized>(
        root: impl AsRef<Path>,
        collective: &mut C,
    ) -> Result<Option<Checkpoint>> {
        let root = root.as_ref();
        let mut candidates = list_steps(root)?;
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut skipped = Vec::new();
        // Each rank proposes its newest valid step at or below `bound`; the ranks settle on the
        // smallest proposal, which every rank then checks in the next round. Encoded as
        // [has one, step]: every u64 is a valid step, so none can stand for "none".
        let mut bound = u64::MAX;
        loop {
            let mut proposal = None;
            for &step in candidates.iter().filter(|&&s| s <= bound) {
                let dir = super::step_dir(root, step);
                match Checkpoint::open(&dir) {
                    Ok(checkpoint) => {
                        proposal = Some(checkpoint);
                        break;
                    }
                    Err(error) => {
                        if !skipped.iter().any(|(p, _)| p == &dir) {
                            skipped.push((dir, error.to_string()));
                        }
                    }
                }
            }
            let mine = proposal.as_ref().map_or([0, 0], |c| [1, c.manifest.step]);
            let all = all_gather_u64(collective, &mine)?;
            let proposals: Vec<Option<u64>> = all
                .chunks_exact(2)
                .map(|p| (p[0] == 1).then_some(p[1]))
                .collect();
            // Any rank without a valid checkpoint at or below the bound: none is common.
            let Some(agreed) = proposals.iter().copied().min().flatten() else {
                return Ok(None);
            };
            if proposals.iter().all(|&p| p == Some(agreed)) {
                let mut checkpoint = proposal.expect("this rank proposed the agreed step");
                checkpoint.skipped = skipped;
                return Ok(Some(checkpoint));
            }
            let Some(below) = agreed.checked_sub(1) else {
                return Ok(None);
            };
            bound = below;
            // Candidates above the new bound that this rank found valid were refused by
            // another rank.
            candidates.retain(|&s| s <= bound);
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Optimizer steps taken when it was saved.
    pub fn step(&self) -> u64 {
        self.manifest.step
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Newer checkpoint directories passed over by [`Checkpoint::latest`], with the reason.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// Rank `rank`'s random generator state; ranks beyond the saved world get a stream derived
    /// from rank 0's.
    pub fn rng(&self, rank: usize) -> u64 {
        self.manifest.rng.get(rank).copied().unwrap_or_else(|| {
            crate::rng::SplitMix64::new(self.manifest.rng[0] ^ rank as u64).next_u64()
        })
    }

    /// The state a rank restores: the whole flat vector of fp32 master weights, and the
    /// optimizer state for the elements `range` of it. One pass over the rank files, each read
    /// (and its hash checked again) once.
    ///
    /// Each optimizer state tensor is element-wise over the shard it belongs to, so a new
    /// shard's state is the concatenation of the overlapping pieces of the saved ones: N to M
    /// resharding. Scalars (step counters) must agree between files.
    pub(crate) fn read_state(&self, range: Range<usize>) -> Result<RestoredState> {
        let mut master = vec![0.0f32; self.manifest.layout.len()];
        let mut pieces: Vec<(String, Vec<u8>, burn::tensor::DType)> = Vec::new();
        let mut scalars: Option<Vec<(String, Scalar)>> = None;
        for file in &self.manifest.files {
            let held = file.range();
            let decoded = self.read_file(file)?;
            // `decode` checked every tensor against the record's shard length.
            master[held.clone()].copy_from_slice(&decoded.master);
            let path = self.dir.join(&file.name);
            let corrupt = |reason: String| Error::CheckpointCorrupt {
                path: path.as_path().into(),
                reason: reason.into(),
            };
            match &scalars {
                None => {
                    scalars = Some(decoded.scalars);
                    pieces = decoded
                        .tensors
                        .iter()
                        .map(|(name, data)| (name.clone(), Vec::new(), data.dtype()))
                        .collect();
                }
                Some(seen) if *seen != decoded.scalars => {
                    return Err(corrupt(
                        "optimizer scalars differ from the other rank files'".into(),
                    ));
                }
                Some(_) => {}
            }
            let names: Vec<&str> = decoded.tensors.iter().map(|(n, _)| n.as_str()).collect();
            let expected: Vec<&str> = pieces.iter().map(|(n, ..)| n.as_str()).collect();
            if names != expected {
                return Err(corrupt(format!(
                    "optimizer tensors {names:?} differ from {expected:?}"
                )));
            }
            let overlap = range.start.max(held.start)..range.end.min(held.end);
            if overlap.is_empty() {
                continue;
            }
            for ((_, bytes, dtype), (_, data)) in pieces.iter_mut().zip(&decoded.tensors) {
                let size = dtype.size();
                let local = (overlap.start - held.start) * size..(overlap.end - held.start) * size;
                bytes.extend_from_slice(&data.as_bytes()[local]);
            }
        }
        let tensors = pieces
            .into_iter()
            .map(|(name, bytes, dtype)| {
                let data = TensorData::from_bytes_vec(bytes, [range.len()], dtype);
                (name, data)
            })
            .collect();
        Ok(RestoredState {
            master,
            optimizer: (tensors, scalars.unwrap_or_default()),
        })
    }

    /// Reads and decodes one rank file of the manifest, checking its hash again (it may have
    /// changed since [`Checkpoint::open`]).
    fn read_file(&self, file: &super::FileRecord) -> Result<rank_file::RankFile> {
        let path = self.dir.join(&file.name);
        let corrupt = |reason: String| Error::CheckpointCorrupt {
            path: path.as_path().into(),
            reason: reason.into(),
        };
        let bytes = files::read_verified(&path, file.bytes, &file.sha256).map_err(corrupt)?;
        rank_file::decode(bytes, file.range().len()).map_err(corrupt)
    }
}

/// The steps of the `step-…` directories under `root` (none if `root` does not exist).
pub(super) fn list_steps(root: &Path) -> Result<Vec<u64>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::CheckpointIo {
                path: root.into(),
                source,
            });
        }
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_step_dir))
        .collect())
}
