//! mlinfra-train's fused ops on burn's cubecl backend (issue 25, item 3): a training step of
//! the Llama decoder on the software Vulkan adapter, its RMSNorms, SwiGLU gates and loss as
//! this crate's kernels, against the same step with burn's composed ops on the same device.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_kernels::wgpu::software_device;
use mlinfra_test_utils::log_line;
use mlinfra_test_utils::rng::SplitMix64;
use mlinfra_train::fused::without_fused_ops;
use mlinfra_train::models::LlamaConfig;

/// Relative to the larger of 1e-3 and the largest magnitude of the tensor compared: both
/// steps run in f32 on one device; the fused ones sum rows in another order and recompute
/// rather than store (measured below 1e-6 on the loss and 2e-5 on the gradients).
const LOSS_TOLERANCE: f32 = 1e-5;
const GRAD_TOLERANCE: f32 = 1e-4;

/// Every float parameter's gradient, flattened, in the module's order.
struct Grads<'a> {
    grads: &'a burn::tensor::Gradients,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push(param.val().grad(self.grads).map(|g| {
            g.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        }));
    }
}

fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 300,
        hidden_size: 64,
        intermediate_size: 160,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_seq_len: 32,
        tie_embeddings: false,
    }
}

fn tokens(config: &LlamaConfig, device: &Device) -> Tensor<2, Int> {
    let mut rng = SplitMix64::new(0x11a);
    let (batch, seq) = (2, 13);
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| (rng.next_u64() % config.vocab_size as u64) as i64)
        .collect();
    Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), device)
}

/// Without autodiff (inference on the device) the fused forward steps give the composed
/// logits and loss.
#[test]
fn the_fused_kernels_serve_inference_on_the_device_too() {
    let adapter = software_device().unwrap_or_else(|error| panic!("{error}"));
    let device = Device::from(adapter.device().clone());
    mlinfra_kernels::fused::install();
    let config = config();
    let model = config.init(5, &device).unwrap();
    let tokens = tokens(&config, &device);
    let run = || {
        let logits = model.forward(tokens.clone()).unwrap();
        let loss = model
            .next_token_loss(tokens.clone())
            .unwrap()
            .into_scalar::<f32>();
        let logits = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        (logits, loss)
    };
    let ((fused_logits, fused_loss), (logits, loss)) = (run(), without_fused_ops(run));
    assert!(
        (fused_loss - loss).abs() <= LOSS_TOLERANCE * loss.abs(),
        "loss {fused_loss} vs {loss}"
    );
    let scale = logits.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let diff = fused_logits
        .iter()
        .zip(&logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= GRAD_TOLERANCE * scale,
        "logits: max |Δ| {diff} at scale {scale}"
    );
}

#[test]
fn a_llama_training_step_with_the_fused_kernels_matches_the_composed_step() {
    let adapter = software_device().unwrap_or_else(|error| panic!("{error}"));
    let device = Device::from(adapter.device().clone()).autodiff();
    mlinfra_kernels::fused::install();
    let config = config();
    let model = config.init(11, &device).unwrap();
    let tokens = tokens(&config, &device);

    let step = || {
        let loss = model.next_token_loss(tokens.clone()).unwrap();
        let value = loss.clone().into_scalar::<f32>();
        let grads = loss.backward();
        let mut collector = Grads {
            grads: &grads,
            out: Vec::new(),
        };
        model.visit(&mut collector);
        (value, collector.out)
    };
    let (fused_loss, fused_grads) = step();
    let (loss, grads) = without_fused_ops(step);

    log_line(&format!(
        "Llama step on {}: loss fused {fused_loss} vs composed {loss}",
        adapter.adapter_name()
    ));
    assert!(
        (fused_loss - loss).abs() <= LOSS_TOLERANCE * loss.abs(),
        "loss {fused_loss} vs {loss}"
    );
    assert_eq!(fused_grads.len(), grads.len());
    let mut worst = 0f32;
    for (i, (got, want)) in fused_grads.iter().zip(&grads).enumerate() {
        let (Some(got), Some(want)) = (got, want) else {
            panic!("parameter {i}: a gradient on one side only");
        };
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff / scale);
        assert!(
            diff <= GRAD_TOLERANCE * scale,
            "parameter {i}: max |Δ| {diff} at scale {scale}"
        );
    }
    log_line(&format!(
        "{} parameter gradients, worst max|Δ|/max|g| {worst:.2e}",
        grads.len()
    ));
}
