//! Parquet open, full scan and `take` of arbitrary bytes. Beyond "no panic, no hang, no
//! out-of-memory", two invariants (issue 21):
//!
//! - **a decode stays under its cap**: no batch a scan hands out holds more than the cap plus
//!   one decode batch (the materialization check stops a decode at the batch that crosses
//!   it);
//! - **`take` agrees with the scan**: when the whole file scans, a `take` of ids picked from
//!   the input's own bytes returns exactly the scanned rows at those ids.
//!
//! Decoder panics inside arrow-rs are contained by mlinfra-data and arrive here as
//! `Error::DecoderPanic` (see `mlinfra_fuzz::allow_contained_panics`); to hunt those upstream
//! bugs too, set `MLINFRA_FUZZ_STRICT=1` and a contained panic aborts the run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use arrow::array::{Array, RecordBatch};
use mlinfra_data::DatasetBuilder;
use mlinfra_data::materialize::DECODE_BATCH_BYTES;

/// A small decode cap keeps every input's memory bounded, which is what the cap is for.
const CAP: u64 = 64 << 20;

/// Bytes `batch` holds for its rows (the referenced part of each buffer).
fn decoded_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|column| {
            let data = column.to_data();
            data.get_slice_memory_size()
                .unwrap_or_else(|_| column.get_buffer_memory_size()) as u64
        })
        .sum()
}

fuzz_target!(|bytes: &[u8]| {
    mlinfra_fuzz::allow_contained_panics();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let Ok(dataset) = DatasetBuilder::new(file.path().to_str().unwrap())
        .with_max_decoded_bytes(CAP)
        .build()
    else {
        return;
    };
    let mut scanned = Vec::new();
    let mut whole = true;
    for batch in dataset.scan().with_batch_size(1024).build() {
        match batch {
            Ok(batch) => {
                let held = decoded_bytes(&batch);
                assert!(held <= CAP + DECODE_BATCH_BYTES, "a batch of {held} bytes");
                scanned.push(batch);
            }
            Err(_) => {
                whole = false;
                break;
            }
        }
    }
    let rows = dataset.num_rows();
    if rows == 0 {
        return;
    }
    // Ids from the input itself: deterministic per input, spread over the file.
    let mut ids: Vec<u64> = bytes
        .chunks(8)
        .take(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(word) % rows
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let Ok(taken) = dataset.take(&ids) else {
        return; // a take may meet a bad page the scan did not reach, or the other way round
    };
    if !whole {
        return;
    }
    let all = arrow::compute::concat_batches(dataset.schema(), &scanned).unwrap();
    assert_eq!(all.num_rows() as u64, rows, "the scan's rows differ from the footer's");
    for (position, &id) in ids.iter().enumerate() {
        assert_eq!(
            taken.slice(position, 1),
            all.slice(id as usize, 1),
            "take of row {id} differs from the scan"
        );
    }
});
