//! The routes: request validation, prompt building, and turning a request's engine events
//! into an OpenAI response, whole or streamed.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::api::{
    ChatChoice, ChatChunk, ChatCompletion, ChatLogprobs, ChatMessage, ChatRequest, ChunkChoice,
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Delta, FunctionOut,
    ModelCard, ModelList, Prompt, SamplingFields, TokenLogprob, ToolCallOut, TopLogprob, Usage,
};
use super::error::ApiError;
use super::tools::{Piece, ToolCall, ToolMode, ToolParser};
use super::worker::{Choice, ChoiceEvent};
use super::{Admission, AppState};
use crate::engine::StreamEvent;
use crate::sampling::{MAX_LOGPROBS, SamplingParams};
use crate::sched::FinishReason;

/// Most choices (`n`) one request may ask for.
const MAX_N: usize = 16;
/// Most stop strings one request may give.
const MAX_STOPS: usize = 16;
/// `max_tokens` of a text completion that gives none (OpenAI's and vLLM's default), and of
/// any request to a model of unknown context length.
pub(super) const DEFAULT_MAX_TOKENS: usize = 16;

type Shared = State<Arc<AppState>>;

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse(&state, body)?;
    let adapter = state.resolve_model(&request.model)?;
    let tools = request.tools.clone().unwrap_or_default();
    let tool_mode = ToolMode::resolve(&tools, request.tool_choice.as_ref())?;
    let schema = output_schema(request.response_format.as_ref(), tool_mode.as_ref(), &tools)?;
    let template = state.model.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            Some("messages"),
            "this model has no chat template; use /v1/completions",
        )
    })?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "`messages` is empty"));
    }
    for (i, message) in request.messages.iter().enumerate() {
        if !message
            .get("role")
            .is_some_and(serde_json::Value::is_string)
        {
            return Err(ApiError::invalid(
                Some("messages"),
                format!("messages[{i}] has no string `role`"),
            ));
        }
    }
    let text = template
        .render_with_tools(&request.messages, &tools, true)
        .map_err(|error| ApiError::invalid(Some("messages"), error.to_string()))?;
    let prompt = state.encode_chat(&text)?;
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(top)) if top > 0 => {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        _ => None,
    };
    let max_tokens = request
        .max_completion_tokens
        .or(request.sampling.max_tokens);
    let mut plan = Plan::new(
        &state,
        vec![prompt],
        &request.sampling,
        logprobs,
        max_tokens,
        "messages",
    )?;
    if let Some(schema) = schema {
        if request.sampling.ignore_eos == Some(true) {
            // A complete output ends with the end-of-turn token the grammar then allows alone.
            return Err(ApiError::invalid(
                Some("ignore_eos"),
                "`ignore_eos` cannot be combined with a constrained output",
            ));
        }
        // Compiled once, off the async workers (a schema can be large), then copied per choice.
        let compiling = state.clone();
        let constraint = tokio::task::spawn_blocking(move || {
            let grammars = compiling.grammars.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    Some("response_format"),
                    "structured outputs are not available for this model's tokenizer",
                )
            })?;
            match &schema {
                OutputSchema::AnyObject => grammars.json_object(),
                OutputSchema::Schema(schema) => grammars.json_schema(schema),
            }
            .map_err(|error| ApiError::invalid(Some("response_format"), error.to_string()))
        })
        .await
        .map_err(|error| ApiError::internal(format!("compiling the output grammar: {error}")))??;
        for choice in &mut plan.choices {
            choice.constraint = Some(Box::new(constraint.clone()));
        }
    }
    plan.tools = tool_mode;
    plan.set_adapter(adapter);
    let stream = wants_stream(&request.sampling)?;
    run(state, plan, Format::Chat, stream, request.model).await
}

