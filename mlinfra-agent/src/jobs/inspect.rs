//! `checkpoint_inspect`: what a job's checkpoints hold, each verified against its manifest
//! (every file's size and SHA-256, as a resume would check it).

use std::path::Path;

use mlinfra_train::checkpoint::{Checkpoint, complete_steps, step_dir};
use rmcp::schemars::{self, JsonSchema};
use serde::Serialize;

use crate::{Error, Result};

/// Tensors listed per checkpoint at most (a model's layout can hold thousands).
pub const MAX_TENSORS_LISTED: usize = 256;

/// One checkpoint.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CheckpointReport {
    /// The optimizer steps taken when it was saved.
    pub step: u64,
    /// Whether every file has its manifest's size and SHA-256 (a resume can use it).
    pub verified: bool,
    /// Why it does not verify.
    pub error: Option<String>,
    /// The ranks that saved it.
    pub world: Option<usize>,
    /// The optimizer its state belongs to.
    pub optimizer: Option<serde_json::Value>,
    /// Trained parameters (elements) it holds: an adapter's alone for a fine-tune.
    pub parameters: Option<usize>,
    /// The tensors, by module path, with their shapes (the first [`MAX_TENSORS_LISTED`]).
    pub tensors: Vec<TensorEntry>,
    /// Its files' total size, bytes.
    pub bytes: u64,
    /// Its files: name, size and SHA-256.
    pub files: Vec<FileEntry>,
}

/// A tensor of a checkpoint.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TensorEntry {
    /// Its module path (`layers.0.self_attn.q_proj.lora_a.default`).
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// A file of a checkpoint.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FileEntry {
    /// Its name in the checkpoint's directory.
    pub name: String,
    /// Its size, bytes.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// The checkpoints under `dir` (a job's `checkpoints/`), newest first; only `step` when given.
pub(crate) fn inspect(dir: &Path, job: &str, step: Option<u64>) -> Result<Vec<CheckpointReport>> {
    let steps = complete_steps(dir).unwrap_or_default();
    let steps: Vec<u64> = match step {
        Some(step) if steps.contains(&step) => vec![step],
        Some(step) => {
            return Err(Error::Job {
                job: job.into(),
                reason: format!("has no checkpoint at step {step} (it has {steps:?})").into(),
            });
        }
        None => steps,
    };
    Ok(steps
        .into_iter()
        .map(|step| match Checkpoint::open(step_dir(dir, step)) {
            Ok(checkpoint) => {
                let manifest = checkpoint.manifest();
                let files: Vec<FileEntry> = manifest
                    .files
                    .iter()
                    .map(|file| FileEntry {
                        name: file.name.clone(),
                        bytes: file.bytes,
                        sha256: file.sha256.clone(),
                    })
                    .collect();
                CheckpointReport {
                    step,
                    verified: true,
                    error: None,
                    world: Some(manifest.world),
                    optimizer: serde_json::to_value(&manifest.optimizer).ok(),
                    parameters: Some(manifest.layout.len()),
                    tensors: manifest
                        .layout
                        .slots()
                        .iter()
                        .take(MAX_TENSORS_LISTED)
                        .map(|slot| TensorEntry {
                            path: slot.path.clone(),
                            shape: slot.shape.clone(),
                        })
                        .collect(),
                    bytes: files.iter().map(|file| file.bytes).sum(),
                    files,
                }
            }
            Err(error) => CheckpointReport {
                step,
                verified: false,
                error: Some(error.to_string()),
                world: None,
                optimizer: None,
                parameters: None,
                tensors: Vec::new(),
                bytes: 0,
                files: Vec::new(),
            },
        })
        .collect())
}
