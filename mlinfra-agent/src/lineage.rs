//! Versioning and lineage: every tool, prompt, model, adapter and dataset the server has
//! seen, keyed by the hash of its content, and which definitions of tools a user approved.
//!
//! The registry is one JSON file, `<state>/lineage.json`, replaced atomically on each change.
//! An entry holds the current hash of a named thing, every hash it has had (its versions),
//! and, for tools, the hash a user last approved. A tool whose definition (name, description,
//! schemas, annotations) changed after its approval is *flagged*: a destructive call asks the
//! user again, saying so, and the yes approves the new definition.
//!
//! Hashes: tools and prompts, BLAKE3 of their MCP definition's JSON; models and adapters,
//! BLAKE3 of their files' bytes; datasets, mlinfra-data's content fingerprint. Training jobs
//! record the hashes they ran with (see [`crate::jobs::JobRecord::lineage`]), so a run can be
//! tied to the exact data, tool and model definitions behind it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::jobs::now_ms;
use crate::{Error, Result};

/// What kind of thing an entry is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An MCP tool's definition.
    Tool,
    /// An MCP prompt's definition.
    Prompt,
    /// A model file.
    Model,
    /// A LoRA adapter's files.
    Adapter,
    /// A dataset (its content fingerprint).
    Dataset,
}

/// One named thing and its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Entry {
    /// Its kind.
    pub kind: Kind,
    /// Its name (a tool's or prompt's name; a file's or dataset's path).
    pub name: String,
    /// Its content hash now.
    pub hash: String,
    /// Every hash it has had, oldest first (the last is `hash`).
    pub versions: Vec<String>,
    /// The definition a user last approved (tools), if any.
    pub approved: Option<String>,
    /// When it was first seen, Unix milliseconds.
    pub first_seen_unix_ms: u64,
    /// When its hash last changed, Unix milliseconds.
    pub changed_unix_ms: u64,
}

impl Entry {
    /// Approved once, and changed since: must be approved again.
    pub fn changed_since_approval(&self) -> bool {
        self.approved
            .as_ref()
            .is_some_and(|approved| *approved != self.hash)
    }
}

/// The registry, in memory and on disk.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
}

fn key(kind: Kind, name: &str) -> String {
    format!("{kind:?}/{name}")
}