/// `POST /v1/completions`.
pub(super) async fn completions(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse(&state, body)?;
    let adapter = state.resolve_model(&request.model)?;
    if request.echo == Some(true) {
        return Err(ApiError::invalid(Some("echo"), "`echo` is not supported"));
    }
    if request.suffix.is_some() {
        return Err(ApiError::invalid(
            Some("suffix"),
            "`suffix` is not supported",
        ));
    }
    let prompts = match request.prompt {
        Prompt::Text(text) => vec![state.encode(&text)?],
        Prompt::Texts(texts) => texts
            .iter()
            .map(|text| state.encode(text))
            .collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(lists) => lists,
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid(Some("prompt"), "`prompt` is empty"));
    }
    let max_tokens = request.sampling.max_tokens.or(Some(DEFAULT_MAX_TOKENS));
    let mut plan = Plan::new(
        &state,
        prompts,
        &request.sampling,
        request.logprobs,
        max_tokens,
        "prompt",
    )?;
    plan.set_adapter(adapter);
    let stream = wants_stream(&request.sampling)?;
    run(state, plan, Format::Completion, stream, request.model).await
}

/// `GET /v1/models`: the model, then its adapters (with the model as `parent`, as vLLM).
pub(super) async fn models(State(state): Shared) -> Json<ModelList> {
    let base = &state.config.served_model_name;
    let card = |id: String, parent: Option<String>| ModelCard {
        id,
        object: "model",
        created: state.started,
        owned_by: "mlinfra",
        parent,
        max_model_len: state.worker.info.max_model_len,
    };
    let mut data = vec![card(base.clone(), None)];
    data.extend(
        state
            .adapter_names()
            .into_iter()
            .map(|name| card(name, Some(base.clone()))),
    );
    Json(ModelList {
        object: "list",
        data,
    })
}

#[derive(serde::Deserialize)]
struct LoadAdapter {
    lora_name: String,
    lora_path: std::path::PathBuf,
}

#[derive(serde::Deserialize)]
struct UnloadAdapter {
    lora_name: String,
}

/// A 404 unless [`ServerConfig::allow_runtime_lora`](super::ServerConfig) is on.
fn runtime_lora_allowed(state: &AppState) -> Result<(), ApiError> {
    if state.config.allow_runtime_lora {
        Ok(())
    } else {
        Err(ApiError::no_route_because(
            "loading and unloading adapters over HTTP is off on this server \
             (ServerConfig::allow_runtime_lora)",
        ))
    }
}

/// `POST /v1/load_lora_adapter` (vLLM's): loads a PEFT adapter directory under a name.
pub(super) async fn load_lora_adapter(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, ApiError> {
    runtime_lora_allowed(&state)?;
    let request: LoadAdapter = parse(&state, body)?;
    let name = request.lora_name;
    if name.is_empty() || name == state.config.served_model_name {
        return Err(ApiError::invalid(
            Some("lora_name"),
            format!("`lora_name` {name:?} cannot name an adapter"),
        ));
    }
    state
        .worker
        .load_adapter(name.clone(), request.lora_path)
        .await
        .map_err(|error| ApiError::invalid(Some("lora_path"), error.to_string()))?;
    state.set_adapters(|adapters| adapters.push(name.clone()));
    Ok(format!(
        "Success: LoRA adapter '{name}' added successfully."
    ))
}

/// `POST /v1/unload_lora_adapter`: refused (409) while requests use the adapter.
pub(super) async fn unload_lora_adapter(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, ApiError> {
    runtime_lora_allowed(&state)?;
    let request: UnloadAdapter = parse(&state, body)?;
    let name = request.lora_name;
    if !state.adapter_names().contains(&name) {
        return Err(ApiError::model_not_found(&name, &state.adapter_names()));
    }
    match state.worker.unload_adapter(name.clone()).await {
        Ok(()) => {
            state.set_adapters(|adapters| adapters.retain(|a| *a != name));
            Ok(format!(
                "Success: LoRA adapter '{name}' removed successfully."
            ))
        }
        Err(error @ crate::Error::AdapterInUse { .. }) => {
            Err(ApiError::conflict(error.to_string()))
        }
        Err(error) => Err(ApiError::invalid(Some("lora_name"), error.to_string())),
    }
}

/// `GET /health`: 200 while serving, 503 once draining.
pub(super) async fn health(State(state): Shared) -> StatusCode {
    if state.draining.load(Ordering::Acquire) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
pub(super) async fn metrics(State(state): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The API key check of `/v1/*`: `Authorization: Bearer <key>`, compared as BLAKE3 digests
/// (whose equality is constant-time), so neither the key's bytes nor its length leak through
/// timing.
pub(super) async fn authorize(
    State(state): Shared,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if blake3::hash(given.as_bytes()) != *expected {
            return Err(ApiError::unauthorized());
        }
    }
    Ok(next.run(request).await)
}

/// Unknown paths.
pub(super) async fn not_found(request: Request) -> ApiError {
    ApiError::no_route(
        StatusCode::NOT_FOUND,
        request.method().as_str(),
        request.uri().path(),
    )
}

/// Known paths with the wrong method.
pub(super) async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::no_route(
        StatusCode::METHOD_NOT_ALLOWED,
        request.method().as_str(),
        request.uri().path(),
    )
}

/// The body as JSON, with the path of a field of the wrong type in the error.
fn parse<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    if state.draining.load(Ordering::Acquire) {
        state.metrics.rejected("draining");
        return Err(ApiError::draining());
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.config.max_body_bytes)
        } else {
            ApiError::invalid(None, rejection.body_text())
        }
    })?;
    let mut json = serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let path = error.path().to_string();
        let param = (path != ".").then_some(path.as_str());
        ApiError::invalid(param, format!("invalid JSON body: {error}"))
    })
}

