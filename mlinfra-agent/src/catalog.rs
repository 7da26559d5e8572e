//! The datasets under the data root as MCP resources: which there are, their URIs
//! (`mlinfra://datasets/{+path}`), and completion of a partly typed path.
//!
//! A dataset is a `.parquet` file, or a directory holding `.parquet` files directly (a sharded
//! dataset, read as one; it is not searched further). Other directories are searched to
//! [`MAX_DEPTH`]; hidden entries and symbolic links are skipped (a link could lead out of the
//! root, and [`DataRoot::resolve`] would refuse it anyway). The search stops after
//! [`MAX_VISITED`] directory entries, so a huge tree costs a bounded listing, not a hang.

use std::path::Path;

use crate::root::DataRoot;

/// The scheme and prefix of a dataset's resource URI; the rest is its path under the root,
/// percent-encoded except for `/`.
pub const DATASET_URI_PREFIX: &str = "mlinfra://datasets/";
/// The resource template matching every dataset (RFC 6570: `{+path}` keeps the slashes).
pub const DATASET_URI_TEMPLATE: &str = "mlinfra://datasets/{+path}";
/// How deep below the root the search for datasets goes.
pub const MAX_DEPTH: usize = 4;
/// The most directory entries one listing looks at.
pub const MAX_VISITED: usize = 10_000;

/// The datasets under `root`, as paths relative to it (`/`-separated), sorted.
pub(crate) fn datasets(root: &DataRoot) -> Vec<String> {
    let mut found = Vec::new();
    let mut visited = 0;
    search(root.path(), "", 0, &mut visited, &mut found);
    found.sort();
    found
}

fn search(dir: &Path, prefix: &str, depth: usize, visited: &mut usize, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        *visited += 1;
        if *visited > MAX_VISITED {
            return;
        }
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: no tool argument could name it
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if name.starts_with('.') || kind.is_symlink() {
            continue;
        }
        // A name the data layer would read as a glob is refused by `DataRoot::resolve`: not
        // listed as something the tools could open.
        if name.contains(['*', '?', '[']) {
            continue;
        }
        let path = format!("{prefix}{name}");
        if kind.is_file() && name.ends_with(".parquet") {
            found.push(path);
        } else if kind.is_dir() {
            subdirs.push((entry.path(), path));
        }
    }
    for (dir, path) in subdirs {
        if *visited > MAX_VISITED {
            return;
        }
        if holds_parquet(&dir, visited) {
            found.push(path);
        } else if depth + 1 < MAX_DEPTH {
            search(&dir, &format!("{path}/"), depth + 1, visited, found);
        }
    }
}

/// Whether `dir` holds a `.parquet` file directly; the entries looked at count toward
/// [`MAX_VISITED`].
fn holds_parquet(dir: &Path, visited: &mut usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        *visited += 1;
        if *visited > MAX_VISITED {
            return false;
        }
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        if is_file
            && entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.ends_with(".parquet"))
        {
            return true;
        }
    }
    false
}

/// A dataset's resource URI.
pub fn dataset_uri(path: &str) -> String {
    let mut uri = String::with_capacity(DATASET_URI_PREFIX.len() + path.len());
    uri.push_str(DATASET_URI_PREFIX);
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            uri.push(byte as char);
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri
}

/// The dataset path a resource URI names; `None` for another scheme or a malformed escape.
pub fn dataset_path(uri: &str) -> Option<String> {
    let encoded = uri.strip_prefix(DATASET_URI_PREFIX)?.as_bytes();
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' {
            let hex = std::str::from_utf8(encoded.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(encoded[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes)
        .ok()
        .filter(|path| !path.is_empty())
}

/// The datasets whose path starts with `typed`, at most `limit` of them, and how many matched
/// in all.
pub(crate) fn complete(root: &DataRoot, typed: &str, limit: usize) -> (Vec<String>, usize) {
    let matching: Vec<String> = datasets(root)
        .into_iter()
        .filter(|path| path.starts_with(typed))
        .collect();
    let total = matching.len();
    (matching.into_iter().take(limit).collect(), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_escape_what_a_uri_cannot_hold() {
        for path in [
            "a.parquet",
            "dir/b c.parquet",
            "x%y/ü.parquet",
            "we?ird#/[1].parquet",
        ] {
            let uri = dataset_uri(path);
            let encoded = &uri[DATASET_URI_PREFIX.len()..];
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b)),
                "{uri}"
            );
            assert_eq!(dataset_path(&uri).as_deref(), Some(path), "{uri}");
        }
        assert_eq!(
            dataset_uri("dir/b c.parquet"),
            "mlinfra://datasets/dir/b%20c.parquet"
        );
        for bad in [
            "file:///etc/passwd",
            "mlinfra://datasets/",
            "mlinfra://datasets/a%2",
            "mlinfra://datasets/a%zz",
            "mlinfra://datasets/%FF",
        ] {
            assert_eq!(dataset_path(bad), None, "{bad}");
        }
    }
}
