//! Greedy decoding with a [`KvCache`]: the reference path for checking a loaded model (the
//! serving engine, with batching and sampling, is mlinfra-serve's).

use burn::tensor::{Int, Tensor, TensorData};

use super::{KvCache, Llama};
use crate::{Error, Result};

impl Llama {
    /// Greedy continuation of `prompt`: up to `max_new` token ids, each the argmax of the
    /// logits after the ones before; stops early after emitting an id in `stop` (which is
    /// included). One forward over the prompt, then one position per new token.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty prompt, an id outside the vocabulary, or a
    /// prompt plus `max_new` longer than the model's `max_seq_len`.
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let refuse = |reason: String| {
            Err(Error::InvalidInput {
                operation: "Llama::generate_greedy",
                reason: reason.into(),
            })
        };
        if prompt.is_empty() {
            return refuse("the prompt is empty".into());
        }
        let vocab = self.embed_tokens.weight.dims()[0];
        if let Some(bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return refuse(format!(
                "prompt id {bad} is outside the vocabulary of {vocab}"
            ));
        }
        if prompt.len().saturating_add(max_new) > self.max_seq_len {
            return refuse(format!(
                "{} prompt tokens + {max_new} new exceed max_seq_len {}",
                prompt.len(),
                self.max_seq_len
            ));
        }
        let mut cache = KvCache::default();
        let mut input: Vec<u32> = prompt.to_vec();
        let mut generated = Vec::with_capacity(max_new);
        while generated.len() < max_new {
            let next = self.greedy_next(&input, &mut cache)?;
            generated.push(next);
            if stop.contains(&next) {
                break;
            }
            input = vec![next];
        }
        Ok(generated)
    }

    /// Feeds `input` after the positions in `cache` (which it extends) and returns the most
    /// likely next token: one step of greedy decoding.
    ///
    /// # Errors
    ///
    /// As [`Llama::forward_cached`].
    pub fn greedy_next(&self, input: &[u32], cache: &mut KvCache) -> Result<u32> {
        let next = self
            .next_logits(input, cache)?
            .argmax(0)
            .into_scalar::<i64>();
        u32::try_from(next).map_err(|_| Error::Tensor {
            reason: format!("argmax returned {next}").into(),
        })
    }

    /// Feeds `input` after the positions in `cache` (which it extends) and returns the logits
    /// at its last position, `[vocab]`: the scores of the next token.
    ///
    /// # Errors
    ///
    /// As [`Llama::forward_cached`]; [`Error::InvalidInput`] for an empty `input`.
    pub fn next_logits(&self, input: &[u32], cache: &mut KvCache) -> Result<Tensor<1>> {
        if input.is_empty() {
            return Err(Error::InvalidInput {
                operation: "Llama::next_logits",
                reason: "the input is empty".into(),
            });
        }
        let device = self.embed_tokens.weight.device();
        let ids: Vec<i64> = input.iter().map(|&id| i64::from(id)).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, input.len()]), &device);
        let logits = self.forward_cached(tokens, cache)?;
        let [_, seq, vocab] = logits.dims();
        Ok(logits.slice([0..1, seq - 1..seq]).reshape([vocab]))
    }
}
