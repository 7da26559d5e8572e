//! `data_inspect`'s contract: one JSON object on stdout; `--scan` decodes every page and
//! reports `scanned_rows`; any bad input is exit status 2 with the typed error on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// The example's binary, built by `cargo test` beside this test binary.
fn data_inspect() -> Command {
    let exe = std::env::current_exe().unwrap();
    let debug_dir: PathBuf = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let example = debug_dir.join("examples").join("data_inspect");
    assert!(example.is_file(), "{} was not built", example.display());
    Command::new(example)
}

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
    let output = data_inspect().arg("--scan").arg(&good).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["rows"], 1000);
    assert_eq!(summary["scanned_rows"], 1000);
    let footer_only = data_inspect().arg(&good).output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&footer_only.stdout).unwrap();
    assert!(summary.get("scanned_rows").is_none(), "{summary}");

    // The data page's header, just after the 4-byte magic, garbled: the footer still parses.
    let mut bytes = std::fs::read(&good).unwrap();
    for byte in &mut bytes[4..24] {
        *byte = 0xff;
    }
    let bad = dir.path().join("bad-page.parquet");
    std::fs::write(&bad, bytes).unwrap();
    assert!(data_inspect().arg(&bad).output().unwrap().status.success());
    let scanned = data_inspect().arg("--scan").arg(&bad).output().unwrap();
    assert_eq!(scanned.status.code(), Some(2), "{scanned:?}");
    let stderr = String::from_utf8_lossy(&scanned.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(scanned.stdout.is_empty());

    for args in [&["--scan", "--scan"][..], &["--bogus", "x"][..], &[][..]] {
        let usage = data_inspect().args(args).output().unwrap();
        assert_eq!(usage.status.code(), Some(2), "{args:?}");
    }
}
