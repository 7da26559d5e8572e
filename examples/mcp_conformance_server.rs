//! `mcp_conformance_server`: the fixtures the official MCP conformance suite calls, served by
//! mlinfra-agent's runtime (its Streamable HTTP transport, Host/Origin validation and body
//! limits, the SDK it pins), so the suite's verdict is about our runtime and not another one.
//!
//! ```text
//! $ cargo run -p mlinfra-examples --example mcp_conformance_server -- --http 127.0.0.1:8931
//! mcp_conformance_server: MCP endpoint http://127.0.0.1:8931/mcp
//! $ scripts/mcp-conformance http://127.0.0.1:8931/mcp
//! ```
//!
//! `--stdio` serves the same fixtures on stdin and stdout instead (a client spawns it;
//! benches/compare/mcp.sh times `test_simple_text` both ways). Status lines go to stderr.
//!
//! The suite (`@modelcontextprotocol/conformance`) defines the fixtures: tools named `test_*`,
//! resources under `test://`, prompts `test_*`, with literal contents it compares. They are
//! not the product's tools (`mcp_server` serves those); this server exists so the protocol
//! surface the product stands on (both revisions, 2025-11-25 sessions and 2026-07-28
//! stateless requests; sampling, elicitation and logging to the client; progress;
//! subscriptions; multi-round-trip `input_required` results) is checked end to end in CI.

// Sampling, logging and roots are deprecated by SEP-2577 (after 2026-07-28), and the
// 2025-11-25 requirement set still calls them: the fixtures serve both.
#![allow(deprecated)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use mlinfra_agent::mcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities,
    CompleteRequestParams, CompleteResult, CompletionInfo, ContentBlock,
    CreateMessageRequestParams, ElicitRequestParams, ElicitationSchema, ErrorData,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, InputRequest,
    InputRequests, InputRequiredResult, InputResponses, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam, Prompt,
    PromptArgument, PromptListChangedNotification, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, RequestStateCodec, Resource, ResourceContents,
    ResourceTemplate, Role, SamplingMessage, ServerCapabilities, ServerConfig, ServerNotification,
    SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, Tool,
    ToolListChangedNotification, UnsubscribeRequestParams,
};
use mlinfra_agent::mcp::service::{RequestContext, SubscriptionContext, SubscriptionSink};
use mlinfra_agent::mcp::{RoleServer, ServerHandler};
use mlinfra_agent::{HttpOptions, serve_http, serve_stdio};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

const USAGE: &str =
    "usage: mcp_conformance_server [--http ADDR | --stdio]   (default: --http 127.0.0.1:0)";

/// A 1x1 PNG and a minimal WAV: the suite checks that image and audio content carry data and
/// a MIME type, not which bytes.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

/// How long list and read results may be cached (2026-07-28's `ttlMs`): five minutes, the
/// fixtures never change.
const CACHE_TTL_MS: u64 = 300_000;

/// The fixture server. Clones share the subscriptions.
#[derive(Clone)]
struct Fixtures {
    /// URIs subscribed to through 2025-11-25's `resources/subscribe`.
    subscribed: Arc<Mutex<HashSet<String>>>,
    /// Open 2026-07-28 `subscriptions/listen` streams.
    listeners: Arc<Mutex<Vec<SubscriptionSink>>>,
    /// Seals `requestState` (HMAC): a client can echo it but not forge or alter it.
    state_codec: Arc<RequestStateCodec>,
}

impl Fixtures {
    fn new() -> anyhow::Result<Self> {
        // A fresh key each start: states live for one exchange, never across restarts.
        let mut key = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").context("/dev/urandom")?,
            &mut key,
        )
        .context("reading /dev/urandom")?;
        Ok(Self {
            subscribed: Arc::default(),
            listeners: Arc::default(),
            state_codec: Arc::new(RequestStateCodec::try_new(key.to_vec())?),
        })
    }

    fn seal(&self, state: &Value) -> Result<String, ErrorData> {
        self.state_codec
            .seal_json(state)
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))
    }

    /// The state the client echoed, if any, verified: an altered one is a protocol error.
    fn opened_state(&self, sealed: Option<&str>) -> Result<Option<Value>, ErrorData> {
        sealed
            .map(|sealed| {
                self.state_codec.open_json(sealed).map_err(|_| {
                    ErrorData::invalid_params("requestState integrity check failed", None)
                })
            })
            .transpose()
    }

    /// Sends `notification` to every open listen stream that asked for it; streams that have
    /// closed are dropped.
    async fn notify_listeners(&self, notification: ServerNotification) {
        let sinks = self.listeners.lock().map(|l| l.clone()).unwrap_or_default();
        for sink in sinks {
            // A stream that did not ask for this kind refuses it: that is the filter working.
            let _ = sink.send(notification.clone()).await;
        }
    }
}

