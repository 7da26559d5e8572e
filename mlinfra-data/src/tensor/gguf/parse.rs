//! Parsing and validation of a GGUF header: everything before the tensor data.
//!
//! Layout (GGUF v2 and v3, little-endian; <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count  x (key: string, type: u32, value)
//! tensor_count x (name: string, n_dims: u32, ne: [u64; n_dims], type: u32, offset: u64)
//! padding to `general.alignment` | tensor data (each at `offset` from here)
//! ```
//!
//! Every count, length and offset is checked against the file size before it is used: the
//! parser does work and allocation proportional to the file, whatever the file claims.

use std::collections::HashMap;

use super::value::{GgufValue, read_type, read_value};
use super::{DEFAULT_ALIGNMENT, GgufTensorInfo};
use crate::tensor::GgmlType;
use crate::tensor::cursor::{Cursor, Fault, quoted};

/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// The smallest metadata entry: an empty key (8), a type (4) and a one-byte value.
const MIN_KV_SIZE: usize = 8 + 4 + 1;
/// The smallest tensor info: an empty name (8), `n_dims` (4), no dims, type (4), offset (8).
const MIN_TENSOR_INFO_SIZE: usize = 8 + 4 + 4 + 8;

/// What the header holds, validated against the file it came from.
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: Vec<(Box<str>, GgufValue)>,
    pub(super) metadata_index: HashMap<Box<str>, usize>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    pub(super) tensor_index: HashMap<Box<str>, usize>,
    pub(super) alignment: usize,
    pub(super) data_offset: usize,
}

/// A tensor info as read, before it is checked against the data section.
struct RawTensorInfo {
    name: Box<str>,
    shape: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    /// File offsets of fields, for messages.
    at: usize,
    shape_at: usize,
    offset_at: usize,
}

