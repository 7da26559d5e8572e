//! What several test modules build: a learnable classification dataset (labels from a fixed
//! linear teacher, written as Parquet), a tiny Llama, and Parquet files of any batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_data::Dataset;
use mlinfra_test_utils::rng::SplitMix64 as Rng;
use mlinfra_train::models::{Llama, LlamaConfig};
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
        schema,
        vec![Arc::new(x), Arc::new(Int64Array::from(labels))],
    )
    .unwrap();
    let path = dir.join(format!("{name}.parquet"));
    write_parquet(&path, &batch);
    path
}

/// `batch` as a Parquet file at `path`.
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// A tiny Llama's shape: 2 layers, hidden 32, 4 query and 2 key/value heads, vocabulary 48.
pub fn tiny_llama_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 48,
        hidden_size: 32,
        intermediate_size: 40,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_seq_len: 64,
        tie_embeddings: false,
    }
}

/// [`tiny_llama_config`] with seeded weights large enough (std 0.15) that outputs depend on
/// the whole context.
pub fn tiny_llama(device: &Device) -> Llama {
    tiny_llama_config().init_with_std(11, 0.15, device).unwrap()
}

/// `model`'s logits `[1, tokens, vocab]` for one sequence, flattened, on the plain CPU device.
pub fn llama_logits(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let device = Device::flex();
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
    model
        .forward(ids)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

/// The train (512 rows) and test (256 rows) sets in `dir`.
pub fn teacher_sets(dir: &Path) -> (Arc<Dataset>, Arc<Dataset>) {
    let train = teacher_parquet(dir, "train", 512, 1);
    let test = teacher_parquet(dir, "test", 256, 2);
    let open = |p: PathBuf| Arc::new(Dataset::open(p.to_str().unwrap()).unwrap());
    (open(train), open(test))
}
