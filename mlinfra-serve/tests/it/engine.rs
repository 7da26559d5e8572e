//! The engine (`engine::Engine`): streaming, cancellation, stop conditions, seeded sampling
//! and metrics, over the paged Llama runner.

use std::sync::Arc;

use burn::tensor::Device;
use mlinfra_data::tokenizer::DecodeState;
use mlinfra_serve::Error;
use mlinfra_serve::attention::ReferenceAttention;
use mlinfra_serve::engine::{Detokenizer, Engine, EngineConfig, RequestHandle, StreamEvent};
use mlinfra_serve::runner::{LlamaRunner, Logits, ModelRunner};
use mlinfra_serve::sampling::SamplingParams;
use mlinfra_serve::sched::{FinishReason, SchedulerConfig, StepBatch};
use mlinfra_serve::spec::{DraftModelProposer, NgramProposer, Proposer};
use mlinfra_train::models::{Llama, LlamaConfig};

use crate::runner::tiny_config;

fn model(config: &LlamaConfig) -> Llama {
    let std = 1.0 / (config.hidden_size as f64).sqrt();
    config.init_with_std(7, std, &Device::flex()).unwrap()
}

fn engine(config: &LlamaConfig, blocks: usize, budget: usize) -> Engine<LlamaRunner> {
    speculative_engine(config, blocks, budget, None)
}

fn speculative_engine(
    config: &LlamaConfig,
    blocks: usize,
    budget: usize,
    proposer: Option<Box<dyn Proposer>>,
) -> Engine<LlamaRunner> {
    let device = Device::flex();
    let runner = LlamaRunner::new(
        model(config),
        config,
        blocks,
        4,
        Box::new(ReferenceAttention),
        &device,
    )
    .unwrap();
    let scheduler = SchedulerConfig {
        num_blocks: blocks,
        block_size: 4,
        max_batched_tokens: budget,
        watermark: 0.0,
        ..SchedulerConfig::default()
    };
    let config = EngineConfig {
        scheduler,
        seed: 1,
        speculative: None,
    };
    let engine = Engine::new(runner, config).unwrap();
    match proposer {
        Some(proposer) => engine.with_proposer(proposer),
        None => engine,
    }
}

/// Every token, then the finish event.
fn drain(handle: &RequestHandle) -> (Vec<u32>, Option<(FinishReason, usize)>) {
    let mut tokens = Vec::new();
    let mut finished = None;
    for event in handle.events().try_iter() {
        assert!(finished.is_none(), "an event after Finished");
        match event {
            StreamEvent::Token { token, .. } => tokens.push(token),
            StreamEvent::Finished { reason, metrics } => {
                assert_eq!(metrics.output_tokens, tokens.len());
                let ttft = metrics.time_to_first_token.expect("tokens were streamed");
                assert!(ttft <= metrics.end_to_end);
                finished = Some((reason, metrics.output_tokens));
            }
        }
    }
    (tokens, finished)
}

/// Every token and the streamed text, then the finish reason.
fn drain_text(handle: &RequestHandle) -> (Vec<u32>, String, Option<FinishReason>) {
    let (mut tokens, mut text, mut finished) = (Vec::new(), String::new(), None);
    for event in handle.events().try_iter() {
        match event {
            StreamEvent::Token {
                token, text: piece, ..
            } => {
                tokens.push(token);
                text.push_str(&piece);
            }
            StreamEvent::Finished { reason, .. } => finished = Some(reason),
        }
    }
    (tokens, text, finished)
}

/// One letter per token: a detokenizer whose text is easy to predict.
struct Letters;

impl Detokenizer for Letters {
    fn step(&self, _: &mut DecodeState, token: u32) -> Option<String> {
        Some(char::from(b'a' + (token % 26) as u8).to_string())
    }
}

#[test]
fn streamed_greedy_tokens_equal_the_dense_model_and_metrics_add_up() {
    let config = tiny_config();
    let reference = model(&config);
    let mut engine = engine(&config, 16, 16);
    let prompts: Vec<Vec<u32>> = (0..3u32)
        .map(|r| (0..9).chain([40 + r, 50 + r]).collect())
        .collect();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .add_request(p.clone(), SamplingParams::greedy(10))
                .unwrap()
        })
        .collect();
    engine.run_until_idle().unwrap();
    for (prompt, handle) in prompts.iter().zip(&handles) {
        let (tokens, finished) = drain(handle);
        assert_eq!(tokens, reference.generate_greedy(prompt, 10, &[]).unwrap());
        assert_eq!(finished, Some((FinishReason::Length, 10)));
    }
    let metrics = engine.metrics();
    assert_eq!(
        (metrics.requests_completed, metrics.tokens_generated),
        (3, 30)
    );
    assert_eq!(
        (metrics.running, metrics.waiting, metrics.kv_usage),
        (0, 0, 0.0)
    );
    assert!(
        metrics.prefix_hit_rate > 0.0,
        "the shared 8-token prefix hits"
    );
    assert!(metrics.ttft_p50_ms <= metrics.ttft_p99_ms);
}

