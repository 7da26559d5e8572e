//! `Dataset` over files the tests write: open, projection, take, scan, and their errors.

use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::UInt64Type;
use mlinfra_data::{Dataset, DatasetBuilder, Error};
use mlinfra_test_utils::rng::SplitMix64;

use parquet::basic::Encoding;
use parquet::file::properties::WriterVersion;

use crate::fixtures::{
    Layout, assert_rows, properties, write_dataset, write_dataset_with, write_file, write_file_with,
};

/// Files of uneven sizes (one of a single row), row groups and pages that do not divide them.
fn uneven() -> Layout {
    Layout {
        rows_per_file: vec![1000, 1, 2500],
        row_group_rows: 300,
        page_rows: 64,
    }
}

fn open_dir(dir: &Path) -> Dataset {
    Dataset::open(dir.to_str().unwrap()).unwrap()
}

/// Opened without read coalescing: every fetch is exactly a range the decoder asked for.
fn open_dir_uncoalesced(dir: &Path) -> Dataset {
    DatasetBuilder::new(dir.to_str().unwrap())
        .with_coalesce_gap(0)
        .build()
        .unwrap()
}

#[test]
fn open_reads_counts_from_footers() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = open_dir(dir.path());

    assert_eq!(dataset.num_rows(), 3501);
    assert_eq!(dataset.schema().fields().len(), 4);
    let shards = dataset.shards();
    assert_eq!(shards.len(), 3);
    assert_eq!(
        shards[0].row_group_rows().collect::<Vec<_>>(),
        [300, 300, 300, 100]
    );
    assert_eq!(shards[1].row_group_rows().collect::<Vec<_>>(), [1]);
    assert_eq!(shards[2].first_row(), 1001);
    assert_eq!(shards.iter().map(|s| s.num_rows()).sum::<u64>(), 3501);
}

#[test]
fn file_dir_glob_and_file_uri_name_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_dataset(dir.path(), &uneven());
    // Files a directory scan must skip, as Spark and pyarrow do.
    std::fs::write(dir.path().join("_SUCCESS"), b"").unwrap();
    std::fs::write(dir.path().join(".part-000.parquet.crc"), b"not parquet").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not parquet").unwrap();
    let root = dir.path().to_str().unwrap();

    for uri in [
        root.to_owned(),
        format!("{root}/part-*.parquet"),
        format!("file://{root}"),
    ] {
        let dataset = Dataset::open(uri.as_str()).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(dataset.num_rows(), 3501, "{uri}");
    }
    let single = Dataset::open(paths[2].to_str().unwrap()).unwrap();
    assert_eq!(single.num_rows(), 2500);
    assert_rows(&single.take(&[0, 2499]).unwrap(), &[1001, 3500]);
}

/// Random indices (unsorted, with repeats) across files, row groups and pages, on several
/// layouts; every value is checked against the row's ground truth.
#[test]
fn take_returns_requested_rows_in_order() {
    let layouts = [
        uneven(),
        Layout {
            rows_per_file: vec![4096],
            row_group_rows: 4096,
            page_rows: 1024,
        },
        Layout {
            rows_per_file: vec![10, 10, 10, 10],
            row_group_rows: 3,
            page_rows: 1,
        },
    ];
    for (case, layout) in layouts.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), layout);
        let dataset = open_dir(dir.path());
        let rows = dataset.num_rows();
        let mut rng = SplitMix64::new(case as u64);
        for count in [1, 2, 17, 256] {
            let ids: Vec<u64> = (0..count).map(|_| rng.next_u64() % rows).collect();
            let batch = dataset.take(&ids).unwrap();
            assert_rows(&batch, &ids);
        }
        // Every row, in reverse.
        let all: Vec<u64> = (0..rows).rev().collect();
        assert_rows(&dataset.take(&all).unwrap(), &all);
    }
}

