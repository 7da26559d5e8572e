//! The IPC cache: contents equal the Parquet source, arrays point into the mapping, stale and
//! damaged caches are never served.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arrow::array::{Array, ArrayData, AsArray};
use arrow::datatypes::UInt64Type;
use mlinfra_data::{Dataset, Error, IpcCache, IpcFile};
use mlinfra_test_utils::rng::SplitMix64;

use crate::fixtures::{Layout, assert_rows, write_dataset};

fn layout() -> Layout {
    Layout {
        rows_per_file: vec![1500, 700, 1],
        row_group_rows: 400,
        page_rows: 100,
    }
}

fn open(dir: &Path) -> Dataset {
    Dataset::open(dir.to_str().unwrap()).unwrap()
}

/// A source dataset of `layout()`, and an empty directory to put caches in.
fn source_and_root() -> (tempfile::TempDir, tempfile::TempDir) {
    let source = tempfile::tempdir().unwrap();
    write_dataset(source.path(), &layout());
    (source, tempfile::tempdir().unwrap())
}

/// A cache of every column in several files of several batches each.
fn small_cache(source: &Path, cache_dir: &Path) -> IpcCache {
    open(source)
        .ipc_cache(cache_dir)
        .with_batch_rows(128)
        .with_max_file_bytes(20_000)
        .create()
        .unwrap()
}

#[test]
fn cache_take_equals_the_source_rows_in_request_order() {
    let (source, root) = source_and_root();
    let cache = small_cache(source.path(), &root.path().join("cache"));

    assert_eq!(cache.num_rows(), 2201);
    assert!(cache.files().len() > 2, "{} files", cache.files().len());
    assert_eq!(
        cache.source_fingerprint(),
        open(source.path()).fingerprint().unwrap()
    );

    let mut rng = SplitMix64::new(11);
    let mut indices: Vec<u64> = (0..300).map(|_| rng.next_u64() % 2201).collect();
    indices.extend([0, 2200, 127, 128, 1499, 1500, indices[0]]); // edges, and a repeat
    assert_rows(&cache.take(&indices).unwrap(), &indices);
    assert_eq!(cache.take(&[]).unwrap().num_rows(), 0);
    assert!(matches!(
        cache.take(&[5, 2201]),
        Err(Error::RowOutOfRange {
            index: 2201,
            rows: 2201
        })
    ));
}

#[test]
fn batches_cover_every_row_in_order_and_keep_the_projection_order() {
    let (source, root) = source_and_root();
    let cache = open(source.path())
        .project(&["label", "id"])
        .unwrap()
        .ipc_cache(root.path().join("c"))
        .with_batch_rows(500)
        .create()
        .unwrap();
    let names: Vec<_> = cache.schema().fields().iter().map(|f| f.name()).collect();
    assert_eq!(names, ["label", "id"]);

    let mut next = 0u64;
    for batch in cache.batches() {
        let batch = batch.unwrap();
        assert!(batch.num_rows() <= 500);
        let ids: Vec<u64> = (next..next + batch.num_rows() as u64).collect();
        assert_rows(&batch, &ids);
        next += batch.num_rows() as u64;
    }
    assert_eq!(next, 2201);
}

/// Every buffer of `data` and its children, as (start address, length).
fn buffer_spans(data: &ArrayData, spans: &mut Vec<(usize, usize)>) {
    for buffer in data.buffers() {
        spans.push((buffer.as_ptr() as usize, buffer.len()));
    }
    if let Some(nulls) = data.nulls() {
        let buffer = nulls.buffer();
        spans.push((buffer.as_ptr() as usize, buffer.len()));
    }
    for child in data.child_data() {
        buffer_spans(child, spans);
    }
}