#[test]
fn dropping_a_handle_frees_its_blocks_within_one_step() {
    let config = tiny_config();
    let mut engine = engine(&config, 32, 64);
    let first = engine
        .add_request((0..10).collect(), SamplingParams::greedy(60))
        .unwrap();
    let second = engine
        .add_request((20..30).collect(), SamplingParams::greedy(60))
        .unwrap();
    for _ in 0..3 {
        engine.step().unwrap();
    }
    let blocks_of = |engine: &Engine<LlamaRunner>, id| {
        engine
            .scheduler()
            .kv()
            .block_table(id)
            .map_or(0, <[u32]>::len)
    };
    let (a, b) = (
        blocks_of(&engine, first.id()),
        blocks_of(&engine, second.id()),
    );
    assert!(a > 0 && b > 0);
    let first_id = first.id();
    drop(first);
    engine.step().unwrap();
    assert!(engine.scheduler().request(first_id).is_none());
    let used =
        engine.scheduler().kv().pool().num_blocks() - engine.scheduler().kv().pool().num_free();
    assert_eq!(
        used,
        blocks_of(&engine, second.id()),
        "only the live request holds blocks"
    );
    engine.abort(second.id()).unwrap();
    assert_eq!(engine.scheduler().kv().pool().num_free(), 32);
    let (tokens, finished) = drain(&second);
    assert_eq!(finished, Some((FinishReason::Aborted, tokens.len())));
    assert_eq!(tokens.len(), 4);
    assert_eq!(engine.metrics().requests_aborted, 2);
    assert!(matches!(
        engine.abort(second.id()),
        Err(Error::InvalidRequest { .. })
    ));
}

#[test]
fn stop_tokens_and_stop_strings_end_requests() {
    let config = tiny_config();
    let reference = model(&config);
    let prompt: Vec<u32> = (5..15).collect();
    let free_run = reference.generate_greedy(&prompt, 12, &[]).unwrap();
    let letter = |t: u32| char::from(b'a' + (t % 26) as u8);
    let mut engine = engine(&config, 32, 64).with_detokenizer(Arc::new(Letters));
    // A stop token: the first occurrence of free_run[3] ends the request, token included.
    let stop_token = free_run[3];
    let cut = free_run.iter().position(|&t| t == stop_token).unwrap() + 1;
    let by_token = engine
        .add_request(
            prompt.clone(),
            SamplingParams {
                stop_token_ids: vec![stop_token],
                ..SamplingParams::greedy(12)
            },
        )
        .unwrap();
    // A stop string spanning tokens 5 and 6 of the free run.
    let text: String = free_run.iter().map(|&t| letter(t)).collect();
    let stop = text[5..7].to_string();
    let cut_text = text.find(&stop).unwrap() + 2;
    let by_string = engine
        .add_request(
            prompt.clone(),
            SamplingParams {
                stop: vec![stop],
                ..SamplingParams::greedy(12)
            },
        )
        .unwrap();
    engine.run_until_idle().unwrap();
    // The stop token stays in the ids; its text is not streamed.
    let by_token_text: String = free_run[..cut - 1].iter().map(|&t| letter(t)).collect();
    assert_eq!(
        drain_text(&by_token),
        (
            free_run[..cut].to_vec(),
            by_token_text,
            Some(FinishReason::Stop)
        )
    );
    // The stop string is matched across two tokens and never streamed.
    assert_eq!(
        drain_text(&by_string),
        (
            free_run[..cut_text].to_vec(),
            text[..cut_text - 2].to_string(),
            Some(FinishReason::Stop)
        )
    );
}

