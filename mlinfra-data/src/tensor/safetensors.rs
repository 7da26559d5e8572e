//! safetensors files: Hugging Face's header-plus-raw-bytes tensor format.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::cursor::quoted;
use super::{GgmlType, TensorFormat, dequant, map_file};
use crate::{Error, Result};

/// A memory-mapped safetensors file.
///
/// [`open`](Self::open) maps the file read-only and has the `safetensors` crate parse and
/// validate the JSON header (at most 100 MB; offsets contiguous, covering the data exactly,
/// sizes matching shape and dtype, no arithmetic overflow). The header is then copied into
/// owned [`SafetensorsTensorInfo`]s with absolute file ranges, so this type holds the mapping
/// and plain data; nothing borrows from the mapping except what [`tensor`](Self::tensor)
/// hands out.
///
/// # Design: why not keep a `SafeTensors<'_>`
///
/// `safetensors::SafeTensors` borrows the buffer it parsed, so storing it next to the mapping
/// would make a self-referential struct. Owned infos plus our own slicing of the mapping cost
/// one copy of the header and no `unsafe` beyond the mapping itself.
///
/// # The mapping contract
///
/// As for [`GgufFile`](super::GgufFile): the file must not be modified or truncated while
/// this value, or a slice borrowed from it, is alive.
///
/// # Costs
///
/// Opening parses the header: O(header) time and memory. [`tensor`](Self::tensor) is an O(1)
/// hash lookup and no copy.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: Box<Path>,
    map: Mmap,
    tensors: Vec<SafetensorsTensorInfo>,
    index: HashMap<Box<str>, usize>,
    metadata: BTreeMap<Box<str>, Box<str>>,
}

impl SafetensorsFile {
    /// Maps the safetensors file at `path` and parses its header.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be opened or mapped, [`Error::TensorFile`] if its header
    /// is invalid or disagrees with the file's size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = map_file(path)?;
        let malformed = |what: String| Error::tensor_file(path, TensorFormat::Safetensors, what);
        let (header_len, header) =
            SafeTensors::read_metadata(&map).map_err(|e| malformed(format!("header: {e}")))?;
        // `read_metadata` checked the header fits, so this does not overflow; checked anyway
        // so that a regression there is an error here rather than a panic.
        let data_start = header_len
            .checked_add(8)
            .ok_or_else(|| malformed("header length overflows".to_owned()))?;

        let names = header.offset_keys();
        let mut tensors = Vec::with_capacity(names.len());
        let mut index = HashMap::with_capacity(names.len());
        for name in names {
            let Some(info) = header.info(&name) else {
                continue;
            };
            let (start, end) = info.data_offsets;
            let range = data_start
                .checked_add(start)
                .zip(data_start.checked_add(end));
            let Some((start, end)) = range.filter(|&(s, e)| s <= e && e <= map.len()) else {
                return Err(malformed(format!(
                    "tensor {} has data offsets {:?} outside the file",
                    quoted(&name),
                    info.data_offsets
                )));
            };
            index.insert(name.as_str().into(), tensors.len());
            tensors.push(SafetensorsTensorInfo {
                name: name.into(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: start..end,
            });
        }
        let metadata = header
            .metadata()
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        Ok(SafetensorsFile {
            path: path.into(),
            map,
            tensors,
            index,
            metadata,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor infos, in the order of their data in the file.
    pub fn tensors(&self) -> &[SafetensorsTensorInfo] {
        &self.tensors
    }

    /// The info of the tensor named `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&SafetensorsTensorInfo> {
        let &i = self.index.get(name)?;
        Some(&self.tensors[i])
    }

    /// The tensor named `name`, its bytes borrowed from the mapping (no copy).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchTensor`] if the file has no tensor of that name.
    pub fn tensor(&self, name: &str) -> Result<SafetensorsTensor<'_>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::no_such_tensor(&self.path, name))?;
        // Open checked the range against the file; `get` keeps a regression a typed error.
        let bytes = self.map.get(info.range.clone()).ok_or_else(|| {
            Error::tensor_file(
                &self.path,
                TensorFormat::Safetensors,
                format!("tensor {} lies outside the file", quoted(name)),
            )
        })?;
        Ok(SafetensorsTensor {
            info,
            bytes,
            path: &self.path,
        })
    }

    /// The tensor named `name` converted to `f32`; see [`SafetensorsTensor::to_f32`].
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchTensor`] if there is no such tensor, [`Error::TensorFile`] if its dtype
    /// is not `F32`, `F16` or `BF16`.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor(name)?.to_f32()
    }

    /// The free-form `__metadata__` string map of the header (empty when absent), sorted by
    /// key.
    pub fn metadata(&self) -> &BTreeMap<Box<str>, Box<str>> {
        &self.metadata
    }

    /// The whole mapping: every tensor's [`bytes`](SafetensorsTensor::bytes) lies inside it.
    pub fn mapped_bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Where a safetensors tensor's data is and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsTensorInfo {
    name: Box<str>,
    dtype: Dtype,
    shape: Vec<usize>,
    range: Range<usize>,
}

impl SafetensorsTensorInfo {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The dimensions in row-major order, slowest first (NumPy/PyTorch order, the reverse of
    /// GGUF's).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The data's byte range in the file (absolute, header included).
    pub fn byte_range(&self) -> Range<usize> {
        self.range.clone()
    }
}

/// A safetensors tensor whose bytes are borrowed from the file's mapping.
#[derive(Debug, Clone, Copy)]
pub struct SafetensorsTensor<'a> {
    info: &'a SafetensorsTensorInfo,
    bytes: &'a [u8],
    path: &'a Path,
}

impl<'a> SafetensorsTensor<'a> {
    /// The tensor's info: name, dtype, shape, placement.
    pub fn info(&self) -> &'a SafetensorsTensorInfo {
        self.info
    }

    /// The raw little-endian bytes: a slice of the mapping, not a copy. safetensors does not
    /// align tensor data, so read elements with `from_le_bytes` rather than by casting.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The elements converted to `f32`, in row-major order. `F16` and `BF16` widen exactly.
    /// Costs one pass and a `4 * n_elements`-byte allocation.
    ///
    /// # Errors
    ///
    /// [`Error::TensorFile`] unless the dtype is `F32`, `F16` or `BF16`.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let ty = match self.info.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            other => {
                return Err(Error::tensor_file(
                    self.path,
                    TensorFormat::Safetensors,
                    format!(
                        "tensor {} has dtype {other}; only F32, F16 and BF16 convert to f32",
                        quoted(&self.info.name)
                    ),
                ));
            }
        };
        // The three plain types always dequantize.
        Ok(dequant::dequantize(ty, self.bytes).unwrap_or_default())
    }
}