/// What the output must be: any JSON object, or JSON valid under a schema.
enum OutputSchema {
    AnyObject,
    Schema(serde_json::Value),
}

/// The output constraint of a chat request: its `response_format`, or the call a
/// `tool_choice` forces (not both).
fn output_schema(
    format: Option<&serde_json::Value>,
    tools: Option<&ToolMode>,
    tool_list: &[serde_json::Value],
) -> Result<Option<OutputSchema>, ApiError> {
    let param = Some("response_format");
    let from_format = match format {
        None => None,
        Some(format) => match format["type"].as_str() {
            Some("text") => None,
            Some("json_object") => Some(OutputSchema::AnyObject),
            Some("json_schema") => {
                let schema = &format["json_schema"]["schema"];
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(ApiError::invalid(
                        param,
                        "`response_format.json_schema.schema` must be a JSON schema object",
                    ));
                }
                Some(OutputSchema::Schema(schema.clone()))
            }
            _ => {
                return Err(ApiError::invalid(
                    param,
                    "`response_format.type` must be text, json_object or json_schema",
                ));
            }
        },
    };
    let from_tools = tools.and_then(|mode| mode.schema(tool_list));
    match (from_format, from_tools) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            Some("tool_choice"),
            "a forced tool call and a `response_format` cannot both constrain the output",
        )),
        (Some(format), None) => Ok(Some(format)),
        (None, Some(schema)) => Ok(Some(OutputSchema::Schema(schema))),
        (None, None) => Ok(None),
    }
}

