//! GGUF files: llama.cpp's single-file model format (metadata plus quantized tensors).

mod parse;
mod value;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

use super::cursor::quoted;
use super::{GgmlType, TensorFormat, dequant, map_file};
use crate::{Error, Result};

pub use value::{GgufArray, GgufValue, GgufValueType};

/// Data alignment of a GGUF file without a `general.alignment` key (ggml's
/// `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A memory-mapped GGUF file (versions 2 and 3, little-endian).
///
/// [`open`](Self::open) maps the file read-only and parses the header (metadata and tensor
/// infos) into owned values; tensor data is never copied until asked for:
/// [`tensor`](Self::tensor) hands out a `&[u8]` into the mapping, and
/// [`dequantize_f32`](Self::dequantize_f32) converts one tensor to a new `Vec<f32>`.
///
/// # The mapping contract
///
/// The file must not be modified or truncated while a `GgufFile` (or a slice borrowed from
/// it) is alive, by this process or another. Truncation makes reads of the lost pages raise
/// `SIGBUS`; modification changes bytes that Rust treats as immutable. Model files are
/// written once and then only read, which is what this relies on; llama.cpp, candle and the
/// `safetensors` crate make the same assumption.
///
/// # Validation
///
/// Opening validates everything that tensor access later relies on: each count, length and
/// offset against the file's size before it is used, dimensions (at most four, element count
/// within `i64`, the first a whole number of blocks), known ggml types, offsets aligned to
/// `general.alignment` (a nonzero power of two; [`DEFAULT_ALIGNMENT`] when absent), data
/// inside the file and not overlapping, UTF-8 names and strings, unique names and keys, and
/// array nesting at most 8 deep. A file failing any check is refused with
/// [`Error::TensorFile`] naming the field and its byte offset; no input panics, and parsing
/// allocates within a small constant factor of the file's size.
///
/// # Costs
///
/// Opening reads the header only: O(header) time and memory, nothing for the tensor data
/// (tokenizer vocabularies in the metadata are the bulk of it for real models).
/// [`tensor`](Self::tensor) is an O(1) hash lookup.
#[derive(Debug)]
pub struct GgufFile {
    path: Box<Path>,
    map: Mmap,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(Box<str>, GgufValue)>,
    metadata_index: HashMap<Box<str>, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<Box<str>, usize>,
}

impl GgufFile {
    /// Maps and parses the GGUF file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be opened or mapped, [`Error::TensorFile`] if it is not
    /// a valid GGUF v2/v3 little-endian file (see [Validation](Self#validation)).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = map_file(path)?;
        let header = parse::parse(&map)
            .map_err(|what| Error::tensor_file(path, TensorFormat::Gguf, what))?;
        Ok(GgufFile {
            path: path.into(),
            map,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            metadata_index: header.metadata_index,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data: `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// The file offset where the data section starts; tensor offsets in the file are relative
    /// to it.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The metadata entries, in file order.
    pub fn metadata(&self) -> &[(Box<str>, GgufValue)] {
        &self.metadata
    }

    /// The metadata value under `key`, such as `general.architecture`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        let &i = self.metadata_index.get(key)?;
        Some(&self.metadata[i].1)
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of the tensor named `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        let &i = self.tensor_index.get(name)?;
        Some(&self.tensors[i])
    }

    /// The tensor named `name`, its bytes borrowed from the mapping (no copy).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchTensor`] if the file has no tensor of that name.
    pub fn tensor(&self, name: &str) -> Result<GgufTensor<'_>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::no_such_tensor(&self.path, name))?;
        // Open checked every tensor's range against the file, so this cannot fail; `get`
        // keeps it a typed error rather than a panic if that ever regresses.
        let bytes = self.map.get(info.byte_range()).ok_or_else(|| {
            Error::tensor_file(
                &self.path,
                TensorFormat::Gguf,
                format!("tensor {} lies outside the file", quoted(name)),
            )
        })?;
        Ok(GgufTensor {
            info,
            bytes,
            path: &self.path,
        })
    }

