//! [`Pad`]: variable-length token sequences as a `[batch, len]` tensor plus an attention mask
//! (documented on the type).

use arrow::array::{Array, ArrayRef, AsArray, OffsetSizeTrait};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field};
use burn::tensor::{BoolStore, DType, TensorData};

use super::tensors::{TokenCount, tensor_data};
use crate::buffers::BufferPool;
use crate::{Error, Result};

/// Where padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadSide {
    /// After the tokens (encoders, training).
    #[default]
    Right,
    /// Before the tokens (batched generation with decoder-only models).
    Left,
}

/// How to pad a variable-length integer list column of token ids ([`Tensors::pad`]).
///
/// The padded length is the batch's longest sequence, rounded up to `multiple_of`, then capped
/// at `max_len` (longer sequences keep their first `len` tokens), as Hugging Face's
/// `DataCollatorWithPadding` does with `pad_to_multiple_of` and truncation. The mask is burn's
/// native bool, true on real tokens.
///
/// [`Tensors::pad`]: super::Tensors::pad
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pad {
    value: i64,
    max_len: Option<usize>,
    multiple_of: usize,
    side: PadSide,
}

impl Pad {
    /// Pads with `value` (the tokenizer's pad id), on the right, to the longest sequence.
    pub fn new(value: i64) -> Pad {
        Pad {
            value,
            max_len: None,
            multiple_of: 1,
            side: PadSide::Right,
        }
    }

    /// Caps the padded length; longer sequences keep their first `max_len` tokens.
    pub fn max_len(mut self, max_len: usize) -> Pad {
        self.max_len = Some(max_len);
        self
    }

    /// Rounds the padded length up to a multiple of `multiple` (tensor cores like 8 or 64);
    /// 0 is taken as 1.
    pub fn multiple_of(mut self, multiple: usize) -> Pad {
        self.multiple_of = multiple.max(1);
        self
    }

    /// Which side the padding goes.
    pub fn side(mut self, side: PadSide) -> Pad {
        self.side = side;
        self
    }

