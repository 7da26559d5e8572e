//! [`Sampler`]: one request's logits-to-token step, with its own seeded generator.

use std::collections::{HashMap, HashSet};

use mlinfra_train::SplitMix64;

use super::SamplingParams;
use crate::{Error, Result};

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The token.
    pub token: u32,
    /// Its log-probability under the model's raw distribution, when logprobs were asked for.
    pub logprob: Option<f32>,
    /// The most likely tokens with their raw log-probabilities, most likely first (as many
    /// as asked for).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Turns one request's logits into tokens. Holds what the penalties need (which tokens the
/// prompt has, how often each was generated) and the request's generator, so a request's
/// samples depend on its seed, prompt and logits only, never on the batch around it.
///
/// Cost per token: O(vocab) for penalties-free greedy and plain temperature sampling;
/// O(vocab log vocab) when top-p needs the sorted distribution (top-k alone selects in
/// O(vocab)). Scratch buffers are reused across tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    prompt_tokens: HashSet<u32>,
    output_counts: HashMap<u32, u32>,
    scratch: Vec<f32>,
    order: Vec<u32>,
}

impl Sampler {
    /// A sampler for a request with `prompt`, drawing from `SplitMix64(seed)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSampling`] when [`SamplingParams::validate`] refuses `params`.
    pub fn new(params: SamplingParams, prompt: &[u32], seed: u64) -> Result<Self> {
        params.validate()?;
        let prompt_tokens = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            HashSet::new()
        };
        Ok(Sampler {
            params,
            rng: SplitMix64::new(seed),
            prompt_tokens,
            output_counts: HashMap::new(),
            scratch: Vec::new(),
            order: Vec::new(),
        })
    }

    /// Its parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token generated outside [`sample`](Self::sample) (a speculative token that
    /// was accepted), so the penalties see it.
    pub fn observe(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
    }

    /// The logits after penalties and temperature (for temperature 0, after penalties
    /// only): what the filters and the draw see. With a temperature other than 1 they are
    /// also shifted so that the largest is 0 before dividing (softmax is unchanged): a tiny
    /// temperature then sends the others to `-inf`, never the largest to `inf`, whose
    /// `inf - inf` would turn the distribution into NaN.
    pub fn processed_logits(&mut self, logits: &[f32]) -> &[f32] {
        self.scratch.clear();
        self.scratch.extend_from_slice(logits);
        let params = &self.params;
        let repetition = params.repetition_penalty;
        if repetition != 1.0 {
            let seen = self.prompt_tokens.iter().chain(self.output_counts.keys());
            let mut penalised = HashSet::new();
            for &token in seen {
                if penalised.insert(token)
                    && let Some(logit) = self.scratch.get_mut(token as usize)
                {
                    // Clamped: a tiny penalty must not make a logit +inf (see above).
                    *logit = if *logit > 0.0 {
                        (*logit / repetition).min(f32::MAX)
                    } else {
                        *logit * repetition
                    };
                }
            }
        }
        if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
            for (&token, &count) in &self.output_counts {
                if let Some(logit) = self.scratch.get_mut(token as usize) {
                    *logit -= params.frequency_penalty * count as f32 + params.presence_penalty;
                }
            }
        }
        if !params.is_greedy() && params.temperature != 1.0 {
            let max = self
                .scratch
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            if max.is_finite() {
                // A division, not a multiplication by 1/T: for T = 1e-45, 1/T is inf and
                // the largest logit's 0 · inf would be NaN; 0 / T is 0.
                for logit in &mut self.scratch {
                    *logit = (*logit - max) / params.temperature;
                }
            }
        }
        &self.scratch
    }

    /// Samples the next token from `logits` (one per vocabulary entry) and records it for
    /// the penalties.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSampling`] for empty logits or logits with a NaN or `+inf` (a broken
    /// model must not turn into a silently arbitrary token).
    pub fn sample(&mut self, logits: &[f32]) -> Result<Sample> {
        check_logits(logits)?;
        let log_z = self.params.logprobs.map(|_| log_normalizer(logits));
        self.processed_logits(logits);
        let token = if self.params.is_greedy() {
            argmax(&self.scratch)
        } else {
            self.draw()
        };
        self.observe(token);
        Ok(Sample {
            token,
            logprob: log_z.map(|log_z| (f64::from(logits[token as usize]) - log_z) as f32),
            top_logprobs: match (self.params.logprobs, log_z) {
                (Some(count), Some(log_z)) => top_logprobs(logits, count, log_z),
                _ => Vec::new(),
            },
        })
    }

    /// The distribution a sample is drawn from, for `logits`: after penalties, temperature
    /// and filters, normalised; one-hot on the argmax for greedy. What speculative
    /// verification compares draft tokens against.
    ///
    /// # Errors
    ///
    /// As [`sample`](Self::sample), for empty or NaN logits.
    pub fn probabilities(&mut self, logits: &[f32]) -> Result<Vec<f32>> {
        check_logits(logits)?;
        self.processed_logits(logits);
        let mut out = vec![0.0; logits.len()];
        if self.params.is_greedy() {
            out[argmax(&self.scratch) as usize] = 1.0;
            return Ok(out);
        }
        match self.candidates() {
            Candidates::Masked => out[0] = 1.0,
            Candidates::All => {
                let total: f64 = self.scratch.iter().map(|&p| f64::from(p)).sum();
                for (o, &p) in out.iter_mut().zip(&self.scratch) {
                    *o = (f64::from(p) / total) as f32;
                }
            }
            Candidates::First(keep) => {
                let kept = &self.order[..keep];
                let total: f64 = kept
                    .iter()
                    .map(|&t| f64::from(self.scratch[t as usize]))
                    .sum();
                for &t in kept {
                    out[t as usize] = (f64::from(self.scratch[t as usize]) / total) as f32;
                }
            }
        }
        Ok(out)
    }

    /// Verifies speculative `draft` tokens: `rows[i]` are the target's logits after the
    /// context plus `draft[..i]` (`draft.len() + 1` rows). Returns the tokens to append (the
    /// accepted draft prefix, then one token drawn from the target), distributed exactly as
    /// if each had been [`sample`](Self::sample)d in turn (the rejection rule of
    /// [`spec::accept`](crate::spec::accept), with the draft a point mass). The penalties of
    /// every row see the tokens generated before this call only.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSampling`] for rows that do not match the draft, or bad logits.
    pub fn verify(&mut self, draft: &[u32], rows: &[&[f32]]) -> Result<Vec<Sample>> {
        let targets = rows
            .iter()
            .map(|row| self.probabilities(row))
            .collect::<Result<Vec<_>>>()?;
        let targets: Vec<&[f32]> = targets.iter().map(Vec::as_slice).collect();
        let verified =
            crate::spec::accept(draft, &vec![None; draft.len()], &targets, &mut self.rng)?;
        let mut samples = Vec::with_capacity(verified.tokens.len());
        for (row, &token) in rows.iter().zip(&verified.tokens) {
            let log_z = self.params.logprobs.map(|_| log_normalizer(row));
            samples.push(Sample {
                token,
                logprob: log_z.map(|log_z| (f64::from(row[token as usize]) - log_z) as f32),
                top_logprobs: match (self.params.logprobs, log_z) {
                    (Some(count), Some(log_z)) => top_logprobs(row, count, log_z),
                    _ => Vec::new(),
                },
            });
            self.observe(token);
        }
        Ok(samples)
    }

    /// Turns the processed logits in `scratch` into unnormalised probabilities (the largest
    /// 1) and applies top-k, top-p and min-p.
    fn candidates(&mut self) -> Candidates {
        let params = &self.params;
        let max = self
            .scratch
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return Candidates::Masked;
        }
        for logit in &mut self.scratch {
            *logit = (*logit - max).exp();
        }
        let probs = &self.scratch;
        if params.top_k == 0 && params.top_p >= 1.0 && params.min_p <= 0.0 {
            return Candidates::All;
        }
        // Candidates, most likely first (ties by id, for determinism).
        self.order.clear();
        self.order.extend(0..probs.len() as u32);
        let by_prob = |a: &u32, b: &u32| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        let mut keep = probs.len();
        if params.top_k != 0 && params.top_k < keep {
            keep = params.top_k;
            self.order.select_nth_unstable_by(keep - 1, by_prob);
            self.order.truncate(keep);
        }
        self.order.sort_unstable_by(by_prob);
        if params.top_p < 1.0 {
            let total: f64 = self
                .order
                .iter()
                .map(|&t| f64::from(probs[t as usize]))
                .sum();
            let needed = f64::from(params.top_p) * total;
            let mut mass = 0.0;
            let mut count = 0;
            for &token in &self.order {
                mass += f64::from(probs[token as usize]);
                count += 1;
                if mass >= needed {
                    break;
                }
            }
            keep = count;
        }
        if params.min_p > 0.0 {
            // The first candidate is the most likely: its unnormalised probability is 1.
            let floor = params.min_p;
            keep = self.order[..keep]
                .iter()
                .take_while(|&&token| probs[token as usize] >= floor)
                .count()
                .max(1);
        }
        Candidates::First(keep)
    }

    /// Draws from softmax(scratch) restricted by top-k, top-p and min-p.
    fn draw(&mut self) -> u32 {
        match self.candidates() {
            // Every token masked: nothing better to do than the first.
            Candidates::Masked => 0,
            Candidates::All => {
                let probs = &self.scratch;
                let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
                let mut target = self.rng.uniform(0.0, total);
                for (token, &p) in probs.iter().enumerate() {
                    target -= f64::from(p);
                    if target < 0.0 {
                        return token as u32;
                    }
                }
                last_positive(probs)
            }
            Candidates::First(keep) => {
                let (probs, kept) = (&self.scratch, &self.order[..keep]);
                let total: f64 = kept.iter().map(|&t| f64::from(probs[t as usize])).sum();
                let mut target = self.rng.uniform(0.0, total);
                for &token in kept {
                    target -= f64::from(probs[token as usize]);
                    if target < 0.0 {
                        return token;
                    }
                }
                kept[kept.len() - 1]
            }
        }
    }
}

