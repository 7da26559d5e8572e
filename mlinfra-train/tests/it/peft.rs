//! Adapters on the Llama decoder (issue 22, items 1 and 2): outputs unchanged at PEFT's
//! initialisation, merge and unmerge against the unmerged outputs, only the active adapter
//! trains, switching, disabling and deleting. (DoRA's gradients against finite differences
//! in f64: `peft::linear`'s unit tests.)

use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_train::collective::Single;
use mlinfra_train::models::{Llama, LlamaConfig};
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::peft::{LoraConfig, TargetModules};
use mlinfra_train::{DataParallel, ParamLayout, StepOptions};

use crate::fixtures::{llama_logits, tiny_llama, tiny_llama_config};

const TOKENS: [u32; 12] = [3, 17, 5, 40, 2, 9, 33, 21, 8, 1, 44, 12];

fn logits(model: &Llama) -> Vec<f32> {
    llama_logits(model, &TOKENS)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn every_linear() -> TargetModules {
    TargetModules::all_linear()
}

/// PEFT initialises `B` at zero: adding an adapter changes no output, LoRA or DoRA.
#[test]
fn a_fresh_adapter_changes_nothing() {
    let device = Device::flex();
    let base = logits(&tiny_llama(&device));
    for dora in [false, true] {
        let config = LoraConfig::new(4, 8.0)
            .with_target_modules(every_linear())
            .with_dora(dora);
        let adapted = tiny_llama(&device).with_adapter("a", &config, 1).unwrap();
        let diff = max_abs_diff(&logits(&adapted), &base);
        assert!(diff < 1e-5, "dora {dora}: {diff}");
    }
}

/// Merge and unmerge against the unmerged outputs, with a non-zero `B` (PEFT's own tests use
/// `init_lora_weights=False` for this): merged to 1e-4, the base restored to 1e-5 after the
/// unmerge, and the adapter really changes the outputs.
#[test]
fn merging_and_unmerging_keep_the_outputs() {
    let device = Device::flex();
    let base = logits(&tiny_llama(&device));
    for (dora, targets) in [
        (false, every_linear()),
        (false, TargetModules::names(["q_proj", "v_proj"])),
        (true, every_linear()),
        (true, TargetModules::names(["o_proj", "down_proj"])),
    ] {
        let config = LoraConfig::new(4, 16.0)
            .with_target_modules(targets.clone())
            .with_dora(dora)
            .with_init_lora_weights(false);
        let adapted = tiny_llama(&device).with_adapter("a", &config, 7).unwrap();
        let unmerged = logits(&adapted);
        let moved = max_abs_diff(&unmerged, &base);
        assert!(
            moved > 1e-2,
            "dora {dora} {targets:?}: the adapter changed little ({moved})"
        );
        let merged_model = adapted.merge_adapter().unwrap();
        let merged = logits(&merged_model);
        let diff = max_abs_diff(&merged, &unmerged);
        assert!(
            diff < 1e-4,
            "dora {dora} {targets:?}: merged differs by {diff}"
        );
        assert!(
            merged_model.clone().merge_adapter().is_err(),
            "merged twice"
        );
        let restored = merged_model.unmerge_adapter();
        let diff = max_abs_diff(&logits(&restored), &unmerged);
        assert!(
            diff < 1e-4,
            "dora {dora} {targets:?}: unmerged differs by {diff}"
        );
        let base_again = logits(&restored.with_adapters_enabled(false));
        let diff = max_abs_diff(&base_again, &base);
        assert!(
            diff < 1e-5,
            "dora {dora} {targets:?}: the base moved by {diff}"
        );
    }
}

/// The trainable parameters are the active adapter's, and nothing else: the base (embedding,
/// norms, head included) is frozen, and another adapter waits its turn. Training moves only
/// them, and lowers the loss.
#[test]
fn only_the_active_adapter_trains() {
    let device = Device::flex().autodiff();
    let config =
        LoraConfig::new(4, 8.0).with_target_modules(TargetModules::names(["q_proj", "v_proj"]));
    let model = tiny_llama(&device)
        .with_adapter("first", &config, 1)
        .unwrap()
        .with_adapter("second", &config.clone().with_dora(true), 2)
        .unwrap();
    assert_eq!(model.active_adapter(), Some("second"));
    let trainable = ParamLayout::trainable(&model).unwrap();
    let paths: Vec<&str> = trainable.slots().iter().map(|s| s.path.as_str()).collect();
    // Two layers, two projections each: A, B and the DoRA magnitude of slot 1.
    assert_eq!(paths.len(), 2 * 2 * 3, "{paths:?}");
    assert!(
        paths.iter().all(|p| p.contains(".adapters.1.")),
        "{paths:?}"
    );
    let model = model.set_adapter("first").unwrap();
    let trainable = ParamLayout::trainable(&model).unwrap();
    assert!(
        trainable
            .slots()
            .iter()
            .all(|s| s.path.contains(".adapters.0."))
    );
    assert_eq!(trainable.slots().len(), 2 * 2 * 2);

    let everything = ParamLayout::of(&model).unwrap();
    let before = everything.values(&model).unwrap();
    let (mut engine, mut model) = DataParallel::new(
        Single,
        model,
        &OptimizerConfig::adamw(),
        StepOptions::new(LrSchedule::constant(0.01)),
    )
    .unwrap();
    let ids: Vec<i64> = TOKENS.iter().map(|&t| i64::from(t)).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, TOKENS.len()]), &device);
    let mut losses = Vec::new();
    for _ in 0..20 {
        let loss = model.next_token_loss(ids.clone()).unwrap();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = loss.backward();
        engine.accumulate(&model, &grads, 1).unwrap();
        model = engine.step(model).unwrap().0;
    }
    assert!(losses[19] < losses[0] * 0.9, "{losses:?}");
    let after = everything.values(&model).unwrap();
    for slot in everything.slots() {
        let changed = before[slot.range()] != after[slot.range()];
        let trains = slot.path.contains(".adapters.0.");
        assert_eq!(changed, trains, "{}: changed {changed}", slot.path);
    }
}

