//! The OpenAI server over SmolLM2-135M (issue 23, items 3 and 6), through raw HTTP: what a
//! client sees, checked against the model run alone, and its behaviour under bad input,
//! overload, hang-ups and shutdown.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use mlinfra_data::tensor::GgufFile;
use mlinfra_serve::engine::{Engine, EngineConfig};
use mlinfra_serve::runner::{LlamaRunner, ModelRunner};
use mlinfra_serve::sched::SchedulerConfig;
use mlinfra_serve::server::{ServedModel, Server, ServerConfig};
use mlinfra_test_utils::http::{open_stream, request, request_with, sse_data};
use mlinfra_train::models::{KvCache, Llama};
use mlinfra_train::peft::{LoraConfig, TargetModules};
use serde_json::{Value, json};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const NAME: &str = "smol";

/// A server on 127.0.0.1 with an ephemeral port, on its own runtime thread; dropping it
/// shuts it down and waits for `serve` to return.
struct TestServer {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// SmolLM2 served as [`NAME`] with `config` and `scheduler` changed by `tune`; `None`
    /// (after a skip line) when the model file is missing outside CI.
    fn start(tune: impl FnOnce(&mut ServerConfig, &mut SchedulerConfig)) -> Option<Self> {
        Self::start_with_adapters(&[], tune)
    }

