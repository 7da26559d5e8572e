//! [`AgentServer`]: the MCP server whose tools are the stack. The protocol (both eras: the
//! 2025-11-25 handshake with sessions and 2026-07-28 stateless requests), the JSON-RPC
//! framing and the tool schemas come from rmcp, the official Rust SDK; this type holds what
//! the tools need and says which tools there are.
//!
//! A tool's failure (a refused path, a corrupt file) is a tool result with `isError: true`
//! and the error's message, which the model can read and act on; protocol errors (an unknown
//! tool, arguments that do not match the schema) stay JSON-RPC errors.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{InputResponses, RequestState};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CacheScope, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    CompletionInfo, ContentBlock, ErrorData, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    Prompt, PromptArgument, PromptMessage, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Reference, Resource, ResourceContents,
    ResourceTemplate, ResourceUpdatedNotificationParam, Role, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use tracing::Instrument;

use crate::approval::{self, Approval};
use crate::catalog;
use crate::jobs::{JobState, JobStatus, JobStore};
use crate::lineage::{self, Kind, Registry};
use crate::root::DataRoot;
use crate::sandbox::Sandbox;
use crate::serving::{
    AdapterLoadRequest, AdapterName, AdapterReport, ChatRequest, EngineMetrics, GenerateRequest,
    Generation, Serving,
};
use crate::tools::datasets::{
    self, ConvertReport, ConvertRequest, DatasetPath, FingerprintReport, SampleReport,
    SampleRequest, SchemaReport, VerifyReport, VerifyRequest,
};
use crate::tools::jobs::{
    CheckpointList, Deleted, InspectRequest, JobList, JobRequest, LineageEntry, LineageList,
    NoArguments, TrainStartRequest, WaitRequest,
};
use crate::tools::loader::{self, PlanReport, PlanRequest, ProbeReport, ProbeRequest};
use crate::tools::sandbox::{RunReport, RunRequest};
use crate::tools::stats::StatsReport;
use crate::tools::wasm::{WasmRunReport, WasmRunRequest};
use crate::wasm::WasmSandbox;
use crate::watch::Watches;

/// The MCP server: the stack's tools over one data root. Cheap to clone (each HTTP session
/// gets one).
#[derive(Debug, Clone)]
pub struct AgentServer {
    root: Arc<DataRoot>,
    jobs: Option<Arc<JobStore>>,
    lineage: Option<Arc<Registry>>,
    serving: Option<Arc<Serving>>,
    /// Seals the questions approvals ask (2026-07-28).
    /// (`None` when the system gave no random key: stateless approvals are then refused.)
    seal: Option<Arc<approval::Seal>>,
    /// The sandbox `sandbox_run` uses, and where its scratch directories go.
    sandbox: Option<Arc<(Sandbox, std::path::PathBuf)>>,
    /// The WebAssembly sandbox `wasm_run` uses, and where its scratch directories go.
    wasm: Option<Arc<(WasmSandbox, std::path::PathBuf)>>,
    /// The datasets clients subscribed to (see [`crate::watch`]).
    watches: Arc<Watches>,
    tool_router: ToolRouter<Self>,
}

impl AgentServer {
    /// Tools that read files under `root` and nowhere else. The training tools answer that
    /// there is no job store until [`AgentServer::with_state`] gives one.
    pub fn new(root: DataRoot) -> Self {
        Self {
            root: Arc::new(root),
            jobs: None,
            lineage: None,
            serving: None,
            sandbox: None,
            wasm: None,
            watches: Arc::default(),
            seal: approval::Seal::new().ok().map(Arc::new),
            tool_router: Self::tool_router(),
        }
    }