fn wants_stream(fields: &SamplingFields) -> Result<Stream, ApiError> {
    let stream = fields.stream.unwrap_or(false);
    match (stream, fields.stream_options) {
        (false, Some(_)) => Err(ApiError::invalid(
            Some("stream_options"),
            "`stream_options` is only allowed with `stream: true`",
        )),
        (false, None) => Ok(Stream::No),
        (true, options) => Ok(Stream::Yes {
            include_usage: options.and_then(|o| o.include_usage).unwrap_or(false),
        }),
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    No,
    Yes { include_usage: bool },
}

/// What a request will run: its prompts, each `n` times.
struct Plan {
    prompts: Vec<Vec<u32>>,
    n: usize,
    choices: Vec<Choice>,
    /// How tool calls are read from the output, when the request has tools.
    tools: Option<ToolMode>,
}

impl Plan {
    fn new(
        state: &AppState,
        prompts: Vec<Vec<u32>>,
        fields: &SamplingFields,
        logprobs: Option<usize>,
        max_tokens: Option<usize>,
        prompt_param: &str,
    ) -> Result<Self, ApiError> {
        let n = fields.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                Some("n"),
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            ));
        }
        if max_tokens == Some(0) {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                "`max_tokens` must be at least 1",
            ));
        }
        if logprobs.is_some_and(|top| top > MAX_LOGPROBS) {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                format!("at most {MAX_LOGPROBS} alternatives per token"),
            ));
        }
        let stop = fields
            .stop
            .clone()
            .map(|s| s.into_vec())
            .unwrap_or_default();
        if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("`stop` takes at most {MAX_STOPS} non-empty strings"),
            ));
        }
        let base = SamplingParams {
            temperature: fields.temperature.unwrap_or(1.0),
            top_k: match fields.top_k {
                None | Some(-1) => 0,
                Some(k) => usize::try_from(k).map_err(|_| {
                    ApiError::invalid(Some("top_k"), "`top_k` must be -1 (all) or positive")
                })?,
            },
            top_p: fields.top_p.unwrap_or(1.0),
            min_p: fields.min_p.unwrap_or(0.0),
            repetition_penalty: fields.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: fields.frequency_penalty.unwrap_or(0.0),
            presence_penalty: fields.presence_penalty.unwrap_or(0.0),
            max_tokens: 1,
            stop_token_ids: if fields.ignore_eos == Some(true) {
                Vec::new()
            } else {
                state.model.stop_token_ids.clone()
            },
            stop,
            seed: None,
            logprobs,
        };
        let mut choices = Vec::with_capacity(prompts.len() * n);
        for prompt in &prompts {
            let max_tokens = state.check_context(prompt.len(), max_tokens, prompt_param)?;
            for _ in 0..n {
                let index = choices.len() as u64;
                choices.push(Choice {
                    prompt: prompt.clone(),
                    params: SamplingParams {
                        max_tokens,
                        // Choices of one seeded request differ from each other, and each is
                        // reproducible.
                        seed: fields.seed.map(|seed| (seed as u64).wrapping_add(index)),
                        ..base.clone()
                    },
                    constraint: None,
                    adapter: None,
                });
            }
        }
        Ok(Plan {
            prompts,
            n,
            choices,
            tools: None,
        })
    }
}

impl Plan {
    /// Every choice runs with `adapter` (or the base model).
    fn set_adapter(&mut self, adapter: Option<Box<str>>) {
        for choice in &mut self.choices {
            choice.adapter.clone_from(&adapter);
        }
    }
}

/// The two response formats.
#[derive(Debug, Clone, Copy)]
enum Format {
    Chat,
    Completion,
}

/// One choice as its events arrive.
#[derive(Debug, Default)]
struct ChoiceState {
    /// Content so far (tool-call text excluded).
    text: String,
    tokens: usize,
    chat_logprobs: Vec<TokenLogprob>,
    completion_logprobs: CompletionLogprobs,
    finish: Option<FinishReason>,
    cached_tokens: usize,
    /// Splits tool calls from content, when the request has tools.
    tools: Option<ToolParser>,
}

impl ChoiceState {
    /// The finish reason as OpenAI words it: `tool_calls` when the output ended in calls.
    fn finish_reason(&self) -> Option<&'static str> {
        let called = self.tools.as_ref().is_some_and(|t| !t.calls().is_empty());
        self.finish.map(|reason| match reason {
            FinishReason::Stop if called => "tool_calls",
            reason => finish_reason(reason),
        })
    }
}

/// What one engine event changed in a choice.
enum Update {
    /// A token: the pieces of output it completed, and whether it has a logprobs entry.
    Token { pieces: Vec<Piece>, logprobs: bool },
    /// The choice ended; the pieces its tool parser held back.
    Finished { pieces: Vec<Piece> },
}

/// A request's events turned into responses: the part both formats share.
struct Responder {
    state: Arc<AppState>,
    format: Format,
    id: String,
    created: u64,
    model: String,
    n: usize,
    prompts: Vec<usize>,
    logprobs: bool,
    choices: Vec<ChoiceState>,
    include_usage: bool,
    /// Held until the response is over: the request's place in the queue.
    _admission: Admission,
}

