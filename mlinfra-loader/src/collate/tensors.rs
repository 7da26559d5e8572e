//! [`Tensors`]: fixed-width columns as burn tensor data, in one copy or none (documented on
//! the type).

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field};
use burn::tensor::{AllocationProperty, BoolStore, Bytes, DType, TensorData};
use mlinfra_data::RowRefs;

use super::{Collate, Pack, Pad};
use crate::buffers::BufferPool;
use crate::{Error, Result};

/// A collated batch: named burn tensor data, in the source's column order.
///
/// ```
/// # use burn::tensor::{Tensor, TensorData};
/// # use mlinfra_loader::collate::TensorBatch;
/// # fn step(mut batch: TensorBatch, device: &burn::tensor::Device) -> Option<()> {
/// let emb = Tensor::<2>::from_data(batch.remove("emb")?, device); // [batch, 64]
/// # let _ = emb; Some(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TensorBatch {
    columns: Vec<(String, TensorData)>,
    tokens: TokenCount,
}

/// Token positions of a padded or packed batch: how many hold real tokens, out of how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCount {
    /// Positions holding a real token.
    pub real: u64,
    /// Positions in all (real plus padding).
    pub slots: u64,
}

impl TensorBatch {
    /// The tensor data of column `name`.
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.columns
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, data)| data)
    }

    /// Takes column `name` out of the batch (to build a tensor from it without a clone).
    pub fn remove(&mut self, name: &str) -> Option<TensorData> {
        let index = self.columns.iter().position(|(column, _)| column == name)?;
        Some(self.columns.remove(index).1)
    }

    /// Column names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(name, _)| name.as_str())
    }

    /// (name, data) pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TensorData)> {
        self.columns
            .iter()
            .map(|(name, data)| (name.as_str(), data))
    }

    /// The columns, in order.
    pub fn into_columns(self) -> Vec<(String, TensorData)> {
        self.columns
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the batch has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Bytes of tensor data in the batch.
    pub fn num_bytes(&self) -> usize {
        self.columns
            .iter()
            .map(|(_, data)| data.bytes().len())
            .sum()
    }

    /// Bytes of tensor data in page-locked (pinned) host memory: all of
    /// [`num_bytes`](Self::num_bytes) once a loader for a CUDA device staged the batch, 0 on the
    /// CPU. Building a tensor from pinned data starts an asynchronous host-to-device copy.
    pub fn pinned_bytes(&self) -> usize {
        self.columns
            .iter()
            .filter(|(_, data)| data.bytes().property() == AllocationProperty::Pinned)
            .map(|(_, data)| data.bytes().len())
            .sum()
    }

    /// A batch of these columns, built by hand (custom collates, tests); its
    /// [token count](Self::token_count) is zero.
    pub fn from_columns(columns: Vec<(String, TensorData)>) -> Self {
        TensorBatch {
            columns,
            tokens: TokenCount::default(),
        }
    }

    /// Real and total token positions of the padded ([`Pad`]) or packed ([`Pack`]) columns;
    /// zero for a batch without either.
    pub fn token_count(&self) -> TokenCount {
        self.tokens
    }

    pub(super) fn push(&mut self, name: impl Into<String>, data: TensorData) {
        self.columns.push((name.into(), data));
    }
}

/// The default collate: fixed-width columns as burn [`TensorData`].
///
/// # Copies
///
/// - Rows that are consecutive rows of one memory-mapped batch (a sequential epoch over the IPC
///   cache, mostly) are handed over as a view of the mapping: the `TensorData` points into the
///   page cache and nothing is copied, provided the buffer is aligned for the element type
///   (cache files are 64-byte aligned, so it always is there).
/// - Otherwise each row is copied once, from where it lies to its place in the batch buffer,
///   a 64-byte-aligned buffer from the loader's pool that burn then owns without a copy and
///   that returns to the pool when the batch is dropped.
///
/// # Shapes
///
/// A column of scalars becomes `[batch]`; a `FixedSizeList` of `n` becomes `[batch, n]`, nested
/// lists add dimensions (`[batch, n, m]`). Booleans become burn's native bool (one byte each).
/// A null in a requested row is an error naming the column: a tensor has no nulls, and filling
/// them silently would change the data.
///
/// Every column of the source is collated unless [`Tensors::columns`] picks some. A column
/// that is not fixed-width (strings, variable-length lists) is an error unless it is padded
/// ([`Tensors::pad`]) or left out.
#[derive(Debug, Clone)]
pub struct Tensors {
    columns: Option<Vec<String>>,
    pads: HashMap<String, Pad>,
    pack: Option<(String, Pack)>,
    zero_copy: bool,
}

