//! [`Scheduler`]: continuous batching under a per-step token budget, with chunked prefill and
//! preemption by recompute.
//!
//! The shape is vLLM V1's: there are no prefill and decode phases, only requests whose
//! computed tokens lag their known tokens. Each [`schedule`](Scheduler::schedule) call first
//! advances the running requests in order (a decode costs one token of the budget; a prompt
//! still being prefilled takes what budget is left, so long prompts are split into chunks
//! and never stall the decodes), then admits waiting requests while budget, sequence slots
//! and KV blocks last. [`update`](Scheduler::update) feeds back the sampled tokens.
//!
//! # Ordering guarantees
//!
//! Requests are ordered by `(priority, arrival)` ([`Policy::Fcfs`] uses arrival alone):
//! - the waiting queue is admitted strictly in that order (the head blocks those behind it,
//!   so nothing overtakes a large request);
//! - running requests are advanced in that order, and when KV blocks run out the *last*
//!   running request is preempted: its blocks are freed and it goes back to the waiting
//!   queue at its original position, to be recomputed (cheaply, when the prefix cache still
//!   holds its blocks). The first running request therefore always makes progress, which
//!   with the admission check below means every admitted request finishes.
//!
//! Under [`Policy::Priority`] a steady stream of more urgent requests can starve less urgent
//! ones; that is the policy's contract.
//!
//! # Against thrash
//!
//! Preemption drops work, so the scheduler avoids re-admitting what it would preempt again:
//! a step that preempted admits nobody; admission leaves a watermark of free blocks (1% by
//! default) for the running requests to grow into; and a preempted request is re-admitted
//! only when blocks for *all* its tokens are free, not just for its first chunk.

use std::collections::{BTreeMap, HashMap};

use super::request::{FinishReason, NewRequest, Request, RequestId, RequestStatus};
use crate::kv::{BlockCopy, BlockId, KvCacheManager, PrefixCacheStats};
use crate::{Error, Result};

/// The order in which requests are served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// By [`NewRequest::priority`] (lower first), then first come, first served.
    Priority,
}

/// Scheduler limits and KV geometry.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Tokens per KV block (16, as vLLM).
    pub block_size: usize,
    /// Tokens computed per step at most (the forward pass's batch size in tokens).
    pub max_batched_tokens: usize,
    /// Running requests at most (the decode batch size).
    pub max_running: usize,
    /// Split prompts longer than the remaining budget over several steps.
    pub chunked_prefill: bool,
    /// Reuse KV of identical prompt prefixes across requests.
    pub prefix_caching: bool,
    /// Share of blocks admission keeps free for running requests to grow into.
    pub watermark: f64,
    /// Serving order.
    pub policy: Policy,
    /// Longest sequence (prompt plus generated tokens) a request may reach: the model's
    /// context length. `None`: only the KV pool limits it. An [`Engine`](crate::engine::Engine)
    /// lowers it to its runner's [`max_seq_len`](crate::runner::ModelRunner::max_seq_len).
    pub max_model_len: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_blocks: 1024,
            block_size: 16,
            max_batched_tokens: 2048,
            max_running: 256,
            chunked_prefill: true,
            prefix_caching: true,
            watermark: 0.01,
            policy: Policy::Fcfs,
            max_model_len: None,
        }
    }
}

/// One request's work in a step: compute KV for `tokens[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledRequest {
    /// The request.
    pub id: RequestId,
    /// First token computed this step (its KV slot index).
    pub start: usize,
    /// Tokens computed this step.
    pub len: usize,
    /// Whether the step reaches the request's last known token, so its logits are sampled
    /// and [`Scheduler::update`] expects a token for it (false for a prompt chunk).
    pub samples: bool,
    /// Speculative tokens at the end of the range ([`Request::draft`]): the last
    /// `draft + 1` positions all get logits, to verify them.
    pub draft: usize,
}

