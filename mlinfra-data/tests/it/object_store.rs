//! Datasets in object stores, read from real servers on 127.0.0.1: moto's S3, fake-gcs-server
//! and Azurite (see `mlinfra_test_utils::stores`). Every answer is compared with the same files
//! read locally. The store-independent tests run against all three; the rest against S3.

use std::path::Path;

use arrow::array::RecordBatch;
use mlinfra_data::{Dataset, DatasetBuilder, Error};
use mlinfra_test_utils::rng::SplitMix64;
use mlinfra_test_utils::stores::ObjectServer;
use mlinfra_test_utils::stores::azure::AzureServer;
use mlinfra_test_utils::stores::gcs::GcsServer;
use mlinfra_test_utils::stores::s3::S3Server;

use crate::fixtures::{Layout, write_dataset};

const BUCKET: &str = "datasets";

/// A local dataset of three shards (with non-dataset files beside them) uploaded under
/// `train/` of the bucket `datasets`; the server and the local directory.
fn uploaded<S: ObjectServer>() -> Option<(S, tempfile::TempDir)> {
    let server = S::start()?;
    server.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    write_dataset(
        dir.path(),
        &Layout {
            rows_per_file: vec![3_000, 1, 2_500],
            row_group_rows: 1_000,
            page_rows: 100,
        },
    );
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        server.put(
            BUCKET,
            &format!("train/{name}"),
            &std::fs::read(&path).unwrap(),
        );
    }
    // What Spark leaves beside its output, and a file that is not Parquet: both skipped.
    server.put(BUCKET, "train/_SUCCESS", b"");
    server.put(BUCKET, "train/README.md", b"not parquet");
    Some((server, dir))
}

fn builder<S: ObjectServer>(server: &S, uri: &str) -> DatasetBuilder {
    server
        .storage_options()
        .into_iter()
        .fold(DatasetBuilder::new(uri), |builder, (key, value)| {
            builder.with_storage_option(key, value)
        })
}

fn open<S: ObjectServer>(server: &S, uri: &str) -> mlinfra_data::Result<Dataset> {
    builder(server, uri).build()
}

fn scan_all(dataset: &Dataset) -> RecordBatch {
    let batches: Vec<RecordBatch> = dataset.scan().build().map(Result::unwrap).collect();
    arrow::compute::concat_batches(dataset.schema(), &batches).unwrap()
}

fn open_local(dir: &Path) -> Dataset {
    Dataset::open(dir.to_str().unwrap()).unwrap()
}

/// The file name of the dataset's first shard.
fn first_file_name(dataset: &Dataset) -> String {
    let path = dataset.shards()[0].path();
    path.file_name().unwrap().to_str().unwrap().to_owned()
}

/// One `#[test]` per store for a test generic over the server.
macro_rules! on_every_store {
    ($test:ident) => {
        mod $test {
            use super::*;

            #[test]
            fn s3() {
                super::$test::<S3Server>();
            }

            #[test]
            fn gcs() {
                super::$test::<GcsServer>();
            }

            #[test]
            fn azure() {
                super::$test::<AzureServer>();
            }
        }
    };
}

on_every_store!(a_prefix_reads_like_the_local_copy);
on_every_store!(globs_and_single_objects_resolve);
on_every_store!(the_fingerprint_is_the_same_wherever_the_bytes_live);