/// Files as pyarrow writes ML features (PLAIN, no dictionary, uncompressed), in both page
/// formats: `take` and scans copy the fixed-width columns (`id`, `emb`, `label`) straight out
/// of their pages and decode `name` (nullable strings); every value is checked against the
/// ground truth.
#[test]
fn take_and_scan_of_plain_pages_return_the_right_rows() {
    for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
        for (case, layout) in [
            uneven(),
            Layout {
                rows_per_file: vec![10, 10, 10],
                row_group_rows: 3,
                page_rows: 1,
            },
        ]
        .iter()
        .enumerate()
        {
            let dir = tempfile::tempdir().unwrap();
            write_dataset_with(dir.path(), layout, |props| {
                // arrow-rs would pick DELTA_BINARY_PACKED for integers in v2 pages.
                props
                    .set_dictionary_enabled(false)
                    .set_encoding(Encoding::PLAIN)
                    .set_writer_version(version)
            });
            let dataset = open_dir(dir.path());
            let rows = dataset.num_rows();
            let mut rng = SplitMix64::new(case as u64);
            for count in [1, 17, 256] {
                let ids: Vec<u64> = (0..count).map(|_| rng.next_u64() % rows).collect();
                assert_rows(&dataset.take(&ids).unwrap(), &ids);
            }
            let all: Vec<u64> = (0..rows).rev().collect();
            assert_rows(&dataset.take(&all).unwrap(), &all);
            // A projection of direct columns only, in an order of its own.
            let projected = dataset.project(&["emb", "id"]).unwrap();
            assert_rows(&projected.take(&[9, 2, 9]).unwrap(), &[9, 2, 9]);
            // Scans read the same pages whole, in batches that cut pages anywhere.
            for view in [&dataset, &projected] {
                for batch_size in [7, 1000] {
                    let mut next = 0u64;
                    for batch in view.scan().with_batch_size(batch_size).build() {
                        let batch = batch.unwrap();
                        let ids: Vec<u64> = (next..next + batch.num_rows() as u64).collect();
                        assert_rows(&batch, &ids);
                        next += batch.num_rows() as u64;
                    }
                    assert_eq!(next, rows);
                }
            }
        }
    }
}

#[test]
fn take_with_projection_keeps_the_requested_column_order() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = open_dir(dir.path()).project(&["label", "id"]).unwrap();
    let names: Vec<_> = dataset
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["label", "id"]);

    let batch = dataset.take(&[3500, 0, 1000]).unwrap();
    assert_eq!(batch.schema(), *dataset.schema());
    assert_rows(&batch, &[3500, 0, 1000]);
}

#[test]
fn take_of_nothing_is_an_empty_batch_with_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = open_dir(dir.path()).project(&["emb"]).unwrap();
    let batch = dataset.take(&[]).unwrap();
    assert_eq!(batch.num_rows(), 0);
    assert_eq!(batch.schema(), *dataset.schema());
}