/// With a seed, a sampled request's tokens are the same alone and in a crowded, preempting
/// batch: the logits are batch-invariant and the generator is the request's own.
#[test]
fn seeded_sampling_is_the_same_alone_and_in_a_crowd() {
    let config = LlamaConfig {
        hidden_size: 576,
        intermediate_size: 1536,
        vocab_size: 512,
        num_heads: 8,
        num_layers: 1,
        ..tiny_config()
    };
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(11),
        ..SamplingParams::default()
    };
    let target: Vec<u32> = (0..13).collect();
    let run = |crowd: usize, blocks: usize| {
        let mut engine = engine(&config, blocks, 24);
        let others: Vec<_> = (0..crowd as u32)
            .map(|r| {
                engine
                    .add_request(
                        (0..9).chain(100 + r..104 + 2 * r).collect(),
                        SamplingParams::greedy(12),
                    )
                    .unwrap()
            })
            .collect();
        let handle = engine.add_request(target.clone(), params.clone()).unwrap();
        engine.run_until_idle().unwrap();
        drop(others);
        (drain(&handle).0, engine.metrics().preemptions)
    };
    let (alone, _) = run(0, 64);
    let (crowded, preemptions) = run(5, 20);
    assert!(preemptions > 0);
    assert_eq!(alone.len(), 16);
    assert_eq!(alone, crowded);
}

struct FailingRunner;

impl ModelRunner for FailingRunner {
    fn vocab_size(&self) -> usize {
        8
    }

    fn execute(&mut self, _: &StepBatch) -> mlinfra_serve::Result<Logits> {
        Err(Error::InvalidBatch {
            reason: "the device fell off the bus".into(),
        })
    }
}

#[test]
fn bad_requests_and_failed_steps_are_typed_errors() {
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            num_blocks: 8,
            block_size: 4,
            ..SchedulerConfig::default()
        },
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(FailingRunner, config).unwrap();
    let error = engine
        .add_request(vec![1, 9], SamplingParams::default())
        .unwrap_err();
    assert!(
        error.to_string().contains("outside the 8-token vocabulary"),
        "{error}"
    );
    let error = engine
        .add_request(
            vec![1],
            SamplingParams {
                stop: vec!["x".into()],
                ..SamplingParams::default()
            },
        )
        .unwrap_err();
    assert!(error.to_string().contains("detokenizer"), "{error}");
    assert!(matches!(
        engine.add_request(
            vec![1],
            SamplingParams {
                top_p: 2.0,
                ..SamplingParams::default()
            }
        ),
        Err(Error::InvalidSampling { .. })
    ));
    assert!(matches!(
        engine.add_request(vec![1; 40], SamplingParams::default()),
        Err(Error::InvalidRequest { .. })
    ));

    let handle = engine
        .add_request(vec![1, 2], SamplingParams::default())
        .unwrap();
    let error = engine.step().unwrap_err();
    assert!(error.to_string().contains("fell off the bus"), "{error}");
    assert!(engine.is_idle(), "the failed step's requests were aborted");
    assert_eq!(engine.scheduler().kv().pool().num_free(), 8);
    let events: Vec<_> = handle.events().try_iter().collect();
    assert!(matches!(
        events[..],
        [StreamEvent::Finished {
            reason: FinishReason::Aborted,
            ..
        }]
    ));
    assert_eq!(engine.step().unwrap(), Default::default(), "still usable");
}

/// Issue 21, defect 2: a request that would run past the model's context was found only
/// mid-run, and that error aborted every request of the step with it. The engine now knows
/// the runner's `max_seq_len` and refuses such a request when it is added; the others run.
#[test]
fn a_request_past_the_models_context_is_refused_and_others_run() {
    let config = LlamaConfig {
        max_seq_len: 12,
        ..tiny_config()
    };
    let mut engine = engine(&config, 32, 64);
    let fine = engine
        .add_request(vec![1, 2, 3], SamplingParams::greedy(4))
        .unwrap();
    // 8 + 5 - 1 = 12 positions: the most the model computes; one more token is too many.
    let edge = engine
        .add_request(vec![1; 8], SamplingParams::greedy(5))
        .unwrap();
    let error = engine
        .add_request(vec![1; 8], SamplingParams::greedy(6))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("past the model's 12-token context"),
        "{error}"
    );
    let huge = engine.add_request(vec![1; 8], SamplingParams::greedy(usize::MAX));
    assert!(
        matches!(huge, Err(Error::InvalidRequest { .. })),
        "{huge:?}"
    );
    engine.run_until_idle().unwrap();
    for (handle, tokens) in [(fine, 4), (edge, 5)] {
        let events: Vec<_> = handle.events().try_iter().collect();
        assert_eq!(events.len(), tokens + 1, "{events:?}");
        assert!(matches!(
            events.last(),
            Some(StreamEvent::Finished {
                reason: FinishReason::Length,
                ..
            })
        ));
    }
}

