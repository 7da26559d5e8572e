//! The one integration-test binary of the examples package: the contracts examples promise.

mod data_inspect;
mod llama_generate;
mod serve_openai;
mod serve_sim;
