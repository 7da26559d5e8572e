//! `llama_generate`: greedy text from a Llama-family GGUF model, on the CPU or a wgpu device.
//!
//! ```text
//! $ scripts/fetch-model
//! $ cargo run --release -p mlinfra-examples --example llama_generate -- \
//!       [--model PATH.gguf] [--prompt "The capital of France is"] [--max-new 16] \
//!       [--adapter DIR] [--logits-out FILE] [--threads N] [--ignore-eos] [--chat] [--burn] \
//!       [--device cpu|wgpu]
//!  Paris.
//!
//! The answer is: 2018-01
//! {"model":"...SmolLM2-135M-Instruct.Q4_1.gguf","prompt_tokens":5,"new_tokens":16,"load_s":1.9,"prefill_tokens_per_s":...,"decode_tokens_per_s":...,"output_ids":[...]}
//! ```
//!
//! `--threads N` runs the matmuls on N threads (default: every core). `--ignore-eos` decodes
//! exactly `--max-new` tokens, past end-of-sequence (for decode benchmarks). `--chat` puts
//! `--prompt` in a user turn of the GGUF's chat template (with the assistant's turn opened),
//! and then also stops at the template's end-of-turn tokens. The last line is one JSON
//! object, a contract other tools read: `prefill_tokens_per_s`, `decode_tokens_per_s` and
//! `output_ids` (the generated ids, a stop token included); also `peak_rss_bytes`.
//!
//! The model runs on the quantized CPU kernels (`mlinfra_kernels::cpu::SimdKernels`: the
//! weights stay in their GGUF blocks, SIMD chosen at run time; the kernels in use are logged
//! on stderr). `--device wgpu` runs its linear layers and attention as cubecl kernels
//! (`mlinfra_kernels::cube::CubeKernels`) on the first Vulkan adapter, a GPU or Mesa's
//! software lavapipe, with the CPU kernels' numerics: the same greedy text as `--device cpu`
//! (the default). `--burn` runs burn's f32 decoder instead (the weights dequantized at load),
//! as `--adapter` does.
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
use mlinfra_kernels::cpu::SimdKernels;
use mlinfra_kernels::cube::CubeKernels;
use mlinfra_serve::host::{HostKernels, HostLlamaRunner};
use mlinfra_serve::runner::ModelRunner;
use mlinfra_serve::sched::{StepBatch, StepSeq};
use mlinfra_serve::server::ServedModel;
use mlinfra_train::models::{KvCache, Llama};

/// KV slots per block of the quantized decoder's pool.
const BLOCK_SIZE: usize = 16;
use serde_json::json;

struct Args {
    model: PathBuf,
    prompt: String,
    max_new: usize,
    adapter: Option<PathBuf>,
    logits_out: Option<PathBuf>,
    threads: Option<usize>,
    ignore_eos: bool,
    chat: bool,
    burn: bool,
    device: Target,
}

/// Where the quantized decoder's kernels run (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Cpu,
    Wgpu,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: mlinfra_examples::default_model(),
        prompt: "The capital of France is".into(),
        max_new: 16,
        adapter: None,
        logits_out: None,
        threads: None,
        ignore_eos: false,
        chat: false,
        burn: false,
        device: Target::Cpu,
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
            "--threads" => args.threads = Some(value()?.parse().context("--threads")?),
            "--ignore-eos" => args.ignore_eos = true,
            "--chat" => args.chat = true,
            "--burn" => args.burn = true,
            "--device" => {
                args.device = match value()?.as_str() {
                    "cpu" => Target::Cpu,
                    "wgpu" => Target::Wgpu,
                    other => bail!("--device {other}: expected cpu or wgpu"),
                }
            }
            other => bail!(
                "unknown flag {other}; flags: --model PATH --prompt TEXT --max-new N \
                 --adapter DIR --logits-out FILE --threads N --ignore-eos --chat --burn \
                 --device cpu|wgpu"
            ),
        }
    }
    if args.max_new == 0 {
        bail!("--max-new must be at least 1");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if args.device == Target::Wgpu && (args.burn || args.adapter.is_some()) {
        bail!("--device wgpu runs the quantized decoder: not with --burn or --adapter");
    }
    Ok(args)
}

/// The model behind the generation loop: the quantized CPU kernels (the default) or burn's
/// f32 decoder (`--burn`, and with `--adapter`).
enum Decoder {
    Host {
        runner: Box<HostLlamaRunner>,
        block_table: Vec<u32>,
        context: usize,
    },
    Burn {
        model: Box<Llama>,
        cache: KvCache,
    },
}

