//! `sandbox_run`: a command run in the subprocess sandbox ([`crate::sandbox`]), reading the
//! data root, writing only a scratch directory of its own (removed afterwards).

use std::path::{Path, PathBuf};

use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::sandbox::{Sandbox, SandboxOutput};
use crate::{Error, Result};

/// `sandbox_run`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The program (an absolute path, or a name found in `/usr/bin` or `/bin`) and its
    /// arguments, passed as they are (no shell).
    pub command: Vec<String>,
    /// Its standard input.
    #[serde(default)]
    pub stdin: String,
}

/// What `sandbox_run` reports.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunReport {
    /// The command's exit, output and whether it was cut short.
    #[serde(flatten)]
    pub output: SandboxOutput,
    /// The files it left in its scratch directory (which is then removed).
    pub files: Vec<String>,
}

/// Runs `request` in `sandbox`, in a fresh scratch directory under `scratch_root`.
pub(crate) fn run(
    sandbox: &Sandbox,
    scratch_root: &Path,
    request: &RunRequest,
) -> Result<RunReport> {
    let (program, args) = request
        .command
        .split_first()
        .ok_or_else(|| Error::InvalidArgument {
            tool: "sandbox_run",
            reason: "command is empty".into(),
        })?;
    let program = resolve(program)?;
    let scratch = scratch_dir(scratch_root)?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // The command runs as `nobody` (see the sandbox's docs): the directory is its own.
        std::os::unix::fs::chown(scratch.path(), Some(65534), Some(65534)).map_err(|source| {
            Error::JobStore {
                path: scratch.path().to_path_buf(),
                source,
            }
        })?;
    }
    let sandbox = sandbox.clone().allow_write(scratch.path());
    let output = sandbox.run(&program, args, scratch.path(), request.stdin.as_bytes())?;
    let files = file_names(scratch.path());
    Ok(RunReport { output, files })
}

/// A fresh scratch directory under `scratch_root` (created if missing), 0700 so that no
/// concurrent run can look in; removed when dropped.
pub(crate) fn scratch_dir(scratch_root: &Path) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::JobStore { path, source }
    };
    std::fs::create_dir_all(scratch_root).map_err(failed(scratch_root))?;
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(scratch_root)
        .map_err(failed(scratch_root))?;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(failed(scratch.path()))?;
    Ok(scratch)
}

/// The names of the entries in `dir`, sorted.
pub(crate) fn file_names(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// An absolute program path as given, or a bare name found in `/usr/bin` or `/bin`.
fn resolve(program: &str) -> Result<PathBuf> {
    let missing = || Error::InvalidArgument {
        tool: "sandbox_run",
        reason: format!(
            "no program `{program}` (give an absolute path, or a name in /usr/bin or /bin)"
        )
        .into(),
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if path.is_absolute() && path.is_file() {
            Ok(path)
        } else {
            Err(missing())
        };
    }
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
        .ok_or_else(missing)
}