    /// [`start`](Self::start) with PEFT adapters loaded first, as `--lora NAME=DIR` does.
    fn start_with_adapters(
        adapters: &[(&str, &std::path::Path)],
        tune: impl FnOnce(&mut ServerConfig, &mut SchedulerConfig),
    ) -> Option<Self> {
        let path = mlinfra_test_utils::model(MODEL_FILE)?;
        let file = GgufFile::open(&path).unwrap();
        let served = ServedModel::from_gguf(&file).unwrap();
        let mut runner = LlamaRunner::from_gguf(&file, 256, 16, &Device::flex()).unwrap();
        for (name, dir) in adapters {
            runner.load_adapter(name, dir).unwrap();
        }
        let mut config = ServerConfig::new(NAME);
        let mut scheduler = SchedulerConfig::default();
        tune(&mut config, &mut scheduler);
        let engine = Engine::new(
            runner,
            EngineConfig {
                scheduler,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        let server = Server::start(engine, served, config).unwrap();
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let (bound, address) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                bound.send(listener.local_addr()?).unwrap();
                server
                    .serve(listener, async move {
                        let _ = signal.await;
                    })
                    .await
            })
        });
        Some(TestServer {
            address: address.recv().unwrap(),
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = request(self.address, "POST", path, &body.to_string());
        (response.status, response.json())
    }

    /// A Prometheus sample's value (`name` with its labels, as printed).
    fn metric(&self, name: &str) -> f64 {
        let text = request(self.address, "GET", "/metrics", "").body;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `/metrics` until `done` holds (30 s at most).
    fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the shutdown and waits for `serve` to return.
    fn stop(mut self) -> std::io::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": NAME,
        "messages": [{"role": "user", "content": content}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn completion(prompt: &str, extra: Value) -> Value {
    let mut body = json!({"model": NAME, "prompt": prompt});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// The JSON chunks of a stream, checking it ends with `[DONE]`.
fn stream_chunks(server: &TestServer, path: &str, body: &Value) -> Vec<Value> {
    let (status, mut reader) = open_stream(server.address, path, &body.to_string());
    assert_eq!(status, 200);
    let data: Vec<String> = sse_data(&mut reader).collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect()
}

/// Greedy chat is what the model generates alone (contiguous KV, no scheduler, no paging):
/// the template's prompt, its tokens and the stop at end-of-turn all agree.
#[test]
fn greedy_chat_is_what_the_model_generates_alone() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    let question = "What is the capital of France?";
    let (status, response) = server.post(
        "/v1/chat/completions",
        &chat(question, json!({"temperature": 0, "max_tokens": 24})),
    );
    assert_eq!(status, 200, "{response}");

    let file = GgufFile::open(mlinfra_test_utils::model(MODEL_FILE).unwrap()).unwrap();
    let served = ServedModel::from_gguf(&file).unwrap();
    let (model, _) = Llama::from_gguf(&file, &Device::flex()).unwrap();
    let text = served
        .chat_template
        .as_ref()
        .unwrap()
        .render_with_tools(&[json!({"role": "user", "content": question})], &[], true)
        .unwrap();
    let prompt = served.tokenizer.encode(&text).unwrap();
    let mut cache = KvCache::default();
    let mut ids = vec![model.greedy_next(&prompt, &mut cache).unwrap()];
    while ids.len() < 24 && !served.stop_token_ids.contains(ids.last().unwrap()) {
        let next = model
            .greedy_next(&ids[ids.len() - 1..], &mut cache)
            .unwrap();
        ids.push(next);
    }
    let stopped = served.stop_token_ids.contains(ids.last().unwrap());
    let shown = if stopped {
        &ids[..ids.len() - 1]
    } else {
        &ids[..]
    };
    let expected = served.tokenizer.decode(shown).unwrap();

    let choice = &response["choices"][0];
    assert_eq!(
        choice["message"]["content"],
        expected.as_str(),
        "{response}"
    );
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["finish_reason"],
        if stopped { "stop" } else { "length" }
    );
    let usage = &response["usage"];
    assert_eq!(usage["prompt_tokens"], prompt.len());
    assert_eq!(usage["completion_tokens"], ids.len());
    assert_eq!(usage["total_tokens"], prompt.len() + ids.len());
    assert_eq!(response["object"], "chat.completion");
    assert_eq!(response["model"], NAME);

    // The same conversation again: its prompt's whole blocks come from the prefix cache.
    let (_, again) = server.post(
        "/v1/chat/completions",
        &chat(question, json!({"temperature": 0, "max_tokens": 24})),
    );
    assert_eq!(again["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        (prompt.len() - 1) / 16 * 16,
        "{again}"
    );
}

/// A stream says what the whole response says, chunk by chunk; usage comes last, in a chunk
/// without choices, only when `stream_options.include_usage` asks for it.
#[test]
fn streams_carry_the_whole_text_and_usage_only_when_asked() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    let greedy = json!({"temperature": 0, "max_tokens": 16});
    let (_, whole) = server.post(
        "/v1/chat/completions",
        &chat("Name a color.", greedy.clone()),
    );
    let mut streamed = chat("Name a color.", greedy.clone());
    streamed["stream"] = json!(true);
    let chunks = stream_chunks(&server, "/v1/chat/completions", &streamed);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );

    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = stream_chunks(&server, "/v1/chat/completions", &streamed);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert!(rest.iter().all(|c| c["usage"].is_null()));
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        whole["usage"]["prompt_tokens"]
    );

    // Text completions stream the same way.
    let body = completion("The capital of France is", greedy);
    let (_, whole) = server.post("/v1/completions", &body);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text: String = stream_chunks(&server, "/v1/completions", &streamed)
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(whole["object"], "text_completion");
}

/// Stop strings end the text before them, also when they span tokens, and never reach the
/// client, streamed or not.
#[test]
fn stop_strings_cut_the_text_and_never_reach_the_client() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    let greedy = json!({"temperature": 0, "max_tokens": 24});
    let prompt = "The capital of France is";
    let (_, whole) = server.post("/v1/completions", &completion(prompt, greedy.clone()));
    let full = whole["choices"][0]["text"].as_str().unwrap().to_owned();
    let cut = full.char_indices().nth(5).map(|(i, _)| i).unwrap();
    let stop: String = full[cut..].chars().take(5).collect();
    let expected = &full[..full.find(&stop).unwrap()];

    let mut body = completion(prompt, greedy);
    body["stop"] = json!([stop, "never generated"]);
    let (_, stopped) = server.post("/v1/completions", &body);
    assert_eq!(
        stopped["choices"][0]["text"], expected,
        "stop {stop:?} in {full:?}"
    );
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let text: String = stream_chunks(&server, "/v1/completions", &body)
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, expected);
}

