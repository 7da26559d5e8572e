//! The loader tools: what order a training run would read a dataset in (the epoch plan, per
//! rank), and how fast the loader delivers it here. Over `mlinfra-loader`: the plan is the
//! one a trainer with the same seed, epoch and world size follows, sample for sample.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mlinfra_loader::{EpochPlan, Loader, Remainder, Shuffle, Source, Tensors};
use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::root::DataRoot;
use crate::{Error, Result};

/// The most ranks a plan preview shows.
pub const MAX_WORLD: u64 = 64;
/// The most sample ids one preview returns (all ranks together).
pub const MAX_PREVIEW_IDS: u64 = 10_000;
/// The longest a throughput probe runs, seconds.
pub const MAX_PROBE_SECONDS: f64 = 60.0;

/// How the epoch is shuffled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShuffleMode {
    /// Dataset order.
    None,
    /// A uniformly random permutation of every sample.
    Exact,
    /// Blocks of `block` consecutive samples, permuted, shuffled `window` blocks at a time
    /// (the order for data read from object stores).
    Block,
}

/// `loader_plan`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// A Parquet file or directory under the data root.
    pub path: String,
    /// Samples per batch, per rank.
    pub batch: u64,
    /// Data-parallel ranks (1 to 64).
    #[serde(default = "one")]
    pub world: u64,
    /// Seeds the shuffle.
    #[serde(default)]
    pub seed: u64,
    /// Which epoch (each has its own order).
    #[serde(default)]
    pub epoch: u64,
    /// `exact` (the default), `block` or `none`.
    #[serde(default = "exact")]
    pub shuffle: ShuffleMode,
    /// Samples per block (`block` shuffle).
    #[serde(default = "default_block")]
    pub block: u64,
    /// Blocks shuffled together (`block` shuffle).
    #[serde(default = "default_window")]
    pub window: u64,
    /// `true`: the last partial round wraps around (every sample read); `false` (the
    /// default): it is dropped.
    #[serde(default)]
    pub pad: bool,
    /// Batches shown per rank (1 to 16).
    #[serde(default = "default_preview")]
    pub batches: u64,
}

fn one() -> u64 {
    1
}
fn exact() -> ShuffleMode {
    ShuffleMode::Exact
}
fn default_block() -> u64 {
    1024
}
fn default_window() -> u64 {
    8
}
fn default_preview() -> u64 {
    4
}

/// One rank's share of the epoch.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RankPlan {
    /// The rank.
    pub rank: u64,
    /// Samples it reads this epoch.
    pub samples: u64,
    /// Full batches it steps through (a trailing partial batch is dropped by the trainer).
    pub batches: u64,
    /// Its first batches' sample ids (row numbers of the dataset), in order.
    pub first_batches: Vec<Vec<u64>>,
}

/// An epoch's plan.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PlanReport {
    /// The path as requested.
    pub path: String,
    /// Samples in the dataset.
    pub samples: u64,
    /// The dataset fingerprint the order is keyed on: another dataset, another order.
    pub fingerprint: String,
    /// Samples not read this epoch (`pad: false` and a world size that does not divide it).
    pub dropped: u64,
    /// Samples read twice this epoch (`pad: true`).
    pub repeated: u64,
    /// Each rank's share.
    pub ranks: Vec<RankPlan>,
}

fn invalid(tool: &'static str, reason: String) -> Error {
    Error::InvalidArgument {
        tool,
        reason: reason.into(),
    }
}

/// `loader_plan`: the epoch's order, computed (no data is read but the fingerprint's hash).
pub(crate) fn plan(root: &DataRoot, request: &PlanRequest) -> Result<PlanReport> {
    let tool = "loader_plan";
    if !(1..=MAX_WORLD).contains(&request.world) {
        return Err(invalid(
            tool,
            format!("world must be 1 to {MAX_WORLD}, got {}", request.world),
        ));
    }
    if !(1..=16).contains(&request.batches) || request.batch == 0 {
        return Err(invalid(
            tool,
            "batch must be positive and batches 1 to 16".into(),
        ));
    }
    let shown = request
        .world
        .saturating_mul(request.batches)
        .saturating_mul(request.batch);
    if shown > MAX_PREVIEW_IDS {
        return Err(invalid(
            tool,
            format!("world × batches × batch = {shown} ids: at most {MAX_PREVIEW_IDS} are shown"),
        ));
    }
    let dataset = root.open_dataset(&request.path)?;
    let samples = dataset.num_rows();
    let fingerprint = Source::fingerprint(&dataset)?;
    let shuffle = match request.shuffle {
        ShuffleMode::None => Shuffle::None,
        ShuffleMode::Exact => Shuffle::Exact,
        ShuffleMode::Block => Shuffle::Block {
            block: request.block,
            window: request.window,
        },
    };
    let remainder = if request.pad {
        Remainder::Pad
    } else {
        Remainder::Drop
    };
    let plan = EpochPlan::new(samples, &fingerprint, request.seed, request.epoch, shuffle)?;
    let mut ranks = Vec::new();
    for rank in 0..request.world {
        let slice = plan.slice(rank, request.world, remainder)?;
        let first: Vec<u64> = slice
            .iter_from(0)
            .take((request.batches * request.batch) as usize)
            .collect();
        ranks.push(RankPlan {
            rank,
            samples: slice.len(),
            batches: slice.len() / request.batch,
            first_batches: first
                .chunks(request.batch as usize)
                .map(<[u64]>::to_vec)
                .collect(),
        });
    }
    let read = ranks.iter().map(|r| r.samples).sum::<u64>();
    Ok(PlanReport {
        path: request.path.clone(),
        samples,
        fingerprint,
        dropped: samples.saturating_sub(read),
        repeated: read.saturating_sub(samples),
        ranks,
    })
}