fn a_prefix_reads_like_the_local_copy<S: ObjectServer>() {
    let Some((server, dir)) = uploaded::<S>() else {
        return;
    };
    let prefix = server.uri(BUCKET, "train/");
    let remote = open(&server, &prefix).unwrap();
    let local = open_local(dir.path());

    let names: Vec<String> = remote
        .shards()
        .iter()
        .map(|s| s.path().to_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = local
        .shards()
        .iter()
        .map(|s| {
            let name = s.path().file_name().unwrap().to_str().unwrap();
            format!("{prefix}{name}")
        })
        .collect();
    assert_eq!(names, expected);
    assert_eq!(remote.num_rows(), 5_501);
    assert_eq!(remote.schema(), local.schema());
    assert_eq!(remote.bytes_read(), 0, "opening reads only footers");

    let mut rng = SplitMix64::new(11);
    let rows = rng.indices(200, remote.num_rows());
    assert_eq!(remote.take(&rows).unwrap(), local.take(&rows).unwrap());
    assert_eq!(scan_all(&remote), scan_all(&local));
    mlinfra_test_utils::log_line(&format!(
        "{prefix}: take of 200 rows and a full scan: {} GETs for {} bytes",
        remote.read_requests(),
        remote.bytes_read()
    ));
}

#[test]
fn coalescing_turns_nearby_pages_into_one_get() {
    let Some((server, _dir)) = uploaded::<S3Server>() else {
        return;
    };
    let exact = builder(&server, "s3://datasets/train/")
        .with_coalesce_gap(0)
        .build()
        .unwrap()
        .project(&["id"])
        .unwrap();
    let coalesced = open(&server, "s3://datasets/train/")
        .unwrap()
        .project(&["id"])
        .unwrap();
    // One row on every other page of the first row group (pages of 100 rows): adjacent pages
    // would merge even without a gap.
    let rows: Vec<u64> = (0..5).map(|page| page * 200 + 7).collect();
    assert_eq!(exact.take(&rows).unwrap(), coalesced.take(&rows).unwrap());
    mlinfra_test_utils::log_line(&format!(
        "s3 coalescing: {} GETs exactly, {} coalesced (1 MiB gap)",
        exact.read_requests(),
        coalesced.read_requests()
    ));
    // Five pages apart (four, when the writer's page boundaries put two rows on one page).
    assert!(exact.read_requests() >= 4, "{}", exact.read_requests());
    assert_eq!(coalesced.read_requests(), 1);
}

fn globs_and_single_objects_resolve<S: ObjectServer>() {
    let Some((server, dir)) = uploaded::<S>() else {
        return;
    };
    let local = open_local(dir.path());
    let first = first_file_name(&local);

    let one = open(&server, &server.uri(BUCKET, &format!("train/{first}"))).unwrap();
    assert_eq!(one.shards().len(), 1);
    assert_eq!(one.num_rows(), local.shards()[0].num_rows());

    let globbed = open(&server, &server.uri(BUCKET, "train/*.parquet")).unwrap();
    assert_eq!(globbed.num_rows(), local.num_rows());
    assert_eq!(globbed.shards().len(), 3);
    // `*` does not cross `/`: nothing sits directly under the bucket.
    assert!(matches!(
        open(&server, &server.uri(BUCKET, "*.parquet")),
        Err(Error::NoFiles { .. })
    ));
}

fn the_fingerprint_is_the_same_wherever_the_bytes_live<S: ObjectServer>() {
    let Some((server, dir)) = uploaded::<S>() else {
        return;
    };
    let prefix = server.uri(BUCKET, "train/");
    let remote = open(&server, &prefix).unwrap();
    let local = open_local(dir.path());
    assert_eq!(remote.fingerprint().unwrap(), local.fingerprint().unwrap());
    let manifest = remote.manifest().unwrap();
    assert!(manifest.shards()[0].uri.starts_with(&prefix));
    let bucket_root = server.uri(BUCKET, "");

    let options = server.storage_options();
    let clean = manifest.verify_with(&options).unwrap();
    assert!(
        clean.changed.is_empty() && clean.missing.is_empty(),
        "{clean:?}"
    );
    // Rewrite one shard (same length, one byte changed) and delete another.
    let changed = &manifest.shards()[0].uri;
    let key = changed.strip_prefix(&bucket_root).unwrap();
    let mut bytes = std::fs::read(local.shards()[0].path()).unwrap();
    bytes[4] ^= 0xff;
    server.put(BUCKET, key, &bytes);
    let missing = &manifest.shards()[2].uri;
    server.delete(BUCKET, missing.strip_prefix(&bucket_root).unwrap());
    let verification = manifest.verify_with(&options).unwrap();
    assert_eq!(verification.missing, vec![missing.clone()]);
    assert_eq!(verification.changed.len(), 1);
    assert_eq!(&verification.changed[0].uri, changed);
}

#[test]
fn plain_http_reads_a_public_object() {
    let Some((server, dir)) = uploaded::<S3Server>() else {
        return;
    };
    let local = open_local(dir.path());
    let first = first_file_name(&local);
    let uri = format!("{}/datasets/train/{first}", server.endpoint());
    let dataset = DatasetBuilder::new(uri.as_str())
        .with_storage_option("allow_http", "true")
        .build()
        .unwrap();
    assert_eq!(dataset.shards()[0].path().to_str().unwrap(), uri);
    let rows = [0, 999, 1_000, 2_999];
    assert_eq!(dataset.take(&rows).unwrap(), local.take(&rows).unwrap());
}

#[test]
fn remote_failures_are_typed_errors() {
    let Some((server, dir)) = uploaded::<S3Server>() else {
        return;
    };
    // An empty prefix and a bucket that does not exist.
    assert!(matches!(
        open(&server, "s3://datasets/nothing-here/"),
        Err(Error::NoFiles { .. })
    ));
    match open(&server, "s3://no-such-bucket/train/") {
        Err(Error::ObjectStore { uri, .. }) => assert_eq!(&*uri, "s3://no-such-bucket/train/"),
        other => panic!("{other:?}"),
    }
    // An unknown option is refused, not ignored.
    match DatasetBuilder::new("s3://datasets/train/")
        .with_storage_option("aws_endpoint_typo", "x")
        .build()
    {
        Err(Error::InvalidOption { reason, .. }) => assert!(reason.contains("aws_endpoint_typo")),
        other => panic!("{other:?}"),
    }
    // A truncated object: its footer is gone.
    let local = open_local(dir.path());
    let bytes = std::fs::read(local.shards()[0].path()).unwrap();
    server.put_public(BUCKET, "cut/a.parquet", &bytes[..bytes.len() / 2]);
    match open(&server, "s3://datasets/cut/a.parquet") {
        Err(Error::Parquet { path, .. }) => {
            assert_eq!(path.to_str().unwrap(), "s3://datasets/cut/a.parquet")
        }
        other => panic!("{other:?}"),
    }
}
