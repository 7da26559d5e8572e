//! The one integration-test binary of the examples package: the contracts examples promise.

mod serve_sim;
