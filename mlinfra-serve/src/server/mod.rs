//! An OpenAI-compatible HTTP server over the [`Engine`] (feature `server`).
//!
//! Routes, as the `openai` SDKs and vLLM's server have them:
//! - `POST /v1/chat/completions`, `POST /v1/completions`: whole or streamed (server-sent
//!   events ending in `data: [DONE]`), with `n`, `stop`, `max_tokens` /
//!   `max_completion_tokens`, `temperature`, `top_p`, `top_k`, `min_p`, `seed`, the
//!   penalties, `logprobs` / `top_logprobs`, `ignore_eos`, and `stream_options.include_usage`;
//!   `usage`
//!   reports `prompt_tokens_details.cached_tokens` from the prefix cache;
//! - `GET /v1/models` (the model and its adapters); `GET /health` (503 while draining);
//!   `GET /metrics` (Prometheus);
//! - multi-LoRA: PEFT adapters loaded at start or with `POST /v1/load_lora_adapter`
//!   (`{"lora_name", "lora_path"}`, as vLLM) and `POST /v1/unload_lora_adapter` (refused with
//!   409 while requests use it), picked per request through `model`; requests on different
//!   adapters share a step, each row through its own adapter, and the prefix cache is keyed
//!   by adapter;
//! - structured outputs (`response_format` `json_object` / `json_schema`) and tools
//!   (`tool_choice` `auto`, `none`, `required`, a named function), by constrained decoding
//!   with llguidance ([`crate::guidance`]).
//!
//! Behaviour under faults and load:
//! - every error is OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`) with a
//!   4xx status for the client's mistakes: malformed JSON names the field, a prompt longer
//!   than the context gets a 400 naming both lengths, an unknown model a 404;
//! - at most `max_running + max_queue` sequences are in flight; past that a request gets a 429
//!   with `Retry-After`; request bodies over `max_body_bytes` get a 413;
//! - a client that disconnects has its request aborted and its KV blocks freed by the next
//!   engine step;
//! - [`Server::serve`]'s shutdown future starts a drain: new connections are refused (and
//!   new requests on open keep-alive connections get 503), the requests in flight finish, and
//!   after `drain_timeout` whatever is left is aborted;
//! - with an API key, `/v1/*` wants `Authorization: Bearer <key>`, checked in constant time.
//!
//! The engine runs on its own thread (see `worker`); HTTP runs on tokio through axum.

mod api;
mod error;
mod handlers;
mod metrics;
mod tools;
mod worker;

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use mlinfra_data::chat::ChatTemplate;
use mlinfra_data::tensor::GgufFile;
use mlinfra_data::tokenizer::Tokenizer;
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::guidance::Grammars;
use crate::runner::ModelRunner;

use error::ApiError;
use metrics::ServerMetrics;
use worker::Worker;

/// Server settings. Its `Debug` output leaves the API key out.
#[derive(Clone)]
pub struct ServerConfig {
    /// The name clients put in `model` (and `/v1/models` lists).
    pub served_model_name: String,
    /// Sequences that may wait beyond a full running batch; past `max_running + max_queue`
    /// in flight, requests get 429.
    pub max_queue: usize,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// When set, `/v1/*` requires `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// How long a shutdown waits for requests in flight before aborting them.
    pub drain_timeout: Duration,
    /// Whether `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` work (vLLM gates them
    /// the same way): any client that reaches the server may then make it read a directory
    /// of its disk, and a load pauses generation while the weights are read. Off by default.
    pub allow_runtime_lora: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("served_model_name", &self.served_model_name)
            .field("max_queue", &self.max_queue)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("drain_timeout", &self.drain_timeout)
            .field("allow_runtime_lora", &self.allow_runtime_lora)
            .finish()
    }
}

impl ServerConfig {
    /// Defaults for a model served as `served_model_name`: a queue of 64, 4 MiB bodies, no
    /// API key, 30 s to drain, no adapter loading over HTTP.
    pub fn new(served_model_name: impl Into<String>) -> Self {
        ServerConfig {
            served_model_name: served_model_name.into(),
            max_queue: 64,
            max_body_bytes: 4 << 20,
            api_key: None,
            drain_timeout: Duration::from_secs(30),
            allow_runtime_lora: false,
        }
    }
}