/// Parses and validates the header of the GGUF file `bytes`.
pub(super) fn parse(bytes: &[u8]) -> Result<Header, Fault> {
    let mut cursor = Cursor::new(bytes);
    let version = read_preamble(&mut cursor)?;

    let at = cursor.pos();
    let tensor_count = cursor.u64("tensor count")?;
    let tensor_count =
        cursor.check_count("tensor count", tensor_count, at, MIN_TENSOR_INFO_SIZE)?;
    let at = cursor.pos();
    let kv_count = cursor.u64("metadata key-value count")?;
    let kv_count = cursor.check_count("metadata key-value count", kv_count, at, MIN_KV_SIZE)?;

    let (metadata, metadata_index) = read_metadata(&mut cursor, kv_count)?;
    let alignment = alignment(&metadata, &metadata_index)?;

    let raw = (0..tensor_count)
        .map(|i| read_tensor_info(&mut cursor, i))
        .collect::<Result<Vec<_>, _>>()?;

    let data_offset = cursor
        .pos()
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| "data section offset overflows".to_owned())?;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut tensor_index = HashMap::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let info = validate_tensor(raw, i, bytes.len(), alignment, data_offset)?;
        if tensor_index.insert(info.name.clone(), i).is_some() {
            return Err(format!(
                "tensor {i}: name {} at byte {} is used by an earlier tensor too",
                quoted(&info.name),
                info.name_at
            ));
        }
        tensors.push(info);
    }
    check_overlaps(&tensors, data_offset)?;

    Ok(Header {
        version,
        metadata,
        metadata_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

/// Reads the magic and the version; returns the version if this reader supports it.
fn read_preamble(cursor: &mut Cursor<'_>) -> Result<u32, Fault> {
    let magic: [u8; 4] = cursor.array("magic")?;
    if &magic != b"GGUF" {
        return Err(format!(
            "magic at byte 0 is {magic:02x?}, not \"GGUF\" (47 47 55 46): not a GGUF file"
        ));
    }
    let version = cursor.u32("version")?;
    match version {
        2 | 3 => Ok(version),
        1 => Err("GGUF version 1 at byte 4 is not supported (versions 2 and 3 are)".to_owned()),
        // A big-endian file's version (2 or 3) read little-endian has its value in the high
        // bytes; llama.cpp detects the byte order the same way.
        v if v & 0xFFFF == 0 && v != 0 => Err(format!(
            "version at byte 4 reads as {v:#010x}, a byte-swapped {}: big-endian GGUF files \
             are not supported",
            v.swap_bytes()
        )),
        v => Err(format!(
            "GGUF version {v} at byte 4 is not supported (versions 2 and 3 are)"
        )),
    }
}

type Metadata = (Vec<(Box<str>, GgufValue)>, HashMap<Box<str>, usize>);

fn read_metadata(cursor: &mut Cursor<'_>, count: usize) -> Result<Metadata, Fault> {
    let mut entries = Vec::with_capacity(count);
    let mut index = HashMap::with_capacity(count);
    for i in 0..count {
        let at = cursor.pos();
        let key = cursor
            .string("key")
            .map_err(|e| format!("metadata key {i}: {e}"))?;
        let context = |e: Fault| format!("metadata key {i} ({}): {e}", quoted(&key));
        let value_type = read_type(cursor, "value type").map_err(context)?;
        let value = read_value(cursor, value_type).map_err(context)?;
        if index.insert(key.clone(), i).is_some() {
            return Err(context(format!(
                "key at byte {at} is used by an earlier entry too"
            )));
        }
        entries.push((key, value));
    }
    Ok((entries, index))
}

/// The data alignment: `general.alignment` if present (a `UINT32` that is a nonzero power of
/// two, as llama.cpp requires), [`DEFAULT_ALIGNMENT`] otherwise.
fn alignment(
    metadata: &[(Box<str>, GgufValue)],
    index: &HashMap<Box<str>, usize>,
) -> Result<usize, Fault> {
    let Some(&i) = index.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match metadata[i].1 {
        GgufValue::U32(a) if a.is_power_of_two() => Ok(a as usize),
        GgufValue::U32(a) => Err(format!(
            "metadata key {i} (`general.alignment`): {a} is not a nonzero power of two"
        )),
        ref other => Err(format!(
            "metadata key {i} (`general.alignment`): has type {}, expected UINT32",
            other.value_type()
        )),
    }
}

fn read_tensor_info(cursor: &mut Cursor<'_>, i: usize) -> Result<RawTensorInfo, Fault> {
    let at = cursor.pos();
    let name = cursor
        .string("name")
        .map_err(|e| format!("tensor {i}: {e}"))?;
    let context = |e: Fault| format!("tensor {i} ({}): {e}", quoted(&name));

    let dims_at = cursor.pos();
    let n_dims = cursor.u32("dimension count").map_err(context)?;
    if n_dims > MAX_DIMS {
        return Err(context(format!(
            "dimension count {n_dims} at byte {dims_at} is over ggml's maximum of {MAX_DIMS}"
        )));
    }
    let shape_at = cursor.pos();
    let shape = (0..n_dims)
        .map(|d| {
            let at = cursor.pos();
            let ne = cursor.u64(&format!("dimension {d}"))?;
            // ggml keeps dimensions in int64_t.
            if ne > i64::MAX as u64 {
                return Err(format!(
                    "dimension {d} = {ne} at byte {at} is over i64::MAX"
                ));
            }
            Ok(ne)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(context)?;

    let type_at = cursor.pos();
    let type_id = cursor.u32("ggml type").map_err(context)?;
    let ggml_type = GgmlType::from_id(type_id)
        .ok_or_else(|| context(format!("unknown ggml type id {type_id} at byte {type_at}")))?;
    let offset_at = cursor.pos();
    let offset = cursor.u64("data offset").map_err(context)?;
    Ok(RawTensorInfo {
        name,
        shape,
        ggml_type,
        offset,
        at,
        shape_at,
        offset_at,
    })
}

/// Checks a tensor's shape, size and placement against its type and the file, and computes
/// its absolute byte range.
fn validate_tensor(
    raw: RawTensorInfo,
    i: usize,
    file_len: usize,
    alignment: usize,
    data_offset: usize,
) -> Result<GgufTensorInfo, Fault> {
    let context = |e: String| format!("tensor {i} ({}): {e}", quoted(&raw.name));
    let ty = raw.ggml_type;

    // The element count must be representable in ggml's int64_t. Zero-sized dimensions are
    // legal (an empty tensor) but do not excuse an overflow among the others.
    let n_elements = raw
        .shape
        .iter()
        .filter(|&&ne| ne != 0)
        .try_fold(1u64, |n, &ne| n.checked_mul(ne))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| {
            context(format!(
                "shape {:?} at byte {} has more elements than fit in an i64",
                raw.shape, raw.shape_at
            ))
        })?;
    let n_elements = if raw.shape.contains(&0) {
        0
    } else {
        n_elements
    };

    // Blocks run along the first dimension (ne[0]), so it must hold whole blocks.
    let ne0 = raw.shape.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if !ne0.is_multiple_of(block) {
        return Err(context(format!(
            "first dimension {ne0} at byte {} is not a multiple of the {ty} block size ({block})",
            raw.shape_at
        )));
    }
    let rows = raw
        .shape
        .iter()
        .skip(1)
        .try_fold(1u64, |n, &ne| n.checked_mul(ne));
    let byte_len = (ne0 / block)
        .checked_mul(ty.type_size() as u64)
        .zip(rows)
        .and_then(|(row, rows)| row.checked_mul(rows));

    if !raw.offset.is_multiple_of(alignment as u64) {
        return Err(context(format!(
            "data offset {} at byte {} is not a multiple of the alignment ({alignment})",
            raw.offset, raw.offset_at
        )));
    }
    let start = (data_offset as u64).checked_add(raw.offset);
    let end = start.zip(byte_len).and_then(|(s, n)| s.checked_add(n));
    let (Some(start), Some(byte_len), Some(end)) = (start, byte_len, end) else {
        return Err(context(format!(
            "data offset {} at byte {} puts the data past any possible file size",
            raw.offset, raw.offset_at
        )));
    };
    if end > file_len as u64 {
        return Err(context(format!(
            "data (offset {} at byte {}, {byte_len} bytes of {ty}) runs past the end of the file \
             ({file_len} bytes; data section starts at byte {data_offset})",
            raw.offset, raw.offset_at
        )));
    }
    // Both fit in `usize` now: they are at most the length of the file.
    Ok(GgufTensorInfo {
        name: raw.name,
        shape: raw.shape,
        ggml_type: ty,
        n_elements,
        start: start as usize,
        end: end as usize,
        name_at: raw.at,
    })
}

/// Refuses tensors whose data overlap: a writer bug, or a file crafted so that writing one
/// tensor in place would change another.
fn check_overlaps(tensors: &[GgufTensorInfo], data_offset: usize) -> Result<(), Fault> {
    let mut order: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.end > t.start).collect();
    order.sort_by_key(|t| t.start);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.start < a.end {
            return Err(format!(
                "tensor {} (data bytes {}..{}) overlaps tensor {} (data bytes {}..{}), offsets \
                 relative to the data section at byte {data_offset}",
                quoted(&b.name),
                b.start - data_offset,
                b.end - data_offset,
                quoted(&a.name),
                a.start - data_offset,
                a.end - data_offset,
            ));
        }
    }
    Ok(())
}