#[test]
fn cached_arrays_point_into_the_memory_mapping() {
    let (source, root) = source_and_root();
    let cache = small_cache(source.path(), &root.path().join("cache"));

    let mut checked = 0;
    for file in cache.files() {
        let mapped = file.mapped_bytes();
        let (start, end) = (
            mapped.as_ptr() as usize,
            mapped.as_ptr() as usize + mapped.len(),
        );
        for batch in 0..file.num_batches() {
            let batch = file.batch(batch).unwrap();
            for column in batch.columns() {
                let mut spans = Vec::new();
                buffer_spans(&column.to_data(), &mut spans);
                for (address, len) in spans {
                    assert!(
                        address >= start && address + len <= end,
                        "buffer at {address:#x}+{len} outside the mapping {start:#x}..{end:#x}"
                    );
                    // Written 64-byte aligned, so read without realignment copies.
                    assert_eq!((address - start) % 64, 0, "unaligned buffer");
                    checked += 1;
                }
            }
        }
    }
    // id, emb (list + values), label, name (offsets, values, validity) per batch.
    assert!(checked > 50, "only {checked} buffers checked");
}

#[test]
fn open_or_create_reuses_a_matching_cache_and_rebuilds_a_stale_one() {
    let (source, root) = source_and_root();
    let dir = root.path().join("cache");
    let inode = |dir: &Path| {
        std::fs::metadata(dir.join("part-00000.arrow"))
            .unwrap()
            .ino()
    };

    let first = open(source.path())
        .ipc_cache(&dir)
        .open_or_create()
        .unwrap();
    let built = inode(&dir);
    drop(first);
    let again = open(source.path())
        .ipc_cache(&dir)
        .open_or_create()
        .unwrap();
    assert_eq!(
        inode(&dir),
        built,
        "a matching cache is reused, not rebuilt"
    );
    assert_eq!(again.num_rows(), 2201);

    // A source file touched (new mtime, same bytes): the cheap check fails, the fingerprint
    // still matches, and the cache is reused.
    let part = source.path().join("part-000.parquet");
    let file = std::fs::File::options().append(true).open(&part).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(file);
    open(source.path())
        .ipc_cache(&dir)
        .open_or_create()
        .unwrap();
    assert_eq!(
        inode(&dir),
        built,
        "a touched source with the same bytes is not rebuilt"
    );

    // Other columns: rebuilt.
    let projected = open(source.path()).project(&["id"]).unwrap();
    let cache = projected.ipc_cache(&dir).open_or_create().unwrap();
    assert_eq!(cache.schema().fields().len(), 1);

    // Changed source (one more shard): rebuilt with the new rows.
    crate::fixtures::write_file(&source.path().join("part-999.parquet"), 2201..2300, 50, 10);
    let cache = open(source.path())
        .project(&["id"])
        .unwrap()
        .ipc_cache(&dir)
        .open_or_create()
        .unwrap();
    assert_eq!(cache.num_rows(), 2300);
    let ids = cache.take(&[2299]).unwrap();
    assert_eq!(ids.column(0).as_primitive::<UInt64Type>().value(0), 2299);
    // No staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["cache"]);
}

#[test]
fn create_refuses_a_directory_that_is_not_a_cache() {
    let source = tempfile::tempdir().unwrap();
    write_dataset(source.path(), &layout());
    let precious = tempfile::tempdir().unwrap();
    std::fs::write(precious.path().join("thesis.tex"), b"years of work").unwrap();
    match open(source.path()).ipc_cache(precious.path()).create() {
        Err(Error::CacheDirInUse { path }) => assert_eq!(&*path, precious.path()),
        other => panic!("{other:?}"),
    }
    assert!(precious.path().join("thesis.tex").exists());
}

#[test]
fn damaged_caches_are_typed_errors() {
    let (source, root) = source_and_root();
    let dir = root.path().join("cache");
    small_cache(source.path(), &dir);
    let index_path = dir.join(mlinfra_data::cache::INDEX_FILE);
    let index = std::fs::read_to_string(&index_path).unwrap();

    let cases: [(&str, String); 3] = [
        ("rows", index.replacen("\"rows\": ", "\"rows\": 1", 1)),
        (
            "escape",
            index.replacen("part-00000.arrow", "../part-00000.arrow", 1),
        ),
        ("garbage", "[1, 2".to_owned()),
    ];
    for (case, text) in cases {
        std::fs::write(&index_path, text).unwrap();
        let error = IpcCache::open(&dir).unwrap_err();
        mlinfra_test_utils::log_line(&format!("damaged cache ({case}): {error}"));
        assert!(
            matches!(
                error,
                Error::CorruptMetadata { .. } | Error::InvalidManifest { .. }
            ),
            "{case}: {error:?}"
        );
    }
    std::fs::write(&index_path, &index).unwrap();
    IpcCache::open(&dir).unwrap();

    // A truncated part file.
    let part = dir.join("part-00001.arrow");
    let bytes = std::fs::read(&part).unwrap();
    std::fs::write(&part, &bytes[..bytes.len() / 2]).unwrap();
    let error = IpcCache::open(&dir).unwrap_err();
    assert!(matches!(error, Error::CorruptMetadata { .. }), "{error:?}");
}