    /// State kept in `state_dir` (created if missing): training jobs (see [`crate::jobs`];
    /// jobs a dead process left running are marked interrupted, to be resumed) and the lineage
    /// registry (see [`crate::lineage`]), in which this server's tool and prompt definitions
    /// are recorded now (a tool changed since its approval is flagged).
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`](crate::Error::JobStore) when the directory or the registry cannot
    /// be made or read.
    pub fn with_state(mut self, state_dir: impl AsRef<std::path::Path>) -> crate::Result<Self> {
        let state_dir = state_dir.as_ref();
        // The tools read the data root: state there (job records, checkpoints, sandbox
        // scratch) would be theirs to read, and a sandboxed command's to plant files in.
        self.root.refuse_inside(state_dir, "the state directory")?;
        self.jobs = Some(Arc::new(JobStore::open(state_dir, Arc::clone(&self.root))?));
        let registry = Registry::open(state_dir.join("lineage.json"))?;
        for tool in self.tool_router.list_all() {
            registry.observe(Kind::Tool, &tool.name, &lineage::definition_hash(&tool))?;
        }
        for prompt in prompt_definitions() {
            registry.observe(
                Kind::Prompt,
                &prompt.name,
                &lineage::definition_hash(&prompt),
            )?;
        }
        self.lineage = Some(Arc::new(registry));
        self.register_model()?;
        Ok(self)
    }

    /// Records the served model in the registry, once both exist.
    fn register_model(&self) -> crate::Result<()> {
        if let (Some(registry), Some(serving)) = (&self.lineage, &self.serving)
            && let Some(hash) = serving.model_hash()
        {
            registry.observe(Kind::Model, serving.model(), hash)?;
        }
        Ok(())
    }

    /// Serving tools (`generate`, `chat`, `engine_metrics`, `adapter_load`,
    /// `adapter_unload`) over `serving`: the embedded engine or a server at a URL.
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`](crate::Error::JobStore) when the lineage registry cannot record
    /// the model.
    pub fn with_serving(mut self, serving: Serving) -> crate::Result<Self> {
        self.serving = Some(Arc::new(serving));
        self.register_model()?;
        Ok(self)
    }

    /// Enables `sandbox_run`: commands run under `limits` in the subprocess sandbox (see
    /// [`crate::sandbox`]), reading the data root, writing a scratch directory of their own
    /// under `scratch_root`.
    ///
    /// # Errors
    ///
    /// [`Error::Sandbox`](crate::Error::Sandbox) when this kernel cannot enforce the sandbox.
    pub fn with_sandbox(
        mut self,
        limits: crate::sandbox::Limits,
        scratch_root: impl Into<std::path::PathBuf>,
    ) -> crate::Result<Self> {
        let scratch_root = scratch_root.into();
        self.root
            .refuse_inside(&scratch_root, "the sandbox's scratch directory")?;
        let sandbox = Sandbox::new(limits)?.allow_read(self.root.path());
        self.sandbox = Some(Arc::new((sandbox, scratch_root)));
        Ok(self)
    }

    /// Enables `wasm_run`: WebAssembly guests run under `limits` in the WebAssembly sandbox
    /// (see [`crate::wasm`]), reading the data root at `/data`, writing a scratch directory of
    /// their own under `scratch_root` at `/scratch`.
    ///
    /// # Errors
    ///
    /// [`Error::DataRoot`](crate::Error::DataRoot) when `scratch_root` is inside the data
    /// root; [`Error::Sandbox`](crate::Error::Sandbox) when wasmtime cannot run here.
    pub fn with_wasm(
        mut self,
        limits: crate::wasm::WasmLimits,
        scratch_root: impl Into<std::path::PathBuf>,
    ) -> crate::Result<Self> {
        let scratch_root = scratch_root.into();
        self.root
            .refuse_inside(&scratch_root, "the WebAssembly sandbox's scratch directory")?;
        let wasm = WasmSandbox::new(limits)?.allow_read((*self.root).clone());
        self.wasm = Some(Arc::new((wasm, scratch_root)));
        Ok(self)
    }

    /// The lineage registry, if any.
    pub fn lineage(&self) -> Option<&Arc<Registry>> {
        self.lineage.as_ref()
    }

    /// The data root.
    pub fn data_root(&self) -> &DataRoot {
        &self.root
    }

    /// The job store, if any.
    pub fn jobs(&self) -> Option<&Arc<JobStore>> {
        self.jobs.as_ref()
    }

    /// `work` over the data root, for [`AgentServer::run`].
    fn on_root<R, T: 'static>(
        &self,
        work: fn(&DataRoot, &R) -> crate::Result<T>,
    ) -> impl FnOnce(R) -> crate::Result<T> + Send + 'static
    where
        R: Send + 'static,
    {
        let root = Arc::clone(&self.root);
        move |request| work(&root, &request)
    }

    /// `work` over the job store, for [`AgentServer::run`]; an error when there is none.
    fn on_jobs<R, T: 'static>(
        &self,
        work: fn(&Arc<JobStore>, R) -> crate::Result<T>,
    ) -> impl FnOnce(R) -> crate::Result<T> + Send + 'static
    where
        R: Send + 'static,
    {
        let jobs = self.job_store("train");
        move |request| work(&jobs?, request)
    }

    /// The job store, or the error saying there is none.
    fn job_store(&self, tool: &'static str) -> crate::Result<Arc<JobStore>> {
        self.jobs
            .clone()
            .ok_or_else(|| crate::Error::InvalidArgument {
                tool,
                reason: "this server keeps no jobs (start it with a state directory: \
                     mcp_server --state-dir DIR)"
                    .into(),
            })
    }

    /// Runs tool `tool`'s `work` on `request` on tokio's blocking pool (file reads, hashing,
    /// job records) inside its trace span (see [`crate::trace`]), a failure becoming the
    /// tool's error text.
    async fn run<R, T>(
        &self,
        tool: &'static str,
        request: R,
        work: impl FnOnce(R) -> crate::Result<T> + Send + 'static,
    ) -> Result<Json<T>, String>
    where
        R: serde::Serialize + Send + 'static,
        T: Send + 'static,
    {
        let hash = crate::trace::arguments_hash(&request);
        traced(tool, hash, blocking(move || work(request))).await
    }

    /// The serving backend, or the error saying there is none.
    fn serving(&self, tool: &'static str) -> crate::Result<Arc<Serving>> {
        self.serving
            .clone()
            .ok_or_else(|| crate::Error::InvalidArgument {
                tool,
                reason: "this server has no model (start it with mcp_server --model FILE.gguf or \
                     --openai-url URL)"
                    .into(),
            })
    }
}

/// Tools in one page of `tools/list`.
pub const TOOLS_PAGE: usize = 20;

/// Who a 2025-11-25 subscription belongs to: the HTTP session, or the one stdio client.
fn subscriber(cx: &RequestContext<RoleServer>) -> String {
    crate::traced::session_id(cx).unwrap_or_default().to_owned()
}

