//! Integration tests of `mlinfra-data`: one binary, one module per area.

mod corpus;
mod dataset;
mod fixtures;
mod manifest;
