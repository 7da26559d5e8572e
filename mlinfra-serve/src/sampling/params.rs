//! [`SamplingParams`]: how one request turns logits into tokens, with OpenAI/vLLM semantics.

use crate::{Error, Result};

/// Most alternatives a request may ask log-probabilities for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

/// Per-request sampling parameters. Defaults sample from the model's distribution unchanged
/// (temperature 1, no filters, no penalties), 16 tokens at most, as OpenAI's API does.
///
/// The processing order is vLLM's: penalties on the raw logits, then temperature, then the
/// filters (top-k, then top-p over what top-k kept, then min-p), then a draw from the
/// per-request generator.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy (the most likely token, lowest id on ties).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in
    /// `(0, 1]`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one, in `[0, 1]`.
    pub min_p: f32,
    /// CTRL-style penalty (> 0) on every token in the prompt or output: positive logits are
    /// divided by it, negative ones multiplied; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated, in `[-2, 2]`.
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit if it was generated at all, in `[-2, 2]`.
    pub presence_penalty: f32,
    /// Tokens to generate at most (at least 1).
    pub max_tokens: usize,
    /// Generating one of these ends the request (the token is kept).
    pub stop_token_ids: Vec<u32>,
    /// Text that ends the request when it appears in the output (the text is cut before it).
    pub stop: Vec<String>,
    /// Seed of this request's generator: the same seed and prompt give the same output,
    /// whatever else is batched with it. `None` draws one from the engine's seed and the
    /// request id.
    pub seed: Option<u64>,
    /// Return the sampled token's log-probability and this many most likely alternatives
    /// (at most [`MAX_LOGPROBS`]), from the model's raw distribution (before penalties,
    /// temperature and filters, as vLLM's default).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            max_tokens: 16,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..SamplingParams::default()
        }
    }

    /// Whether sampling is the deterministic argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field's range.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSampling`] naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        let refuse = |field: &str, rule: &str, value: String| {
            Err(Error::InvalidSampling {
                reason: format!("{field} must be {rule}, got {value}").into(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return refuse(
                "temperature",
                "finite and >= 0",
                self.temperature.to_string(),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return refuse("top_p", "in (0, 1]", self.top_p.to_string());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return refuse("min_p", "in [0, 1]", self.min_p.to_string());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return refuse(
                "repetition_penalty",
                "finite and > 0",
                self.repetition_penalty.to_string(),
            );
        }
        for (field, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return refuse(field, "in [-2, 2]", value.to_string());
            }
        }
        if self.max_tokens == 0 {
            return refuse("max_tokens", "at least 1", "0".into());
        }
        if let Some(count) = self.logprobs
            && count > MAX_LOGPROBS
        {
            return refuse(
                "logprobs",
                &format!("at most {MAX_LOGPROBS}"),
                count.to_string(),
            );
        }
        if let Some(empty) = self.stop.iter().position(String::is_empty) {
            return refuse(
                "stop",
                "non-empty strings",
                format!("an empty one at index {empty}"),
            );
        }
        Ok(())
    }
}