/// A wire literal as an SDK type: the fixtures are the suite's JSON, written as JSON.
fn wire<T: DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value)
        .map_err(|error| ErrorData::internal_error(format!("fixture literal: {error}"), None))
}

fn text(message: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(message)]).into()
}

/// `(name, description, inputSchema)`: the tools, `test_simple_text` first (the suite's header
/// probes call the first tool with no arguments).
fn tool_specs() -> Vec<(&'static str, &'static str, Value)> {
    let none = json!({"type": "object", "properties": {}});
    let string_arg = |name: &str, description: &str| {
        json!({
            "type": "object",
            "properties": {name: {"type": "string", "description": description}},
            "required": [name],
        })
    };
    let mut specs = vec![
        ("test_simple_text", "Returns a fixed text.", none.clone()),
        ("test_image_content", "Returns a PNG image.", none.clone()),
        ("test_audio_content", "Returns a WAV clip.", none.clone()),
        (
            "test_embedded_resource",
            "Returns an embedded text resource.",
            none.clone(),
        ),
        (
            "test_multiple_content_types",
            "Returns text, an image and a resource.",
            none.clone(),
        ),
        (
            "test_tool_with_logging",
            "Logs three messages to the client while running.",
            none.clone(),
        ),
        (
            "test_error_handling",
            "Fails as a tool: a result with isError.",
            none.clone(),
        ),
        (
            "test_tool_with_progress",
            "Reports progress 0, 50, 100 of 100.",
            none.clone(),
        ),
        (
            "test_sampling",
            "Asks the client's model to complete a prompt.",
            string_arg("prompt", "The prompt to send"),
        ),
        (
            "test_elicitation",
            "Asks the user for a username and an email.",
            string_arg("message", "The message to show"),
        ),
        (
            "test_elicitation_sep1034_defaults",
            "Asks for values that all have defaults (SEP-1034).",
            none.clone(),
        ),
        (
            "test_elicitation_sep1330_enums",
            "Asks with the five enum schema forms (SEP-1330).",
            none.clone(),
        ),
        (
            "test_reconnection",
            "Answers after a short pause (SSE resumption).",
            none.clone(),
        ),
        (
            "test_missing_capability",
            "Needs the client's sampling capability.",
            none.clone(),
        ),
        (
            "test_streaming_elicitation",
            "Answers without a request on the response stream.",
            none.clone(),
        ),
        (
            "test_logging_tool",
            "Logs only at the level the request asks for.",
            none.clone(),
        ),
        (
            "test_trigger_tool_change",
            "Announces a change of the tool list to listeners.",
            none.clone(),
        ),
        (
            "test_trigger_prompt_change",
            "Announces a change of the prompt list to listeners.",
            none.clone(),
        ),
    ];
    for (name, description) in [
        (
            "test_input_required_result_elicitation",
            "Asks for the user's name, then greets.",
        ),
        (
            "test_input_required_result_sampling",
            "Asks the client's model a question first.",
        ),
        (
            "test_input_required_result_list_roots",
            "Asks for the client's roots first.",
        ),
        (
            "test_input_required_result_request_state",
            "Round-trips a sealed requestState.",
        ),
        (
            "test_input_required_result_multiple_inputs",
            "Asks for three inputs in one round.",
        ),
        (
            "test_input_required_result_multi_round",
            "Asks in two rounds.",
        ),
        (
            "test_input_required_result_tampered_state",
            "Refuses an altered requestState.",
        ),
        (
            "test_input_required_result_capabilities",
            "Asks only for what the client declared.",
        ),
    ] {
        specs.push((name, description, none.clone()));
    }
    specs.push((
        "json_schema_2020_12_tool",
        "Takes a JSON Schema 2020-12 input schema, kept verbatim.",
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {"address": {"$anchor": "address", "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": false,
        }),
    ));
    specs
}