impl Default for Tensors {
    fn default() -> Self {
        Tensors::new()
    }
}

impl Tensors {
    /// Every column, zero-copy where possible.
    pub fn new() -> Tensors {
        Tensors {
            columns: None,
            pads: HashMap::new(),
            pack: None,
            zero_copy: true,
        }
    }

    /// Only these columns, in this order.
    pub fn columns<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Tensors {
        self.columns = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Pads the variable-length integer list column `name` (token ids) into `[batch, len]`,
    /// plus a `{name}_mask` bool tensor that is true on real tokens; see [`Pad`].
    pub fn pad(mut self, name: impl Into<String>, pad: Pad) -> Tensors {
        self.pads.insert(name.into(), pad);
        self
    }

    /// Packs the variable-length integer list column `name` (token ids) into fixed-length rows
    /// of several sequences each, with per-sequence positions, segment ids and a loss mask;
    /// see [`Pack`]. Only `name` and the pack's loss mask column may be collated with it.
    pub fn pack(mut self, name: impl Into<String>, pack: Pack) -> Tensors {
        self.pack = Some((name.into(), pack));
        self
    }

    /// Whether contiguous rows of a memory-mapped batch are handed over as views (default
    /// true). Off, every batch is gathered into a pooled buffer: data that must outlive the
    /// cache files, or a benchmark of the copy.
    pub fn zero_copy(mut self, zero_copy: bool) -> Tensors {
        self.zero_copy = zero_copy;
        self
    }
}

impl Collate for Tensors {
    type Output = TensorBatch;

    fn collate(&self, rows: &RowRefs, pool: &BufferPool) -> Result<TensorBatch> {
        let schema = rows.schema();
        let indices: Vec<usize> = match &self.columns {
            None => (0..schema.fields().len()).collect(),
            Some(names) => names
                .iter()
                .map(|name| {
                    schema.index_of(name).map_err(|_| Error::Collate {
                        reason: format!("no column `{name}` in the source").into(),
                    })
                })
                .collect::<Result<_>>()?,
        };
        if let Some((name, pack)) = &self.pack {
            return collate_packed(name, pack, rows, &indices, pool);
        }
        // Whether the rows can be handed over as views: decided once for every column.
        let contiguous = self.zero_copy.then(|| rows.as_contiguous()).flatten();
        let mut batch = TensorBatch::default();
        for index in indices {
            let field = schema.field(index);
            let columns: Vec<&ArrayRef> = rows.batches().iter().map(|b| b.column(index)).collect();
            match self.pads.get(field.name()) {
                Some(pad) => {
                    let (tokens, mask, count) = pad.collate(field, &columns, rows.rows(), pool)?;
                    batch.tokens.real += count.real;
                    batch.tokens.slots += count.slots;
                    batch.push(field.name(), tokens);
                    batch.push(format!("{}_mask", field.name()), mask);
                }
                None => batch.push(
                    field.name(),
                    fixed_width(field, &columns, rows.rows(), pool, contiguous)?,
                ),
            }
        }
        Ok(batch)
    }

    fn output_bytes(&self, output: &TensorBatch) -> usize {
        output.num_bytes()
    }

    fn token_count(&self, output: &TensorBatch) -> TokenCount {
        output.token_count()
    }

    fn stages(&self) -> bool {
        true
    }

