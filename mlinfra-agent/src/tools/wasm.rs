//! `wasm_run`: a WebAssembly guest run in the WebAssembly sandbox ([`crate::wasm`]), reading
//! the data root at `/data` and a scratch directory of its own at `/scratch` (removed
//! afterwards).

use std::path::Path;

use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::tools::sandbox::{file_names, scratch_dir};
use crate::wasm::{WasmOutput, WasmSandbox};
use crate::{DataRoot, Error, Result};

/// `wasm_run`'s arguments: the module as a file under the data root or as WebAssembly text.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmRunRequest {
    /// A module under the data root (`.wasm` binary or `.wat` text). Give this or `wat`.
    #[serde(default)]
    pub path: Option<String>,
    /// The module as WebAssembly text. Give this or `path`.
    #[serde(default)]
    pub wat: Option<String>,
    /// The exported function to call: no parameters, an `i32` exit code or nothing.
    #[serde(default = "default_entry")]
    pub entry: String,
    /// The bytes `input_read` returns.
    #[serde(default)]
    pub input: String,
}

fn default_entry() -> String {
    "run".into()
}

/// What `wasm_run` reports.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WasmRunReport {
    /// How the guest ended, its output and what it used.
    #[serde(flatten)]
    pub output: WasmOutput,
    /// The files it left in its scratch directory (which is then removed).
    pub files: Vec<String>,
}

/// Runs `request` in `sandbox`, in a fresh scratch directory under `scratch_root`.
pub(crate) fn run(
    sandbox: &WasmSandbox,
    root: &DataRoot,
    scratch_root: &Path,
    request: &WasmRunRequest,
) -> Result<WasmRunReport> {
    let refuse = |reason: &str| Error::InvalidArgument {
        tool: "wasm_run",
        reason: reason.into(),
    };
    let module = match (&request.path, &request.wat) {
        (Some(path), None) => {
            let path = root.resolve(path)?;
            let size = path.metadata().map(|meta| meta.len()).unwrap_or(u64::MAX);
            if size > sandbox.limits().module_bytes as u64 {
                return Err(refuse(&format!(
                    "the module is {size} bytes, over the limit of {}",
                    sandbox.limits().module_bytes
                )));
            }
            std::fs::read(&path).map_err(|error| refuse(&format!("cannot read it: {error}")))?
        }
        (None, Some(text)) => text.clone().into_bytes(),
        _ => return Err(refuse("give exactly one of `path` and `wat`")),
    };
    let scratch = scratch_dir(scratch_root)?;
    let output = sandbox.run(
        &module,
        &request.entry,
        request.input.as_bytes(),
        Some(scratch.path()),
    )?;
    Ok(WasmRunReport {
        output,
        files: file_names(scratch.path()),
    })
}
