//! Filtered scans: results equal a naive filter over the ground truth, and pruning reads less.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema, UInt64Type};
use mlinfra_data::{Dataset, Error, Predicate};

use crate::fixtures::{Layout, label, name, write_dataset};

const ROWS: u64 = 10_000;

fn dataset(dir: &Path) -> Dataset {
    write_dataset(
        dir,
        &Layout {
            rows_per_file: vec![6_000, 4_000],
            row_group_rows: 1_000,
            page_rows: 100,
        },
    );
    Dataset::open(dir.to_str().unwrap()).unwrap()
}

/// The `id`s a filtered scan returns, in order.
fn scanned_ids(dataset: &Dataset, predicate: Predicate) -> Vec<u64> {
    let mut ids = Vec::new();
    for batch in dataset.scan().with_filter(predicate).unwrap().build() {
        let batch = batch.unwrap();
        let column = batch.column_by_name("id").unwrap();
        ids.extend(column.as_primitive::<UInt64Type>().values().iter().copied());
    }
    ids
}

#[test]
fn filtered_scans_equal_a_naive_filter_of_the_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dataset(dir.path());
    type Truth = fn(u64) -> bool;
    let cases: Vec<(Predicate, Truth)> = vec![
        (Predicate::eq("id", 1234u64), |id| id == 1234),
        (Predicate::lt("id", 50), |id| id < 50),
        (Predicate::lt_eq("id", 50), |id| id <= 50),
        (Predicate::gt("id", 9_950), |id| id > 9_950),
        (Predicate::gt_eq("id", 9_950), |id| id >= 9_950),
        (Predicate::between("id", 2_550, 2_649), |id| {
            (2_550..=2_649).contains(&id)
        }),
        (Predicate::is_in("label", [3, 7]), |id| {
            matches!(label(id), 3 | 7)
        }),
        (Predicate::is_null("name"), |id| name(id).is_none()),
        // 42 is a multiple of 7, so its name is null: 43 is the first after it with a name.
        (Predicate::eq("name", "row-43"), |id| id == 43),
        (
            Predicate::between("id", 1_000, 3_000).and(Predicate::eq("label", 5)),
            |id| (1_000..=3_000).contains(&id) && label(id) == 5,
        ),
        (Predicate::is_in("id", Vec::<u64>::new()), |_| false),
        (Predicate::gt("id", ROWS), |_| false),
    ];
    for (predicate, truth) in cases {
        let expected: Vec<u64> = (0..ROWS).filter(|&id| truth(id)).collect();
        assert_eq!(
            scanned_ids(&dataset, predicate.clone()),
            expected,
            "{predicate:?}"
        );
    }
}

#[test]
fn a_filter_may_use_columns_outside_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dataset(dir.path()).project(&["label"]).unwrap();
    let batches: Vec<RecordBatch> = dataset
        .scan()
        .with_filter(Predicate::between("id", 95, 104))
        .unwrap()
        .build()
        .collect::<Result<_, _>>()
        .unwrap();
    let labels: Vec<i32> = batches
        .iter()
        .flat_map(|b| {
            assert_eq!(b.num_columns(), 1);
            b.column(0).as_primitive::<Int32Type>().values().to_vec()
        })
        .collect();
    assert_eq!(labels, (95..=104).map(label).collect::<Vec<_>>());
}

#[test]
fn pruning_skips_row_groups_and_pages_that_cannot_match() {
    let dir = tempfile::tempdir().unwrap();
    let full = dataset(dir.path()).project(&["id", "label"]).unwrap();
    let rows: usize = full.scan().build().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows as u64, ROWS);
    let full_bytes = full.bytes_read();

    // Outside every row group's [min, max]: nothing is read.
    let none = Dataset::open(dir.path().to_str().unwrap()).unwrap();
    assert!(scanned_ids(&none, Predicate::gt("id", ROWS + 5)).is_empty());
    assert_eq!(none.bytes_read(), 0, "statistics prune every row group");

    // One page range of one row group: a small fraction of the bytes.
    let narrow = Dataset::open(dir.path().to_str().unwrap())
        .unwrap()
        .project(&["id", "label"])
        .unwrap();
    let ids = scanned_ids(&narrow, Predicate::between("id", 2_510, 2_520));
    assert_eq!(ids, (2_510..=2_520).collect::<Vec<_>>());
    mlinfra_test_utils::log_line(&format!(
        "pruning: a full scan of id+label read {full_bytes} bytes; id between 2510 and 2520 read {}",
        narrow.bytes_read()
    ));
    // One row group of ten is read; within it, the dictionary pages dominate what is left.
    assert!(
        narrow.bytes_read() * 5 < full_bytes,
        "{} of {full_bytes} bytes",
        narrow.bytes_read()
    );
}

