//! What a training job trains, and the run itself: mlinfra-train's [`Trainer`] on one rank,
//! with its checkpoints and metrics log in the job's directory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arrow::datatypes::DataType;
use burn::tensor::Device;
use mlinfra_data::Dataset;
use mlinfra_loader::{Loader, Remainder, Shuffle};
use mlinfra_train::checkpoint::{CheckpointConfig, SaveMode};
use mlinfra_train::collective::ThreadGroup;
use mlinfra_train::models::MlpConfig;
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::trainer::{CheckpointSchedule, Classification, EvalLoader, TrainerConfig};
use mlinfra_train::{Precision, Sharding, StepOptions, Trainer};
use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use super::finetune::{self, DpoConfig, RunPlace, SftConfig};
use crate::root::DataRoot;
use crate::{Error, Result};

/// The most weights a classifier job's model may have (about 1 GiB of training state).
pub const MAX_PARAMETERS: usize = 64 << 20;
/// The most optimizer steps one job may take.
pub const MAX_STEPS: u64 = 10_000_000;
/// The checkpoints a job keeps (older ones are deleted as new ones complete).
pub const KEEP_CHECKPOINTS: usize = 3;

/// What `train_start` trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum TrainConfig {
    /// A multilayer-perceptron classifier (cross-entropy, AdamW) on a Parquet dataset with a
    /// fixed-size list column of floats (the features) and an integer column (the class).
    Classifier(ClassifierConfig),
    /// Supervised fine-tuning of a GGUF chat model through a LoRA, DoRA or QLoRA adapter
    /// (see [`super::finetune`]).
    Sft(SftConfig),
    /// Direct preference optimisation of a GGUF chat model through an adapter, from scratch
    /// or from a finished fine-tune's adapter (see [`super::finetune`]).
    Dpo(DpoConfig),
}

/// A classifier's data, shape and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The training dataset: a Parquet file or directory under the data root.
    pub train: String,
    /// A held-out dataset to evaluate on (ten times a run and at its end); none by default.
    #[serde(default)]
    pub eval: Option<String>,
    /// The features column: a fixed-size list of floats.
    #[serde(default = "default_features")]
    pub features: String,
    /// The class column: integers in `0..classes`.
    #[serde(default = "default_label")]
    pub label: String,
    /// How many classes.
    pub classes: usize,
    /// Hidden layer widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Passes over the training data.
    #[serde(default = "default_epochs")]
    pub epochs: u64,
    /// Rows per optimizer step (the last partial batch of an epoch is dropped).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// AdamW's learning rate, constant.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Seeds the weights and the shuffle: a run is reproducible.
    #[serde(default)]
    pub seed: u64,
    /// A checkpoint every this many steps (and one when the job is stopped).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

