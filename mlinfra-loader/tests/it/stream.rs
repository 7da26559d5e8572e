//! Streaming from an object store (moto's S3 server on 127.0.0.1) through a shard cache whose
//! budget is an eighth of the dataset: every sample once per epoch, the budget never exceeded,
//! shards verified against the manifest, a directory shared safely.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mlinfra_data::{DatasetBuilder, Manifest};
use mlinfra_loader::{Error, Loader, Shuffle, Source, Streaming, StreamingBuilder, Tensors};
use mlinfra_test_utils::stores::ObjectServer;
use mlinfra_test_utils::stores::s3::S3Server;
use parquet::arrow::ArrowWriter;

use crate::fixtures;

const SHARDS: u64 = 16;
const SHARD_ROWS: u64 = 250;

/// Uploads 16 shards of 250 rows to a fresh server; returns it with the dataset's manifest.
fn uploaded() -> Option<(S3Server, Manifest)> {
    let server = S3Server::start()?;
    server.create_bucket("stream");
    for shard in 0..SHARDS {
        let bytes = parquet(shard * SHARD_ROWS..(shard + 1) * SHARD_ROWS);
        server.put("stream", &format!("train/part-{shard:02}.parquet"), &bytes);
    }
    let mut builder = DatasetBuilder::new(server.uri("stream", "train/"));
    for (key, value) in server.storage_options() {
        builder = builder.with_storage_option(key, value);
    }
    let manifest = builder.build().unwrap().manifest().unwrap().clone();
    Some((server, manifest))
}

/// The fixture rows `ids` as a Parquet file's bytes.
fn parquet(ids: std::ops::Range<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, fixtures::schema(), None).unwrap();
    writer.write(&fixtures::batch(ids)).unwrap();
    writer.close().unwrap();
    bytes
}

fn streaming(server: &S3Server, manifest: Manifest, dir: &Path, budget: u64) -> StreamingBuilder {
    let mut builder = Streaming::builder(manifest, dir, budget);
    for (key, value) in server.storage_options() {
        builder = builder.storage_option(key, value);
    }
    builder.columns(["id", "emb", "label"])
}

/// One epoch of `source` (block shuffle, a shard a block): each sample id's count, checking
/// every batch's `id` column and the cache's size after every batch.
fn epoch(source: &Arc<Streaming>, epoch: u64, budget: u64) -> HashMap<u64, u32> {
    let mut loader = Loader::builder(source.clone(), 32)
        .collate(Tensors::new().columns(["id", "emb"]))
        .shuffle(Shuffle::Block {
            block: source.shard_rows(),
            window: 1,
        })
        .seed(3)
        .epoch(epoch)
        .workers(2)
        .build()
        .unwrap();
    let mut seen = HashMap::new();
    for batch in loader.by_ref() {
        let batch = batch.unwrap();
        let column: Vec<i64> = batch.data.get("id").unwrap().try_to_vec().unwrap();
        assert!(column.iter().zip(&batch.ids).all(|(&c, &i)| c as u64 == i));
        for id in batch.ids {
            *seen.entry(id).or_insert(0) += 1;
        }
        let cached = source.cached_bytes().unwrap();
        assert!(cached <= budget, "{cached} bytes cached, budget {budget}");
    }
    seen
}

#[test]
fn an_epoch_streams_every_sample_once_through_an_eighth_of_the_dataset() {
    let Some((server, manifest)) = uploaded() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let total: u64 = manifest.shards().iter().map(|s| s.bytes).sum();
    let budget = total / 8;
    let source = Arc::new(
        streaming(&server, manifest, dir.path(), budget)
            .build()
            .unwrap(),
    );
    assert_eq!(source.num_samples(), SHARDS * SHARD_ROWS);
    for e in 0..2 {
        let seen = epoch(&source, e, budget);
        assert_eq!(seen.len() as u64, SHARDS * SHARD_ROWS, "epoch {e}");
        assert!(seen.values().all(|&n| n == 1), "epoch {e}: a sample twice");
    }
    assert!(source.peak_cached_bytes() <= budget);
    let counters = source.counters();
    assert!(counters.cache_evictions >= 2 * (SHARDS - 2), "{counters:?}");
    assert!(counters.bytes_read >= 2 * total - budget, "{counters:?}");
}