#[test]
fn take_out_of_range_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = open_dir(dir.path());
    match dataset.take(&[0, 3501, 5]) {
        Err(Error::RowOutOfRange {
            index: 3501,
            rows: 3501,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn scan_yields_every_row_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = open_dir(dir.path());
    for (batch_size, readahead) in [(1000, 1), (128, 4), (1, 2), (100_000, 64)] {
        let mut next = 0u64;
        for batch in dataset
            .scan()
            .with_batch_size(batch_size)
            .with_readahead(readahead)
            .build()
        {
            let batch = batch.unwrap();
            assert!(batch.num_rows() <= batch_size && batch.num_rows() > 0);
            let ids = batch
                .column(0)
                .as_primitive::<UInt64Type>()
                .values()
                .to_vec();
            assert_eq!(ids, (next..next + ids.len() as u64).collect::<Vec<_>>());
            assert_rows(&batch, &ids);
            next += ids.len() as u64;
        }
        assert_eq!(next, 3501, "batch size {batch_size}, readahead {readahead}");
    }
}

#[test]
fn scan_of_a_projection_reads_only_those_columns() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = open_dir(dir.path()).project(&["name"]).unwrap();
    let rows: usize = dataset
        .scan()
        .build()
        .map(|b| {
            let b = b.unwrap();
            assert_eq!(b.num_columns(), 1);
            b.num_rows()
        })
        .sum();
    assert_eq!(rows, 3501);
}

#[test]
fn a_shard_with_another_schema_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    // Same column names, different type for `label`.
    let other = dir.path().join("part-999.parquet");
    let batch = arrow::array::RecordBatch::try_from_iter([(
        "id",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![1i64])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&other).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    match Dataset::open(dir.path().to_str().unwrap()) {
        Err(Error::SchemaMismatch { path, first }) => {
            assert_eq!(&*path, other.as_path());
            assert!(first.ends_with("part-000.parquet"), "{}", first.display());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn caller_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    assert!(matches!(Dataset::open(root), Err(Error::NoFiles { .. })));
    assert!(matches!(
        Dataset::open(format!("{root}/*.parquet")),
        Err(Error::NoFiles { .. })
    ));
    assert!(matches!(
        Dataset::open(format!("{root}/[.parquet")),
        Err(Error::InvalidUri { .. })
    ));

    write_dataset(dir.path(), &uneven());
    match open_dir(dir.path()).project(&["id", "missing"]) {
        Err(Error::NoSuchColumn { name }) => assert_eq!(&*name, "missing"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn decode_limit_refuses_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = DatasetBuilder::new(dir.path().to_str().unwrap())
        .with_max_decoded_bytes(64)
        .build()
        .unwrap();
    assert!(matches!(
        dataset.take(&[5]),
        Err(Error::DecodeLimit {
            row_group: 0,
            limit: 64,
            ..
        })
    ));
    let mut scan = dataset.scan().build();
    assert!(matches!(scan.next(), Some(Err(Error::DecodeLimit { .. }))));
    assert!(scan.next().is_none(), "a scan ends after its first error");
}

#[test]
fn garbage_and_truncated_files_are_parquet_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"PAR1 this is not a parquet file at all PAR1").unwrap();
    let good = dir.path().join("good.parquet");
    write_file(&good, 0..500, 100, 10);
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let empty = dir.path().join("empty.parquet");
    std::fs::write(&empty, b"").unwrap();

    for path in [&garbage, &truncated, &empty] {
        match Dataset::open(path.to_str().unwrap()) {
            Err(Error::Parquet { path: at, .. }) => assert_eq!(&*at, path.as_path()),
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}

/// A consumer that is itself a rayon worker (here the only thread of its pool) blocks waiting
/// for batches; the decoding must not be queued behind it on the same pool. Fails by timeout
/// rather than hanging the test binary.
#[test]
fn scan_inside_a_saturated_rayon_pool_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &uneven());
    let dataset = open_dir(dir.path());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let rows: usize = pool.install(|| {
            dataset
                .scan()
                .with_readahead(3)
                .build()
                .map(|b| b.unwrap().num_rows())
                .sum()
        });
        done.send(rows).unwrap();
    });
    let rows = finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("scan from inside a one-thread rayon pool deadlocked");
    assert_eq!(rows, 3501);
}

/// Bytes `take` must fetch for file-local `rows` of column `column` in row group 0 of `path`:
/// the dictionary page, if any, plus every data page holding one of the rows, per the file's
/// offset index; and how many data pages those are, of how many. Computed from the metadata
/// alone, independently of the reader.
fn pages_holding(path: &Path, column: usize, rows: &[u64]) -> (u64, usize, usize) {
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    let file = std::fs::File::open(path).unwrap();
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Required)
        .parse_and_finish(&file)
        .unwrap();
    let chunk = metadata.row_group(0).column(column);
    let page_index = metadata.page_index_for_row_group(0);
    let pages = page_index.page_locations(column).unwrap();
    let dictionary = chunk
        .dictionary_page_offset()
        .map_or(0, |at| (pages[0].offset - at) as u64);
    let num_rows = metadata.row_group(0).num_rows();
    let holding: Vec<u64> = pages
        .iter()
        .enumerate()
        .filter(|(i, page)| {
            let end = pages
                .get(i + 1)
                .map_or(num_rows, |next| next.first_row_index);
            rows.iter()
                .any(|&r| (page.first_row_index..end).contains(&(r as i64)))
        })
        .map(|(_, page)| page.compressed_page_size as u64)
        .collect();
    (
        dictionary + holding.iter().sum::<u64>(),
        holding.len(),
        pages.len(),
    )
}

