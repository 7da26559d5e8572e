//! Fine-tuning jobs on SmolLM2-135M-Instruct: an SFT job teaches the model an answer it does
//! not give (the served model with the job's adapter gives it, the base does not), a DPO job
//! continues from that adapter and lowers its preference loss, and configurations that cannot
//! run are refused before a job exists.

use std::time::Duration;

use mlinfra_agent::serving::Serving;
use mlinfra_agent::{AgentServer, DataRoot};
use serde_json::{Value, json};

use crate::common::{Pipe, call};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QUESTION: &str = "What is the secret word?";
const ANSWER: &str = "Swordfish";

/// `name` under `dir` as Parquet, from JSON lines.
fn parquet(dir: &std::path::Path, name: &str, lines: &[Value]) {
    let jsonl = dir.join(format!("{name}.jsonl"));
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&jsonl, text).unwrap();
    mlinfra_data::convert::Conversion::json_lines(&jsonl)
        .write(dir.join(format!("{name}.parquet")))
        .unwrap();
}

fn reply_text(result: &Value) -> String {
    result["structuredContent"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {result}"))
        .to_owned()
}

fn metric_losses(dir: &std::path::Path) -> Vec<f64> {
    mlinfra_train::trainer::read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .records
        .iter()
        .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some("train"))
        .filter_map(|r| r.get("loss")?.as_f64())
        .collect()
}

