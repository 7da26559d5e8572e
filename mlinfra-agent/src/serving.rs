//! The serving tools' backend: an OpenAI-compatible API, either mlinfra-serve's server
//! embedded in this process (its routes called in memory, no socket) or one at a URL (our own
//! `serve_openai`, vLLM, llama.cpp's `llama-server`; `http://` or `https://`).
//!
//! Both speak the same wire format, so one code path serves both: the tools build OpenAI
//! request bodies and read OpenAI responses. The embedded engine is the one `serve_openai`
//! runs (continuous batching, the prefix cache, the SIMD CPU path, runtime LoRA adapters).

use std::path::Path;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, header};
use burn::tensor::Device;
use mlinfra_kernels::cpu::SimdKernels;
use mlinfra_serve::engine::{Engine, EngineConfig};
use mlinfra_serve::host::HostLlamaRunner;
use mlinfra_serve::runner::{LlamaRunner, ModelRunner};
use mlinfra_serve::sched::SchedulerConfig;
use mlinfra_serve::server::{ServedModel, Server, ServerConfig};
use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{Error, Result};

/// The largest response body read from the backend.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// The longest a request to a remote server may take (generation included).
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// KV blocks of the embedded engine (16 tokens each): room for 64 sequences of 512 tokens.
const KV_BLOCKS: usize = 2048;
/// Tokens per KV block.
const BLOCK_SIZE: usize = 16;

/// Where generation requests go.
enum Backend {
    /// mlinfra-serve's routes, called in memory; the server keeps the engine thread alive.
    Embedded {
        router: axum::Router,
        _server: Server,
    },
    /// An OpenAI-compatible server at `base` (`http://host:port`, without `/v1`).
    Remote {
        base: String,
        client: reqwest::Client,
        api_key: Option<String>,
    },
}

/// A language model behind an OpenAI-compatible API, and the name requests use for it.
pub struct Serving {
    backend: Backend,
    model: String,
    /// The model file's content hash (embedded models), for the lineage registry.
    model_hash: Option<String>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Embedded { .. } => "embedded".to_owned(),
            Backend::Remote { base, .. } => base.clone(),
        };
        f.debug_struct("Serving")
            .field("backend", &backend)
            .field("model", &self.model)
            .finish()
    }
}

/// rustls is built without a default crypto provider (no aws-lc build): installs ring unless
/// the application installed one (for every HTTPS client of this crate: a remote model server,
/// an OTLP collector). Losing a race to another installer is fine.
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The GGUF file at `path`, or the serving error naming it.
fn open_gguf(path: &Path) -> Result<mlinfra_data::tensor::GgufFile> {
    mlinfra_data::tensor::GgufFile::open(path).map_err(|e| embedded_error("opening", path, &e))
}

fn embedded_error(what: &str, path: &Path, error: &dyn std::fmt::Display) -> Error {
    Error::Serving {
        reason: format!("{what} {}: {error}", path.display()).into(),
    }
}

impl Serving {
    /// The GGUF model at `path` served in this process on `threads` CPU threads: mlinfra-serve's
    /// SIMD kernels over the quantized weights, the fast path, for the base model only
    /// (`adapter_load` is refused; see [`Serving::embedded_with_adapters`]).
    ///
    /// # Errors
    ///
    /// [`Error::Serving`] when the file cannot be read as a Llama-family GGUF model or the
    /// engine cannot start.
    pub fn embedded(path: &Path, threads: usize) -> Result<Self> {
        let file = open_gguf(path)?;
        let runner = HostLlamaRunner::from_gguf(
            &file,
            Box::new(SimdKernels::new(threads.max(1))),
            KV_BLOCKS,
            BLOCK_SIZE,
        )
        .map_err(|e| embedded_error("loading", path, &e))?;
        Self::start_embedded(path, &file, runner)
    }

    /// The GGUF model at `path` served in this process on burn's f32 decoder, slower than
    /// [`Serving::embedded`] but with PEFT adapters loadable at run time (`adapter_load`, a
    /// request's `adapter`): the fine-tune jobs' adapters served beside the base. vLLM's
    /// `--enable-lora`.
    ///
    /// # Errors
    ///
    /// As [`Serving::embedded`].
    pub fn embedded_with_adapters(path: &Path) -> Result<Self> {
        let file = open_gguf(path)?;
        let runner = LlamaRunner::from_gguf(&file, KV_BLOCKS, BLOCK_SIZE, &Device::flex())
            .map_err(|e| embedded_error("loading", path, &e))?;
        Self::start_embedded(path, &file, runner)
    }

