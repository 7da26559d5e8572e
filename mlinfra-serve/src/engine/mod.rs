//! [`Engine`]: requests in, streamed tokens out. Owns the scheduler, a model runner and one
//! sampler per request, and turns each [`step`](Engine::step) into: schedule, run the model,
//! sample, update, stream.
//!
//! Every request gets a [`RequestHandle`]: its events arrive on a channel, and dropping the
//! handle (a client that went away) cancels the request, whose KV blocks are back in the pool
//! by the end of the next step. That closes a long-standing complaint about servers that keep
//! generating, and holding memory, for clients that disconnected.

mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use mlinfra_data::tokenizer::{DecodeState, Tokenizer};
use mlinfra_train::SplitMix64;

use crate::kv::PrefixKeys;
use crate::runner::ModelRunner;
use crate::sampling::{Sample, Sampler, SamplingParams, StopCriteria};
use crate::sched::{FinishReason, NewRequest, RequestId, Scheduler, SchedulerConfig};
use crate::spec::{NgramProposer, Proposer};
use crate::{Error, Result};

use metrics::{Counters, RequestClock};
pub use metrics::{EngineMetrics, RequestMetrics};

/// Engine settings.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Scheduler limits. Its `num_blocks` and `block_size` are replaced by the runner's
    /// [`kv_geometry`](ModelRunner::kv_geometry) when the runner owns KV memory (as
    /// [`LlamaRunner`](crate::runner::LlamaRunner) does): the pool is given once, to the runner.
    pub scheduler: SchedulerConfig,
    /// Seed for requests without their own: request `id` draws from a generator derived
    /// from `(seed, id)`.
    pub seed: u64,
    /// Speculative decoding with prompt-lookup drafts; `None` decodes one token per step.
    /// The output distribution is the same either way (and greedy output identical).
    pub speculative: Option<NgramProposer>,
}

/// What a request is, beyond its prompt and sampling parameters.
#[derive(Default)]
pub struct RequestOptions {
    /// Lower is served first under the priority policy.
    pub priority: i32,
    /// Prefix-cache keys (adapter, tenant salt).
    pub prefix_keys: PrefixKeys,
    /// Which tokens may come next (structured outputs); `None` leaves the model free. A
    /// constrained request is never drafted for (one token per step).
    pub constraint: Option<Box<dyn TokenConstraint>>,
}

impl std::fmt::Debug for RequestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestOptions")
            .field("priority", &self.priority)
            .field("prefix_keys", &self.prefix_keys)
            .field("constraint", &self.constraint.is_some())
            .finish()
    }
}

/// The hook of structured outputs: a per-request automaton that says which tokens may come
/// next. The `guidance` module implements it with llguidance (JSON schemas, grammars).
pub trait TokenConstraint: Send {
    /// Sets to `-inf` the logits of the tokens that may not come next. At least one stays
    /// finite: when nothing else may follow (the output is complete, or the constraint
    /// failed), an end-of-sequence token.
    fn mask(&mut self, logits: &mut [f32]);

    /// Moves past `token`, which the last [`mask`](Self::mask) allowed.
    fn advance(&mut self, token: u32);
}

/// An event on a request's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A generated token.
    Token {
        /// The token.
        token: u32,
        /// Text to stream with it (with a [`Detokenizer`]; empty without one): whole
        /// characters only, never a stop string or a stop token's text, and held back while it
        /// could still begin a stop string (it then comes with a later token).
        text: String,
        /// Its raw log-probability, when asked for.
        logprob: Option<f32>,
        /// The most likely alternatives, when asked for.
        top_logprobs: Vec<(u32, f32)>,
    },
    /// The request ended; nothing follows.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Its timings and counts.
        metrics: RequestMetrics,
    },
}

/// The caller's side of a request: its id and its event stream. Dropping it cancels the
/// request.
#[derive(Debug)]
pub struct RequestHandle {
    id: RequestId,
    events: Receiver<StreamEvent>,
    cancelled: Arc<AtomicBool>,
}

