//! Resolving a dataset URI to the list of Parquet files it names.
//!
//! Accepted: a Parquet file, a directory (every `*.parquet` below it, recursively), a glob
//! (`data/train-*.parquet`), each optionally prefixed by `file://`; and object-store URIs
//! (`s3://`, `gs://`, `az://`, `http(s)://`, see [`storage::remote`](crate::storage)) when the
//! crate is built with their features.
//!
//! The file order is the sorted path order, so a dataset's row numbering does not depend on
//! the order a file system lists a directory in.

use std::path::{Path, PathBuf};

use crate::storage::Location;
use crate::{Error, Result};

/// Object-store schemes `object_store` understands.
const OBJECT_STORE_SCHEMES: [&str; 10] = [
    "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https",
];

/// One file a dataset URI names.
#[derive(Debug)]
pub(crate) struct SourceFile {
    /// The local path, or the object's URI.
    pub(crate) path: PathBuf,
    pub(crate) location: Location,
    /// The object's size from the listing; local files are measured when opened.
    pub(crate) listed_len: u64,
}

/// The Parquet files `uri` names, in sorted order; never empty. `options` configure object
/// stores.
pub(crate) fn resolve(uri: &str, options: &[(String, String)]) -> Result<Vec<SourceFile>> {
    let local = match uri.split_once("://") {
        None => uri,
        Some(("file", path)) => path,
        Some((scheme, _)) if OBJECT_STORE_SCHEMES.contains(&scheme) => {
            return resolve_remote(uri, scheme, options);
        }
        Some(_) => {
            return Err(Error::InvalidUri {
                uri: uri.into(),
                reason: "unknown scheme",
            });
        }
    };
    if local.is_empty() {
        return Err(Error::InvalidUri {
            uri: uri.into(),
            reason: "empty path",
        });
    }
    let mut files = if local.contains(['*', '?', '[']) {
        glob_files(uri, local)?
    } else {
        let path = Path::new(local);
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_parquet_files(path, &mut files)?;
            files
        } else {
            vec![path.to_path_buf()]
        }
    };
    if files.is_empty() {
        return Err(Error::NoFiles { uri: uri.into() });
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|path| SourceFile {
            path,
            location: Location::Local,
            listed_len: 0,
        })
        .collect())
}

#[cfg(feature = "remote")]
fn resolve_remote(
    uri: &str,
    _scheme: &str,
    options: &[(String, String)],
) -> Result<Vec<SourceFile>> {
    Ok(crate::storage::remote::resolve(uri, options)?
        .into_iter()
        .map(|listed| SourceFile {
            path: listed.uri,
            location: Location::Remote(listed.object),
            listed_len: listed.len,
        })
        .collect())
}

#[cfg(not(feature = "remote"))]
fn resolve_remote(
    _uri: &str,
    scheme: &str,
    _options: &[(String, String)],
) -> Result<Vec<SourceFile>> {
    Err(Error::UnsupportedScheme {
        scheme: scheme.into(),
    })
}

fn glob_files(uri: &str, pattern: &str) -> Result<Vec<PathBuf>> {
    let paths = glob::glob(pattern).map_err(|_| Error::InvalidUri {
        uri: uri.into(),
        reason: "malformed glob pattern",
    })?;
    let mut files = Vec::new();
    for entry in paths {
        let path = entry.map_err(|e| {
            let path = e.path().to_path_buf();
            Error::io(&path, e.into())
        })?;
        if path.is_file() {
            files.push(path);
        }
    }
    Ok(files)
}

/// Every `*.parquet` file under `dir`. Hidden and underscore-prefixed entries are skipped, as
/// Spark, Hive and pyarrow do (`_SUCCESS`, `_metadata`, `.part.crc`).
fn collect_parquet_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let file_type = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if file_type.is_dir() {
            collect_parquet_files(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "parquet") {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(feature = "remote"))]
    fn object_store_schemes_are_refused_by_name_without_the_features() {
        for (uri, scheme) in [
            ("s3://bucket/x.parquet", "s3"),
            ("https://host/x.parquet", "https"),
        ] {
            match resolve(uri, &[]) {
                Err(Error::UnsupportedScheme { scheme: got }) => assert_eq!(&*got, scheme),
                other => panic!("{uri}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_scheme_and_empty_path_are_invalid() {
        assert!(matches!(
            resolve("ftp://x", &[]),
            Err(Error::InvalidUri { .. })
        ));
        assert!(matches!(resolve("", &[]), Err(Error::InvalidUri { .. })));
        assert!(matches!(
            resolve("file://", &[]),
            Err(Error::InvalidUri { .. })
        ));
    }

    #[test]
    fn missing_path_is_io_not_found() {
        match resolve("/definitely/not/here.parquet", &[]) {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
    }
}
