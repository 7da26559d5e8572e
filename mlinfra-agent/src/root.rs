//! The data root: the one directory whose files the tools may read, and the check every
//! path a client names goes through.
//!
//! A client names paths relative to the root (or absolute paths inside it). A path is
//! accepted only when it names an existing file or directory that is inside the root after
//! every symlink is resolved: `..` components are refused before anything touches the file
//! system (they have no legitimate use here and are how traversal starts), the canonical path
//! must have the canonical root as a component-wise prefix (so `/data-evil` is not inside
//! `/data`), and a directory is walked so that a symlink inside it cannot lead out. URIs
//! (`s3://`, `file://`) and globs are refused: the data layer would open them, and neither
//! has a place under a local root.
//!
//! What this does not cover: a file swapped for a symlink between the check and the open. The
//! root is the operator's directory, and no client can plant such a file: the tools' only
//! writes there are `dataset_convert`'s new Parquet files, sandboxed commands only read it,
//! and the server's own state must live outside it ([`DataRoot::refuse_inside`]).

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// Entries a directory walk checks before giving up (a directory that large is not a dataset
/// a tool should open whole).
const MAX_WALKED_ENTRIES: usize = 100_000;

/// The directory the tools read from.
#[derive(Debug, Clone)]
pub struct DataRoot {
    root: PathBuf,
}

