//! `mcp_server` through the official Python `mcp` SDK (examples/tests/mcp_client.py): over
//! stdio, and over Streamable HTTP in both eras (a 2025-11-25 session, 2026-07-28 stateless
//! requests), every tool called, resources, the prompt and completion exercised.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::example;

/// The venv's python with the `mcp` SDK: `MLINFRA_MCP_PYTHON` (scripts/check sets it from
/// `scripts/mcp-python-venv`), else that script's default place. `None` after a skip line
/// outside CI when neither is there; a failure under `CI=true`.
fn mcp_python() -> Option<PathBuf> {
    let python = std::env::var_os("MLINFRA_MCP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(Path::new(&home).join(".cache/mlinfra/venvs/mcp/bin/python"))
        })
        .filter(|path| path.is_file());
    if python.is_none() {
        let missing = "the mcp SDK's venv is missing; scripts/mcp-python-venv makes it";
        assert!(
            !mlinfra_test_utils::is_ci(),
            "{missing} (required under CI=true)"
        );
        eprintln!("skipped: {missing}");
    }
    python
}

#[test]
fn the_official_python_client_drives_every_tool_on_both_transports_and_eras() {
    let Some(python) = mcp_python() else {
        return;
    };
    let server = example("mcp_server");
    let data_root = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let mut command = std::process::Command::new(python);
    command
        .arg(script)
        .arg("--server-binary")
        .arg(server.get_program())
        .arg("--data-root")
        .arg(data_root.path());
    // With the model, the serving tools are called too (without it, outside CI, they are not).
    let model = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if let Some(model) = &model {
        command.arg("--model").arg(model);
    }
    // The sandbox where this kernel can enforce it (CI's can); `sandbox_run` is called either
    // way (refused without it).
    if mlinfra_agent::sandbox::check_support(mlinfra_agent::sandbox::landlock_abi()).is_ok() {
        command.arg("--sandbox");
    }
    let run = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for (run, version) in [
        ("stdio", "2025-11-25"),
        ("http_2025", "2025-11-25"),
        ("http_2026", "2026-07-28"),
    ] {
        assert_eq!(summary[run]["protocol_version"], version, "{summary}");
        for capability in ["resources", "prompts", "completions"] {
            assert_ne!(
                summary[run][capability], "not advertised",
                "{run}: {summary}"
            );
        }
    }
    // The script itself fails when a listed tool goes uncalled; this holds it to the list.
    let called = summary["tools_called"].as_array().unwrap();
    let mut expected = vec![
        "dataset_schema",
        "dataset_sample",
        "dataset_fingerprint",
        "dataset_verify",
        "dataset_convert",
        "loader_plan",
        "loader_probe",
        "train_start",
        "train_status",
        "train_stop",
        "train_resume",
        "train_list",
        "train_wait",
        "job_delete",
        "lineage_list",
        "sandbox_run",
    ];
    if model.is_some() {
        expected.extend([
            "generate",
            "chat",
            "engine_metrics",
            "adapter_load",
            "adapter_unload",
        ]);
    }
    for tool in expected {
        assert!(
            called.iter().any(|t| t == tool),
            "{tool} not called: {summary}"
        );
    }
}