impl RequestHandle {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Its events, in order: tokens, then one `Finished`.
    pub fn events(&self) -> &Receiver<StreamEvent> {
        &self.events
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

/// Streaming detokenization, for text deltas and stop strings: the text each generated token
/// adds. mlinfra-data's [`Tokenizer`] is one (Hugging Face's `DecodeStream`).
pub trait Detokenizer: Send + Sync {
    /// The text `token` adds to the tokens already stepped through `state`; `None` while it
    /// ends inside a character (or for a token the vocabulary does not spell).
    fn step(&self, state: &mut DecodeState, token: u32) -> Option<String>;
}

impl Detokenizer for Tokenizer {
    fn step(&self, state: &mut DecodeState, token: u32) -> Option<String> {
        // The model's vocabulary can be larger than the tokenizer's (padded embedding rows):
        // such a token has no text.
        self.decode_step(state, token).ok().flatten()
    }
}

struct Live {
    sampler: Sampler,
    events: Sender<StreamEvent>,
    cancelled: Arc<AtomicBool>,
    clock: RequestClock,
    /// Stop tokens, length and stop strings; what text may be streamed.
    stop: StopCriteria,
    /// The incremental detokenizer's place.
    text: DecodeState,
    /// Structured outputs' token mask.
    constraint: Option<Box<dyn TokenConstraint>>,
    /// The adapter it runs with.
    adapter: Option<Box<str>>,
}

/// One step's work, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Tokens the model computed.
    pub tokens_computed: usize,
    /// Tokens sampled (one per request that reached the end of its known tokens).
    pub tokens_generated: usize,
    /// Requests that finished this step (any reason).
    pub finished: usize,
    /// Requests preempted this step.
    pub preempted: usize,
    /// Speculative tokens verified this step.
    pub draft_tokens: usize,
    /// Of those, tokens accepted.
    pub accepted_tokens: usize,
}

/// The serving engine over a [`ModelRunner`].
pub struct Engine<R> {
    runner: R,
    scheduler: Scheduler,
    live: HashMap<RequestId, Live>,
    detokenizer: Option<Arc<dyn Detokenizer>>,
    next_id: RequestId,
    seed: u64,
    proposer: Option<Box<dyn Proposer>>,
    counters: Counters,
    /// Each adapter loaded through the engine, and the load it is (the prefix cache keys).
    adapter_loads: HashMap<String, u64>,
    loads: u64,
}

impl<R: ModelRunner> Engine<R> {
    /// An engine driving `runner`, scheduling over the runner's KV pool when it has one. The
    /// scheduler's
    /// [`max_model_len`](SchedulerConfig::max_model_len) is lowered to the runner's
    /// [`max_seq_len`](ModelRunner::max_seq_len), so requests that could outgrow the model are
    /// refused when added.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the scheduler refuses `config.scheduler`.
    pub fn new(runner: R, config: EngineConfig) -> Result<Self> {
        let mut scheduler = config.scheduler;
        if let Some(geometry) = runner.kv_geometry() {
            scheduler.num_blocks = geometry.num_blocks;
            scheduler.block_size = geometry.block_size;
        }
        scheduler.max_model_len = match (scheduler.max_model_len, runner.max_seq_len()) {
            (Some(set), Some(model)) => Some(set.min(model)),
            (set, model) => set.or(model),
        };
        Ok(Engine {
            runner,
            scheduler: Scheduler::new(scheduler)?,
            live: HashMap::new(),
            detokenizer: None,
            next_id: 0,
            seed: config.seed,
            proposer: config
                .speculative
                .map(|ngram| Box::new(ngram) as Box<dyn Proposer>),
            counters: Counters::new(),
            adapter_loads: HashMap::new(),
            loads: 0,
        })
    }