/// `n` choices are sampled independently; a seed makes the whole response reproducible; the
/// chat logprobs are the model's, most likely first.
#[test]
fn seeded_choices_repeat_and_logprobs_are_ordered() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    let body = chat(
        "Write a word.",
        json!({"n": 2, "seed": 11, "max_tokens": 8, "logprobs": true, "top_logprobs": 3}),
    );
    let (status, first) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{first}");
    let (_, second) = server.post("/v1/chat/completions", &body);
    let texts = |r: &Value| -> Vec<String> {
        r["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(texts(&first).len(), 2);
    assert_eq!(texts(&first), texts(&second));
    assert_eq!(first["choices"][1]["index"], 1);
    let mut completion_tokens = 0;
    for choice in first["choices"].as_array().unwrap() {
        let content = choice["logprobs"]["content"].as_array().unwrap();
        completion_tokens += content.len();
        for entry in content {
            let tops: Vec<f64> = entry["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["logprob"].as_f64().unwrap())
                .collect();
            assert_eq!(tops.len(), 3);
            assert!(tops.windows(2).all(|w| w[0] >= w[1]), "{tops:?}");
            assert!(entry["logprob"].as_f64().unwrap() <= tops[0] + 1e-6);
            assert!(tops[0] <= 0.0);
        }
    }
    assert_eq!(first["usage"]["completion_tokens"], completion_tokens);
}

/// Every client mistake is a 4xx with OpenAI's error object, never a 500 or a dropped
/// connection.
#[test]
fn client_mistakes_get_openai_shaped_4xx_errors() {
    let Some(server) = TestServer::start(|config, _| config.max_body_bytes = 64 << 10) else {
        return;
    };
    let address = server.address;
    let check = |response: mlinfra_test_utils::http::Response, status: u16, says: &str| {
        assert_eq!(response.status, status, "{}", response.body);
        let error = &response.json()["error"];
        for field in ["message", "type", "param", "code"] {
            assert!(error.get(field).is_some(), "no {field}: {}", response.body);
        }
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} does not say {says:?}");
        error.clone()
    };
    check(
        request(address, "POST", "/v1/chat/completions", "{not json"),
        400,
        "JSON",
    );
    check(
        request(address, "POST", "/v1/chat/completions", ""),
        400,
        "JSON",
    );
    let bad_type = chat("hi", json!({"max_tokens": "many"}));
    check(
        request(
            address,
            "POST",
            "/v1/chat/completions",
            &bad_type.to_string(),
        ),
        400,
        "invalid type",
    );
    let error = check(
        request(
            address,
            "POST",
            "/v1/completions",
            &completion("hi", json!({"n": 0})).to_string(),
        ),
        400,
        "`n`",
    );
    assert_eq!(error["param"], "n");
    let unknown = json!({"model": "gpt-9", "prompt": "hi"});
    let error = check(
        request(address, "POST", "/v1/completions", &unknown.to_string()),
        404,
        "gpt-9",
    );
    assert_eq!(error["code"], "model_not_found");
    // The limit: the model's 8192-token context, or less when the KV pool is smaller (it is
    // here), as `/v1/models` says.
    let limit = request(address, "GET", "/v1/models", "").json()["data"][0]["max_model_len"]
        .as_u64()
        .unwrap();
    assert!(limit <= 8192);
    let long = completion("hi", json!({"max_tokens": 10_000}));
    let error = check(
        request(address, "POST", "/v1/completions", &long.to_string()),
        400,
        &limit.to_string(),
    );
    assert_eq!(error["code"], "context_length_exceeded");
    assert!(error["message"].as_str().unwrap().contains("10000"));
    let too_many = chat("hi", json!({"logprobs": true, "top_logprobs": 21}));
    check(
        request(
            address,
            "POST",
            "/v1/chat/completions",
            &too_many.to_string(),
        ),
        400,
        "20",
    );
    let no_messages = json!({"model": NAME, "messages": []});
    check(
        request(
            address,
            "POST",
            "/v1/chat/completions",
            &no_messages.to_string(),
        ),
        400,
        "empty",
    );
    let big = completion(&"word ".repeat(20_000), json!({}));
    check(
        request(address, "POST", "/v1/completions", &big.to_string()),
        413,
        "limit",
    );
    let huge = completion("hi", json!({"max_tokens": u64::MAX}));
    check(
        request(address, "POST", "/v1/completions", &huge.to_string()),
        400,
        "maximum context length",
    );
    let forced_forever = chat(
        "hi",
        json!({"ignore_eos": true, "response_format": {"type": "json_object"}}),
    );
    check(
        request(
            address,
            "POST",
            "/v1/chat/completions",
            &forced_forever.to_string(),
        ),
        400,
        "ignore_eos",
    );
    let load = json!({"lora_name": "x", "lora_path": "/etc"});
    check(
        request(address, "POST", "/v1/load_lora_adapter", &load.to_string()),
        404,
        "allow_runtime_lora",
    );
    check(
        request(address, "GET", "/v1/nothing", ""),
        404,
        "/v1/nothing",
    );
    check(request(address, "GET", "/v1/completions", ""), 405, "GET");
    // The server is still fine.
    let (status, _) = server.post(
        "/v1/completions",
        &completion("hi", json!({"max_tokens": 2})),
    );
    assert_eq!(status, 200);
}

/// Past `max_running + max_queue` sequences in flight, requests get 429 with `Retry-After`
/// (and are counted); the server takes them again once the load is gone.
#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let Some(server) = TestServer::start(|config, scheduler| {
        config.max_queue = 1;
        scheduler.max_running = 1;
    }) else {
        return;
    };
    let long = completion(
        "Once upon a time",
        json!({"max_tokens": 400, "stream": true}),
    );
    let (_, mut running) = open_stream(server.address, "/v1/completions", &long.to_string());
    let (_, queued) = open_stream(server.address, "/v1/completions", &long.to_string());
    sse_data(&mut running).next().unwrap();
    let refused = request(
        server.address,
        "POST",
        "/v1/completions",
        &completion("hi", json!({})).to_string(),
    );
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["code"], "queue_full");
    assert_eq!(
        server.metric("mlinfra_requests_rejected_total{reason=\"queue_full\"}"),
        1.0
    );
    // More sequences than the server ever runs at once: a 400, not a 429 to retry forever.
    let never = completion("hi", json!({"n": 3}));
    let refused = request(
        server.address,
        "POST",
        "/v1/completions",
        &never.to_string(),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    drop(running);
    drop(queued);
    server.wait_for("both streams aborted", |s| {
        s.metric("mlinfra_request_success_total{finished_reason=\"abort\"}") == 2.0
    });
    let (status, _) = server.post(
        "/v1/completions",
        &completion("hi", json!({"max_tokens": 2})),
    );
    assert_eq!(status, 200);
}

