//! The paged Llama runner (`runner::LlamaRunner`) against the model's own dense forward.

use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_serve::attention::ReferenceAttention;
use mlinfra_serve::runner::{LlamaRunner, ModelRunner};
use mlinfra_serve::sched::{NewRequest, Scheduler, SchedulerConfig};
use mlinfra_train::models::{Llama, LlamaConfig};

pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_seq_len: 128,
        tie_embeddings: false,
    }
}

fn dense_last_logits(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &Device::flex());
    let logits = model
        .forward(ids)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    logits[logits.len() - 64..].to_vec()
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Four requests with a shared prefix on a pool too small for all of them, a small budget
/// (so prompts are chunked) and prefix caching: every sampled row's logits equal the dense
/// forward over the request's tokens so far, and greedy outputs equal `generate_greedy`.
#[test]
fn paged_runner_matches_the_dense_forward_through_chunks_preemption_and_prefix_hits() {
    let config = tiny_config();
    let device = Device::flex();
    let model = config.init_with_std(7, 0.3, &device).unwrap();
    let reference = config.init_with_std(7, 0.3, &device).unwrap();
    let (blocks, block_size) = (14, 4);
    let mut runner = LlamaRunner::new(
        model,
        &config,
        blocks,
        block_size,
        Box::new(ReferenceAttention),
        &device,
    )
    .unwrap();
    let mut scheduler = Scheduler::new(SchedulerConfig {
        num_blocks: blocks,
        block_size,
        max_batched_tokens: 16,
        watermark: 0.0,
        ..SchedulerConfig::default()
    })
    .unwrap();
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|r| (0..10).chain((0..3 + r).map(|i| 20 + 7 * r + i)).collect())
        .collect();
    for (id, prompt) in prompts.iter().enumerate() {
        scheduler
            .add(NewRequest::new(id as u64, prompt.clone(), 14))
            .unwrap();
    }
    let mut outputs = vec![Vec::new(); 4];
    let mut worst: f32 = 0.0;
    while !scheduler.is_idle() {
        let plan = scheduler.schedule().unwrap();
        let logits = runner.execute(&plan.batch).unwrap();
        let sampling: Vec<_> = plan.scheduled.iter().filter(|s| s.samples).collect();
        assert_eq!(logits.rows(), sampling.len());
        let mut sampled = Vec::new();
        for (work, row) in sampling.iter().zip(logits.iter()) {
            let tokens = scheduler.request(work.id).unwrap().tokens();
            let dense = dense_last_logits(&reference, tokens);
            for (a, b) in row.iter().zip(&dense) {
                worst = worst.max((a - b).abs());
            }
            sampled.push((work.id, argmax(row)));
        }
        for request in scheduler.update(&sampled).unwrap() {
            outputs[request.id() as usize] = request.output().to_vec();
        }
    }
    assert!(worst < 1e-4, "paged vs dense logits differ by {worst}");
    let stats = scheduler.stats();
    assert!(stats.preemptions > 0, "the pool was meant to be too small");
    assert!(
        stats.prefix.hit_tokens > 0,
        "the shared prefix was meant to hit"
    );
    for (prompt, output) in prompts.iter().zip(&outputs) {
        assert_eq!(output, &reference.generate_greedy(prompt, 14, &[]).unwrap());
    }
}

/// Runs `requests` to completion; returns, per request, the bits of the logits of every
/// token it sampled, how often it was preempted and its prefix-hit tokens.
fn run_logits(
    config: &LlamaConfig,
    requests: &[NewRequest],
    blocks: usize,
    budget: usize,
) -> Vec<(Vec<Vec<u32>>, u32, usize)> {
    let device = Device::flex();
    let std = 1.0 / (config.hidden_size as f64).sqrt();
    let model = config.init_with_std(7, std, &device).unwrap();
    let mut runner = LlamaRunner::new(
        model,
        config,
        blocks,
        4,
        Box::new(ReferenceAttention),
        &device,
    )
    .unwrap();
    let mut scheduler = Scheduler::new(SchedulerConfig {
        num_blocks: blocks,
        block_size: 4,
        max_batched_tokens: budget,
        watermark: 0.0,
        ..SchedulerConfig::default()
    })
    .unwrap();
    for request in requests {
        scheduler.add(request.clone()).unwrap();
    }
    let mut runs = vec![(Vec::new(), 0, 0); requests.len()];
    while !scheduler.is_idle() {
        let plan = scheduler.schedule().unwrap();
        let logits = runner.execute(&plan.batch).unwrap();
        let sampling = plan.scheduled.iter().filter(|s| s.samples);
        let mut sampled = Vec::new();
        for (work, row) in sampling.zip(logits.iter()) {
            let index = requests.iter().position(|r| r.id == work.id).unwrap();
            runs[index]
                .0
                .push(row.iter().map(|x| x.to_bits()).collect());
            sampled.push((work.id, argmax(row)));
        }
        for done in scheduler.update(&sampled).unwrap() {
            let index = requests.iter().position(|r| r.id == done.id()).unwrap();
            runs[index].1 = done.num_preemptions();
            runs[index].2 = done.prefix_hit_tokens();
        }
    }
    runs
}