async fn run(
    state: Arc<AppState>,
    plan: Plan,
    format: Format,
    stream: Stream,
    model: String,
) -> Result<Response, ApiError> {
    let admission = state.admit(plan.choices.len())?;
    let logprobs = plan.choices[0].params.logprobs.is_some();
    let (sender, mut events) = mpsc::unbounded_channel();
    let count = plan.choices.len();
    state.worker.submit(plan.choices, sender).await?;
    let prefix = match format {
        Format::Chat => "chatcmpl",
        Format::Completion => "cmpl",
    };
    let id = state.next_id();
    let mut responder = Responder {
        choices: (0..count)
            .map(|index| ChoiceState {
                tools: plan
                    .tools
                    .clone()
                    .map(|mode| ToolParser::new(mode, format!("call_{id}_{index}_"))),
                ..ChoiceState::default()
            })
            .collect(),
        id: format!("{prefix}-{id}"),
        created: unix_time(),
        model,
        n: plan.n,
        prompts: plan.prompts.iter().map(Vec::len).collect(),
        logprobs,
        include_usage: matches!(
            stream,
            Stream::Yes {
                include_usage: true
            }
        ),
        format,
        state,
        _admission: admission,
    };
    if let Stream::No = stream {
        while let Some(event) = events.recv().await {
            responder.absorb(event);
        }
        return Ok(responder.whole());
    }
    let opening = responder.opening();
    let body = stream::unfold(Some((responder, events)), |state| async move {
        let (mut responder, mut events) = state?;
        match events.recv().await {
            Some(event) => {
                let chunks = responder.chunks(event);
                Some((chunks, Some((responder, events))))
            }
            // Every choice finished (the engine thread dropped its senders).
            None => Some((responder.closing(), None)),
        }
    });
    let body = stream::iter(opening)
        .chain(body.flat_map(stream::iter))
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Ok(Sse::new(body).into_response())
}

impl Responder {
    fn usage(&self) -> Usage {
        let completion: usize = self.choices.iter().map(|c| c.tokens).sum();
        // Each prompt counts once, with the first of its choices' prefix-cache hits.
        let cached = (0..self.prompts.len())
            .map(|p| self.choices[p * self.n].cached_tokens)
            .sum();
        Usage::new(self.prompts.iter().sum(), completion, cached)
    }

    fn token_text(&self, token: u32) -> String {
        self.state
            .model
            .tokenizer
            .decode(&[token])
            .unwrap_or_default()
    }

    /// Records an event in its choice.
    fn absorb(&mut self, event: ChoiceEvent) -> Update {
        let index = event.index;
        match event.event {
            StreamEvent::Token {
                token,
                text,
                logprob,
                top_logprobs,
            } => {
                let entry = match (self.logprobs, logprob) {
                    (true, Some(logprob)) => {
                        // Alternatives a constraint masked out have no probability.
                        let tops: Vec<(String, f32)> = top_logprobs
                            .iter()
                            .filter(|(_, lp)| lp.is_finite())
                            .map(|&(t, lp)| (self.token_text(t), lp))
                            .collect();
                        Some((self.token_text(token), logprob, tops))
                    }
                    _ => None,
                };
                let choice = &mut self.choices[index];
                choice.tokens += 1;
                let logprobs = entry.is_some();
                if let Some((token_text, logprob, tops)) = entry {
                    record_logprobs(choice, token_text, logprob, tops);
                }
                let pieces = match choice.tools.as_mut() {
                    Some(parser) => parser.push(&text),
                    None if text.is_empty() => Vec::new(),
                    None => vec![Piece::Content(text)],
                };
                append_content(&mut choice.text, &pieces);
                Update::Token { pieces, logprobs }
            }
            StreamEvent::Finished { reason, metrics } => {
                let choice = &mut self.choices[index];
                choice.finish = Some(reason);
                choice.cached_tokens = metrics.prefix_hit_tokens;
                let pieces = choice
                    .tools
                    .as_mut()
                    .map(ToolParser::finish)
                    .unwrap_or_default();
                append_content(&mut choice.text, &pieces);
                Update::Finished { pieces }
            }
        }
    }

