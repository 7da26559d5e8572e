//! `finetune`: LoRA, DoRA or QLoRA supervised fine-tuning of a chat model, then DPO, on a task
//! the example builds offline (two-digit additions answered with the number alone), on the CPU.
//!
//! ```text
//! $ scripts/fetch-model
//! $ cargo run --release -p mlinfra-examples --example finetune -- \
//!       --model ~/.cache/mlinfra/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!       --method lora --rank 16 --alpha 32 --targets q_proj,v_proj --out /tmp/ft
//! exact match before SFT: 2/50
//! ... progress bars ...
//! exact match after SFT: 31/50
//! held-out reward accuracy before DPO: 0.66, after: 0.90
//! {"trainable_params":...,"total_params":...,"loss_first":...,"loss_last":...,...}
//! ```
//!
//! Flags (the first set is a contract other tools rely on):
//! `--model PATH.gguf --method lora|dora|qlora --rank R --alpha A --targets q_proj,v_proj
//! [--steps N] [--seq-len L] --out DIR [--dpo-steps M] [--seed S]`, and
//! `[--lr LR] [--batch B] [--train-questions N] [--eval-questions N] [--dump-batches FILE]`
//! (the conversations of each SFT step as JSON lines, for `benches/compare/finetune.sh`,
//! which trains PEFT on the same steps).
//!
//! What it does:
//!
//! 1. Loads the GGUF (for `qlora` the base stays in its quantized blocks), its tokenizer and
//!    its chat template, and adds an adapter (`r`, `alpha`, `targets`; DoRA for `dora`).
//! 2. Builds the task: `--train-questions` additions for training and `--eval-questions`
//!    others held out, as chat records (JSON lines, converted to Parquet by mlinfra-data,
//!    tokenized with the model's chat template, the loss on the answer only).
//! 3. Measures exact-match accuracy on the held-out questions (greedy decoding, the reply must
//!    be the number and nothing else), trains `--steps` SFT steps on packed rows of
//!    `--seq-len` tokens, and measures again.
//! 4. With `--dpo-steps` > 0: DPO on (right, wrong) answer pairs, the reference being the
//!    model with its adapter disabled; the held-out reward accuracy (pairs whose right answer
//!    earns the higher reward) before and after.
//! 5. Writes `DIR/adapter_model.safetensors` and `DIR/adapter_config.json` (PEFT's format:
//!    `PeftModel.from_pretrained` loads it), `DIR/metrics.jsonl` (the trainer's records, DPO's
//!    with `"phase":"dpo"`), `DIR/loss.png`, and prints one JSON line last: `trainable_params`,
//!    `total_params`, `loss_first`, `loss_last`, `accuracy_before`, `accuracy_after`,
//!    `tokens_per_s`, `peak_rss_bytes`, `adapter_dir`, and when DPO ran `dpo_loss_first`,
//!    `reward_accuracy_before`, `reward_accuracy_after`.
//!
//! Errors print the typed error and exit with status 2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::{ArrayRef, Float32Array, RecordBatch};
use burn::module::Module;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mlinfra_data::Dataset;
use mlinfra_data::chat::{ASSISTANT_MASKS, ChatTemplate, INPUT_IDS};
use mlinfra_data::convert::Conversion;
use mlinfra_data::tensor::GgufFile;
use mlinfra_data::tokenizer::Tokenizer;
use mlinfra_examples::arithmetic::{self, Sum};
use mlinfra_loader::{Loader, LoaderBuilder, Pack, Shuffle, Tensors};
use mlinfra_train::collective::Single;
use mlinfra_train::models::Llama;
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::peft::{LoraConfig, TargetModules};
use mlinfra_train::post_training::{DEFAULT_BETA, Dpo, DpoSums, Sft, preference_batch};
use mlinfra_train::trainer::{Summary, TrainerConfig, read_metrics};
use mlinfra_train::{ParamLayout, Precision, Sharding, SplitMix64, StepOptions, Trainer};
use serde_json::json;