/// Switching, disabling and deleting, as PEFT's `set_adapter`, `disable_adapter` and
/// `delete_adapter` do; and what cannot work is a typed error.
#[test]
fn adapters_switch_disable_delete_and_refuse_what_cannot_work() {
    let device = Device::flex();
    let base = logits(&tiny_llama(&device));
    let config = |seed_b: bool| {
        LoraConfig::new(2, 4.0)
            .with_target_modules(every_linear())
            .with_init_lora_weights(!seed_b)
    };
    let model = tiny_llama(&device)
        .with_adapter("x", &config(true), 3)
        .unwrap()
        .with_adapter("y", &config(true), 4)
        .unwrap();
    let y = logits(&model);
    let model = model.set_adapter("x").unwrap();
    let x = logits(&model);
    assert!(max_abs_diff(&x, &y) > 1e-3, "two adapters, one output");
    let off = model.with_adapters_enabled(false);
    assert!(off.adapters_disabled());
    assert!(max_abs_diff(&logits(&off), &base) < 1e-6);
    let on = off.with_adapters_enabled(true);
    assert!(max_abs_diff(&logits(&on), &x) < 1e-6);
    let only_y = on.without_adapter("x").unwrap();
    assert_eq!(only_y.active_adapter(), None);
    let names: Vec<&str> = only_y.adapters().iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["y"]);
    let only_y = only_y.set_adapter("y").unwrap();
    assert!(
        max_abs_diff(&logits(&only_y), &y) < 1e-6,
        "y survives x's deletion"
    );

    let refused = |result: mlinfra_train::Result<Llama>, what: &str| match result {
        Err(error) => assert!(error.to_string().contains(what), "{error}"),
        Ok(_) => panic!("expected an error containing {what:?}"),
    };
    refused(
        only_y.clone().set_adapter("nope"),
        "no adapter named `nope`",
    );
    refused(
        only_y.clone().with_adapter("y", &config(false), 1),
        "exists already",
    );
    refused(
        only_y
            .clone()
            .with_adapter("z", &LoraConfig::new(0, 1.0), 1),
        "r must be at least 1",
    );
    refused(
        only_y.clone().with_adapter(
            "z",
            &LoraConfig::new(2, 1.0).with_target_modules(TargetModules::names(["attn_q"])),
            1,
        ),
        "match no linear layer",
    );
    refused(only_y.without_adapter("nope"), "no adapter named `nope`");
}

/// Issue 22, item 4: an adapter written in PEFT's format and read back into a fresh model
/// computes what the adapter did (LoRA, DoRA, rsLoRA; a trained, non-zero `B`).
#[test]
fn a_saved_adapter_loads_into_a_fresh_model_with_the_same_outputs() {
    let device = Device::flex();
    for (dora, rslora) in [(false, false), (true, false), (false, true)] {
        let config = LoraConfig::new(4, 16.0)
            .with_target_modules(TargetModules::names(["q_proj", "v_proj", "down_proj"]))
            .with_dora(dora)
            .with_rslora(rslora)
            .with_init_lora_weights(false);
        let adapted = tiny_llama(&device)
            .with_adapter("mine", &config, 5)
            .unwrap();
        let expected = logits(&adapted);
        let dir = tempfile::tempdir().unwrap();
        adapted
            .save_adapter("mine", dir.path(), Some("SmolLM2-test"))
            .unwrap();
        let loaded = tiny_llama(&device)
            .load_adapter(dir.path(), "theirs")
            .unwrap();
        assert_eq!(loaded.active_adapter(), Some("theirs"));
        assert_eq!(loaded.adapters()[0].config, config);
        let diff = max_abs_diff(&logits(&loaded), &expected);
        assert!(diff < 1e-6, "dora {dora} rslora {rslora}: {diff}");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
                .unwrap();
        assert_eq!(written["peft_type"], "LORA");
        assert_eq!(written["base_model_name_or_path"], "SmolLM2-test");
        assert_eq!(written["use_dora"], dora);
    }
}

