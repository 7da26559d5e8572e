//! What the scheduler knows about a request: its tokens, limits and lifecycle state.

use crate::kv::PrefixKeys;

/// A request's id, chosen by the caller and unique among live requests.
pub type RequestId = u64;

/// A new request as the scheduler sees it: tokens and limits, no sampling parameters.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Its id.
    pub id: RequestId,
    /// The prompt's token ids (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most: the scheduler ends it there with
    /// [`FinishReason::Length`]. Stop tokens and strings are the sampler's business.
    pub max_tokens: usize,
    /// Lower is served first under [`Policy::Priority`](super::Policy::Priority) (vLLM's
    /// convention); ignored under FCFS.
    pub priority: i32,
    /// Prefix-cache keys (adapter, salt): what makes its KV differ from another request's
    /// with the same tokens.
    pub prefix_keys: PrefixKeys,
    /// The adapter the runner applies to its rows ([`StepSeq::adapter`](super::StepSeq)), by
    /// name; `None` runs the base model.
    pub adapter: Option<Box<str>>,
}

impl NewRequest {
    /// A request with default priority and the base model's cache keys.
    pub fn new(id: RequestId, prompt: Vec<u32>, max_tokens: usize) -> Self {
        NewRequest {
            id,
            prompt,
            max_tokens,
            priority: 0,
            prefix_keys: PrefixKeys::default(),
            adapter: None,
        }
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Queued: not admitted yet, or preempted and waiting to be recomputed.
    Waiting,
    /// Holding KV blocks and scheduled every step until it finishes or is preempted.
    Running,
    /// Done; its blocks are freed.
    Finished(FinishReason),
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It generated one of its stop tokens or a stop string.
    Stop,
    /// It generated `max_tokens` tokens.
    Length,
    /// It was aborted (a client went away).
    Aborted,
}

/// A live request's state inside the scheduler.
#[derive(Debug, Clone)]
pub struct Request {
    pub(super) id: RequestId,
    /// Prompt followed by the generated tokens.
    pub(super) tokens: Vec<u32>,
    pub(super) prompt_len: usize,
    pub(super) max_tokens: usize,
    pub(super) prefix_keys: PrefixKeys,
    pub(super) adapter: Option<Box<str>>,
    /// Ordering key: (priority, arrival), smallest served first.
    pub(super) key: (i32, u64),
    /// Tokens whose KV is computed (0 again after a preemption).
    pub(super) num_computed: usize,
    pub(super) status: RequestStatus,
    pub(super) num_preemptions: u32,
    /// Prompt tokens served from the prefix cache at first admission.
    pub(super) prefix_hit_tokens: usize,
    pub(super) admitted_before: bool,
    /// Speculative tokens proposed to follow `tokens`, verified in the next step.
    pub(super) draft: Vec<u32>,
}

impl Request {
    /// Its id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Prompt followed by the generated tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The prompt.
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// The generated tokens.
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Speculative tokens scheduled after [`tokens`](Self::tokens) for verification.
    pub fn draft(&self) -> &[u32] {
        &self.draft
    }

    /// Whether it is decoding: every known token but the last is computed.
    pub fn is_decoding(&self) -> bool {
        self.status == RequestStatus::Running && self.num_computed + 1 == self.tokens.len()
    }

    /// Tokens whose KV is computed.
    pub fn num_computed(&self) -> usize {
        self.num_computed
    }

    /// Its state.
    pub fn status(&self) -> RequestStatus {
        self.status
    }

    /// Times it was preempted (its KV dropped, to be recomputed).
    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }

    /// Prompt tokens served from the prefix cache at its first admission.
    pub fn prefix_hit_tokens(&self) -> usize {
        self.prefix_hit_tokens
    }

    /// Its priority as scheduled, lower first (0 for every request under FCFS).
    pub fn priority(&self) -> i32 {
        self.key.0
    }
}
