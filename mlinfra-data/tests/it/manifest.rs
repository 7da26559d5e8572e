//! Manifests and fingerprints: what changes them, what does not, and `verify`.

use std::path::Path;

use mlinfra_data::manifest::schema_fingerprint;
use mlinfra_data::{Dataset, Error, Manifest};

use crate::fixtures::{Layout, schema, write_dataset};

fn small() -> Layout {
    Layout {
        rows_per_file: vec![700, 300],
        row_group_rows: 256,
        page_rows: 64,
    }
}

fn open(dir: &Path) -> Dataset {
    Dataset::open(dir.to_str().unwrap()).unwrap()
}

/// Copies every file of `from` into a new directory.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

#[test]
fn manifest_lists_shards_with_sizes_rows_and_content_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_dataset(dir.path(), &small());
    let dataset = open(dir.path());
    let manifest = dataset.manifest().unwrap();

    assert_eq!(manifest.num_rows(), 1000);
    assert_eq!(manifest.shards().len(), 2);
    for (entry, path) in manifest.shards().iter().zip(&paths) {
        assert_eq!(entry.uri, path.to_str().unwrap());
        assert_eq!(entry.bytes, std::fs::metadata(path).unwrap().len());
        // The hash is BLAKE3 of the bytes: recomputed here with the reference implementation's
        // one-shot API, independently of the memory-mapped parallel path the library uses.
        let expected = blake3::hash(&std::fs::read(path).unwrap());
        assert_eq!(entry.content_hash, format!("blake3:{}", expected.to_hex()));
    }
    assert_eq!(manifest.shards()[0].row_group_rows, [256, 256, 188]);
    assert_eq!(manifest.shards()[1].row_group_rows, [256, 44]);
    assert!(manifest.fingerprint().starts_with("blake3:"));
    assert_eq!(manifest.fingerprint().len(), "blake3:".len() + 64);
    // A projection is a view of the same dataset: same manifest.
    let projected = dataset.project(&["label"]).unwrap();
    assert_eq!(projected.fingerprint().unwrap(), manifest.fingerprint());
}

#[test]
fn fingerprint_follows_content_not_location() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &small());
    let original = open(dir.path()).fingerprint().unwrap().to_owned();

    // Same bytes elsewhere: same fingerprint.
    let copy = copy_dir(dir.path());
    assert_eq!(open(copy.path()).fingerprint().unwrap(), original);

    // The same rows encoded with another page size: other bytes, so another fingerprint. It
    // identifies bytes, not values: re-encoding a dataset makes it a new one.
    let reencoded = copy_dir(dir.path());
    crate::fixtures::write_file(
        &reencoded.path().join("part-001.parquet"),
        700..1000,
        256,
        32,
    );
    assert_ne!(open(reencoded.path()).fingerprint().unwrap(), original);

    // Same files, other order: different fingerprint (row numbering changed).
    let swapped = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("part-000.parquet"),
        swapped.path().join("b.parquet"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("part-001.parquet"),
        swapped.path().join("a.parquet"),
    )
    .unwrap();
    assert_ne!(open(swapped.path()).fingerprint().unwrap(), original);
}

#[test]
fn schema_fingerprint_is_pinned() {
    // Pinned: a change here changes every dataset fingerprint users have recorded, so it must
    // be a deliberate format bump (MANIFEST_FORMAT), not a side effect of an arrow upgrade.
    // The canonical form, spelled out by hand: one `"name":type:nullability` line per field.
    let canonical = "mlinfra-schema-v1\n\
                     \"id\":UInt64:nonnull\n\
                     \"emb\":FixedSizeList4<\"item\":Float32:nonnull>:nonnull\n\
                     \"label\":Int32:nonnull\n\
                     \"name\":Utf8:null\n";
    let expected = format!("blake3:{}", blake3::hash(canonical.as_bytes()).to_hex());
    assert_eq!(schema_fingerprint(&schema()), expected);
    assert_eq!(
        expected,
        "blake3:4c74a2bdea46e380d8c076085d70f81af1792262e93227cc8d95bceb60e86584"
    );
    // Metadata does not count; names, types and nullability do.
    let with_metadata = schema()
        .as_ref()
        .clone()
        .with_metadata(std::collections::HashMap::from([(
            "pandas".to_owned(),
            "{}".to_owned(),
        )]));
    assert_eq!(
        schema_fingerprint(&with_metadata),
        schema_fingerprint(&schema())
    );
    let mut fields: Vec<_> = schema().fields().iter().cloned().collect();
    fields[2] = std::sync::Arc::new(fields[2].as_ref().clone().with_nullable(true));
    assert_ne!(
        schema_fingerprint(&arrow::datatypes::Schema::new(fields)),
        schema_fingerprint(&schema())
    );
}

