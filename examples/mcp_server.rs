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
//! `train_start {config}`, `train_status {job}`, `train_stop {job}`, `train_resume {job}`,
//! `train_list {}`, kept in `--state-dir DIR` (default `DATA_ROOT/.mlinfra-agent`; hidden, so
//! not listed as a dataset): a job outlives the client and the server (`kill -9` it, start it
//! again: the job is `interrupted`, its checkpoints intact, and `train_resume` continues it).
//! Resources: the datasets under the root (`mlinfra://datasets/{+path}`); prompt
//! `explore_dataset {path}`; completion of dataset paths.
//! `--http` beyond the loopback interface requires `MLINFRA_MCP_TOKEN`. `--trace FILE` appends
//! one JSON line per tool call (OpenTelemetry GenAI/MCP attributes; `mlinfra_agent::trace`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use mlinfra_agent::{AgentServer, DataRoot, HttpOptions, serve_http, serve_stdio};
use tracing_subscriber::layer::SubscriberExt;

const USAGE: &str =
    "usage: mcp_server [--http ADDR] [--data-root DIR] [--state-dir DIR] [--trace FILE]";

struct Args {
    http: Option<SocketAddr>,
    data_root: String,
    state_dir: Option<String>,
    trace: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        http: None,
        data_root: ".".into(),
        state_dir: None,
        trace: None,
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
            "--trace" => args.trace = Some(it.next().context("--trace needs a file")?),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    Ok(args)
}

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(path) = &args.trace {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--trace {path}"))?;
        let subscriber =
            tracing_subscriber::registry().with(mlinfra_agent::trace::JsonlTraceLayer::new(file));
        tracing::subscriber::set_global_default(subscriber)?;
    }
    let root = DataRoot::new(&args.data_root)?;
    let root_path = root.path().display().to_string();
    let state_dir = args
        .state_dir
        .map_or_else(|| root.path().join(".mlinfra-agent"), Into::into);
    let server = AgentServer::new(root)
        .with_jobs(&state_dir)
        .with_context(|| format!("--state-dir {}", state_dir.display()))?;
    match args.http {
        None => {
            eprintln!("mcp_server: data root {root_path}; serving MCP on stdio");
            serve_stdio(server).await?;
        }
        Some(bind) => {
            let options = HttpOptions {
                bind,
                bearer_token: std::env::var("MLINFRA_MCP_TOKEN").ok(),
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

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mcp_server: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp_server: {error:#}");
            ExitCode::from(2)
        }
    }
}
