//! Integration tests of `mlinfra-loader`: one binary, one module per area.

mod device;
mod fixtures;
mod mixture;
mod pipeline;
mod restart;
mod stream;
