//! A learnable classification dataset: labels from a fixed linear teacher, written as Parquet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use mlinfra_data::Dataset;
use mlinfra_test_utils::rng::SplitMix64 as Rng;
use parquet::arrow::ArrowWriter;

/// Features per row.
pub const FEATURES: usize = 8;
/// Classes.
pub const CLASSES: usize = 4;

/// `rows` rows of `x` (uniform in [-1, 1]) and `label = argmax(W x)` for a teacher `W` drawn
/// from seed 99, written to `dir/name.parquet`.
pub fn teacher_parquet(dir: &Path, name: &str, rows: usize, seed: u64) -> PathBuf {
    let mut teacher = Rng::new(99);
    let w = teacher.vec_f32(CLASSES * FEATURES, -1.0, 1.0);
    let mut rng = Rng::new(seed);
    let x = rng.vec_f32(rows * FEATURES, -1.0, 1.0);
    let labels: Vec<i64> = x
        .chunks_exact(FEATURES)
        .map(|row| {
            (0..CLASSES)
                .map(|c| {
                    let score: f32 = (0..FEATURES).map(|f| w[c * FEATURES + f] * row[f]).sum();
                    (c, score)
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap()
                .0 as i64
        })
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "x",
            DataType::FixedSizeList(item.clone(), FEATURES as i32),
            false,
        ),
        Field::new("label", DataType::Int64, false),
    ]));
    let x = FixedSizeListArray::new(item, FEATURES as i32, Arc::new(Float32Array::from(x)), None);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(x), Arc::new(Int64Array::from(labels))],
    )
    .unwrap();
    let path = dir.join(format!("{name}.parquet"));
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

/// The train (512 rows) and test (256 rows) sets in `dir`.
pub fn teacher_sets(dir: &Path) -> (Arc<Dataset>, Arc<Dataset>) {
    let train = teacher_parquet(dir, "train", 512, 1);
    let test = teacher_parquet(dir, "test", 256, 2);
    let open = |p: PathBuf| Arc::new(Dataset::open(p.to_str().unwrap()).unwrap());
    (open(train), open(test))
}
