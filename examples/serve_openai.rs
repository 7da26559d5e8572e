//! `serve_openai`: an OpenAI-compatible server for a Llama-family GGUF model, on the CPU.
//!
//! ```text
//! $ scripts/fetch-model
//! $ cargo run --release -p mlinfra-examples --example serve_openai -- \
//!       --model PATH.gguf [--host 127.0.0.1] [--port P] [--lora NAME=DIR]... \
//!       [--enable-lora] [--threads N] [--max-queue N] [--kv-blocks N] \
//!       [--served-model-name NAME] [--api-key KEY]
//! listening on http://127.0.0.1:8000
//! ```
//!
//! The line `listening on http://HOST:PORT` is printed once the model is loaded and the port
//! bound (with `--port 0`, the port the OS chose). Clients then use any OpenAI SDK with
//! `base_url="http://HOST:PORT/v1"`; `/v1/models` lists the model as the GGUF file's stem,
//! or `--served-model-name`. `GET /metrics` is Prometheus text, `GET /health` 200 until a
//! shutdown starts.
//!
//! SIGTERM or Ctrl-C stops taking requests, lets those in flight finish (30 s at most, then
//! aborts them) and exits with status 0. Bad flags or a model that cannot be loaded print the
//! error and exit with status 2.
//!
//! `--kv-blocks N` sizes the KV cache in blocks of 16 tokens (default 512: 8,192 tokens);
//! `--max-queue N` is how many sequences may wait beyond a full batch before requests get
//! 429 (default 64). The API key can also come from `MLINFRA_API_KEY`.
//!
//! The model runs on the quantized CPU kernels (`mlinfra_kernels::cpu::SimdKernels`: weights
//! in their GGUF blocks, `--threads N`, default every core). Adapters need burn's f32
//! decoder, which `--lora` or `--enable-lora` (vLLM's flag) select instead; without them the
//! adapter endpoints answer that adapters are not enabled.
//!
//! `--lora NAME=DIR` (repeatable) loads a PEFT LoRA adapter (what `finetune` and PEFT's
//! `save_pretrained` write): requests pick it with `"model": "NAME"`, and requests on
//! different adapters are batched together. `POST /v1/load_lora_adapter` and
//! `/v1/unload_lora_adapter` (vLLM's) change them while the server runs: any client that
//! reaches the server can make it read a directory, so with `--host` other than loopback
//! give `--api-key`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use burn::tensor::Device;
use mlinfra_data::tensor::GgufFile;
use mlinfra_kernels::cpu::SimdKernels;
use mlinfra_serve::engine::{Engine, EngineConfig};
use mlinfra_serve::host::HostLlamaRunner;
use mlinfra_serve::runner::{LlamaRunner, ModelRunner};
use mlinfra_serve::sched::SchedulerConfig;
use mlinfra_serve::server::{ServedModel, Server, ServerConfig};

/// KV block size in tokens.
const BLOCK_SIZE: usize = 16;

struct Args {
    model: PathBuf,
    host: IpAddr,
    port: u16,
    loras: Vec<(String, PathBuf)>,
    max_queue: usize,
    kv_blocks: usize,
    served_model_name: Option<String>,
    api_key: Option<String>,
    enable_lora: bool,
    threads: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: mlinfra_examples::default_model(),
        host: IpAddr::from([127, 0, 0, 1]),
        port: 8000,
        loras: Vec::new(),
        max_queue: 64,
        kv_blocks: 512,
        served_model_name: None,
        api_key: std::env::var("MLINFRA_API_KEY")
            .ok()
            .filter(|key| !key.is_empty()),
        enable_lora: false,
        threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--host" => args.host = value()?.parse().context("--host: an IP address")?,
            "--port" => args.port = value()?.parse().context("--port")?,
            "--lora" => {
                let spec = value()?;
                let (name, dir) = spec
                    .split_once('=')
                    .with_context(|| format!("--lora {spec}: expected NAME=DIR"))?;
                args.loras.push((name.into(), dir.into()));
            }
            "--max-queue" => args.max_queue = value()?.parse().context("--max-queue")?,
            "--kv-blocks" => args.kv_blocks = value()?.parse().context("--kv-blocks")?,
            "--served-model-name" => args.served_model_name = Some(value()?),
            "--api-key" => args.api_key = Some(value()?),
            "--enable-lora" => args.enable_lora = true,
            "--threads" => args.threads = Some(value()?.parse().context("--threads")?),
            other => bail!(
                "unknown flag {other}; flags: --model PATH.gguf --host IP --port P \
                 --lora NAME=DIR --enable-lora --threads N --max-queue N --kv-blocks N \
                 --served-model-name NAME --api-key KEY"
            ),
        }
    }
    if args.kv_blocks == 0 {
        bail!("--kv-blocks must be at least 1");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    Ok(args)
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    mlinfra_examples::keep_freed_memory();
    let file = GgufFile::open(&args.model).with_context(|| {
        format!(
            "opening {} (scripts/fetch-model downloads the default)",
            args.model.display()
        )
    })?;
    let name = match &args.served_model_name {
        Some(name) => name.clone(),
        None => args
            .model
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .context("--model has no file name")?,
    };
    let served = ServedModel::from_gguf(&file)?;
    if args.enable_lora || !args.loras.is_empty() {
        let mut runner =
            LlamaRunner::from_gguf(&file, args.kv_blocks, BLOCK_SIZE, &Device::flex())?;
        for (name, dir) in &args.loras {
            runner
                .load_adapter(name, dir)
                .with_context(|| format!("--lora {name}={}", dir.display()))?;
        }
        eprintln!("serve_openai: burn's f32 decoder (adapters enabled)");
        serve(runner, served, name, args)
    } else {
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let runner = HostLlamaRunner::from_gguf(
            &file,
            Box::new(SimdKernels::new(threads)),
            args.kv_blocks,
            BLOCK_SIZE,
        )?;
        eprintln!(
            "serve_openai: {} ({} MB of weights)",
            runner.kernels(),
            runner.weight_bytes() / 1_000_000
        );
        drop(file);
        serve(runner, served, name, args)
    }
}

/// Serves `runner` until SIGTERM or Ctrl-C.
fn serve<R: ModelRunner + Send + 'static>(
    runner: R,
    served: ServedModel,
    name: String,
    args: Args,
) -> anyhow::Result<()> {
    let engine = Engine::new(
        runner,
        EngineConfig {
            scheduler: SchedulerConfig {
                max_running: 64,
                ..SchedulerConfig::default()
            },
            ..EngineConfig::default()
        },
    )?;
    let mut server_config = ServerConfig::new(name);
    server_config.max_queue = args.max_queue;
    server_config.api_key = args.api_key;
    // The example's contract includes vLLM's adapter endpoints; it binds to 127.0.0.1
    // unless told otherwise (then set --api-key: loading reads the server's disk).
    server_config.allow_runtime_lora = true;
    let server = Server::start(engine, served, server_config)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host, args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let address = listener.local_addr()?;
        println!("listening on http://{address}");
        server.serve(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("serve_openai: shutting down: draining requests in flight");
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("serve_openai: {error:#}");
            ExitCode::from(2)
        }
    }
}