/// An elicitation (form) input request.
fn elicit(message: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": message,
            "requestedSchema": {"type": "object", "properties": properties, "required": required},
        },
    })
}

fn sample(question: &str, max_tokens: u32) -> Value {
    json!({
        "method": "sampling/createMessage",
        "params": {
            "messages": [{"role": "user", "content": {"type": "text", "text": question}}],
            "maxTokens": max_tokens,
        },
    })
}

fn list_roots() -> Value {
    json!({"method": "roots/list"})
}

/// `input_required` with these requests (`key`, wire request) and an optional sealed state.
fn input_required(
    requests: Vec<(&str, Value)>,
    state: Option<String>,
) -> Result<InputRequiredResult, ErrorData> {
    let mut map = InputRequests::new();
    for (key, request) in requests {
        map.insert(key.to_owned(), wire::<InputRequest>(request)?);
    }
    Ok(InputRequiredResult::new(Some(map), state))
}

/// The answer to input request `key`, validated: `None` when absent (ask again), an error when
/// present but not an elicitation result (`{action, content?}`), otherwise the accepted
/// content (an empty object for a decline or a cancel).
fn elicited(
    responses: Option<&InputResponses>,
    key: &str,
) -> Result<Option<Map<String, Value>>, ErrorData> {
    let Some(answer) = responses.and_then(|r| r.get(key)) else {
        return Ok(None);
    };
    let malformed = || {
        ErrorData::invalid_params(
            format!("inputResponses.{key} is not an elicitation result"),
            None,
        )
    };
    let action = answer
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(malformed)?;
    match (action, answer.get("content")) {
        ("accept", Some(Value::Object(content))) => Ok(Some(content.clone())),
        ("accept", _) => Err(malformed()),
        ("decline" | "cancel", _) => Ok(Some(Map::new())),
        _ => Err(malformed()),
    }
}

fn answered(responses: Option<&InputResponses>, key: &str) -> bool {
    responses.is_some_and(|r| r.get(key).is_some_and(Value::is_object))
}

