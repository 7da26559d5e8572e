//! The Llama decoder against transformers: logits of a tiny random model loaded from
//! safetensors and from GGUF (fixtures from `scripts/llama-reference`), KV-cached decoding,
//! training, typed errors; and SmolLM2-135M-Instruct (Q4_1 GGUF, `scripts/fetch-model`)
//! tokenizing and completing "The capital of France is" as transformers does.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_data::tensor::{GgufFile, SafetensorsFile};
use mlinfra_data::tokenizer::Tokenizer;
use mlinfra_train::collective::Single;
use mlinfra_train::models::{KvCache, Llama, LlamaConfig};
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::{DataParallel, Error, ParamLayout, StepOptions};
use serde_json::Value;

use crate::fixtures::llama_logits;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/llama")
        .join(name)
}

fn tiny_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny.json")).unwrap()).unwrap()
}

fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_hf_config(&tiny_json()["config"]).unwrap()
}

fn ids(tokens: &[u32], device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(values, [1, tokens.len()]), device)
}

fn fixture_tokens(json: &Value) -> Vec<u32> {
    json["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn fixture_logits(json: &Value, key: &str) -> Vec<f64> {
    json[key]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect()
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

fn tiny_from_safetensors() -> Llama {
    let file = SafetensorsFile::open(fixture("tiny.safetensors")).unwrap();
    Llama::from_safetensors(&tiny_config(), &[file], &Device::flex()).unwrap()
}

/// The tiny model's logits at all 10 positions match transformers' float32 forward and an
/// independent float64 forward (numpy) of the same weights. The logits are O(1-10), so 2e-5
/// is a few f32 ulps of accumulated rounding; a wrong RoPE pairing, norm or GQA grouping is
/// off by O(1).
#[test]
fn tiny_llama_from_safetensors_matches_transformers() {
    let json = tiny_json();
    let model = tiny_from_safetensors();
    let got = llama_logits(&model, &fixture_tokens(&json));
    let vs_f32 = max_abs_diff(&got, &fixture_logits(&json, "logits"));
    let vs_f64 = max_abs_diff(&got, &fixture_logits(&json, "logits_f64"));
    assert!(vs_f32 < 2e-5, "max |ours - transformers f32| = {vs_f32}");
    assert!(vs_f64 < 2e-5, "max |ours - numpy f64| = {vs_f64}");
}

/// The same model written as GGUF, with the query/key rows permuted as llama.cpp's converter
/// does, loads to the same weights: identical logits, bit for bit.
#[test]
fn tiny_llama_from_gguf_equals_the_safetensors_one() {
    let json = tiny_json();
    let file = GgufFile::open(fixture("tiny.gguf")).unwrap();
    let (model, config) = Llama::from_gguf(&file, &Device::flex()).unwrap();
    // GGUF stores the epsilon as an f32.
    assert_eq!(config.rms_norm_eps, f64::from(1e-5f32));
    let same = LlamaConfig {
        rms_norm_eps: config.rms_norm_eps,
        ..tiny_config()
    };
    assert_eq!(config, same);
    let safetensors = SafetensorsFile::open(fixture("tiny.safetensors")).unwrap();
    let twin = Llama::from_safetensors(&same, &[safetensors], &Device::flex()).unwrap();
    let tokens = fixture_tokens(&json);
    assert_eq!(llama_logits(&model, &tokens), llama_logits(&twin, &tokens));
}

/// A prompt, then one token at a time through the KV cache, gives a full forward's logits.
#[test]
fn cached_decoding_matches_a_full_forward() {
    let json = tiny_json();
    let model = tiny_from_safetensors();
    let tokens = fixture_tokens(&json);
    let full = llama_logits(&model, &tokens);
    let vocab = 64;
    let device = Device::flex();
    let mut cache = KvCache::default();
    let mut stepped = model
        .forward_cached(ids(&tokens[..4], &device), &mut cache)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for &token in &tokens[4..] {
        let logits = model
            .forward_cached(ids(&[token], &device), &mut cache)
            .unwrap();
        stepped.extend(logits.into_data().try_to_vec::<f32>().unwrap());
    }
    assert_eq!(cache.len(), tokens.len());
    assert_eq!(stepped.len(), tokens.len() * vocab);
    let full: Vec<f64> = full.iter().map(|&v| f64::from(v)).collect();
    let diff = max_abs_diff(&stepped, &full);
    assert!(diff < 1e-5, "cached vs full forward: max diff {diff}");

    // Greedy decoding is that loop with argmax: its first token is the full forward's argmax.
    let generated = model.generate_greedy(&tokens, 3, &[]).unwrap();
    let last = &full[(tokens.len() - 1) * vocab..];
    let argmax = (0..vocab)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    assert_eq!(generated.len(), 3);
    assert_eq!(generated[0] as usize, argmax);
}

/// The decoder trains with the data-parallel engine: AdamW memorises a short sequence (loss
/// falls by over 10x), and every parameter gets a gradient (tied embeddings included).
#[test]
fn the_decoder_trains_with_the_data_parallel_engine() {
    let device = Device::flex().autodiff();
    let config = tiny_config();
    let model = config.init(3, &device).unwrap();
    let layout = ParamLayout::of(&model).unwrap();
    assert_eq!(layout.len(), config.num_params());
    assert!(layout.slot("layers.1.self_attn.k_proj.weight").is_some());
    let tokens: Vec<u32> = (0..24).map(|i| (i * 7 % 64) as u32).collect();
    let (mut engine, mut model) = DataParallel::new(
        Single,
        model,
        &OptimizerConfig::adamw(),
        StepOptions::new(LrSchedule::constant(0.01)),
    )
    .unwrap();
    let mut losses = Vec::new();
    for step in 0..40 {
        let loss = model.next_token_loss(ids(&tokens, &device)).unwrap();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = loss.backward();
        if step == 0 {
            let flat = layout.grads(&model, &grads).unwrap();
            for slot in layout.slots() {
                assert!(
                    flat[slot.range()].iter().any(|g| *g != 0.0),
                    "no gradient reaches {}",
                    slot.path
                );
            }
        }
        engine.accumulate(&model, &grads, 1).unwrap();
        model = engine.step(model).unwrap().0;
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        (first - 64f32.ln()).abs() < 0.5,
        "initial loss {first} is not ~ln(64)"
    );
    assert!(last < first / 10.0, "loss went from {first} to {last}");
}

/// Weights that do not fit the config, and configs this decoder does not build, are typed
/// errors naming the tensor or field.
#[test]
fn weights_that_do_not_fit_are_typed_errors() {
    let device = Device::flex();
    let file = || SafetensorsFile::open(fixture("tiny.safetensors")).unwrap();
    let narrower = LlamaConfig {
        intermediate_size: 40,
        ..tiny_config()
    };
    let error = Llama::from_safetensors(&narrower, &[file()], &device).unwrap_err();
    assert!(matches!(error, Error::Weights { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("model.layers.0.mlp.gate_proj.weight has shape [48, 32]")
            && text.contains("[40, 32]"),
        "{text}"
    );
    let deeper = LlamaConfig {
        num_layers: 3,
        ..tiny_config()
    };
    let error = Llama::from_safetensors(&deeper, &[file()], &device).unwrap_err();
    assert!(
        error.to_string().contains("no tensor model.layers.2."),
        "{error}"
    );
    let untied = LlamaConfig {
        tie_embeddings: false,
        ..tiny_config()
    };
    let error = Llama::from_safetensors(&untied, &[file()], &device).unwrap_err();
    assert!(
        error.to_string().contains("no tensor lm_head.weight"),
        "{error}"
    );

    let mut json = tiny_json()["config"].clone();
    json["hidden_act"] = "gelu".into();
    let error = LlamaConfig::from_hf_config(&json).unwrap_err();
    assert!(
        error.to_string().contains("hidden_act is `gelu`"),
        "{error}"
    );
    let mut json = tiny_json()["config"].clone();
    json["num_key_value_heads"] = 3.into();
    let error = LlamaConfig::from_hf_config(&json).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("num_heads 4 is not a multiple of num_kv_heads 3"),
        "{error}"
    );
    let mut json = tiny_json()["config"].clone();
    json["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
    let error = LlamaConfig::from_hf_config(&json).unwrap_err();
    assert!(error.to_string().contains("RoPE scaling"), "{error}");

    let model = tiny_from_safetensors();
    let error = model.forward(ids(&[1; 65], &device)).unwrap_err();
    assert!(error.to_string().contains("1 to 64 positions"), "{error}");
    let error = model.generate_greedy(&[64], 1, &[]).unwrap_err();
    assert!(
        error.to_string().contains("outside the vocabulary of 64"),
        "{error}"
    );
    // Issue 21, defect 12: inference errors said "invalid training configuration"; they name
    // the operation that refused its input.
    let error = model.generate_greedy(&[], 1, &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "Llama::generate_greedy refused its input: the prompt is empty"
    );
    let error = model.generate_greedy(&[1], usize::MAX, &[]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("Llama::generate_greedy refused its input"),
        "{error}"
    );
    let error = model.forward(ids(&[1; 65], &device)).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("Llama::forward refused its input"),
        "{error}"
    );
}

/// SmolLM2-135M-Instruct from its Q4_1 GGUF: the tokenizer agrees with the original's on
/// nine strings (digits, whitespace runs, unicode, special tokens), the logits after "The
/// capital of France is" match transformers' dequantized float32 model, and greedy decoding
/// says " Paris." and continues as transformers' does.
#[test]
fn smollm2_completes_the_capital_of_france_as_transformers_does() {
    let Some(path) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2.json")).unwrap()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    for case in reference["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        // llama.cpp's `smollm` pre-tokenizer (every numeric character alone, as the original
        // tokenizer.json's Digits step): transformers' GGUF converter drops that step.
        let want: Vec<u32> = serde_json::from_value(case["ids_smollm_pre"].clone()).unwrap();
        let got = tokenizer.encode(text).unwrap();
        assert_eq!(got, want, "tokens of {text:?}");
        assert_eq!(tokenizer.decode(&got).unwrap(), text);
    }

    let (model, config) = Llama::from_gguf(&file, &Device::flex()).unwrap();
    assert_eq!(
        (config.num_layers, config.num_heads, config.num_kv_heads),
        (30, 9, 3)
    );
    let prompt = tokenizer
        .encode(reference["prompt"].as_str().unwrap())
        .unwrap();
    let want: Vec<u32> = serde_json::from_value(reference["prompt_ids"].clone()).unwrap();
    assert_eq!(prompt, want);

    let logits = llama_logits(&model, &prompt);
    let last = &logits[logits.len() - config.vocab_size..];
    for pair in reference["last_logits_at"].as_array().unwrap() {
        let (id, want) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_f64().unwrap(),
        );
        let got = f64::from(last[id]);
        assert!(
            (got - want).abs() < 2e-3,
            "logit of {id}: {got} vs transformers' {want}"
        );
    }

    let want: Vec<u32> = serde_json::from_value(reference["greedy_ids"].clone()).unwrap();
    let margins: Vec<f64> = serde_json::from_value(reference["greedy_margins"].clone()).unwrap();
    let got = model.generate_greedy(&prompt, want.len(), &[]).unwrap();
    // Identical up to the first step where transformers' top two logits are within rounding
    // of each other; there a different summation order may pick the other one.
    let firm = margins.iter().position(|&m| m < 0.01).unwrap_or(want.len());
    assert_eq!(
        got[..firm],
        want[..firm],
        "greedy ids (firm up to step {firm})"
    );
    let text = tokenizer.decode(&got).unwrap();
    mlinfra_test_utils::log_line(&format!("SmolLM2 greedy: {text:?}"));
    assert!(text.starts_with(" Paris."), "{text:?}");
}

/// `tiny.gguf` with the `u32` value of metadata `key` replaced by `value`, written to `dir`.
fn patched_tiny_gguf(dir: &Path, key: &str, value: u32) -> PathBuf {
    let mut bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap_or_else(|| panic!("{key} not in tiny.gguf"));
    let type_at = at + key.len();
    assert_eq!(
        bytes[type_at..type_at + 4],
        4u32.to_le_bytes(),
        "{key} is a u32"
    );
    bytes[type_at + 4..type_at + 8].copy_from_slice(&value.to_le_bytes());
    let path = dir.join(format!("{key}-{value}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Issue 21, defect 3: `llama.block_count` sized an allocation before any tensor was looked
/// at (2^40 aborted on a petabyte, 2^60 panicked with "capacity overflow"), and head and
/// hidden sizes were multiplied unchecked. Layer counts are now bounded by the tensors the
/// file holds, and every product is checked: typed errors, whatever the metadata says.
#[test]
fn absurd_gguf_hyper_parameters_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let layers = patched_tiny_gguf(dir.path(), "llama.block_count", u32::MAX);
    let file = GgufFile::open(&layers).unwrap();
    let error = Llama::from_gguf(&file, &Device::flex()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("llama.block_count is 4294967295, but the file holds tensors for 2 blocks"),
        "{error}"
    );
    let wide = patched_tiny_gguf(dir.path(), "llama.embedding_length", u32::MAX);
    let file = GgufFile::open(&wide).unwrap();
    let error = Llama::from_gguf(&file, &Device::flex()).unwrap_err();
    assert!(
        matches!(error, Error::InvalidConfig { .. } | Error::Weights { .. }),
        "{error:?}"
    );
    // A config built by hand overflows the same way, and says so.
    let huge = LlamaConfig {
        hidden_size: 1 << 40,
        num_heads: 1 << 20,
        head_dim: Some(1 << 30),
        ..tiny_config()
    };
    let error = huge.validate().unwrap_err();
    assert!(error.to_string().contains("sizes overflow"), "{error}");
    assert_eq!(huge.num_params(), usize::MAX);
}