    /// mlinfra-serve's engine and OpenAI server around `runner`, called in memory.
    fn start_embedded<R: ModelRunner + Send + 'static>(
        path: &Path,
        file: &mlinfra_data::tensor::GgufFile,
        runner: R,
    ) -> Result<Self> {
        let served = ServedModel::from_gguf(file)
            .map_err(|e| embedded_error("reading the tokenizer of", path, &e))?;
        let engine = Engine::new(
            runner,
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_running: 64,
                    ..SchedulerConfig::default()
                },
                ..EngineConfig::default()
            },
        )
        .map_err(|e| embedded_error("starting the engine for", path, &e))?;
        let model = path.file_stem().map_or_else(
            || "model".into(),
            |stem| stem.to_string_lossy().into_owned(),
        );
        let mut config = ServerConfig::new(model.clone());
        config.allow_runtime_lora = true;
        let server = Server::start(engine, served, config)
            .map_err(|e| embedded_error("serving", path, &e))?;
        let model_hash = crate::lineage::content_hash(path)?;
        Ok(Self {
            backend: Backend::Embedded {
                router: server.router(),
                _server: server,
            },
            model,
            model_hash: Some(model_hash),
        })
    }

    /// The OpenAI-compatible server at `base` (`http://127.0.0.1:8000`, or `https://`), its
    /// model `model`, with `api_key` as a bearer token when given.
    pub fn remote(
        base: impl Into<String>,
        model: impl Into<String>,
        api_key: Option<String>,
    ) -> Self {
        install_crypto_provider();
        Self {
            backend: Backend::Remote {
                base: {
                    let base: String = base.into();
                    let base = base.trim_end_matches('/');
                    base.strip_suffix("/v1").unwrap_or(base).to_owned()
                },
                client: reqwest::Client::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .timeout(REMOTE_TIMEOUT)
                    .build()
                    .unwrap_or_default(),
                api_key,
            },
            model: model.into(),
            model_hash: None,
        }
    }

    /// The model file's content hash, for an embedded model.
    pub fn model_hash(&self) -> Option<&str> {
        self.model_hash.as_deref()
    }

    /// The model name requests use.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// `path` with `body` (POST) or without (GET); the response's status and body.
    async fn send(&self, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>)> {
        let failed = |error: &dyn std::fmt::Display| Error::Serving {
            reason: format!("{path}: {error}").into(),
        };
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        match &self.backend {
            Backend::Embedded { router, .. } => {
                let request = Request::builder()
                    .method(if bytes.is_some() {
                        Method::POST
                    } else {
                        Method::GET
                    })
                    .uri(path)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(bytes.map_or_else(Body::empty, Body::from))
                    .map_err(|e| failed(&e))?;
                let response = router
                    .clone()
                    .oneshot(request)
                    .await
                    .map_err(|e| failed(&e))?;
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), MAX_RESPONSE_BYTES)
                    .await
                    .map_err(|e| failed(&e))?;
                Ok((status, body.to_vec()))
            }
            Backend::Remote {
                base,
                client,
                api_key,
            } => {
                let url = format!("{base}{path}");
                let mut request = match bytes {
                    Some(bytes) => client
                        .post(&url)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(bytes),
                    None => client.get(&url),
                };
                if let Some(key) = api_key {
                    request = request.bearer_auth(key);
                }
                let mut response = request.send().await.map_err(|e| failed(&e))?;
                let status = response.status().as_u16();
                // Read up to the cap, not the whole body first.
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| failed(&e))? {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(failed(&format!(
                            "a response over {MAX_RESPONSE_BYTES} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok((status, body))
            }
        }
    }

    /// POSTs `body` to `path` and returns the JSON response; an error status is an error
    /// carrying the server's message.
    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, bytes) = self.send(path, Some(body)).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|error| Error::Serving {
            reason: format!("{path}: HTTP {status}, not JSON: {error}").into(),
        })?;
        if status >= 400 {
            let message = value["error"]["message"].as_str().unwrap_or("no message");
            return Err(Error::Serving {
                reason: format!("{path}: HTTP {status}: {message}").into(),
            });
        }
        Ok(value)
    }

    /// POSTs `body` to `path`, whose success answer is a line of text (vLLM's adapter
    /// endpoints: "Success: LoRA adapter ... added"); its errors are OpenAI's JSON.
    async fn post_for_text(&self, path: &str, body: &Value) -> Result<()> {
        let (status, bytes) = self.send(path, Some(body)).await?;
        if status >= 400 {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = value["error"]["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_owned,
            );
            return Err(Error::Serving {
                reason: format!("{path}: HTTP {status}: {message}").into(),
            });
        }
        Ok(())
    }

    /// A text completion of `request.prompt`.
    pub async fn generate(&self, request: &GenerateRequest) -> Result<Generation> {
        let model = request.adapter.as_deref().unwrap_or(&self.model);
        let body = json!({
            "model": model,
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        });
        let started = Instant::now();
        let response = self.post("/v1/completions", &body).await?;
        Generation::read(&response, &response["choices"][0]["text"], started)
    }

    /// A chat completion of `request.messages` (the model's chat template applied).
    pub async fn chat(&self, request: &ChatRequest) -> Result<Generation> {
        let model = request.adapter.as_deref().unwrap_or(&self.model);
        let body = json!({
            "model": model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        });
        let started = Instant::now();
        let response = self.post("/v1/chat/completions", &body).await?;
        Generation::read(
            &response,
            &response["choices"][0]["message"]["content"],
            started,
        )
    }

    /// The engine's Prometheus metrics: every sample without labels, by name.
    pub async fn metrics(&self) -> Result<EngineMetrics> {
        let (status, bytes) = self.send("/metrics", None).await?;
        if status >= 400 {
            return Err(Error::Serving {
                reason: format!("/metrics: HTTP {status}").into(),
            });
        }
        let text = String::from_utf8_lossy(&bytes);
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.contains('{'))
            .filter_map(|line| {
                let (name, value) = line.split_once(' ')?;
                Some((name.to_owned(), value.trim().parse::<f64>().ok()?))
            })
            .collect();
        Ok(EngineMetrics { samples })
    }

    /// Loads the PEFT adapter at `path` (already resolved under the data root) as `name`.
    pub async fn load_adapter(&self, name: &str, path: &Path) -> Result<AdapterReport> {
        let body = json!({"lora_name": name, "lora_path": path.display().to_string()});
        self.post_for_text("/v1/load_lora_adapter", &body).await?;
        Ok(AdapterReport {
            name: name.to_owned(),
            loaded: true,
        })
    }

    /// Unloads adapter `name`.
    pub async fn unload_adapter(&self, name: &str) -> Result<AdapterReport> {
        self.post_for_text("/v1/unload_lora_adapter", &json!({"lora_name": name}))
            .await?;
        Ok(AdapterReport {
            name: name.to_owned(),
            loaded: false,
        })
    }
}