/// The real SmolLM2-135M on the paged engine, with two prompts batched and a stop string:
/// greedy text equals the model's own dense `generate_greedy` (" Paris." for the capital).
#[test]
fn smollm2_serves_the_same_text_as_its_dense_decoder() {
    let Some(path) = mlinfra_test_utils::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = mlinfra_data::tensor::GgufFile::open(&path).unwrap();
    let tokenizer = mlinfra_data::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let device = Device::flex();
    let (model, config) = Llama::from_gguf(&file, &device).unwrap();
    let (reference, _) = Llama::from_gguf(&file, &device).unwrap();
    let runner = LlamaRunner::new(
        model,
        &config,
        64,
        16,
        Box::new(ReferenceAttention),
        &device,
    )
    .unwrap();
    let scheduler = SchedulerConfig {
        num_blocks: 64,
        block_size: 16,
        ..SchedulerConfig::default()
    };
    let decoder = Arc::new(mlinfra_data::tokenizer::Tokenizer::from_gguf(&file).unwrap());
    let mut engine = Engine::new(
        runner,
        EngineConfig {
            scheduler,
            seed: 0,
            speculative: None,
        },
    )
    .unwrap()
    .with_detokenizer(decoder);
    let prompts =
        ["The capital of France is", "1, 2, 3, 4,"].map(|text| tokenizer.encode(text).unwrap());
    let params = SamplingParams {
        stop: vec!["\n".into()],
        ..SamplingParams::greedy(6)
    };
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| engine.add_request(p.clone(), params.clone()).unwrap())
        .collect();
    engine.run_until_idle().unwrap();
    let (capital, streamed, _) = drain_text(&handles[0]);
    let whole = tokenizer.decode(&capital).unwrap();
    assert!(whole.starts_with(" Paris."), "{whole:?}");
    // The streamed text is the output's up to the stop string "\n", which it never shows.
    assert_eq!(
        streamed,
        whole[..whole.find('\n').unwrap_or(whole.len())],
        "{whole:?}"
    );
    let counting = drain(&handles[1]).0;
    let dense = reference
        .generate_greedy(&prompts[1], counting.len(), &[])
        .unwrap();
    assert_eq!(counting, dense, "{:?}", tokenizer.decode(&counting));
    assert_eq!(
        capital[..],
        reference
            .generate_greedy(&prompts[0], capital.len(), &[])
            .unwrap()[..]
    );
}

/// Runs `prompts` greedily to the end; returns each request's tokens and the engine metrics.
fn run_greedy(
    config: &LlamaConfig,
    prompts: &[Vec<u32>],
    blocks: usize,
    proposer: Option<Box<dyn Proposer>>,
) -> (Vec<Vec<u32>>, mlinfra_serve::engine::EngineMetrics) {
    let mut engine = speculative_engine(config, blocks, 32, proposer);
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .add_request(
                    p.clone(),
                    SamplingParams {
                        stop_token_ids: vec![63],
                        ..SamplingParams::greedy(24)
                    },
                )
                .unwrap()
        })
        .collect();
    engine.run_until_idle().unwrap();
    let outputs = handles.iter().map(|h| drain(h).0).collect();
    (outputs, engine.metrics())
}

/// Prompt-lookup speculation changes how many steps greedy decoding takes, not what it
/// produces: the same tokens as plain decoding, under preemption too, with drafts accepted.
#[test]
fn speculative_greedy_decoding_equals_plain_greedy_decoding() {
    let config = tiny_config();
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|r| [1, 2, 3, 4 + r, 1, 2, 3, 4 + r, 1, 2, 3].to_vec())
        .collect();
    let (plain, plain_metrics) = run_greedy(&config, &prompts, 40, None);
    let proposer = NgramProposer {
        min_n: 1,
        max_n: 3,
        k: 4,
    };
    let (fast, metrics) = run_greedy(&config, &prompts, 40, Some(Box::new(proposer)));
    eprintln!(
        "plain {} steps; speculative {} steps, {} of {} drafted accepted",
        plain_metrics.steps, metrics.steps, metrics.accepted_tokens, metrics.draft_tokens
    );
    assert_eq!(fast, plain);
    let (tight, tight_metrics) = run_greedy(&config, &prompts, 14, Some(Box::new(proposer)));
    assert_eq!(tight, plain, "with preemptions");
    assert!(tight_metrics.preemptions > 0);
    assert!(
        metrics.draft_tokens > 0 && metrics.accepted_tokens > 0,
        "{metrics:?}"
    );
    assert!(
        metrics.steps < plain_metrics.steps,
        "{} steps against {}",
        metrics.steps,
        plain_metrics.steps
    );
    assert_eq!(metrics.tokens_generated, plain_metrics.tokens_generated);
}