/// The adapter's name in the model (PEFT's default).
const ADAPTER: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Lora,
    Dora,
    Qlora,
}

#[derive(Debug)]
struct Args {
    model: PathBuf,
    method: Method,
    rank: usize,
    alpha: f64,
    targets: Vec<String>,
    steps: u64,
    seq_len: usize,
    out: PathBuf,
    dpo_steps: u64,
    seed: u64,
    lr: f64,
    batch: usize,
    train_questions: usize,
    eval_questions: usize,
    dump_batches: Option<PathBuf>,
}

const USAGE: &str = "flags: --model PATH.gguf --method lora|dora|qlora --rank R --alpha A \
    --targets q_proj,v_proj [--steps N] [--seq-len L] --out DIR [--dpo-steps M] [--seed S] \
    [--lr LR] [--batch B] [--train-questions N] [--eval-questions N] [--dump-batches FILE]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: mlinfra_examples::default_model(),
        method: Method::Lora,
        rank: 16,
        alpha: 32.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
        steps: 40,
        seq_len: 128,
        out: PathBuf::new(),
        dpo_steps: 20,
        seed: 0,
        lr: 1e-3,
        batch: 16,
        train_questions: 2000,
        eval_questions: 50,
        dump_batches: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--method" => {
                args.method = match value()?.as_str() {
                    "lora" => Method::Lora,
                    "dora" => Method::Dora,
                    "qlora" => Method::Qlora,
                    other => bail!("--method {other}: lora, dora or qlora"),
                }
            }
            "--rank" => args.rank = value()?.parse().context("--rank")?,
            "--alpha" => args.alpha = value()?.parse().context("--alpha")?,
            "--targets" => {
                args.targets = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--steps" => args.steps = value()?.parse().context("--steps")?,
            "--seq-len" => args.seq_len = value()?.parse().context("--seq-len")?,
            "--out" => args.out = value()?.into(),
            "--dpo-steps" => args.dpo_steps = value()?.parse().context("--dpo-steps")?,
            "--seed" => args.seed = value()?.parse().context("--seed")?,
            "--lr" => args.lr = value()?.parse().context("--lr")?,
            "--batch" => args.batch = value()?.parse().context("--batch")?,
            "--train-questions" => {
                args.train_questions = value()?.parse().context("--train-questions")?
            }
            "--eval-questions" => {
                args.eval_questions = value()?.parse().context("--eval-questions")?
            }
            "--dump-batches" => args.dump_batches = Some(value()?.into()),
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    if args.out.as_os_str().is_empty() {
        bail!("--out DIR is required; {USAGE}");
    }
    if args.steps == 0 || args.seq_len < 16 || args.batch == 0 || args.eval_questions == 0 {
        bail!("--steps, --batch and --eval-questions must be at least 1 and --seq-len at least 16");
    }
    if args.targets.is_empty() {
        bail!("--targets names no layer; {USAGE}");
    }
    Ok(args)
}

