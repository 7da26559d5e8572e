//! The one integration-test binary of mlinfra-serve (one link step for every test).

mod attention;
mod engine;
mod fake_kv;
mod host;
mod kv;
mod runner;
mod sampling;
mod sched;
#[cfg(feature = "server")]
mod server;
mod spec;
