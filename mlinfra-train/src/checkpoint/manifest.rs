//! [`Manifest`]: the index of one checkpoint, written last.

use std::path::Path;

use mlinfra_loader::LoaderState;
use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;
use crate::precision::LossScaleState;
use crate::{Error, ParamLayout, Result, Sharding};

/// The manifest format this build writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// The file name of a checkpoint's manifest, inside its `step-…` directory.
pub const MANIFEST: &str = "manifest.json";

/// The largest manifest read: 256 MiB (the parameter layout of a model with millions of
/// tensors). A larger file is corrupt, whatever it holds.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// What one checkpoint holds, and the size and SHA-256 of each of its files.
///
/// A checkpoint directory counts only once its manifest exists, and the manifest is written
/// (atomically) after every rank file is durable; so a crash at any point leaves either a
/// complete checkpoint or a directory without a manifest, which loading skips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version (1 in this build).
    pub format: u32,
    /// Optimizer steps taken when it was saved: training resumes with step `step`.
    pub step: u64,
    /// Ranks that saved it.
    pub world: usize,
    /// How the optimizer state was spread over those ranks.
    pub sharding: Sharding,
    /// The optimizer the state belongs to.
    pub optimizer: OptimizerConfig,
    /// The model's parameters: paths, shapes, offsets in the flat vector.
    pub layout: ParamLayout,
    /// Where the data loader was (the same on every rank), if a loader was saved.
    pub loader: Option<LoaderState>,
    /// Each rank's random generator state, in rank order.
    pub rng: Vec<u64>,
    /// The dynamic loss scale (mixed precision with loss scaling; the same on every rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScaleState>,
    /// The rank files, in rank order.
    pub files: Vec<FileRecord>,
}

/// One rank file of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// The rank that wrote it.
    pub rank: usize,
    /// The elements of the flat parameter vector it holds: `[start, end)`.
    pub shard: [usize; 2],
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl FileRecord {
    /// The elements it holds.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.shard[0]..self.shard[1]
    }
}

impl Manifest {
    /// Reads and checks the manifest of the checkpoint of step `step`: its format, its step
    /// (which must be the directory's: anything else is corrupt, and resuming or retention
    /// must never act on it), and rank files that are distinct ranks of its world, named as
    /// this crate names them, tiling the parameter vector. Opened like every checkpoint file:
    /// no symlinks, no FIFOs, at most 256 MiB read.
    pub(crate) fn read(path: &Path, step: u64) -> Result<Manifest> {
        let corrupt = |reason: String| Error::CheckpointCorrupt {
            path: path.into(),
            reason: reason.into(),
        };
        let mut file = super::files::open_checkpoint_file(path).map_err(&corrupt)?;
        let text = mlinfra_data::files::read_bounded(&mut file, MAX_MANIFEST_BYTES)
            .map_err(|e| corrupt(format!("cannot read: {e}")))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("not a manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(corrupt(format!(
                "format {} (this build reads {FORMAT})",
                manifest.format
            )));
        }
        if manifest.step != step {
            return Err(corrupt(format!(
                "records step {} in the directory of step {step}",
                manifest.step
            )));
        }
        if manifest.world == 0 || manifest.rng.len() != manifest.world {
            return Err(corrupt(format!(
                "world {} with {} RNG states",
                manifest.world,
                manifest.rng.len()
            )));
        }
        // The files, in order of their shards, must cover the whole vector without gaps, each
        // written by another rank of the world under that rank's name.
        let mut next = 0;
        let mut ranks_seen = vec![false; manifest.world];
        for file in &manifest.files {
            let rank_ok = ranks_seen
                .get_mut(file.rank)
                .is_some_and(|seen| !std::mem::replace(seen, true));
            if !rank_ok || file.name != super::rank_file_name(file.rank) {
                return Err(corrupt(format!(
                    "file `{}` of rank {} in a world of {}: a rank outside the world, a \
                     duplicate, or a name this crate does not write",
                    file.name, file.rank, manifest.world
                )));
            }
            if file.shard[0] != next || file.shard[1] < file.shard[0] {
                return Err(corrupt(format!(
                    "file `{}` holds [{}, {}), expected a shard starting at {next}",
                    file.name, file.shard[0], file.shard[1]
                )));
            }
            next = file.shard[1];
        }
        if next != manifest.layout.len() {
            return Err(corrupt(format!(
                "rank files cover {next} of {} parameters",
                manifest.layout.len()
            )));
        }
        Ok(manifest)
    }
}
