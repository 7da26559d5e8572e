//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
//! scripts/mcp-conformance) against `mcp_conformance_server`, for the 2025-11-25 and
//! 2026-07-28 requirement sets: every required scenario passes but those the baseline
//! (scripts/mcp-conformance-baseline) excuses with a reason, and a baselined one that passes
//! fails the run too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::example;

/// The repository's root (the examples package sits one level down).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether the suite is installed: `MLINFRA_MCP_CONFORMANCE` (scripts/check sets it from
/// `scripts/mcp-conformance --install`), else the script's default place. A skip line outside
/// CI when missing; a failure under `CI=true`.
fn suite_installed() -> bool {
    let suite = std::env::var_os("MLINFRA_MCP_CONFORMANCE")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(Path::new(&home).join(
                ".cache/mlinfra/node/node_modules/@modelcontextprotocol/conformance/dist/index.js",
            ))
        })
        .filter(|path| path.is_file());
    if suite.is_none() {
        let missing =
            "the MCP conformance suite is missing; scripts/mcp-conformance --install installs it";
        assert!(
            !mlinfra_test_utils::is_ci(),
            "{missing} (required under CI=true)"
        );
        eprintln!("skipped: {missing}");
    }
    suite.is_some()
}

#[test]
fn the_official_conformance_suite_passes_for_both_revisions() {
    if !suite_installed() {
        return;
    }
    let mut server = example("mcp_conformance_server")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "mcp_conformance_server: MCP endpoint http://127.0.0.1:PORT/mcp"
    let mut status = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut status)
        .unwrap();
    let url = status
        .trim()
        .rsplit(' ')
        .next()
        .filter(|url| url.starts_with("http://"))
        .unwrap_or_else(|| panic!("no endpoint in {status:?}"))
        .to_owned();
    let run = std::process::Command::new(repository().join("scripts/mcp-conformance"))
        .arg(&url)
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    // The suite's per-scenario lines and totals, for the log.
    for line in stdout
        .lines()
        .filter(|l| l.starts_with("==") || l.contains("passed"))
    {
        eprintln!("{line}");
    }
    assert!(
        run.status.success(),
        "conformance failures beyond the baseline:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
