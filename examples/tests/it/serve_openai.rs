//! `serve_openai`'s contract (issue 23, items 7 and 8): it prints `listening on
//! http://HOST:PORT` once ready, lists the model under the GGUF stem or
//! `--served-model-name`, serves the official `openai` Python SDK, and on SIGTERM finishes
//! what is in flight and exits 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mlinfra_test_utils::http::{open_stream, request, sse_data};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A running server, killed on drop.
struct Running {
    child: Child,
    address: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the example on an ephemeral port and waits for its `listening on` line.
fn start(model: &Path, extra: &[&str]) -> Running {
    let mut child = crate::example("serve_openai")
        .arg("--model")
        .arg(model)
        .args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .parse()
        .unwrap();
    Running { child, address }
}

/// The venv's python with the `openai` SDK: `MLINFRA_OPENAI_PYTHON` (scripts/check sets it
/// from `scripts/openai-venv`), else that script's default place. `None` after a skip line
/// outside CI when neither is there; a failure under `CI=true`.
fn openai_python() -> Option<PathBuf> {
    let python = std::env::var_os("MLINFRA_OPENAI_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(Path::new(&home).join(".cache/mlinfra/venvs/openai/bin/python"))
        })
        .filter(|path| path.is_file());
    if python.is_none() {
        let missing = "the openai SDK's venv is missing; scripts/openai-venv makes it";
        assert!(
            !mlinfra_test_utils::is_ci(),
            "{missing} (required under CI=true)"
        );
        eprintln!("skipped: {missing}");
    }
    python
}

/// Two LoRA adapters with random `B` (each changes the output), as `NAME=DIR` flags.
fn write_adapters(model: &Path, dir: &Path) -> Vec<String> {
    use burn::tensor::Device;
    use mlinfra_train::models::Llama;
    use mlinfra_train::peft::LoraConfig;
    let file = mlinfra_data::tensor::GgufFile::open(model).unwrap();
    let (llama, _) = Llama::from_gguf(&file, &Device::flex()).unwrap();
    ["alpha", "beta"]
        .iter()
        .enumerate()
        .map(|(seed, name)| {
            let config = LoraConfig::new(8, 16.0).with_init_lora_weights(false);
            let adapted = llama
                .clone()
                .with_adapter(name, &config, seed as u64)
                .unwrap();
            let path = dir.join(name);
            adapted.save_adapter(name, &path, None).unwrap();
            format!("{name}={}", path.display())
        })
        .collect()
}

/// The official `openai` Python SDK against the example: chat and text completions, streamed
/// and not, `n=2`, stop strings, logprobs, `parse()` with pydantic, a tool call, requests on
/// two adapters at once, malformed and oversized requests.
#[test]
fn the_openai_sdk_is_served() {
    let Some(model) = mlinfra_test_utils::model(MODEL_FILE) else {
        return;
    };
    let Some(python) = openai_python() else {
        return;
    };
    let adapters = tempfile::tempdir().unwrap();
    let loras = write_adapters(&model, adapters.path());
    let server = start(&model, &["--lora", &loras[0], "--lora", &loras[1]]);
    let models = request(server.address, "GET", "/v1/models", "").json();
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/v1", server.address))
        .args(["SmolLM2-135M-Instruct.Q4_1", "alpha", "beta"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    mlinfra_test_utils::log_line(&format!("openai_client.py:\n{stdout}"));
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all checks passed"));
}

/// `--served-model-name` names the model; SIGTERM lets the stream in flight finish, then the
/// process exits 0.
#[test]
fn sigterm_drains_and_exits_zero() {
    let Some(model) = mlinfra_test_utils::model(MODEL_FILE) else {
        return;
    };
    let mut server = start(&model, &["--served-model-name", "tiny", "--max-queue", "4"]);
    let models = request(server.address, "GET", "/v1/models", "").json();
    assert_eq!(models["data"][0]["id"], "tiny");
    let body = serde_json::json!({
        "model": "tiny", "prompt": "Once upon a time", "max_tokens": 12,
        "temperature": 0, "stream": true,
    });
    let (status, mut reader) = open_stream(server.address, "/v1/completions", &body.to_string());
    assert_eq!(status, 200);
    let mut data = sse_data(&mut reader);
    data.next().unwrap();
    // SAFETY: kill(2) on our own child's pid, which has not been waited for.
    let sent = unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let rest: Vec<String> = data.collect();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
    let finish: serde_json::Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