/// A client that hangs up mid-stream has its request aborted and its KV blocks freed, seen
/// through `/metrics` (issue 23, item 6).
#[test]
fn a_client_that_hangs_up_is_aborted_and_its_blocks_freed() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    let body = completion(
        "Once upon a time",
        json!({"max_tokens": 4000, "stream": true}),
    );
    let (status, mut reader) = open_stream(server.address, "/v1/completions", &body.to_string());
    assert_eq!(status, 200);
    let first: Vec<String> = sse_data(&mut reader).take(3).collect();
    assert_eq!(first.len(), 3);
    assert!(server.metric("mlinfra_kv_cache_usage_perc") > 0.0);
    assert_eq!(server.metric("mlinfra_num_requests_running"), 1.0);
    drop(reader);
    server.wait_for("the hung-up request to be aborted", |s| {
        s.metric("mlinfra_request_success_total{finished_reason=\"abort\"}") == 1.0
    });
    server.wait_for("its blocks to be freed", |s| {
        s.metric("mlinfra_num_requests_running") == 0.0
            && s.metric("mlinfra_kv_cache_usage_perc") == 0.0
    });
    // Far fewer tokens than asked for were generated: it stopped when the client left.
    assert!(server.metric("mlinfra_generation_tokens_total") < 1000.0);
}

