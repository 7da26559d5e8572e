//! Test helpers shared by the mlinfra crates. Dev-only: no library depends on this crate
//! outside `[dev-dependencies]`, and it is never published.
//!
//! # External corpora
//!
//! Some tests read corpora that are too large or not ours to commit (Apache's
//! `parquet-testing` and `arrow-testing`). Their root comes from the [`TESTDATA_VAR`]
//! environment variable, which `.ci/run` sets. What a missing corpus means depends on where the
//! test runs:
//!
//! - under `CI=true` it **fails** the test: CI must exercise every corpus test, and a silently
//!   skipped test is how coverage quietly disappears;
//! - elsewhere it prints one skip line naming the variable and the test returns early, so a
//!   newcomer's `cargo test` passes without the corpora.
//!
//! ```
//! use mlinfra_test_utils::require_testdata;
//!
//! fn reads_a_corpus_file() {
//!     let path = require_testdata!("parquet-testing/data/alltypes_plain.parquet");
//!     assert!(path.is_file());
//! }
//! # reads_a_corpus_file(); // skips (or, under CI=true, checks) depending on the environment
//! ```
//!
//! Downloaded model files ([`model`]) follow the same rule, from [`MODELS_VAR`].
//!
//! # Seeded generators
//!
//! [`rng::SplitMix64`]: one small, seeded, dependency-free generator for test inputs, so a
//! failing case can be replayed from its seed.
//!
//! # Reference implementations
//!
//! [`reference`](mod@reference): naive f64 twins of numeric operations, the oracles for fast paths.

#![warn(missing_docs)]

pub mod hostile;
pub mod http;
pub mod reference;
pub mod rng;
pub mod stores;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The environment variable holding the root directory of the external test corpora.
pub const TESTDATA_VAR: &str = "MLINFRA_TESTDATA";

/// What to do about one corpus path: the outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corpus {
    /// The path exists; the test reads it.
    Found(PathBuf),
    /// The corpus is missing outside CI; the test prints this line and returns.
    Skip(String),
    /// The corpus is missing under `CI=true`; the test fails with this message.
    Fail(String),
}

/// Decides what a test does about `relative` (a path under the corpus root), given the value of
/// [`TESTDATA_VAR`] (`root`) and whether this is a CI run.
///
/// This is the pure core of [`testdata`]: it reads no environment, so it can be tested.
pub fn resolve(root: Option<&OsStr>, ci: bool, relative: &str) -> Corpus {
    let missing = match root {
        None => format!("{TESTDATA_VAR} is not set"),
        Some(root) if root.is_empty() => format!("{TESTDATA_VAR} is empty"),
        Some(root) => {
            let path = Path::new(root).join(relative);
            if path.exists() {
                return Corpus::Found(path);
            }
            format!(
                "{} does not exist ({TESTDATA_VAR}={})",
                path.display(),
                Path::new(root).display()
            )
        }
    };
    if ci {
        Corpus::Fail(format!(
            "test corpus `{relative}` is required under CI=true: {missing}; \
             .ci/run sets {TESTDATA_VAR} to ../shared/testdata"
        ))
    } else {
        Corpus::Skip(format!(
            "skipped: test corpus `{relative}` unavailable: {missing}"
        ))
    }
}

/// Whether this process runs under CI (`CI` set to `true` or `1`, as CI services set it).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Resolves `relative` under the corpus root from the environment.
///
/// Returns `Some(path)` when the corpus is there, prints a skip line and returns `None` when it
/// is missing outside CI.
///
/// # Panics
///
/// When the corpus is missing under `CI=true`: that is the test failing, on purpose.
pub fn testdata(relative: &str) -> Option<PathBuf> {
    let root = std::env::var_os(TESTDATA_VAR);
    match resolve(root.as_deref(), is_ci(), relative) {
        Corpus::Found(path) => Some(path),
        Corpus::Skip(line) => {
            eprintln!("{line}");
            None
        }
        Corpus::Fail(message) => panic!("{message}"),
    }
}

