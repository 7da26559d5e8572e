//! `llama_generate`: greedy text from a Llama-family GGUF model, on the CPU.
//!
//! ```text
//! $ scripts/fetch-model
//! $ cargo run --release -p mlinfra-examples --example llama_generate -- \
//!       [--model PATH.gguf] [--prompt "The capital of France is"] [--max-new 16] \
//!       [--adapter DIR] [--logits-out FILE]
//!  Paris.
//!
//! The answer is: 2018-01
//! {"model":"...SmolLM2-135M-Instruct.Q4_1.gguf","prompt_tokens":5,"new_tokens":16,"load_s":1.9,"prefill_tokens_per_s":...,"decode_tokens_per_s":...}
//! ```
//!
//! The default model is SmolLM2-135M-Instruct (Q4_1) where `scripts/fetch-model` puts it
//! (`$MLINFRA_MODELS`, default `~/.cache/mlinfra/models`). The tokenizer comes from the
//! file's metadata. Generation stops at the end-of-sequence token or after `--max-new`.
//!
//! `--adapter DIR` applies a LoRA or DoRA adapter in Hugging Face PEFT's format
//! (`adapter_config.json`, `adapter_model.safetensors`: what PEFT's `save_pretrained` and the
//! `finetune` example write), unmerged. `--logits-out FILE` writes the logits at the prompt's
//! last position (the scores of the first new token) as raw little-endian f32, one value per
//! vocabulary entry, in id order.
//! Errors (a missing file, an architecture this decoder does not build) print the typed
//! error and exit with status 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::Device;
use mlinfra_data::tensor::GgufFile;
use mlinfra_data::tokenizer::Tokenizer;
use mlinfra_train::models::{KvCache, Llama};
use serde_json::json;

struct Args {
    model: PathBuf,
    prompt: String,
    max_new: usize,
    adapter: Option<PathBuf>,
    logits_out: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: mlinfra_examples::default_model(),
        prompt: "The capital of France is".into(),
        max_new: 16,
        adapter: None,
        logits_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--prompt" => args.prompt = value()?,
            "--max-new" => args.max_new = value()?.parse().context("--max-new")?,
            "--adapter" => args.adapter = Some(value()?.into()),
            "--logits-out" => args.logits_out = Some(value()?.into()),
            other => bail!(
                "unknown flag {other}; flags: --model PATH --prompt TEXT --max-new N \
                 --adapter DIR --logits-out FILE"
            ),
        }
    }
    if args.max_new == 0 {
        bail!("--max-new must be at least 1");
    }
    Ok(args)
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let file = GgufFile::open(&args.model).with_context(|| {
        format!(
            "opening {} (scripts/fetch-model downloads the default)",
            args.model.display()
        )
    })?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let (mut model, _config) = Llama::from_gguf(&file, &Device::flex())?;
    if let Some(dir) = &args.adapter {
        model = model.load_adapter(dir, "adapter")?;
    }
    let load_s = started.elapsed().as_secs_f64();

    let prompt = tokenizer.encode(&args.prompt)?;
    let stop: Vec<u32> = tokenizer.eos_id().into_iter().collect();
    // `generate_greedy`'s loop, written out so the prompt's forward (prefill) and the
    // one-token steps (decode) are timed apart in one pass.
    let mut cache = KvCache::default();
    let started = Instant::now();
    let logits = model.next_logits(&prompt, &mut cache)?;
    let next = logits.clone().argmax(0).into_scalar::<i64>();
    let mut next = u32::try_from(next).context("the arg-max of the logits")?;
    let prefill_s = started.elapsed().as_secs_f64();
    if let Some(path) = &args.logits_out {
        let values = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the logits back: {e:?}"))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut ids = vec![next];
    let started = Instant::now();
    while ids.len() < args.max_new && !stop.contains(&next) {
        next = model.greedy_next(&[next], &mut cache)?;
        ids.push(next);
    }
    let decode_s = started.elapsed().as_secs_f64();
    println!("{}", tokenizer.decode(&ids)?);
    let decode_tokens = ids.len() - 1;
    println!(
        "{}",
        json!({
            "model": args.model.display().to_string(),
            "adapter": args.adapter.as_ref().map(|dir| dir.display().to_string()),
            "prompt_tokens": prompt.len(),
            "new_tokens": ids.len(),
            "load_s": load_s,
            "prefill_tokens_per_s": prompt.len() as f64 / prefill_s,
            "decode_tokens_per_s": decode_tokens as f64 / decode_s.max(1e-9),
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("llama_generate: {error:#}");
            ExitCode::from(2)
        }
    }
}
