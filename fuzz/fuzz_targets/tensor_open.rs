//! GGUF and safetensors readers on arbitrary bytes: open, then read and convert every tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlinfra_data::tensor::{GgufFile, SafetensorsFile};

fuzz_target!(|bytes: &[u8]| {
    mlinfra_fuzz::allow_contained_panics();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    if let Ok(gguf) = GgufFile::open(file.path()) {
        let names: Vec<String> = gguf.tensors().iter().map(|t| t.name().to_owned()).collect();
        for name in names {
            let _ = gguf.dequantize_f32(&name);
        }
    }
    if let Ok(st) = SafetensorsFile::open(file.path()) {
        let names: Vec<String> = st.tensors().iter().map(|t| t.name().to_owned()).collect();
        for name in names {
            let _ = st.to_f32(&name);
        }
    }
});