/// With an API key, `/v1/*` wants it (`401` otherwise); `/health` and `/metrics` do not.
#[test]
fn the_api_key_guards_the_api_routes() {
    let Some(server) = TestServer::start(|config, _| config.api_key = Some("sk-test-123".into()))
    else {
        return;
    };
    let body = completion("hi", json!({"max_tokens": 2})).to_string();
    let missing = request(server.address, "POST", "/v1/completions", &body);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    let wrong = request_with(
        server.address,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer sk-test-12")],
        body.as_bytes(),
    );
    assert_eq!(wrong.status, 401);
    let right = request_with(
        server.address,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer sk-test-123")],
        body.as_bytes(),
    );
    assert_eq!(right.status, 200, "{}", right.body);
    assert_eq!(request(server.address, "GET", "/health", "").status, 200);
    assert_eq!(request(server.address, "GET", "/metrics", "").status, 200);
}

/// A shutdown lets the request in flight finish, then `serve` returns; past the drain
/// deadline, what is left is aborted instead.
#[test]
fn shutdown_drains_requests_in_flight_within_the_deadline() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    let body = completion(
        "Once upon a time",
        json!({"max_tokens": 12, "stream": true, "temperature": 0}),
    );
    let (_, mut reader) = open_stream(server.address, "/v1/completions", &body.to_string());
    let mut data = sse_data(&mut reader);
    data.next().unwrap();
    let address = server.address;
    let stopping = std::thread::spawn(move || server.stop());
    let rest: Vec<String> = data.collect();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    let finish: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    stopping.join().unwrap().unwrap();
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "still listening"
    );

    let Some(server) = TestServer::start(|config, _| {
        config.drain_timeout = Duration::from_millis(300);
    }) else {
        return;
    };
    let body = completion(
        "Once upon a time",
        json!({"max_tokens": 4000, "stream": true}),
    );
    let (_, mut reader) = open_stream(server.address, "/v1/completions", &body.to_string());
    let mut data = sse_data(&mut reader);
    data.next().unwrap();
    let started = Instant::now();
    let stopping = std::thread::spawn(move || server.stop());
    let rest: Vec<String> = data.collect();
    let finish: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "abort");
    stopping.join().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": false,
        },
    }})
}

/// `response_format` makes the output JSON valid under the schema, by constrained decoding
/// (issue 23, item 4); a schema the grammar engine refuses is a 400.
#[test]
fn response_formats_constrain_the_output_to_valid_json() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": schema}});
    for seed in 0..3 {
        let body = chat(
            "Describe a person.",
            json!({"max_tokens": 80, "seed": seed, "response_format": format}),
        );
        let (status, response) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{response}");
        let choice = &response["choices"][0];
        assert_eq!(choice["finish_reason"], "stop", "{response}");
        let content: Value =
            serde_json::from_str(choice["message"]["content"].as_str().unwrap()).unwrap();
        let object = content.as_object().unwrap();
        assert!(
            content["name"].is_string() && content["age"].is_i64(),
            "{content}"
        );
        assert_eq!(object.len(), 2, "{content}");
    }
    let any = chat(
        "Describe a person.",
        json!({"max_tokens": 60, "temperature": 0, "response_format": {"type": "json_object"}}),
    );
    let (_, response) = server.post("/v1/chat/completions", &any);
    let content = response["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    if response["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object());
    } else {
        assert!(content.trim_start().starts_with('{'), "{content}");
    }
    let bad = chat(
        "hi",
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}}),
    );
    let (status, error) = server.post("/v1/chat/completions", &bad);
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "response_format");
}

