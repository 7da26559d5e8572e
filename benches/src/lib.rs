//! Shared helpers for the mlinfra benchmarks. The criterion binary is `main.rs`; side-by-side
//! comparison scripts against peer systems live in `compare/`, with their Rust runners in
//! `src/bin/`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

/// Element counts the elementwise benchmarks sweep: from launch-bound to bandwidth-bound.
pub const ELEMENTWISE_SIZES: [usize; 3] = [1 << 12, 1 << 16, 1 << 20];

/// Width of the `emb` column of the benchmark dataset: `FixedSizeList<Float32, EMB_DIM>`.
pub const EMB_DIM: i32 = 64;

/// The two columns every data benchmark reads, in this order.
pub const DATA_COLUMNS: [&str; 2] = ["emb", "label"];

/// Rows per random `take` in the data benchmarks.
pub const TAKE_ROWS: usize = 256;

/// The generator both halves of `compare/data.sh` use (`data.py` writes it again), so both
/// sides take exactly the same rows.
pub use mlinfra_test_utils::rng::SplitMix64;

/// The schema of the benchmark dataset: `emb` (`FixedSizeList<Float32, 64>`) and `label`
/// (`Int64`). Every field is nullable (though no value is null), as pyarrow writes by default,
/// so the Parquet files carry the same definition levels whichever library wrote them.
pub fn data_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("emb", DataType::FixedSizeList(item_field(), EMB_DIM), true),
        Field::new("label", DataType::Int64, true),
    ]))
}

fn item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, true))
}

/// Writes `rows` rows of the benchmark dataset to one Parquet file at `path`, the way
/// `compare/data.py` writes them with pyarrow: uncompressed, plain encoding (no dictionary),
/// `row_group_rows` rows per row group, page statistics and the page index (column and offset
/// indexes) written, default 1 MiB data pages. `emb` holds seeded random floats in [-1, 1),
/// `label` seeded values in `0..1000`.
///
/// # Errors
///
/// The file cannot be created or written.
pub fn write_parquet(
    path: &Path,
    rows: usize,
    row_group_rows: usize,
    seed: u64,
) -> parquet::errors::Result<()> {
    let schema = data_schema();
    let properties = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut writer = ArrowWriter::try_new(File::create(path)?, schema.clone(), Some(properties))?;
    let mut rng = SplitMix64::new(seed);
    let mut written = 0;
    while written < rows {
        let n = (rows - written).min(65_536);
        let values: Float32Array = (0..n * EMB_DIM as usize)
            // The top 24 bits as a float in [-1, 1).
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        let emb = FixedSizeListArray::new(item_field(), EMB_DIM, Arc::new(values), None);
        let label: Int64Array = (0..n).map(|_| (rng.next_u64() % 1000) as i64).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(emb) as ArrayRef, Arc::new(label)],
        )?;
        writer.write(&batch)?;
        written += n;
    }
    writer.close()?;
    Ok(())
}

/// The decoded Arrow bytes of `batch` as both sides of a comparison count them: for each
/// column, rows times the fixed width of a row (`FixedSizeList<T, n>`: `n` times the width of
/// `T`). Validity bitmaps and allocation slack are not counted, so the figure is the same
/// whichever library decoded the batch.
///
/// # Panics
///
/// For a column whose rows have no fixed width (strings, variable-size lists).
pub fn decoded_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|column| (column.len() * row_width(column.data_type())) as u64)
        .sum()
}

fn row_width(data_type: &DataType) -> usize {
    match data_type {
        DataType::FixedSizeList(item, n) => *n as usize * row_width(item.data_type()),
        other => other
            .primitive_width()
            .unwrap_or_else(|| panic!("{other} has no fixed row width")),
    }
}

/// The `q`-quantile (0..=1) of `samples` by the nearest-rank method; sorts `samples`.
///
/// # Panics
///
/// When `samples` is empty.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    assert!(!samples.is_empty(), "quantile of no samples");
    samples.sort_by(f64::total_cmp);
    let rank = (q * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first outputs for seed 0, from the reference implementation; `compare/data.py`
    /// checks the same values.
    #[test]
    fn splitmix64_matches_reference() {
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn quantile_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut samples, 0.5), 50.0);
        assert_eq!(quantile(&mut samples, 0.99), 99.0);
        assert_eq!(quantile(&mut samples, 1.0), 100.0);
    }

    #[test]
    fn written_dataset_has_the_declared_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        write_parquet(&path, 1000, 300, 7).unwrap();
        let dataset = mlinfra_data::Dataset::open(path.to_str().unwrap()).unwrap();
        assert_eq!(dataset.num_rows(), 1000);
        assert_eq!(dataset.shards()[0].num_row_groups(), 4);
        let bytes: u64 = dataset
            .scan()
            .build()
            .map(|b| decoded_bytes(&b.unwrap()))
            .sum();
        assert_eq!(bytes, 1000 * (64 * 4 + 8));
    }
}
