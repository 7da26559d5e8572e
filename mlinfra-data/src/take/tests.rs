//! `take` and scans of PLAIN pages with nulls in some of them and every fixed-width type the
//! direct path serves: pages without nulls are copied straight out, pages with nulls go to the
//! decoder, and the answer must equal the batch that was written either way.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, FixedSizeListArray, Float32Array, Float64Array, Int64Array, RecordBatch,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use mlinfra_test_utils::rng::SplitMix64;
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;
use parquet::file::properties::{WriterProperties, WriterVersion};

use crate::Dataset;

const ROWS: usize = 5000;
const PAGE_ROWS: usize = 100;
const DIM: i32 = 3;

/// Nulls only at rows 1000..1050 (`score`), row 2000 (a null `vec`) and row 3000 (a null
/// element inside `vec`): those pages are not dense, every other page is.
fn batch() -> RecordBatch {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("u", DataType::UInt32, false),
        Field::new("day", DataType::Date32, false),
        Field::new("big", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("vec", DataType::FixedSizeList(Arc::clone(&item), DIM), true),
    ]));
    let rows = 0..ROWS as u32;
    let items: Float32Array = (0..ROWS * DIM as usize)
        .map(|i| (i != 3000 * DIM as usize + 1).then_some(i as f32 * 0.25))
        .collect();
    let row_nulls = (0..ROWS).map(|r| r != 2000).collect::<Vec<_>>();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            rows.clone()
                .map(|r| r.wrapping_mul(2_654_435_761))
                .collect::<UInt32Array>(),
        ),
        Arc::new(Date32Array::from_iter_values(
            rows.clone().map(|r| r as i32 - 2500),
        )),
        Arc::new(
            rows.clone()
                .map(|r| i64::from(r) << 33)
                .collect::<Int64Array>(),
        ),
        Arc::new(
            rows.clone()
                .map(|r| (!(1000..1050).contains(&r)).then_some(f64::from(r) / 7.0))
                .collect::<Float64Array>(),
        ),
        Arc::new(FixedSizeListArray::new(
            item,
            DIM,
            Arc::new(items),
            Some(row_nulls.into()),
        )),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

fn write(path: &std::path::Path, version: WriterVersion) -> RecordBatch {
    let batch = batch();
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        // arrow-rs would pick DELTA_BINARY_PACKED for integers in v2 pages; pyarrow writes PLAIN.
        .set_encoding(Encoding::PLAIN)
        .set_writer_version(version)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_write_batch_size(PAGE_ROWS)
        .set_max_row_group_row_count(Some(2048))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    batch
}

#[test]
fn take_with_and_without_nulls_equals_arrow_take() {
    for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed.parquet");
        let expected = write(&path, version);
        let dataset = Dataset::open(path.to_str().unwrap()).unwrap();
        assert_eq!(dataset.schema(), &expected.schema());

        let mut rng = SplitMix64::new(7);
        let mut cases: Vec<Vec<u64>> = (0..20)
            .map(|_| (0..64).map(|_| rng.next_u64() % ROWS as u64).collect())
            .collect();
        // The non-dense pages alone, and beside dense ones.
        cases.push(vec![1010, 2000, 3000]);
        cases.push(vec![999, 1049, 1050, 1999, 2000, 2001, 3000, 4999, 0]);
        for ids in cases {
            let got = dataset.take(&ids).unwrap();
            let indices = UInt32Array::from_iter_values(ids.iter().map(|&i| i as u32));
            let want = arrow::compute::take_record_batch(&expected, &indices).unwrap();
            assert_eq!(got, want, "{version:?}, rows {ids:?}");
        }
        // The list column was served from its pages: their row lengths were checked.
        let checked = dataset.shared().checked_pages.len();
        assert!(checked > 0, "{version:?}: no list page was read directly");

        // A scan reads every page: dense ones directly, the others through the decoder, in
        // batches that cut pages anywhere.
        for batch_size in [64, 100, 333, 5000] {
            let batches: Vec<RecordBatch> = dataset
                .scan()
                .with_batch_size(batch_size)
                .build()
                .collect::<crate::Result<_>>()
                .unwrap();
            let scanned = arrow::compute::concat_batches(dataset.schema(), &batches).unwrap();
            assert_eq!(
                scanned, expected,
                "{version:?}, scan in batches of {batch_size}"
            );
        }
    }
}
