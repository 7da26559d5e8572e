//! `mcp_server`: the mlinfra stack as MCP tools, for any MCP client.
//!
//! ```text
//! $ cargo run --release -p mlinfra-examples --example mcp_server -- --data-root data/
//!   (stdio: a client spawns it, e.g. Claude Desktop's "command")
//! $ cargo run --release -p mlinfra-examples --example mcp_server -- --http 127.0.0.1:8765 --data-root data/
//! mcp_server: data root /abs/data; MCP endpoint http://127.0.0.1:8765/mcp
//! ```
//!
//! Flags: `--http ADDR` serves Streamable HTTP on `ADDR` instead of stdio (Host and Origin
//! validated, 4 MiB bodies; `MLINFRA_MCP_TOKEN` in the environment requires it as a bearer
//! token); `--data-root DIR` (default `.`) is the only directory whose files the tools read.
//! Status lines go to stderr: on stdio, stdout is the protocol's.
//!
//! Tools: `dataset_schema {path}`, `dataset_sample {path, rows}`, `dataset_fingerprint {path}`,
//! `dataset_verify {path, fingerprint}`, `dataset_convert {input, output}`; training jobs
//! `train_start {config}` (`config.task`: `classifier`, an MLP on a Parquet dataset; `sft`, a
//! LoRA/DoRA/QLoRA fine-tune of a GGUF chat model on conversations; `dpo`, preference
//! optimisation, from scratch or `from_job`), `train_status {job}`, `train_stop {job}`,
//! `train_resume {job}`, `train_list {}`, kept in `--state-dir DIR` (default
//! `$XDG_STATE_HOME/mlinfra-agent`, else `~/.local/state/mlinfra-agent`, or a directory of
//! this process's beside it while another server holds that one; never inside the data root,
//! which the tools read): a job outlives the client and the server (`kill -9` it, start it
//! again: the job is `interrupted`, its checkpoints intact, and `train_resume` continues it).
//! Serving: `generate {prompt, max_tokens}`, `chat {messages, max_tokens}`, `engine_metrics {}`,
//! `adapter_load {name, path | job}`, `adapter_unload {name}` with `--model FILE.gguf` (the
//! engine embedded: mlinfra-serve's OpenAI server called in memory, `--threads N`; its SIMD
//! kernels serve the base model only, `--enable-lora` serves on burn's f32 decoder with
//! adapters loadable, a fine-tune job's among them) or
//! `--openai-url http://HOST:PORT` (any OpenAI-compatible server; `--openai-model NAME`,
//! `MLINFRA_OPENAI_API_KEY`).
//! `--sandbox`: the `sandbox_run {command, stdin}` tool runs commands in the subprocess sandbox
//! (`mlinfra_agent::sandbox`: Landlock, seccomp, rlimits; reads the data root, writes a scratch
//! directory under the state directory; refused where the kernel lacks Landlock).
//! `--wasm`: the `wasm_run {wat | path, input, entry}` tool runs WebAssembly guests in the
//! WebAssembly sandbox (`mlinfra_agent::wasm`: wasmtime with fuel, time and memory limits, no
//! imports but its own small host interface; reads the data root at `/data`, writes a scratch
//! directory under the state directory at `/scratch`).
//! Resources: the datasets under the root (`mlinfra://datasets/{+path}`); prompt
//! `explore_dataset {path}`; completion of dataset paths.
//! `--http` beyond the loopback interface requires `MLINFRA_MCP_TOKEN`; its sessions are kept
//! in the state directory, so a client's session survives a restart of the server.
//! `--trace FILE` appends one JSON line per request and per tool call (OpenTelemetry GenAI/MCP
//! attributes; `mlinfra_agent::trace`); `--otlp http://HOST:4318/v1/traces` exports the same
//! spans to an OpenTelemetry collector (built with `--features otlp`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use mlinfra_agent::serving::Serving;
use mlinfra_agent::{AgentServer, DataRoot, HttpOptions, serve_http, serve_stdio};
use tracing_subscriber::layer::SubscriberExt;

const USAGE: &str = "usage: mcp_server [--http ADDR] [--data-root DIR] [--state-dir DIR] \
                     [--model FILE.gguf [--threads N] [--enable-lora] | --openai-url URL [--openai-model NAME]] \
                     [--sandbox] [--wasm] [--trace FILE] [--otlp URL]";

struct Args {
    http: Option<SocketAddr>,
    data_root: String,
    state_dir: Option<String>,
    model: Option<std::path::PathBuf>,
    threads: Option<usize>,
    enable_lora: bool,
    openai_url: Option<String>,
    openai_model: String,
    sandbox: bool,
    wasm: bool,
    trace: Option<String>,
    otlp: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        http: None,
        data_root: ".".into(),
        state_dir: None,
        model: None,
        threads: None,
        enable_lora: false,
        openai_url: None,
        openai_model: "default".into(),
        sandbox: false,
        wasm: false,
        trace: None,
        otlp: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--http" => {
                let value = it
                    .next()
                    .context("--http needs an address (127.0.0.1:PORT)")?;
                args.http = Some(value.parse().with_context(|| format!("--http {value}"))?);
            }
            "--data-root" => args.data_root = it.next().context("--data-root needs a directory")?,
            "--state-dir" => {
                args.state_dir = Some(it.next().context("--state-dir needs a directory")?)
            }
            "--model" => args.model = Some(it.next().context("--model needs a GGUF file")?.into()),
            "--threads" => {
                let value = it.next().context("--threads needs a count")?;
                args.threads = Some(
                    value
                        .parse()
                        .with_context(|| format!("--threads {value}"))?,
                );
            }
            "--openai-url" => {
                args.openai_url = Some(it.next().context("--openai-url needs a URL")?)
            }
            "--openai-model" => {
                args.openai_model = it.next().context("--openai-model needs a name")?
            }
            "--enable-lora" => args.enable_lora = true,
            "--sandbox" => args.sandbox = true,
            "--wasm" => args.wasm = true,
            "--trace" => args.trace = Some(it.next().context("--trace needs a file")?),
            "--otlp" => args.otlp = Some(it.next().context("--otlp needs a URL")?),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if args.model.is_some() && args.openai_url.is_some() {
        bail!("--model and --openai-url exclude each other; {USAGE}");
    }
    Ok(args)
}

