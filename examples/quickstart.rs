//! The quickstart: what each layer of mlinfra does today, and proof of it on this machine.
//!
//! It prints the layers and their status, then runs what exists and checks the results: a
//! sharded Parquet dataset written, opened, sampled with `take`, scanned and cached as memory-mapped
//! Arrow (every value checked) with its fingerprint, one shuffled epoch through the prefetching
//! loader (interrupted and resumed from its saved state, every row once),
//! a matmul on the CPU through burn (against an f64 reference), the GELU kernel on a software
//! Vulkan adapter (against its f64 twin), and a request for `cuda:0` (a typed answer, whether or
//! not the build or the machine has CUDA).
//!
//! Run with: `cargo run --release -p mlinfra-examples --example quickstart`

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use arrow::array::{AsArray, Float32Array, RecordBatch, UInt64Array};
use arrow::datatypes::{Float32Type, UInt64Type};
use burn::tensor::{Tensor, TensorData};
use mlinfra_data::Dataset;
use mlinfra_examples::LAYERS;
use mlinfra_loader::{Device, Loader, LoaderState, Shuffle};
use mlinfra_test_utils::reference::matmul_f64;

fn main() -> Result<()> {
    println!(
        "mlinfra {}: the infrastructure layer of machine learning\n",
        env!("CARGO_PKG_VERSION")
    );
    for layer in LAYERS.iter().rev() {
        println!("  {:>3}  {:<16} {}", layer.level, layer.krate, layer.status);
    }
    println!();

    parquet_dataset()?;
    cpu_matmul()?;
    gelu_kernel()?;
    cuda_request();
    Ok(())
}

/// Four Parquet shards of 25k rows, read back by random access and by a streaming scan.
fn parquet_dataset() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mlinfra-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (shards, rows_per_shard) = (4u64, 25_000u64);
    for shard in 0..shards {
        let ids: Vec<u64> = (shard * rows_per_shard..(shard + 1) * rows_per_shard).collect();
        let score: Float32Array = ids.iter().map(|&id| id as f32 * 0.25).collect();
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(UInt64Array::from(ids)) as _),
            ("score", Arc::new(score) as _),
        ])?;
        let file = std::fs::File::create(dir.join(format!("part-{shard}.parquet")))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
        writer.write(&batch)?;
        writer.close()?;
    }

    let dataset = Dataset::open(dir.to_str().context("temp dir is not UTF-8")?)?;
    ensure!(
        dataset.num_rows() == shards * rows_per_shard,
        "footer row count"
    );
    let wanted: Vec<u64> = (0..256u64)
        .map(|i| (i * 7_919 + 13) % dataset.num_rows())
        .collect();
    let view = dataset.project(&["score", "id"])?;
    let batch = view.take(&wanted)?;
    let ids = batch.column(1).as_primitive::<UInt64Type>().values();
    let scores = batch.column(0).as_primitive::<Float32Type>().values();
    ensure!(
        ids.as_ref() == wanted.as_slice(),
        "take returned other rows"
    );
    ensure!(
        ids.iter()
            .zip(scores.iter())
            .all(|(&id, &s)| s == id as f32 * 0.25),
        "score values"
    );

    let mut scanned = 0u64;
    for batch in dataset.scan().build() {
        let batch = batch?;
        let ids = batch.column(0).as_primitive::<UInt64Type>().values();
        ensure!(
            ids.iter()
                .enumerate()
                .all(|(i, &id)| id == scanned + i as u64),
            "scan order"
        );
        scanned += batch.num_rows() as u64;
    }
    ensure!(scanned == dataset.num_rows(), "scan row count");

    // The dataset's identity (what loaders and checkpoints record), and the memory-mapped Arrow
    // cache the loader reads from: the same rows as the Parquet `take`.
    let fingerprint = dataset.fingerprint()?.to_owned();
    let cache = view.ipc_cache(dir.join("cache")).open_or_create()?;
    ensure!(
        cache.take(&wanted)? == batch,
        "cache take differs from Parquet take"
    );
    let loaded = shuffled_epoch(cache)?;
    std::fs::remove_dir_all(&dir)?;
    println!(
        "data    {} rows in {} parquet files: take of {} random rows, a full scan and the IPC cache, every value checked  ok",
        dataset.num_rows(),
        dataset.shards().len(),
        wanted.len()
    );
    println!("        fingerprint {fingerprint}");
    println!("{loaded}");
    Ok(())
}