    fn stage(&self, output: &mut TensorBatch, device: &burn::tensor::Device) -> u64 {
        // burn swaps each buffer for a copy in the backend's pinned pool (CUDA) or leaves it
        // (backends without staging); the replaced pooled buffers go back to the loader's pool.
        device.staging(output.columns.iter_mut().map(|(_, data)| data));
        output.pinned_bytes() as u64
    }
}

/// [`Tensors::collate`] with packing: the packed column and its loss mask, nothing else.
fn collate_packed(
    name: &str,
    pack: &Pack,
    rows: &RowRefs,
    indices: &[usize],
    pool: &BufferPool,
) -> Result<TensorBatch> {
    let schema = rows.schema();
    let column = |name: &str| -> Result<Vec<&ArrayRef>> {
        let index = schema.index_of(name).map_err(|_| Error::Collate {
            reason: format!("packing: no column `{name}` in the source").into(),
        })?;
        Ok(rows.batches().iter().map(|b| b.column(index)).collect())
    };
    let mask_name = pack.loss_mask_column();
    if let Some(other) = indices
        .iter()
        .map(|&i| schema.field(i).name())
        .find(|n| n.as_str() != name && Some(n.as_str()) != mask_name)
    {
        return Err(Error::Collate {
            reason: format!(
                "column `{other}` cannot be collated with packed `{name}`: a packed row holds \
                 several samples (collate only the token column and its loss mask)"
            )
            .into(),
        });
    }
    let tokens = column(name)?;
    let masks = mask_name.map(column).transpose()?;
    let (columns, real) = pack.collate(name, &tokens, masks.as_deref(), rows.rows(), pool)?;
    let slots = columns
        .first()
        .map_or(0, |(_, data)| data.shape().iter().product::<usize>() as u64);
    let mut batch = TensorBatch::default();
    for (column, data) in columns {
        batch.push(column, data);
    }
    batch.tokens = TokenCount { real, slots };
    Ok(batch)
}

/// How a fixed-width column lays out: the leaf type, and the shape of one row.
#[derive(Debug, Clone)]
struct RowLayout {
    dtype: DType,
    /// Bytes per leaf element (1 for booleans, stored as bytes in the tensor).
    width: usize,
    /// Shape of one row: empty for scalars, `[n]` for a list of `n`, `[n, m]` nested.
    dims: Vec<usize>,
}

impl RowLayout {
    fn of(data_type: &DataType) -> Option<RowLayout> {
        let (dtype, width) = match data_type {
            DataType::FixedSizeList(child, n) => {
                let mut inner = RowLayout::of(child.data_type())?;
                // A list of 0 has no elements to stack; sizes whose product overflows have no
                // tensor either.
                let n = usize::try_from(*n).ok().filter(|&n| n > 0)?;
                inner.dims.insert(0, n);
                inner
                    .dims
                    .iter()
                    .try_fold(inner.width, |bytes, &d| bytes.checked_mul(d))?;
                return Some(inner);
            }
            DataType::Boolean => (DType::Bool(BoolStore::Native), 1),
            other => {
                let dtype = match other {
                    DataType::Float64 => DType::F64,
                    DataType::Float32 => DType::F32,
                    DataType::Float16 => DType::F16,
                    DataType::Int64 | DataType::Date64 | DataType::Timestamp(..) => DType::I64,
                    DataType::Int32 | DataType::Date32 => DType::I32,
                    DataType::Int16 => DType::I16,
                    DataType::Int8 => DType::I8,
                    DataType::UInt64 => DType::U64,
                    DataType::UInt32 => DType::U32,
                    DataType::UInt16 => DType::U16,
                    DataType::UInt8 => DType::U8,
                    _ => return None,
                };
                (dtype, dtype.size())
            }
        };
        Some(RowLayout {
            dtype,
            width,
            dims: Vec::new(),
        })
    }