impl Registry {
    /// The registry at `path` (empty when the file does not exist yet).
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`] when the file cannot be read or is not a registry: refused, not
    /// silently emptied (approvals would be lost).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let entries = match mlinfra_data::files::read_regular(&path, 64 << 20) {
            Ok(bytes) => serde_json::from_slice::<Vec<Entry>>(&bytes)
                .map_err(|error| Error::JobStore {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
                })?
                .into_iter()
                .map(|entry| (key(entry.kind, &entry.name), entry))
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(Error::JobStore { path, source }),
        };
        Ok(Self {
            path,
            entries: Mutex::new(entries),
        })
    }

    /// Records that `kind`/`name` has content `hash` now (a new version when it differs) and
    /// returns its entry.
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`] when the registry cannot be written.
    pub fn observe(&self, kind: Kind, name: &str, hash: &str) -> Result<Entry> {
        self.update(kind, name, hash, |entry, now| new_version(entry, hash, now))
    }

    /// Records that a user approved `kind`/`name` as it is now (`hash`).
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`] when the registry cannot be written.
    pub fn approve(&self, kind: Kind, name: &str, hash: &str) -> Result<Entry> {
        self.update(kind, name, hash, |entry, now| {
            let versioned = new_version(entry, hash, now);
            let approved = entry.approved.as_deref() != Some(hash);
            entry.approved = Some(hash.to_owned());
            versioned || approved
        })
    }

    /// The entry of `kind`/`name`, if any.
    pub fn get(&self, kind: Kind, name: &str) -> Option<Entry> {
        self.entries.lock().ok()?.get(&key(kind, name)).cloned()
    }

    /// Every entry, by kind then name.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .map(|entries| entries.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies `change` to the entry of `kind`/`name` (created at `hash` when missing), and
    /// writes the registry when anything changed.
    fn update(
        &self,
        kind: Kind,
        name: &str,
        hash: &str,
        change: impl FnOnce(&mut Entry, u64) -> bool,
    ) -> Result<Entry> {
        let mut entries = self.entries.lock().map_err(|_| Error::JobStore {
            path: self.path.clone(),
            source: std::io::Error::other("the registry's lock is poisoned"),
        })?;
        let now = now_ms();
        let key = key(kind, name);
        let mut changed = false;
        // Changed on a copy, kept in memory only once it is on disk: a failed write leaves
        // the registry as the file says it is.
        let mut entry = entries.get(&key).cloned().unwrap_or_else(|| {
            changed = true;
            Entry {
                kind,
                name: name.to_owned(),
                hash: hash.to_owned(),
                versions: vec![hash.to_owned()],
                approved: None,
                first_seen_unix_ms: now,
                changed_unix_ms: now,
            }
        });
        changed |= change(&mut entry, now);
        if changed {
            let mut all: BTreeMap<&String, &Entry> = entries.iter().collect();
            all.insert(&key, &entry);
            let all: Vec<&Entry> = all.into_values().collect();
            let json = serde_json::to_vec_pretty(&all).map_err(|error| Error::JobStore {
                path: self.path.clone(),
                source: std::io::Error::other(error),
            })?;
            mlinfra_data::files::write_atomic(&self.path, &json).map_err(|source| {
                Error::JobStore {
                    path: self.path.clone(),
                    source,
                }
            })?;
            entries.insert(key, entry.clone());
        }
        Ok(entry)
    }
}

/// Makes `hash` the entry's current version; whether it was a new one.
fn new_version(entry: &mut Entry, hash: &str, now: u64) -> bool {
    if entry.hash == hash {
        return false;
    }
    entry.hash = hash.to_owned();
    entry.versions.push(hash.to_owned());
    entry.changed_unix_ms = now;
    true
}

/// `blake3:` and the hex hash of `value`'s JSON (a definition's content hash).
pub fn definition_hash(value: &impl Serialize) -> String {
    crate::trace::arguments_hash(value)
}

/// `blake3:` and the hex hash of the bytes of `path` (a file), or of every file under it (a
/// directory, in name order, each file's relative path hashed with its bytes).
///
/// # Errors
///
/// [`Error::JobStore`] when a file cannot be read.
pub fn content_hash(path: &Path) -> Result<String> {
    let failed = |path: &Path, source| Error::JobStore {
        path: path.to_path_buf(),
        source,
    };
    let mut hasher = blake3::Hasher::new();
    let mut files = Vec::new();
    if path.is_dir() {
        collect_files(path, path, &mut files).map_err(|e| failed(path, e))?;
        files.sort();
    } else {
        files.push(PathBuf::new());
    }
    for relative in files {
        let file = if relative.as_os_str().is_empty() {
            path.to_path_buf()
        } else {
            path.join(&relative)
        };
        let name = relative.to_string_lossy();
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        std::fs::File::open(&file)
            .and_then(|mut bytes| std::io::copy(&mut bytes, &mut hasher))
            .map_err(|e| failed(&file, e))?;
    }
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(base, &entry.path(), out)?;
        } else if kind.is_file() {
            out.push(
                entry
                    .path()
                    .strip_prefix(base)
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Kind, Registry};

    #[test]
    fn a_change_that_cannot_be_written_is_not_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let registry = Registry::open(state.join("lineage.json")).unwrap();
        registry.observe(Kind::Tool, "a", "blake3:1").unwrap();

        // The directory gone and a file in its place: no write can succeed, even as root.
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::write(&state, "not a directory").unwrap();
        assert!(registry.observe(Kind::Tool, "b", "blake3:2").is_err());
        assert!(registry.observe(Kind::Tool, "a", "blake3:3").is_err());
        assert!(
            registry.get(Kind::Tool, "b").is_none(),
            "b was never written"
        );
        assert_eq!(registry.get(Kind::Tool, "a").unwrap().hash, "blake3:1");

        // Writable again: the same changes land, in memory and on disk.
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        registry.observe(Kind::Tool, "a", "blake3:3").unwrap();
        let reopened = Registry::open(state.join("lineage.json")).unwrap();
        assert_eq!(
            reopened.get(Kind::Tool, "a").unwrap().versions,
            ["blake3:1", "blake3:3"]
        );
        assert!(reopened.get(Kind::Tool, "b").is_none());
    }
}