#[test]
fn take_reads_only_the_pages_holding_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.parquet");
    // One row group of 20,000 rows in pages of 100 rows: 200 pages per column.
    write_file(&path, 0..20_000, 20_000, 100);
    let dataset = open_dir_uncoalesced(dir.path())
        .project(&["id", "label"])
        .unwrap();
    assert_eq!(dataset.bytes_read(), 0, "opening reads no data pages");

    let rows = [5, 7, 12_345, 19_999];
    assert_rows(&dataset.take(&rows).unwrap(), &rows);
    // `id` is column 0 and `label` column 2 of the file (`emb` is one leaf: the list's items).
    let (id_bytes, id_pages, pages) = pages_holding(&path, 0, &rows);
    let (label_bytes, label_pages, _) = pages_holding(&path, 2, &rows);
    // Rows 5 and 7 share the first page: 3 data pages per column, of ~200 (the writer closes
    // pages at write-batch boundaries, so a few hold fewer than 100 rows).
    assert_eq!((id_pages, label_pages), (3, 3));
    assert!(pages > 150, "{pages} pages");
    let file_size = std::fs::metadata(&path).unwrap().len();
    mlinfra_test_utils::log_line(&format!(
        "take of 4 rows read {} bytes of a {file_size}-byte file: the dictionary pages and 3 of \
         {pages} data pages per column, {} bytes by the offset index",
        dataset.bytes_read(),
        id_bytes + label_bytes
    ));
    assert_eq!(dataset.bytes_read(), id_bytes + label_bytes);
    // Per column: the dictionary page with the first data page (adjacent ranges always merge),
    // then the pages of rows 12,345 and 19,999.
    assert_eq!(dataset.read_requests(), 6);
}

/// The same on PLAIN pages read without a decoder: exactly the pages holding the rows, one
/// request each, for the list column too.
#[test]
fn take_from_plain_pages_reads_only_the_pages_holding_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.parquet");
    let props = properties(20_000, 100)
        .set_dictionary_enabled(false)
        .build();
    write_file_with(&path, 0..20_000, props);
    let dataset = open_dir_uncoalesced(dir.path())
        .project(&["id", "emb", "label"])
        .unwrap();
    let rows = [5, 7, 12_345, 19_999];
    assert_rows(&dataset.take(&rows).unwrap(), &rows);
    let expected: u64 = (0..3).map(|leaf| pages_holding(&path, leaf, &rows).0).sum();
    assert_eq!(dataset.bytes_read(), expected);
    // 3 pages for each of 3 columns, in one fetch for the row group: rows 0 and 19,999 sit on
    // a column chunk's first and last pages, which touch the neighbouring chunks' last and first
    // pages in the file, and touching ranges always merge.
    assert_eq!(dataset.read_requests(), 7);
}