/// Runs a tool's `work` inside its trace span (see [`crate::trace`]): the span records the
/// outcome, the error's kind, and (set by generation tools) the token counts; a failure
/// becomes the tool's error text.
async fn traced<T>(
    tool: &'static str,
    arguments_hash: String,
    work: impl Future<Output = crate::Result<T>>,
) -> Result<Json<T>, String> {
    let span = tracing::info_span!(
        "execute_tool",
        otel.name = format!("execute_tool {tool}"),
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        mcp.method.name = "tools/call",
        gen_ai.tool.call.arguments.hash = arguments_hash,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let result = work
        .instrument(span.clone())
        .await
        .map_err(|error| (error_kind(&error), error_text(&error)));
    match &result {
        Ok(_) => span.record("outcome", "ok"),
        Err((kind, _)) => span
            .record("outcome", "tool_error")
            .record("error.type", *kind),
    };
    result.map(Json).map_err(|(_, text)| text)
}

/// Records a generation's token counts on the current tool span.
fn record_usage(generation: &Generation) {
    tracing::Span::current()
        .record("gen_ai.usage.input_tokens", generation.prompt_tokens)
        .record("gen_ai.usage.output_tokens", generation.completion_tokens);
}

/// The error's kind, for the trace's `error.type`.
fn error_kind(error: &crate::Error) -> &'static str {
    match error {
        crate::Error::PathRefused { .. } => "path_refused",
        crate::Error::InvalidArgument { .. } => "invalid_argument",
        crate::Error::Data(_) => "data",
        crate::Error::Train(_) => "train",
        crate::Error::Loader(_) => "loader",
        crate::Error::Job { .. } => "job",
        crate::Error::JobStore { .. } => "job_store",
        crate::Error::Serving { .. } => "serving",
        crate::Error::Sandbox { .. } => "sandbox",
        crate::Error::Internal { .. } => "internal",
        _ => "other",
    }
}

/// The error and its causes, one line.
pub(crate) fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tool_router]
impl AgentServer {
    /// A dataset's columns (name, Arrow type, nullability), rows, files and row groups, from
    /// the Parquet footers alone.
    #[tool(name = "dataset_schema", annotations(read_only_hint = true))]
    async fn dataset_schema(
        &self,
        Parameters(request): Parameters<DatasetPath>,
    ) -> Result<Json<SchemaReport>, String> {
        self.run("dataset_schema", request, self.on_root(datasets::schema))
            .await
    }

    /// A dataset's first rows as JSON objects (1 to 100 rows, at most 1 MiB of JSON).
    #[tool(name = "dataset_sample", annotations(read_only_hint = true))]
    async fn dataset_sample(
        &self,
        Parameters(request): Parameters<SampleRequest>,
    ) -> Result<Json<SampleReport>, String> {
        self.run("dataset_sample", request, self.on_root(datasets::sample))
            .await
    }

    /// A dataset's content fingerprint (BLAKE3 over its schema and every file's bytes): equal
    /// exactly when the data is. Reads every byte.
    #[tool(name = "dataset_fingerprint", annotations(read_only_hint = true))]
    async fn dataset_fingerprint(
        &self,
        Parameters(request): Parameters<DatasetPath>,
    ) -> Result<Json<FingerprintReport>, String> {
        self.run(
            "dataset_fingerprint",
            request,
            self.on_root(datasets::fingerprint),
        )
        .await
    }

    /// Per-column statistics over every row: count, nulls, min, max, mean and standard
    /// deviation of numbers; shortest and longest strings. Reads every row once.
    #[tool(name = "dataset_stats", annotations(read_only_hint = true))]
    async fn dataset_stats(
        &self,
        Parameters(request): Parameters<DatasetPath>,
    ) -> Result<Json<StatsReport>, String> {
        self.run(
            "dataset_stats",
            request,
            self.on_root(crate::tools::stats::stats),
        )
        .await
    }

    /// Whether a dataset still has the fingerprint recorded earlier (its bytes unchanged).
    /// Reads every byte.
    #[tool(name = "dataset_verify", annotations(read_only_hint = true))]
    async fn dataset_verify(
        &self,
        Parameters(request): Parameters<VerifyRequest>,
    ) -> Result<Json<VerifyReport>, String> {
        self.run("dataset_verify", request, self.on_root(datasets::verify))
            .await
    }

    /// Converts a CSV or JSON-lines file under the data root into a new Parquet file there
    /// (types inferred; atomic; never overwrites).
    #[tool(
        name = "dataset_convert",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn dataset_convert(
        &self,
        Parameters(request): Parameters<ConvertRequest>,
    ) -> Result<Json<ConvertReport>, String> {
        self.run("dataset_convert", request, self.on_root(datasets::convert))
            .await
    }

    /// The order a training run reads a dataset in: each rank's samples and batches this
    /// epoch and its first batches' row ids (the plan a trainer with these settings follows).
    #[tool(name = "loader_plan", annotations(read_only_hint = true))]
    async fn loader_plan(
        &self,
        Parameters(request): Parameters<PlanRequest>,
    ) -> Result<Json<PlanReport>, String> {
        self.run("loader_plan", request, self.on_root(loader::plan))
            .await
    }

