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
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Delta, ModelCard,
    ModelList, Prompt, SamplingFields, TokenLogprob, TopLogprob, Usage,
};
use super::error::ApiError;
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
    state.check_model(&request.model)?;
    refuse_unsupported(&request)?;
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
        .render_with_tools(&request.messages, &[], true)
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
    let plan = Plan::new(
        &state,
        vec![prompt],
        &request.sampling,
        logprobs,
        max_tokens,
        "messages",
    )?;
    let stream = wants_stream(&request.sampling)?;
    let format = Format::Chat;
    run(state, plan, format, stream, request.model).await
}

/// `POST /v1/completions`.
pub(super) async fn completions(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse(&state, body)?;
    state.check_model(&request.model)?;
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
    let plan = Plan::new(
        &state,
        prompts,
        &request.sampling,
        request.logprobs,
        max_tokens,
        "prompt",
    )?;
    let stream = wants_stream(&request.sampling)?;
    run(state, plan, Format::Completion, stream, request.model).await
}

/// `GET /v1/models`.
pub(super) async fn models(State(state): Shared) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.config.served_model_name.clone(),
            object: "model",
            created: state.started,
            owned_by: "mlinfra",
            parent: None,
            max_model_len: state.worker.info.max_model_len,
        }],
    })
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

/// Fields of the chat API this server does not implement yet: refused by name rather than
/// silently ignored.
fn refuse_unsupported(request: &ChatRequest) -> Result<(), ApiError> {
    if request
        .tools
        .as_ref()
        .is_some_and(|tools| !tools.is_empty())
        && request.tool_choice.as_ref().and_then(|c| c.as_str()) != Some("none")
    {
        return Err(ApiError::invalid(
            Some("tools"),
            "`tools` are not supported yet",
        ));
    }
    if let Some(format) = &request.response_format
        && format.get("type").and_then(|t| t.as_str()) != Some("text")
    {
        return Err(ApiError::invalid(
            Some("response_format"),
            "`response_format` other than `text` is not supported yet",
        ));
    }
    Ok(())
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
            stop_token_ids: state.model.stop_token_ids.clone(),
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
                });
            }
        }
        Ok(Plan {
            prompts,
            n,
            choices,
        })
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
    text: String,
    tokens: usize,
    chat_logprobs: Vec<TokenLogprob>,
    completion_logprobs: CompletionLogprobs,
    finish: Option<FinishReason>,
    cached_tokens: usize,
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
    state.worker.submit(plan.choices, sender).await?;
    let prefix = match format {
        Format::Chat => "chatcmpl",
        Format::Completion => "cmpl",
    };
    let mut responder = Responder {
        id: format!("{prefix}-{}", state.next_id()),
        created: unix_time(),
        model,
        n: plan.n,
        prompts: plan.prompts.iter().map(Vec::len).collect(),
        logprobs,
        choices: (0..plan.prompts.len() * plan.n)
            .map(|_| ChoiceState::default())
            .collect(),
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

    /// Records an event; returns the choice's streamable text and logprob entry (if any).
    fn absorb(&mut self, event: ChoiceEvent) -> Option<(String, bool)> {
        let index = event.index;
        match event.event {
            StreamEvent::Token {
                token,
                text,
                logprob,
                top_logprobs,
            } => {
                let logprob_entry = match (self.logprobs, logprob) {
                    (true, Some(logprob)) => {
                        let token_text = self.token_text(token);
                        let tops: Vec<(String, f32)> = top_logprobs
                            .iter()
                            .map(|&(t, lp)| (self.token_text(t), lp))
                            .collect();
                        Some((token_text, logprob, tops))
                    }
                    _ => None,
                };
                let choice = &mut self.choices[index];
                choice.tokens += 1;
                choice.text.push_str(&text);
                let had_logprobs = logprob_entry.is_some();
                if let Some((token_text, logprob, tops)) = logprob_entry {
                    let offset = choice
                        .completion_logprobs
                        .text_offset
                        .last()
                        .copied()
                        .unwrap_or(0)
                        + choice
                            .completion_logprobs
                            .tokens
                            .last()
                            .map_or(0, String::len);
                    let lps = &mut choice.completion_logprobs;
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
                Some((text, had_logprobs))
            }
            StreamEvent::Finished { reason, metrics } => {
                let choice = &mut self.choices[index];
                choice.finish = Some(reason);
                choice.cached_tokens = metrics.prefix_hit_tokens;
                None
            }
        }
    }

    /// The whole (non-streamed) response.
    fn whole(self) -> Response {
        let usage = self.usage();
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
                    .map(|(index, choice)| ChatChoice {
                        index,
                        message: ChatMessage {
                            role: "assistant",
                            content: choice.text,
                        },
                        logprobs: self.logprobs.then_some(ChatLogprobs {
                            content: choice.chat_logprobs,
                        }),
                        finish_reason: choice.finish.map(finish_reason),
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
                        text: choice.text,
                        logprobs: self.logprobs.then_some(choice.completion_logprobs),
                        finish_reason: choice.finish.map(finish_reason),
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

    /// The chunks one event produces: a token's text (and logprobs), or a finish.
    fn chunks(&mut self, event: ChoiceEvent) -> Vec<String> {
        let index = event.index;
        let Some((text, has_logprobs)) = self.absorb(event) else {
            let reason = self.choices[index].finish.map(finish_reason);
            return vec![match self.format {
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
            }];
        };
        if text.is_empty() && !has_logprobs {
            return Vec::new(); // held back (a partial character or a possible stop string)
        }
        let choice = &self.choices[index];
        vec![match self.format {
            Format::Chat => self.chat_chunk(ChunkChoice {
                index,
                delta: Delta {
                    role: None,
                    content: Some(text),
                },
                logprobs: has_logprobs.then(|| ChatLogprobs {
                    content: choice.chat_logprobs.last().cloned().into_iter().collect(),
                }),
                finish_reason: None,
            }),
            Format::Completion => {
                let lps = &choice.completion_logprobs;
                let last = has_logprobs.then(|| CompletionLogprobs {
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
        }]
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