impl Fixtures {
    async fn call(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let responses = request.input_responses.as_ref();
        let state = self.opened_state(request.request_state.as_deref())?;
        let round = state
            .as_ref()
            .and_then(|s| s.get("round"))
            .and_then(Value::as_u64);
        match request.name.as_ref() {
            "test_simple_text" => Ok(text("This is a simple text response for testing.")),
            "test_image_content" => {
                Ok(CallToolResult::success(vec![ContentBlock::image(PNG, "image/png")]).into())
            }
            "test_audio_content" => {
                Ok(CallToolResult::success(vec![ContentBlock::audio(WAV, "audio/wav")]).into())
            }
            "test_embedded_resource" => Ok(CallToolResult::success(vec![ContentBlock::resource(
                wire(json!({
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content.",
                }))?,
            )])
            .into()),
            "test_multiple_content_types" => Ok(CallToolResult::success(vec![
                ContentBlock::text("Multiple content types test:"),
                ContentBlock::image(PNG, "image/png"),
                ContentBlock::resource(wire(json!({
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": "{\"test\":\"data\",\"value\":123}",
                }))?),
            ])
            .into()),
            "test_tool_with_logging" => {
                for message in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ] {
                    log(&cx, LoggingLevel::Info, message).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(text("Logging test completed"))
            }
            "test_error_handling" => Ok(CallToolResult::error(vec![ContentBlock::text(
                "This tool intentionally returns an error for testing",
            )])
            .into()),
            "test_tool_with_progress" => {
                if let Some(token) = cx.meta.get_progress_token() {
                    for step in [0.0, 50.0, 100.0] {
                        let progress = ProgressNotificationParam::new(token.clone(), step)
                            .with_total(100.0)
                            .with_message(format!("Completed step {step} of 100"));
                        let _ = cx.peer.notify_progress(progress).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Ok(text("Progress test completed"))
            }
            "test_sampling" => {
                let prompt = args
                    .get("prompt")
                    .and_then(Value::as_str)
                    .unwrap_or("Hello");
                let params =
                    CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 100);
                Ok(match cx.peer.create_message(params).await {
                    Ok(reply) => {
                        let said = reply
                            .message
                            .content
                            .first()
                            .and_then(|c| c.as_text())
                            .map(|t| t.text.clone());
                        text(format!("LLM response: {}", said.unwrap_or_default()))
                    }
                    Err(error) => CallToolResult::error(vec![ContentBlock::text(format!(
                        "sampling failed: {error}"
                    ))])
                    .into(),
                })
            }
            "test_elicitation" => {
                let message = args
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("Please provide your information");
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "username": {"type": "string", "description": "User's response"},
                        "email": {"type": "string", "description": "User's email address"},
                    },
                    "required": ["username", "email"],
                });
                self.ask(&cx, message, schema).await
            }
            "test_elicitation_sep1034_defaults" => {
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "User's name", "default": "John Doe"},
                        "age": {"type": "integer", "description": "User's age", "default": 30},
                        "score": {"type": "number", "description": "User's score", "default": 95.5},
                        "status": {"type": "string", "description": "User's status",
                            "enum": ["active", "inactive", "pending"], "default": "active"},
                        "verified": {"type": "boolean", "description": "Whether user is verified", "default": true},
                    },
                });
                self.ask(&cx, "Please provide values (all have defaults)", schema)
                    .await
            }
            "test_elicitation_sep1330_enums" => {
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                        "titledSingle": {"type": "string", "oneOf": [
                            {"const": "value1", "title": "First Option"},
                            {"const": "value2", "title": "Second Option"},
                            {"const": "value3", "title": "Third Option"}]},
                        "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"]},
                        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                        "titledMulti": {"type": "array", "items": {"anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"}]}},
                    },
                });
                self.ask(&cx, "Test enum schema improvements", schema).await
            }
            "test_reconnection" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(text("Reconnection test completed"))
            }
            "json_schema_2020_12_tool" => {
                let name = args.get("name").and_then(Value::as_str).unwrap_or("world");
                Ok(text(format!("Hello, {name}!")))
            }
            "test_missing_capability" => {
                let declared = cx
                    .client_capabilities()
                    .is_some_and(|c| c.sampling.is_some());
                if declared {
                    Ok(text("The client can sample: this tool may run."))
                } else {
                    let required: ClientCapabilities = wire(json!({"sampling": {}}))?;
                    Err(ErrorData::missing_required_client_capability(required))
                }
            }
            "test_streaming_elicitation" => Ok(text(
                "On 2026-07-28 a server asks through input_required results, never on the response stream.",
            )),
            "test_logging_tool" => {
                if let Some(level) = cx.meta.log_level() {
                    log(&cx, level, "test_logging_tool ran").await;
                }
                Ok(text("Logged at the requested level, if any."))
            }
            "test_trigger_tool_change" => {
                self.notify_listeners(ServerNotification::ToolListChangedNotification(
                    ToolListChangedNotification::default(),
                ))
                .await;
                Ok(text("tools/list_changed sent to listeners"))
            }
            "test_trigger_prompt_change" => {
                self.notify_listeners(ServerNotification::PromptListChangedNotification(
                    PromptListChangedNotification::default(),
                ))
                .await;
                Ok(text("prompts/list_changed sent to listeners"))
            }
            "test_input_required_result_elicitation" => match elicited(responses, "user_name")? {
                Some(content) => {
                    let name = content
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("stranger");
                    Ok(text(format!("Hello, {name}!")))
                }
                None => Ok(input_required(
                    vec![(
                        "user_name",
                        elicit(
                            "What is your name?",
                            json!({"name": {"type": "string"}}),
                            &["name"],
                        ),
                    )],
                    None,
                )?
                .into()),
            },
            "test_input_required_result_sampling" => {
                if answered(responses, "capital_question") {
                    Ok(text("Sampling answered; the call is complete."))
                } else {
                    Ok(input_required(
                        vec![(
                            "capital_question",
                            sample("What is the capital of France?", 100),
                        )],
                        None,
                    )?
                    .into())
                }
            }
            "test_input_required_result_list_roots" => {
                if answered(responses, "client_roots") {
                    Ok(text("Roots answered; the call is complete."))
                } else {
                    Ok(input_required(vec![("client_roots", list_roots())], None)?.into())
                }
            }
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => {
                match (round, elicited(responses, "confirm")?) {
                    (Some(1), Some(_)) => Ok(text("state-ok: the echoed request state verified.")),
                    _ => {
                        let confirm = elicit(
                            "Please confirm",
                            json!({"ok": {"type": "boolean"}}),
                            &["ok"],
                        );
                        let state = self.seal(&json!({"tool": request.name, "round": 1}))?;
                        Ok(input_required(vec![("confirm", confirm)], Some(state))?.into())
                    }
                }
            }
            "test_input_required_result_multiple_inputs" => {
                let keys = ["user_name", "greeting", "client_roots"];
                if round == Some(1) && keys.iter().all(|key| answered(responses, key)) {
                    Ok(text("Every input answered; the call is complete."))
                } else {
                    let state = self.seal(&json!({"tool": request.name, "round": 1}))?;
                    Ok(input_required(
                        vec![
                            (
                                "user_name",
                                elicit(
                                    "What is your name?",
                                    json!({"name": {"type": "string"}}),
                                    &["name"],
                                ),
                            ),
                            ("greeting", sample("Generate a greeting", 50)),
                            ("client_roots", list_roots()),
                        ],
                        Some(state),
                    )?
                    .into())
                }
            }
            "test_input_required_result_multi_round" => {
                let name = state
                    .as_ref()
                    .and_then(|s| s.get("name"))
                    .and_then(Value::as_str);
                match (round, name) {
                    (Some(2), Some(name)) => match elicited(responses, "step2")? {
                        Some(content) => {
                            let color = content
                                .get("color")
                                .and_then(Value::as_str)
                                .unwrap_or("no colour");
                            Ok(text(format!(
                                "Multi-round complete for {name} who likes {color}"
                            )))
                        }
                        None => self.multi_round_step2(name),
                    },
                    (Some(1), _) => match elicited(responses, "step1")? {
                        Some(content) => {
                            let name = content
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("stranger");
                            self.multi_round_step2(name)
                        }
                        None => self.multi_round_step1(),
                    },
                    _ => self.multi_round_step1(),
                }
            }
            "test_input_required_result_capabilities" => {
                let capabilities = cx.client_capabilities().unwrap_or_default();
                let mut requests = Vec::new();
                if capabilities.sampling.is_some() {
                    requests.push(("sample", sample("Sample request", 50)));
                }
                if capabilities.elicitation.is_some() {
                    requests.push((
                        "confirm",
                        elicit(
                            "Please confirm",
                            json!({"ok": {"type": "boolean"}}),
                            &["ok"],
                        ),
                    ));
                }
                if requests.iter().any(|(key, _)| answered(responses, key)) {
                    Ok(text("Declared-capability input answered."))
                } else if requests.is_empty() {
                    Ok(text("The client declared nothing to ask through."))
                } else {
                    Ok(input_required(requests, None)?.into())
                }
            }
            other => Err(ErrorData::invalid_params(
                format!("no tool named {other}"),
                None,
            )),
        }
    }

    fn multi_round_step1(&self) -> Result<CallToolResponse, ErrorData> {
        let state = self.seal(&json!({"round": 1}))?;
        let step1 = elicit(
            "Step 1: What is your name?",
            json!({"name": {"type": "string"}}),
            &["name"],
        );
        Ok(input_required(vec![("step1", step1)], Some(state))?.into())
    }

    fn multi_round_step2(&self, name: &str) -> Result<CallToolResponse, ErrorData> {
        let state = self.seal(&json!({"round": 2, "name": name}))?;
        let step2 = elicit(
            "Step 2: What is your favorite color?",
            json!({"color": {"type": "string"}}),
            &["color"],
        );
        Ok(input_required(vec![("step2", step2)], Some(state))?.into())
    }

    /// 2025-11-25 elicitation: a request to the client on the session, the answer reported.
    async fn ask(
        &self,
        cx: &RequestContext<RoleServer>,
        message: &str,
        schema: Value,
    ) -> Result<CallToolResponse, ErrorData> {
        let params = ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: message.to_owned(),
            requested_schema: wire::<ElicitationSchema>(schema)?,
        };
        Ok(match cx.peer.create_elicitation(params).await {
            Ok(reply) => text(format!(
                "Elicitation answered: {}",
                serde_json::to_string(&reply).unwrap_or_default()
            )),
            Err(error) => CallToolResult::error(vec![ContentBlock::text(format!(
                "elicitation failed: {error}"
            ))])
            .into(),
        })
    }
}

