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
    /// Reads and checks a manifest (format, and rank files that tile the parameter vector).
    pub(crate) fn read(path: &Path) -> Result<Manifest> {
        let corrupt = |reason: String| Error::CheckpointCorrupt {
            path: path.into(),
            reason: reason.into(),
        };
        let text = std::fs::read(path).map_err(|e| corrupt(format!("cannot read: {e}")))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("not a manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(corrupt(format!(
                "format {} (this build reads {FORMAT})",
                manifest.format
            )));
        }
        if manifest.world == 0 || manifest.rng.len() != manifest.world {
            return Err(corrupt(format!(
                "world {} with {} RNG states",
                manifest.world,
                manifest.rng.len()
            )));
        }
        // The files, in order of their shards, must cover the whole vector without gaps.
        let mut next = 0;
        for file in &manifest.files {
            if file.shard[0] != next || file.shard[1] < file.shard[0] || file.name.contains('/') {
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
