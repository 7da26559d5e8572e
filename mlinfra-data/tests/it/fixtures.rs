//! Parquet files written by the tests, whose every value is a function of its global row id, so
//! any row read back can be checked without a second reader.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};

/// Floats per row in the `emb` column.
pub const EMB_DIM: i32 = 4;

/// How a test dataset is cut into files, row groups and pages.
#[derive(Debug, Clone)]
pub struct Layout {
    pub rows_per_file: Vec<u64>,
    pub row_group_rows: usize,
    pub page_rows: usize,
}

pub fn schema() -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("emb", DataType::FixedSizeList(item, EMB_DIM), false),
        Field::new("label", DataType::Int32, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

/// `emb[k]`, `label` and `name` of row `id`: the ground truth.
pub fn emb(id: u64, k: usize) -> f32 {
    (id * EMB_DIM as u64 + k as u64) as f32 * 0.5
}
pub fn label(id: u64) -> i32 {
    (id % 10) as i32
}
pub fn name(id: u64) -> Option<String> {
    (!id.is_multiple_of(7)).then(|| format!("row-{id}"))
}

pub fn batch(rows: Range<u64>) -> RecordBatch {
    let ids: Vec<u64> = rows.collect();
    let values: Float32Array = ids
        .iter()
        .flat_map(|&id| (0..EMB_DIM as usize).map(move |k| emb(id, k)))
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let emb = FixedSizeListArray::new(item, EMB_DIM, Arc::new(values), None);
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(UInt64Array::from(ids.clone())),
            Arc::new(emb),
            Arc::new(ids.iter().map(|&id| label(id)).collect::<Int32Array>()),
            Arc::new(ids.iter().map(|&id| name(id)).collect::<StringArray>()),
        ],
    )
    .unwrap()
}

/// Writer settings for `row_group_rows`-row groups of `page_rows`-row pages; arrow-rs's
/// defaults otherwise (dictionary on, uncompressed, page index written).
pub fn properties(row_group_rows: usize, page_rows: usize) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_data_page_row_count_limit(page_rows)
        // The row-count limit is checked once per write batch, so batches must be no larger.
        .set_write_batch_size(page_rows)
}

pub fn write_file(path: &Path, rows: Range<u64>, row_group_rows: usize, page_rows: usize) {
    write_file_with(path, rows, properties(row_group_rows, page_rows).build());
}

pub fn write_file_with(path: &Path, rows: Range<u64>, props: WriterProperties) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).unwrap();
    // Several writes, so row groups and pages do not line up with write calls.
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + 777).min(rows.end);
        writer.write(&batch(start..end)).unwrap();
        start = end;
    }
    writer.close().unwrap();
}

/// Writes `layout` as `part-NNN.parquet` files under `dir`; returns the file paths.
pub fn write_dataset(dir: &Path, layout: &Layout) -> Vec<PathBuf> {
    write_dataset_with(dir, layout, |props| props)
}

/// [`write_dataset`] with writer settings adjusted by `adjust`.
pub fn write_dataset_with(
    dir: &Path,
    layout: &Layout,
    adjust: impl Fn(WriterPropertiesBuilder) -> WriterPropertiesBuilder,
) -> Vec<PathBuf> {
    let mut first = 0;
    let mut paths = Vec::new();
    for (i, &rows) in layout.rows_per_file.iter().enumerate() {
        let path = dir.join(format!("part-{i:03}.parquet"));
        let props = adjust(properties(layout.row_group_rows, layout.page_rows)).build();
        write_file_with(&path, first..first + rows, props);
        first += rows;
        paths.push(path);
    }
    paths
}

/// Asserts that `batch` holds exactly the rows `ids`, in order, with every column correct for
/// the columns it has.
pub fn assert_rows(batch: &RecordBatch, ids: &[u64]) {
    assert_eq!(batch.num_rows(), ids.len(), "row count");
    let schema = batch.schema();
    for (column, field) in batch.columns().iter().zip(schema.fields()) {
        match field.name().as_str() {
            "id" => assert_eq!(column.as_primitive::<UInt64Type>().values(), ids),
            "label" => {
                let got = column
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .values();
                assert!(
                    ids.iter().zip(got.iter()).all(|(&id, &l)| l == label(id)),
                    "label"
                );
            }
            "name" => {
                let got = column.as_string::<i32>();
                for (row, &id) in ids.iter().enumerate() {
                    let value = got.is_valid(row).then(|| got.value(row).to_owned());
                    assert_eq!(value, name(id), "name of row {id}");
                }
            }
            "emb" => {
                let list = column.as_fixed_size_list();
                let values = list
                    .values()
                    .as_primitive::<arrow::datatypes::Float32Type>();
                for (row, &id) in ids.iter().enumerate() {
                    for k in 0..EMB_DIM as usize {
                        let at = list.value_offset_at(row) + k;
                        assert_eq!(values.value(at), emb(id, k), "emb[{k}] of row {id}");
                    }
                }
            }
            other => panic!("unexpected column {other}"),
        }
    }
}
