//! [`Pack`]: sequence packing, several token sequences per fixed-length row (documented on
//! the type).

use std::ops::Range;

use arrow::array::{Array, ArrayRef, AsArray, OffsetSizeTrait};
use arrow::datatypes::{
    DataType, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use burn::tensor::{BoolStore, DType, TensorData};

use super::tensors::tensor_data;
use crate::buffers::BufferPool;
use crate::{Error, Result};

/// Packs a variable-length token column into rows of exactly `seq_len` tokens, several
/// sequences (documents) per row, as TRL's `SFTTrainer` does with `packing=True` and its
/// default best-fit-decreasing strategy ([`Tensors::pack`]).
///
/// For a column `name`, each batch becomes, with `R` the rows its samples fill:
///
/// - `name` `[R, seq_len]` i64: the tokens, `pad_value` after the last sequence of a row;
/// - `{name}_positions` `[R, seq_len]` i64: each token's position in its own sequence,
///   restarting at 0 for every sequence (so rotary positions restart too); 0 on padding;
/// - `{name}_segments` `[R, seq_len]` i32: which sequence of its row a token belongs to,
///   1, 2, ... in order; 0 on padding. Attention is allowed only between tokens of the same
///   segment (block-diagonal and causal), so no sequence sees another;
/// - `{name}_loss_mask` `[R, seq_len]` bool: true on the tokens to predict. With
///   [`Pack::loss_mask`], the given per-token mask column (bool or 0/1 integers, as TRL's
///   `assistant_masks`); without, every real token. False on padding. It is aligned with the
///   tokens: the logits at `t` are scored against the token at `t + 1` when that token is in
///   the same segment and its mask is true.
///
/// Rows are filled best-fit-decreasing within the batch: longest sequence first, each into
/// the row with the least room that still fits it, a new row when none does; ties keep the
/// batch's order, so the packing is deterministic. A sequence longer than `seq_len` keeps its
/// first `seq_len` tokens (TRL's truncation). How full the rows are is counted in
/// [`LoaderStats::tokens`] and [`LoaderStats::token_slots`] (their ratio is
/// [`LoaderStats::packing_efficiency`]).
///
/// Packing makes rows out of several samples, so other per-sample columns cannot ride along:
/// collate only the token column and its mask ([`Tensors::columns`]).
///
/// [`Tensors::pack`]: super::Tensors::pack
/// [`Tensors::columns`]: super::Tensors::columns
/// [`LoaderStats::tokens`]: crate::LoaderStats::tokens
/// [`LoaderStats::token_slots`]: crate::LoaderStats::token_slots
/// [`LoaderStats::packing_efficiency`]: crate::LoaderStats::packing_efficiency
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    seq_len: usize,
    pad_value: i64,
    loss_mask: Option<String>,
}

impl Pack {
    /// Rows of `seq_len` tokens, padded with `pad_value`.
    pub fn new(seq_len: usize, pad_value: i64) -> Pack {
        Pack {
            seq_len,
            pad_value,
            loss_mask: None,
        }
    }

    /// Takes the per-token loss mask from the list column `column` (same lengths as the
    /// tokens), instead of training on every token.
    pub fn loss_mask(mut self, column: impl Into<String>) -> Pack {
        self.loss_mask = Some(column.into());
        self
    }

    /// The loss mask column, if one was given.
    pub(super) fn loss_mask_column(&self) -> Option<&str> {
        self.loss_mask.as_deref()
    }

