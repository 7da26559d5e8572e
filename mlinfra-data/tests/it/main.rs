//! Integration tests of `mlinfra-data`: one binary, one module per area.

mod cache;
mod corpus;
mod dataset;
mod fixtures;
mod manifest;
mod predicate;
mod tensor_files;