#[test]
fn two_loaders_sharing_a_cache_directory_stay_within_its_budget() {
    let Some((server, manifest)) = uploaded() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let total: u64 = manifest.shards().iter().map(|s| s.bytes).sum();
    let budget = total / 4;
    // Two sources on one directory: what two processes of one machine do (the directory lock
    // is a file lock, which also excludes two opens in one process).
    let sources: Vec<Arc<Streaming>> = (0..2)
        .map(|_| {
            Arc::new(
                streaming(&server, manifest.clone(), dir.path(), budget)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let seen: Vec<HashMap<u64, u32>> = std::thread::scope(|scope| {
        let runs: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(i, source)| scope.spawn(move || epoch(source, i as u64, budget)))
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for seen in seen {
        assert_eq!(seen.len() as u64, SHARDS * SHARD_ROWS);
        assert!(seen.values().all(|&n| n == 1));
    }
    for source in &sources {
        assert!(source.peak_cached_bytes() <= budget);
    }
}

#[test]
fn a_shard_that_differs_from_its_manifest_is_refused_and_not_kept() {
    let Some((server, manifest)) = uploaded() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The object changes after the manifest was made.
    server.put("stream", "train/part-00.parquet", &parquet(9000..9250));
    match streaming(&server, manifest.clone(), dir.path(), u64::MAX).build() {
        Err(Error::ShardCorrupt { uri, reason }) => {
            assert!(uri.ends_with("part-00.parquet"), "{uri}");
            // Another content hash, or (stopped at the recorded size) more bytes.
            assert!(
                reason.contains("content hash") || reason.contains("bytes the manifest records"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".lock")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let largest = manifest.shards().iter().map(|s| s.bytes).max().unwrap();
    match streaming(&server, manifest, dir.path(), largest - 1).build() {
        Err(Error::CacheBudget { needed, budget }) => {
            assert_eq!((needed, budget), (largest, largest - 1));
        }
        other => panic!("{other:?}"),
    }
}

/// A local dataset of `shards` shards of 100 rows and its manifest: streaming reads local
/// paths as it reads object stores, which is all the cache's own behaviour needs.
fn local_dataset(dir: &Path, shards: u64) -> Manifest {
    for shard in 0..shards {
        let bytes = parquet(shard * 100..(shard + 1) * 100);
        std::fs::write(dir.join(format!("part-{shard:02}.parquet")), bytes).unwrap();
    }
    DatasetBuilder::new(dir.to_str().unwrap())
        .build()
        .unwrap()
        .manifest()
        .unwrap()
        .clone()
}

/// Issue 21 (sibling of defect 8): a file in a shared cache directory was trusted because of
/// its name. One that is not the shard its name promises (same size, other bytes) is now
/// found out, downloaded again, and the rows read are the right ones.
#[test]
fn a_cached_file_that_is_not_its_shard_is_downloaded_again() {
    let data = tempfile::tempdir().unwrap();
    let manifest = local_dataset(data.path(), 2);
    let cache = tempfile::tempdir().unwrap();
    let builder = || Streaming::builder(manifest.clone(), cache.path(), u64::MAX);
    drop(builder().build().unwrap()); // caches shard 0
    let hash = manifest.shards()[0]
        .content_hash
        .strip_prefix("blake3:")
        .unwrap();
    let cached = cache.path().join(format!("{hash}.parquet"));
    // Another shard's bytes, cut or padded to the size the manifest records.
    let mut forged = std::fs::read(data.path().join("part-01.parquet")).unwrap();
    forged.resize(manifest.shards()[0].bytes as usize, 0);
    std::fs::write(&cached, forged).unwrap();
    let source = builder().build().unwrap();
    let rows = source.rows(&[0, 99]).unwrap();
    let ids: Vec<u64> = rows
        .rows()
        .iter()
        .map(|&(batch, row)| {
            let column = rows.batches()[batch].column_by_name("id").unwrap();
            let ids = column
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            ids.value(row) as u64
        })
        .collect();
    assert_eq!(ids, [0, 99]);
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(data.path().join("part-00.parquet")).unwrap()
    );
}

/// Issue 21 (sibling): dropping a source waited for its fetcher, and a fetcher waiting for
/// the directory lock (held by another process's download) held up the drop for as long.
/// The fetcher now gives up when its source is dropped.
#[test]
fn dropping_a_source_does_not_wait_for_anothers_lock() {
    let data = tempfile::tempdir().unwrap();
    let manifest = local_dataset(data.path(), 2);
    let cache = tempfile::tempdir().unwrap();
    let source = Streaming::builder(manifest, cache.path(), u64::MAX)
        .build()
        .unwrap();
    // Another holder of the lock (another process: a second open file description).
    let lock = std::fs::File::options()
        .write(true)
        .open(cache.path().join(".lock"))
        .unwrap();
    lock.lock().unwrap();
    source.prefetch(0, &[150]); // shard 1: the fetcher now waits for the lock
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(source);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("dropping the source waited for the lock");
    drop(lock);
}
