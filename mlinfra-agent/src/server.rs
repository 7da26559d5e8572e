//! [`AgentServer`]: the MCP server whose tools are the stack. The protocol (both eras: the
//! 2025-11-25 handshake with sessions and 2026-07-28 stateless requests), the JSON-RPC
//! framing and the tool schemas come from rmcp, the official Rust SDK; this type holds what
//! the tools need and says which tools there are.
//!
//! A tool's failure (a refused path, a corrupt file) is a tool result with `isError: true`
//! and the error's message, which the model can read and act on; protocol errors (an unknown
//! tool, arguments that do not match the schema) stay JSON-RPC errors.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use tracing::Instrument;

use crate::root::DataRoot;
use crate::tools::datasets::{
    self, ConvertReport, ConvertRequest, DatasetPath, FingerprintReport, SampleReport,
    SampleRequest, SchemaReport, VerifyReport, VerifyRequest,
};

/// The MCP server: the stack's tools over one data root. Cheap to clone (each HTTP session
/// gets one).
#[derive(Debug, Clone)]
pub struct AgentServer {
    root: Arc<DataRoot>,
    tool_router: ToolRouter<Self>,
}

impl AgentServer {
    /// Tools that read files under `root` and nowhere else.
    pub fn new(root: DataRoot) -> Self {
        Self {
            root: Arc::new(root),
            tool_router: Self::tool_router(),
        }
    }

    /// The data root.
    pub fn data_root(&self) -> &DataRoot {
        &self.root
    }

    /// Runs tool `tool`'s `work` on `request` on tokio's blocking pool (file reads and hashing) inside its
    /// trace span (see [`crate::trace`]), a failure becoming the tool's error text.
    async fn run<R, T>(
        &self,
        tool: &'static str,
        request: R,
        work: fn(&DataRoot, &R) -> crate::Result<T>,
    ) -> Result<Json<T>, String>
    where
        R: serde::Serialize + Send + 'static,
        T: Send + 'static,
    {
        let span = tracing::info_span!(
            "execute_tool",
            otel.name = format!("execute_tool {tool}"),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = tool,
            mcp.method.name = "tools/call",
            gen_ai.tool.call.arguments.hash = crate::trace::arguments_hash(&request),
            outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let root = Arc::clone(&self.root);
        let result = match tokio::task::spawn_blocking(move || work(&root, &request))
            .instrument(span.clone())
            .await
        {
            Ok(result) => result.map_err(|error| (error_kind(&error), error_text(&error))),
            Err(join) => Err(("task", format!("the tool's task failed: {join}"))),
        };
        match &result {
            Ok(_) => span.record("outcome", "ok"),
            Err((kind, _)) => span
                .record("outcome", "tool_error")
                .record("error.type", *kind),
        };
        result.map(Json).map_err(|(_, text)| text)
    }
}

/// The error's kind, for the trace's `error.type`.
fn error_kind(error: &crate::Error) -> &'static str {
    match error {
        crate::Error::PathRefused { .. } => "path_refused",
        crate::Error::InvalidArgument { .. } => "invalid_argument",
        crate::Error::Data(_) => "data",
        _ => "other",
    }
}

/// The error and its causes, one line.
fn error_text(error: &dyn std::error::Error) -> String {
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
        self.run("dataset_schema", request, datasets::schema).await
    }

    /// A dataset's first rows as JSON objects (1 to 100 rows, at most 1 MiB of JSON).
    #[tool(name = "dataset_sample", annotations(read_only_hint = true))]
    async fn dataset_sample(
        &self,
        Parameters(request): Parameters<SampleRequest>,
    ) -> Result<Json<SampleReport>, String> {
        self.run("dataset_sample", request, datasets::sample).await
    }

    /// A dataset's content fingerprint (BLAKE3 over its schema and every file's bytes): equal
    /// exactly when the data is. Reads every byte.
    #[tool(name = "dataset_fingerprint", annotations(read_only_hint = true))]
    async fn dataset_fingerprint(
        &self,
        Parameters(request): Parameters<DatasetPath>,
    ) -> Result<Json<FingerprintReport>, String> {
        self.run("dataset_fingerprint", request, datasets::fingerprint)
            .await
    }

    /// Whether a dataset still has the fingerprint recorded earlier (its bytes unchanged).
    /// Reads every byte.
    #[tool(name = "dataset_verify", annotations(read_only_hint = true))]
    async fn dataset_verify(
        &self,
        Parameters(request): Parameters<VerifyRequest>,
    ) -> Result<Json<VerifyReport>, String> {
        self.run("dataset_verify", request, datasets::verify).await
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
        self.run("dataset_convert", request, datasets::convert)
            .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AgentServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "mlinfra-agent",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Tools over the mlinfra ML stack. Paths are relative to the server's data root.",
            )
    }
}
