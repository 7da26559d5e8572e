//! Loader benchmarks: the epoch plan's cost per sample and the pipeline's per-batch overhead
//! and throughput over the IPC cache.
//!
//! The dataset is [`ROWS`] rows of `emb` `FixedSizeList<f32, 64>` + `label` `Int64` (the
//! workload of `compare/loader.sh`), written here and cached as memory-mapped Arrow IPC; the
//! cache is read once before timing, so these are page-cache figures.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group};
use mlinfra_benches::{DATA_COLUMNS, write_parquet};
use mlinfra_data::Dataset;
use mlinfra_loader::collate::ArrowRows;
use mlinfra_loader::{EpochPlan, Loader, Shuffle};

/// Rows in the benchmark dataset: 64 Ki, about 17 MiB.
const ROWS: usize = 1 << 16;

/// Positions per plan measurement.
const POSITIONS: u64 = 1 << 16;

fn loader(c: &mut Criterion) {
    let mut group = c.benchmark_group("loader");
    group.throughput(Throughput::Elements(POSITIONS));
    for (name, shuffle) in [
        ("plan/exact", Shuffle::Exact),
        (
            "plan/block",
            Shuffle::Block {
                block: 8192,
                window: 16,
            },
        ),
    ] {
        let plan = EpochPlan::new(1 << 30, "blake3:bench", 0, 0, shuffle).expect("a valid plan");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for position in 0..POSITIONS {
                    sum = sum.wrapping_add(plan.sample_at(black_box(position)).expect("in range"));
                }
                sum
            })
        });
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("data.parquet");
    write_parquet(&path, ROWS, ROWS, 42).expect("write the benchmark dataset");
    let cache = Dataset::open(path.to_str().expect("UTF-8 temporary path"))
        .and_then(|d| d.project(&DATA_COLUMNS))
        .and_then(|d| d.ipc_cache(dir.path().join("cache")).open_or_create())
        .expect("build the IPC cache");
    let cache = Arc::new(cache);
    cache.take(&[0]).expect("warm the cache");

    // A whole shuffled epoch into burn tensor data, batches of 256, two workers.
    group.sample_size(20);
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("epoch/exact/256", |b| {
        b.iter(|| {
            let loader = Loader::builder(cache.clone(), 256)
                .shuffle(Shuffle::Exact)
                .workers(2)
                .build()
                .expect("build the loader");
            let mut samples = 0;
            for batch in loader {
                samples += black_box(batch.expect("a batch")).ids.len();
            }
            assert_eq!(samples, ROWS);
        })
    });

    // Per-batch overhead: batches of one row, so the tickets, channels, reorder buffer and
    // thread hand-offs dominate.
    const BATCHES: usize = 4096;
    group.throughput(Throughput::Elements(BATCHES as u64));
    group.bench_function("overhead/batch-of-1", |b| {
        b.iter(|| {
            let loader = Loader::builder(cache.clone(), 1)
                .collate(ArrowRows)
                .workers(2)
                .build()
                .expect("build the loader");
            let mut batches = 0;
            for batch in loader.take(BATCHES) {
                black_box(batch.expect("a batch"));
                batches += 1;
            }
            assert_eq!(batches, BATCHES);
        })
    });
    group.finish();
}

criterion_group!(benches, loader);
