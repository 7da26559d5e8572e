//! Data-layer benchmarks: scan throughput and `take` latency of `mlinfra-data`.
//!
//! The dataset is written here, into a temporary directory: [`ROWS`] rows (one Parquet file,
//! `emb` `FixedSizeList<f32, 64>` + `label` `Int64`, uncompressed, page index), an eighth of
//! the 2M rows of the side-by-side comparison (`compare/data.sh`) so that the whole group runs
//! in about two minutes. Throughput is the decoded Arrow bytes of the two columns
//! ([`decoded_bytes`]), the same measure the comparison uses. Every file is read once before
//! timing, so these are page-cache figures, not disk figures.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use mlinfra_benches::{DATA_COLUMNS, SplitMix64, TAKE_ROWS, decoded_bytes, write_parquet};
use mlinfra_data::Dataset;

/// Rows in the benchmark dataset: 256 Ki, 66 MiB decoded.
const ROWS: usize = 1 << 18;

/// Rows per row group: eight row groups, so a scan has parallel work.
const ROW_GROUP_ROWS: usize = 1 << 15;

/// Distinct seeded index sets the `take` benchmarks cycle through, so one lucky (or unlucky)
/// set of rows does not decide the figure.
const INDEX_SETS: usize = 64;

fn data(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("data.parquet");
    write_parquet(&path, ROWS, ROW_GROUP_ROWS, 42).expect("write the benchmark dataset");
    let dataset = Dataset::open(path.to_str().expect("UTF-8 temporary path"))
        .and_then(|d| d.project(&DATA_COLUMNS))
        .expect("open the benchmark dataset");
    let cache = dataset
        .ipc_cache(dir.path().join("cache"))
        .open_or_create()
        .expect("build the IPC cache");
    let total_bytes: u64 = dataset
        .scan()
        .build()
        .map(|batch| decoded_bytes(&batch.expect("scan")))
        .sum();
    let mut rng = SplitMix64::new(7);
    let index_sets: Vec<Vec<u64>> = (0..INDEX_SETS)
        .map(|_| rng.indices(TAKE_ROWS, ROWS as u64))
        .collect();
    // First touch decodes a cache batch (once); measure the steady state.
    for indices in &index_sets {
        cache.take(indices).expect("warm the cache");
    }

    let mut group = c.benchmark_group("data");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(total_bytes));
    group.bench_function("Dataset::scan", |b| {
        b.iter(|| {
            let mut rows = 0;
            for batch in dataset.scan().build() {
                rows += black_box(batch.expect("scan")).num_rows();
            }
            assert_eq!(rows, ROWS);
        })
    });

    group.throughput(Throughput::Elements(TAKE_ROWS as u64));
    let mut next = 0;
    group.bench_function("Dataset::take", |b| {
        b.iter(|| {
            next = (next + 1) % INDEX_SETS;
            dataset.take(black_box(&index_sets[next])).expect("take")
        })
    });
    group.sample_size(50);
    group.bench_function("IpcCache::take", |b| {
        b.iter(|| {
            next = (next + 1) % INDEX_SETS;
            cache.take(black_box(&index_sets[next])).expect("take")
        })
    });
    group.finish();
}

criterion_group!(benches, data);