fn default_features() -> String {
    "features".into()
}
fn default_label() -> String {
    "label".into()
}
fn default_hidden() -> Vec<usize> {
    vec![64]
}
fn default_epochs() -> u64 {
    10
}
fn default_batch() -> usize {
    64
}
fn default_lr() -> f64 {
    1e-3
}
fn default_checkpoint_every() -> u64 {
    50
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrainOutcome {
    /// Optimizer steps taken in all, across resumes.
    pub steps: u64,
    /// The step this launch resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// The last step's mean loss.
    pub last_loss: f64,
    /// The final evaluation's accuracy, with an eval dataset.
    pub eval_accuracy: Option<f64>,
    /// The final evaluation's mean loss, with an eval dataset.
    pub eval_loss: Option<f64>,
    /// Training samples per second of this launch.
    pub samples_per_s: f64,
    /// Whether it stopped early on request, after a final checkpoint.
    pub stopped: bool,
    /// A fine-tune's adapter directory (PEFT's format), once the run completed.
    #[serde(default)]
    pub adapter: Option<String>,
}

impl TrainConfig {
    /// Checks the configuration and its data before a job is created for it, and returns the
    /// steps the run will take: a mistake is an error to the caller now, not a failed job.
    /// `jobs_dir` holds the jobs a DPO run may start from.
    pub(crate) fn plan(&self, root: &DataRoot, jobs_dir: &Path) -> Result<u64> {
        match self {
            TrainConfig::Classifier(config) => config.plan(root),
            TrainConfig::Sft(config) => config.plan(root),
            TrainConfig::Dpo(config) => config.plan(root, jobs_dir),
        }
    }

    /// The datasets a run reads: training, and evaluation if any.
    pub(crate) fn datasets(&self) -> (&str, Option<&str>) {
        match self {
            TrainConfig::Classifier(config) => (&config.train, config.eval.as_deref()),
            TrainConfig::Sft(config) => (&config.train, None),
            TrainConfig::Dpo(config) => (&config.train, None),
        }
    }

    /// The base model a fine-tune starts from.
    pub(crate) fn model(&self) -> Option<&str> {
        match self {
            TrainConfig::Classifier(_) => None,
            TrainConfig::Sft(config) => Some(&config.model),
            TrainConfig::Dpo(config) => Some(&config.model),
        }
    }
}

impl ClassifierConfig {
    fn plan(&self, root: &DataRoot) -> Result<u64> {
        let config = self;
        let invalid = |reason: String| Error::InvalidArgument {
            tool: "train_start",
            reason: reason.into(),
        };
        if config.classes < 2 {
            return Err(invalid(format!(
                "classes must be at least 2, got {}",
                config.classes
            )));
        }
        if config.hidden.is_empty() || config.hidden.iter().any(|&w| w == 0 || w > 65_536) {
            return Err(invalid(format!(
                "hidden widths must be 1 to 65536, at least one layer: {:?}",
                config.hidden
            )));
        }
        if !(config.lr.is_finite() && config.lr > 0.0) {
            return Err(invalid(format!(
                "lr must be a positive number, got {}",
                config.lr
            )));
        }
        if config.batch == 0 || config.epochs == 0 || config.checkpoint_every == 0 {
            return Err(invalid(
                "batch, epochs and checkpoint_every must be positive".into(),
            ));
        }
        let train = open(root, &config.train)?;
        let input = features_of(&train, config)?;
        // Every layer's weights: input → hidden… → classes.
        let layers: Vec<usize> = std::iter::once(input)
            .chain(config.hidden.iter().copied())
            .chain(std::iter::once(config.classes))
            .collect();
        let parameters = layers
            .windows(2)
            .map(|pair| pair[0].saturating_mul(pair[1]))
            .fold(0usize, usize::saturating_add);
        // The job trains inside the server: a model past this would take its memory (weights,
        // gradients and AdamW's two moments: 16 bytes a weight).
        if parameters > MAX_PARAMETERS {
            return Err(invalid(format!(
                "layers {layers:?} hold {parameters} weights: at most {MAX_PARAMETERS}"
            )));
        }
        if let Some(eval) = &config.eval {
            features_of(&*open(root, eval)?, config)?;
        }
        let steps = (train.num_rows() / config.batch as u64).saturating_mul(config.epochs);
        if steps > MAX_STEPS {
            return Err(invalid(format!(
                "{steps} steps: at most {MAX_STEPS} in one job"
            )));
        }
        if steps == 0 {
            return Err(invalid(format!(
                "{} has {} rows: fewer than one batch of {}",
                config.train,
                train.num_rows(),
                config.batch
            )));
        }
        Ok(steps)
    }
}

impl TrainConfig {
    /// The run's inputs by content hash. Reads every byte of the datasets (their
    /// fingerprints), as the run itself will.
    /// `jobs_dir` holds the job a DPO run starts from, whose adapter is hashed.
    pub(crate) fn lineage(
        &self,
        root: &DataRoot,
        jobs_dir: &Path,
        tool: Option<String>,
    ) -> Result<super::RunLineage> {
        let fingerprint =
            |path: &str| -> Result<String> { Ok(open(root, path)?.fingerprint()?.to_owned()) };
        let (train, eval) = self.datasets();
        Ok(super::RunLineage {
            train_dataset: fingerprint(train)?,
            eval_dataset: eval.map(fingerprint).transpose()?,
            model: self
                .model()
                .map(|model| crate::lineage::content_hash(&root.resolve(model)?))
                .transpose()?,
            start_adapter: match self {
                TrainConfig::Dpo(DpoConfig {
                    from_job: Some(job),
                    ..
                }) => Some(crate::lineage::content_hash(&finetune::finished_adapter(
                    jobs_dir, job,
                )?)?),
                _ => None,
            },
            config: crate::lineage::definition_hash(self),
            tool,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }
}

fn open(root: &DataRoot, path: &str) -> Result<Arc<Dataset>> {
    Ok(Arc::new(root.open_dataset(path)?))
}

/// The width of the features column, after checking both columns' types.
fn features_of(dataset: &Dataset, config: &ClassifierConfig) -> Result<usize> {
    let schema = dataset.schema();
    let column = |name: &str| {
        schema
            .field_with_name(name)
            .map_err(|_| Error::InvalidArgument {
                tool: "train_start",
                reason: format!(
                    "no column `{name}`; the columns are {:?}",
                    schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                )
                .into(),
            })
    };
    let wrong = |what: String| Error::InvalidArgument {
        tool: "train_start",
        reason: what.into(),
    };
    let width = match column(&config.features)?.data_type() {
        DataType::FixedSizeList(item, width) if item.data_type().is_floating() => *width as usize,
        other => {
            return Err(wrong(format!(
                "`{}` must be a fixed-size list of floats, not {other}",
                config.features
            )));
        }
    };
    let label = column(&config.label)?.data_type();
    if !label.is_integer() {
        return Err(wrong(format!(
            "`{}` must be integers, not {label}",
            config.label
        )));
    }
    Ok(width)
}

/// Trains `config` for `steps` (its [`TrainConfig::plan`], made when the job was created) with
/// checkpoints in `dir/checkpoints` and the metrics log at `dir/metrics.jsonl`, resuming from
/// the newest valid checkpoint when `resume`. Returns when the run completes or `stop` is
/// raised (after a final checkpoint).
pub(crate) fn run(
    root: &DataRoot,
    dir: &Path,
    config: &TrainConfig,
    steps: u64,
    resume: bool,
    stop: Arc<AtomicBool>,
) -> Result<TrainOutcome> {
    let place = RunPlace {
        root,
        dir,
        steps,
        resume,
        stop,
    };
    match config {
        TrainConfig::Classifier(config) => run_classifier(config, place),
        TrainConfig::Sft(config) => finetune::run_sft(config, place),
        TrainConfig::Dpo(config) => {
            let jobs_dir = dir.parent().unwrap_or(dir);
            let from = config
                .from_job
                .as_deref()
                .map(|job| finetune::finished_adapter(jobs_dir, job))
                .transpose()?;
            finetune::run_dpo(config, from.as_deref(), place)
        }
    }
}

fn run_classifier(config: &ClassifierConfig, place: RunPlace<'_>) -> Result<TrainOutcome> {
    let train = open(place.root, &config.train)?;
    let eval = config
        .eval
        .as_deref()
        .map(|path| open(place.root, path))
        .transpose()?;
    let device = Device::flex().autodiff();
    let model = MlpConfig {
        input: features_of(&train, config)?,
        hidden: config.hidden.clone(),
        classes: config.classes,
        seed: config.seed,
    }
    .init(&device)?;
    let loader = Loader::builder(train, config.batch)
        .shuffle(Shuffle::Exact)
        .seed(config.seed)
        .remainder(Remainder::Drop)
        .workers(1);
    let steps = place.steps;
    let eval_loader = eval.map(|eval| -> EvalLoader {
        Box::new(move |rank, world| {
            Ok(Loader::builder(Arc::clone(&eval), 512)
                .rank(rank as u64, world as u64)
                .workers(1)
                .build()?)
        })
    });
    fit_one_rank(
        model,
        Classification::new(config.features.clone(), config.label.clone()),
        loader,
        Schedule {
            dir: place.dir,
            steps,
            checkpoint_every: config.checkpoint_every,
            resume: place.resume,
            seed: config.seed,
            lr: LrSchedule::constant(config.lr),
            max_grad_norm: None,
            stop: place.stop,
            eval: eval_loader,
        },
        |_| Ok(None),
    )
}

/// How a job's trainer runs: its directory, length, checkpoints and optimizer schedule.
pub(super) struct Schedule<'a> {
    pub dir: &'a Path,
    pub steps: u64,
    pub checkpoint_every: u64,
    pub resume: bool,
    pub seed: u64,
    pub lr: LrSchedule,
    pub max_grad_norm: Option<f64>,
    pub stop: Arc<AtomicBool>,
    /// Evaluated ten times a run and at its end, when given.
    pub eval: Option<EvalLoader>,
}

/// Trains `model` on one rank with AdamW, checkpoints in `dir/checkpoints` and the metrics log
/// at `dir/metrics.jsonl`; once the run completes (not when stopped), `finish` saves what the
/// job delivers and names it (a fine-tune's adapter directory).
pub(super) fn fit_one_rank<M, T>(
    model: M,
    task: T,
    loader: mlinfra_loader::LoaderBuilder,
    schedule: Schedule<'_>,
    finish: impl FnOnce(&M) -> mlinfra_train::Result<Option<std::path::PathBuf>>,
) -> Result<TrainOutcome>
where
    M: burn::module::Module,
    T: mlinfra_train::trainer::Task<M>,
{
    let Schedule {
        dir,
        steps,
        checkpoint_every,
        resume,
        seed,
        lr,
        max_grad_norm,
        stop,
        eval,
    } = schedule;
    let trainer_config = TrainerConfig {
        steps,
        micro_batches: 1,
        eval_every: eval.as_ref().map(|_| (steps / 10).max(1)),
        checkpoint: Some(CheckpointSchedule {
            config: CheckpointConfig {
                dir: dir.join("checkpoints"),
                keep_last: KEEP_CHECKPOINTS,
                mode: SaveMode::Sync,
            },
            every: checkpoint_every,
            resume,
        }),
        metrics: Some(dir.join("metrics.jsonl")),
        progress: false,
        seed,
    };
    let options = StepOptions {
        schedule: lr,
        max_grad_norm,
        sharding: Sharding::Replicated,
        precision: Precision::F32,
        loss_scaling: None,
    };
    let collective = ThreadGroup::new(1)
        .into_iter()
        .next()
        .ok_or_else(|| Error::Job {
            job: dir.display().to_string().into(),
            reason: "no rank to train on".into(),
        })?;
    let mut trainer = Trainer::new(
        collective,
        model,
        task,
        loader,
        &OptimizerConfig::adamw(),
        options,
        trainer_config,
    )?
    .with_stop_flag(stop);
    if let Some(eval) = eval {
        trainer = trainer.with_eval(eval);
    }
    let summary = trainer.fit()?;
    let adapter = if summary.stopped {
        None
    } else {
        finish(trainer.model())?
    };
    Ok(TrainOutcome {
        steps: summary.steps,
        resumed_from: summary.resumed_from,
        last_loss: summary.last_loss,
        eval_accuracy: summary.eval.as_ref().map(|e| e.accuracy()),
        eval_loss: summary.eval.as_ref().map(|e| e.loss()),
        samples_per_s: summary.samples_per_s,
        stopped: summary.stopped,
        adapter: adapter.map(|dir| dir.display().to_string()),
    })
}
