//! Integration tests of `mlinfra-train`: one binary, one module per area.

mod collective;
mod data_parallel;
mod params;