fn main() -> ExitCode {
    mlinfra_examples::keep_freed_memory();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("finetune: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let data_dir = args.out.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let file = GgufFile::open(&args.model).with_context(|| {
        format!(
            "opening {} (scripts/fetch-model downloads SmolLM2)",
            args.model.display()
        )
    })?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let template = ChatTemplate::from_gguf(&file)?;
    let device = Device::flex().autodiff();
    let base = match args.method {
        Method::Qlora => Llama::from_gguf_quantized(&file, &device)?.0,
        Method::Lora | Method::Dora => Llama::from_gguf(&file, &device)?.0,
    };
    let lora = LoraConfig::new(args.rank, args.alpha)
        .with_target_modules(TargetModules::Names(args.targets.clone()))
        .with_dora(args.method == Method::Dora);
    let model = base.with_adapter(ADAPTER, &lora, args.seed)?;
    let trainable_params = ParamLayout::trainable(&model)?.len();
    // The base's weights, quantized ones included, plus the adapter's.
    let total_params = model.base_parameter_count() as usize + trainable_params;
    eprintln!(
        "{:?} r={} alpha={} on {:?}: {trainable_params} trainable of {total_params} parameters; \
         base weights resident: {} ({} as f32)",
        args.method,
        args.rank,
        args.alpha,
        args.targets,
        human_bytes(model.base_weight_bytes()),
        human_bytes(model.base_weight_bytes_f32())
    );

    let model_bytes = (model.base_weight_bytes(), model.base_weight_bytes_f32());
    let (train, held_out) = arithmetic::split(args.train_questions, args.eval_questions, args.seed);
    let stop = tokenizer
        .eos_id()
        .context("the tokenizer has no end-of-sequence token")?;
    let accuracy_before =
        exact_match(&model, &template, &tokenizer, &held_out, stop, "before SFT")?;

    // SFT: chat records as JSON lines -> Parquet -> token ids and assistant masks.
    let sft_tokens = sft_dataset(&data_dir, &train, &template, &tokenizer)?;
    let metrics_path = args.out.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics_path);
    let pad = i64::from(stop);
    if let Some(path) = &args.dump_batches {
        dump_batches(path, &sft_tokens, &args)?;
    }
    let loader = Loader::builder(Arc::clone(&sft_tokens), args.batch)
        .collate(Tensors::new().columns([INPUT_IDS, ASSISTANT_MASKS]).pack(
            INPUT_IDS,
            Pack::new(args.seq_len, pad).loss_mask(ASSISTANT_MASKS),
        ))
        .shuffle(Shuffle::Exact)
        .seed(args.seed);
    eprintln!("SFT: {} steps of {} conversations", args.steps, args.batch);
    let started = Instant::now();
    let mut trainer = Trainer::new(
        Single,
        model,
        Sft::new(INPUT_IDS),
        loader,
        &OptimizerConfig::adamw(),
        options(args.lr, args.steps),
        trainer_config(args.steps, Some(metrics_path.clone()), args.seed),
    )?;
    let sft: Summary = trainer.fit()?;
    eprintln!("SFT: last step's loss {:.4}", sft.last_loss);
    let sft_seconds = started.elapsed().as_secs_f64();
    let stats = trainer.loader_stats();
    let tokens_per_s = stats.tokens as f64 / sft_seconds.max(1e-9);
    eprintln!(
        "SFT: {} tokens in {sft_seconds:.1} s ({tokens_per_s:.0} tokens/s), packing efficiency \
         {:.3}",
        stats.tokens,
        stats.packing_efficiency().unwrap_or(0.0)
    );
    let mut model = trainer.model().clone();
    drop(trainer);
    let sft_losses = train_losses(&metrics_path)?;
    let accuracy_after = exact_match(&model, &template, &tokenizer, &held_out, stop, "after SFT")?;

    let mut line = json!({
        "method": format!("{:?}", args.method).to_lowercase(),
        "trainable_params": trainable_params,
        "total_params": total_params,
        "loss_first": sft_losses.first().map(|p| p.1),
        "loss_last": sft_losses.last().map(|p| p.1),
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "tokens_per_s": tokens_per_s,
        "base_weight_bytes": model_bytes.0,
        "base_weight_bytes_f32": model_bytes.1,
        "packing_efficiency": stats.packing_efficiency(),
        "sft_seconds": sft_seconds,
    });
    let mut dpo_losses = Vec::new();
    if args.dpo_steps > 0 {
        let (trained, report) = dpo(
            &args, model, &train, &held_out, &template, &tokenizer, &data_dir,
        )?;
        model = trained;
        dpo_losses = report.losses;
        let fields = line.as_object_mut().expect("an object");
        fields.insert(
            "dpo_loss_first".into(),
            json!(dpo_losses.first().map(|p| p.1)),
        );
        fields.insert(
            "dpo_loss_last".into(),
            json!(dpo_losses.last().map(|p| p.1)),
        );
        fields.insert(
            "reward_accuracy_before".into(),
            json!(report.before.accuracy()),
        );
        fields.insert(
            "reward_accuracy_after".into(),
            json!(report.after.accuracy()),
        );
        let after_dpo = exact_match(&model, &template, &tokenizer, &held_out, stop, "after DPO")?;
        fields.insert("accuracy_after_dpo".into(), json!(after_dpo));
    }

    model.save_adapter(
        ADAPTER,
        &args.out,
        Some("HuggingFaceTB/SmolLM2-135M-Instruct"),
    )?;
    let offset = sft_losses.last().map_or(0.0, |p| p.0);
    let dpo_shifted: Vec<(f64, f64)> = dpo_losses.iter().map(|&(s, l)| (s + offset, l)).collect();
    mlinfra_examples::plot::loss_curves(
        &args.out.join("loss.png"),
        "finetune: SFT cross-entropy, then DPO loss",
        &[("SFT loss", sft_losses), ("DPO loss", dpo_shifted)],
    )?;
    let fields = line.as_object_mut().expect("an object");
    fields.insert(
        "peak_rss_bytes".into(),
        json!(mlinfra_examples::peak_rss_bytes()),
    );
    fields.insert("adapter_dir".into(), json!(args.out.display().to_string()));
    println!("{line}");
    Ok(())
}