/// An adapter for another model, or whose config and tensors disagree, is refused with the
/// file and the layer named, and the model is not half-changed.
#[test]
fn an_adapter_that_does_not_fit_the_model_is_refused() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let all = LoraConfig::new(2, 4.0).with_target_modules(TargetModules::all_linear());
    tiny_llama(&device)
        .with_adapter("a", &all, 1)
        .unwrap()
        .save_adapter("a", dir.path(), None)
        .unwrap();
    let refusal = |config: LlamaConfig| {
        config
            .init(1, &device)
            .unwrap()
            .load_adapter(dir.path(), "a")
            .unwrap_err()
            .to_string()
    };
    // A model with a narrower MLP: the same layer names, other shapes.
    let error = refusal(LlamaConfig {
        intermediate_size: 24,
        ..tiny_llama_config()
    });
    assert!(
        error.contains("adapter_model.safetensors")
            && error.contains("model.layers.0.mlp.down_proj: the adapter is for a layer 40 -> 32"),
        "{error}"
    );
    // A model with fewer layers: tensors for a layer it does not have.
    let error = refusal(LlamaConfig {
        num_layers: 1,
        ..tiny_llama_config()
    });
    assert!(
        error.contains("model.layers.1.") && error.contains("not a linear layer"),
        "{error}"
    );
    // Config says every linear layer, the file has only some.
    let narrower = LoraConfig::new(2, 4.0).with_target_modules(TargetModules::names(["q_proj"]));
    let partial = tempfile::tempdir().unwrap();
    tiny_llama(&device)
        .with_adapter("a", &narrower, 1)
        .unwrap()
        .save_adapter("a", partial.path(), None)
        .unwrap();
    std::fs::copy(
        dir.path().join("adapter_config.json"),
        partial.path().join("adapter_config.json"),
    )
    .unwrap();
    let error = tiny_llama(&device)
        .load_adapter(partial.path(), "a")
        .unwrap_err()
        .to_string();
    assert!(error.contains("which has no tensors"), "{error}");
    // A missing directory names the config file.
    let error = tiny_llama(&device)
        .load_adapter(dir.path().join("nowhere"), "a")
        .unwrap_err()
        .to_string();
    assert!(error.contains("adapter_config.json"), "{error}");
}

/// Multi-LoRA serving (issue 23, item 5): one flat batch whose sequences run with different
/// adapters (and none) gives each sequence the logits its adapter alone gives, whatever
/// adapter is active; a lone adapter row is handled like many.
#[test]
fn per_row_adapters_give_each_sequence_its_own_adapters_logits() {
    use mlinfra_train::models::VarlenAttention;
    let device = Device::flex();
    let config = LoraConfig::new(4, 8.0)
        .with_target_modules(every_linear())
        .with_init_lora_weights(false);
    let model = tiny_llama(&device)
        .with_adapter("a", &config, 1)
        .unwrap()
        .with_adapter("b", &config, 2)
        .unwrap();
    let seqs: [&[u32]; 4] = [&TOKENS[..5], &TOKENS[2..6], &TOKENS[4..11], &TOKENS[7..8]];
    let names = [None, Some("a"), Some("b"), Some("a")];
    let mut tokens = Vec::new();
    let mut positions = Vec::new();
    let mut starts = vec![0];
    let mut per_token = Vec::new();
    let mut rows = Vec::new();
    for (seq, name) in seqs.iter().zip(names) {
        tokens.extend_from_slice(seq);
        positions.extend(0..seq.len());
        per_token.extend(std::iter::repeat_n(name, seq.len()));
        starts.push(tokens.len());
        rows.push(tokens.len() - 1);
    }
    let routing = model.adapter_routing(&per_token).unwrap();
    let mut attention = VarlenAttention::new(starts).unwrap();
    let batched = model
        .forward_tokens_routed(&tokens, &positions, &rows, &mut attention, Some(&routing))
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let vocab = tiny_llama_config().vocab_size;
    for (i, (seq, name)) in seqs.iter().zip(names).enumerate() {
        let alone = match name {
            None => model.clone().with_adapters_enabled(false),
            Some(name) => model.clone().set_adapter(name).unwrap(),
        };
        let logits = llama_logits(&alone, seq);
        let last = &logits[logits.len() - vocab..];
        let diff = max_abs_diff(&batched[i * vocab..(i + 1) * vocab], last);
        assert!(diff < 1e-4, "sequence {i} ({name:?}): {diff}");
    }
    // The adapters matter here: sequence 1 differs from the base model's.
    let base = llama_logits(&model.clone().with_adapters_enabled(false), seqs[1]);
    assert!(max_abs_diff(&batched[vocab..2 * vocab], &base[base.len() - vocab..]) > 1e-3);
    assert!(model.adapter_routing(&[Some("c")]).is_err());
}