    /// Speculative decoding with `proposer` (a [`DraftModelProposer`](crate::spec::DraftModelProposer),
    /// or any other), replacing [`EngineConfig::speculative`].
    pub fn with_proposer(mut self, proposer: Box<dyn Proposer>) -> Self {
        self.proposer = Some(proposer);
        self
    }

    /// Streams text with the tokens and enables stop strings, decoding generated tokens
    /// incrementally with `detokenizer` (constant work per token).
    pub fn with_detokenizer(mut self, detokenizer: Arc<dyn Detokenizer>) -> Self {
        self.detokenizer = Some(detokenizer);
        self
    }

    /// The scheduler (read-only: requests, block tables, counters).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Whether no request is live.
    pub fn is_idle(&self) -> bool {
        self.scheduler.is_idle()
    }

    /// Queues a request with default options.
    ///
    /// # Errors
    ///
    /// As [`add_request_with`](Self::add_request_with).
    pub fn add_request(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<RequestHandle> {
        self.add_request_with(prompt, params, RequestOptions::default())
    }

    /// Queues a request; its tokens arrive on the returned handle.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSampling`] for parameters out of range or stop strings without a
    /// detokenizer; [`Error::InvalidRequest`] for a token outside the vocabulary or a request
    /// the scheduler refuses (empty, able to outgrow the model's context, or too long to ever
    /// fit in KV memory).
    pub fn add_request_with(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        options: RequestOptions,
    ) -> Result<RequestHandle> {
        let id = self.next_id;
        if !params.stop.is_empty() && self.detokenizer.is_none() {
            return Err(Error::InvalidSampling {
                reason: "stop strings need an engine with a detokenizer".into(),
            });
        }
        let vocab = self.runner.vocab_size();
        if let Some(token) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidRequest {
                request: id,
                reason: format!(
                    "request {id} has token {token}, outside the {vocab}-token vocabulary"
                )
                .into(),
            });
        }
        let mut options = options;
        let adapter = options.prefix_keys.adapter.clone();
        if let Some(name) = &adapter {
            if !self.runner.adapters().iter().any(|a| **a == **name) {
                return Err(Error::InvalidRequest {
                    request: id,
                    reason: format!("request {id} names adapter `{name}`, which is not loaded")
                        .into(),
                });
            }
            // The cache identity is the adapter as loaded, not its name: an adapter unloaded
            // and loaded again under the same name from other weights shares no KV.
            let generation = self.adapter_loads.get(&**name).copied().unwrap_or(0);
            options.prefix_keys.adapter = Some(format!("{name}#{generation}").into());
        }
        let seed = params.seed.unwrap_or_else(|| {
            SplitMix64::new(self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
        });
        let sampler = Sampler::new(params.clone(), &prompt, seed)?;
        let stop = StopCriteria::new(&params);
        let prompt_len = prompt.len();
        self.scheduler.add(NewRequest {
            id,
            prompt,
            max_tokens: params.max_tokens,
            priority: options.priority,
            prefix_keys: options.prefix_keys,
            adapter: adapter.clone(),
        })?;
        self.next_id += 1;
        let (sender, events) = channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        self.live.insert(
            id,
            Live {
                sampler,
                events: sender,
                cancelled: cancelled.clone(),
                clock: RequestClock::new(prompt_len),
                stop,
                text: DecodeState::default(),
                constraint: options.constraint,
                adapter,
            },
        );
        Ok(RequestHandle {
            id,
            events,
            cancelled,
        })
    }

    /// The adapters requests may name in their
    /// [`PrefixKeys::adapter`](crate::kv::PrefixKeys::adapter).
    pub fn adapters(&self) -> Vec<String> {
        self.runner.adapters()
    }

    /// Loads the PEFT adapter in `dir` as `name`, between steps.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a name already loaded; what the runner refuses.
    pub fn load_adapter(&mut self, name: &str, dir: &std::path::Path) -> Result<()> {
        if self.runner.adapters().iter().any(|a| a == name) {
            return Err(Error::InvalidConfig {
                reason: format!("adapter `{name}` is loaded already").into(),
            });
        }
        self.runner.load_adapter(name, dir)?;
        self.loads += 1;
        self.adapter_loads.insert(name.to_owned(), self.loads);
        Ok(())
    }