/// `tool_choice: "required"` (and a named function) force one call whose arguments follow
/// the tool's schema; streamed, the arguments arrive as deltas that add up to the same call.
#[test]
fn forced_tool_calls_follow_the_schema_and_stream_as_deltas() {
    let Some(server) = TestServer::start(|_, _| {}) else {
        return;
    };
    for tool_choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        let body = chat(
            "What is the weather in Paris?",
            json!({"max_tokens": 60, "temperature": 0, "tools": [weather_tool()], "tool_choice": tool_choice}),
        );
        let (status, response) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{response}");
        let choice = &response["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{response}");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments = call["function"]["arguments"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(arguments).unwrap();
        assert!(parsed["city"].is_string(), "{parsed}");
        assert_eq!(parsed.as_object().unwrap().len(), 1);

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let chunks = stream_chunks(&server, "/v1/chat/completions", &streamed);
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(deltas[0]["function"]["name"], "get_weather");
        assert!(deltas[0]["id"].as_str().unwrap().starts_with("call_"));
        assert!(deltas.len() > 2, "arguments come in pieces: {deltas:?}");
        let joined: String = deltas
            .iter()
            .filter_map(|d| d["function"]["arguments"].as_str())
            .collect();
        assert_eq!(joined, arguments);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }
}

/// Two PEFT adapters for SmolLM2 with random `B` (so each changes the output), written
/// where `dir` says.
fn write_adapters(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let file = GgufFile::open(mlinfra_test_utils::model(MODEL_FILE).unwrap()).unwrap();
    let (model, _) = Llama::from_gguf(&file, &Device::flex()).unwrap();
    ["alpha", "beta"]
        .iter()
        .enumerate()
        .map(|(seed, name)| {
            let config = LoraConfig::new(8, 16.0)
                .with_init_lora_weights(false)
                .with_target_modules(TargetModules::names(["q_proj", "v_proj", "down_proj"]));
            let adapted = model
                .clone()
                .with_adapter(name, &config, seed as u64)
                .unwrap();
            let path = dir.join(name);
            adapted.save_adapter(name, &path, None).unwrap();
            path
        })
        .collect()
}

/// The greedy continuation of `prompt` by SmolLM2 with `adapter` (or none), run alone.
fn greedy_alone(prompt: &str, adapter: Option<&std::path::Path>, max: usize) -> String {
    let file = GgufFile::open(mlinfra_test_utils::model(MODEL_FILE).unwrap()).unwrap();
    let served = ServedModel::from_gguf(&file).unwrap();
    let (mut model, _) = Llama::from_gguf(&file, &Device::flex()).unwrap();
    if let Some(dir) = adapter {
        model = model.load_adapter(dir, "adapter").unwrap();
    }
    let ids = served.tokenizer.encode(prompt).unwrap();
    let out = model
        .generate_greedy(&ids, max, &served.stop_token_ids)
        .unwrap();
    let shown = match out.last() {
        Some(last) if served.stop_token_ids.contains(last) => &out[..out.len() - 1],
        _ => &out[..],
    };
    served.tokenizer.decode(shown).unwrap()
}

