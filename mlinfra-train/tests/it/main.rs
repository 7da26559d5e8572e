//! Integration tests of `mlinfra-train`: one binary, one module per area.

mod checkpoint;
mod collective;
mod data_parallel;
// Fault points exist in debug builds (and with the `fault-injection` feature).
#[cfg(any(debug_assertions, feature = "fault-injection"))]
mod fault;
mod fixtures;
mod llama;
#[cfg(feature = "mpi")]
mod mpi;
mod params;
mod peft;
mod peft_interop;
mod post_training;
mod trainer;