    /// Leaf elements per row.
    fn row_elems(&self) -> usize {
        self.dims.iter().product()
    }
}

/// One batch's column, seen down to its leaf values.
struct LeafView<'a> {
    /// The column and each nested list level, outermost first, with leaf elements per entry.
    levels: Vec<(&'a dyn Array, usize)>,
    leaf: Leaf,
}

enum Leaf {
    /// Fixed-width values: the buffer and the index of the column's first element in it.
    Bytes {
        buffer: Buffer,
        first: usize,
    },
    Bool(BooleanArray),
}

impl<'a> LeafView<'a> {
    fn new(column: &'a ArrayRef, layout: &RowLayout) -> LeafView<'a> {
        let mut levels = Vec::new();
        let mut array: &'a dyn Array = column.as_ref();
        let mut per_entry = layout.row_elems();
        for &n in &layout.dims {
            levels.push((array, per_entry));
            array = array.as_fixed_size_list().values().as_ref();
            per_entry /= n;
        }
        levels.push((array, per_entry));
        let leaf = match array.data_type() {
            DataType::Boolean => Leaf::Bool(array.as_boolean().clone()),
            _ => {
                let data = array.to_data();
                Leaf::Bytes {
                    buffer: data.buffers()[0].clone(),
                    first: data.offset(),
                }
            }
        };
        LeafView { levels, leaf }
    }

    /// The first null in row `row`, at any nesting level.
    fn has_null_in(&self, row: usize, row_elems: usize) -> bool {
        self.levels.iter().any(|&(array, per_entry)| {
            if array.null_count() == 0 {
                return false;
            }
            // Entries of this level that row `row` spans.
            let span = row_elems / per_entry;
            (row * span..(row + 1) * span).any(|i| array.is_null(i))
        })
    }
}

/// Gathers (or views) the requested rows of a fixed-width column into one tensor.
fn fixed_width(
    field: &Field,
    columns: &[&ArrayRef],
    rows: &[(usize, usize)],
    pool: &BufferPool,
    contiguous: Option<(usize, usize)>,
) -> Result<TensorData> {
    let layout = RowLayout::of(field.data_type()).ok_or_else(|| Error::Collate {
        reason: format!(
            "column `{}` has type {} which is not fixed-width: pad it (Tensors::pad), leave it out (Tensors::columns) or collate it with a closure",
            field.name(),
            field.data_type()
        )
        .into(),
    })?;
    let views: Vec<LeafView<'_>> = columns.iter().map(|c| LeafView::new(c, &layout)).collect();
    let row_elems = layout.row_elems();
    if let Some(position) = rows
        .iter()
        .position(|&(batch, row)| views[batch].has_null_in(row, row_elems))
    {
        return Err(Error::Collate {
            reason: format!(
                "column `{}` is null in sample {position} of the batch; tensors have no nulls: filter or fill them, or collate with a closure",
                field.name()
            )
            .into(),
        });
    }
    let mut shape = vec![rows.len()];
    shape.extend(&layout.dims);
    let row_bytes = row_elems * layout.width;

    if let Some(contiguous) = contiguous
        && let Some(view) = contiguous_view(contiguous, rows.len(), &views, row_bytes, &layout)
    {
        return tensor_data(view, shape, layout.dtype);
    }
    let mut out = pool.get(rows.len() * row_bytes);
    let dst = out.as_mut_slice();
    for (i, &(batch, row)) in rows.iter().enumerate() {
        let dst = &mut dst[i * row_bytes..(i + 1) * row_bytes];
        match &views[batch].leaf {
            Leaf::Bytes { buffer, first } => {
                let start = (first + row * row_elems) * layout.width;
                dst.copy_from_slice(&buffer.as_slice()[start..start + row_bytes]);
            }
            Leaf::Bool(values) => {
                for (j, byte) in dst.iter_mut().enumerate() {
                    *byte = u8::from(values.value(row * row_elems + j));
                }
            }
        }
    }
    tensor_data(out.freeze(), shape, layout.dtype)
}

/// Rows `first_row..first_row + len` of batch `batch` as a view of their buffer, when that
/// view is aligned for the element type.
fn contiguous_view(
    (batch, first_row): (usize, usize),
    len: usize,
    views: &[LeafView<'_>],
    row_bytes: usize,
    layout: &RowLayout,
) -> Option<Bytes> {
    let Leaf::Bytes { buffer, first } = &views[batch].leaf else {
        return None;
    };
    let start = (first + first_row * layout.row_elems()) * layout.width;
    let slice = buffer.slice_with_length(start, len * row_bytes);
    if !(slice.as_ptr() as usize).is_multiple_of(layout.width) {
        return None;
    }
    Some(Bytes::from_shared(
        bytes::Bytes::from_owner(ArrowSlice(slice)),
        AllocationProperty::File,
    ))
}

/// An Arrow buffer (here: a slice of a memory map) as the owner of burn bytes.
struct ArrowSlice(Buffer);

impl AsRef<[u8]> for ArrowSlice {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

pub(super) fn tensor_data(bytes: Bytes, shape: Vec<usize>, dtype: DType) -> Result<TensorData> {
    TensorData::try_from_bytes(bytes, shape, dtype).map_err(|e| Error::Collate {
        reason: format!("tensor data does not match its shape: {e}").into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(values: &[f32], property: AllocationProperty) -> TensorData {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = Bytes::from_shared(bytes::Bytes::from(raw), property);
        tensor_data(bytes, vec![values.len()], DType::F32).unwrap()
    }

    /// Only buffers in page-locked memory count: what a CUDA staging pass leaves behind.
    #[test]
    fn pinned_bytes_counts_only_pinned_buffers() {
        let mut batch = TensorBatch::default();
        batch.push("a", data(&[1.0, 2.0, 3.0], AllocationProperty::Pinned));
        batch.push("b", data(&[4.0; 5], AllocationProperty::Native));
        batch.push("c", data(&[5.0], AllocationProperty::File));
        assert_eq!(batch.num_bytes(), 4 * 9);
        assert_eq!(batch.pinned_bytes(), 4 * 3);
    }

    /// On the CPU backend staging is a no-op: no buffer moves, no byte is pinned, data intact.
    #[test]
    fn staging_on_the_cpu_leaves_the_batch_as_it_is() {
        let mut batch = TensorBatch::default();
        batch.push("a", data(&[1.5, -2.0], AllocationProperty::Native));
        let before = batch.get("a").unwrap().bytes().as_ptr();
        let pinned = Tensors::new().stage(&mut batch, &burn::tensor::Device::flex());
        assert_eq!(pinned, 0);
        let after = batch.get("a").unwrap();
        assert_eq!(after.bytes().as_ptr(), before);
        assert_eq!(after.as_slice::<f32>().unwrap(), [1.5, -2.0]);
    }
}