/// One shuffled epoch from the IPC cache through the prefetching loader, interrupted after 100
/// batches and resumed from the saved state: every row exactly once, every value checked.
fn shuffled_epoch(cache: mlinfra_data::IpcCache) -> Result<String> {
    let rows = cache.num_rows();
    let cache = Arc::new(cache);
    let loader = |resume: Option<LoaderState>| {
        let builder = Loader::builder(cache.clone(), 256)
            .shuffle(Shuffle::Exact)
            .seed(7)
            .workers(2);
        match resume {
            Some(state) => builder.resume(state).build(),
            None => builder.build(),
        }
    };
    let mut seen = vec![false; rows as usize];
    let mut check = |batch: mlinfra_loader::Batch<mlinfra_loader::TensorBatch>| -> Result<()> {
        let ids = batch.data.get("id").context("id column")?.as_slice::<u64>();
        let scores = batch
            .data
            .get("score")
            .context("score column")?
            .as_slice::<f32>();
        let (ids, scores) = ids.ok().zip(scores.ok()).context("column types")?;
        ensure!(
            ids == batch.ids.as_slice(),
            "batch rows differ from its ids"
        );
        for (&id, &score) in ids.iter().zip(scores) {
            ensure!(score == id as f32 * 0.25, "score of row {id}");
            ensure!(
                !std::mem::replace(&mut seen[id as usize], true),
                "row {id} twice"
            );
        }
        Ok(())
    };
    let started = std::time::Instant::now();
    let mut first = loader(None)?;
    for batch in first.by_ref().take(100) {
        check(batch?)?;
    }
    // What a checkpoint stores; a new loader (here: a new process would do the same) resumes.
    let state: LoaderState = serde_json::from_str(&serde_json::to_string(first.state())?)?;
    drop(first);
    let mut resumed = loader(Some(state))?;
    for batch in resumed.by_ref() {
        check(batch?)?;
    }
    let elapsed = started.elapsed();
    ensure!(seen.iter().all(|&s| s), "rows missing from the epoch");
    Ok(format!(
        "loader  shuffled epoch of {rows} rows from the IPC cache, stopped after 100 batches and resumed from its state: every row once, every value checked, {:.1}M samples/s  ok",
        rows as f64 / elapsed.as_secs_f64() / 1e6
    ))
}

/// burn on the CPU, reached through the run-time device name `cpu`.
fn cpu_matmul() -> Result<()> {
    let device = "cpu".parse::<Device>()?.to_burn()?;
    let (m, k, n) = (64, 128, 32);
    let lhs: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let rhs: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect();
    let expected = matmul_f64(&lhs, &rhs, m, k, n);

    let a = Tensor::<2>::from_data(TensorData::new(lhs, [m, k]), &device);
    let b = Tensor::<2>::from_data(TensorData::new(rhs, [k, n]), &device);
    let got = a
        .matmul(b)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;

    let max_error = got
        .iter()
        .zip(&expected)
        .map(|(&g, &e)| (f64::from(g) - e).abs())
        .fold(0.0, f64::max);
    ensure!(
        max_error < 1e-3,
        "cpu matmul differs from the f64 reference by {max_error:e}"
    );
    println!("cpu     burn flex matmul {m}x{k}x{n}: max |error| vs f64 = {max_error:.1e}  ok");
    Ok(())
}

/// A cubecl kernel on the software Vulkan adapter; a machine without one is told what to install.
fn gelu_kernel() -> Result<()> {
    let device = match mlinfra_kernels::wgpu::software_device() {
        Ok(device) => device,
        Err(error) => {
            println!("kernels unavailable here: {error}");
            return Ok(());
        }
    };
    let input: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5_000.0) / 625.0).collect();
    let output = mlinfra_kernels::gelu_tanh(&device.client(), &input).context("gelu kernel")?;
    let max_error = input
        .iter()
        .zip(&output)
        .map(|(&x, &y)| (f64::from(y) - mlinfra_kernels::gelu_tanh_reference(f64::from(x))).abs())
        .fold(0.0, f64::max);
    ensure!(
        max_error < 1e-5,
        "gelu kernel differs from its f64 twin by {max_error:e}"
    );
    println!(
        "kernels gelu on {} ({} elements): max |error| vs f64 = {max_error:.1e}  ok",
        device.adapter_name(),
        input.len()
    );
    Ok(())
}

/// A GPU request: a device, or a typed error saying why not. Never a panic.
fn cuda_request() {
    match Device::Cuda(0).to_burn() {
        Ok(_) => println!("cuda    cuda:0 is available"),
        Err(error) => println!("cuda    cuda:0 not used: {error}"),
    }
}
