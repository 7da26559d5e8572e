//! Integration tests of `mlinfra-data`: one binary, one module per area.

mod cache;
mod corpus;
mod dataset;
mod fixtures;
mod manifest;
#[cfg(feature = "s3")]
mod object_store;
mod predicate;
mod tensor_files;
