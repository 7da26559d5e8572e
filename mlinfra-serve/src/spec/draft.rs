//! [`DraftModelProposer`]: a small model of the same vocabulary drafts greedily.

use std::collections::HashMap;

use mlinfra_train::models::{KvCache, Llama};

use super::Proposer;
use crate::sched::RequestId;
use crate::{Error, Result};

/// Drafts `k` tokens per step by running a smaller Llama greedily (Leviathan et al.'s
/// draft model; vLLM's `draft_model` speculator). Greedy drafting is a point-mass proposal,
/// which the acceptance rule handles exactly, so the output distribution stays the target's
/// whatever the draft model is.
///
/// Each request keeps a dense [`KvCache`] of the draft model over the tokens it has seen;
/// after a verification it is truncated to the longest prefix the request still shares, so
/// a step feeds only the new tokens plus `k - 1` drafted ones. Cost: about `k` draft-model
/// decode steps per target step, and the draft's KV per running request.
pub struct DraftModelProposer {
    model: Llama,
    k: usize,
    states: HashMap<RequestId, DraftState>,
}

#[derive(Default)]
struct DraftState {
    cache: KvCache,
    /// The tokens whose KV `cache` holds.
    fed: Vec<u32>,
}

impl std::fmt::Debug for DraftModelProposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModelProposer")
            .field("k", &self.k)
            .field("requests", &self.states.len())
            .finish_non_exhaustive()
    }
}

impl DraftModelProposer {
    /// Drafts of up to `k` tokens from `model`, which must share the target's vocabulary
    /// (the engine drops draft tokens outside the target's).
    pub fn new(model: Llama, k: usize) -> Self {
        DraftModelProposer {
            model,
            k,
            states: HashMap::new(),
        }
    }
}

impl Proposer for DraftModelProposer {
    fn propose(&mut self, id: RequestId, tokens: &[u32]) -> Result<Vec<u32>> {
        let room = self.model.max_seq_len().saturating_sub(tokens.len());
        let k = self.k.min(room);
        if k == 0 || tokens.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.states.entry(id).or_default();
        // Keep the cache for the prefix still shared (a rejection changed the rest), and
        // always feed at least the last token, whose logits give the first draft.
        let shared = state
            .fed
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len() - 1);
        state.cache.truncate(shared);
        state.fed.truncate(shared);
        let mut input = tokens[shared..].to_vec();
        let mut draft = Vec::with_capacity(k);
        while draft.len() < k {
            let next = self
                .model
                .greedy_next(&input, &mut state.cache)
                .map_err(|error| Error::Model(Box::new(error)))?;
            state.fed.extend(&input);
            draft.push(next);
            input = vec![next];
        }
        Ok(draft)
    }

    fn release(&mut self, id: RequestId) {
        self.states.remove(&id);
    }
}