/// The text side of a served model: tokenizer, chat template and end-of-generation tokens.
#[derive(Debug)]
pub struct ServedModel {
    /// Turns prompts into ids and generated ids into streamed text.
    pub tokenizer: Arc<Tokenizer>,
    /// Renders `/v1/chat/completions` messages; without one, only `/v1/completions` works.
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end every generation (EOS, end-of-turn).
    pub stop_token_ids: Vec<u32>,
}

/// Vocabulary entries that end a turn in the common chat formats (ChatML, Llama 3, Phi,
/// Gemma...): what llama.cpp treats as end-of-generation besides EOS.
const END_OF_GENERATION: [&str; 8] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
];

impl ServedModel {
    /// The tokenizer and chat template a GGUF file carries; the stop tokens are its EOS, its
    /// `tokenizer.ggml.eot_token_id`, and the end-of-turn tokens of the common chat formats
    /// that its vocabulary has. A file without a template serves completions only.
    ///
    /// # Errors
    ///
    /// The tokenizer's, when the file has none that mlinfra-data builds.
    pub fn from_gguf(file: &GgufFile) -> mlinfra_data::Result<Self> {
        let tokenizer = Tokenizer::from_gguf(file)?;
        let chat_template = ChatTemplate::from_gguf(file).ok();
        let mut stop_token_ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        let eot = file
            .get("tokenizer.ggml.eot_token_id")
            .and_then(|value| value.as_u64())
            .and_then(|id| u32::try_from(id).ok());
        let named = END_OF_GENERATION.iter().filter_map(|t| tokenizer.id(t));
        for id in eot.into_iter().chain(named) {
            if !stop_token_ids.contains(&id) {
                stop_token_ids.push(id);
            }
        }
        Ok(ServedModel {
            tokenizer: Arc::new(tokenizer),
            chat_template,
            stop_token_ids,
        })
    }
}

/// A running engine thread and the HTTP routes in front of it.
pub struct Server {
    state: Arc<AppState>,
}

/// What every handler shares.
pub(crate) struct AppState {
    worker: Worker,
    metrics: Arc<ServerMetrics>,
    model: ServedModel,
    /// Structured outputs over the model's vocabulary (`None` when it cannot be read).
    grammars: Option<Grammars>,
    config: ServerConfig,
    api_key: Option<blake3::Hash>,
    /// Adapters requests may name in `model`, as loaded now.
    adapters: RwLock<Vec<String>>,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    next_id: AtomicU64,
    started: u64,
}

impl Server {
    /// Starts `engine` on its own thread, streaming text with `model`'s tokenizer.
    ///
    /// # Errors
    ///
    /// The OS's, when the engine thread cannot be started.
    pub fn start<R>(
        engine: Engine<R>,
        model: ServedModel,
        config: ServerConfig,
    ) -> std::io::Result<Self>
    where
        R: ModelRunner + Send + 'static,
    {
        let engine = engine.with_detokenizer(model.tokenizer.clone());
        let metrics = Arc::new(ServerMetrics::new());
        let worker = Worker::spawn(engine, metrics.clone())?;
        let grammars = model.stop_token_ids.first().and_then(|&eos| {
            Grammars::new(model.tokenizer.clone(), eos)
                .inspect_err(|error| tracing::warn!(%error, "no structured outputs"))
                .ok()
        });
        let adapters = RwLock::new(worker.initial_adapters.clone());
        Ok(Server {
            state: Arc::new(AppState {
                adapters,
                worker,
                metrics,
                grammars,
                api_key: config
                    .api_key
                    .as_deref()
                    .map(|key| blake3::hash(key.as_bytes())),
                model,
                config,
                in_flight: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                started: handlers::unix_time(),
            }),
        })
    }