/// What the filters kept.
enum Candidates {
    /// Every logit was -inf.
    Masked,
    /// Every token, in id order (no filter set).
    All,
    /// The first `n` of `order`, most likely first.
    First(usize),
}

/// Logits a distribution can be made of: at least one, none NaN, none `+inf` (`-inf` masks a
/// token and is fine). Penalties and temperature keep finite logits finite or `-inf`
/// ([`Sampler::processed_logits`]), so what passes here never becomes NaN.
fn check_logits(logits: &[f32]) -> Result<()> {
    if let Some(bad) = logits
        .iter()
        .position(|logit| logit.is_nan() || *logit == f32::INFINITY)
    {
        return Err(Error::InvalidSampling {
            reason: format!(
                "logit {bad} of {} is {} (a model must give finite logits, or -inf to mask)",
                logits.len(),
                logits[bad]
            )
            .into(),
        });
    }
    if logits.is_empty() {
        return Err(Error::InvalidSampling {
            reason: "no logits".into(),
        });
    }
    Ok(())
}

/// The index of the largest logit, the lowest on ties.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = index;
        }
    }
    best as u32
}

/// The last token with a non-zero probability (the fallback when rounding leaves the draw
/// past the end of the cumulative sum).
fn last_positive(probs: &[f32]) -> u32 {
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
}

/// `log Σ exp(logit)` in f64: a raw logit minus this is its log-probability.
fn log_normalizer(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    f64::from(max) + sum.ln()
}

/// The `count` most likely tokens and their log-probabilities, most likely first (ties by
/// id). O(vocab + count log count).
fn top_logprobs(logits: &[f32], count: usize, log_z: f64) -> Vec<(u32, f32)> {
    let count = count.min(logits.len());
    if count == 0 {
        return Vec::new();
    }
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.select_nth_unstable_by(count - 1, by_logit);
    order.truncate(count);
    order.sort_unstable_by(by_logit);
    order
        .into_iter()
        .map(|token| (token, (f64::from(logits[token as usize]) - log_z) as f32))
        .collect()
}
