//! [`Manifest`]: what a dataset is made of, and its fingerprint.
//!
//! A manifest lists a dataset's shards in row order with their location, size, rows, row-group
//! row counts and content hash (BLAKE3 of the file's bytes), plus a fingerprint of the schema.
//! Its own hash is the dataset's **fingerprint**: the identity the loader's epoch plans,
//! checkpoints and lineage records refer to.
//!
//! # What the fingerprint covers
//!
//! The schema, and for each shard in order: its content hash, size, rows and row-group row
//! counts. The size is a function of the content, but covering it means no reader of a
//! manifest (the loader's byte-budgeted cache, a downloader capping what it fetches) can be
//! handed an edited size under an intact fingerprint. Locations are *not* covered: copying or moving a dataset keeps its fingerprint; changing any
//! byte of any shard, the shard order, or the schema changes it. Hashes are written
//! self-describing (`blake3:<64 hex digits>`), as OCI digests are.
//!
//! # Costs
//!
//! [`Dataset::manifest`] reads every byte of every shard once (memory-mapped, hashed on all
//! cores); the result is kept, so later calls and [`Dataset::fingerprint`] are free.
//! [`Manifest::verify`] re-reads only shards whose size still matches.

use std::fmt::Write as _;
use std::path::Path;

use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::storage::FileRef;
use crate::{Error, Result};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 2;

/// The largest manifest [`Manifest::read`] accepts: 256 MiB, about a million shards.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The shards of a dataset, their content hashes, and the fingerprint derived from them; see
/// the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    format: u32,
    fingerprint: String,
    schema_fingerprint: String,
    shards: Vec<ShardEntry>,
}

/// One shard of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// Where the shard was read from, as the dataset resolved it.
    pub uri: String,
    /// File size.
    pub bytes: u64,
    /// Rows, from the footer.
    pub rows: u64,
    /// Rows of each row group, in file order.
    pub row_group_rows: Vec<u64>,
    /// `blake3:` and the hex BLAKE3 hash of the file's bytes.
    pub content_hash: String,
}

/// What [`Manifest::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verification {
    /// Shards whose bytes differ from the manifest (size or content hash).
    pub changed: Vec<ShardChange>,
    /// Shards that no longer exist at their URI.
    pub missing: Vec<String>,
}

/// A shard whose bytes differ from what its manifest recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardChange {
    /// The shard's URI.
    pub uri: String,
    /// Size recorded in the manifest.
    pub expected_bytes: u64,
    /// Size found now.
    pub actual_bytes: u64,
    /// Content hash found now; `None` when the size already differed and the file was not
    /// read.
    pub actual_hash: Option<String>,
}

impl Verification {
    /// True when every shard is present and unchanged.
    pub fn is_intact(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty()
    }
}

impl Manifest {
    /// The dataset's fingerprint: `blake3:` and 64 hex digits.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The fingerprint of the schema alone (names, types, nullability; not metadata).
    pub fn schema_fingerprint(&self) -> &str {
        &self.schema_fingerprint
    }

    /// The shards, in row order.
    pub fn shards(&self) -> &[ShardEntry] {
        &self.shards
    }