    /// How fast the loader delivers a dataset's shuffled batches on this machine (samples/s,
    /// time to the first batch, time waiting), for up to `seconds`.
    #[tool(name = "loader_probe", annotations(read_only_hint = true))]
    async fn loader_probe(
        &self,
        Parameters(request): Parameters<ProbeRequest>,
    ) -> Result<Json<ProbeReport>, String> {
        self.run("loader_probe", request, self.on_root(loader::probe))
            .await
    }

    /// Starts a training job in the background (it outlives this request and the client's
    /// connection) and returns its id and status. The configuration and its data are checked
    /// first: a mistake is this call's error, not a failed job. One job trains at a time.
    #[tool(
        name = "train_start",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn train_start(
        &self,
        Parameters(request): Parameters<TrainStartRequest>,
    ) -> Result<Json<JobStatus>, String> {
        let jobs = self.on_jobs(|jobs, ()| Ok(Arc::clone(jobs)));
        let registry = self.lineage.clone();
        // The run records the definition of the tool that started it.
        let tool = registry
            .as_ref()
            .and_then(|registry| registry.get(Kind::Tool, "train_start"))
            .map(|entry| entry.hash);
        self.run("train_start", request, move |request: TrainStartRequest| {
            let status = jobs(())?.start(request.config, tool)?;
            if let (Some(registry), Some(lineage)) = (&registry, &status.record.lineage) {
                let config = &status.record.config;
                let (train, eval) = config.datasets();
                registry.observe(Kind::Dataset, train, &lineage.train_dataset)?;
                if let (Some(path), Some(fingerprint)) = (eval, &lineage.eval_dataset) {
                    registry.observe(Kind::Dataset, path, fingerprint)?;
                }
                if let (Some(path), Some(hash)) = (config.model(), &lineage.model) {
                    registry.observe(Kind::Model, path, hash)?;
                }
            }
            Ok(status)
        })
        .await
    }

    /// A training job's state, last step and loss, checkpoints and outcome.
    #[tool(name = "train_status", annotations(read_only_hint = true))]
    async fn train_status(
        &self,
        Parameters(request): Parameters<JobRequest>,
    ) -> Result<Json<JobStatus>, String> {
        self.run(
            "train_status",
            request,
            self.on_jobs(|jobs, r: JobRequest| jobs.status(&r.job)),
        )
        .await
    }

    /// Stops a running job after its current step, with a final checkpoint (resumable).
    #[tool(
        name = "train_stop",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn train_stop(
        &self,
        Parameters(request): Parameters<JobRequest>,
    ) -> Result<Json<JobStatus>, String> {
        self.run(
            "train_stop",
            request,
            self.on_jobs(|jobs, r: JobRequest| jobs.stop(&r.job)),
        )
        .await
    }

    /// Continues a stopped, failed or interrupted job from its newest valid checkpoint.
    #[tool(
        name = "train_resume",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn train_resume(
        &self,
        Parameters(request): Parameters<JobRequest>,
    ) -> Result<Json<JobStatus>, String> {
        self.run(
            "train_resume",
            request,
            self.on_jobs(|jobs, r: JobRequest| jobs.resume(&r.job)),
        )
        .await
    }

    /// Generates a continuation of `prompt` (at most `max_tokens` tokens; greedy unless a
    /// temperature is given) with the served model, or a loaded adapter.
    #[tool(name = "generate", annotations(read_only_hint = true))]
    async fn generate(
        &self,
        Parameters(request): Parameters<GenerateRequest>,
    ) -> Result<Json<Generation>, String> {
        let hash = crate::trace::arguments_hash(&request);
        let serving = self.serving("generate");
        traced("generate", hash, async move {
            check_max_tokens("generate", request.max_tokens)?;
            let generation = serving?.generate(&request).await?;
            record_usage(&generation);
            Ok(generation)
        })
        .await
    }

    /// Answers a conversation (the model's chat template applied) with the served model.
    #[tool(name = "chat", annotations(read_only_hint = true))]
    async fn chat(
        &self,
        Parameters(request): Parameters<ChatRequest>,
    ) -> Result<Json<Generation>, String> {
        let hash = crate::trace::arguments_hash(&request);
        let serving = self.serving("chat");
        traced("chat", hash, async move {
            check_max_tokens("chat", request.max_tokens)?;
            let generation = serving?.chat(&request).await?;
            record_usage(&generation);
            Ok(generation)
        })
        .await
    }

    /// The serving engine's metrics: requests, tokens, KV blocks in use, prefix-cache hits.
    #[tool(name = "engine_metrics", annotations(read_only_hint = true))]
    async fn engine_metrics(
        &self,
        Parameters(request): Parameters<NoArguments>,
    ) -> Result<Json<EngineMetrics>, String> {
        let hash = crate::trace::arguments_hash(&request);
        let serving = self.serving("engine_metrics");
        traced(
            "engine_metrics",
            hash,
            async move { serving?.metrics().await },
        )
        .await
    }