/// One step's plan.
#[derive(Debug, Clone, Default)]
pub struct SchedulerOutput {
    /// Requests to compute, running ones first, in scheduling order.
    pub scheduled: Vec<ScheduledRequest>,
    /// Requests preempted this step (their KV is gone; they are waiting again).
    pub preempted: Vec<RequestId>,
    /// Tokens scheduled, at most the budget.
    pub num_tokens: usize,
    /// What the model runner computes: everything it needs, so that it never reads the
    /// scheduler.
    pub batch: StepBatch,
}

/// One model step, complete: the flat (varlen) batch of tokens, where each scheduled request
/// sits in it with a snapshot of its block table, the block copies to make first, and which
/// rows get logits. A runner (and an attention kernel under test) needs nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch {
    /// Block copies to make before the forward pass (copy-on-write).
    pub copies: Vec<BlockCopy>,
    /// Token ids, request after request in plan order: its known tokens, then its draft.
    pub tokens: Vec<u32>,
    /// Each token's position in its own sequence.
    pub positions: Vec<usize>,
    /// Each scheduled request's part, in plan order.
    pub seqs: Vec<StepSeq>,
    /// Indices into `tokens` whose logits the step returns, in this order: `draft + 1` rows
    /// (its last known token and each draft token) for each request that samples.
    pub logit_rows: Vec<usize>,
}

/// One request's part of a [`StepBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSeq {
    /// The request.
    pub id: RequestId,
    /// Index of its first token in the batch.
    pub query_start: usize,
    /// Its tokens this step.
    pub query_len: usize,
    /// Its positions after this step: the step's tokens are positions
    /// `context_len - query_len .. context_len`.
    pub context_len: usize,
    /// Its block table: position `p` lives in block `block_table[p / block_size]`.
    pub block_table: Vec<BlockId>,
    /// The adapter it runs with ([`NewRequest::adapter`](super::NewRequest)), or the base
    /// model.
    pub adapter: Option<Box<str>>,
}

/// Counters for dashboards and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerStats {
    /// Requests waiting.
    pub waiting: usize,
    /// Requests running.
    pub running: usize,
    /// Preemptions since the start.
    pub preemptions: u64,
    /// Share of KV blocks referenced now.
    pub kv_usage: f64,
    /// Highest `kv_usage` seen after a step was scheduled.
    pub kv_peak_usage: f64,
    /// Prefix-cache counters.
    pub prefix: PrefixCacheStats,
}

type OrderKey = (i32, u64);

/// Continuous-batching scheduler over a [`KvCacheManager`]. Single-threaded: the engine owns
/// it and alternates [`schedule`](Self::schedule) and [`update`](Self::update).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    requests: HashMap<RequestId, Request>,
    waiting: BTreeMap<OrderKey, RequestId>,
    running: BTreeMap<OrderKey, RequestId>,
    next_arrival: u64,
    watermark_blocks: usize,
    preemptions: u64,
    peak_usage: f64,
    /// The last plan, until its update.
    pending: Option<Vec<ScheduledRequest>>,
}