    /// Unloads adapter `name`, refusing while live requests use it.
    ///
    /// # Errors
    ///
    /// [`Error::AdapterInUse`] while requests use it; what the runner refuses (an unknown
    /// name).
    pub fn unload_adapter(&mut self, name: &str) -> Result<()> {
        let requests = self
            .live
            .values()
            .filter(|live| live.adapter.as_deref() == Some(name))
            .count();
        if requests > 0 {
            return Err(Error::AdapterInUse {
                name: name.into(),
                requests,
            });
        }
        self.runner.unload_adapter(name)
    }

    /// Ends a request now; its blocks return to the pool at once and its stream gets
    /// `Finished { reason: Aborted }`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for an id that is not live.
    pub fn abort(&mut self, id: RequestId) -> Result<()> {
        self.end(id, FinishReason::Aborted)
    }

    /// Runs one step: cancels requests whose handles were dropped, schedules, runs the
    /// model, samples, and streams the new tokens and finished requests.
    ///
    /// # Errors
    ///
    /// A runner or sampling failure: the step's requests are aborted (their streams say
    /// so) and the error is returned; the engine stays usable.
    pub fn step(&mut self) -> Result<StepReport> {
        let dropped: Vec<RequestId> = self
            .live
            .iter()
            .filter(|(_, live)| live.cancelled.load(Ordering::Acquire))
            .map(|(&id, _)| id)
            .collect();
        for id in dropped {
            self.end(id, FinishReason::Aborted)?;
        }
        if self.scheduler.is_idle() {
            return Ok(StepReport::default());
        }
        if let Some(proposer) = self.proposer.as_mut() {
            let vocab = self.runner.vocab_size();
            let decoding: Vec<RequestId> = self.scheduler.running().collect();
            for id in decoding {
                let request = self
                    .scheduler
                    .request(id)
                    .expect("running requests are live");
                let constrained = self.live.get(&id).is_some_and(|l| l.constraint.is_some());
                if request.is_decoding() && !constrained {
                    let mut draft = proposer.propose(id, request.tokens())?;
                    // A draft model with a larger vocabulary must not reach the target.
                    if let Some(outside) = draft.iter().position(|&t| t as usize >= vocab) {
                        draft.truncate(outside);
                    }
                    self.scheduler.set_draft(id, draft)?;
                }
            }
        }
        let plan = self.scheduler.schedule()?;
        let mut report = StepReport {
            tokens_computed: plan.num_tokens,
            preempted: plan.preempted.len(),
            ..StepReport::default()
        };
        let sampled = match self.run_and_sample(&plan) {
            Ok(sampled) => sampled,
            Err(error) => {
                for work in &plan.scheduled {
                    if self.live.contains_key(&work.id) {
                        self.end(work.id, FinishReason::Aborted)?;
                    }
                }
                self.scheduler.update(&[])?;
                return Err(error);
            }
        };
        for work in plan.scheduled.iter().filter(|work| work.samples) {
            report.draft_tokens += work.draft;
        }
        // Each request's stop criteria see its tokens in order; the first that ends it cuts
        // the rest (accepted draft tokens after a stop are never streamed).
        let now = Instant::now();
        let mut emitted = Vec::with_capacity(sampled.len());
        let mut stopped = Vec::new();
        for (id, samples) in sampled {
            report.accepted_tokens += samples.len() - 1;
            let Some(live) = self.live.get_mut(&id) else {
                continue;
            };
            let mut kept = Vec::with_capacity(samples.len());
            for sample in samples {
                live.clock.token(now);
                report.tokens_generated += 1;
                kept.push(sample.token);
                let piece = self
                    .detokenizer
                    .as_ref()
                    .and_then(|d| d.step(&mut live.text, sample.token));
                let check = live.stop.push(sample.token, piece.as_deref());
                let event = StreamEvent::Token {
                    token: sample.token,
                    text: check.text,
                    logprob: sample.logprob,
                    top_logprobs: sample.top_logprobs,
                };
                if live.events.send(event).is_err() {
                    stopped.push((id, FinishReason::Aborted)); // the receiver is gone
                    break;
                }
                if let Some(reason) = check.finish {
                    stopped.push((id, reason));
                    break;
                }
            }
            emitted.push((id, kept));
        }
        let finished = self.scheduler.update_speculative(&emitted, &stopped)?;
        self.counters.tokens_generated += report.tokens_generated as u64;
        self.counters.draft_tokens += report.draft_tokens as u64;
        self.counters.accepted_tokens += report.accepted_tokens as u64;
        report.finished = finished.len();
        for request in finished {
            self.report_finished(&request, now);
        }
        self.counters.steps += 1;
        Ok(report)
    }