    /// Loads a PEFT LoRA adapter (a directory under the data root) into the served model, to
    /// be named in `generate` and `chat`.
    #[tool(
        name = "adapter_load",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn adapter_load(
        &self,
        Parameters(request): Parameters<AdapterLoadRequest>,
    ) -> Result<Json<AdapterReport>, String> {
        let hash = crate::trace::arguments_hash(&request);
        let serving = self.serving("adapter_load");
        let path = match (&request.path, &request.job) {
            (Some(path), None) => self.root.resolve(path),
            (None, Some(job)) => self
                .job_store("adapter_load")
                .and_then(|jobs| jobs.adapter(job)),
            _ => Err(crate::Error::InvalidArgument {
                tool: "adapter_load",
                reason: "give exactly one of `path` and `job`".into(),
            }),
        };
        let registry = self.lineage.clone();
        traced("adapter_load", hash, async move {
            let path = path?;
            let report = serving?.load_adapter(&request.name, &path).await?;
            if let Some(registry) = registry {
                let name = match (request.path, request.job) {
                    (Some(path), _) => path,
                    (_, job) => format!("job:{}", job.unwrap_or_default()),
                };
                blocking(move || {
                    registry.observe(Kind::Adapter, &name, &lineage::content_hash(&path)?)
                })
                .await?;
            }
            Ok(report)
        })
        .await
    }

    /// Unloads a LoRA adapter.
    #[tool(
        name = "adapter_unload",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn adapter_unload(
        &self,
        Parameters(request): Parameters<AdapterName>,
    ) -> Result<Json<AdapterReport>, String> {
        let hash = crate::trace::arguments_hash(&request);
        let serving = self.serving("adapter_unload");
        traced("adapter_unload", hash, async move {
            serving?.unload_adapter(&request.name).await
        })
        .await
    }

