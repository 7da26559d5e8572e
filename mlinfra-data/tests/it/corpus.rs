//! The Apache `parquet-testing` corpus: every file opens and scans, or yields a typed error;
//! every file in `bad_data` yields a typed error. Never a panic, a hang or a huge allocation.
//! Where a file scans, `take` of rows spread over it returns what the scan returned.

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
    let sample = sample_rows(dataset.num_rows());
    let mut sampled = Vec::new();
    let mut rows = 0u64;
    for batch in dataset.scan().with_batch_size(1024).build() {
        match batch {
            Ok(batch) => {
                let end = rows + batch.num_rows() as u64;
                for &id in sample.iter().filter(|&&id| (rows..end).contains(&id)) {
                    sampled.push(batch.slice((id - rows) as usize, 1));
                }
                rows = end;
            }
            Err(error) => return Outcome::Refused(error),
        }
    }
    assert_eq!(
        rows,
        dataset.num_rows(),
        "{}: scanned rows differ from the footer",
        path.display()
    );
    // `take` reads the same rows as the scan, whichever path serves each column.
    let expected = arrow::compute::concat_batches(dataset.schema(), &sampled).unwrap();
    match dataset.take(&sample) {
        Ok(taken) => assert_eq!(taken, expected, "{}: take of {sample:?}", path.display()),
        Err(error) => panic!(
            "{}: scans but take of {sample:?} fails: {error}",
            path.display()
        ),
    }
    Outcome::Read { rows }
}

