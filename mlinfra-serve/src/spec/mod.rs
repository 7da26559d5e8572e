//! Speculative decoding: proposers that guess the next tokens cheaply (prompt lookup, a
//! draft model), and the acceptance rule that keeps the output distribution exactly the
//! target model's.
//!
//! A step verifies `k` proposed tokens with one target forward over `k + 1` positions and
//! keeps the longest accepted run plus one token from the target, so it yields between 1 and
//! `k + 1` tokens for about the cost of one. [`accept`] is the rejection rule of Leviathan,
//! Kalman & Matias (2023), "Fast Inference from Transformers via Speculative Decoding",
//! Algorithm 1: the accepted tokens are distributed exactly as if the target had sampled
//! them one by one, whatever the proposer.
//!
//! The engine runs it when [`EngineConfig::speculative`](crate::engine::EngineConfig) is
//! set: it asks the proposer for each decoding request's draft
//! ([`Scheduler::set_draft`](crate::sched::Scheduler::set_draft)), the runner returns logits
//! for every draft position, [`Sampler::verify`](crate::sampling::Sampler::verify) applies
//! the rule, and the scheduler keeps the accepted tokens' KV and frees the rest.

mod draft;
mod ngram;

use mlinfra_train::SplitMix64;

use crate::sched::RequestId;
use crate::{Error, Result};

pub use draft::DraftModelProposer;
pub use ngram::NgramProposer;

/// A source of speculative tokens for the engine.
pub trait Proposer: Send {
    /// Tokens proposed to follow `tokens` (request `id`'s prompt and output so far); empty
    /// when there is no guess. Called once per decoding step of each running request.
    ///
    /// # Errors
    ///
    /// A draft model's failure; the engine fails the step.
    fn propose(&mut self, id: RequestId, tokens: &[u32]) -> Result<Vec<u32>>;

    /// Forgets request `id` (it finished): proposers with per-request state free it.
    fn release(&mut self, id: RequestId) {
        let _ = id;
    }
}

impl Proposer for NgramProposer {
    fn propose(&mut self, _id: RequestId, tokens: &[u32]) -> Result<Vec<u32>> {
        Ok(NgramProposer::propose(self, tokens))
    }
}

/// The outcome of verifying one draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The tokens to append: the accepted draft prefix, then one token from the target (a
    /// correction at the first rejection, or a bonus token when every draft token passed).
    pub tokens: Vec<u32>,
    /// How many draft tokens were accepted (`tokens.len() - 1`).
    pub accepted: usize,
}

/// Verifies `draft` against the target's distributions.
///
/// - `draft_probs[i]` is the distribution the proposer drew `draft[i]` from (`None` for a
///   deterministic proposer such as n-gram lookup: a point mass on `draft[i]`);
/// - `target_probs[i]` is the target's next-token distribution after the context plus
///   `draft[..i]`; there are `draft.len() + 1` of them (the last gives the bonus token).
///
/// Draft token `i` is accepted with probability `min(1, p(x) / q(x))`; at the first
/// rejection the correction is drawn from `normalise(max(0, p - q))`. With point-mass
/// drafts and greedy (one-hot) targets this reduces to "accept while the draft equals the
/// argmax", so greedy speculative output equals greedy output.
///
/// # Errors
///
/// [`Error::InvalidSampling`] when the lengths do not match as described, a token is
/// outside a distribution, or a distribution has no mass (nothing changes then).
pub fn accept(
    draft: &[u32],
    draft_probs: &[Option<&[f32]>],
    target_probs: &[&[f32]],
    rng: &mut SplitMix64,
) -> Result<Verified> {
    let vocab = target_probs.first().map_or(0, |p| p.len());
    let shapes_fit = draft_probs.len() == draft.len()
        && target_probs.len() == draft.len() + 1
        && target_probs.iter().all(|p| p.len() == vocab)
        && draft_probs.iter().flatten().all(|q| q.len() == vocab)
        && draft.iter().all(|&t| (t as usize) < vocab)
        && target_probs.iter().all(|p| p.iter().any(|&x| x > 0.0));
    if !shapes_fit {
        return Err(Error::InvalidSampling {
            reason: format!(
                "a draft of {} tokens needs as many draft distributions (got {}) and one more \
                 target distribution (got {}), all over one vocabulary holding the tokens, \
                 each with some mass",
                draft.len(),
                draft_probs.len(),
                target_probs.len()
            )
            .into(),
        });
    }
    let mut tokens = Vec::with_capacity(draft.len() + 1);
    for (i, &token) in draft.iter().enumerate() {
        let p = target_probs[i];
        let p_token = f64::from(p[token as usize]);
        let q_token = draft_probs[i].map_or(1.0, |q| f64::from(q[token as usize]));
        let accept_probability = if q_token > 0.0 {
            (p_token / q_token).min(1.0)
        } else {
            0.0
        };
        if rng.uniform(0.0, 1.0) < accept_probability {
            tokens.push(token);
            continue;
        }
        // Rejected: draw the correction from the residual max(0, p - q).
        let residual: Vec<f64> = p
            .iter()
            .enumerate()
            .map(|(t, &pt)| {
                let qt = match draft_probs[i] {
                    Some(q) => f64::from(q[t]),
                    None => f64::from(u8::from(t == token as usize)),
                };
                (f64::from(pt) - qt).max(0.0)
            })
            .collect();
        // p(x) < q(x) here, so the residual has mass somewhere else.
        tokens.push(draw(&residual, rng));
        return Ok(Verified {
            accepted: i,
            tokens,
        });
    }
    let bonus: Vec<f64> = target_probs[draft.len()]
        .iter()
        .map(|&p| f64::from(p))
        .collect();
    tokens.push(draw(&bonus, rng));
    Ok(Verified {
        accepted: draft.len(),
        tokens,
    })
}

/// A draw from unnormalised weights with positive mass.
fn draw(weights: &[f64], rng: &mut SplitMix64) -> u32 {
    let total: f64 = weights.iter().sum();
    let mut target = rng.uniform(0.0, total);
    for (token, &w) in weights.iter().enumerate() {
        target -= w;
        if target < 0.0 {
            return token as u32;
        }
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}