    /// The packed tensors of `tokens` (and `masks`, the loss mask column's batches), for the
    /// rows `rows` (`(batch, row)` pairs), in the order the type documents, and how many real
    /// tokens they hold.
    pub(super) fn collate(
        &self,
        name: &str,
        tokens: &[&ArrayRef],
        masks: Option<&[&ArrayRef]>,
        rows: &[(usize, usize)],
        pool: &BufferPool,
    ) -> Result<(Vec<(String, TensorData)>, u64)> {
        let fail = |what: String| Error::Collate {
            reason: format!("packing column `{name}`: {what}").into(),
        };
        if self.seq_len == 0 {
            return Err(fail("seq_len must be at least 1".into()));
        }
        let mut sequences = Vec::with_capacity(rows.len());
        for (position, &(batch, row)) in rows.iter().enumerate() {
            let ids = list_values(tokens[batch], row, integers)
                .map_err(|e| fail(format!("sample {position} of the batch: {e}")))?;
            let mask = match masks {
                None => vec![true; ids.len()],
                Some(masks) => {
                    let mask = list_values(masks[batch], row, flags).map_err(|e| {
                        fail(format!("loss mask of sample {position} of the batch: {e}"))
                    })?;
                    if mask.len() != ids.len() {
                        return Err(fail(format!(
                            "sample {position} of the batch has {} tokens and a loss mask of {}",
                            ids.len(),
                            mask.len()
                        )));
                    }
                    mask
                }
            };
            let kept = ids.len().min(self.seq_len);
            sequences.push((ids, mask, kept));
        }
        let bins = best_fit_decreasing(
            &sequences.iter().map(|s| s.2).collect::<Vec<_>>(),
            self.seq_len,
        );
        let len = self.seq_len;
        let cells = bins
            .len()
            .checked_mul(len)
            .filter(|&c| c.checked_mul(8).is_some_and(|b| b <= isize::MAX as usize))
            .ok_or_else(|| fail(format!("{} rows of {len} tokens overflow", bins.len())))?;
        let mut ids_out = pool.get(cells * 8);
        let mut positions_out = pool.get(cells * 8);
        let mut segments_out = pool.get(cells * 4);
        let mut mask_out = pool.get(cells);
        let (ids_buf, pos_buf) = (ids_out.as_mut_slice(), positions_out.as_mut_slice());
        let (seg_buf, mask_buf) = (segments_out.as_mut_slice(), mask_out.as_mut_slice());
        for cell in 0..cells {
            ids_buf[cell * 8..cell * 8 + 8].copy_from_slice(&self.pad_value.to_ne_bytes());
        }
        pos_buf.fill(0);
        seg_buf.fill(0);
        mask_buf.fill(0);
        let mut real = 0u64;
        for (row, members) in bins.iter().enumerate() {
            let mut at = row * len;
            for (segment, &index) in members.iter().enumerate() {
                let (ids, mask, kept) = &sequences[index];
                let segment = i32::try_from(segment + 1).unwrap_or(i32::MAX);
                for (position, (&id, &trained)) in ids.iter().zip(mask).take(*kept).enumerate() {
                    ids_buf[at * 8..at * 8 + 8].copy_from_slice(&id.to_ne_bytes());
                    pos_buf[at * 8..at * 8 + 8].copy_from_slice(&(position as i64).to_ne_bytes());
                    seg_buf[at * 4..at * 4 + 4].copy_from_slice(&segment.to_ne_bytes());
                    mask_buf[at] = u8::from(trained);
                    at += 1;
                }
                real += *kept as u64;
            }
        }
        let shape = vec![bins.len(), len];
        Ok((
            vec![
                (
                    name.to_owned(),
                    tensor_data(ids_out.freeze(), shape.clone(), DType::I64)?,
                ),
                (
                    format!("{name}_positions"),
                    tensor_data(positions_out.freeze(), shape.clone(), DType::I64)?,
                ),
                (
                    format!("{name}_segments"),
                    tensor_data(segments_out.freeze(), shape.clone(), DType::I32)?,
                ),
                (
                    format!("{name}_loss_mask"),
                    tensor_data(mask_out.freeze(), shape, DType::Bool(BoolStore::Native))?,
                ),
            ],
            real,
        ))
    }
}

/// The rows (lists of sequence indices, in placement order) that best-fit-decreasing packs
/// sequences of `lengths` (each at most `capacity`) into.
pub(crate) fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: equal lengths keep the batch's order.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut bins: Vec<(usize, Vec<usize>)> = Vec::new(); // (room left, members)
    for index in order {
        let length = lengths[index];
        let best = bins
            .iter_mut()
            .filter(|(room, _)| *room >= length)
            .min_by_key(|(room, _)| *room);
        match best {
            Some((room, members)) => {
                *room -= length;
                members.push(index);
            }
            None => bins.push((capacity - length, vec![index])),
        }
    }
    bins.into_iter().map(|(_, members)| members).collect()
}

/// Row `row` of the list column `column`, its values converted by `convert`.
fn list_values<T>(
    column: &ArrayRef,
    row: usize,
    convert: fn(&ArrayRef, usize, usize) -> std::result::Result<Vec<T>, String>,
) -> std::result::Result<Vec<T>, String> {
    let (values, range) = match column.data_type() {
        DataType::List(_) => list_range::<i32>(column, row),
        DataType::LargeList(_) => list_range::<i64>(column, row),
        other => return Err(format!("a list column is needed, not {other}")),
    }
    .ok_or("null")?;
    let (start, end) = (range.start, range.end);
    if values.null_count() > 0 && (start..end).any(|i| values.is_null(i)) {
        return Err("a null element".into());
    }
    convert(values, start, end)
}