    /// The whole (non-streamed) response; a 500 when the engine thread stopped before
    /// finishing a choice.
    fn whole(self) -> Response {
        if self.choices.iter().any(|c| c.finish.is_none()) {
            return ApiError::internal("the engine stopped before the response was complete")
                .into_response();
        }
        let usage = self.usage();
        let logprobs = self.logprobs;
        match self.format {
            Format::Chat => Json(ChatCompletion {
                id: self.id,
                object: "chat.completion",
                created: self.created,
                model: self.model,
                choices: self
                    .choices
                    .into_iter()
                    .enumerate()
                    .map(|(index, choice)| {
                        let finish_reason = choice.finish_reason();
                        let calls: Vec<ToolCallOut> = choice
                            .tools
                            .as_ref()
                            .map(|parser| parser.calls().iter().map(whole_call).collect())
                            .unwrap_or_default();
                        let content = (calls.is_empty() || !choice.text.trim().is_empty())
                            .then_some(choice.text);
                        ChatChoice {
                            index,
                            message: ChatMessage {
                                role: "assistant",
                                content,
                                tool_calls: calls,
                            },
                            logprobs: logprobs.then_some(ChatLogprobs {
                                content: choice.chat_logprobs,
                            }),
                            finish_reason,
                        }
                    })
                    .collect(),
                usage,
            })
            .into_response(),
            Format::Completion => Json(Completion {
                id: self.id,
                object: "text_completion",
                created: self.created,
                model: self.model,
                choices: self
                    .choices
                    .into_iter()
                    .enumerate()
                    .map(|(index, choice)| CompletionChoice {
                        index,
                        finish_reason: choice.finish_reason(),
                        text: choice.text,
                        logprobs: logprobs.then_some(choice.completion_logprobs),
                    })
                    .collect(),
                usage: Some(Some(usage)),
            })
            .into_response(),
        }
    }

    /// `usage: null` on every chunk but the last when usage was asked for.
    fn chunk_usage(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    /// The chunks sent before any token: the assistant role of each chat choice.
    fn opening(&self) -> Vec<String> {
        match self.format {
            Format::Chat => (0..self.choices.len())
                .map(|index| {
                    self.chat_chunk(ChunkChoice {
                        index,
                        delta: Delta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                            tool_calls: Vec::new(),
                        },
                        logprobs: None,
                        finish_reason: None,
                    })
                })
                .collect(),
            Format::Completion => Vec::new(),
        }
    }