/// Flushes the last batch of spans to the collector when `run` returns.
#[cfg(feature = "otlp")]
struct OtlpFlush(opentelemetry_sdk::trace::SdkTracerProvider);

#[cfg(feature = "otlp")]
impl Drop for OtlpFlush {
    fn drop(&mut self) {
        if let Err(error) = self.0.shutdown() {
            eprintln!("mcp_server: flushing the spans to the collector: {error}");
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let jsonl = match &args.trace {
        Some(path) => Some(mlinfra_agent::trace::JsonlTraceLayer::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--trace {path}"))?,
        )),
        None => None,
    };
    let traced = jsonl.is_some() || args.otlp.is_some();
    let subscriber = tracing_subscriber::registry().with(jsonl);
    #[cfg(feature = "otlp")]
    let (subscriber, _otlp) = {
        let (layer, provider) = match &args.otlp {
            Some(url) => {
                let (layer, provider) = mlinfra_agent::trace::otlp_layer(url, "mlinfra-agent")?;
                (Some(layer), Some(OtlpFlush(provider)))
            }
            None => (None, None),
        };
        (subscriber.with(layer), provider)
    };
    #[cfg(not(feature = "otlp"))]
    if args.otlp.is_some() {
        bail!("--otlp: this mcp_server was built without the `otlp` feature (--features otlp)");
    }
    if traced {
        tracing::subscriber::set_global_default(subscriber)?;
    }
    let root = DataRoot::new(&args.data_root)?;
    let root_path = root.path().display().to_string();
    let explicit = args.state_dir.is_some();
    let mut state_dir = match args.state_dir {
        Some(dir) => std::path::PathBuf::from(dir),
        None => default_state_dir()?,
    };
    let server = AgentServer::new(root);
    let mut server = match server.clone().with_state(&state_dir) {
        Ok(server) => server,
        // Another server holds the default directory (a second client spawned its own): this
        // one keeps its state beside it rather than failing; `--state-dir` is never moved.
        Err(mlinfra_agent::Error::JobStore { source, .. })
            if !explicit && source.kind() == std::io::ErrorKind::WouldBlock =>
        {
            state_dir = state_dir.join(format!("instance-{}", std::process::id()));
            eprintln!(
                "mcp_server: the default state directory is in use; this server keeps its state in {}",
                state_dir.display()
            );
            server
                .with_state(&state_dir)
                .with_context(|| format!("state directory {}", state_dir.display()))?
        }
        Err(error) => {
            return Err(
                anyhow::Error::new(error).context(format!("--state-dir {}", state_dir.display()))
            );
        }
    };
    if args.sandbox {
        server = server.with_sandbox(
            mlinfra_agent::sandbox::Limits::default(),
            state_dir.join("sandbox"),
        )?;
    }
    if args.wasm {
        server = server.with_wasm(
            mlinfra_agent::wasm::WasmLimits::default(),
            state_dir.join("wasm"),
        )?;
    }
    if let Some(model) = &args.model {
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let serving = if args.enable_lora {
            Serving::embedded_with_adapters(model)?
        } else {
            Serving::embedded(model, threads)?
        };
        server = server.with_serving(serving)?;
    } else if let Some(url) = &args.openai_url {
        let key = std::env::var("MLINFRA_OPENAI_API_KEY").ok();
        server =
            server.with_serving(Serving::remote(url.clone(), args.openai_model.clone(), key))?;
    }
    match args.http {
        None => {
            eprintln!("mcp_server: data root {root_path}; serving MCP on stdio");
            serve_stdio(server).await?;
        }
        Some(bind) => {
            let options = HttpOptions {
                bind,
                bearer_token: std::env::var("MLINFRA_MCP_TOKEN").ok(),
                // 2025-11-25 sessions outlive a restart of the server.
                session_dir: Some(state_dir.join("sessions")),
                ..HttpOptions::default()
            };
            let mut http = serve_http(server, options).await?;
            eprintln!(
                "mcp_server: data root {root_path}; MCP endpoint {}",
                http.url()
            );
            let stopped = tokio::select! {
                result = http.wait() => Some(result),
                _ = tokio::signal::ctrl_c() => None,
            };
            match stopped {
                Some(result) => result?,
                None => http.shutdown().await?,
            }
        }
    }
    Ok(())
}

/// `$XDG_STATE_HOME/mlinfra-agent`, else `$HOME/.local/state/mlinfra-agent`.
fn default_state_dir() -> anyhow::Result<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => std::path::PathBuf::from(
            std::env::var_os("HOME")
                .context("no HOME for the state directory; pass --state-dir")?,
        )
        .join(".local/state"),
    };
    Ok(base.join("mlinfra-agent"))
}

fn main() -> ExitCode {
    mlinfra_examples::block_on_main("mcp_server", run())
}