/// `loader_probe`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// A Parquet file or directory under the data root.
    pub path: String,
    /// Samples per batch.
    pub batch: usize,
    /// Decode workers (1 to 16).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Stop after this many seconds (at most 60) or the end of the epoch, whichever is first.
    #[serde(default = "default_seconds")]
    pub seconds: f64,
    /// The columns to read as tensors; by default every fixed-width one (numbers, booleans,
    /// fixed-size lists of them), as a training step reads them.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

fn default_workers() -> usize {
    2
}
fn default_seconds() -> f64 {
    5.0
}

/// What a probe measured.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProbeReport {
    /// The path as requested.
    pub path: String,
    /// Batches delivered.
    pub batches: u64,
    /// Samples delivered.
    pub samples: u64,
    /// Samples per second, from the loader's start to the last batch.
    pub samples_per_s: f64,
    /// From building the loader to holding its first batch, milliseconds.
    pub first_batch_ms: f64,
    /// Time blocked waiting for batches after the first, milliseconds: what a training step
    /// as fast as this would wait.
    pub wait_ms: f64,
    /// Whether the whole epoch was read.
    pub epoch_done: bool,
    /// The columns read.
    pub columns: Vec<String>,
}

/// `loader_probe`: reads one epoch's batches as fast as the loader delivers them (shuffled,
/// like a training run) for up to `seconds`.
pub(crate) fn probe(root: &DataRoot, request: &ProbeRequest) -> Result<ProbeReport> {
    let tool = "loader_probe";
    if !(request.seconds > 0.0 && request.seconds <= MAX_PROBE_SECONDS) {
        return Err(invalid(
            tool,
            format!("seconds must be in (0, {MAX_PROBE_SECONDS}]"),
        ));
    }
    if request.batch == 0 || !(1..=16).contains(&request.workers) {
        return Err(invalid(
            tool,
            "batch must be positive and workers 1 to 16".into(),
        ));
    }
    let dataset = Arc::new(root.open_dataset(&request.path)?);
    let columns = match &request.columns {
        Some(columns) => columns.clone(),
        None => fixed_width_columns(&Source::schema(&*dataset)),
    };
    if columns.is_empty() {
        return Err(invalid(
            tool,
            "no fixed-width column to read; name the columns".into(),
        ));
    }
    let deadline = Duration::from_secs_f64(request.seconds);
    let started = Instant::now();
    let mut loader = Loader::builder(dataset, request.batch)
        .shuffle(Shuffle::Exact)
        .workers(request.workers)
        .collate(Tensors::new().columns(columns.clone()))
        .build()?;
    let total = loader.batches_in_epoch();
    let mut batches = 0;
    for batch in loader.by_ref() {
        batch?;
        batches += 1;
        if started.elapsed() >= deadline {
            break;
        }
    }
    let stats = loader.stats();
    let seconds = stats.elapsed.as_secs_f64();
    Ok(ProbeReport {
        path: request.path.clone(),
        batches: stats.batches,
        samples: stats.samples,
        samples_per_s: if seconds > 0.0 {
            stats.samples as f64 / seconds
        } else {
            0.0
        },
        first_batch_ms: stats.first_batch.map_or(0.0, |d| d.as_secs_f64() * 1e3),
        wait_ms: stats.wait.as_secs_f64() * 1e3,
        epoch_done: batches == total,
        columns,
    })
}

/// The columns a batch of tensors can hold as they are: numbers and booleans, and fixed-size
/// lists of them.
fn fixed_width_columns(schema: &arrow::datatypes::Schema) -> Vec<String> {
    use arrow::datatypes::DataType;
    let fixed = |data_type: &DataType| data_type.is_primitive() || *data_type == DataType::Boolean;
    schema
        .fields()
        .iter()
        .filter(|field| match field.data_type() {
            DataType::FixedSizeList(item, _) => fixed(item.data_type()),
            other => fixed(other),
        })
        .map(|field| field.name().clone())
        .collect()
}