/// A log message to the client (`notifications/message`), logger `conformance`.
async fn log(cx: &RequestContext<RoleServer>, level: LoggingLevel, message: &str) {
    let params =
        LoggingMessageNotificationParam::new(level, json!(message)).with_logger("conformance");
    let _ = cx.peer.notify_logging_message(params).await;
}

fn resources() -> Result<Vec<Resource>, ErrorData> {
    // `test://static-text` first: the caching scenario reads the first resource listed.
    wire(json!([
        {"uri": "test://static-text", "name": "static-text", "description": "A fixed text resource.", "mimeType": "text/plain"},
        {"uri": "test://static-binary", "name": "static-binary", "description": "A fixed PNG.", "mimeType": "image/png"},
        {"uri": "test://watched-resource", "name": "watched-resource", "description": "A resource to subscribe to.", "mimeType": "text/plain"},
    ]))
}

fn read(uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let contents = match uri {
        "test://static-text" => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."})
        }
        "test://static-binary" => json!({"uri": uri, "mimeType": "image/png", "blob": PNG}),
        "test://watched-resource" => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"})
        }
        _ => match uri
            .strip_prefix("test://template/")
            .and_then(|rest| rest.strip_suffix("/data"))
        {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                let data =
                    json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
                json!({"uri": uri, "mimeType": "application/json", "text": data.to_string()})
            }
            _ => {
                return Err(ErrorData::invalid_params(
                    "Resource not found",
                    Some(json!({"uri": uri})),
                ));
            }
        },
    };
    Ok(
        ReadResourceResult::new(vec![wire::<ResourceContents>(contents)?])
            .with_ttl_ms(CACHE_TTL_MS)
            .with_cache_scope(CacheScope::Private),
    )
}