impl Decoder {
    /// Runs `tokens` after the context so far; the logits of the last one.
    fn next_logits(&mut self, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
        match self {
            Decoder::Host {
                runner,
                block_table,
                context,
            } => {
                let start = *context;
                *context += tokens.len();
                let batch = StepBatch {
                    copies: Vec::new(),
                    tokens: tokens.to_vec(),
                    positions: (start..*context).collect(),
                    seqs: vec![StepSeq {
                        id: 0,
                        query_start: 0,
                        query_len: tokens.len(),
                        context_len: *context,
                        block_table: block_table.clone(),
                        adapter: None,
                    }],
                    logit_rows: vec![tokens.len() - 1],
                };
                Ok(runner.execute(&batch)?.as_slice().to_vec())
            }
            Decoder::Burn { model, cache } => model
                .next_logits(tokens, cache)?
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading the logits back: {e:?}")),
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let use_burn = args.burn || args.adapter.is_some();
    if (use_burn || args.device == Target::Wgpu) && args.threads.is_some() {
        // burn's CPU matmuls, and the host-side steps of the wgpu path, run on rayon's global
        // pool.
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("--threads: starting the thread pool")?;
    }
    let started = Instant::now();
    let file = GgufFile::open(&args.model).with_context(|| {
        format!(
            "opening {} (scripts/fetch-model downloads the default)",
            args.model.display()
        )
    })?;
    // The tokenizer, chat template and end-of-generation tokens, as the server reads them.
    let served = ServedModel::from_gguf(&file)?;
    let tokenizer = &served.tokenizer;

    let prompt = if args.chat {
        let template = served
            .chat_template
            .as_ref()
            .context("--chat: the GGUF has no chat template")?;
        let message = json!({"role": "user", "content": args.prompt});
        let text = template.render_with_tools(&[message], &[], true)?;
        let mut ids = tokenizer.encode(&text)?;
        // The template writes BOS itself when the model wants one.
        if ids.len() >= 2 && ids[0] == ids[1] && tokenizer.bos_id() == Some(ids[0]) {
            ids.remove(0);
        }
        ids
    } else {
        tokenizer.encode(&args.prompt)?
    };
    if prompt.is_empty() {
        bail!("--prompt encodes to no tokens");
    }
    let mut decoder = if use_burn {
        let (mut model, _config) = Llama::from_gguf(&file, &Device::flex())?;
        if let Some(dir) = &args.adapter {
            model = model.load_adapter(dir, "adapter")?;
        }
        Decoder::Burn {
            model: Box::new(model),
            cache: KvCache::default(),
        }
    } else {
        let context = prompt.len() + args.max_new;
        let blocks = context.div_ceil(BLOCK_SIZE);
        let kernels: Box<dyn HostKernels> = match args.device {
            Target::Cpu => Box::new(SimdKernels::new(threads)),
            Target::Wgpu => Box::new(CubeKernels::wgpu()?),
        };
        let runner = HostLlamaRunner::from_gguf(&file, kernels, blocks, BLOCK_SIZE)?;
        eprintln!(
            "llama_generate: {} ({} MB of weights)",
            runner.kernels(),
            runner.weight_bytes() / 1_000_000
        );
        Decoder::Host {
            runner: Box::new(runner),
            block_table: (0..blocks as u32).collect(),
            context: 0,
        }
    };
    drop(file);
    let load_s = started.elapsed().as_secs_f64();

    let stop: Vec<u32> = match (args.ignore_eos, args.chat) {
        (true, _) => Vec::new(),
        (false, true) => served.stop_token_ids.clone(),
        (false, false) => tokenizer.eos_id().into_iter().collect(),
    };
    // `--ignore-eos` as llama.cpp does it: end-of-generation tokens are never chosen.
    let banned: Vec<u32> = if args.ignore_eos {
        served.stop_token_ids.clone()
    } else {
        Vec::new()
    };
    let argmax = |mut values: Vec<f32>| -> anyhow::Result<u32> {
        for &id in &banned {
            if let Some(value) = values.get_mut(id as usize) {
                *value = f32::NEG_INFINITY;
            }
        }
        // The lowest id among equal maxima, as burn's argmax.
        let (best, _) =
            values
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                });
        u32::try_from(best).context("the arg-max of the logits")
    };
    // The prompt's forward (prefill) and the one-token steps (decode), timed apart.
    let started = Instant::now();
    let logits = decoder.next_logits(&prompt)?;
    let prefill_s = started.elapsed().as_secs_f64();
    if let Some(path) = &args.logits_out {
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut next = argmax(logits)?;
    let mut ids = vec![next];
    let started = Instant::now();
    while ids.len() < args.max_new && !stop.contains(&next) {
        next = argmax(decoder.next_logits(&[next])?)?;
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
            "device": match (use_burn, args.device) {
                (true, _) => "burn-cpu",
                (false, Target::Cpu) => "cpu",
                (false, Target::Wgpu) => "wgpu",
            },
            "prompt_tokens": prompt.len(),
            "new_tokens": ids.len(),
            "load_s": load_s,
            "prefill_tokens_per_s": prompt.len() as f64 / prefill_s,
            "decode_tokens_per_s": decode_tokens as f64 / decode_s.max(1e-9),
            "output_ids": ids,
            "peak_rss_bytes": mlinfra_examples::peak_rss_bytes(),
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