/// A draft model drafts greedily; output stays the target's greedy output. With the target
/// itself as the draft nearly every draft token is accepted; with an unrelated model few are.
#[test]
fn a_draft_model_changes_the_steps_not_the_output() {
    let config = tiny_config();
    let prompts: Vec<Vec<u32>> = (0..3u32)
        .map(|r| (0..6).chain([30 + r, 40 + r]).collect())
        .collect();
    let (plain, plain_metrics) = run_greedy(&config, &prompts, 40, None);
    let device = Device::flex();
    let itself = DraftModelProposer::new(model(&config), 4);
    let (same, same_metrics) = run_greedy(&config, &prompts, 40, Some(Box::new(itself)));
    assert_eq!(same, plain);
    let rate = same_metrics.accepted_tokens as f64 / same_metrics.draft_tokens as f64;
    assert!(rate > 0.9, "{same_metrics:?}");
    assert!(
        same_metrics.steps * 2 < plain_metrics.steps,
        "{} against {} steps",
        same_metrics.steps,
        plain_metrics.steps
    );
    let other = DraftModelProposer::new(config.init_with_std(99, 0.2, &device).unwrap(), 3);
    let (different, other_metrics) = run_greedy(&config, &prompts, 14, Some(Box::new(other)));
    assert_eq!(
        different, plain,
        "an unrelated draft model, under preemption"
    );
    assert!(other_metrics.accepted_tokens < other_metrics.draft_tokens);
    eprintln!(
        "draft = target: {rate:.3} accepted, {} steps against {}; unrelated draft: {} of {} accepted",
        same_metrics.steps,
        plain_metrics.steps,
        other_metrics.accepted_tokens,
        other_metrics.draft_tokens
    );
}

/// After a rejection the draft model's cache rolls back to the shared prefix: its drafts
/// equal a fresh proposer's.
#[test]
fn a_draft_model_rolls_its_cache_back_after_a_rejection() {
    let config = tiny_config();
    let mut warm = DraftModelProposer::new(model(&config), 3);
    let mut fresh = DraftModelProposer::new(model(&config), 3);
    warm.propose(1, &[1, 2, 3, 4, 5, 6]).unwrap();
    let history = [1, 2, 3, 9, 9];
    assert_eq!(
        warm.propose(1, &history).unwrap(),
        fresh.propose(7, &history).unwrap()
    );
    // And it extends without refeeding: the same as a fresh run on the longer history.
    let mut longer = history.to_vec();
    longer.extend(warm.propose(1, &history).unwrap());
    let mut again = DraftModelProposer::new(model(&config), 3);
    assert_eq!(
        warm.propose(1, &longer).unwrap(),
        again.propose(1, &longer).unwrap()
    );
}

/// The KV pool is given once, to the runner: an engine schedules over the runner's blocks
/// whatever its scheduler config says, so the two cannot disagree.
#[test]
fn the_engine_schedules_over_the_runners_kv_pool() {
    let config = tiny_config();
    let device = Device::flex();
    let runner = LlamaRunner::new(
        model(&config),
        &config,
        8,
        4,
        Box::new(ReferenceAttention),
        &device,
    )
    .unwrap();
    let mut engine = Engine::new(
        runner,
        EngineConfig {
            scheduler: SchedulerConfig {
                num_blocks: 1024,
                block_size: 16,
                ..SchedulerConfig::default()
            },
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let pool = engine.scheduler().kv().pool();
    assert_eq!((pool.num_free(), pool.block_size()), (8, 4));
    // 8 blocks of 4 hold 32 tokens: a request that could need more is refused when added.
    let error = engine
        .add_request(vec![1; 20], SamplingParams::greedy(20))
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest { .. }), "{error}");
    let handle = engine
        .add_request(vec![1; 10], SamplingParams::greedy(4))
        .unwrap();
    engine.run_until_idle().unwrap();
    assert_eq!(drain(&handle).1, Some((FinishReason::Length, 4)));
}