fn prompts() -> Vec<Prompt> {
    let argument = |name: &str, description: &str| {
        PromptArgument::new(name)
            .with_description(description)
            .with_required(true)
    };
    vec![
        Prompt::new(
            "test_simple_prompt",
            Some("A prompt with no arguments."),
            None,
        ),
        Prompt::new(
            "test_prompt_with_arguments",
            Some("A prompt that fills in two arguments."),
            Some(vec![
                argument("arg1", "First test argument"),
                argument("arg2", "Second test argument"),
            ]),
        ),
        Prompt::new(
            "test_prompt_with_embedded_resource",
            Some("A prompt that embeds a resource."),
            Some(vec![argument(
                "resourceUri",
                "URI of the resource to embed",
            )]),
        ),
        Prompt::new(
            "test_prompt_with_image",
            Some("A prompt with an image."),
            None,
        ),
        Prompt::new(
            "test_input_required_result_prompt",
            Some("A prompt that asks for context first."),
            None,
        ),
    ]
}

impl Fixtures {
    fn prompt(&self, request: &GetPromptRequestParams) -> Result<GetPromptResponse, ErrorData> {
        let argument = |name: &str| {
            request
                .arguments
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ErrorData::invalid_params(format!("prompt argument {name} is required"), None)
                })
        };
        let messages: Vec<PromptMessage> = match request.name.as_str() {
            "test_simple_prompt" => vec![PromptMessage::new_text(
                Role::User,
                "This is a simple prompt for testing.",
            )],
            "test_prompt_with_arguments" => vec![PromptMessage::new_text(
                Role::User,
                format!(
                    "Prompt with arguments: arg1='{}', arg2='{}'",
                    argument("arg1")?,
                    argument("arg2")?
                ),
            )],
            "test_prompt_with_embedded_resource" => wire(json!([
                {"role": "user", "content": {"type": "resource", "resource": {
                    "uri": argument("resourceUri")?, "mimeType": "text/plain",
                    "text": "Embedded resource content for testing."}}},
                {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}},
            ]))?,
            "test_prompt_with_image" => wire(json!([
                {"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
                {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}},
            ]))?,
            "test_input_required_result_prompt" => {
                match elicited(request.input_responses.as_ref(), "user_context")? {
                    Some(content) => {
                        let context = content
                            .get("context")
                            .and_then(Value::as_str)
                            .unwrap_or("none");
                        vec![PromptMessage::new_text(
                            Role::User,
                            format!("Prompt with context: {context}"),
                        )]
                    }
                    None => {
                        let ask = elicit(
                            "What context should the prompt use?",
                            json!({"context": {"type": "string"}}),
                            &["context"],
                        );
                        return Ok(input_required(vec![("user_context", ask)], None)?.into());
                    }
                }
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("no prompt named {other}"),
                    None,
                ));
            }
        };
        Ok(GetPromptResult::new(messages).into())
    }
}