fn options(lr: f64, steps: u64) -> StepOptions {
    StepOptions {
        schedule: LrSchedule::warmup_cosine(lr, (steps / 10).max(1), steps, 0.1),
        max_grad_norm: Some(1.0),
        sharding: Sharding::Replicated,
        precision: Precision::F32,
        loss_scaling: None,
    }
}

fn trainer_config(steps: u64, metrics: Option<PathBuf>, seed: u64) -> TrainerConfig {
    TrainerConfig {
        steps,
        micro_batches: 1,
        eval_every: None,
        checkpoint: None,
        metrics,
        progress: true,
        seed,
    }
}

/// The training conversations, written as chat records (JSON lines), converted to Parquet
/// and tokenized with the model's template; returns the tokenized dataset.
fn sft_dataset(
    dir: &Path,
    train: &[Sum],
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
) -> anyhow::Result<Arc<Dataset>> {
    let jsonl = dir.join("sft.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&jsonl)?);
    for sum in train {
        writeln!(out, "{}", json!({ "messages": sum.conversation() }))?;
    }
    out.flush()?;
    drop(out);
    let records = dir.join("sft.parquet");
    Conversion::json_lines(&jsonl).write(&records)?;
    let tokens = dir.join("sft-tokens.parquet");
    let records = Dataset::open(path_str(&records)?)?;
    template.tokenize_dataset(tokenizer, &records, "messages", &tokens)?;
    Ok(Arc::new(Dataset::open(path_str(&tokens)?)?))
}

/// Writes the conversations each SFT step trains on, as the trainer's loader delivers them
/// (the same dataset, batch size, shuffle and seed give the same batches): one JSON line per
/// step, `{"step", "input_ids": [[...]], "assistant_masks": [[...]]}`.
fn dump_batches(path: &Path, dataset: &Arc<Dataset>, args: &Args) -> anyhow::Result<()> {
    use arrow::array::{Array, AsArray};
    let mut loader = Loader::builder(Arc::clone(dataset), args.batch)
        .collate(mlinfra_loader::collate::ArrowRows)
        .shuffle(Shuffle::Exact)
        .seed(args.seed)
        .build()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut step = 0;
    while step < args.steps {
        let Some(batch) = loader.next() else {
            loader.next_epoch()?;
            continue;
        };
        let rows = batch?.data;
        let lists = |name: &str| -> anyhow::Result<Vec<serde_json::Value>> {
            let column = rows
                .column_by_name(name)
                .context("tokenized column")?
                .as_list::<i32>();
            Ok((0..column.len())
                .map(|r| {
                    let values = column.value(r);
                    match values.data_type() {
                        arrow::datatypes::DataType::Boolean => {
                            json!(
                                values
                                    .as_boolean()
                                    .iter()
                                    .map(|v| v == Some(true))
                                    .collect::<Vec<_>>()
                            )
                        }
                        _ => json!(
                            values
                                .as_primitive::<arrow::datatypes::Int32Type>()
                                .values()
                                .to_vec()
                        ),
                    }
                })
                .collect())
        };
        writeln!(
            out,
            "{}",
            json!({ "step": step + 1, INPUT_IDS: lists(INPUT_IDS)?, ASSISTANT_MASKS: lists(ASSISTANT_MASKS)? })
        )?;
        step += 1;
    }
    out.flush()?;
    Ok(())
}

/// The share of `questions` whose greedy reply (up to the end of the turn) is exactly the
/// answer.
fn exact_match(
    model: &Llama,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    questions: &[Sum],
    stop: u32,
    when: &str,
) -> anyhow::Result<f64> {
    let model = model.valid();
    let bar = progress(questions.len() as u64, &format!("exact match {when}"));
    let mut right = 0;
    for sum in questions {
        let prompt = template.render(&sum.prompt(), true)?;
        let ids = tokenizer.encode(&prompt)?;
        let mut reply = model.generate_greedy(&ids, 8, &[stop])?;
        if reply.last() == Some(&stop) {
            reply.pop();
        }
        right += usize::from(sum.is_answered_by(&tokenizer.decode(&reply)?));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let accuracy = right as f64 / questions.len() as f64;
    eprintln!(
        "exact match {when}: {right}/{} ({accuracy:.2})",
        questions.len()
    );
    Ok(accuracy)
}

struct DpoReport {
    losses: Vec<(f64, f64)>,
    before: DpoSums,
    after: DpoSums,
}

/// DPO on (right, wrong) answer pairs of the training questions, with the held-out pairs'
/// reward accuracy before and after. The reference is the SFT model, its log-probabilities
/// precomputed into the data (TRL's `precompute_ref_log_probs`, its usual setup for DPO after
/// SFT): the policy starts as the reference, at loss ln 2, and the reward accuracy says how
/// many pairs DPO moved the right way.
fn dpo(
    args: &Args,
    model: Llama,
    train: &[Sum],
    held_out: &[Sum],
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> anyhow::Result<(Llama, DpoReport)> {
    let mut rng = SplitMix64::new(args.seed ^ 0xD0);
    let pairs: Vec<_> = train
        .iter()
        .take(args.dpo_steps as usize * DPO_BATCH)
        .map(|sum| sum.preference(&mut rng))
        .collect();
    let held: Vec<_> = held_out
        .iter()
        .map(|sum| sum.preference(&mut rng))
        .collect();
    let dpo = Dpo::new(DEFAULT_BETA, "chosen", "rejected")?;
    let sft_model = model.valid();
    let tokenized = |name: &str, pairs: &[_]| -> anyhow::Result<Arc<Dataset>> {
        let batch = preference_batch(template, tokenizer, pairs, "chosen", "rejected")?;
        with_reference(&dpo, &sft_model, dir, name, &batch)
    };
    let train_pairs = tokenized("dpo", &pairs)?;
    let held_pairs = tokenized("dpo-held-out", &held)?;
    drop(sft_model);
    let before = reward_sums(&dpo, &model, &held_pairs)?;
    let loader = preference_loader(&dpo, train_pairs)
        .shuffle(Shuffle::Exact)
        .seed(args.seed);
    let metrics = dir.join("dpo-metrics.jsonl");
    let _ = std::fs::remove_file(&metrics);
    eprintln!(
        "DPO: {} steps of {DPO_BATCH} pairs, beta {}, the SFT model as reference",
        args.dpo_steps,
        dpo.beta()
    );
    let mut trainer = Trainer::new(
        Single,
        model,
        dpo.clone(),
        loader,
        &OptimizerConfig::adamw(),
        options(args.lr / 5.0, args.dpo_steps),
        trainer_config(args.dpo_steps, Some(metrics.clone()), args.seed),
    )?;
    trainer.fit()?;
    let model = trainer.model().clone();
    drop(trainer);
    let after = reward_sums(&dpo, &model, &held_pairs)?;
    eprintln!(
        "held-out reward accuracy before DPO: {:.2}, after: {:.2}",
        before.accuracy(),
        after.accuracy()
    );
    // DPO's records join the run's metrics, marked as such.
    let log = read_metrics(&metrics)?;
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .open(args.out.join("metrics.jsonl"))?;
    let mut losses = Vec::new();
    for mut record in log.records {
        record.insert("phase".into(), json!("dpo"));
        if record.get("kind").and_then(|k| k.as_str()) == Some("train")
            && let (Some(step), Some(loss)) = (
                record.get("step").and_then(|v| v.as_f64()),
                record.get("loss").and_then(|v| v.as_f64()),
            )
        {
            losses.push((step, loss));
        }
        writeln!(out, "{}", serde_json::Value::Object(record))?;
    }
    Ok((
        model,
        DpoReport {
            losses,
            before,
            after,
        },
    ))
}

/// Pairs per DPO step.
const DPO_BATCH: usize = 8;

/// Preference columns padded by the loader into the tensors [`Dpo`] reads, `DPO_BATCH`
/// pairs at a time, in the dataset's order unless shuffled.
fn preference_loader(dpo: &Dpo, pairs: Arc<Dataset>) -> LoaderBuilder {
    Loader::builder(pairs, DPO_BATCH).collate(dpo.collate())
}

/// `pairs` with `ref_chosen_logps` and `ref_rejected_logps` columns, `reference`'s
/// log-probabilities of each completion, written to `dir/{name}.parquet` and opened.
fn with_reference(
    dpo: &Dpo,
    reference: &Llama,
    dir: &Path,
    name: &str,
    pairs: &RecordBatch,
) -> anyhow::Result<Arc<Dataset>> {
    let plain = parquet_dataset(&dir.join(format!("{name}-pairs.parquet")), pairs)?;
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for batch in preference_loader(dpo, plain).build()? {
        let (c, r) = dpo.completion_logps(reference, batch?.data)?;
        chosen.extend(c);
        rejected.extend(r);
    }
    let mut columns: Vec<(String, ArrayRef)> = pairs
        .schema()
        .fields()
        .iter()
        .zip(pairs.columns())
        .map(|(field, column)| (field.name().clone(), Arc::clone(column)))
        .collect();
    columns.push((
        "ref_chosen_logps".into(),
        Arc::new(Float32Array::from(chosen)),
    ));
    columns.push((
        "ref_rejected_logps".into(),
        Arc::new(Float32Array::from(rejected)),
    ));
    let batch = RecordBatch::try_from_iter(columns)?;
    parquet_dataset(&dir.join(format!("{name}.parquet")), &batch)
}

/// `batch` as a Parquet file at `path`, opened as a dataset.
fn parquet_dataset(path: &Path, batch: &RecordBatch) -> anyhow::Result<Arc<Dataset>> {
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path)?, batch.schema(), None)?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Arc::new(Dataset::open(path_str(path)?)?))
}

/// DPO's sums over `pairs` under `model`, without gradients.
fn reward_sums(dpo: &Dpo, model: &Llama, pairs: &Arc<Dataset>) -> anyhow::Result<DpoSums> {
    let model = model.valid();
    let mut total = DpoSums::default();
    for batch in preference_loader(dpo, Arc::clone(pairs)).build()? {
        total.add(&dpo.pair_losses(&model, batch?.data)?.1);
    }
    Ok(total)
}

/// `(step, loss)` of the trainer's train records.
fn train_losses(metrics: &Path) -> anyhow::Result<Vec<(f64, f64)>> {
    Ok(read_metrics(metrics)?
        .records
        .iter()
        .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some("train"))
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get("loss")?.as_f64()?)))
        .collect())
}

fn progress(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message.to_owned());
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}]") {
        bar.set_style(style);
    }
    bar
}

fn human_bytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
