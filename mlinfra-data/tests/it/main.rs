//! Integration tests of `mlinfra-data`: one binary, one module per area.

mod cache;
mod chat;
mod corpus;
mod dataset;
mod fixtures;
mod hostile;
mod manifest;
#[cfg(all(feature = "s3", feature = "gcs", feature = "azure", feature = "http"))]
mod object_store;
mod predicate;
mod tensor_files;
mod tokenizer;