    /// Waits for a job to leave `running` (or `timeout_s`), sending progress notifications
    /// (step of total steps, loss) when the request carries a progress token. Cancelling the
    /// request ends the wait, not the job.
    #[tool(name = "train_wait", annotations(read_only_hint = true))]
    async fn train_wait(
        &self,
        Parameters(request): Parameters<WaitRequest>,
        cx: RequestContext<RoleServer>,
    ) -> Result<Json<JobStatus>, String> {
        let hash = crate::trace::arguments_hash(&request);
        let jobs = self.on_jobs(|jobs, ()| Ok(Arc::clone(jobs)));
        traced("train_wait", hash, async move {
            let jobs = jobs(())?;
            if !(1..=3600).contains(&request.timeout_s) {
                return Err(crate::Error::InvalidArgument {
                    tool: "train_wait",
                    reason: format!("timeout_s must be 1 to 3600, got {}", request.timeout_s)
                        .into(),
                });
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(request.timeout_s);
            let token = cx.meta.get_progress_token();
            let mut reported = None;
            loop {
                let status = {
                    let (jobs, job) = (Arc::clone(&jobs), request.job.clone());
                    blocking(move || jobs.status(&job)).await?
                };
                // Progress only ever rises (the MCP spec): a resumed run's log can restart below
                // the last step reported.
                if let Some(token) = &token
                    && reported.is_none_or(|last| status.step > last)
                {
                    reported = Some(status.step);
                    let loss = status
                        .loss
                        .map_or_else(String::new, |l| format!(", loss {l:.4}"));
                    let progress =
                        ProgressNotificationParam::new(token.clone(), status.step as f64)
                            .with_total(status.record.total_steps as f64)
                            .with_message(format!(
                                "step {} of {}{loss}",
                                status.step, status.record.total_steps
                            ));
                    let _ = cx.peer.notify_progress(progress).await;
                }
                if status.record.state != JobState::Running
                    || tokio::time::Instant::now() >= deadline
                {
                    return Ok(status);
                }
                tokio::select! {
                    () = cx.ct.cancelled() => return Err(crate::Error::Job {
                        job: request.job.clone().into(),
                        reason: "the wait was cancelled (the job goes on)".into(),
                    }),
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
        .await
    }

    /// Deletes a job with its checkpoints and metrics, irreversibly: only after the user
    /// approves (MCP elicitation; refused when the client cannot ask).
    #[tool(
        name = "job_delete",
        annotations(read_only_hint = false, destructive_hint = true),
        // The result is `Deleted` (or, 2026-07-28, the question): the schema is declared as
        // the macro cannot see it through `CallToolResponse`.
        output_schema = rmcp::handler::server::common::schema_for_output::<Deleted>()
    )]
    async fn job_delete(
        &self,
        Parameters(request): Parameters<JobRequest>,
        InputResponses(responses): InputResponses,
        RequestState(request_state): RequestState,
        cx: RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let hash = crate::trace::arguments_hash(&request);
        let jobs = self.on_jobs(|jobs, ()| Ok(Arc::clone(jobs)));
        let registry = self.lineage.clone();
        let seal = self.seal.clone();
        let result = traced("job_delete", hash, async move {
            let jobs = jobs(())?;
            let status = {
                let (jobs, job) = (Arc::clone(&jobs), request.job.clone());
                blocking(move || jobs.status(&job)).await?
            };
            // The tool's own definition: a change since the user last approved it is said.
            let definition = registry
                .as_ref()
                .and_then(|registry| registry.get(Kind::Tool, "job_delete"));
            let flag = match &definition {
                Some(entry) if entry.changed_since_approval() => format!(
                    " Note: job_delete's definition changed since you approved it ({} now, {} then).",
                    entry.hash,
                    entry.approved.as_deref().unwrap_or("-")
                ),
                _ => String::new(),
            };
            let question = format!(
                "Delete training job {} ({:?}, step {} of {}) and its {} checkpoints? This cannot be undone.{flag}",
                request.job,
                status.record.state,
                status.step,
                status.record.total_steps,
                status.checkpoints.len()
            );
            // What the yes is for: this job as it is now, under this definition of the tool.
            let subject = format!(
                "job_delete {} {} {}",
                request.job,
                status.record.updated_unix_ms,
                definition.as_ref().map_or("", |entry| entry.hash.as_str())
            );
            let answer = approval::ask(
                &cx,
                seal.as_deref(),
                responses.as_ref(),
                request_state.as_deref(),
                &subject,
                &question,
            )
            .await;
            match answer {
                Approval::Granted => {
                    let job = request.job.clone();
                    blocking(move || jobs.delete(&job)).await?;
                    if let (Some(registry), Some(entry)) = (&registry, &definition) {
                        registry.approve(Kind::Tool, "job_delete", &entry.hash)?;
                    }
                    Ok(Ok(Deleted {
                        job: request.job,
                        checkpoints: status.checkpoints.len(),
                    }))
                }
                Approval::Ask(input_required) => Ok(Err(input_required)),
                Approval::Refused(reason) => Err(crate::Error::Job {
                    job: request.job.into(),
                    reason: format!("not deleted: {reason}").into(),
                }),
            }
        })
        .await;
        match result {
            Ok(Json(Ok(deleted))) => match serde_json::to_value(&deleted) {
                Ok(value) => CallToolResult::structured(value).into(),
                Err(error) => {
                    CallToolResult::error(vec![ContentBlock::text(error.to_string())]).into()
                }
            },
            Ok(Json(Err(input_required))) => input_required.into(),
            Err(text) => CallToolResult::error(vec![ContentBlock::text(text)]).into(),
        }
    }

    /// The lineage registry: every tool, prompt, model, adapter and dataset this server has
    /// seen, by content hash, with its versions; a tool changed since a user approved it is
    /// flagged (`changed_since_approval`).
    #[tool(name = "lineage_list", annotations(read_only_hint = true))]
    async fn lineage_list(
        &self,
        Parameters(request): Parameters<NoArguments>,
    ) -> Result<Json<LineageList>, String> {
        let registry = self.lineage.clone();
        self.run("lineage_list", request, move |_| {
            let registry = registry.ok_or_else(|| crate::Error::InvalidArgument {
                tool: "lineage_list",
                reason: "this server keeps no state (start it with --state-dir DIR)".into(),
            })?;
            Ok(LineageList {
                entries: registry
                    .entries()
                    .into_iter()
                    .map(|entry| LineageEntry {
                        changed_since_approval: entry.changed_since_approval(),
                        entry,
                    })
                    .collect(),
            })
        })
        .await
    }

    /// Runs a command (no shell) in the sandbox: it reads the data root and writes only a
    /// scratch directory of its own; no network; CPU, memory, processes, files, time and
    /// output limited. Returns its exit, output and the files it wrote.
    #[tool(
        name = "sandbox_run",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_run(
        &self,
        Parameters(request): Parameters<RunRequest>,
    ) -> Result<Json<RunReport>, String> {
        let sandbox = self.sandbox.clone();
        self.run("sandbox_run", request, move |request: RunRequest| {
            let sandbox = sandbox.ok_or_else(|| crate::Error::InvalidArgument {
                tool: "sandbox_run",
                reason: "this server runs no commands (start it with mcp_server --sandbox)".into(),
            })?;
            let (sandbox, scratch) = &*sandbox;
            crate::tools::sandbox::run(sandbox, scratch, &request)
        })
        .await
    }

    /// Runs a WebAssembly module (a file under the data root, or WebAssembly text) in the
    /// WebAssembly sandbox: its imports are only `mlinfra`'s input, output and file calls, it
    /// reads the data root at `/data` and writes only `/scratch`; fuel, time, memory and
    /// output limited. Returns how it ended, its output and the files it wrote.
    #[tool(
        name = "wasm_run",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn wasm_run(
        &self,
        Parameters(request): Parameters<WasmRunRequest>,
    ) -> Result<Json<WasmRunReport>, String> {
        let wasm = self.wasm.clone();
        let root = Arc::clone(&self.root);
        self.run("wasm_run", request, move |request: WasmRunRequest| {
            let wasm = wasm.ok_or_else(|| crate::Error::InvalidArgument {
                tool: "wasm_run",
                reason: "this server runs no WebAssembly (start it with mcp_server --wasm)".into(),
            })?;
            let (wasm, scratch) = &*wasm;
            crate::tools::wasm::run(wasm, &root, scratch, &request)
        })
        .await
    }

    /// A job's checkpoints (one step's, or all), each verified against its manifest (every
    /// file's size and SHA-256): the tensors it holds with their shapes, the optimizer, its
    /// files. Reads every byte of the checkpoints inspected.
    #[tool(name = "checkpoint_inspect", annotations(read_only_hint = true))]
    async fn checkpoint_inspect(
        &self,
        Parameters(request): Parameters<InspectRequest>,
    ) -> Result<Json<CheckpointList>, String> {
        self.run(
            "checkpoint_inspect",
            request,
            self.on_jobs(|jobs, r: InspectRequest| {
                Ok(CheckpointList {
                    checkpoints: jobs.checkpoints(&r.job, r.step)?,
                })
            }),
        )
        .await
    }

    /// Every training job, newest first, with its state and checkpoints.
    #[tool(name = "train_list", annotations(read_only_hint = true))]
    async fn train_list(
        &self,
        Parameters(request): Parameters<NoArguments>,
    ) -> Result<Json<JobList>, String> {
        self.run(
            "train_list",
            request,
            self.on_jobs(|jobs, _: NoArguments| Ok(JobList { jobs: jobs.list()? })),
        )
        .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AgentServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_completions()
            .enable_prompts()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_tools()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "mlinfra-agent",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Tools over the mlinfra ML stack. Paths are relative to the server's data root; \
                 the datasets there are resources (mlinfra://datasets/{+path}).",
            )
    }

    /// The tools by name, [`TOOLS_PAGE`] a page; the cursor is the next page's first name
    /// (stable across restarts, and across a tool added between pages).
    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = self.tool_router.list_all();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        let start = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => tools
                .iter()
                .position(|tool| tool.name == cursor)
                .ok_or_else(|| {
                    ErrorData::invalid_params(format!("no tools page at cursor {cursor:?}"), None)
                })?,
        };
        let end = (start + TOOLS_PAGE).min(tools.len());
        let next_cursor = tools.get(end).map(|tool| tool.name.to_string());
        let mut result = ListToolsResult::with_all_items(tools[start..end].to_vec());
        result.next_cursor = next_cursor;
        // 2026-07-28 cache hints: the list changes only with the server's version.
        if cx
            .protocol_version()
            .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28)
        {
            result = result.with_ttl_ms(0).with_cache_scope(CacheScope::Public);
        }
        Ok(result)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let cursor = request.and_then(|r| r.cursor);
        let root = Arc::clone(&self.root);
        let datasets = blocking(move || Ok(catalog::datasets(&root)))
            .await
            .map_err(|error| protocol_error(error, |text| ErrorData::internal_error(text, None)))?;
        let (page, next) = page(&datasets, cursor.as_deref())?;
        let resources = page
            .iter()
            .map(|path| {
                Resource::new(catalog::dataset_uri(path), path.clone())
                    .with_description("A dataset: its schema, rows, files and row groups")
                    .with_mime_type("application/json")
            })
            .collect();
        let mut result = ListResourcesResult::with_all_items(resources)
            // Files come and go: a listing is not to be cached.
            .with_ttl_ms(0)
            .with_cache_scope(CacheScope::Private);
        result.next_cursor = next;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(catalog::DATASET_URI_TEMPLATE, "dataset")
            .with_description(
                "Any dataset under the data root by path: its schema, rows, files and row groups",
            )
            .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template])
            .with_ttl_ms(3_600_000)
            .with_cache_scope(CacheScope::Public))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let not_found = |reason: String| {
            ErrorData::invalid_params(reason, Some(serde_json::json!({ "uri": uri.clone() })))
        };
        let Some(path) = catalog::dataset_path(&uri) else {
            return Err(not_found(format!(
                "no such resource: {uri} (datasets are {})",
                catalog::DATASET_URI_TEMPLATE
            )));
        };
        let root = Arc::clone(&self.root);
        let report = blocking(move || datasets::schema(&root, &DatasetPath { path }))
            .await
            .map_err(|error| protocol_error(error, not_found))?;
        let text = serde_json::to_string(&report)
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        let contents = ResourceContents::TextResourceContents {
            uri: uri.clone(),
            mime_type: Some("application/json".into()),
            text,
            meta: None,
        };
        Ok(ReadResourceResult::new(vec![contents])
            .with_ttl_ms(0)
            .with_cache_scope(CacheScope::Private)
            .into())
    }

    // 2025-11-25: a session subscribes to a dataset's URI and is told when its files change;
    // 2026-07-28 clients listen instead (below). See crate::watch.
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let uri = request.uri;
        let root = Arc::clone(&self.root);
        let exists = {
            let (root, uri) = (Arc::clone(&root), uri.clone());
            blocking(move || Ok(Watches::is_dataset(&root, &uri)))
                .await
                .unwrap_or(false)
        };
        if !exists {
            return Err(ErrorData::invalid_params(
                format!("no dataset to subscribe to at {uri}"),
                Some(serde_json::json!({ "uri": uri })),
            ));
        }
        let peer = cx.peer.clone();
        let started = self.watches.start(root, subscriber(&cx), uri, move |uri| {
            let peer = peer.clone();
            async move {
                peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                    .await
                    .is_ok()
            }
        });
        if started {
            Ok(())
        } else {
            Err(ErrorData::invalid_request(
                format!(
                    "this server watches {} datasets already",
                    crate::watch::MAX_WATCHES
                ),
                None,
            ))
        }
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.watches.stop(&subscriber(&cx), &request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // Updates of datasets; the lists of tools, prompts and resources do not change.
        let uris: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| catalog::dataset_path(uri).is_some())
            .cloned()
            .collect();
        Some(
            SubscriptionFilter::builder()
                .resource_subscriptions(uris)
                .build(),
        )
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let uris = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        let Some(stop) = self.watches.reserve() else {
            return Err(ErrorData::invalid_request(
                format!(
                    "this server watches {} datasets already",
                    crate::watch::MAX_WATCHES
                ),
                None,
            ));
        };
        let sink = context.sink().clone();
        let watching =
            crate::watch::watch(Arc::clone(&self.root), uris, stop.clone(), move |uri| {
                let sink = sink.clone();
                async move { sink.notify_resource_updated(uri).await.is_ok() }
            });
        tokio::select! {
            () = context.cancelled() => stop.cancel(),
            () = watching => {}
        }
        self.watches.release();
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(prompt_definitions())
            .with_ttl_ms(3_600_000)
            .with_cache_scope(CacheScope::Public))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != EXPLORE_DATASET {
            return Err(ErrorData::invalid_params(
                format!("no prompt named {}", request.name),
                None,
            ));
        }
        let path = request
            .arguments
            .as_ref()
            .and_then(|arguments| arguments.get("path"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                ErrorData::invalid_params("explore_dataset needs a `path` argument", None)
            })?
            .to_owned();
        let root = Arc::clone(&self.root);
        let request = DatasetPath { path: path.clone() };
        let report = blocking(move || datasets::schema(&root, &request))
            .await
            .map_err(|error| protocol_error(error, |text| ErrorData::invalid_params(text, None)))?;
        let schema = serde_json::to_string_pretty(&report)
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        let messages = vec![
            PromptMessage::new_resource(
                Role::User,
                catalog::dataset_uri(&path),
                Some("application/json".into()),
                Some(schema),
                None,
                None,
                None,
            ),
            PromptMessage::new_text(
                Role::User,
                format!(
                    "Above is the schema of the dataset `{path}`. Call `dataset_sample` with \
                     {{\"path\": \"{path}\", \"rows\": 5}} to see its first rows. Then describe \
                     each column (what it likely holds, its type, whether nulls occur), point out \
                     anything that would hurt training (all-null or constant columns, numbers \
                     stored as text, ids that leak the label), and say which columns could be the \
                     features and which the target."
                ),
            ),
        ];
        Ok(GetPromptResult::new(messages)
            .with_description(format!("Explore the dataset {path}"))
            .into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let completes_a_path = request.argument.name == "path"
            && match &request.r#ref {
                Reference::Prompt(prompt) => prompt.name == EXPLORE_DATASET,
                Reference::Resource(template) => template.uri == catalog::DATASET_URI_TEMPLATE,
                _ => false,
            };
        let info = if completes_a_path {
            let root = Arc::clone(&self.root);
            let typed = request.argument.value;
            let (values, total) =
                blocking(move || Ok(catalog::complete(&root, &typed, CompletionInfo::MAX_VALUES)))
                    .await
                    .map_err(|error| {
                        protocol_error(error, |text| ErrorData::internal_error(text, None))
                    })?;
            let more = total > values.len();
            CompletionInfo::with_pagination(values, u32::try_from(total).ok(), more)
        } else {
            CompletionInfo::new(Vec::new())
        };
        Ok(CompleteResult::new(
            info.map_err(|error| ErrorData::internal_error(error, None))?,
        ))
    }
}

