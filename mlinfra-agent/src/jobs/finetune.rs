//! Fine-tuning jobs through mlinfra-train's post-training layer: supervised fine-tuning
//! ([`Sft`]) and direct preference optimisation ([`Dpo`]) of a GGUF chat model through a
//! LoRA, DoRA or QLoRA adapter, the way TRL's `SFTTrainer` and `DPOTrainer` train a PEFT
//! model. Only the adapter trains, so only it is checkpointed (a few MB a checkpoint, not the
//! model); a resumed job reloads the base from the GGUF. The finished adapter is written in
//! PEFT's format to the job's `adapter/` directory, which `adapter_load {job}` serves.
//!
//! Data (under the data root, as every tool reads it):
//! - SFT: a `messages` column of chat conversations (a list of `{role, content}`), as
//!   `dataset_convert` makes from JSON lines; the loss on the assistant's tokens only, rows
//!   packed to `seq_len` tokens.
//! - DPO: TRL's standard preference format, string columns `prompt` (the user's turn),
//!   `chosen` and `rejected`; the reference model is the policy with its adapter switched off
//!   (TRL's default for a PEFT model), so no second copy of the weights exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use burn::tensor::Device;
use mlinfra_data::Dataset;
use mlinfra_data::chat::{ASSISTANT_MASKS, ChatTemplate, INPUT_IDS, Message};
use mlinfra_data::tensor::GgufFile;
use mlinfra_data::tokenizer::Tokenizer;
use mlinfra_loader::{Loader, LoaderBuilder, Pack, Shuffle, Tensors};
use mlinfra_train::models::Llama;
use mlinfra_train::optim::LrSchedule;
use mlinfra_train::peft::{LoraConfig, TargetModules};
use mlinfra_train::post_training::{DEFAULT_BETA, Dpo, Preference, Sft, preference_batch};
use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::root::DataRoot;
use crate::{Error, Result};

/// The adapter's name inside the model (PEFT's default).
const ADAPTER: &str = "default";
/// Where a finished job's adapter goes, inside the job's directory.
pub const ADAPTER_DIR: &str = "adapter";
/// The most preference pairs a DPO job reads (they are tokenized in memory first).
pub const MAX_PAIRS: usize = 100_000;
/// The largest LoRA rank a job may ask for.
pub const MAX_RANK: usize = 256;

/// The adapter a fine-tune trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// `lora`, `dora` (weight-decomposed), or `qlora` (the base kept in its quantized GGUF
    /// blocks).
    #[serde(default)]
    pub method: Method,
    /// The rank `r`.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// The scale `alpha` (updates are scaled by `alpha / r`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The layers to adapt, by name (`q_proj`, `v_proj`, ...).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

impl Default for AdapterSpec {
    fn default() -> Self {
        Self {
            method: Method::default(),
            rank: default_rank(),
            alpha: default_alpha(),
            targets: default_targets(),
        }
    }
}

/// How the adapter is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Low-rank adaptation over f32 base weights.
    #[default]
    Lora,
    /// Weight-decomposed LoRA.
    Dora,
    /// LoRA over the base's quantized blocks.
    Qlora,
}

fn default_rank() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

/// Supervised fine-tuning of a chat model through an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// The base model: a GGUF file under the data root.
    pub model: String,
    /// The conversations: a Parquet dataset under the data root.
    pub train: String,
    /// The column of conversations (lists of `{role, content}`).
    #[serde(default = "default_messages")]
    pub messages: String,
    /// The adapter to train.
    #[serde(default)]
    pub adapter: AdapterSpec,
    /// Optimizer steps.
    #[serde(default = "default_steps")]
    pub steps: u64,
    /// Conversations per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Tokens per packed row.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// AdamW's peak learning rate (warm-up, then cosine decay).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Seeds the adapter's weights and the shuffle.
    #[serde(default)]
    pub seed: u64,
    /// A checkpoint every this many steps (and one when the job is stopped).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

