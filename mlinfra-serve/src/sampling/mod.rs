//! Sampling: from one request's logits to its next token (greedy, temperature, top-k, top-p,
//! min-p, penalties, seeded generators, log-probabilities) and stop-string matching.

mod params;
mod sampler;
mod stop;

pub use params::{MAX_LOGPROBS, SamplingParams};
pub use sampler::{Sample, Sampler};
pub use stop::{StopCheck, StopCriteria};