/// The environment variable naming the directory of downloaded model files; default
/// `$HOME/.cache/mlinfra/models`, where `scripts/fetch-model` puts them.
pub const MODELS_VAR: &str = "MLINFRA_MODELS";

/// The path of a downloaded model file (`scripts/fetch-model` fetches them, sha256-checked).
///
/// Returns `None` after printing a skip line when the file is missing outside CI.
///
/// # Panics
///
/// When the file is missing under `CI=true` (`scripts/check` fetches the models first).
pub fn model(file_name: &str) -> Option<PathBuf> {
    let path = models_dir()?.join(file_name);
    if path.is_file() {
        return Some(path);
    }
    let missing = format!(
        "model file {} is missing; scripts/fetch-model downloads it",
        path.display()
    );
    if is_ci() {
        panic!("{missing} (required under CI=true)");
    }
    eprintln!("skipped: {missing}");
    None
}

/// The model cache `scripts/fetch-model` fills: `$MLINFRA_MODELS`, else
/// `~/.cache/mlinfra/models`; `None` with neither variable set.
pub fn models_dir() -> Option<PathBuf> {
    std::env::var_os(MODELS_VAR)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/mlinfra/models"))
        })
}

/// Writes `line` to the process's stderr, past the test harness's output capture (which only
/// intercepts the `print!` family), so CI logs show it even when the test passes: which driver
/// ran, which corpus files were read.
pub fn log_line(line: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    // A closed stderr is no reason to fail a test.
    let _ = stderr
        .write_all(line.as_bytes())
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Resolves a corpus path with [`testdata`], or returns from the enclosing test (after printing
/// the skip line) when it is missing outside CI.
#[macro_export]
macro_rules! require_testdata {
    ($relative:expr) => {
        match $crate::testdata($relative) {
            Some(path) => path,
            None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_crate_dir() -> &'static OsStr {
        OsStr::new(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn present_path_is_found_in_and_out_of_ci() {
        for ci in [false, true] {
            let found = resolve(Some(this_crate_dir()), ci, "src/lib.rs");
            assert_eq!(
                found,
                Corpus::Found(Path::new(this_crate_dir()).join("src/lib.rs"))
            );
        }
    }

    #[test]
    fn unset_root_skips_outside_ci_and_names_the_variable() {
        let Corpus::Skip(line) = resolve(None, false, "parquet-testing/data") else {
            panic!("an unset root outside CI must skip");
        };
        assert!(line.starts_with("skipped:"), "{line}");
        assert!(line.contains(TESTDATA_VAR), "{line}");
        assert!(line.contains("parquet-testing/data"), "{line}");
    }

    #[test]
    fn missing_corpus_fails_under_ci() {
        for root in [None, Some(OsStr::new("")), Some(this_crate_dir())] {
            let outcome = resolve(root, true, "no-such-corpus/file.parquet");
            let Corpus::Fail(message) = outcome else {
                panic!("a missing corpus under CI must fail, got {outcome:?}");
            };
            assert!(message.contains("no-such-corpus/file.parquet"), "{message}");
            assert!(message.contains(TESTDATA_VAR), "{message}");
        }
    }

    #[test]
    fn missing_file_under_a_real_root_names_the_full_path() {
        let Corpus::Skip(line) = resolve(Some(this_crate_dir()), false, "absent.bin") else {
            panic!("a missing file outside CI must skip");
        };
        assert!(
            line.contains(
                &Path::new(this_crate_dir())
                    .join("absent.bin")
                    .display()
                    .to_string()
            )
        );
    }

    /// The wiring itself: `.ci/run` must point [`TESTDATA_VAR`] at the shared corpora, so under
    /// CI this fails unless both are there and hold files.
    #[test]
    fn shared_corpora_are_reachable() {
        for corpus in ["parquet-testing/data", "arrow-testing/data"] {
            let Some(dir) = testdata(corpus) else {
                continue;
            };
            let entries = std::fs::read_dir(&dir).map(Iterator::count).unwrap_or(0);
            assert!(entries > 0, "{} is empty", dir.display());
        }
    }
}
