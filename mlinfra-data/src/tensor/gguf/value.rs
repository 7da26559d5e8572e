//! GGUF metadata values: the thirteen value types and how they are decoded.

use std::fmt;

use crate::tensor::cursor::{Cursor, Fault};

/// Deepest nesting of arrays accepted in metadata. GGUF writers produce at most two levels
/// (llama.cpp reads none); the cap keeps a file of nested array headers from recursing deep
/// enough to overflow the stack.
pub(crate) const MAX_ARRAY_DEPTH: usize = 8;

/// The type tag of a GGUF metadata value (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgufValueType {
    /// `u8`.
    U8 = 0,
    /// `i8`.
    I8 = 1,
    /// `u16`.
    U16 = 2,
    /// `i16`.
    I16 = 3,
    /// `u32`.
    U32 = 4,
    /// `i32`.
    I32 = 5,
    /// `f32`.
    F32 = 6,
    /// A byte that must be 0 or 1.
    Bool = 7,
    /// UTF-8 text with a `u64` length.
    String = 8,
    /// An element type, a `u64` length, then the elements.
    Array = 9,
    /// `u64`.
    U64 = 10,
    /// `i64`.
    I64 = 11,
    /// `f64`.
    F64 = 12,
}

impl GgufValueType {
    /// The type with GGUF id `id`, or `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The GGUF spec's name for the type, such as `UINT32`.
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// The fewest bytes a value of this type takes in a file: what bounds an array length
    /// before its elements are read.
    fn min_encoded_size(self) -> usize {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 4 + 8,
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GgufValue {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    String(Box<str>),
    /// `ARRAY`.
    Array(GgufArray),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl GgufValue {
    /// The value's GGUF type.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// The value as a `u64` if it is an integer of any width that is not negative. Writers
    /// disagree on integer widths (a context length is `UINT32` in one file, `UINT64` in
    /// another), so this accepts them all.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// The value as an `i64` if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `f64` if it is a `FLOAT32` or `FLOAT64` (exactly; integers are not
    /// converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is a `BOOL`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The text if the value is a `STRING`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(v) => Some(v),
            _ => None,
        }
    }

    /// The array if the value is an `ARRAY`.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// A GGUF metadata array: elements of one type, stored as a typed vector so that a large
/// array (a tokenizer's vocabulary, say) costs about what it takes in the file.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GgufArray {
    /// `UINT8` elements.
    U8(Vec<u8>),
    /// `INT8` elements.
    I8(Vec<i8>),
    /// `UINT16` elements.
    U16(Vec<u16>),
    /// `INT16` elements.
    I16(Vec<i16>),
    /// `UINT32` elements.
    U32(Vec<u32>),
    /// `INT32` elements.
    I32(Vec<i32>),
    /// `FLOAT32` elements.
    F32(Vec<f32>),
    /// `BOOL` elements.
    Bool(Vec<bool>),
    /// `STRING` elements.
    String(Vec<Box<str>>),
    /// `ARRAY` elements: nested arrays, each with its own element type.
    Array(Vec<GgufArray>),
    /// `UINT64` elements.
    U64(Vec<u64>),
    /// `INT64` elements.
    I64(Vec<i64>),
    /// `FLOAT64` elements.
    F64(Vec<f64>),
}

impl GgufArray {
    /// The type of the elements.
    pub fn element_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) => GgufValueType::String,
            GgufArray::Array(_) => GgufValueType::Array,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F64(_) => GgufValueType::F64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements if they are `STRING`s, such as a tokenizer's tokens.
    pub fn as_strs(&self) -> Option<&[Box<str>]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// The elements if they are nested arrays.
    pub fn as_arrays(&self) -> Option<&[GgufArray]> {
        match self {
            GgufArray::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Reads a value type tag.
pub(crate) fn read_type(cursor: &mut Cursor<'_>, what: &str) -> Result<GgufValueType, Fault> {
    let at = cursor.pos();
    let id = cursor.u32(what)?;
    GgufValueType::from_id(id).ok_or_else(|| format!("unknown {what} {id} at byte {at}"))
}

/// Reads one value of type `ty`.
pub(crate) fn read_value(cursor: &mut Cursor<'_>, ty: GgufValueType) -> Result<GgufValue, Fault> {
    Ok(match ty {
        GgufValueType::U8 => GgufValue::U8(cursor.u8("UINT8 value")?),
        GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(cursor.array("INT8 value")?)),
        GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(cursor.array("UINT16 value")?)),
        GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(cursor.array("INT16 value")?)),
        GgufValueType::U32 => GgufValue::U32(cursor.u32("UINT32 value")?),
        GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(cursor.array("INT32 value")?)),
        GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(cursor.array("FLOAT32 value")?)),
        GgufValueType::Bool => GgufValue::Bool(read_bool(cursor)?),
        GgufValueType::String => GgufValue::String(cursor.string("string")?),
        GgufValueType::Array => GgufValue::Array(read_array(cursor, 1)?),
        GgufValueType::U64 => GgufValue::U64(cursor.u64("UINT64 value")?),
        GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(cursor.array("INT64 value")?)),
        GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(cursor.array("FLOAT64 value")?)),
    })
}

/// A `BOOL` is one byte; anything but 0 or 1 is refused rather than guessed at.
fn read_bool(cursor: &mut Cursor<'_>) -> Result<bool, Fault> {
    let at = cursor.pos();
    match cursor.u8("BOOL value")? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!(
            "BOOL value {other} at byte {at} is neither 0 nor 1"
        )),
    }
}

