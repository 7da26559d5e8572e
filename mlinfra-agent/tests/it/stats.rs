//! `dataset_stats` against statistics computed here, two-pass in f64: over several files and
//! batches, with nulls, NaNs and values whose spread is tiny beside their size (where a sum of
//! squares would cancel).

use std::sync::Arc;

use arrow::array::{Float64Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use serde_json::{Value, json};

use crate::common::{Pipe, call};

fn write(
    path: &std::path::Path,
    big: Vec<Option<f64>>,
    small: Vec<Option<i32>>,
    text: Vec<Option<&str>>,
) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("big", DataType::Float64, true),
        Field::new("small", DataType::Int32, true),
        Field::new("text", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Float64Array::from(big)),
            Arc::new(Int32Array::from(small)),
            Arc::new(StringArray::from(text)),
        ],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    // Two row groups per file: the statistics merge across batches and files.
    let half = batch.num_rows() / 2;
    writer.write(&batch.slice(0, half)).unwrap();
    writer.flush().unwrap();
    writer
        .write(&batch.slice(half, batch.num_rows() - half))
        .unwrap();
    writer.close().unwrap();
}

/// Mean and sample standard deviation, two passes in f64.
fn reference(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn close(actual: &Value, expected: f64) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {actual}"));
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{actual} != {expected}"
    );
}

#[tokio::test]
async fn dataset_stats_matches_a_two_pass_reference() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    std::fs::create_dir_all(data.join("table")).unwrap();
    let bigs: Vec<f64> = (0..40).map(|i| 1e9 + (i % 7) as f64 * 0.25).collect();
    let smalls: Vec<i32> = (0..40).map(|i| i * 3 - 50).collect();
    let mut big: Vec<Option<f64>> = bigs.iter().copied().map(Some).collect();
    big[3] = None;
    big[5] = Some(f64::NAN);
    let mut small: Vec<Option<i32>> = smalls.iter().copied().map(Some).collect();
    small[10] = None;
    small[11] = None;
    let words = ["a", "bb", "", "dddd", "eeeee"];
    let text: Vec<Option<&str>> = (0..40)
        .map(|i| (i % 9 != 0).then(|| words[i % 5]))
        .collect();
    write(
        &data.join("table/part-0.parquet"),
        big[..20].to_vec(),
        small[..20].to_vec(),
        text[..20].to_vec(),
    );
    write(
        &data.join("table/part-1.parquet"),
        big[20..].to_vec(),
        small[20..].to_vec(),
        text[20..].to_vec(),
    );

    let server = mlinfra_agent::AgentServer::new(mlinfra_agent::DataRoot::new(&data).unwrap());
    let mut pipe = Pipe::open(server).await;
    let result = pipe
        .result(call(2, "dataset_stats", json!({"path": "table"})))
        .await;
    let report = &result["structuredContent"];
    assert_eq!(report["rows"], 40, "{result}");
    let [big_stats, small_stats, text_stats] =
        <[Value; 3]>::try_from(report["columns"].as_array().unwrap().clone()).unwrap();

    let big_values: Vec<f64> = big
        .iter()
        .flatten()
        .copied()
        .filter(|x| !x.is_nan())
        .collect();
    let (mean, std) = reference(&big_values);
    assert_eq!(
        big_stats["count"], 39,
        "NaN counts as a value, null does not"
    );
    assert_eq!(big_stats["nulls"], 1);
    close(&big_stats["mean"], mean);
    close(&big_stats["std"], std);
    close(&big_stats["min"], 1e9);
    close(&big_stats["max"], 1e9 + 1.5);

    let small_values: Vec<f64> = small.iter().flatten().map(|&x| f64::from(x)).collect();
    let (mean, std) = reference(&small_values);
    assert_eq!(small_stats["nulls"], 2);
    close(&small_stats["mean"], mean);
    close(&small_stats["std"], std);
    close(&small_stats["min"], -50.0);
    close(&small_stats["max"], 67.0);

    let present: Vec<&str> = text.iter().flatten().copied().collect();
    assert_eq!(text_stats["nulls"], (40 - present.len()) as u64);
    assert_eq!(text_stats["min_length"], 0);
    assert_eq!(text_stats["max_length"], 5);
    assert_eq!(text_stats["mean"], Value::Null);

    let refused = pipe
        .result(call(3, "dataset_stats", json!({"path": "../data"})))
        .await;
    assert_eq!(refused["isError"], true, "{refused}");
    pipe.close().await;
}
