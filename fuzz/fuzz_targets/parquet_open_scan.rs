//! Parquet open + take + full scan of arbitrary bytes: any outcome but a panic, a hang or an
//! out-of-memory. Decoder panics inside arrow-rs are contained by mlinfra-data and arrive here
//! as `Error::DecoderPanic` (see `mlinfra_fuzz::allow_contained_panics`); to hunt those
//! upstream bugs too, set `MLINFRA_FUZZ_STRICT=1` and a contained panic aborts the run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlinfra_data::DatasetBuilder;

fuzz_target!(|bytes: &[u8]| {
    mlinfra_fuzz::allow_contained_panics();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    // A small decode cap keeps every input's memory bounded, which is what the cap is for.
    let Ok(dataset) = DatasetBuilder::new(file.path().to_str().unwrap())
        .with_max_decoded_bytes(64 << 20)
        .build()
    else {
        return;
    };
    if dataset.num_rows() > 0 {
        let _ = dataset.take(&[0, dataset.num_rows() / 2, dataset.num_rows() - 1]);
    }
    for batch in dataset.scan().with_batch_size(1024).build() {
        if batch.is_err() {
            break;
        }
    }
});