/// A request's logits, hence its greedy output, are bitwise identical alone, in a crowded
/// batch, after being preempted and recomputed, and when its prefix came from the cache.
#[test]
fn greedy_output_is_bitwise_identical_whatever_the_batch() {
    let config = LlamaConfig {
        hidden_size: 576,
        intermediate_size: 1536,
        vocab_size: 512,
        num_heads: 8,
        num_kv_heads: 2,
        ..tiny_config()
    };
    let target = NewRequest::new(100, (0..13).collect(), 12);
    let alone = &run_logits(&config, std::slice::from_ref(&target), 64, 64)[0].0;
    let mut crowd: Vec<NewRequest> = (0..5u32)
        .map(|r| {
            NewRequest::new(
                u64::from(r),
                (0..9).chain(30 + r..34 + 2 * r).collect(),
                10 + r as usize,
            )
        })
        .collect();
    crowd.push(target.clone());
    let (together, preemptions, hits) = &run_logits(&config, &crowd, 20, 24)[5];
    assert!(
        *preemptions > 0 && *hits > 0,
        "{preemptions} preemptions, {hits} hit tokens"
    );
    assert_eq!(together.len(), alone.len());
    for (step, (a, b)) in alone.iter().zip(together).enumerate() {
        let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing, 0,
            "token {step}: {differing} of 512 logits differ in their bits"
        );
    }
}

/// What the batch invariance above rests on: burn's CPU matmul gives a row the same bits
/// whatever the other rows, from two rows up (one row takes a different path). If a burn
/// update breaks this, this test says so before the engine test does.
#[test]
fn the_cpu_matmul_is_row_invariant_from_two_rows_up() {
    let mut rng = mlinfra_test_utils::rng::SplitMix64::new(1);
    let (k, n) = (576, 1536);
    let device = Device::flex();
    let w = Tensor::<2>::from_data(
        TensorData::new(rng.vec_f32(k * n, -1.0, 1.0), [k, n]),
        &device,
    );
    let x = rng.vec_f32(300 * k, -1.0, 1.0);
    let row = |rows: usize, at: usize| -> Vec<u32> {
        let xs =
            Tensor::<2>::from_data(TensorData::new(x[..rows * k].to_vec(), [rows, k]), &device);
        let out = xs
            .matmul(w.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        out[at * n..(at + 1) * n]
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let base = row(2, 1);
    for rows in [3, 8, 13, 64, 300] {
        assert!(
            row(rows, 1) == base,
            "row 1 of {rows} differs from row 1 of 2"
        );
    }
}

/// An attention backend that fails at one layer.
struct FailingAttention {
    layer_calls_before_failing: std::sync::atomic::AtomicUsize,
}

impl mlinfra_serve::attention::PagedAttention for FailingAttention {
    fn forward(
        &self,
        _memory: &mut mlinfra_serve::attention::LayerKv,
        _layout: &mlinfra_serve::attention::BatchLayout<'_>,
        q: Tensor<3>,
        _k: Tensor<3>,
        _v: Tensor<3>,
        _scale: f64,
    ) -> mlinfra_serve::Result<Tensor<3>> {
        use std::sync::atomic::Ordering;
        if self
            .layer_calls_before_failing
            .fetch_sub(1, Ordering::Relaxed)
            == 0
        {
            return Err(mlinfra_serve::Error::InvalidBatch {
                reason: "injected attention failure".into(),
            });
        }
        Ok(q)
    }
}

/// A failing attention step stops the forward at that layer and comes back from `execute`
/// as the backend's own typed error (the hook returns `Result`; nothing is stashed).
#[test]
fn an_attention_failure_is_the_backends_typed_error() {
    let config = tiny_config();
    let device = Device::flex();
    let model = config.init_with_std(7, 0.02, &device).unwrap();
    let backend = FailingAttention {
        layer_calls_before_failing: 1.into(),
    };
    let mut runner = LlamaRunner::new(model, &config, 8, 4, Box::new(backend), &device).unwrap();
    let mut scheduler = Scheduler::new(SchedulerConfig {
        num_blocks: 8,
        block_size: 4,
        ..SchedulerConfig::default()
    })
    .unwrap();
    scheduler.add(NewRequest::new(0, vec![1, 2, 3], 2)).unwrap();
    let plan = scheduler.schedule().unwrap();
    let error = runner.execute(&plan.batch).unwrap_err();
    assert!(
        matches!(&error, mlinfra_serve::Error::InvalidBatch { reason } if reason.contains("injected")),
        "{error:?}"
    );
}