/// The values array of a list column and where row `row` lies in it; `None` for a null row.
fn list_range<O: OffsetSizeTrait>(
    column: &ArrayRef,
    row: usize,
) -> Option<(&ArrayRef, Range<usize>)> {
    let list = column.as_list::<O>();
    if list.is_null(row) {
        return None;
    }
    let offsets = list.value_offsets();
    Some((
        list.values(),
        offsets[row].as_usize()..offsets[row + 1].as_usize(),
    ))
}

/// Integer list values as i64 token ids.
fn integers(values: &ArrayRef, start: usize, end: usize) -> std::result::Result<Vec<i64>, String> {
    macro_rules! convert {
        ($($arrow:ty),*) => {
            match values.data_type() {
                $(dt if dt == &<$arrow as arrow::datatypes::ArrowPrimitiveType>::DATA_TYPE => {
                    let array = values.as_primitive::<$arrow>();
                    (start..end)
                        .map(|i| i64::try_from(array.value(i)).map_err(|_| {
                            format!("token {} does not fit an i64", array.value(i))
                        }))
                        .collect()
                })*
                other => Err(format!("token ids must be integers, not {other}")),
            }
        };
    }
    convert!(
        Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type
    )
}

/// Boolean (or 0/1 integer) list values as flags.
fn flags(values: &ArrayRef, start: usize, end: usize) -> std::result::Result<Vec<bool>, String> {
    if let DataType::Boolean = values.data_type() {
        let array = values.as_boolean();
        return Ok((start..end).map(|i| array.value(i)).collect());
    }
    integers(values, start, end)
        .map_err(|_| {
            format!(
                "a loss mask must be booleans or integers, not {}",
                values.data_type()
            )
        })?
        .into_iter()
        .map(|v| match v {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("a loss mask holds 0 or 1, not {other}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Int32Array, Int64Array, ListArray};
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::Field;

    use super::*;

    fn list(values: ArrayRef, lengths: &[usize]) -> ArrayRef {
        let field = Arc::new(Field::new("item", values.data_type().clone(), false));
        Arc::new(ListArray::new(
            field,
            OffsetBuffer::from_lengths(lengths.iter().copied()),
            values,
            None,
        ))
    }

    /// The loss mask travels with its tokens, whatever row and place they are packed into;
    /// masks that do not fit are refused naming the sample.
    #[test]
    fn the_loss_mask_travels_with_its_tokens() {
        let tokens = list(
            Arc::new(Int32Array::from(vec![1, 2, 3, 4, 5, 6, 7])),
            &[3, 4],
        );
        let mask = list(
            Arc::new(BooleanArray::from(vec![
                false, true, true, false, false, true, true,
            ])),
            &[3, 4],
        );
        let pool = BufferPool::new(4);
        let pack = Pack::new(8, 0).loss_mask("mask");
        let (columns, real) = pack
            .collate("ids", &[&tokens], Some(&[&mask]), &[(0, 0), (0, 1)], &pool)
            .unwrap();
        assert_eq!(real, 7);
        let get = |i: usize| &columns[i].1;
        // The longer sample first (best-fit decreasing), then the shorter.
        assert_eq!(get(0).as_slice::<i64>().unwrap(), [4, 5, 6, 7, 1, 2, 3, 0]);
        assert_eq!(get(1).as_slice::<i64>().unwrap(), [0, 1, 2, 3, 0, 1, 2, 0]);
        assert_eq!(get(2).as_slice::<i32>().unwrap(), [1, 1, 1, 1, 2, 2, 2, 0]);
        assert_eq!(get(3).as_bytes(), [0, 0, 1, 1, 0, 1, 1, 0]);

        let out_of_range = list(Arc::new(Int64Array::from(vec![1, 0, 1, 2])), &[3, 1]);
        for (mask, expected) in [
            (
                list(
                    Arc::new(BooleanArray::from(vec![true, true, true])),
                    &[1, 2],
                ),
                "has 3 tokens and a loss mask of 1",
            ),
            (out_of_range, "0 or 1, not 2"),
        ] {
            let error = pack
                .collate("ids", &[&tokens], Some(&[&mask]), &[(0, 0), (0, 1)], &pool)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn best_fit_decreasing_fills_the_tightest_row_and_keeps_ties_in_order() {
        // 6 -> new row (room 2); 5 -> new row (room 3); 3 -> row 1 (room 3 fits exactly);
        // 2 -> row 0 (room 2, tightest); 2 -> new row.
        let bins = best_fit_decreasing(&[3, 6, 2, 5, 2], 8);
        assert_eq!(bins, vec![vec![1, 2], vec![3, 0], vec![4]]);
        assert!(best_fit_decreasing(&[], 8).is_empty());
    }
}