/// Requests on two adapters and the base model, at once, each get what their model computes
/// alone (one batch, per-row adapters); adapters come and go while the server runs, and one
/// in use is not unloaded (issue 23, item 5).
#[test]
fn requests_on_different_adapters_share_a_batch_and_get_their_own_outputs() {
    if mlinfra_test_utils::model(MODEL_FILE).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = write_adapters(dir.path());
    let Some(server) = TestServer::start_with_adapters(&[("alpha", &paths[0])], |config, _| {
        config.allow_runtime_lora = true;
    }) else {
        return;
    };
    let prompt = "The capital of France is";
    // Load the second while running, as vLLM's endpoint does.
    let load = json!({"lora_name": "beta", "lora_path": paths[1]});
    let loaded = request(
        server.address,
        "POST",
        "/v1/load_lora_adapter",
        &load.to_string(),
    );
    assert_eq!(loaded.status, 200, "{}", loaded.body);
    let models = request(server.address, "GET", "/v1/models", "").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [NAME, "alpha", "beta"]);
    assert_eq!(models["data"][1]["parent"], NAME);

    let address = server.address;
    let ask = move |model: &'static str| {
        std::thread::spawn(move || {
            let body =
                json!({"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0});
            let response = request(address, "POST", "/v1/completions", &body.to_string());
            assert_eq!(response.status, 200, "{}", response.body);
            response.json()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    };
    let running: Vec<_> = [NAME, "alpha", "beta"].into_iter().map(ask).collect();
    let texts: Vec<String> = running.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(texts[0], greedy_alone(prompt, None, 12));
    assert_eq!(texts[1], greedy_alone(prompt, Some(&paths[0]), 12));
    assert_eq!(texts[2], greedy_alone(prompt, Some(&paths[1]), 12));
    assert_ne!(texts[0], texts[1], "the adapter changes the output");
    assert_ne!(texts[1], texts[2]);

    // The prefix cache is keyed by adapter: the base model's cached prompt is not alpha's.
    let long_prompt = "Once upon a time, in a land far away, there lived a king who had three daughters and a very old dog.";
    let body = |model: &str| json!({"model": model, "prompt": long_prompt, "max_tokens": 2, "temperature": 0});
    let (_, base) = server.post("/v1/completions", &body(NAME));
    let (_, first) = server.post("/v1/completions", &body("alpha"));
    let (_, second) = server.post("/v1/completions", &body("alpha"));
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    assert!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 16
    );
    assert!(base["usage"]["prompt_tokens"].as_u64().unwrap() > 16);

    // An adapter in use is not unloaded; once its request is done, it is.
    let long = json!({"model": "beta", "prompt": prompt, "max_tokens": 400, "stream": true});
    let (_, mut reader) = open_stream(server.address, "/v1/completions", &long.to_string());
    sse_data(&mut reader).next().unwrap();
    let unload = json!({"lora_name": "beta"}).to_string();
    let refused = request(server.address, "POST", "/v1/unload_lora_adapter", &unload);
    assert_eq!(refused.status, 409, "{}", refused.body);
    drop(reader);
    server.wait_for("the stream on beta to end", |s| {
        s.metric("mlinfra_num_requests_running") == 0.0
    });
    server.post("/v1/completions", &body("beta"));
    let (_, cached_beta) = server.post("/v1/completions", &body("beta"));
    let unloaded = request(server.address, "POST", "/v1/unload_lora_adapter", &unload);
    assert_eq!(unloaded.status, 200, "{}", unloaded.body);
    // Loaded again under the same name from other weights (alpha's): none of the old beta's
    // cached KV is reused, and the output is the new weights'.
    let reload = json!({"lora_name": "beta", "lora_path": paths[0]});
    let reloaded = request(
        server.address,
        "POST",
        "/v1/load_lora_adapter",
        &reload.to_string(),
    );
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let (_, again) = server.post("/v1/completions", &body("beta"));
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{again}"
    );
    assert_eq!(again["choices"][0]["text"], second["choices"][0]["text"]);
    assert!(cached_beta["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(0));
    let unloaded = request(server.address, "POST", "/v1/unload_lora_adapter", &unload);
    assert_eq!(unloaded.status, 200, "{}", unloaded.body);
    let gone = request(
        server.address,
        "POST",
        "/v1/completions",
        &json!({"model": "beta", "prompt": "hi"}).to_string(),
    );
    assert_eq!(gone.status, 404);
    let bad = json!({"lora_name": "gamma", "lora_path": "/nonexistent"});
    let refused = request(
        server.address,
        "POST",
        "/v1/load_lora_adapter",
        &bad.to_string(),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
}
