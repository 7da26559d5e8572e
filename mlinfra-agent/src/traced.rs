//! A span around every MCP request and notification a handler serves, whatever the handler.
//!
//! [`Traced`] wraps a [`Handler`](crate::Handler) and delegates every `ServerHandler` method
//! to it inside a span named after the method (`tools/list`, `tools/call dataset_schema`,
//! `resources/read`...), with OpenTelemetry's MCP attributes: `mcp.method.name`,
//! `jsonrpc.request.id`, `mcp.session.id` (HTTP sessions), `gen_ai.tool.name` for tool calls,
//! and on completion `outcome` (`ok` or `error`) and `error.type` (the JSON-RPC error code). A
//! tool call's `execute_tool` span ([`crate::trace`]) is its child. The transports wrap what
//! they serve in it, so the conformance fixtures' server is traced as the product is.
//!
//! Every method is listed here, not only those [`AgentServer`](crate::AgentServer) overrides:
//! a wrapper that let one fall through to the trait's default would answer that method as if
//! the inner handler did not implement it.

use std::borrow::Cow;

use rmcp::ErrorData as McpError;
use rmcp::ServerHandler;
use rmcp::model::*;
use rmcp::service::{
    MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext,
};
use tracing::Instrument;

/// `H`, with a span around each request (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Traced<H> {
    inner: H,
}

impl<H> Traced<H> {
    /// Wraps `inner`.
    pub fn new(inner: H) -> Self {
        Self { inner }
    }
}

/// The span of one request: its method, id and session. With no subscriber listening, a
/// disabled span: nothing is formatted or looked up.
fn request_span(
    method: &str,
    target: Option<&str>,
    context: &RequestContext<RoleServer>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "mcp_request",
        otel.name = match target {
            Some(target) => format!("{method} {target}"),
            None => method.to_owned(),
        },
        mcp.method.name = method,
        jsonrpc.request.id = %context.id,
        mcp.session.id = tracing::field::Empty,
        gen_ai.tool.name = target,
        outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if !span.is_disabled()
        && let Some(session) = session_id(context)
    {
        span.record("mcp.session.id", session);
    }
    span
}

/// The HTTP session a request belongs to (`Mcp-Session-Id`); `None` on stdio and for
/// stateless requests.
pub(crate) fn session_id(context: &RequestContext<RoleServer>) -> Option<&str> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.headers.get("mcp-session-id"))
        .and_then(|value| value.to_str().ok())
}

/// Runs `work` in `span`, recording how it ended.
async fn finish<T>(
    span: tracing::Span,
    work: impl Future<Output = Result<T, McpError>>,
) -> Result<T, McpError> {
    let result = work.instrument(span.clone()).await;
    match &result {
        Ok(_) => span.record("outcome", "ok"),
        Err(error) => span
            .record("outcome", "error")
            .record("error.type", error.code.0),
    };
    result
}

/// Delegates request methods that take parameters, each in its span.
macro_rules! traced_requests {
    ($($name:ident($request:ty) -> $output:ty = $method:literal;)*) => {
        $(
            fn $name(
                &self,
                request: $request,
                context: RequestContext<RoleServer>,
            ) -> impl Future<Output = Result<$output, McpError>> + MaybeSendFuture + '_ {
                let span = request_span($method, None, &context);
                finish(span, self.inner.$name(request, context))
            }
        )*
    };
}

/// Delegates notification handlers, each in its span.
macro_rules! traced_notifications {
    ($($name:ident($($notification:ty)?) = $method:literal;)*) => {
        $(
            fn $name(
                &self,
                $(notification: $notification,)?
                context: NotificationContext<RoleServer>,
            ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
                let span = tracing::info_span!("mcp_notification", otel.name = $method, mcp.method.name = $method);
                self.inner.$name($(traced_notifications!(@arg notification $notification),)? context).instrument(span)
            }
        )*
    };
    (@arg $arg:ident $ty:ty) => { $arg };
}

// The legacy methods (logging, resources/subscribe) are forwarded too: 2025-11-25 clients call
// them.
#[expect(deprecated, reason = "a wrapper forwards the legacy methods as well")]
impl<H: ServerHandler> ServerHandler for Traced<H> {
    traced_requests! {
        complete(CompleteRequestParams) -> CompleteResult = "completion/complete";
        set_level(SetLevelRequestParams) -> () = "logging/setLevel";
        get_prompt(GetPromptRequestParams) -> GetPromptResponse = "prompts/get";
        list_prompts(Option<PaginatedRequestParams>) -> ListPromptsResult = "prompts/list";
        list_resources(Option<PaginatedRequestParams>) -> ListResourcesResult = "resources/list";
        list_resource_templates(Option<PaginatedRequestParams>) -> ListResourceTemplatesResult
            = "resources/templates/list";
        read_resource(ReadResourceRequestParams) -> ReadResourceResponse = "resources/read";
        subscribe(SubscribeRequestParams) -> () = "resources/subscribe";
        unsubscribe(UnsubscribeRequestParams) -> () = "resources/unsubscribe";
        list_tools(Option<PaginatedRequestParams>) -> ListToolsResult = "tools/list";
        initialize(InitializeRequestParams) -> InitializeResult = "initialize";
        on_custom_request(CustomRequest) -> CustomResult = "custom";
        get_task(GetTaskParams) -> GetTaskResult = "tasks/get";
        update_task(UpdateTaskParams) -> () = "tasks/update";
        cancel_task(CancelTaskParams) -> () = "tasks/cancel";
        list_skills(Option<PaginatedRequestParams>) -> ListSkillsResult = "skills/list";
        get_skill(GetSkillRequestParams) -> GetSkillResult = "skills/get";
        read_resource_directory(ReadResourceDirectoryRequestParams) -> ReadResourceDirectoryResult
            = "resources/directory/read";
    }

    traced_notifications! {
        on_cancelled(CancelledNotificationParam) = "notifications/cancelled";
        on_progress(ProgressNotificationParam) = "notifications/progress";
        on_initialized() = "notifications/initialized";
        on_roots_list_changed() = "notifications/roots/list_changed";
        on_custom_notification(CustomNotification) = "notifications/custom";
    }

    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        let span = request_span("tools/call", Some(&request.name), &context);
        finish(span, self.inner.call_tool(request, context))
    }

    fn ping(
        &self,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        let span = request_span("ping", None, &context);
        finish(span, self.inner.ping(context))
    }

    fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<DiscoverResult, McpError>> + MaybeSendFuture + '_ {
        let span = request_span("server/discover", None, &context);
        finish(span, self.inner.discover(context))
    }

    fn listen(
        &self,
        context: SubscriptionContext,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.listen(context)
    }

    fn negotiate_initialize(
        &self,
        request: &InitializeRequestParams,
    ) -> Result<InitializeResult, McpError> {
        self.inner.negotiate_initialize(request)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        self.inner.accepted_subscription_filter(requested)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }
}