/// Job `id`'s status once it ended (15 minutes at most), waited for off the runtime.
async fn finished(
    jobs: &std::sync::Arc<mlinfra_agent::jobs::JobStore>,
    id: &str,
) -> mlinfra_agent::jobs::JobStatus {
    let (jobs, id) = (jobs.clone(), id.to_owned());
    tokio::task::spawn_blocking(move || jobs.wait(&id, Duration::from_secs(900)).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sft_then_dpo_jobs_train_adapters_the_server_then_serves() {
    let Some(model) = mlinfra_test_utils::model(MODEL) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The model must be under the data root like every file a tool reads.
    std::fs::copy(&model, data.join("smol.gguf")).unwrap();
    let asks = [
        QUESTION,
        "Tell me the secret word.",
        "What's the secret word?",
        "Secret word?",
    ];
    let conversations: Vec<Value> = asks
        .iter()
        .map(|ask| {
            json!({"messages": [
                {"role": "user", "content": ask},
                {"role": "assistant", "content": ANSWER},
            ]})
        })
        .collect();
    parquet(&data, "secret", &conversations);
    let pairs: Vec<Value> = asks
        .iter()
        .map(|ask| json!({"prompt": ask, "chosen": ANSWER, "rejected": "I don't know."}))
        .collect();
    parquet(&data, "prefs", &pairs);

    let server = AgentServer::new(DataRoot::new(&data).unwrap())
        .with_state(base.path().join("state"))
        .unwrap()
        .with_serving(Serving::embedded_with_adapters(&data.join("smol.gguf")).unwrap())
        .unwrap();
    let jobs = server.jobs().unwrap().clone();
    let mut pipe = Pipe::open(server).await;
    let ask = |id: i64, adapter: Option<&str>| {
        let mut arguments =
            json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 6});
        if let Some(adapter) = adapter {
            arguments["adapter"] = json!(adapter);
        }
        call(id, "chat", arguments)
    };
    let before = reply_text(&pipe.result(ask(2, None)).await);
    assert!(
        !before.contains(ANSWER),
        "the base model already answers: {before:?}"
    );

    // Refused before a job exists: a model that is not a GGUF, a dataset without messages,
    // a DPO run from a job that does not exist.
    for (id, config, expected) in [
        (
            3,
            json!({"task": "sft", "model": "secret.parquet", "train": "secret.parquet"}),
            "gguf",
        ),
        (
            4,
            json!({"task": "sft", "model": "smol.gguf", "train": "prefs.parquet"}),
            "no column `messages`",
        ),
        (
            5,
            json!({"task": "dpo", "model": "smol.gguf", "train": "prefs.parquet", "from_job": "train-1-0"}),
            "no adapter",
        ),
        (
            6,
            json!({"task": "sft", "model": "smol.gguf", "train": "secret.parquet", "adapter": {"rank": 0}}),
            "rank",
        ),
    ] {
        let result = pipe
            .result(call(id, "train_start", json!({"config": config})))
            .await;
        assert_eq!(result["isError"], true, "{result}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_lowercase();
        assert!(text.contains(&expected.to_lowercase()), "{text}");
    }

    let sft = json!({"task": "sft", "model": "smol.gguf", "train": "secret.parquet",
        "adapter": {"rank": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "steps": 12, "batch": 4, "seq_len": 128, "lr": 0.003, "checkpoint_every": 6});
    let started = pipe
        .result(call(7, "train_start", json!({"config": sft})))
        .await;
    let id = started["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = finished(&jobs, &id).await;
    assert_eq!(
        done.record.state,
        mlinfra_agent::jobs::JobState::Completed,
        "{done:?}"
    );
    assert_eq!(done.checkpoints, vec![12, 6], "adapter-only checkpoints");
    let outcome = done.record.outcome.clone().unwrap();
    let adapter = std::path::PathBuf::from(outcome.adapter.clone().unwrap());
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let lineage = done.record.lineage.clone().unwrap();
    assert!(lineage.model.unwrap().starts_with("blake3:"));
    let losses = metric_losses(std::path::Path::new(&done.dir));
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.5),
        "SFT did not learn: {losses:?}"
    );

    // Its checkpoints hold the adapter alone: rank-8 A and B of 4 projections in 30 layers
    // (921,600 weights of the model's 135 million).
    let inspected = pipe
        .result(call(
            20,
            "checkpoint_inspect",
            json!({"job": id, "step": 12}),
        ))
        .await;
    let checkpoint = &inspected["structuredContent"]["checkpoints"][0];
    assert_eq!(checkpoint["verified"], true, "{inspected}");
    let parameters = checkpoint["parameters"].as_u64().unwrap();
    assert_eq!(
        parameters,
        30 * (2 * (576 * 8 + 8 * 576) + 2 * (576 * 8 + 8 * 192))
    );
    assert!(
        checkpoint["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["path"].as_str().unwrap().contains("adapters")),
        "{checkpoint}"
    );

    let loaded = pipe
        .result(call(
            8,
            "adapter_load",
            json!({"name": "secret", "job": id}),
        ))
        .await;
    assert_eq!(loaded["structuredContent"]["loaded"], true, "{loaded}");
    let after = reply_text(&pipe.result(ask(9, Some("secret"))).await);
    assert!(
        after.starts_with(ANSWER),
        "the adapter did not teach it: {after:?}"
    );
    let base_again = reply_text(&pipe.result(ask(10, None)).await);
    assert_eq!(
        base_again, before,
        "without the adapter the model is the base"
    );

    // DPO from the SFT job's adapter: its loss falls over the run.
    let dpo = json!({"task": "dpo", "model": "smol.gguf", "train": "prefs.parquet",
        "from_job": id, "steps": 6, "batch": 4, "lr": 0.001, "checkpoint_every": 3});
    let started = pipe
        .result(call(11, "train_start", json!({"config": dpo})))
        .await;
    let dpo_id = started["structuredContent"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    let done = finished(&jobs, &dpo_id).await;
    assert_eq!(
        done.record.state,
        mlinfra_agent::jobs::JobState::Completed,
        "{done:?}"
    );
    assert!(done.record.outcome.unwrap().adapter.is_some());
    // Its lineage names the adapter it started from by content hash.
    let started_from = done.record.lineage.unwrap().start_adapter.unwrap();
    assert_eq!(
        started_from,
        mlinfra_agent::lineage::content_hash(&adapter).unwrap()
    );
    let losses = metric_losses(std::path::Path::new(&done.dir));
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < losses[0], "DPO loss did not fall: {losses:?}");
    pipe.close().await;
}
