//! The one integration-test binary of the examples package: the contracts examples promise.

mod data_inspect;
mod gpu_bench;
mod llama_generate;
mod mcp_conformance;
mod mcp_python;
mod mcp_server;
mod serve_openai;
mod serve_sim;

/// An example's binary, built by `cargo test` beside this test binary. (`cargo test --test it`
/// builds no examples, and would run whatever was built last: run these with
/// `cargo test -p mlinfra-examples`, as `scripts/check` does with `--workspace`.)
fn example(name: &str) -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    let debug_dir = exe.parent().unwrap().parent().unwrap();
    let example = debug_dir.join("examples").join(name);
    assert!(example.is_file(), "{} was not built", example.display());
    std::process::Command::new(example)
}