impl ServerHandler for Fixtures {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities).with_server_info(Implementation::new(
            "mlinfra-conformance-fixtures",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = tool_specs()
            .into_iter()
            .map(|(name, description, schema)| {
                let Value::Object(schema) = schema else {
                    return Err(ErrorData::internal_error(
                        "a tool schema is not an object",
                        None,
                    ));
                };
                Ok(Tool::new(name, description, schema))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListToolsResult::with_all_items(tools)
            .with_ttl_ms(CACHE_TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, cx).await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(resources()?)
            .with_ttl_ms(CACHE_TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let templates: Vec<ResourceTemplate> = wire(json!([{
            "uriTemplate": "test://template/{id}/data",
            "name": "template-data",
            "description": "A resource per id.",
            "mimeType": "application/json",
        }]))?;
        Ok(ListResourceTemplatesResult::with_all_items(templates)
            .with_ttl_ms(CACHE_TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        read(&request.uri).map(Into::into)
    }

    // 2025-11-25's subscriptions; 2026-07-28 listens instead (below).
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        read(&request.uri)?;
        if let Ok(mut subscribed) = self.subscribed.lock() {
            subscribed.insert(request.uri);
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Ok(mut subscribed) = self.subscribed.lock() {
            subscribed.remove(&request.uri);
        }
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // Everything asked for (the SDK intersects it with the capabilities declared).
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let sink = context.sink().clone();
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.push(sink.clone());
        }
        context.cancelled().await;
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.retain(|open| open.id() != sink.id());
        }
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(prompts())
            .with_ttl_ms(CACHE_TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.prompt(&request)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let candidates = ["test", "testValue1", "testValue2", "other"];
        let prefix = request.argument.value.as_str();
        let values = candidates
            .into_iter()
            .filter(|candidate| candidate.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        Ok(CompleteResult::new(
            CompletionInfo::new(values).map_err(|e| ErrorData::internal_error(e, None))?,
        ))
    }

    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}

/// Where the fixtures are served.
enum Transport {
    /// Streamable HTTP on this address.
    Http(SocketAddr),
    /// The process's stdin and stdout.
    Stdio,
}

fn parse_args() -> anyhow::Result<Transport> {
    let mut transport = Transport::Http("127.0.0.1:0".parse()?);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--http" => {
                let value = it
                    .next()
                    .context("--http needs an address (127.0.0.1:PORT)")?;
                transport =
                    Transport::Http(value.parse().with_context(|| format!("--http {value}"))?);
            }
            "--stdio" => transport = Transport::Stdio,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    Ok(transport)
}

async fn run() -> anyhow::Result<()> {
    let bind = match parse_args()? {
        Transport::Stdio => {
            // stdout is the protocol's: the status line goes to stderr.
            eprintln!("mcp_conformance_server: serving MCP on stdio");
            serve_stdio(Fixtures::new()?).await?;
            return Ok(());
        }
        Transport::Http(bind) => bind,
    };
    let options = HttpOptions {
        bind,
        ..HttpOptions::default()
    };
    let mut http = serve_http(Fixtures::new()?, options).await?;
    eprintln!("mcp_conformance_server: MCP endpoint {}", http.url());
    tokio::select! {
        result = http.wait() => result?,
        _ = tokio::signal::ctrl_c() => http.shutdown().await?,
    }
    Ok(())
}

fn main() -> ExitCode {
    mlinfra_examples::block_on_main("mcp_conformance_server", run())
}
