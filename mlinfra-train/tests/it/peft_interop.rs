//! Interoperability with Hugging Face PEFT (issue 22, item 4), on SmolLM2-135M-Instruct from
//! its Q4_1 GGUF. The fixtures in `tests/it/peft/` come from `scripts/peft-reference`: PEFT
//! wrote the adapters (non-zero `B`; LoRA and DoRA with rsLoRA) and computed the logits, with
//! transformers' float32 model dequantized from the same GGUF.
//!
//! Tolerance: logits within 1e-3 of PEFT's (absolute; the logits are of magnitude 10-30). The
//! two base models already differ by about 8e-5 (float32 summation orders over 30 layers), the
//! adapted ones by about 1.3e-4 (measured 2026-12-07); each adapter moves the logits by 2-3,
//! over a thousand times the tolerance.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_data::tensor::{GgufFile, SafetensorsFile};
use mlinfra_train::models::Llama;

/// Logits of ours and PEFT's may differ by this much (see the module's docs).
const TOLERANCE: f64 = 1e-3;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peft")
}

/// A logits file in `scripts/peft_reference.py`'s layout.
struct Logits(SafetensorsFile);

impl Logits {
    fn open(path: &Path) -> Logits {
        Logits(SafetensorsFile::open(path).unwrap())
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        let tensor = self.0.tensor(name).unwrap();
        tensor
            .bytes()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        self.0.to_f32(name).unwrap()
    }

    fn prompts(&self) -> usize {
        (0..)
            .take_while(|i| self.0.tensor_info(&format!("p{i}.input_ids")).is_some())
            .count()
    }
}

/// The largest differences between `model`'s logits and the fixture's model `which`, over
/// every prompt and position: at the kept ids, in log-sum-exp, and whether the arg-max agrees
/// wherever ours is not a near tie.
struct Agreement {
    logits: f64,
    logsumexp: f64,
    argmax_differs: usize,
}

fn agreement(model: &Llama, reference: &Logits, which: &str) -> Agreement {
    let device = Device::flex();
    let vocab_ids = reference.ints("vocab_ids");
    let mut out = Agreement {
        logits: 0.0,
        logsumexp: 0.0,
        argmax_differs: 0,
    };
    for p in 0..reference.prompts() {
        let ids = reference.ints(&format!("p{p}.input_ids"));
        let len = ids.len();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
        let logits = model
            .forward(input)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let vocab = logits.len() / len;
        let want = reference.floats(&format!("p{p}.{which}.logits"));
        let want_lse = reference.floats(&format!("p{p}.{which}.logsumexp"));
        let want_argmax = reference.ints(&format!("p{p}.{which}.argmax"));
        for (pos, row) in logits.chunks_exact(vocab).enumerate() {
            for (k, &id) in vocab_ids.iter().enumerate() {
                let diff = f64::from(row[id as usize] - want[pos * vocab_ids.len() + k]).abs();
                out.logits = out.logits.max(diff);
            }
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|&v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
            out.logsumexp = out.logsumexp.max((lse - f64::from(want_lse[pos])).abs());
            let mut sorted: Vec<(f32, usize)> = row.iter().copied().zip(0..).collect();
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
            let margin = sorted[0].0 - sorted[1].0;
            if margin > 0.01 && sorted[0].1 as i64 != want_argmax[pos] {
                out.argmax_differs += 1;
            }
        }
    }
    out
}

fn smollm2() -> Option<Llama> {
    let path = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let file = GgufFile::open(&path).unwrap();
    Some(Llama::from_gguf(&file, &Device::flex()).unwrap().0)
}

fn assert_agrees(model: &Llama, reference: &Logits, which: &str) -> Agreement {
    let found = agreement(model, reference, which);
    mlinfra_test_utils::log_line(&format!(
        "PEFT interop, {which}: max |logit diff| {:.2e}, max |logsumexp diff| {:.2e}",
        found.logits, found.logsumexp
    ));
    assert!(
        found.logits < TOLERANCE && found.logsumexp < TOLERANCE,
        "{which}: logits differ from PEFT's by {:.2e} (log-sum-exp {:.2e}), tolerance {TOLERANCE}",
        found.logits,
        found.logsumexp
    );
    assert_eq!(found.argmax_differs, 0, "{which}: arg-max differs");
    found
}

