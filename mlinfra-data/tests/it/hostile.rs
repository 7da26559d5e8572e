//! Issue 21's hostile inputs to the data layer: files that decode to far more than they hold,
//! and names that are not regular files. Each test failed (an abort, a hang, a huge write)
//! before its fix.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use mlinfra_data::tensor::{GgufFile, SafetensorsFile};
use mlinfra_data::{Dataset, DatasetBuilder, Error};
use mlinfra_test_utils::hostile::{mkfifo, within_seconds};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Writes `rows` rows of one string column `text`, every row the same `value_len`-byte value,
/// dictionary-encoded and compressed: a file of a few kilobytes whose decode repeats the value
/// once per row.
fn dictionary_bomb(path: &Path, rows: usize, value_len: usize, row_group_rows: usize) {
    let value = "x".repeat(value_len);
    let array = StringArray::from(vec![value.as_str(); rows]);
    let batch = RecordBatch::try_from_iter([("text", Arc::new(array) as ArrayRef)]).unwrap();
    let properties = WriterProperties::builder()
        .set_dictionary_enabled(true)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn assert_materialize_limit<T>(result: Result<T, Error>, limit: u64) {
    match result {
        Err(Error::MaterializeLimit {
            column, limit: at, ..
        }) => {
            assert_eq!(&*column, "text");
            assert_eq!(at, limit);
        }
        // Not the batches themselves: gigabytes of them would be the message.
        Ok(_) => panic!("expected MaterializeLimit, the decode succeeded"),
        Err(other) => panic!("expected MaterializeLimit, got {other:?}"),
    }
}

/// Defect 1: the decode cap was compared with the footer's page sizes, which a dictionary
/// makes tiny: 4,000 rows referencing one 256 KiB value are a ~13 KB file that decodes to
/// 1 GB. A scan, a `take`, a `take` repeating one row, and a cache build are all stopped
/// near the cap with an error naming the file and the column; small reads still work.
#[test]
fn a_dictionary_bomb_is_stopped_at_the_cap_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.parquet");
    dictionary_bomb(&path, 4000, 256 << 10, 4000);
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    assert!(file_bytes < 64 << 10, "the bomb is {file_bytes} bytes");
    let limit = 16 << 20;
    let dataset = DatasetBuilder::new(path.to_str().unwrap())
        .with_max_decoded_bytes(limit)
        .build()
        .unwrap();

    assert_materialize_limit(dataset.scan().build().collect::<Result<Vec<_>, _>>(), limit);
    let many: Vec<u64> = (0..4000).step_by(4).collect();
    assert_materialize_limit(dataset.take(&many), limit);
    // One row asked for 100 times is 100 copies of it.
    assert_materialize_limit(dataset.take(&[7; 100]), limit);
    // What fits the cap is read, whole and right.
    let few = dataset.take(&[3, 3999, 3]).unwrap();
    let text = few
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(text.iter().all(|v| v.is_some_and(|v| v.len() == 256 << 10)));
    assert_eq!(text.len(), 3);

    // A cache build is capped by default at 100x its source (at least 64 MiB); the dataset's
    // own cap is left at its default here, so the cache's is what stops it.
    let dir2 = tempfile::tempdir().unwrap();
    let small_groups = dir2.path().join("bomb.parquet");
    dictionary_bomb(&small_groups, 1000, 256 << 10, 100);
    let dataset = Dataset::open(small_groups.to_str().unwrap()).unwrap();
    let cache_dir = dir2.path().join("cache");
    match dataset.ipc_cache(&cache_dir).create() {
        Err(Error::MaterializeLimit { column, limit, .. }) => {
            assert_eq!(&*column, "text");
            assert_eq!(limit, mlinfra_data::cache::DEFAULT_MIN_MAX_BYTES);
        }
        other => panic!("expected MaterializeLimit, got {other:?}"),
    }
    assert!(!cache_dir.exists(), "a refused build leaves no cache");
    // Raised on purpose, it builds.
    let cache = dataset
        .ipc_cache(&cache_dir)
        .with_max_bytes(1 << 30)
        .create()
        .unwrap();
    assert_eq!(cache.num_rows(), 1000);
}

/// Defect 6 (the data layer's part): a FIFO named `*.parquet` in a dataset directory, or
/// passed as a model, blocked `open` for ever; `/dev/zero` behind a symlink read without end.
/// Now each is a typed I/O error, at once.
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    crate::fixtures::write_dataset(
        &data,
        &crate::fixtures::Layout {
            rows_per_file: vec![10],
            row_group_rows: 10,
            page_rows: 10,
        },
    );
    mkfifo(&data.join("zz-pipe.parquet"));
    let uri = data.to_str().unwrap().to_owned();
    match within_seconds("a dataset directory with a FIFO", move || {
        Dataset::open(uri)
    }) {
        Err(Error::Io { path, source }) => {
            assert!(path.ends_with("zz-pipe.parquet"), "{path:?}");
            assert!(source.to_string().contains("FIFO"), "{source}");
        }
        other => panic!("expected an I/O error naming the FIFO, got {other:?}"),
    }

    let model = dir.path().join("model.gguf");
    mkfifo(&model);
    let fifo = model.clone();
    let gguf = within_seconds("a FIFO as a GGUF model", move || {
        GgufFile::open(&fifo).err()
    });
    assert!(matches!(gguf, Some(Error::Io { .. })), "{gguf:?}");
    let fifo = model.clone();
    let safetensors = within_seconds("a FIFO as safetensors", move || {
        SafetensorsFile::open(&fifo).err()
    });
    assert!(
        matches!(safetensors, Some(Error::Io { .. })),
        "{safetensors:?}"
    );

    let zero = dir.path().join("zero.parquet");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let uri = zero.to_str().unwrap().to_owned();
    let device = within_seconds("/dev/zero as a dataset", move || Dataset::open(uri).err());
    assert!(matches!(device, Some(Error::Io { .. })), "{device:?}");
    let manifest = within_seconds("/dev/zero as a manifest", move || {
        mlinfra_data::Manifest::read(&zero).err()
    });
    assert!(matches!(manifest, Some(Error::Io { .. })), "{manifest:?}");
}
