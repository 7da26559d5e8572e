//! The training tools' arguments and results; the work is [`crate::jobs::JobStore`]'s. The
//! types are the tools' contract: their JSON schemas are derived from them.

use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::jobs::{JobStatus, TrainConfig};
use crate::lineage::Entry;

/// `train_start`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainStartRequest {
    /// What to train: `task` picks the kind (`classifier`, `sft`, `dpo`).
    pub config: TrainConfig,
}

/// A job, by id.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The id `train_start` returned.
    pub job: String,
}

/// No arguments.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// `train_list`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobStatus>,
}

/// `train_wait`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    /// The id `train_start` returned.
    pub job: String,
    /// How long to wait at most, seconds (1 to 3600; 60 by default).
    #[serde(default = "default_wait")]
    pub timeout_s: u64,
}

fn default_wait() -> u64 {
    60
}

/// `checkpoint_inspect`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectRequest {
    /// The id `train_start` returned.
    pub job: String,
    /// One checkpoint's step; every checkpoint when absent.
    #[serde(default)]
    pub step: Option<u64>,
}

/// `checkpoint_inspect`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CheckpointList {
    /// Newest first.
    pub checkpoints: Vec<crate::jobs::inspect::CheckpointReport>,
}

/// `job_delete`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Deleted {
    /// The job deleted.
    pub job: String,
    /// The checkpoints deleted with it.
    pub checkpoints: usize,
}

/// One registry entry, flagged when changed since approval.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LineageEntry {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Approved once and changed since: a destructive call asks again.
    pub changed_since_approval: bool,
}

/// `lineage_list`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LineageList {
    /// By kind, then name.
    pub entries: Vec<LineageEntry>,
}
