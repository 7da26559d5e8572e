//! `llama_generate`'s contract (issue 24, item 7): `--chat`, `--ignore-eos`, `--threads`, and a
//! last JSON line with `prefill_tokens_per_s`, `decode_tokens_per_s` and `output_ids`; and the
//! greedy agreement with llama.cpp on the chat prompt "What is 2+2?" (item 4).

/// llama.cpp's greedy ids for SmolLM2-135M-Instruct Q4_1, the chat prompt "What is 2+2?"
/// (the GGUF's template, with its default system turn), 16 tokens with end-of-generation
/// tokens banned. Recorded offline with llama.cpp as vendored in llama-cpp-python 0.3.36
/// (`scripts/llama-cpp-tools`): `llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf -t 2`, then
/// `POST /completion` with the `/apply-template` prompt, `n_predict: 16`, `temperature: 0`,
/// `top_k: 1`, `ignore_eos: true`, `return_tokens: true`. Text: "The answer to this classic
/// math problem is 4.\n\nIn mathematics,".
const LLAMA_CPP_IDS: [u32; 16] = [
    504, 2988, 288, 451, 8170, 4119, 1732, 314, 216, 36, 30, 198, 198, 788, 6530, 28,
];

fn last_json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn greedy_chat_ids_are_llama_cpps() {
    let Some(model) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let output = crate::example("llama_generate")
        .arg("--model")
        .arg(&model)
        .args([
            "--chat",
            "--prompt",
            "What is 2+2?",
            "--max-new",
            "16",
            "--ignore-eos",
        ])
        .args(["--threads", "2"])
        .output()
        .unwrap();
    let summary = last_json(&output);
    let ids: Vec<u32> = serde_json::from_value(summary["output_ids"].clone()).unwrap();
    assert_eq!(ids, LLAMA_CPP_IDS);
    assert!(summary["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(summary["decode_tokens_per_s"].as_f64().unwrap() > 0.0);

    // Without `--ignore-eos`, the chat turn ends at its end-of-turn token, kept in the ids.
    let output = crate::example("llama_generate")
        .arg("--model")
        .arg(&model)
        .args(["--chat", "--prompt", "What is 2+2?", "--max-new", "16"])
        .output()
        .unwrap();
    let ids: Vec<u32> = serde_json::from_value(last_json(&output)["output_ids"].clone()).unwrap();
    assert_eq!(ids[..11], LLAMA_CPP_IDS[..11]);
    assert_eq!(ids.len(), 12, "{ids:?}");
    let bad = crate::example("llama_generate")
        .args(["--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// `--device wgpu` (issue 25, item 3): the linear layers and attention as cubecl kernels on
/// the first Vulkan adapter (lavapipe here), printing the same greedy text and ids as
/// `--device cpu`.
#[test]
fn device_wgpu_prints_the_cpus_greedy_text() {
    let Some(model) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let run = |device: &str| {
        let output = crate::example("llama_generate")
            .arg("--model")
            .arg(&model)
            .args(["--max-new", "16", "--device", device])
            .output()
            .unwrap();
        let summary = last_json(&output);
        assert_eq!(summary["device"], device);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let text = stdout
            .rsplit_once('\n')
            .map_or("", |(text, _)| text)
            .to_owned();
        let text = text
            .rsplit_once('\n')
            .map_or(text.clone(), |(text, _)| text.to_owned());
        (text, summary["output_ids"].clone())
    };
    let (cpu_text, cpu_ids) = run("cpu");
    let (wgpu_text, wgpu_ids) = run("wgpu");
    assert_eq!(cpu_ids.as_array().map(Vec::len), Some(16));
    assert_eq!(wgpu_ids, cpu_ids);
    assert_eq!(wgpu_text, cpu_text);
    assert!(cpu_text.contains("Paris"), "{cpu_text}");

    let bad = crate::example("llama_generate")
        .args(["--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
