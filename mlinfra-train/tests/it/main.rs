//! Integration tests of `mlinfra-train`: one binary, one module per area.

mod checkpoint;
mod collective;
mod data_parallel;
mod fault;
mod fixtures;
mod params;
mod trainer;
