//! The memory-mapped IPC reader (the cache's) on arbitrary bytes: open, then decode every
//! batch. Any outcome but a panic or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlinfra_data::IpcFile;

fuzz_target!(|bytes: &[u8]| {
    mlinfra_fuzz::allow_contained_panics();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    if let Ok(ipc) = IpcFile::open(file.path()) {
        for batch in 0..ipc.num_batches() {
            if ipc.batch(batch).is_err() {
                break;
            }
        }
    }
});