/// Up to nine rows spread over `rows`, first and last included, ascending and unique.
fn sample_rows(rows: u64) -> Vec<u64> {
    let mut sample: Vec<u64> = (0..=8).map(|i| (rows.saturating_sub(1)) * i / 8).collect();
    sample.dedup();
    if rows == 0 {
        sample.clear();
    }
    sample
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

// Generated with pyarrow 26.0.1 by: ~/.cache/mlinfra/venvs/pyarrow-bench/bin/python benches/compare/corpus_reference.py /work/shared/testdata/parquet-testing/data
/// The files of `parquet-testing/data` that pyarrow reads, with its row counts.
const PYARROW_READS: &[(&str, u64)] = &[
    ("alltypes_dictionary.parquet", 2),
    ("alltypes_plain.parquet", 8),
    ("alltypes_plain.snappy.parquet", 2),
    ("alltypes_tiny_pages.parquet", 7300),
    ("alltypes_tiny_pages_plain.parquet", 7300),
    ("binary.parquet", 12),
    ("binary_truncated_min_max.parquet", 12),
    ("byte_array_decimal.parquet", 24),
    ("byte_stream_split.zstd.parquet", 300),
    ("byte_stream_split_extended.gzip.parquet", 200),
    ("column_chunk_key_value_metadata.parquet", 0),
    ("concatenated_gzip_members.parquet", 513),
    ("data_index_bloom_encoding_stats.parquet", 14),
    ("data_index_bloom_encoding_with_length.parquet", 14),
    ("datapage_v1-corrupt-checksum.parquet", 5120),
    ("datapage_v1-snappy-compressed-checksum.parquet", 5120),
    ("datapage_v1-uncompressed-checksum.parquet", 5120),
    ("datapage_v2.snappy.parquet", 5),
    ("datapage_v2_empty_datapage.snappy.parquet", 1),
    ("delta_binary_packed.parquet", 200),
    ("delta_byte_array.parquet", 1000),
    ("delta_encoding_optional_column.parquet", 100),
    ("delta_encoding_required_column.parquet", 100),
    ("delta_length_byte_array.parquet", 1000),
    ("dict-page-offset-zero.parquet", 39),
    ("fixed_length_byte_array.parquet", 1000),
    ("fixed_length_decimal.parquet", 24),
    ("fixed_length_decimal_legacy.parquet", 24),
    ("float16_nonzeros_and_nans.parquet", 8),
    ("float16_zeros_and_nans.parquet", 3),
    ("floating_orders_nan_count.parquet", 50),
    ("geospatial/crs-arbitrary-value.parquet", 1),
    ("geospatial/crs-default.parquet", 1),
    ("geospatial/crs-geography.parquet", 1),
    ("geospatial/crs-projjson.parquet", 1),
    ("geospatial/crs-srid.parquet", 1),
    ("geospatial/geography-lines.parquet", 499),
    ("geospatial/geography-points.parquet", 500),
    ("geospatial/geography-polygons.parquet", 500),
    ("geospatial/geospatial-with-nan.parquet", 3),
    ("geospatial/geospatial.parquet", 196),
    ("hadoop_lz4_compressed.parquet", 4),
    ("hadoop_lz4_compressed_larger.parquet", 10000),
    ("int32_decimal.parquet", 24),
    ("int32_with_null_pages.parquet", 1000),
    ("int64_decimal.parquet", 24),
    ("int96_from_spark.parquet", 6),
    ("list_columns.parquet", 3),
    ("lz4_raw_compressed.parquet", 4),
    ("lz4_raw_compressed_larger.parquet", 10000),
    ("map_no_value.parquet", 3),
    ("nan_in_stats.parquet", 2),
    ("nation.dict-malformed.parquet", 25),
    ("nested_lists.snappy.parquet", 3),
    ("nested_maps.snappy.parquet", 6),
    ("nested_structs.rust.parquet", 1),
    ("non_hadoop_lz4_compressed.parquet", 4),
    ("nonnullable.impala.parquet", 1),
    ("null_list.parquet", 1),
    ("nullable.impala.parquet", 7),
    ("nulls.snappy.parquet", 8),
    ("old_list_structure.parquet", 1),
    ("overflow_i16_page_cnt.parquet", 40000),
    ("page_v2_empty_compressed.parquet", 10),
    ("plain-dict-uncompressed-checksum.parquet", 1000),
    ("repeated_no_annotation.parquet", 6),
    ("repeated_primitive_no_list.parquet", 4),
    ("rle-dict-snappy-checksum.parquet", 1000),
    ("rle-dict-uncompressed-corrupt-checksum.parquet", 1000),
    ("rle_boolean_encoding.parquet", 68),
    ("single_nan.parquet", 1),
    ("sort_columns.parquet", 6),
    ("unknown-logical-type.parquet", 3),
];

/// Files pyarrow reads that this crate refuses, each with the reason (checked by
/// `known_refusals_say_why`).
const REFUSED_THOUGH_PYARROW_READS: &[&str] = &[
    // arrow-rs decodes 0 of the footer's 6 rows of a repeated group without LIST annotation.
    "repeated_no_annotation.parquet",
    // Dremio wrote a non-standard field 15 into ColumnMetaData (a list where the format now
    // has `bloom_filter_length`, an i32). arrow-rs's footer parser reads a field by its id
    // without checking its wire type, loses its place and fails ("Expected list element type
    // of I64 but got I16"); pyarrow's generated Thrift code skips a field of the wrong type.
    // Fixing it here would mean rewriting footers before arrow-rs parses them; see
    // docs/FORMATS.md.
    "dict-page-offset-zero.parquet",
];

/// Issue 21: every file pyarrow reads must read here too, with pyarrow's row count, except
/// the documented refusals. (The test above accepts any typed refusal, so a regression that
/// refused most files would pass it.) The list comes from `benches/compare/corpus_reference.py`.
#[test]
fn every_file_pyarrow_reads_reads_here_with_its_row_count() {
    let root = require_testdata!("parquet-testing/data");
    let mut wrong = Vec::new();
    for &(name, rows) in PYARROW_READS {
        let outcome = read_whole(&root.join(name));
        let refused_on_purpose = REFUSED_THOUGH_PYARROW_READS.contains(&name);
        match (&outcome, refused_on_purpose) {
            (Outcome::Read { rows: read }, false) if *read == rows => {}
            (Outcome::Refused(_), true) => {}
            _ => wrong.push(format!("{name} (pyarrow: {rows} rows): {outcome:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "differs from pyarrow:\n{}",
        wrong.join("\n")
    );
}

/// `nation.dict-malformed.parquet` was written by parquet-mr before 1.2.9, which left each
/// dictionary page's header out of its column chunk's size (PARQUET-816). arrow-rs fetches the
/// recorded bytes and finds the chunk cut short; mlinfra-data pads such chunks as parquet-cpp
/// does (`compat.rs`). The values are pyarrow's (the TPC-H `nation` table).
#[test]
fn a_parquet_816_file_reads_with_pyarrows_values() {
    use arrow::array::AsArray;
    use arrow::datatypes::Int32Type;
    let root = require_testdata!("parquet-testing/data");
    let dataset =
        Dataset::open(root.join("nation.dict-malformed.parquet").to_str().unwrap()).unwrap();
    let batches: Vec<_> = dataset.scan().build().collect::<Result<_, _>>().unwrap();
    let all = arrow::compute::concat_batches(dataset.schema(), &batches).unwrap();
    let keys: Vec<i32> = all.column(0).as_primitive::<Int32Type>().values().to_vec();
    assert_eq!(keys, (0..25).collect::<Vec<_>>());
    let regions: Vec<i32> = all.column(2).as_primitive::<Int32Type>().values().to_vec();
    assert_eq!(
        regions,
        [
            0, 1, 1, 1, 4, 0, 3, 3, 2, 2, 4, 4, 2, 4, 0, 0, 0, 1, 2, 3, 4, 2, 3, 3, 1
        ]
    );
    let names = all.column(1).as_binary::<i32>();
    assert_eq!(names.value(0), b"ALGERIA");
    assert_eq!(names.value(24), b"UNITED STATES");
    let comments = all.column(3).as_binary::<i32>();
    assert_eq!(
        comments.value(24),
        &b"y final packages. slow foxes cajole quickly. quickly silent platelets breach ironic \
accounts. unusual pinto be"[..]
    );
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
    // The footer arrow-rs cannot parse (see REFUSED_THOUGH_PYARROW_READS).
    let outcome = read_whole(&root.join("dict-page-offset-zero.parquet"));
    let refused_footer = matches!(
        &outcome,
        Outcome::Refused(Error::Parquet { source, .. })
            if source.to_string().contains("Expected list element type of I64 but got I16")
    );
    assert!(refused_footer, "{outcome:?}");
}

/// The encrypted files of the corpus (AES-GCM and AES-CTR, encrypted and plaintext footers).
/// Without their keys they are refused with a typed error, never decoded as garbage.
#[test]
fn encrypted_files_without_keys_are_refused() {
    let root = require_testdata!("parquet-testing/data");
    read_corpus(&root, ".parquet.encrypted", 8, |name, outcome| {
        assert_refused(name, &outcome)
    });
}

/// The keys parquet-testing documents for its encrypted files (the same that Apache Arrow's
/// and parquet-java's tests use): for `data/`, an AES-128 footer key and keys for the two
/// encrypted columns; for `data/aes256/`, an AES-256 footer key and one key per column.
#[cfg(feature = "encryption")]
fn documented_keys(name: &str) -> mlinfra_data::Decryption {
    use mlinfra_data::Decryption;
    if name.starts_with("aes256/") {
        let columns = [
            "double_field",
            "float_field",
            "boolean_field",
            "int32_field",
            "ba_field",
            "flba_field",
            "int64_field.list.element",
            "int96_field",
        ];
        let mut keys = Decryption::new(b"01234567890123456789012345678901");
        for (i, column) in columns.iter().enumerate() {
            keys =
                keys.with_column_key(column, format!("123456789012345678901234567890{}", 12 + i));
        }
        keys
    } else {
        Decryption::new(b"0123456789012345")
            .with_column_key("double_field", b"1234567890123450")
            .with_column_key("float_field", b"1234567890123451")
    }
}

/// With their documented keys, the AES-GCM files decrypt and hold the documented data: 50 rows
/// where row `i` has, in columns 0, 1, 4, 5 and 7: `i % 2 == 0`, time `i` ms, `i * 1.1` (f32),
/// `i * 1.1111111` (f64, `double_field`, encrypted with its own key) and `[i; 10]` (as
/// parquet-testing's generator and arrow-rs's own tests state). The bloom-filter file holds
/// other data (2000 rows) and is checked for its row count. AES-GCM-CTR and KMS-wrapped keys
/// are refused, typed.
#[cfg(feature = "encryption")]
#[test]
fn encrypted_files_decrypt_with_their_documented_keys() {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float32Type, Float64Type, Time32MillisecondType};
    use mlinfra_data::DatasetBuilder;

    let root = require_testdata!("parquet-testing/data");
    let open = |name: &str, keys: mlinfra_data::Decryption| {
        DatasetBuilder::new(root.join(name).to_str().unwrap())
            .with_decryption(keys)
            .build()
    };
    let readable = [
        ("uniform_encryption.parquet.encrypted", None),
        ("encrypt_columns_and_footer.parquet.encrypted", None),
        ("encrypt_columns_plaintext_footer.parquet.encrypted", None),
        ("encrypt_columns_and_footer_aad.parquet.encrypted", None),
        (
            "encrypt_columns_and_footer_disable_aad_storage.parquet.encrypted",
            Some(&b"tester"[..]),
        ),
        ("aes256/uniform_encryption.parquet.encrypted", None),
        ("aes256/encrypt_columns_and_footer.parquet.encrypted", None),
        (
            "aes256/encrypt_columns_plaintext_footer.parquet.encrypted",
            None,
        ),
        (
            "aes256/encrypt_columns_and_footer_disable_aad_storage.parquet.encrypted",
            Some(&b"tester"[..]),
        ),
    ];
    for (name, aad_prefix) in readable {
        let keys = match aad_prefix {
            Some(prefix) => documented_keys(name).with_aad_prefix(prefix),
            None => documented_keys(name),
        };
        let dataset = open(name, keys).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(dataset.num_rows(), 50, "{name}");
        let mut i = 0usize;
        for batch in dataset.scan().build() {
            let batch = batch.unwrap_or_else(|e| panic!("{name}: {e}"));
            // Positions as in the generator (arrow-rs's tests read them the same way).
            let (booleans, times) = (batch.column(0), batch.column(1));
            let (floats, doubles, fixed) = (batch.column(4), batch.column(5), batch.column(7));
            for row in 0..batch.num_rows() {
                let id = i + row;
                assert_eq!(
                    booleans.as_boolean().value(row),
                    id.is_multiple_of(2),
                    "{name}"
                );
                assert_eq!(
                    times.as_primitive::<Time32MillisecondType>().value(row),
                    id as i32
                );
                assert_eq!(
                    floats.as_primitive::<Float32Type>().value(row),
                    id as f32 * 1.1f32
                );
                assert_eq!(
                    doubles.as_primitive::<Float64Type>().value(row),
                    id as f64 * 1.1111111f64
                );
                assert_eq!(fixed.as_fixed_size_binary().value(row), [id as u8; 10]);
            }
            i += batch.num_rows();
        }
        assert_eq!(i, 50, "{name}");
        log_line(&format!("corpus {name}: decrypted, 50 rows as documented"));
    }

    let name = "encrypt_columns_and_footer_bloom_filter.parquet.encrypted";
    let dataset = open(name, documented_keys(name)).unwrap();
    let rows: usize = dataset.scan().build().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!((rows, dataset.num_rows()), (2000, 2000));
    log_line(&format!("corpus {name}: decrypted, 2000 rows"));

    // A wrong key is a typed error, not garbage.
    let wrong = mlinfra_data::Decryption::new(b"0000000000000000");
    let name = "uniform_encryption.parquet.encrypted";
    assert!(matches!(open(name, wrong), Err(Error::Parquet { .. })));

    // Not supported by the reader, refused with a typed error: AES-GCM-CTR, and keys wrapped
    // by a KMS (the file holds key metadata, not keys).
    for name in [
        "encrypt_columns_and_footer_ctr.parquet.encrypted",
        "aes256/encrypt_columns_and_footer_ctr.parquet.encrypted",
        "external_key_material_java.parquet.encrypted",
    ] {
        match open(name, documented_keys(name)) {
            Err(error @ Error::Parquet { .. }) => log_line(&format!(
                "corpus {name}: refused with keys: {error}: {:?}",
                std::error::Error::source(&error).map(|s| s.to_string())
            )),
            other => panic!("{name}: {other:?}"),
        }
    }
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