/// Direct preference optimisation of a chat model through an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    /// The base model: a GGUF file under the data root.
    pub model: String,
    /// The pairs: a Parquet dataset under the data root with string columns `prompt`,
    /// `chosen` and `rejected`.
    pub train: String,
    /// The adapter to train (ignored with `from_job`, whose adapter continues).
    #[serde(default)]
    pub adapter: AdapterSpec,
    /// Start from the adapter a finished fine-tune job wrote (SFT, then DPO).
    #[serde(default)]
    pub from_job: Option<String>,
    /// DPO's `beta`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Optimizer steps.
    #[serde(default = "default_steps")]
    pub steps: u64,
    /// Pairs per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// AdamW's peak learning rate (warm-up, then cosine decay).
    #[serde(default = "default_dpo_lr")]
    pub lr: f64,
    /// Seeds the adapter's weights and the shuffle.
    #[serde(default)]
    pub seed: u64,
    /// A checkpoint every this many steps (and one when the job is stopped).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

fn default_messages() -> String {
    "messages".into()
}
fn default_steps() -> u64 {
    40
}
fn default_batch() -> usize {
    8
}
fn default_seq_len() -> usize {
    256
}
fn default_lr() -> f64 {
    1e-3
}
fn default_dpo_lr() -> f64 {
    2e-4
}
fn default_beta() -> f64 {
    DEFAULT_BETA
}
fn default_checkpoint_every() -> u64 {
    20
}

/// The parts of a fine-tune both tasks check the same way.
struct Common<'a> {
    model: &'a str,
    adapter: &'a AdapterSpec,
    steps: u64,
    batch: usize,
    lr: f64,
    checkpoint_every: u64,
}

impl SftConfig {
    fn common(&self) -> Common<'_> {
        Common {
            model: &self.model,
            adapter: &self.adapter,
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            checkpoint_every: self.checkpoint_every,
        }
    }

    /// Checks the configuration, the model and the data; the steps the run will take.
    pub(crate) fn plan(&self, root: &DataRoot) -> Result<u64> {
        self.common().check(root)?;
        if !(16..=8192).contains(&self.seq_len) {
            return Err(invalid(format!(
                "seq_len must be 16 to 8192, got {}",
                self.seq_len
            )));
        }
        let train = root.open_dataset(&self.train)?;
        match column_type(&train, &self.messages)? {
            DataType::List(item) | DataType::LargeList(item)
                if matches!(item.data_type(), DataType::Struct(_)) => {}
            other => {
                return Err(invalid(format!(
                    "`{}` must be a list of {{role, content}} messages, not {other}",
                    self.messages
                )));
            }
        }
        if train.num_rows() == 0 {
            return Err(invalid(format!("{} has no rows", self.train)));
        }
        Ok(self.steps)
    }
}

impl DpoConfig {
    fn common(&self) -> Common<'_> {
        Common {
            model: &self.model,
            adapter: &self.adapter,
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            checkpoint_every: self.checkpoint_every,
        }
    }

    /// Checks the configuration, the model and the data; the steps the run will take.
    pub(crate) fn plan(&self, root: &DataRoot, jobs_dir: &Path) -> Result<u64> {
        self.common().check(root)?;
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(invalid(format!(
                "beta must be a positive number, got {}",
                self.beta
            )));
        }
        if let Some(job) = &self.from_job {
            finished_adapter(jobs_dir, job)?;
        }
        let train = root.open_dataset(&self.train)?;
        for name in ["prompt", "chosen", "rejected"] {
            let kind = column_type(&train, name)?;
            if !matches!(
                kind,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Err(invalid(format!("`{name}` must be strings, not {kind}")));
            }
        }
        let rows = train.num_rows();
        if rows == 0 || rows > MAX_PAIRS as u64 {
            return Err(invalid(format!(
                "{} has {rows} pairs: 1 to {MAX_PAIRS}",
                self.train
            )));
        }
        Ok(self.steps)
    }
}

impl Common<'_> {
    fn check(&self, root: &DataRoot) -> Result<()> {
        let spec = self.adapter;
        if !(1..=MAX_RANK).contains(&spec.rank) {
            return Err(invalid(format!(
                "rank must be 1 to {MAX_RANK}, got {}",
                spec.rank
            )));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !(positive(spec.alpha) && positive(self.lr)) {
            return Err(invalid("alpha and lr must be positive numbers".into()));
        }
        if spec.targets.is_empty() {
            return Err(invalid("targets names no layer".into()));
        }
        if self.steps == 0 || self.batch == 0 || self.checkpoint_every == 0 {
            return Err(invalid(
                "steps, batch and checkpoint_every must be positive".into(),
            ));
        }
        if self.steps > super::train::MAX_STEPS || self.batch > 1024 {
            return Err(invalid(format!(
                "at most {} steps and 1024 rows a step",
                super::train::MAX_STEPS
            )));
        }
        // The header and metadata only: a file that is not a GGUF model fails here.
        let model = root.resolve(self.model)?;
        let file = GgufFile::open(&model)?;
        mlinfra_train::models::LlamaConfig::from_gguf(&file)?;
        Ok(())
    }
}

