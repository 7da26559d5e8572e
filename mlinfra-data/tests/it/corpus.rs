//! The Apache `parquet-testing` corpus: every file opens and scans, or yields a typed error;
//! every file in `bad_data` yields a typed error. Never a panic, a hang or a huge allocation.

use std::path::{Path, PathBuf};

use mlinfra_data::{Dataset, Error};
use mlinfra_test_utils::{log_line, require_testdata};

/// What reading one corpus file came to.
#[derive(Debug)]
enum Outcome {
    /// Opened and scanned in full; the rows scanned match the footer.
    Read { rows: u64 },
    /// A typed error, at open or during the scan.
    Refused(Error),
}

fn read_whole(path: &Path) -> Outcome {
    let dataset = match Dataset::open(path.to_str().unwrap()) {
        Ok(dataset) => dataset,
        Err(error) => return Outcome::Refused(error),
    };
    let mut rows = 0u64;
    for batch in dataset.scan().with_batch_size(1024).build() {
        match batch {
            Ok(batch) => rows += batch.num_rows() as u64,
            Err(error) => return Outcome::Refused(error),
        }
    }
    assert_eq!(
        rows,
        dataset.num_rows(),
        "{}: scanned rows differ from the footer",
        path.display()
    );
    Outcome::Read { rows }
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_ending(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// One line per file on stderr, past the harness's capture: the CI log shows what was read.
fn report(name: &str, outcome: &Outcome) {
    let line = match outcome {
        Outcome::Read { rows } => format!("read {rows} rows"),
        Outcome::Refused(error) => format!("refused: {error}"),
    };
    log_line(&format!("corpus {name}: {line}"));
}

/// Reads every file under `root` whose name ends in `suffix` (at least `min_files` of them),
/// logs each outcome, and hands it to `check` with the file's path relative to `root`.
fn read_corpus(root: &Path, suffix: &str, min_files: usize, mut check: impl FnMut(&str, Outcome)) {
    let files = files_ending(root, suffix);
    assert!(
        files.len() >= min_files,
        "corpus looks incomplete: {} files",
        files.len()
    );
    for path in &files {
        let outcome = read_whole(path);
        let name = path.strip_prefix(root).unwrap().display().to_string();
        report(&name, &outcome);
        check(&name, outcome);
    }
}

/// Asserts a typed refusal that is not a contained decoder panic.
fn assert_refused(name: &str, outcome: &Outcome) {
    let refused =
        matches!(outcome, Outcome::Refused(e) if !matches!(e, Error::DecoderPanic { .. }));
    assert!(refused, "{name}: {outcome:?}");
}

#[test]
fn every_data_file_reads_or_is_refused_with_a_typed_error() {
    let root = require_testdata!("parquet-testing/data");
    let mut panics = Vec::new();
    read_corpus(&root, ".parquet", 50, |name, outcome| {
        if let Outcome::Refused(Error::DecoderPanic { .. }) = outcome {
            panics.push(name.to_owned());
        }
    });
    assert!(panics.is_empty(), "decoders panicked on: {panics:?}");
}

/// `bad_data` holds files that crashed some reader. All but one are malformed and refused.
///
/// `ARROW-GH-43605.parquet` is the exception: it crashed the Go reader on RLE runs of bit width
/// 0, which the format allows (every value is 0), and the fix upstream
/// (apache/parquet-testing#57, apache/arrow#43607) made readers decode it. Reading it whole,
/// with the footer's row count, is the correct outcome.
#[test]
fn every_bad_data_file_is_refused() {
    const VALID_REGRESSION_FILE: &str = "ARROW-GH-43605.parquet";
    let root = require_testdata!("parquet-testing/bad_data");
    read_corpus(&root, ".parquet", 5, |name, outcome| {
        if name == VALID_REGRESSION_FILE {
            assert!(
                matches!(outcome, Outcome::Read { rows: 21186 }),
                "{name}: {outcome:?}"
            );
        } else {
            assert_refused(name, &outcome);
        }
    });
}

/// Files of the `data` corpus whose outcome is a specific refusal, with the reason.
#[test]
fn known_refusals_say_why() {
    let root = require_testdata!("parquet-testing/data");
    // 4 KB of brotli that inflates to 2 GiB of string pages: the decode cap refuses it from the
    // footer's sizes, before allocating.
    let outcome = read_whole(&root.join("large_string_map.brotli.parquet"));
    let refused_by_cap = matches!(
        outcome,
        Outcome::Refused(Error::DecodeLimit {
            bytes: 2_147_483_827,
            ..
        })
    );
    assert!(refused_by_cap, "{outcome:?}");
    // A repeated group without LIST annotation: arrow-rs 60 decodes 0 of the footer's 6 rows.
    // Refused rather than delivered empty; when arrow-rs reads it, this test says so.
    let outcome = read_whole(&root.join("repeated_no_annotation.parquet"));
    let refused_short = matches!(
        outcome,
        Outcome::Refused(Error::RowCountMismatch {
            expected: 6,
            decoded: 0,
            ..
        })
    );
    assert!(refused_short, "{outcome:?}");
}

/// The encrypted files of the corpus (AES-GCM and AES-CTR, encrypted and plaintext footers).
/// Without their keys they are refused with a typed error, never decoded as garbage. Reading
/// them with the documented keys is still to do (parquet's `encryption` feature).
#[test]
fn encrypted_files_without_keys_are_refused() {
    let root = require_testdata!("parquet-testing/data");
    read_corpus(&root, ".parquet.encrypted", 10, |name, outcome| {
        assert_refused(name, &outcome)
    });
}

/// The Parquet files OSS-Fuzz found crashing a reader (arrow-testing `data/parquet/fuzzing`):
/// each is refused with a typed error.
///
/// Where arrow-rs 60 itself panics, the panic is contained and reported as
/// [`Error::DecoderPanic`]: still a typed error, the caller survives. Those files are listed
/// here so that a new panic (or a fixed one) shows up as a test failure.
#[test]
fn parquet_fuzz_corpus_is_refused() {
    const ARROW_RS_PANICS: &[&str] = &[
        // byte_stream_split_decoder.rs:67: "index out of bounds: the len is 5 but the index is 5".
        "clusterfuzz-testcase-minimized-parquet-arrow-fuzz-5670235492581376",
        // delta_byte_array.rs:95: "attempt to add with overflow" (an overflow check: tests
        // build with them on; a release build wraps instead, and then refuses the page).
        "clusterfuzz-testcase-minimized-parquet-arrow-fuzz-6696667471020032",
    ];
    let root = require_testdata!("arrow-testing/data/parquet/fuzzing");
    let mut read = 0;
    let mut panics = Vec::new();
    read_corpus(&root, "", 50, |name, outcome| match outcome {
        Outcome::Read { .. } => read += 1,
        Outcome::Refused(Error::DecoderPanic { .. }) => panics.push(name.to_owned()),
        refused => assert_refused(name, &refused),
    });
    log_line(&format!(
        "parquet fuzz corpus: {read} files read whole, {} contained arrow-rs panics",
        panics.len()
    ));
    assert_eq!(panics, ARROW_RS_PANICS);
}

/// Opens `path` as a memory-mapped IPC file and decodes every batch.
fn read_ipc(path: &Path) -> Result<Vec<arrow::array::RecordBatch>, Error> {
    let file = mlinfra_data::IpcFile::open(path)?;
    (0..file.num_batches())
        .map(|i| file.batch(i).cloned())
        .collect()
}

/// The IPC files OSS-Fuzz found crashing a reader (arrow-testing `data/arrow-ipc-file`): the
/// zero-copy reader refuses each with a typed error and never panics.
#[test]
fn ipc_fuzz_corpus_is_refused_without_panics() {
    let root = require_testdata!("arrow-testing/data/arrow-ipc-file");
    let files = files_ending(&root, "");
    assert!(files.len() >= 20, "corpus looks incomplete");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match read_ipc(&path) {
            Ok(batches) => log_line(&format!(
                "ipc corpus {name}: read {} batches",
                batches.len()
            )),
            Err(error) => {
                log_line(&format!("ipc corpus {name}: refused: {error}"));
                assert!(
                    !matches!(error, Error::DecoderPanic { .. }),
                    "{name}: {error}"
                );
            }
        }
    }
}

/// The integration files of arrow-testing (`*.arrow_file`, written by the Arrow implementations'
/// integration suite): read zero-copy, each equals what arrow's own `FileReader` (a copying
/// reader, the independent reference) decodes; the ones refused are refused for a documented
/// reason (buffers misaligned for their type, which the zero-copy reader will not realign).
#[test]
fn ipc_integration_files_match_arrows_file_reader() {
    let root = require_testdata!("arrow-testing/data/arrow-ipc-stream/integration");
    let files = files_ending(&root, ".arrow_file");
    assert!(files.len() >= 20, "corpus looks incomplete");
    let (mut matched, mut refused) = (0, 0);
    for path in &files {
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        let reference: Result<Vec<_>, _> =
            arrow::ipc::reader::FileReader::try_new(std::fs::File::open(path).unwrap(), None)
                .and_then(|reader| reader.collect());
        match (read_ipc(path), reference) {
            (Ok(ours), Ok(theirs)) => {
                assert_eq!(
                    ours, theirs,
                    "{name}: zero-copy read differs from FileReader"
                );
                matched += 1;
            }
            (Err(error), reference) => {
                log_line(&format!(
                    "ipc integration {name}: refused: {error} (FileReader: {})",
                    if reference.is_ok() {
                        "reads it"
                    } else {
                        "refuses it too"
                    }
                ));
                assert!(
                    !matches!(error, Error::DecoderPanic { .. }),
                    "{name}: {error}"
                );
                refused += 1;
            }
            (Ok(_), Err(error)) => panic!("{name}: read, but FileReader refuses it: {error}"),
        }
    }
    log_line(&format!(
        "ipc integration files: {matched} equal to FileReader, {refused} refused"
    ));
}