impl Scheduler {
    /// A scheduler with an empty pool.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero budget or sequence limit, a watermark outside
    /// `[0, 1)`, or a pool [`KvCacheManager::new`] refuses.
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        if config.max_batched_tokens == 0 || config.max_running == 0 {
            return Err(config_error(format!(
                "max_batched_tokens ({}) and max_running ({}) must be at least 1",
                config.max_batched_tokens, config.max_running
            )));
        }
        if !(0.0..1.0).contains(&config.watermark) {
            return Err(config_error(format!(
                "watermark must be in [0, 1), got {}",
                config.watermark
            )));
        }
        let kv = KvCacheManager::new(config.num_blocks, config.block_size, config.prefix_caching)?;
        let watermark_blocks = (config.watermark * config.num_blocks as f64) as usize;
        Ok(Scheduler {
            config,
            kv,
            requests: HashMap::new(),
            waiting: BTreeMap::new(),
            running: BTreeMap::new(),
            next_arrival: 0,
            watermark_blocks,
            preemptions: 0,
            peak_usage: 0.0,
            pending: None,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The KV blocks (block tables for the model runner).
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// A live (waiting or running) request.
    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
    }

    /// Running requests in scheduling order.
    pub fn running(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.running.values().copied()
    }

    /// Waiting requests in admission order.
    pub fn waiting(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.waiting.values().copied()
    }

    /// Whether no request is live.
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            waiting: self.waiting.len(),
            running: self.running.len(),
            preemptions: self.preemptions,
            kv_usage: self.kv.pool().usage(),
            kv_peak_usage: self.peak_usage,
            prefix: self.kv.prefix_stats(),
        }
    }

    /// The most tokens (prompt plus `max_tokens`) a request may ask for: the model's context
    /// or what KV admission may ever use, whichever is less.
    pub fn max_request_tokens(&self) -> usize {
        let usable = (self.config.num_blocks - self.watermark_blocks) * self.config.block_size;
        self.config
            .max_model_len
            .map_or(usable, |limit| limit.min(usable))
    }

    /// Queues a request.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for a live id, an empty prompt, `max_tokens` of 0, a prompt
    /// over the budget without chunked prefill, a request that could grow past
    /// [`SchedulerConfig::max_model_len`], or one whose KV could never fit in the pool (so
    /// that every admitted request can finish).
    pub fn add(&mut self, new: NewRequest) -> Result<()> {
        let refuse = |reason: String| Err(invalid(new.id, &reason));
        if self.requests.contains_key(&new.id) {
            return refuse("is already live".into());
        }
        if new.prompt.is_empty() || new.max_tokens == 0 {
            return refuse(format!(
                "needs a prompt and max_tokens >= 1 (prompt {} tokens, max_tokens {})",
                new.prompt.len(),
                new.max_tokens
            ));
        }
        if !self.config.chunked_prefill && new.prompt.len() > self.config.max_batched_tokens {
            return refuse(format!(
                "has a {}-token prompt, over the {}-token step budget without chunked prefill",
                new.prompt.len(),
                self.config.max_batched_tokens
            ));
        }
        // The longest the request can grow: its prompt, then every generated token but the
        // last (which is sampled, never computed). Checked: `max_tokens` comes from clients,
        // and a wrapped sum would admit a request that can never finish.
        let Some(most) = new.prompt.len().checked_add(new.max_tokens - 1) else {
            return refuse(format!(
                "has a {}-token prompt and max_tokens {}: the sum overflows",
                new.prompt.len(),
                new.max_tokens
            ));
        };
        if let Some(limit) = self.config.max_model_len
            && most > limit
        {
            return refuse(format!(
                "can reach {most} tokens ({}-token prompt, max_tokens {}), past the model's \
                 {limit}-token context",
                new.prompt.len(),
                new.max_tokens
            ));
        }
        let usable = self.config.num_blocks - self.watermark_blocks;
        if self.kv.blocks_for(most) > usable {
            return refuse(format!(
                "can need {most} tokens of KV ({} blocks), more than the {usable} blocks \
                 admission may use",
                self.kv.blocks_for(most)
            ));
        }
        let priority = match self.config.policy {
            Policy::Fcfs => 0,
            Policy::Priority => new.priority,
        };
        let key = (priority, self.next_arrival);
        self.next_arrival += 1;
        self.waiting.insert(key, new.id);
        self.requests.insert(
            new.id,
            Request {
                id: new.id,
                prompt_len: new.prompt.len(),
                tokens: new.prompt,
                max_tokens: new.max_tokens,
                adapter: new.adapter,
                prefix_keys: new.prefix_keys,
                key,
                num_computed: 0,
                status: RequestStatus::Waiting,
                num_preemptions: 0,
                prefix_hit_tokens: 0,
                admitted_before: false,
                draft: Vec::new(),
            },
        );
        Ok(())
    }

    /// Proposes speculative tokens to follow a decoding request's tokens: the next step
    /// computes them with its last token, and [`update_speculative`](Self::update_speculative)
    /// keeps the accepted ones. The draft is cut so that accepted tokens plus one can never
    /// pass `max_tokens` (and so never need more KV than admission allowed for), and further
    /// by the step's budget. Returns the draft length kept; 0 for a request that is not
    /// decoding.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for an id that is not live.
    pub fn set_draft(&mut self, id: RequestId, mut draft: Vec<u32>) -> Result<usize> {
        let Some(request) = self.requests.get_mut(&id) else {
            return Err(invalid(id, "is not live"));
        };
        if !request.is_decoding() {
            request.draft.clear();
            return Ok(0);
        }
        let generated = request.tokens.len() - request.prompt_len;
        draft.truncate(request.max_tokens.saturating_sub(generated + 1));
        request.draft = draft;
        Ok(request.draft.len())
    }

    /// Plans the next step: advances running requests, preempting from the back when blocks
    /// run out, then admits waiting ones. Cost: O(running + admitted · prompt) with the
    /// prompt hashing of prefix lookups.
    ///
    /// # Errors
    ///
    /// [`Error::CallOrder`] when the previous plan was not [`update`](Self::update)d.
    pub fn schedule(&mut self) -> Result<SchedulerOutput> {
        if self.pending.is_some() {
            return Err(Error::CallOrder {
                reason: "schedule() called again before update() answered the last step".into(),
            });
        }
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_batched_tokens;
        self.schedule_running(&mut budget, &mut out)?;
        if out.preempted.is_empty() {
            self.admit_waiting(&mut budget, &mut out)?;
        }
        out.num_tokens = self.config.max_batched_tokens - budget;
        self.peak_usage = self.peak_usage.max(self.kv.pool().usage());
        self.fill_batch(&mut out);
        self.pending = Some(out.scheduled.clone());
        Ok(out)
    }

    /// The step's tokens, positions, block tables and logit rows, from the plan.
    fn fill_batch(&self, out: &mut SchedulerOutput) {
        let batch = &mut out.batch;
        batch.tokens.reserve(out.num_tokens);
        batch.positions.reserve(out.num_tokens);
        for work in &out.scheduled {
            let request = &self.requests[&work.id];
            let end = work.start + work.len;
            batch.seqs.push(StepSeq {
                id: work.id,
                query_start: batch.tokens.len(),
                query_len: work.len,
                context_len: end,
                block_table: self.kv.block_table(work.id).unwrap_or_default().to_vec(),
                adapter: request.adapter.clone(),
            });
            batch
                .tokens
                .extend_from_slice(&request.tokens[work.start..end - work.draft]);
            batch.tokens.extend_from_slice(&request.draft[..work.draft]);
            batch.positions.extend(work.start..end);
            if work.samples {
                let last = batch.tokens.len();
                batch.logit_rows.extend(last - 1 - work.draft..last);
            }
        }
    }

    fn schedule_running(&mut self, budget: &mut usize, out: &mut SchedulerOutput) -> Result<()> {
        let order: Vec<(OrderKey, RequestId)> =
            self.running.iter().map(|(&key, &id)| (key, id)).collect();
        for (key, id) in order {
            if *budget == 0 {
                break;
            }
            if !self.running.contains_key(&key) {
                continue; // preempted for an earlier request this step
            }
            let request = self
                .requests
                .get_mut(&id)
                .expect("running requests are live");
            let (start, known) = (request.num_computed, request.tokens.len());
            let len = (known + request.draft.len() - start).min(*budget);
            // Draft tokens that did not fit the budget are dropped.
            let draft = (start + len).saturating_sub(known);
            request.draft.truncate(draft);
            loop {
                if let Some(copies) = self.kv.allocate_slots(id, start + len)? {
                    out.batch.copies.extend(copies);
                    out.scheduled.push(ScheduledRequest {
                        id,
                        start,
                        len,
                        samples: start + len >= known,
                        draft,
                    });
                    *budget -= len;
                    break;
                }
                let victim = self.preempt_last()?;
                out.preempted.push(victim);
                if victim == id {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Preempts the last running request: frees its blocks and queues it at its original
    /// position.
    fn preempt_last(&mut self) -> Result<RequestId> {
        let (key, id) = self
            .running
            .pop_last()
            .expect("the request being grown is itself running");
        self.kv.free(id)?;
        let request = self
            .requests
            .get_mut(&id)
            .expect("running requests are live");
        request.num_computed = 0;
        request.draft.clear();
        request.status = RequestStatus::Waiting;
        request.num_preemptions += 1;
        self.waiting.insert(key, id);
        self.preemptions += 1;
        Ok(id)
    }

    fn admit_waiting(&mut self, budget: &mut usize, out: &mut SchedulerOutput) -> Result<()> {
        while *budget > 0 && self.running.len() < self.config.max_running {
            let Some((&key, &id)) = self.waiting.first_key_value() else {
                break;
            };
            let request = &self.requests[&id];
            let probe = self.kv.probe(&request.tokens, &request.prefix_keys);
            let hit = probe.hit_tokens();
            let remaining = request.tokens.len() - hit;
            let len = if self.config.chunked_prefill {
                remaining.min(*budget)
            } else if remaining <= *budget {
                remaining
            } else {
                break;
            };
            // A preempted request comes back only when all of it fits (see "Against thrash").
            let must_fit = if request.admitted_before {
                request.tokens.len()
            } else {
                hit + len
            };
            if self.kv.blocks_to_admit(&probe, must_fit) + self.watermark_blocks
                > self.kv.pool().num_free()
            {
                break;
            }
            if !self.kv.admit(id, probe, hit + len, self.watermark_blocks)? {
                break;
            }
            let request = self
                .requests
                .get_mut(&id)
                .expect("waiting requests are live");
            if !request.admitted_before {
                request.prefix_hit_tokens = hit;
                request.admitted_before = true;
            }
            request.num_computed = hit;
            request.status = RequestStatus::Running;
            self.waiting.remove(&key);
            self.running.insert(key, id);
            out.scheduled.push(ScheduledRequest {
                id,
                start: hit,
                len,
                samples: hit + len == request.tokens.len(),
                draft: 0,
            });
            *budget -= len;
        }
        Ok(())
    }

    /// Applies the last plan's results: every scheduled request's KV is computed, and each
    /// one that [`samples`](ScheduledRequest::samples) gets its token from `sampled`.
    /// Returns the requests that reached their `max_tokens` (finished with
    /// [`FinishReason::Length`]), removed from the scheduler with their blocks freed.
    ///
    /// The scheduler knows no stop tokens or strings: whoever samples decides when a request
    /// stops (the engine's [`StopCriteria`](crate::sampling::StopCriteria)) and says so
    /// through [`update_speculative`](Self::update_speculative). `max_tokens` is the bound it
    /// reserves room for.
    ///
    /// Requests aborted since the plan are skipped (a token for them is ignored).
    ///
    /// # Errors
    ///
    /// [`Error::CallOrder`] without a pending plan; [`Error::InvalidRequest`] when `sampled`
    /// misses a token, repeats one, or has one for a request that did not sample; nothing
    /// changes then.
    pub fn update(&mut self, sampled: &[(RequestId, u32)]) -> Result<Vec<Request>> {
        let sampled: Vec<(RequestId, Vec<u32>)> = sampled
            .iter()
            .map(|&(id, token)| (id, vec![token]))
            .collect();
        self.update_speculative(&sampled, &[])
    }

    /// [`update`](Self::update) for steps that verified drafts: each sampling request gets
    /// its accepted draft prefix followed by one more token (just the one token without a
    /// draft). The KV of rejected draft tokens is dropped (blocks past the accepted tokens
    /// return to the pool). `stopped` names requests that end with their last token here
    /// (a stop token or string), and why; they are finished and returned with the rest. A
    /// request's tokens may stop short of its draft plus one (its stop came first); reaching
    /// `max_tokens` ends it there.
    ///
    /// # Errors
    ///
    /// As [`update`](Self::update), and [`Error::InvalidRequest`] when a request's tokens are
    /// not a prefix of its draft plus one token, or a stopped request sampled nothing.
    pub fn update_speculative(
        &mut self,
        sampled: &[(RequestId, Vec<u32>)],
        stopped: &[(RequestId, FinishReason)],
    ) -> Result<Vec<Request>> {
        let Some(plan) = self.pending.as_ref() else {
            return Err(Error::CallOrder {
                reason: "update() called with no step scheduled".into(),
            });
        };
        let mut tokens: HashMap<RequestId, &[u32]> = HashMap::with_capacity(sampled.len());
        for (id, emitted) in sampled {
            if tokens.insert(*id, emitted).is_some() {
                return Err(invalid(*id, "has two sampled tokens in one update"));
            }
        }
        for step in plan {
            let Some(request) = self.requests.get(&step.id) else {
                continue;
            };
            match tokens.get(&step.id) {
                None if step.samples => {
                    return Err(invalid(step.id, "sampled this step but has no token"));
                }
                Some(emitted) if step.samples => {
                    let accepted = emitted.len().saturating_sub(1);
                    if emitted.is_empty()
                        || accepted > step.draft
                        || emitted[..accepted] != request.draft[..accepted]
                    {
                        return Err(invalid(
                            step.id,
                            &format!(
                                "got {} tokens, not an accepted prefix of its {}-token draft \
                                 and one more",
                                emitted.len(),
                                step.draft
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        for (id, _) in sampled {
            let expected = plan.iter().any(|step| step.id == *id && step.samples);
            if !expected && self.requests.contains_key(id) {
                return Err(invalid(*id, "got a token but did not sample this step"));
            }
        }
        let stopped: HashMap<RequestId, FinishReason> = stopped.iter().copied().collect();
        if let Some(id) = stopped.keys().find(|id| !tokens.contains_key(id)) {
            return Err(invalid(*id, "stopped without a token this step"));
        }
        let plan = self.pending.take().expect("checked above");
        let mut finished = Vec::new();
        for step in plan {
            let Some(request) = self.requests.get_mut(&step.id) else {
                continue;
            };
            if !step.samples {
                request.num_computed = step.start + step.len;
                self.kv
                    .commit(step.id, &request.tokens[..request.num_computed])?;
                continue;
            }
            let emitted = tokens[&step.id];
            request.draft.clear();
            let room = request.max_tokens - request.output().len();
            request.tokens.extend(emitted.iter().take(room));
            let at_length = request.output().len() == request.max_tokens;
            let reason = stopped
                .get(&step.id)
                .copied()
                .or(at_length.then_some(FinishReason::Length));
            if let Some(reason) = reason {
                finished.push(self.finish(step.id, reason)?);
                continue;
            }
            // Computed: the step's tokens before the draft, and the accepted draft tokens.
            request.num_computed = step.start + step.len - step.draft + emitted.len() - 1;
            if step.draft > 0 {
                self.kv.truncate(step.id, request.num_computed)?;
            }
            self.kv
                .commit(step.id, &request.tokens[..request.num_computed])?;
        }
        Ok(finished)
    }

    /// Ends a live request now (aborted by its client, or a stop string the engine saw):
    /// its blocks return to the pool at once and it is removed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for an id that is not live.
    pub fn finish(&mut self, id: RequestId, reason: FinishReason) -> Result<Request> {
        let Some(mut request) = self.requests.remove(&id) else {
            return Err(invalid(id, "is not live"));
        };
        match request.status {
            RequestStatus::Running => {
                self.running.remove(&request.key);
                self.kv.free(id)?;
            }
            _ => {
                self.waiting.remove(&request.key);
            }
        }
        request.status = RequestStatus::Finished(reason);
        Ok(request)
    }
}

fn invalid(id: RequestId, reason: &str) -> Error {
    Error::InvalidRequest {
        request: id,
        reason: format!("request {id} {reason}").into(),
    }
}

fn config_error(reason: String) -> Error {
    Error::InvalidConfig {
        reason: reason.into(),
    }
}