    fn chat_chunk(&self, choice: ChunkChoice) -> String {
        to_json(&ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![choice],
            usage: self.chunk_usage(),
        })
    }

    fn completion_chunk(&self, choice: CompletionChoice) -> String {
        to_json(&Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![choice],
            usage: self.chunk_usage(),
        })
    }

    /// One chunk for one piece of a choice's output, with the token's logprobs when given.
    fn piece_chunk(&self, index: usize, piece: Piece, logprobs: bool) -> String {
        let choice = &self.choices[index];
        match self.format {
            Format::Chat => {
                let mut delta = Delta::default();
                match piece {
                    Piece::Content(text) => delta.content = Some(text),
                    Piece::Start { index, id, name } => delta.tool_calls.push(ToolCallOut {
                        index: Some(index),
                        id: Some(id),
                        kind: Some("function"),
                        function: FunctionOut {
                            name: Some(name),
                            arguments: String::new(),
                        },
                    }),
                    Piece::Arguments { index, delta: text } => {
                        delta.tool_calls.push(ToolCallOut {
                            index: Some(index),
                            function: FunctionOut {
                                name: None,
                                arguments: text,
                            },
                            ..ToolCallOut::default()
                        });
                    }
                }
                self.chat_chunk(ChunkChoice {
                    index,
                    delta,
                    logprobs: logprobs.then(|| ChatLogprobs {
                        content: choice.chat_logprobs.last().cloned().into_iter().collect(),
                    }),
                    finish_reason: None,
                })
            }
            Format::Completion => {
                let text = match piece {
                    Piece::Content(text) => text,
                    _ => String::new(),
                };
                let lps = &choice.completion_logprobs;
                let last = logprobs.then(|| CompletionLogprobs {
                    tokens: lps.tokens.last().cloned().into_iter().collect(),
                    token_logprobs: lps.token_logprobs.last().copied().into_iter().collect(),
                    top_logprobs: lps.top_logprobs.last().cloned().into_iter().collect(),
                    text_offset: lps.text_offset.last().copied().into_iter().collect(),
                });
                self.completion_chunk(CompletionChoice {
                    index,
                    text,
                    logprobs: last,
                    finish_reason: None,
                })
            }
        }
    }

    /// The chunks one event produces: a token's pieces (and logprobs), or a finish.
    fn chunks(&mut self, event: ChoiceEvent) -> Vec<String> {
        let index = event.index;
        match self.absorb(event) {
            Update::Token { pieces, logprobs } => {
                if pieces.is_empty() {
                    // Held back (a partial character, a possible stop string or tool-call
                    // tag); its logprobs still go out, with empty content.
                    return if logprobs {
                        vec![self.piece_chunk(index, Piece::Content(String::new()), true)]
                    } else {
                        Vec::new()
                    };
                }
                pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, piece)| self.piece_chunk(index, piece, logprobs && i == 0))
                    .collect()
            }
            Update::Finished { pieces } => {
                let mut chunks: Vec<String> = pieces
                    .into_iter()
                    .map(|piece| self.piece_chunk(index, piece, false))
                    .collect();
                let reason = self.choices[index].finish_reason();
                chunks.push(match self.format {
                    Format::Chat => self.chat_chunk(ChunkChoice {
                        index,
                        delta: Delta::default(),
                        logprobs: None,
                        finish_reason: reason,
                    }),
                    Format::Completion => self.completion_chunk(CompletionChoice {
                        index,
                        text: String::new(),
                        logprobs: None,
                        finish_reason: reason,
                    }),
                });
                chunks
            }
        }
    }

    /// The end of a stream: the usage chunk when asked for, then `[DONE]`.
    fn closing(&self) -> Vec<String> {
        let mut chunks = Vec::new();
        if self.choices.iter().any(|c| c.finish.is_none()) {
            // The engine thread stopped without finishing a choice.
            chunks.push(
                ApiError::internal("the engine stopped before the response was complete")
                    .body()
                    .to_string(),
            );
        }
        if self.include_usage {
            let usage = Some(Some(self.usage()));
            chunks.push(match self.format {
                Format::Chat => to_json(&ChatChunk {
                    id: self.id.clone(),
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage,
                }),
                Format::Completion => to_json(&Completion {
                    id: self.id.clone(),
                    object: "text_completion",
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage,
                }),
            });
        }
        chunks.push("[DONE]".into());
        chunks
    }
}

/// Appends the content pieces' text.
fn append_content(text: &mut String, pieces: &[Piece]) {
    for piece in pieces {
        if let Piece::Content(content) = piece {
            text.push_str(content);
        }
    }
}

/// Adds one token's logprobs to both formats' records of a choice.
fn record_logprobs(
    choice: &mut ChoiceState,
    token_text: String,
    logprob: f32,
    tops: Vec<(String, f32)>,
) {
    let lps = &mut choice.completion_logprobs;
    let offset =
        lps.text_offset.last().copied().unwrap_or(0) + lps.tokens.last().map_or(0, String::len);
    lps.tokens.push(token_text.clone());
    lps.token_logprobs.push(logprob);
    lps.top_logprobs.push(
        tops.iter()
            .map(|(t, lp)| (t.clone(), serde_json::json!(lp)))
            .collect(),
    );
    lps.text_offset.push(offset);
    choice.chat_logprobs.push(TokenLogprob {
        bytes: token_text.as_bytes().to_vec(),
        token: token_text,
        logprob,
        top_logprobs: tops
            .into_iter()
            .map(|(token, logprob)| TopLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob,
            })
            .collect(),
    });
}

fn whole_call(call: &ToolCall) -> ToolCallOut {
    ToolCallOut {
        index: None,
        id: Some(call.id.clone()),
        kind: Some("function"),
        function: FunctionOut {
            name: Some(call.name.clone()),
            arguments: call.arguments.clone(),
        },
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        // vLLM's word for a request the server ended (shutdown deadline, a failed step).
        FinishReason::Aborted => "abort",
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Our response types always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

pub(super) fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