/// Reads `n` fixed-size elements with `decode`. `n` has been checked against the bytes left.
fn read_fixed<T, const N: usize>(
    cursor: &mut Cursor<'_>,
    n: usize,
    decode: fn([u8; N]) -> T,
) -> Result<Vec<T>, Fault> {
    let bytes = cursor.take(n * N, "array elements")?;
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut element = [0; N];
            element.copy_from_slice(chunk);
            decode(element)
        })
        .collect())
}

/// Reads an array (element type, length, elements) at nesting level `depth` (1 for an array
/// that is a value itself).
///
/// The length is checked against the bytes left, at the smallest encoding of the element
/// type, before anything is allocated: what is allocated is then within a small constant
/// factor of the file's size.
fn read_array(cursor: &mut Cursor<'_>, depth: usize) -> Result<GgufArray, Fault> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!(
            "array at byte {} is nested more than {MAX_ARRAY_DEPTH} levels deep",
            cursor.pos()
        ));
    }
    let element_type = read_type(cursor, "array element type")?;
    let at = cursor.pos();
    let len = cursor.u64("array length")?;
    let n = cursor.check_count(
        &format!("{element_type} array length"),
        len,
        at,
        element_type.min_encoded_size(),
    )?;
    Ok(match element_type {
        GgufValueType::U8 => GgufArray::U8(cursor.take(n, "array elements")?.to_vec()),
        GgufValueType::I8 => GgufArray::I8(read_fixed(cursor, n, i8::from_le_bytes)?),
        GgufValueType::U16 => GgufArray::U16(read_fixed(cursor, n, u16::from_le_bytes)?),
        GgufValueType::I16 => GgufArray::I16(read_fixed(cursor, n, i16::from_le_bytes)?),
        GgufValueType::U32 => GgufArray::U32(read_fixed(cursor, n, u32::from_le_bytes)?),
        GgufValueType::I32 => GgufArray::I32(read_fixed(cursor, n, i32::from_le_bytes)?),
        GgufValueType::F32 => GgufArray::F32(read_fixed(cursor, n, f32::from_le_bytes)?),
        GgufValueType::U64 => GgufArray::U64(read_fixed(cursor, n, u64::from_le_bytes)?),
        GgufValueType::I64 => GgufArray::I64(read_fixed(cursor, n, i64::from_le_bytes)?),
        GgufValueType::F64 => GgufArray::F64(read_fixed(cursor, n, f64::from_le_bytes)?),
        GgufValueType::Bool => GgufArray::Bool(
            (0..n)
                .map(|_| read_bool(cursor))
                .collect::<Result<_, _>>()?,
        ),
        GgufValueType::String => GgufArray::String(
            (0..n)
                .map(|i| cursor.string(&format!("array element {i}")))
                .collect::<Result<_, _>>()?,
        ),
        GgufValueType::Array => GgufArray::Array(
            (0..n)
                .map(|i| {
                    read_array(cursor, depth + 1).map_err(|e| format!("array element {i}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array_header(element_type: u32, len: u64) -> Vec<u8> {
        let mut bytes = element_type.to_le_bytes().to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes
    }

    #[test]
    fn integer_accessors_accept_any_width_that_fits() {
        assert_eq!(GgufValue::U8(7).as_u64(), Some(7));
        assert_eq!(GgufValue::I32(7).as_u64(), Some(7));
        assert_eq!(GgufValue::I32(-7).as_u64(), None);
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::F32(0.5).as_f64(), Some(0.5));
        assert_eq!(GgufValue::U32(1).as_f64(), None);
        assert_eq!(GgufValue::Bool(true).as_str(), None);
    }

    #[test]
    fn nested_arrays_are_read_up_to_the_depth_cap() {
        // Depth 8: seven array headers of one element each, then an empty UINT8 array.
        let mut bytes = Vec::new();
        for _ in 0..MAX_ARRAY_DEPTH - 1 {
            bytes.extend(array_header(9, 1));
        }
        bytes.extend(array_header(0, 0));
        let value = read_value(&mut Cursor::new(&bytes), GgufValueType::Array).unwrap();
        let mut array = value.as_array().unwrap();
        for _ in 0..MAX_ARRAY_DEPTH - 1 {
            array = &array.as_arrays().unwrap()[0];
        }
        assert_eq!(array, &GgufArray::U8(Vec::new()));
    }

    #[test]
    fn an_array_depth_bomb_is_refused() {
        // A million nested headers would recurse a million frames deep without the cap.
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend(array_header(9, 1));
        }
        let error = read_value(&mut Cursor::new(&bytes), GgufValueType::Array).unwrap_err();
        assert!(
            error.ends_with("array at byte 96 is nested more than 8 levels deep"),
            "{error}"
        );
    }

    #[test]
    fn array_lengths_are_bounded_by_the_bytes_left() {
        let bytes = array_header(8, 1 << 40);
        let error = read_value(&mut Cursor::new(&bytes), GgufValueType::Array).unwrap_err();
        assert_eq!(
            error,
            "STRING array length 1099511627776 at byte 4 cannot fit in the file: each takes at \
             least 8 bytes and only 0 remain"
        );
    }

    #[test]
    fn bools_other_than_0_and_1_are_refused() {
        let error = read_value(&mut Cursor::new(&[2]), GgufValueType::Bool).unwrap_err();
        assert_eq!(error, "BOOL value 2 at byte 0 is neither 0 nor 1");
    }
}