/// Adapters PEFT wrote load into ours and give PEFT's logits; unmerged and merged alike.
#[test]
fn adapters_written_by_peft_give_peft_logits() {
    let Some(base) = smollm2() else {
        return;
    };
    let reference = Logits::open(&fixture_dir().join("logits.safetensors"));
    assert_agrees(&base, &reference, "base");
    for which in ["peft_lora", "peft_dora"] {
        let adapted = base
            .clone()
            .load_adapter(fixture_dir().join(which), which)
            .unwrap();
        assert_agrees(&adapted, &reference, which);
        // The adapter does change the model, far beyond the tolerance.
        let moved = agreement(&adapted, &reference, "base").logits;
        assert!(
            moved > 1000.0 * TOLERANCE,
            "{which} moved the logits by {moved}"
        );
        assert_agrees(&adapted.merge_adapter().unwrap(), &reference, which);
    }
}

/// An adapter mlinfra trained (the `finetune` example, 10 LoRA steps, r = 2 on `q_proj`)
/// loads in PEFT (`scripts/peft-reference --ours`, which stored PEFT's logits beside it) and
/// PEFT computes ours.
#[test]
fn an_adapter_trained_by_mlinfra_gives_peft_our_logits() {
    let Some(base) = smollm2() else {
        return;
    };
    let dir = fixture_dir().join("mlinfra_lora");
    let reference = Logits::open(&dir.join("peft_logits.safetensors"));
    let adapted = base.clone().load_adapter(&dir, "mlinfra").unwrap();
    assert_eq!(adapted.adapters()[0].config.r, 2);
    assert_agrees(&adapted, &reference, "adapter");
    // Trained: it moved the model, far beyond the tolerance.
    let moved = agreement(&base, &reference, "adapter").logits;
    assert!(
        moved > 100.0 * TOLERANCE,
        "the trained adapter moved the logits by {moved}"
    );
}

/// QLoRA (issue 22, item 3): the base kept in its GGUF blocks computes PEFT's logits (with and
/// without PEFT's adapter), holds a fraction of the f32 bytes, and gives the adapter the
/// gradients the dense base gives.
#[test]
fn a_quantized_base_computes_and_trains_as_the_dense_one() {
    let Some(path) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let device = Device::flex().autodiff();
    let quantized = Llama::from_gguf_quantized(&file, &device).unwrap().0;
    assert!(quantized.is_quantized());
    let (resident, f32_bytes) = (
        quantized.base_weight_bytes(),
        quantized.base_weight_bytes_f32(),
    );
    mlinfra_test_utils::log_line(&format!(
        "QLoRA base weights: {:.1} MiB resident against {:.1} MiB as f32 ({:.2}x)",
        resident as f64 / 1048576.0,
        f32_bytes as f64 / 1048576.0,
        resident as f64 / f32_bytes as f64
    ));
    // The projections shrink to Q4_1's 5 bits per weight; the f32 embedding is most of the
    // rest.
    assert!(resident * 10 < f32_bytes * 4, "{resident} vs {f32_bytes}");

    let reference = Logits::open(&fixture_dir().join("logits.safetensors"));
    let inference = quantized.valid();
    assert_agrees(&inference, &reference, "base");
    let adapted = inference
        .clone()
        .load_adapter(fixture_dir().join("peft_lora"), "peft_lora")
        .unwrap();
    assert_agrees(&adapted, &reference, "peft_lora");
    assert!(
        adapted.merge_adapter().is_err(),
        "merging into quantized blocks is refused"
    );
    let dora = mlinfra_train::peft::LoraConfig::new(4, 8.0).with_dora(true);
    let error = quantized
        .clone()
        .with_adapter("d", &dora, 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("DoRA over a quantized base"), "{error}");

    // The adapter's gradients through 30 quantized layers against the dense base's.
    let lora = mlinfra_train::peft::LoraConfig::new(4, 8.0).with_init_lora_weights(false);
    let dense = Llama::from_gguf(&file, &device).unwrap().0;
    let ids: Vec<i64> =
        Logits::open(&fixture_dir().join("logits.safetensors")).ints("p1.input_ids");
    let grads_of = |model: Llama| {
        let model = model.with_adapter("g", &lora, 3).unwrap();
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device);
        let loss = model.next_token_loss(tokens).unwrap();
        let grads = loss.backward();
        let layout = mlinfra_train::ParamLayout::trainable(&model).unwrap();
        layout.grads(&model, &grads).unwrap()
    };
    let (q, d) = (grads_of(quantized), grads_of(dense));
    assert_eq!(q.len(), d.len());
    let norm = d.iter().map(|g| g * g).sum::<f32>().sqrt();
    let diff = q
        .iter()
        .zip(&d)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    mlinfra_test_utils::log_line(&format!(
        "QLoRA adapter gradients vs the dense base's: relative difference {:.2e}",
        diff / norm
    ));
    assert!(
        diff < 1e-4 * norm,
        "relative gradient difference {}",
        diff / norm
    );
}