    /// Steps until no request is live.
    ///
    /// # Errors
    ///
    /// The first failing step's error.
    pub fn run_until_idle(&mut self) -> Result<()> {
        while !self.is_idle() {
            self.step()?;
        }
        Ok(())
    }

    /// Engine counters now.
    pub fn metrics(&self) -> EngineMetrics {
        self.counters.snapshot(&self.scheduler.stats())
    }

    fn run_and_sample(
        &mut self,
        plan: &crate::sched::SchedulerOutput,
    ) -> Result<Vec<(RequestId, Vec<Sample>)>> {
        let logits = self.runner.execute(&plan.batch)?;
        let wanted = plan.batch.logit_rows.len();
        if logits.rows() != wanted || logits.vocab_size() != self.runner.vocab_size() {
            return Err(Error::InvalidBatch {
                reason: format!(
                    "the runner returned {} logit rows of {}, not {wanted} of {}",
                    logits.rows(),
                    logits.vocab_size(),
                    self.runner.vocab_size()
                )
                .into(),
            });
        }
        let mut next_row = 0;
        let mut sampled = Vec::new();
        for work in plan.scheduled.iter().filter(|work| work.samples) {
            let live = self
                .live
                .get_mut(&work.id)
                .expect("scheduled requests are live");
            let own: Vec<&[f32]> = (next_row..next_row + work.draft + 1)
                .map(|row| logits.row(row))
                .collect();
            next_row += work.draft + 1;
            let samples = if work.draft == 0 {
                let sample = match live.constraint.as_mut() {
                    Some(constraint) => {
                        let mut row = own[0].to_vec();
                        constraint.mask(&mut row);
                        let sample = live.sampler.sample(&row)?;
                        constraint.advance(sample.token);
                        sample
                    }
                    None => live.sampler.sample(own[0])?,
                };
                vec![sample]
            } else {
                let request = self
                    .scheduler
                    .request(work.id)
                    .expect("scheduled requests are live");
                live.sampler.verify(&request.draft()[..work.draft], &own)?
            };
            sampled.push((work.id, samples));
        }
        Ok(sampled)
    }

    /// Finishes a live request in the scheduler and reports it.
    fn end(&mut self, id: RequestId, reason: FinishReason) -> Result<()> {
        let request = self.scheduler.finish(id, reason)?;
        self.report_finished(&request, Instant::now());
        Ok(())
    }

    fn report_finished(&mut self, request: &crate::sched::Request, now: Instant) {
        let Some(live) = self.live.remove(&request.id()) else {
            return;
        };
        if let Some(proposer) = self.proposer.as_mut() {
            proposer.release(request.id());
        }
        let crate::sched::RequestStatus::Finished(reason) = request.status() else {
            return;
        };
        let metrics = live.clock.finish(now, request);
        self.counters.record(&metrics, reason);
        // A dropped receiver just means nobody listens any more.
        let _ = live.events.send(StreamEvent::Finished { reason, metrics });
    }
}