/// Opens `bytes` as an IPC file and decodes every batch; returns how far it got.
fn read_all(path: &Path) -> Result<u64, Error> {
    let file = IpcFile::open(path)?;
    let mut rows = 0;
    for batch in 0..file.num_batches() {
        rows += file.batch(batch)?.num_rows() as u64;
    }
    Ok(rows)
}

#[test]
fn truncated_and_corrupted_ipc_files_never_panic() {
    let source = tempfile::tempdir().unwrap();
    write_dataset(
        source.path(),
        &Layout {
            rows_per_file: vec![40],
            row_group_rows: 40,
            page_rows: 10,
        },
    );
    let root = tempfile::tempdir().unwrap();
    let cache = open(source.path())
        .ipc_cache(root.path().join("c"))
        .with_batch_rows(16)
        .create()
        .unwrap();
    let original = std::fs::read(cache.files()[0].path()).unwrap();
    let scratch = root.path().join("scratch.arrow");

    // Every strict prefix is refused (the trailer is gone or points elsewhere).
    for len in 0..original.len() {
        std::fs::write(&scratch, &original[..len]).unwrap();
        assert!(
            read_all(&scratch).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    // Single flipped bits. Reads refuse what breaks the structure and never panic; a flip in
    // the values decodes (to other values), and `verify`, against the hash the index recorded
    // at build time, catches every one of them (issue 21: "any non-panic result" was accepted,
    // wrong values included).
    assert!(cache.verify().is_ok());
    let part = cache.files()[0].path().to_path_buf();
    drop(cache);
    let mut rng = SplitMix64::new(3);
    let (mut refused, mut caught) = (0, 0);
    for _ in 0..600 {
        let mut bytes = original.clone();
        let at = (rng.next_u64() % bytes.len() as u64) as usize;
        bytes[at] ^= 1 << (rng.next_u64() % 8);
        std::fs::write(&scratch, &bytes).unwrap();
        let read = read_all(&scratch);
        refused += usize::from(read.is_err());
        // The same flip inside the cache.
        std::fs::write(&part, &bytes).unwrap();
        let verified = IpcCache::open(root.path().join("c")).and_then(|cache| cache.verify());
        assert!(
            verified.is_err(),
            "a flip at byte {at} passed verify (reads: {read:?})"
        );
        caught += 1;
    }
    std::fs::write(&part, &original).unwrap();
    IpcCache::open(root.path().join("c"))
        .unwrap()
        .verify()
        .unwrap();
    mlinfra_test_utils::log_line(&format!(
        "ipc bit flips: {refused} of 600 refused by reads, {caught} of 600 caught by verify"
    ));
    assert!(refused > 0);
}

/// The cheap staleness check trusts size and modification time, as documented: a file rewritten
/// in place with both restored is not re-hashed. Pinned so the contract (and its cost: no read
/// of the source on a warm open) stays what the docs say.
#[test]
fn open_or_create_trusts_unchanged_size_and_mtime_without_hashing() {
    let (source, root) = source_and_root();
    let dir = root.path().join("cache");
    let built = open(source.path())
        .ipc_cache(&dir)
        .open_or_create()
        .unwrap();
    let fingerprint = built.source_fingerprint().to_owned();
    drop(built);

    let part = source.path().join("part-001.parquet");
    let mtime = std::fs::metadata(&part).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&part, &bytes).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&part)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let dataset = open(source.path());
    let cache = dataset.ipc_cache(&dir).open_or_create().unwrap();
    // Served from the stamps: had the source been hashed, the new fingerprint would have made
    // `open_or_create` rebuild, and the cache would record it.
    assert_eq!(cache.source_fingerprint(), fingerprint);
    // The manifest, which always hashes, sees the change.
    assert_ne!(dataset.fingerprint().unwrap(), fingerprint);
}