#[test]
fn verify_reports_changed_truncated_and_missing_shards() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_dataset(
        dir.path(),
        &Layout {
            rows_per_file: vec![100, 100, 100],
            row_group_rows: 50,
            page_rows: 10,
        },
    );
    let manifest = open(dir.path()).manifest().unwrap().clone();
    assert!(manifest.verify().unwrap().is_intact());

    // Same size, one byte flipped: found by the hash.
    let mut bytes = std::fs::read(&paths[0]).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&paths[0], &bytes).unwrap();
    // Truncated: found by the size, without reading.
    let bytes = std::fs::read(&paths[1]).unwrap();
    std::fs::write(&paths[1], &bytes[..bytes.len() - 1]).unwrap();
    std::fs::remove_file(&paths[2]).unwrap();

    let verification = manifest.verify().unwrap();
    assert!(!verification.is_intact());
    assert_eq!(verification.missing, [paths[2].to_str().unwrap()]);
    assert_eq!(verification.changed.len(), 2);
    let flipped = &verification.changed[0];
    assert_eq!(flipped.uri, paths[0].to_str().unwrap());
    assert_eq!(flipped.actual_bytes, flipped.expected_bytes);
    assert_ne!(
        flipped.actual_hash.as_deref(),
        Some(manifest.shards()[0].content_hash.as_str())
    );
    let truncated = &verification.changed[1];
    assert_eq!(truncated.actual_bytes + 1, truncated.expected_bytes);
    assert_eq!(truncated.actual_hash, None);
}

#[test]
fn manifest_round_trips_and_refuses_tampering() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &small());
    let manifest = open(dir.path()).manifest().unwrap().clone();

    let path = dir.path().join("manifest.json");
    manifest.write(&path).unwrap();
    assert_eq!(Manifest::read(&path).unwrap(), manifest);

    let json = manifest.to_json();
    let hash = &manifest.shards()[0].content_hash;
    let tampered = [
        // A shard hash edited: the recorded fingerprint no longer matches.
        json.replacen(&hash[7..15], "00000000", 1),
        // Row counts edited.
        json.replacen("\"rows\": 700", "\"rows\": 701", 1),
        // A shard's size edited (issue 21, defect 8: the streaming cache budgets by it).
        json.replacen(
            &format!("\"bytes\": {}", manifest.shards()[0].bytes),
            "\"bytes\": 1",
            1,
        ),
        // Another format version.
        json.replacen("\"format\": 2", "\"format\": 3", 1),
        // Not a manifest.
        "{\"shards\": 3}".to_owned(),
        json[..json.len() / 2].to_owned(),
    ];
    for (case, text) in tampered.iter().enumerate() {
        assert_ne!(text, &json, "case {case} must change the text");
        match Manifest::from_json(text) {
            Err(Error::InvalidManifest { what, .. }) => {
                mlinfra_test_utils::log_line(&format!("manifest tamper case {case}: {what}"))
            }
            other => panic!("case {case}: expected InvalidManifest, got {other:?}"),
        }
    }
    std::fs::write(&path, &tampered[0]).unwrap();
    match Manifest::read(&path) {
        Err(Error::InvalidManifest { path: at, .. }) => assert_eq!(&*at, path.as_path()),
        other => panic!("{other:?}"),
    }
}

/// `fetch_file` copies a shard byte for byte and returns the hash its manifest records; a
/// missing source is a typed error.
#[test]
fn fetch_file_copies_and_hashes_as_the_manifest_does() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &small());
    let dataset = open(dir.path());
    let manifest = dataset.manifest().unwrap();
    let out = tempfile::tempdir().unwrap();
    for (i, shard) in manifest.shards().iter().enumerate() {
        let copy = out.path().join(format!("copy-{i}"));
        let fetch = |dest: &Path, max_bytes| {
            mlinfra_data::storage::fetch_file(&shard.uri, &[] as &[(&str, &str)], dest, max_bytes)
        };
        let hash = fetch(&copy, shard.bytes).unwrap();
        assert_eq!(hash, shard.content_hash);
        let original = std::fs::read(dataset.shards()[i].path()).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), original);
        // Issue 21, defect 8: a download stops at the size it was told, instead of taking
        // whatever the source holds.
        let capped = out.path().join(format!("capped-{i}"));
        match fetch(&capped, shard.bytes - 1) {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge, "{source}")
            }
            other => panic!("{other:?}"),
        }
        assert!(std::fs::metadata(&capped).unwrap().len() < shard.bytes);
        // The destination is created, never opened through something already there.
        let planted = out.path().join(format!("planted-{i}"));
        let target = out.path().join(format!("target-{i}"));
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(fetch(&planted, shard.bytes).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
    let missing = dir.path().join("no-such.parquet");
    let error = mlinfra_data::storage::fetch_file(
        missing.to_str().unwrap(),
        &[] as &[(&str, &str)],
        &out.path().join("x"),
        u64::MAX,
    )
    .unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
}