    /// The routes, for embedding in a larger axum application.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let api = Router::new()
            .route("/v1/chat/completions", post(handlers::chat_completions))
            .route("/v1/completions", post(handlers::completions))
            .route("/v1/models", get(handlers::models))
            .route("/v1/load_lora_adapter", post(handlers::load_lora_adapter))
            .route(
                "/v1/unload_lora_adapter",
                post(handlers::unload_lora_adapter),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                handlers::authorize,
            ));
        api.route("/health", get(handlers::health))
            .route("/metrics", get(handlers::metrics))
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.state.config.max_body_bytes))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` completes, then drains: the listener closes (new
    /// requests on open connections get 503),
    /// requests in flight run to their end for up to
    /// [`drain_timeout`](ServerConfig::drain_timeout), and are aborted after it (their
    /// streams end with finish reason `abort`). Returns once every connection is closed.
    ///
    /// # Errors
    ///
    /// The listener's I/O errors.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let (draining, mut drain_started) = tokio::sync::watch::channel(false);
        let signal = {
            let state = state.clone();
            async move {
                shutdown.await;
                state.draining.store(true, Ordering::Release);
                let _ = draining.send(true);
            }
        };
        let server = axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .into_future();
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            _ = drain_started.wait_for(|started| *started) => {}
        }
        if let Ok(result) = tokio::time::timeout(state.config.drain_timeout, &mut server).await {
            return result;
        }
        tracing::warn!("drain deadline passed: aborting the requests still in flight");
        state.worker.abort_all();
        // Aborted streams end at the next engine step; give their connections a moment.
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }
}

/// A request's place among the sequences in flight, given back on drop.
pub(crate) struct Admission {
    state: Arc<AppState>,
    sequences: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state
            .in_flight
            .fetch_sub(self.sequences, Ordering::AcqRel);
    }
}

impl AppState {
    fn limit(&self) -> usize {
        self.worker.info.max_running + self.config.max_queue
    }

    /// A place for `sequences` more sequences, or a 429.
    fn admit(self: &Arc<Self>, sequences: usize) -> Result<Admission, ApiError> {
        let limit = self.limit();
        if sequences > limit {
            // Never fits, however long the client waits: not a 429.
            return Err(ApiError::invalid(
                Some("n"),
                format!(
                    "the request asks for {sequences} sequences (prompts × n); this server runs                      at most {limit} at once"
                ),
            ));
        }
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current + sequences > limit {
                self.metrics.rejected("queue_full");
                return Err(ApiError::queue_full(current, limit));
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + sequences,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Admission {
                        state: self.clone(),
                        sequences,
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    fn next_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:x}{n:06x}", self.started)
    }

    /// The adapter a request's `model` names (`None`: the base model), or a 404.
    fn resolve_model(&self, model: &str) -> Result<Option<Box<str>>, ApiError> {
        if model == self.config.served_model_name {
            return Ok(None);
        }
        let adapters = self.adapter_names();
        if adapters.iter().any(|a| a == model) {
            return Ok(Some(model.into()));
        }
        let mut served = vec![self.config.served_model_name.clone()];
        served.extend(adapters);
        Err(ApiError::model_not_found(model, &served))
    }

    fn adapter_names(&self) -> Vec<String> {
        self.adapters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_adapters(&self, update: impl FnOnce(&mut Vec<String>)) {
        update(
            &mut self
                .adapters
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.model
            .tokenizer
            .encode(text)
            .map_err(|error| ApiError::invalid(Some("prompt"), error.to_string()))
    }

    /// A rendered chat prompt's ids: the template writes the BOS token itself when the
    /// model wants one, so the tokenizer's own is dropped if both are there (the double-BOS
    /// llama.cpp warns about).
    fn encode_chat(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        let mut ids = self.encode(text)?;
        let bos = self.model.tokenizer.bos_id();
        if bos.is_some() && ids.len() >= 2 && ids[0] == ids[1] && Some(ids[0]) == bos {
            ids.remove(0);
        }
        Ok(ids)
    }

    /// The `max_tokens` a prompt of `prompt_len` tokens gets: the one asked for, else what
    /// is left of the context; a 400 naming both lengths when the two do not fit.
    fn check_context(
        &self,
        prompt_len: usize,
        max_tokens: Option<usize>,
        prompt_param: &str,
    ) -> Result<usize, ApiError> {
        let Some(context) = self.worker.info.max_model_len else {
            return Ok(max_tokens.unwrap_or(handlers::DEFAULT_MAX_TOKENS));
        };
        if prompt_len >= context {
            return Err(ApiError::invalid_code(
                prompt_param,
                "context_length_exceeded",
                format!(
                    "This model's maximum context length is {context} tokens. However, your \
                     prompt has {prompt_len} tokens, leaving none to generate."
                ),
            ));
        }
        match max_tokens {
            None => Ok(context - prompt_len),
            Some(max) if prompt_len.saturating_add(max) <= context => Ok(max),
            Some(max) => Err(ApiError::invalid_code(
                "max_tokens",
                "context_length_exceeded",
                format!(
                    "This model's maximum context length is {context} tokens. However, you \
                     requested {} tokens ({prompt_len} in the prompt, {max} in the \
                     completion). Please reduce the length of the prompt or completion.",
                    prompt_len.saturating_add(max)
                ),
            )),
        }
    }
}
