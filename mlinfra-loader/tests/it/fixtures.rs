//! A dataset whose every value is a function of its row id, written as Parquet and cached as
//! Arrow IPC, so any batch can be checked against the ids it claims to hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    BooleanArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mlinfra_data::{Dataset, IpcCache};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// Floats per row in `emb`.
pub const EMB_DIM: usize = 4;

pub fn emb(id: u64, k: usize) -> f32 {
    (id * EMB_DIM as u64 + k as u64) as f32 * 0.25 - 3.0
}
pub fn label(id: u64) -> i32 {
    (id % 10) as i32
}
pub fn flag(id: u64) -> bool {
    id.is_multiple_of(3)
}
/// Token ids of row `id`: `id % 7 + 1` of them, `id * 10 + j`.
pub fn tokens(id: u64) -> Vec<i32> {
    (0..id % 7 + 1).map(|j| (id * 10 + j) as i32).collect()
}

pub fn schema() -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let token = Arc::new(Field::new("item", DataType::Int32, false));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("emb", DataType::FixedSizeList(item, EMB_DIM as i32), false),
        Field::new("label", DataType::Int32, false),
        Field::new("flag", DataType::Boolean, false),
        Field::new("tokens", DataType::List(token), false),
    ]))
}

pub fn batch(ids: std::ops::Range<u64>) -> RecordBatch {
    let ids: Vec<u64> = ids.collect();
    let values: Float32Array = ids
        .iter()
        .flat_map(|&id| (0..EMB_DIM).map(move |k| emb(id, k)))
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let token = Arc::new(Field::new("item", DataType::Int32, false));
    let sequences: Vec<Vec<i32>> = ids.iter().map(|&id| tokens(id)).collect();
    let offsets = OffsetBuffer::from_lengths(sequences.iter().map(Vec::len));
    let token_values: Int32Array = sequences.into_iter().flatten().collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(ids.iter().map(|&id| id as i64).collect::<Int64Array>()),
            Arc::new(FixedSizeListArray::new(
                item,
                EMB_DIM as i32,
                Arc::new(values),
                None,
            )),
            Arc::new(ids.iter().map(|&id| label(id)).collect::<Int32Array>()),
            Arc::new(
                ids.iter()
                    .map(|&id| Some(flag(id)))
                    .collect::<BooleanArray>(),
            ),
            Arc::new(ListArray::new(token, offsets, Arc::new(token_values), None)),
        ],
    )
    .unwrap()
}

/// A Parquet file of `rows` rows (row groups of 128) and its IPC cache (batches of 64 rows:
/// loader batches of other sizes straddle them), under `dir`.
pub struct Fixture {
    pub parquet: PathBuf,
    pub cache_dir: PathBuf,
}

impl Fixture {
    pub fn write(dir: &Path, rows: u64) -> Fixture {
        let parquet = dir.join("data.parquet");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(128))
            .build();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(&parquet).unwrap(),
            schema(),
            Some(props),
        )
        .unwrap();
        let mut start = 0;
        while start < rows {
            let end = (start + 250).min(rows);
            writer.write(&batch(start..end)).unwrap();
            start = end;
        }
        writer.close().unwrap();
        let cache_dir = dir.join("cache");
        Dataset::open(parquet.to_str().unwrap())
            .unwrap()
            .ipc_cache(&cache_dir)
            .with_batch_rows(64)
            .create()
            .unwrap();
        Fixture { parquet, cache_dir }
    }

    pub fn cache(&self) -> IpcCache {
        IpcCache::open(&self.cache_dir).unwrap()
    }

    pub fn dataset(&self) -> Dataset {
        Dataset::open(self.parquet.to_str().unwrap()).unwrap()
    }
}