/// The dataset's column `name`'s type, or an error listing the columns.
fn column_type(dataset: &Dataset, name: &str) -> Result<DataType> {
    let schema = dataset.schema();
    schema
        .field_with_name(name)
        .map(|field| field.data_type().clone())
        .map_err(|_| {
            invalid(format!(
                "no column `{name}`; the columns are {:?}",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            ))
        })
}

fn invalid(reason: String) -> Error {
    Error::InvalidArgument {
        tool: "train_start",
        reason: reason.into(),
    }
}

/// The adapter directory finished job `job` (under `jobs_dir`) wrote.
pub(crate) fn finished_adapter(jobs_dir: &Path, job: &str) -> Result<PathBuf> {
    let refuse = |reason: &str| Error::Job {
        job: job.into(),
        reason: reason.into(),
    };
    if job.is_empty() || !job.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(refuse("no such job"));
    }
    let dir = jobs_dir.join(job).join(ADAPTER_DIR);
    if !dir.join("adapter_config.json").is_file() {
        return Err(refuse(
            "has no adapter (it is not a fine-tune, or has not finished)",
        ));
    }
    Ok(dir)
}

/// The model, tokenizer and chat template of the GGUF at `path`, with the adapter a job trains.
struct Loaded {
    model: Llama,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn load(path: &Path, spec: &AdapterSpec, from: Option<&Path>, seed: u64) -> Result<Loaded> {
    let file = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let template = ChatTemplate::from_gguf(&file)?;
    let device = Device::flex().autodiff();
    let base = match spec.method {
        Method::Qlora => Llama::from_gguf_quantized(&file, &device)?.0,
        Method::Lora | Method::Dora => Llama::from_gguf(&file, &device)?.0,
    };
    let model = match from {
        Some(dir) => base.load_adapter(dir, ADAPTER)?,
        None => {
            let lora = LoraConfig::new(spec.rank, spec.alpha)
                .with_target_modules(TargetModules::Names(spec.targets.clone()))
                .with_dora(spec.method == Method::Dora);
            base.with_adapter(ADAPTER, &lora, seed)?
        }
    };
    Ok(Loaded {
        model,
        tokenizer,
        template,
    })
}

/// What the run needs besides its task: where it writes and how it stops.
pub(crate) struct RunPlace<'a> {
    pub root: &'a DataRoot,
    pub dir: &'a Path,
    pub steps: u64,
    pub resume: bool,
    pub stop: Arc<AtomicBool>,
}

/// Trains `config`; the adapter is written to `dir/adapter` when the run completes.
pub(crate) fn run_sft(config: &SftConfig, place: RunPlace<'_>) -> Result<super::TrainOutcome> {
    let loaded = load(
        &place.root.resolve(&config.model)?,
        &config.adapter,
        None,
        config.seed,
    )?;
    let records = place.root.open_dataset(&config.train)?;
    // Tokenized once per launch into the job's directory (the model's template decides the
    // tokens, so the model is part of what this file depends on).
    let tokens = place.dir.join("sft-tokens.parquet");
    loaded
        .template
        .tokenize_dataset(&loaded.tokenizer, &records, &config.messages, &tokens)?;
    let tokens = Arc::new(Dataset::open(utf8(&tokens)?)?);
    let pad = i64::from(loaded.tokenizer.eos_id().ok_or_else(|| {
        invalid("the model's tokenizer has no end-of-sequence token to pad with".into())
    })?);
    let loader = Loader::builder(tokens, config.batch)
        .collate(Tensors::new().columns([INPUT_IDS, ASSISTANT_MASKS]).pack(
            INPUT_IDS,
            Pack::new(config.seq_len, pad).loss_mask(ASSISTANT_MASKS),
        ))
        .shuffle(Shuffle::Exact)
        .seed(config.seed)
        .workers(1);
    fit(
        loaded.model,
        Sft::new(INPUT_IDS),
        loader,
        &config.common(),
        config.seed,
        &config.model,
        place,
    )
}