/// `generate`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The text to continue.
    pub prompt: String,
    /// The most tokens to generate, 1 to 4096.
    pub max_tokens: u32,
    /// Sampling temperature; 0 (the default) is greedy, the same text every time.
    #[serde(default)]
    pub temperature: f32,
    /// A loaded LoRA adapter to generate with, by name; the base model by default.
    #[serde(default)]
    pub adapter: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// `chat`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// The most tokens to generate, 1 to 4096.
    pub max_tokens: u32,
    /// Sampling temperature; 0 (the default) is greedy.
    #[serde(default)]
    pub temperature: f32,
    /// A loaded LoRA adapter to answer with, by name; the base model by default.
    #[serde(default)]
    pub adapter: Option<String>,
}

/// What a generation produced.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Generation {
    /// The generated text.
    pub text: String,
    /// `stop` (an end token or stop string) or `length` (`max_tokens` reached).
    pub finish_reason: String,
    /// Tokens in the prompt (after the chat template, for `chat`).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// The model (or adapter) that answered.
    pub model: String,
    /// Wall time of the request, seconds.
    pub seconds: f64,
}

impl Generation {
    fn read(response: &Value, text: &Value, started: Instant) -> Result<Self> {
        let missing = |field: &str| Error::Serving {
            reason: format!("the response has no {field}: {response}").into(),
        };
        Ok(Self {
            text: text.as_str().ok_or_else(|| missing("text"))?.to_owned(),
            finish_reason: response["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            prompt_tokens: response["usage"]["prompt_tokens"]
                .as_u64()
                .ok_or_else(|| missing("usage.prompt_tokens"))?,
            completion_tokens: response["usage"]["completion_tokens"]
                .as_u64()
                .ok_or_else(|| missing("usage.completion_tokens"))?,
            model: response["model"].as_str().unwrap_or_default().to_owned(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The engine's metrics.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EngineMetrics {
    /// Each unlabelled Prometheus sample (request counts, tokens, KV blocks in use, prefix
    /// cache hits...), by metric name.
    pub samples: std::collections::BTreeMap<String, f64>,
}

/// `adapter_load`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterLoadRequest {
    /// The name requests will use for it.
    pub name: String,
    /// A PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`) under the
    /// data root. Give this or `job`.
    #[serde(default)]
    pub path: Option<String>,
    /// A finished fine-tune job whose adapter to load (its directory is on this machine: a
    /// server at a URL must share the file system). Give this or `path`.
    #[serde(default)]
    pub job: Option<String>,
}

/// `adapter_unload`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterName {
    /// The adapter's name.
    pub name: String,
}

/// An adapter's state after a load or unload.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AdapterReport {
    /// Its name.
    pub name: String,
    /// Whether it is loaded now.
    pub loaded: bool,
}