/// The prompts' definitions.
fn prompt_definitions() -> Vec<Prompt> {
    let path = PromptArgument::new("path")
        .with_description("A dataset under the data root")
        .with_required(true);
    vec![Prompt::new(
        EXPLORE_DATASET,
        Some(
            "Explore a dataset: its schema embedded, then sampled rows, summarised for training use",
        ),
        Some(vec![path]),
    )]
}

/// The prompt that walks a model through a dataset.
const EXPLORE_DATASET: &str = "explore_dataset";

/// Resources listed per page.
const PAGE: usize = 100;

/// One page of `items` from `cursor` (an offset the previous page returned), and the next
/// page's cursor.
fn page<'a>(
    items: &'a [String],
    cursor: Option<&str>,
) -> Result<(&'a [String], Option<String>), ErrorData> {
    let start = match cursor {
        None => 0,
        Some(cursor) => cursor
            .parse::<usize>()
            .ok()
            .filter(|&start| start <= items.len())
            .ok_or_else(|| ErrorData::invalid_params(format!("invalid cursor `{cursor}`"), None))?,
    };
    let end = (start + PAGE).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    Ok((&items[start..end], next))
}

/// The most tokens one generation may ask for.
pub const MAX_GENERATE_TOKENS: u32 = 4096;

fn check_max_tokens(tool: &'static str, max_tokens: u32) -> crate::Result<()> {
    if (1..=MAX_GENERATE_TOKENS).contains(&max_tokens) {
        Ok(())
    } else {
        Err(crate::Error::InvalidArgument {
            tool,
            reason: format!("max_tokens must be 1 to {MAX_GENERATE_TOKENS}, got {max_tokens}")
                .into(),
        })
    }
}

/// File-system work (reads, hashing, job records) on tokio's blocking pool; a task that
/// panicked is an [`Error::Internal`](crate::Error::Internal).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(crate::Error::Internal {
                reason: format!("a worker task failed: {join}").into(),
            })
        })
}

/// A failure as a protocol error: an internal one as such, any other as the caller's
/// (`caller` builds it from the error's text).
fn protocol_error(error: crate::Error, caller: impl FnOnce(String) -> ErrorData) -> ErrorData {
    match error {
        crate::Error::Internal { reason } => ErrorData::internal_error(reason.to_string(), None),
        other => caller(error_text(&other)),
    }
}
