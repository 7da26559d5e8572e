//! The data root refuses every way out: `..`, absolute paths elsewhere, symlinks (to files
//! and directories, and inside a dataset directory), prefix tricks, URIs and globs.

use std::fs;
use std::os::unix::fs::symlink;

use mlinfra_agent::{DataRoot, Error};

#[test]
fn paths_inside_the_root_resolve_and_every_way_out_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let root_dir = base.path().join("data");
    // A sibling whose name extends the root's: a string prefix check would let it in.
    let evil = base.path().join("data-evil");
    fs::create_dir_all(root_dir.join("set/part")).unwrap();
    fs::create_dir_all(&evil).unwrap();
    fs::write(root_dir.join("set/part/a.parquet"), b"x").unwrap();
    fs::write(evil.join("b.parquet"), b"x").unwrap();
    fs::write(outside.path().join("secret.parquet"), b"x").unwrap();
    symlink(
        outside.path().join("secret.parquet"),
        root_dir.join("link.parquet"),
    )
    .unwrap();
    symlink(outside.path(), root_dir.join("linked-dir")).unwrap();
    fs::create_dir(root_dir.join("tainted")).unwrap();
    symlink(
        outside.path().join("secret.parquet"),
        root_dir.join("tainted/c.parquet"),
    )
    .unwrap();
    // A link to a file inside the root is fine.
    symlink(
        root_dir.join("set/part/a.parquet"),
        root_dir.join("alias.parquet"),
    )
    .unwrap();

    let root = DataRoot::new(&root_dir).unwrap();
    let canonical = root_dir.canonicalize().unwrap();
    assert_eq!(
        root.resolve("set/part/a.parquet").unwrap(),
        canonical.join("set/part/a.parquet")
    );
    assert_eq!(root.resolve("set").unwrap(), canonical.join("set"));
    assert_eq!(
        root.resolve("alias.parquet").unwrap(),
        canonical.join("set/part/a.parquet")
    );
    let absolute = canonical.join("set/part/a.parquet");
    assert_eq!(root.resolve(absolute.to_str().unwrap()).unwrap(), absolute);

    let evil_absolute = evil.join("b.parquet");
    let secret = outside.path().join("secret.parquet");
    for path in [
        "../data-evil/b.parquet",
        "set/../../data-evil/b.parquet",
        evil_absolute.to_str().unwrap(),
        secret.to_str().unwrap(),
        "/etc/passwd",
        "link.parquet",
        "linked-dir/secret.parquet",
        "linked-dir",
        "tainted",
        ".",
        "",
        "missing.parquet",
        "file:///etc/passwd",
        "s3://bucket/key.parquet",
        "set/*.parquet",
        "set/part/a.parquet\0",
    ] {
        let result = root.resolve(path);
        // "." is the root itself, which holds the tainted directory and the links.
        assert!(
            matches!(result, Err(Error::PathRefused { .. })),
            "{path:?}: {result:?}"
        );
    }
}

#[test]
fn a_root_that_is_not_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"x").unwrap();
    for path in [file, dir.path().join("missing")] {
        assert!(matches!(DataRoot::new(&path), Err(Error::DataRoot { .. })));
    }
}

/// The data layer reads a path with glob characters as a pattern: a root named like one is
/// refused, and so is a link inside the root to a directory named like one.
#[test]
fn names_the_data_layer_would_read_as_patterns_are_refused() {
    let base = tempfile::tempdir().unwrap();
    let patterned = base.path().join("d[1]");
    fs::create_dir(&patterned).unwrap();
    assert!(matches!(
        DataRoot::new(&patterned),
        Err(Error::DataRoot { .. })
    ));
    let root_dir = base.path().join("data");
    fs::create_dir_all(root_dir.join("weird[12]")).unwrap();
    fs::create_dir_all(root_dir.join("weird1")).unwrap();
    symlink(root_dir.join("weird[12]"), root_dir.join("plain")).unwrap();
    let root = DataRoot::new(&root_dir).unwrap();
    for path in ["plain", "weird1"] {
        let result = root.resolve(path);
        let ok = path == "weird1";
        assert_eq!(result.is_ok(), ok, "{path}: {result:?}");
    }
    // A dangling link inside a dataset directory is refused (its target may appear later).
    fs::create_dir(root_dir.join("set")).unwrap();
    symlink("/tmp/not-yet.parquet", root_dir.join("set/x.parquet")).unwrap();
    assert!(matches!(
        root.resolve("set"),
        Err(Error::PathRefused { .. })
    ));
}
