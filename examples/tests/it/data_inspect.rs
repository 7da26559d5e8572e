//! `data_inspect`'s contract: one JSON object on stdout; `--scan` decodes every page and
//! reports `scanned_rows`; any bad input is exit status 2 with the typed error on stderr.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// 1,000 rows of `x`, uncompressed and plain, so that bytes in the middle are page values.
fn write(path: &Path) {
    let values: Vec<i64> = (0..1000).collect();
    let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(values)) as ArrayRef)])
        .unwrap();
    let properties = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(Compression::UNCOMPRESSED)
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(properties),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Issue 21 ("Also"): `--scan` decodes the pages, so a file whose footer is sound but whose
/// page is not is refused with it and accepted without it.
#[test]
fn scan_decodes_every_page_and_reports_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    write(&good);
    let output = crate::example("data_inspect")
        .arg("--scan")
        .arg(&good)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["rows"], 1000);
    assert_eq!(summary["scanned_rows"], 1000);
    let footer_only = crate::example("data_inspect").arg(&good).output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&footer_only.stdout).unwrap();
    assert!(summary.get("scanned_rows").is_none(), "{summary}");

    // The data page's header, just after the 4-byte magic, garbled: the footer still parses.
    let mut bytes = std::fs::read(&good).unwrap();
    for byte in &mut bytes[4..24] {
        *byte = 0xff;
    }
    let bad = dir.path().join("bad-page.parquet");
    std::fs::write(&bad, bytes).unwrap();
    assert!(
        crate::example("data_inspect")
            .arg(&bad)
            .output()
            .unwrap()
            .status
            .success()
    );
    let scanned = crate::example("data_inspect")
        .arg("--scan")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(scanned.status.code(), Some(2), "{scanned:?}");
    let stderr = String::from_utf8_lossy(&scanned.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(scanned.stdout.is_empty());

    for args in [&["--scan", "--scan"][..], &["--bogus", "x"][..], &[][..]] {
        let usage = crate::example("data_inspect").args(args).output().unwrap();
        assert_eq!(usage.status.code(), Some(2), "{args:?}");
    }
}

/// Issue 21: "nothing prints 'panicked at' on any input tried". arrow-rs panics on some fuzzed
/// files; mlinfra-data contains the panic and returns `DecoderPanic`, and the panic report
/// the default hook would print is not printed either. Every file of the arrow-testing fuzz
/// corpus, scanned: a typed result, exit 0 or 2, and no panic report on stderr.
#[test]
fn no_fuzzed_file_makes_it_print_a_panic() {
    let root = mlinfra_test_utils::require_testdata!("arrow-testing/data/parquet/fuzzing");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus looks incomplete: {}",
        files.len()
    );
    let mut contained = 0;
    for file in &files {
        let output = crate::example("data_inspect")
            .arg("--scan")
            .arg(file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            matches!(output.status.code(), Some(0 | 2)),
            "{}: {:?}",
            file.display(),
            output.status
        );
        assert!(
            !stderr.contains("panicked at"),
            "{}: {stderr}",
            file.display()
        );
        contained += usize::from(stderr.contains("decoder panicked"));
    }
    // The corpus holds files that make arrow-rs panic: the check above had some to see.
    assert!(
        contained > 0,
        "no contained decoder panic among {} files",
        files.len()
    );
}
