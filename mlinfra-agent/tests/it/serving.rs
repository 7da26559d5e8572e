//! The serving tools over the embedded engine (SmolLM2-135M-Instruct Q4_1): `chat` answers
//! as llama.cpp does, `generate` continues a prompt, `engine_metrics` counts exactly the
//! tokens the two reported, each generation's token counts are in its trace line, and bad
//! arguments are tool errors.

use mlinfra_agent::serving::{GenerateRequest, Serving};
use mlinfra_agent::trace::JsonlTraceLayer;
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;

use crate::common::{Buffer, Fixture, Pipe, call};

/// llama.cpp's greedy answer to the chat prompt "What is 2+2?" with this model's template
/// (its first 11 tokens; recorded offline, see examples/tests/it/llama_generate.rs).
const LLAMA_CPP_ANSWER: &str = "The answer to this classic math problem is 4.";

#[test]
fn chat_and_generate_run_the_embedded_engine_and_trace_their_tokens() {
    let Some(model) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let fixture = Fixture::new();
    let server = fixture
        .server()
        .with_serving(Serving::embedded(&model, 2).unwrap())
        .unwrap();
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::registry().with(JsonlTraceLayer::new(buffer.clone()));
    // One thread: the server's tasks run where the subscriber is the default.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let mut pipe = Pipe::open(server).await;
            let mut results = Vec::new();
            let calls = [
                call(2, "chat", json!({"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16})),
                call(3, "generate", json!({"prompt": "The capital of France is", "max_tokens": 8})),
                call(4, "engine_metrics", json!({})),
                call(5, "generate", json!({"prompt": "x", "max_tokens": 0})),
                call(6, "adapter_load", json!({"name": "a", "path": "../secret.parquet"})),
                call(7, "chat", json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "adapter": "nope"})),
            ];
            for request in calls {
                results.push(pipe.result(request).await);
            }
            results
        })
    });
    let [chat, generate, metrics, zero, outside, no_adapter] =
        <[Value; 6]>::try_from(results).unwrap();

    let answer = &chat["structuredContent"];
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .starts_with(LLAMA_CPP_ANSWER),
        "{chat}"
    );
    let completion = &generate["structuredContent"];
    assert_eq!(completion["completion_tokens"], 8, "{generate}");
    assert_eq!(completion["finish_reason"], "length");
    // The engine's counters hold exactly what the two generations reported.
    let samples = &metrics["structuredContent"]["samples"];
    let sum = |field: &str| answer[field].as_u64().unwrap() + completion[field].as_u64().unwrap();
    assert_eq!(
        samples["mlinfra_prompt_tokens_total"].as_f64(),
        Some(sum("prompt_tokens") as f64),
        "{metrics}"
    );
    assert_eq!(
        samples["mlinfra_generation_tokens_total"].as_f64(),
        Some(sum("completion_tokens") as f64)
    );
    for refused in [&zero, &outside, &no_adapter] {
        assert_eq!(refused["isError"], true, "{refused}");
    }
    assert!(
        outside["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{outside}"
    );

    // Each generation's trace line carries its token counts.
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let attributes: Vec<&Value> = lines.iter().map(|l| &l["attributes"]).collect();
    let chat_span = attributes
        .iter()
        .find(|a| a["gen_ai.tool.name"] == "chat")
        .unwrap_or_else(|| panic!("no chat span in {text}"));
    assert_eq!(
        chat_span["gen_ai.usage.input_tokens"], answer["prompt_tokens"],
        "{chat_span}"
    );
    assert_eq!(
        chat_span["gen_ai.usage.output_tokens"],
        answer["completion_tokens"]
    );
    assert_eq!(chat_span["outcome"], "ok");
    let metrics_span = attributes
        .iter()
        .find(|a| a["gen_ai.tool.name"] == "engine_metrics")
        .unwrap();
    assert!(
        metrics_span.get("gen_ai.usage.input_tokens").is_none(),
        "no tokens where none were generated"
    );
}

/// The same greedy completion through the remote backend (mlinfra-serve's OpenAI server on a
/// socket) as through the embedded one: one wire format, one answer.
#[test]
fn the_remote_backend_gets_what_the_embedded_one_gets() {
    use mlinfra_serve::engine::{Engine, EngineConfig};
    use mlinfra_serve::host::HostLlamaRunner;
    use mlinfra_serve::server::{ServedModel, Server, ServerConfig};
    let Some(model) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let file = mlinfra_data::tensor::GgufFile::open(&model).unwrap();
    let runner = HostLlamaRunner::from_gguf(
        &file,
        Box::new(mlinfra_kernels::cpu::SimdKernels::new(2)),
        256,
        16,
    )
    .unwrap();
    let engine = Engine::new(runner, EngineConfig::default()).unwrap();
    let served = ServedModel::from_gguf(&file).unwrap();
    let server = Server::start(engine, served, ServerConfig::new("smol")).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving_task = runtime.spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let request: GenerateRequest = serde_json::from_value(json!({
        "prompt": "The capital of France is", "max_tokens": 12
    }))
    .unwrap();
    let remote = Serving::remote(url, "smol", None);
    let embedded = Serving::embedded(&model, 2).unwrap();
    let (far, near) = runtime.block_on(async {
        (
            remote.generate(&request).await.unwrap(),
            embedded.generate(&request).await.unwrap(),
        )
    });
    assert_eq!(far.text, near.text);
    assert_eq!(
        (far.prompt_tokens, far.completion_tokens),
        (near.prompt_tokens, near.completion_tokens)
    );
    assert_eq!(far.model, "smol");
    // A refused request is an error with the server's message, not a parse failure.
    let bad: GenerateRequest = serde_json::from_value(json!({
        "prompt": "x", "max_tokens": 4, "adapter": "nope"
    }))
    .unwrap();
    let error = runtime.block_on(remote.generate(&bad)).unwrap_err();
    assert!(error.to_string().contains("HTTP 404"), "{error}");
    let _ = stop.send(());
    runtime.block_on(serving_task).unwrap().unwrap();
}