#[test]
fn nearby_pages_are_fetched_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.parquet");
    write_file(&path, 0..20_000, 20_000, 100);
    // Rows on pages 0, 3 and 6 of each column: a few kilobytes apart.
    let rows = [5, 305, 605];
    let exact = open_dir_uncoalesced(dir.path())
        .project(&["id", "label"])
        .unwrap();
    let coalesced = open_dir(dir.path()).project(&["id", "label"]).unwrap();
    let from_exact = exact.take(&rows).unwrap();
    assert_eq!(coalesced.take(&rows).unwrap(), from_exact);
    assert_rows(&from_exact, &rows);
    mlinfra_test_utils::log_line(&format!(
        "coalescing: {} requests for {} bytes exactly, {} request(s) for {} bytes coalesced",
        exact.read_requests(),
        exact.bytes_read(),
        coalesced.read_requests(),
        coalesced.bytes_read()
    ));
    // Exactly: per column, dictionary + page 0, then pages 3 and 6. Coalesced: one per column,
    // reading the pages in between too.
    assert_eq!(exact.read_requests(), 6);
    assert_eq!(coalesced.read_requests(), 2);
    assert!(coalesced.bytes_read() > exact.bytes_read());
    // Each merge reads at most one gap's worth of bytes nobody asked for.
    let merges = exact.read_requests() - coalesced.read_requests();
    assert!(
        coalesced.bytes_read() - exact.bytes_read()
            <= merges * mlinfra_data::storage::DEFAULT_LOCAL_COALESCE_GAP
    );
}

#[test]
fn a_footer_pointing_past_the_end_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.parquet");
    write_file(&path, 0..5000, 5000, 100);
    let dataset = open_dir(dir.path());
    // Cut the data out from under the opened footer: every page range now runs past the end.
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 4).unwrap();
    // The reader reports it through arrow's error type, which wraps the Parquet error.
    match dataset.take(&[4999]) {
        Err(error @ (Error::Parquet { .. } | Error::Arrow { .. })) => {
            let cause = std::error::Error::source(&error).unwrap().to_string();
            assert!(cause.contains("runs past the end of the file"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_default_scan_batch_is_sized_in_bytes() {
    use std::sync::Arc;

    use arrow::array::{FixedSizeListArray, Float32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    // Rows of 256 floats (1 KiB): 8,192-row batches would be 8 MiB.
    let dir = tempfile::tempdir().unwrap();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![Field::new(
        "emb",
        DataType::FixedSizeList(Arc::clone(&item), 256),
        false,
    )]));
    let rows = 3_000;
    let values = Float32Array::from_iter_values((0..rows * 256).map(|v| v as f32));
    let emb = FixedSizeListArray::new(item, 256, Arc::new(values), None);
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(emb)]).unwrap();
    let file = std::fs::File::create(dir.path().join("wide.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let dataset = open_dir(dir.path());
    let sizes: Vec<usize> = dataset
        .scan()
        .build()
        .map(|b| b.unwrap().num_rows())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), rows);
    // 512 KiB over a little more than 1 KiB per row (the footer's uncompressed size counts
    // page headers and encoding overhead too): under 512 rows, far under 8,192.
    assert!((256..=512).contains(&sizes[0]), "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= sizes[0]), "{sizes:?}");
    // An explicit size wins.
    let explicit: Vec<usize> = dataset
        .scan()
        .with_batch_size(2_000)
        .build()
        .map(|b| b.unwrap().num_rows())
        .collect();
    assert_eq!(explicit, vec![2_000, 1_000]);
}

#[test]
fn memory_mapped_and_buffered_reads_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(
        dir.path(),
        &Layout {
            rows_per_file: vec![2_000, 3],
            row_group_rows: 500,
            page_rows: 50,
        },
    );
    let mapped = open_dir(dir.path());
    let buffered = DatasetBuilder::new(dir.path().to_str().unwrap())
        .with_memory_map(false)
        .build()
        .unwrap();
    let rows = SplitMix64::new(5).indices(100, mapped.num_rows());
    assert_eq!(mapped.take(&rows).unwrap(), buffered.take(&rows).unwrap());
    let scan = |d: &Dataset| d.scan().build().map(Result::unwrap).collect::<Vec<_>>();
    assert_eq!(scan(&mapped), scan(&buffered));
    // The same ranges were fetched either way.
    assert_eq!(mapped.bytes_read(), buffered.bytes_read());
    assert_eq!(mapped.read_requests(), buffered.read_requests());
}