    /// The tokens `[batch, len]` (the list's element type) and the mask `[batch, len]` (bool).
    pub(super) fn collate(
        &self,
        field: &Field,
        columns: &[&ArrayRef],
        rows: &[(usize, usize)],
        pool: &BufferPool,
    ) -> Result<(TensorData, TensorData, TokenCount)> {
        let name = field.name();
        let fail = |what: String| Error::Collate {
            reason: format!("column `{name}`: {what}").into(),
        };
        let element = match field.data_type() {
            DataType::List(child) | DataType::LargeList(child) => child.data_type(),
            other => {
                return Err(fail(format!(
                    "padding needs a list of integers, not {other}"
                )));
            }
        };
        let (dtype, pad_bytes) = integer_bytes(element, self.value).ok_or_else(|| {
            fail(format!(
                "padding needs a list of integers that can hold the pad value {}, not a list of {element}",
                self.value
            ))
        })?;
        let width = dtype.size();
        // Each batch's value buffer, looked up once.
        let leaves: Vec<(Buffer, usize)> = columns.iter().map(|c| value_buffer(c)).collect();
        let sequences: Vec<Sequence> = rows
            .iter()
            .enumerate()
            .map(|(position, &(batch, row))| {
                Sequence::of(columns[batch], &leaves[batch], row, width).ok_or_else(|| {
                    fail(format!(
                        "null in sample {position} of the batch; tensors have no nulls"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let longest = sequences.iter().map(|s| s.len).max().unwrap_or(0);
        // Checked: `multiple_of` and the batch shape are the caller's, and a wrapped product
        // would size the buffers wrong rather than fail.
        let rounded = longest.checked_next_multiple_of(self.multiple_of);
        let len = match (rounded, self.max_len) {
            (Some(len), Some(max_len)) => Some(len.min(max_len)),
            // Rounding overflowed: the rounded length is past any cap.
            (None, Some(max_len)) => Some(max_len),
            (len, None) => len,
        };
        let sizes = len.and_then(|len| {
            let cells = rows.len().checked_mul(len)?;
            Some((len, cells, cells.checked_mul(width)?))
        });
        let Some((len, cells, token_bytes)) = sizes.filter(|&(.., b)| b <= isize::MAX as usize)
        else {
            return Err(fail(format!(
                "{} sequences of up to {longest} tokens padded to a multiple of {} overflow",
                rows.len(),
                self.multiple_of
            )));
        };

        let mut count = TokenCount {
            real: 0,
            slots: cells as u64,
        };
        let mut tokens = pool.get(token_bytes);
        let mut mask = pool.get(cells);
        let (token_rows, mask_rows) = (tokens.as_mut_slice(), mask.as_mut_slice());
        for (i, sequence) in sequences.iter().enumerate() {
            let kept = sequence.len.min(len);
            count.real += kept as u64;
            let pad = len - kept;
            let real = match self.side {
                PadSide::Right => 0..kept,
                PadSide::Left => pad..len,
            };
            let token_row = &mut token_rows[i * len * width..(i + 1) * len * width];
            let mask_row = &mut mask_rows[i * len..(i + 1) * len];
            for (slot, token) in token_row.chunks_exact_mut(width).enumerate() {
                if !real.contains(&slot) {
                    token.copy_from_slice(&pad_bytes[..width]);
                }
            }
            token_row[real.start * width..real.end * width]
                .copy_from_slice(sequence.bytes(kept, width));
            mask_row.fill(0);
            mask_row[real].fill(1);
        }
        Ok((
            tensor_data(tokens.freeze(), vec![rows.len(), len], dtype)?,
            tensor_data(
                mask.freeze(),
                vec![rows.len(), len],
                DType::Bool(BoolStore::Native),
            )?,
            count,
        ))
    }
}

/// One row's tokens: a share of the list's value buffer and where they lie in it.
struct Sequence {
    buffer: Buffer,
    /// Byte offset of the first token in `buffer`.
    start: usize,
    len: usize,
}

impl Sequence {
    /// Row `row` of a list column; `None` when it or one of its tokens is null.
    fn of(column: &ArrayRef, leaf: &(Buffer, usize), row: usize, width: usize) -> Option<Sequence> {
        match column.data_type() {
            DataType::List(_) => Self::of_list::<i32>(column, leaf, row, width),
            _ => Self::of_list::<i64>(column, leaf, row, width),
        }
    }

    fn of_list<O: OffsetSizeTrait>(
        column: &ArrayRef,
        (buffer, first): &(Buffer, usize),
        row: usize,
        width: usize,
    ) -> Option<Sequence> {
        let list = column.as_list::<O>();
        if list.is_null(row) {
            return None;
        }
        let offsets = list.value_offsets();
        let (start, end) = (offsets[row].as_usize(), offsets[row + 1].as_usize());
        let values = list.values();
        if values.null_count() > 0 && (start..end).any(|i| values.is_null(i)) {
            return None;
        }
        Some(Sequence {
            buffer: buffer.clone(),
            start: (first + start) * width,
            len: end - start,
        })
    }

    /// The first `count` tokens' bytes.
    fn bytes(&self, count: usize, width: usize) -> &[u8] {
        &self.buffer.as_slice()[self.start..self.start + count * width]
    }
}

/// A list column's value buffer and the index of its first value in it.
fn value_buffer(column: &ArrayRef) -> (Buffer, usize) {
    let values = match column.data_type() {
        DataType::List(_) => column.as_list::<i32>().values(),
        _ => column.as_list::<i64>().values(),
    };
    let data = values.to_data();
    (data.buffers()[0].clone(), data.offset())
}

/// The burn dtype of an integer element type and `value` as that type's native bytes; `None`
/// for a non-integer type or a value it cannot hold.
fn integer_bytes(element: &DataType, value: i64) -> Option<(DType, [u8; 8])> {
    let mut bytes = [0u8; 8];
    let dtype = match element {
        DataType::Int64 => {
            bytes.copy_from_slice(&value.to_ne_bytes());
            DType::I64
        }
        DataType::Int32 => {
            bytes[..4].copy_from_slice(&i32::try_from(value).ok()?.to_ne_bytes());
            DType::I32
        }
        DataType::Int16 => {
            bytes[..2].copy_from_slice(&i16::try_from(value).ok()?.to_ne_bytes());
            DType::I16
        }
        DataType::Int8 => {
            bytes[..1].copy_from_slice(&i8::try_from(value).ok()?.to_ne_bytes());
            DType::I8
        }
        DataType::UInt64 => {
            bytes.copy_from_slice(&u64::try_from(value).ok()?.to_ne_bytes());
            DType::U64
        }
        DataType::UInt32 => {
            bytes[..4].copy_from_slice(&u32::try_from(value).ok()?.to_ne_bytes());
            DType::U32
        }
        DataType::UInt16 => {
            bytes[..2].copy_from_slice(&u16::try_from(value).ok()?.to_ne_bytes());
            DType::U16
        }
        DataType::UInt8 => {
            bytes[..1].copy_from_slice(&u8::try_from(value).ok()?.to_ne_bytes());
            DType::U8
        }
        _ => return None,
    };
    Some((dtype, bytes))
}