    /// The tensor named `name` converted to `f32`, in ggml order; see
    /// [`GgufTensor::dequantize_f32`].
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchTensor`] if there is no such tensor, [`Error::TensorFile`] if its type
    /// cannot be dequantized.
    pub fn dequantize_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor(name)?.dequantize_f32()
    }

    /// Hints that tensor `name`'s bytes will not be read again soon: their pages leave this
    /// process's resident memory now (a later read faults them back in from the file, with
    /// the same contents). For loaders that copy tensors out (repacked, or converted), so
    /// that the file and the copies are not resident together. A no-op off Unix, or for a
    /// tensor that is not in the file.
    pub fn release_tensor_pages(&self, name: &str) {
        #[cfg(unix)]
        if let Some(info) = self.tensor_info(name) {
            // SAFETY: the mapping is private and read-only, never written: dropping its pages
            // changes no byte that any borrow of it can observe (they are read back from the
            // unchanged file). A failure only leaves the pages resident.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    info.offset(),
                    info.byte_len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// The whole mapping: every tensor's [`bytes`](GgufTensor::bytes) lies inside it.
    pub fn mapped_bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Where a GGUF tensor's data is and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    name: Box<str>,
    shape: Vec<u64>,
    ggml_type: GgmlType,
    n_elements: u64,
    start: usize,
    end: usize,
    /// File offset of the info itself, for messages.
    name_at: usize,
}

impl GgufTensorInfo {
    /// The tensor's name, such as `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dimensions in ggml order: `shape()[0]` (`ne[0]`) varies fastest in memory, so a
    /// matrix with `rows` rows of `cols` elements has shape `[cols, rows]`: the reverse of
    /// NumPy/PyTorch (and safetensors) order. At most four dimensions; none for a scalar.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// The number of elements: the product of the dimensions.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// The absolute file offset of the data (the data section's start plus the tensor's
    /// offset).
    pub fn offset(&self) -> usize {
        self.start
    }

    /// The size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.end - self.start
    }

    /// The data's byte range in the file.
    pub fn byte_range(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// A GGUF tensor whose bytes are borrowed from the file's mapping.
#[derive(Debug, Clone, Copy)]
pub struct GgufTensor<'a> {
    info: &'a GgufTensorInfo,
    bytes: &'a [u8],
    path: &'a Path,
}

impl<'a> GgufTensor<'a> {
    /// The tensor's info: name, shape, type, placement.
    pub fn info(&self) -> &'a GgufTensorInfo {
        self.info
    }

    /// The raw bytes, in the tensor's [`GgmlType`] encoding: a slice of the mapping, not a
    /// copy. Any alignment beyond the file's `general.alignment` is not guaranteed, so read
    /// multi-byte elements with `from_le_bytes` rather than by casting the pointer.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The elements converted to `f32`, in ggml order (`ne[0]` fastest).
    ///
    /// Converts `F32`, `F16`, `BF16`, `Q8_0`, `Q4_0`, `Q4_1`, `Q4_K` and `Q6_K`, with the same
    /// arithmetic, in the same order, as ggml's reference `dequantize_row_*` (and gguf-py's
    /// `gguf.quants.dequantize`), so results are bit-identical to theirs. Costs one pass over
    /// the data and a `4 * n_elements`-byte allocation.
    ///
    /// # Errors
    ///
    /// [`Error::TensorFile`] for any other type: its bytes are still readable with
    /// [`bytes`](Self::bytes).
    pub fn dequantize_f32(&self) -> Result<Vec<f32>> {
        let ty = self.info.ggml_type;
        dequant::dequantize(ty, self.bytes).ok_or_else(|| {
            Error::tensor_file(
                self.path,
                TensorFormat::Gguf,
                format!(
                    "tensor {} has type {ty}, which cannot be dequantized (supported: {})",
                    quoted(&self.info.name),
                    dequant::SUPPORTED
                ),
            )
        })
    }
}
