//! Integration tests of `mlinfra-loader`: one binary, one module per area.

mod device;