#[test]
fn float_comparisons_follow_ieee_nan_and_sql_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
    let values = Float64Array::from(vec![Some(1.0), Some(f64::NAN), Some(3.0), None, Some(-2.0)]);
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let dataset = Dataset::open(path.to_str().unwrap()).unwrap();
    let xs = |predicate| -> Vec<Option<f64>> {
        let mut out = Vec::new();
        for batch in dataset.scan().with_filter(predicate).unwrap().build() {
            let batch = batch.unwrap();
            out.extend(batch.column(0).as_primitive::<Float64Type>().iter());
        }
        out
    };
    // NaN matches no comparison (arrow's own kernels would rank it above 0).
    assert_eq!(xs(Predicate::gt("x", 0.0)), [Some(1.0), Some(3.0)]);
    assert_eq!(xs(Predicate::eq("x", f64::NAN)), []);
    assert_eq!(xs(Predicate::lt("x", 0)), [Some(-2.0)]);
    assert_eq!(xs(Predicate::is_null("x")), [None]);
}

#[test]
fn predicates_that_do_not_fit_the_schema_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dataset(dir.path());
    let refuse = |predicate: Predicate| {
        let error = dataset.scan().with_filter(predicate).unwrap_err();
        mlinfra_test_utils::log_line(&format!("predicate refused: {error}"));
        error
    };
    // `label` is Int32.
    assert!(matches!(
        refuse(Predicate::eq("label", 3_000_000_000i64)),
        Error::InvalidPredicate { .. }
    ));
    assert!(matches!(
        refuse(Predicate::eq("id", "abc")),
        Error::InvalidPredicate { .. }
    ));
    assert!(matches!(
        refuse(Predicate::eq("emb", 1.0)),
        Error::InvalidPredicate { .. }
    ));
    match refuse(Predicate::is_null("nope")) {
        Error::NoSuchColumn { name } => assert_eq!(&*name, "nope"),
        other => panic!("{other:?}"),
    }
    assert_eq!(dataset.bytes_read(), 0);
}

/// Page level alone: one row group, no dictionary (which every page would need), so the bytes
/// read are the pages the page index keeps.
#[test]
fn the_page_index_prunes_pages_inside_a_row_group() {
    use arrow::array::UInt64Array;
    use parquet::file::properties::WriterProperties;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::UInt64, false)]));
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_data_page_row_count_limit(100)
        .set_write_batch_size(100)
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        Arc::clone(&schema),
        Some(props),
    )
    .unwrap();
    let ids = UInt64Array::from_iter_values(0..ROWS);
    writer
        .write(&RecordBatch::try_new(schema, vec![Arc::new(ids)]).unwrap())
        .unwrap();
    writer.close().unwrap();

    let full = Dataset::open(path.to_str().unwrap()).unwrap();
    assert_eq!(full.shards()[0].num_row_groups(), 1);
    let _ = scanned_ids(&full, Predicate::gt_eq("id", 0));
    // Without coalescing, so the count is the pages the index selected, not their neighbours.
    let narrow = mlinfra_data::DatasetBuilder::new(path.to_str().unwrap())
        .with_coalesce_gap(0)
        .build()
        .unwrap();
    let ids = scanned_ids(&narrow, Predicate::between("id", 2_510, 2_520));
    assert_eq!(ids, (2_510..=2_520).collect::<Vec<_>>());
    mlinfra_test_utils::log_line(&format!(
        "page pruning: {} of {} bytes read for 11 of {ROWS} rows in one row group",
        narrow.bytes_read(),
        full.bytes_read()
    ));
    // 100 pages of 100 rows: the rows lie on one page (two at most).
    assert!(narrow.bytes_read() * 40 < full.bytes_read());
}