    /// Rows in the dataset.
    pub fn num_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// The manifest as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest is plain data")
    }

    /// Parses a manifest and checks that its fingerprint matches its contents.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidManifest`] for JSON that is not a manifest, another format version, or a
    /// fingerprint that does not match the shards (an edited or corrupted manifest).
    pub fn from_json(json: &str) -> Result<Self> {
        Self::parse(json, Path::new("(in memory)"))
    }

    /// Writes the manifest as JSON to `path`, atomically and durably ([`files::write_atomic`](crate::files::write_atomic)).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be written.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        crate::files::write_atomic(path, self.to_json().as_bytes()).map_err(|e| Error::io(path, e))
    }

    /// Reads a manifest written by [`Manifest::write`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read; otherwise as [`Manifest::from_json`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes =
            crate::files::read_regular(path, MAX_MANIFEST_BYTES).map_err(|e| Error::io(path, e))?;
        let json = String::from_utf8(bytes).map_err(|_| Error::InvalidManifest {
            path: path.into(),
            what: "not UTF-8".into(),
        })?;
        Self::parse(&json, path)
    }

    fn parse(json: &str, path: &Path) -> Result<Self> {
        let invalid = |what: String| Error::InvalidManifest {
            path: path.into(),
            what: what.into(),
        };
        let manifest: Manifest =
            serde_json::from_str(json).map_err(|e| invalid(format!("not a manifest: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(invalid(format!(
                "format {} (this build reads format {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        let recomputed = dataset_fingerprint(&manifest.schema_fingerprint, &manifest.shards);
        if recomputed != manifest.fingerprint {
            return Err(invalid(format!(
                "recorded fingerprint {} does not match its shards, which hash to {recomputed}",
                manifest.fingerprint
            )));
        }
        Ok(manifest)
    }

    /// Checks every shard against the manifest: present, same size, same content hash.
    /// Shards are checked in parallel; a shard whose size differs is not read.
    ///
    /// Shards in object stores are reached with the environment's configuration (`AWS_*`,
    /// ...); see [`Manifest::verify_with`] to pass options.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] for a shard that exists but cannot be read (a missing shard is reported in
    /// the [`Verification`], not as an error).
    pub fn verify(&self) -> Result<Verification> {
        self.verify_with(&[] as &[(&str, &str)])
    }

    /// [`Manifest::verify`], with object-store options as
    /// [`DatasetBuilder::with_storage_option`](crate::DatasetBuilder::with_storage_option)
    /// takes them.
    ///
    /// # Errors
    ///
    /// As [`Manifest::verify`]; [`Error::InvalidOption`] for an unknown option.
    pub fn verify_with<K: AsRef<str>, V: AsRef<str>>(
        &self,
        storage_options: &[(K, V)],
    ) -> Result<Verification> {
        let options: Vec<(String, String)> = storage_options
            .iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let outcomes: Vec<Option<ShardOutcome>> = self
            .shards
            .par_iter()
            .map(|entry| verify_shard(entry, &options))
            .collect::<Result<_>>()?;
        let mut verification = Verification::default();
        for outcome in outcomes.into_iter().flatten() {
            match outcome {
                ShardOutcome::Missing(uri) => verification.missing.push(uri),
                ShardOutcome::Changed(change) => verification.changed.push(change),
            }
        }
        Ok(verification)
    }
}

enum ShardOutcome {
    Missing(String),
    Changed(ShardChange),
}

fn verify_shard(entry: &ShardEntry, options: &[(String, String)]) -> Result<Option<ShardOutcome>> {
    let file = FileRef::from_uri(&entry.uri, options)?;
    let Some((actual_bytes, _)) = file.stat()? else {
        return Ok(Some(ShardOutcome::Missing(entry.uri.clone())));
    };
    let change = |actual_hash| {
        Some(ShardOutcome::Changed(ShardChange {
            uri: entry.uri.clone(),
            expected_bytes: entry.bytes,
            actual_bytes,
            actual_hash,
        }))
    };
    if actual_bytes != entry.bytes {
        return Ok(change(None));
    }
    let actual = file.content_hash()?;
    Ok(if actual == entry.content_hash {
        None
    } else {
        change(Some(actual))
    })
}

impl Dataset {
    /// The dataset's [`Manifest`]: hashes every shard on first call (see the
    /// [module costs](crate::manifest#costs)), then returns the kept result.
    ///
    /// The manifest describes the whole dataset whatever this view's projection.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when a shard cannot be read.
    pub fn manifest(&self) -> Result<&Manifest> {
        if let Some(manifest) = self.shared().manifest.get() {
            return Ok(manifest);
        }
        let shards: Vec<ShardEntry> = self
            .shards()
            .par_iter()
            .map(|shard| {
                let file = FileRef::of_shard(shard);
                let (bytes, _) = file
                    .stat()?
                    .ok_or_else(|| Error::io(shard.path(), std::io::ErrorKind::NotFound.into()))?;
                Ok(ShardEntry {
                    uri: shard.path().to_string_lossy().into_owned(),
                    bytes,
                    rows: shard.num_rows(),
                    row_group_rows: shard.row_group_rows().collect(),
                    content_hash: file.content_hash()?,
                })
            })
            .collect::<Result<_>>()?;
        let schema_fingerprint = schema_fingerprint(self.file_schema());
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            fingerprint: dataset_fingerprint(&schema_fingerprint, &shards),
            schema_fingerprint,
            shards,
        };
        // Two threads may race to compute it; both results are equal, either may be kept.
        Ok(self.shared().manifest.get_or_init(|| manifest))
    }

    /// The dataset's fingerprint; see [`Dataset::manifest`] for the cost of the first call.
    ///
    /// # Errors
    ///
    /// As [`Dataset::manifest`].
    pub fn fingerprint(&self) -> Result<&str> {
        Ok(self.manifest()?.fingerprint())
    }
}

/// `blake3:` and the hex BLAKE3 hash of the local file at `path`, read through a memory map
/// and hashed on all cores.
#[cfg(test)]
fn content_hash(path: &Path) -> Result<String> {
    FileRef::Local(path).content_hash()
}

fn digest(hasher: &blake3::Hasher) -> String {
    format!("blake3:{}", hasher.finalize().to_hex())
}

/// The fingerprint of a schema: a hash of its canonical form, one `"name":type:nullability`
/// line per field, nested types spelled out with their children.
/// Schema metadata (pandas' and Spark's JSON blobs) is left out: it does not change the data.
pub fn schema_fingerprint(schema: &Schema) -> String {
    let mut canonical = String::from("mlinfra-schema-v1\n");
    for field in schema.fields() {
        canonical_field(field, &mut canonical);
        canonical.push('\n');
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(canonical.as_bytes());
    digest(&hasher)
}

/// Appends `name:type:nullable` for `field`, spelling nested types out with their children
/// (field metadata left out) so that the form depends on what the data is, not on how the
/// nested `Field` values happen to be printed.
fn canonical_field(field: &Field, out: &mut String) {
    let nullable = if field.is_nullable() {
        "null"
    } else {
        "nonnull"
    };
    let _ = write!(out, "{:?}:", field.name());
    canonical_type(field.data_type(), out);
    let _ = write!(out, ":{nullable}");
}

fn canonical_type(data_type: &DataType, out: &mut String) {
    let children = |tag: &str, fields: &mut dyn Iterator<Item = &Field>, out: &mut String| {
        let _ = write!(out, "{tag}<");
        for (i, child) in fields.enumerate() {
            if i > 0 {
                out.push(',');
            }
            canonical_field(child, out);
        }
        out.push('>');
    };
    match data_type {
        DataType::List(f) => children("List", &mut std::iter::once(f.as_ref()), out),
        DataType::LargeList(f) => children("LargeList", &mut std::iter::once(f.as_ref()), out),
        DataType::ListView(f) => children("ListView", &mut std::iter::once(f.as_ref()), out),
        DataType::LargeListView(f) => {
            children("LargeListView", &mut std::iter::once(f.as_ref()), out)
        }
        DataType::FixedSizeList(f, n) => children(
            &format!("FixedSizeList{n}"),
            &mut std::iter::once(f.as_ref()),
            out,
        ),
        DataType::Struct(fields) => children("Struct", &mut fields.iter().map(|f| f.as_ref()), out),
        DataType::Map(f, sorted) => children(
            &format!("Map{sorted}"),
            &mut std::iter::once(f.as_ref()),
            out,
        ),
        DataType::Union(fields, mode) => children(
            &format!(
                "Union{mode:?}{:?}",
                fields.iter().map(|(id, _)| id).collect::<Vec<_>>()
            ),
            &mut fields.iter().map(|(_, f)| f.as_ref()),
            out,
        ),
        DataType::Dictionary(key, value) => {
            let _ = write!(out, "Dictionary<");
            canonical_type(key, out);
            out.push(',');
            canonical_type(value, out);
            out.push('>');
        }
        DataType::RunEndEncoded(ends, values) => children(
            "RunEndEncoded",
            &mut [ends.as_ref(), values.as_ref()].into_iter(),
            out,
        ),
        // Leaf types print their parameters (precision, unit, time zone) and no fields.
        leaf => {
            let _ = write!(out, "{leaf:?}");
        }
    }
}

/// The dataset fingerprint over the schema fingerprint and, per shard in order, its content
/// hash, size, rows and row-group rows. Locations are left out (see the module docs).
fn dataset_fingerprint(schema_fingerprint: &str, shards: &[ShardEntry]) -> String {
    let mut canonical = format!("mlinfra-dataset-v{MANIFEST_FORMAT}\n{schema_fingerprint}\n");
    for shard in shards {
        let _ = write!(
            canonical,
            "{} {} {} [",
            shard.content_hash, shard.bytes, shard.rows
        );
        for (i, rows) in shard.row_group_rows.iter().enumerate() {
            if i > 0 {
                canonical.push(',');
            }
            let _ = write!(canonical, "{rows}");
        }
        canonical.push_str("]\n");
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(canonical.as_bytes());
    digest(&hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BLAKE3's published test vectors (the empty input, and "abc" from the reference
    /// implementation's README), through the memory-mapped path.
    #[test]
    fn content_hash_matches_published_blake3_vectors() {
        let dir = tempfile::tempdir().unwrap();
        for (bytes, expected) in [
            (
                &b""[..],
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            ),
            (
                &b"abc"[..],
                "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
            ),
        ] {
            let path = dir.path().join("f");
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(content_hash(&path).unwrap(), format!("blake3:{expected}"));
        }
    }
}