impl DataRoot {
    /// `dir`, which must exist and be a directory; kept in canonical form.
    ///
    /// # Errors
    ///
    /// [`Error::DataRoot`] when `dir` cannot be resolved or is not a directory.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let root = dir.canonicalize().map_err(|source| Error::DataRoot {
            path: dir.to_path_buf(),
            reason: source.to_string().into(),
        })?;
        if !root.is_dir() {
            return Err(Error::DataRoot {
                path: root,
                reason: "not a directory".into(),
            });
        }
        if has_pattern(&root) {
            return Err(Error::DataRoot {
                path: root,
                reason:
                    "a path with `*`, `?`, `[` or `://`: the data layer would read it as a pattern"
                        .into(),
            });
        }
        Ok(Self { root })
    }

    /// The root, canonical.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The canonical path of `requested` when it is inside the root.
    ///
    /// # Errors
    ///
    /// [`Error::PathRefused`] naming the path and why: empty, a URI or glob, a `..`
    /// component, missing, or outside the root (directly or through a symlink).
    pub fn resolve(&self, requested: &str) -> Result<PathBuf> {
        let refuse = |reason: &str| Error::PathRefused {
            path: requested.into(),
            reason: reason.into(),
        };
        if requested.is_empty() || requested.contains('\0') {
            return Err(refuse("an empty path or one with a NUL byte"));
        }
        if requested.contains("://") {
            return Err(refuse(
                "URIs are not accepted; name a file under the data root",
            ));
        }
        if requested.contains(['*', '?', '[']) {
            return Err(refuse("globs are not accepted; name a file or directory"));
        }
        let relative = Path::new(requested);
        if relative
            .components()
            .any(|component| component == Component::ParentDir)
        {
            return Err(refuse("`..` is not accepted"));
        }
        let joined = self.root.join(relative);
        let canonical = joined
            .canonicalize()
            .map_err(|_| refuse("no such file or directory under the data root"))?;
        if !canonical.starts_with(&self.root) {
            return Err(refuse("outside the data root"));
        }
        // The data layer opens a path with glob characters as a pattern, which could match
        // names the checks here never saw (a link to `weird[12]/` reaching `weird1`).
        if has_pattern(&canonical) {
            return Err(refuse(
                "it leads to a name with `*`, `?` or `[`, which the data layer would read as a pattern",
            ));
        }
        if canonical.is_dir() {
            self.check_tree(&canonical, requested)?;
        }
        Ok(canonical)
    }

    /// An error when `dir` (created if missing) is the root or inside it: for the server's
    /// own directories, which the tools must not reach.
    ///
    /// # Errors
    ///
    /// [`Error::DataRoot`] naming `what` when it is inside; [`Error::JobStore`] when it cannot
    /// be created.
    pub fn refuse_inside(&self, dir: &Path, what: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::JobStore {
            path: dir.to_path_buf(),
            source,
        })?;
        let canonical = dir.canonicalize().map_err(|source| Error::JobStore {
            path: dir.to_path_buf(),
            source,
        })?;
        if canonical.starts_with(&self.root) {
            return Err(Error::DataRoot {
                path: self.root.clone(),
                reason: format!(
                    "{what} {} is inside it, where the tools could read it",
                    canonical.display()
                )
                .into(),
            });
        }
        Ok(())
    }

    /// The dataset at `requested` (a Parquet file or a directory of them), after
    /// [`DataRoot::resolve`].
    ///
    /// # Errors
    ///
    /// As [`DataRoot::resolve`]; [`Error::PathRefused`] for a path that is not UTF-8 (the
    /// data layer takes paths as strings); [`Error::Data`] when it cannot be read.
    pub fn open_dataset(&self, requested: &str) -> Result<mlinfra_data::Dataset> {
        let path = self.resolve(requested)?;
        let path = path
            .into_os_string()
            .into_string()
            .map_err(|path| Error::PathRefused {
                path: requested.into(),
                reason: format!("{} is not UTF-8", path.to_string_lossy()).into(),
            })?;
        Ok(mlinfra_data::Dataset::open(path)?)
    }

    /// Where a new file named `requested` would go: its directory resolves inside the root
    /// (as [`resolve`](Self::resolve) checks it), its name is a plain one ending in
    /// `extension`, and nothing exists there yet (tools never overwrite).
    ///
    /// # Errors
    ///
    /// [`Error::PathRefused`] naming the path and why.
    pub fn resolve_new(&self, requested: &str, extension: &str) -> Result<PathBuf> {
        let refuse = |reason: &str| Error::PathRefused {
            path: requested.into(),
            reason: reason.into(),
        };
        let path = Path::new(requested);
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .filter(|name| name.ends_with(extension) && name.len() > extension.len())
            .ok_or_else(|| refuse(&format!("a new file's name must end in `{extension}`")))?;
        if name.contains(['*', '?', '[']) || name.starts_with('.') {
            return Err(refuse("a new file's name must not be hidden or a pattern"));
        }
        let parent = match path.parent().and_then(|p| p.to_str()) {
            Some("") | None => self.root.clone(),
            Some(parent) => self.resolve(parent)?,
        };
        if !parent.is_dir() {
            return Err(refuse("its directory is not a directory"));
        }
        let target = parent.join(name);
        if target.symlink_metadata().is_ok() {
            return Err(refuse(
                "a file already exists there; tools do not overwrite",
            ));
        }
        Ok(target)
    }

    /// Every entry under `dir` resolves inside the root.
    fn check_tree(&self, dir: &Path, requested: &str) -> Result<()> {
        let refuse = |reason: String| Error::PathRefused {
            path: requested.into(),
            reason: reason.into(),
        };
        let mut pending = vec![dir.to_path_buf()];
        let mut visited = std::collections::HashSet::from([dir.to_path_buf()]);
        let mut walked = 0usize;
        while let Some(dir) = pending.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|error| refuse(format!("{} cannot be listed: {error}", dir.display())))?;
            for entry in entries {
                walked += 1;
                if walked > MAX_WALKED_ENTRIES {
                    return Err(refuse(format!(
                        "more than {MAX_WALKED_ENTRIES} entries under it"
                    )));
                }
                let path = entry
                    .map_err(|error| {
                        refuse(format!("{} cannot be listed: {error}", dir.display()))
                    })?
                    .path();
                let Ok(target) = path.canonicalize() else {
                    // A dangling symlink could lead outside once its target appears.
                    return Err(refuse(format!(
                        "{} is a dangling link",
                        path.strip_prefix(&self.root).unwrap_or(&path).display()
                    )));
                };
                if !target.starts_with(&self.root) {
                    return Err(refuse(format!(
                        "{} leads outside the data root",
                        path.strip_prefix(&self.root).unwrap_or(&path).display()
                    )));
                }
                // Symlinked directories too (the data layer may list through them), each
                // once: a link cycle ends here.
                if target.is_dir() && visited.insert(target.clone()) {
                    pending.push(target);
                }
            }
        }
        Ok(())
    }
}

/// Whether the data layer would read `path` as a glob or a URI.
fn has_pattern(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.contains(['*', '?', '[']) || text.contains("://")
}