/// Trains `config` (from `from`, a finished job's adapter, when given); the adapter is
/// written to `dir/adapter` when the run completes.
pub(crate) fn run_dpo(
    config: &DpoConfig,
    from: Option<&Path>,
    place: RunPlace<'_>,
) -> Result<super::TrainOutcome> {
    let loaded = load(
        &place.root.resolve(&config.model)?,
        &config.adapter,
        from,
        config.seed,
    )?;
    let pairs = read_preferences(&place.root.open_dataset(&config.train)?)?;
    let dpo = Dpo::new(config.beta, "chosen", "rejected")?;
    let batch = preference_batch(
        &loaded.template,
        &loaded.tokenizer,
        &pairs,
        "chosen",
        "rejected",
    )?;
    let path = place.dir.join("dpo-pairs.parquet");
    write_parquet(&path, &batch)?;
    let loader: LoaderBuilder =
        Loader::builder(Arc::new(Dataset::open(utf8(&path)?)?), config.batch)
            .collate(dpo.collate())
            .shuffle(Shuffle::Exact)
            .seed(config.seed)
            .workers(1);
    fit(
        loaded.model,
        dpo,
        loader,
        &config.common(),
        config.seed,
        &config.model,
        place,
    )
}

/// Runs the trainer and writes the adapter when it completes.
fn fit<T: mlinfra_train::trainer::Task<Llama>>(
    model: Llama,
    task: T,
    loader: LoaderBuilder,
    common: &Common<'_>,
    seed: u64,
    model_name: &str,
    place: RunPlace<'_>,
) -> Result<super::TrainOutcome> {
    let adapter_dir = place.dir.join(ADAPTER_DIR);
    super::train::fit_one_rank(
        model,
        task,
        loader,
        super::train::Schedule {
            dir: place.dir,
            steps: place.steps,
            checkpoint_every: common.checkpoint_every,
            resume: place.resume,
            seed,
            lr: LrSchedule::warmup_cosine(common.lr, (common.steps / 10).max(1), common.steps, 0.1),
            max_grad_norm: Some(1.0),
            stop: place.stop,
            eval: None,
        },
        |model: &Llama| {
            model.save_adapter(ADAPTER, &adapter_dir, Some(model_name))?;
            Ok(Some(adapter_dir.clone()))
        },
    )
}

/// Each row's `prompt` (one user turn), `chosen` and `rejected`.
fn read_preferences(dataset: &Dataset) -> Result<Vec<Preference>> {
    let mut pairs = Vec::new();
    for batch in dataset
        .project(&["prompt", "chosen", "rejected"])?
        .scan()
        .build()
    {
        let batch = batch?;
        let strings = |i: usize| -> Result<Vec<Option<String>>> {
            let column = arrow::compute::cast(batch.column(i), &DataType::Utf8)
                .map_err(|e| invalid(format!("reading the preference columns: {e}")))?;
            let column = column.as_string::<i32>();
            Ok((0..column.len())
                .map(|row| column.is_valid(row).then(|| column.value(row).to_owned()))
                .collect())
        };
        let (prompts, chosen, rejected) = (strings(0)?, strings(1)?, strings(2)?);
        for ((prompt, chosen), rejected) in prompts.into_iter().zip(chosen).zip(rejected) {
            let (Some(prompt), Some(chosen), Some(rejected)) = (prompt, chosen, rejected) else {
                return Err(invalid(format!(
                    "row {}: a null prompt, chosen or rejected",
                    pairs.len()
                )));
            };
            pairs.push(Preference {
                prompt: vec![Message::new("user", prompt)],
                chosen,
                rejected,
            });
        }
    }
    Ok(pairs)
}

/// `batch` as a Parquet file at `path`, replaced atomically.
fn write_parquet(path: &Path, batch: &arrow::array::RecordBatch) -> Result<()> {
    mlinfra_data::files::write_atomic_with(
        path,
        |temp| {
            let file = mlinfra_data::files::create_new(temp)?;
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(file.try_clone()?, batch.schema(), None)
                    .map_err(std::io::Error::other)?;
            writer.write(batch).map_err(std::io::Error::other)?;
            writer.close().map_err(std::io::Error::other)?;
            // The same open file: the caller's fsync makes it durable.
            Ok((file, ()))
        },
        || {},
    )
    .map_err(|source| Error::JobStore {
        path: path.to_path_buf(),
        source,
    })
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| Error::Job {
        job: path.display().to_string().into(),
        reason: "the job directory's path is not UTF-8".into(),
    })
}
