//! Memory-mapped tensor files: GGUF and safetensors.
//!
//! Model weights arrive in one of two single-file formats: GGUF (llama.cpp's, usually
//! quantized, with rich typed metadata) and safetensors (Hugging Face's, plain dtypes, a JSON
//! header). Both readers here map the file read-only, parse and validate the header once into
//! owned values, and then serve each tensor as a `&[u8]` into the mapping: opening a 10 GB
//! model costs the header, and reading a tensor costs nothing until its pages are touched.
//! Conversion to `f32` is explicit and allocates.
//!
//! # Quick start
//!
//! ```no_run
//! use mlinfra_data::tensor::{GgufFile, SafetensorsFile};
//!
//! let gguf = GgufFile::open("model.Q4_K_M.gguf")?;
//! let arch = gguf.get("general.architecture").and_then(|v| v.as_str());
//! for info in gguf.tensors() {
//!     println!("{} {:?} {}", info.name(), info.shape(), info.ggml_type());
//! }
//! let weights: Vec<f32> = gguf.dequantize_f32("token_embd.weight")?;
//! # let _ = (arch, weights);
//!
//! let st = SafetensorsFile::open("model.safetensors")?;
//! let bytes: &[u8] = st.tensor("lm_head.weight")?.bytes(); // zero-copy
//! let values = st.to_f32("lm_head.weight")?;
//! # let _ = (bytes, values);
//! # Ok::<(), mlinfra_data::Error>(())
//! ```
//!
//! # Principal types
//!
//! - [`GgufFile`]: metadata ([`GgufValue`], [`GgufArray`]), tensor infos
//!   ([`GgufTensorInfo`], element type [`GgmlType`]), tensors ([`GgufTensor`]) and
//!   dequantization to `f32`.
//! - [`SafetensorsFile`]: `__metadata__`, tensor infos ([`SafetensorsTensorInfo`]) and tensors
//!   ([`SafetensorsTensor`]).
//!
//! # Choosing between the formats
//!
//! | | GGUF | safetensors |
//! |---|---|---|
//! | element types | plain and ggml block quantizations ([`GgmlType`]) | plain dtypes ([`SafetensorsDtype`]) |
//! | shape order | ggml: `shape[0]` fastest (`[cols, rows]`) | row-major: slowest first (`[rows, cols]`) |
//! | metadata | typed values, arrays (tokenizers live here) | a string-to-string map |
//! | alignment of data | `general.alignment` (32 by default) | none |
//!
//! Mind the shape order when moving a tensor between the two: the same matrix is `[cols,
//! rows]` in GGUF and `[rows, cols]` in safetensors, with identical bytes.
//!
//! # Untrusted files
//!
//! Both readers treat the file as hostile: every count, length and offset is checked against
//! the file's size before use, so a malformed file yields [`Error::TensorFile`] naming what is
//! wrong and where, never a panic, a hang or an allocation out of proportion to the file.
//!
//! # The mapping contract
//!
//! Mapping a file is `unsafe` in Rust because the mapped bytes can change underneath: the
//! readers assume that the file is neither modified nor truncated while it is open, which is
//! how model files are used (written once, then only read). Violating this can make reads
//! return changed data or raise `SIGBUS`.
//!
//! [`Error::TensorFile`]: crate::Error::TensorFile

mod cursor;
mod dequant;
mod ggml_type;
mod gguf;
mod safetensors;

use crate::mmap::map_file;

use std::fmt;

pub use self::gguf::{
    DEFAULT_ALIGNMENT, GgufArray, GgufFile, GgufTensor, GgufTensorInfo, GgufValue, GgufValueType,
};
pub use self::safetensors::{SafetensorsFile, SafetensorsTensor, SafetensorsTensorInfo};
/// The element type of a safetensors tensor (the `safetensors` crate's `Dtype`).
pub use ::safetensors::Dtype as SafetensorsDtype;
pub use cursor::quoted;
pub use dequant::{dequantize_into, q5_codes, scale_min_k4 as q4_k_scale_min};
pub use ggml_type::GgmlType;

/// The format of a tensor file, as named in [`Error::TensorFile`](crate::Error::TensorFile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TensorFormat {
    /// GGUF, llama.cpp's format.
    Gguf,
    /// safetensors, Hugging Face's format.
    Safetensors,
}

impl fmt::Display for TensorFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TensorFormat::Gguf => "GGUF",
            TensorFormat::Safetensors => "safetensors",
        })
    }
}
