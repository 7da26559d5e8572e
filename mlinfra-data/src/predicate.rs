//! [`Predicate`]: row filters for scans, and the pruning that skips data which cannot match.
//!
//! ```no_run
//! use mlinfra_data::{Dataset, Predicate};
//!
//! let dataset = Dataset::open("data/")?;
//! let recent = Predicate::gt_eq("year", 2020).and(Predicate::is_in("lang", ["en", "fr"]));
//! for batch in dataset.scan().with_filter(recent)?.build() {
//!     let batch = batch?; // only rows where year >= 2020 and lang is "en" or "fr"
//!     # let _ = batch;
//! }
//! # Ok::<(), mlinfra_data::Error>(())
//! ```
//!
//! # Three levels
//!
//! 1. **Row groups** whose footer statistics (min, max, null count) prove that no row matches
//!    are not read at all.
//! 2. **Pages**: in the row groups kept, the page index (column index: per-page min/max; offset
//!    index: where pages start) turns the predicate into a row selection, so pages that cannot
//!    match are neither read nor decoded. Files without a page index skip this level.
//! 3. **Rows**: what is decoded is filtered exactly. Predicate columns are decoded first, and the
//!    other projected columns only for the rows that pass (arrow-rs's `RowFilter`).
//!
//! Pruning is only ever conservative: missing or unusable statistics keep the data.
//!
//! # Semantics
//!
//! SQL's: a null value matches no comparison (only [`Predicate::is_null`]); floating-point
//! comparisons are IEEE's, so NaN matches none (arrow's kernels order NaN above everything; the
//! filter removes NaN explicitly so that pruning on statistics, which exclude NaN, and filtering
//! agree). Literals are cast to the column's type; a literal that does not fit (300 for an
//! `Int8` column, "abc" for a date) is [`Error::InvalidPredicate`]. Predicates apply to
//! top-level primitive, string, boolean and temporal columns.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, Scalar, StringArray, UInt64Array,
};
use arrow::compute::kernels::cmp;
use arrow::compute::{CastOptions, and, not, or};
use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::ParquetMetaData;
use parquet::schema::types::SchemaDescriptor;

use crate::{Error, Result};

/// A literal value in a [`Predicate`], cast to the column's type when the predicate is bound.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Literal {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string: for string columns, and for dates and timestamps in ISO 8601.
    Str(String),
}

macro_rules! literal_from {
    ($variant:ident as $target:ty: $($t:ty),*) => {
        $(impl From<$t> for Literal {
            fn from(value: $t) -> Self {
                Literal::$variant(<$target>::from(value))
            }
        })*
    };
}
literal_from!(Int as i64: i8, i16, i32, i64);
literal_from!(UInt as u64: u8, u16, u32, u64);
literal_from!(Float as f64: f32, f64);
literal_from!(Bool as bool: bool);
literal_from!(Str as String: &str, String);

/// A comparison operator of [`Predicate::Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// A filter on rows; see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Predicate {
    /// `column op value`.
    Compare {
        /// The column name.
        column: String,
        /// The operator.
        op: CmpOp,
        /// The value compared with.
        value: Literal,
    },
    /// `low <= column <= high`.
    Between {
        /// The column name.
        column: String,
        /// The inclusive lower bound.
        low: Literal,
        /// The inclusive upper bound.
        high: Literal,
    },
    /// `column` equals one of `values`.
    In {
        /// The column name.
        column: String,
        /// The values; an empty list matches nothing.
        values: Vec<Literal>,
    },
    /// `column` is null.
    IsNull {
        /// The column name.
        column: String,
    },
    /// Every predicate holds.
    And(Vec<Predicate>),
}

impl Predicate {
    fn compare(column: &str, op: CmpOp, value: impl Into<Literal>) -> Self {
        Predicate::Compare {
            column: column.to_owned(),
            op,
            value: value.into(),
        }
    }

    /// `column = value`.
    pub fn eq(column: &str, value: impl Into<Literal>) -> Self {
        Self::compare(column, CmpOp::Eq, value)
    }

    /// `column < value`.
    pub fn lt(column: &str, value: impl Into<Literal>) -> Self {
        Self::compare(column, CmpOp::Lt, value)
    }

    /// `column <= value`.
    pub fn lt_eq(column: &str, value: impl Into<Literal>) -> Self {
        Self::compare(column, CmpOp::LtEq, value)
    }

    /// `column > value`.
    pub fn gt(column: &str, value: impl Into<Literal>) -> Self {
        Self::compare(column, CmpOp::Gt, value)
    }

    /// `column >= value`.
    pub fn gt_eq(column: &str, value: impl Into<Literal>) -> Self {
        Self::compare(column, CmpOp::GtEq, value)
    }

    /// `low <= column <= high`.
    pub fn between(column: &str, low: impl Into<Literal>, high: impl Into<Literal>) -> Self {
        Predicate::Between {
            column: column.to_owned(),
            low: low.into(),
            high: high.into(),
        }
    }

    /// `column` equals one of `values`.
    pub fn is_in<L: Into<Literal>>(column: &str, values: impl IntoIterator<Item = L>) -> Self {
        Predicate::In {
            column: column.to_owned(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// `column` is null.
    pub fn is_null(column: &str) -> Self {
        Predicate::IsNull {
            column: column.to_owned(),
        }
    }

    /// This predicate and `other`.
    pub fn and(self, other: Predicate) -> Self {
        match self {
            Predicate::And(mut all) => {
                all.push(other);
                Predicate::And(all)
            }
            one => Predicate::And(vec![one, other]),
        }
    }

    /// Checks columns and literals against `schema` and casts each literal to its column's
    /// type, once, before any data is read.
    pub(crate) fn bind(&self, schema: &Schema) -> Result<Bound> {
        let column_type = |name: &str| -> Result<DataType> {
            let field = schema
                .field_with_name(name)
                .map_err(|_| Error::NoSuchColumn { name: name.into() })?;
            let data_type = field.data_type();
            if data_type.is_nested() || matches!(data_type, DataType::Dictionary(..)) {
                return Err(invalid(format!(
                    "column `{name}` has type {data_type}; predicates apply to primitive, \
                     string, boolean and temporal columns"
                )));
            }
            Ok(data_type.clone())
        };
        let scalar = |name: &str, value: &Literal| -> Result<ArrayRef> {
            let data_type = column_type(name)?;
            cast_literal(value, &data_type)
                .map_err(|e| invalid(format!("{value:?} does not fit column `{name}`: {e}")))
        };
        Ok(match self {
            Predicate::Compare { column, op, value } => Bound::Compare {
                column: column.clone(),
                op: *op,
                value: scalar(column, value)?,
            },
            Predicate::Between { column, low, high } => Bound::Between {
                column: column.clone(),
                low: scalar(column, low)?,
                high: scalar(column, high)?,
            },
            Predicate::In { column, values } => Bound::In {
                column: column.clone(),
                values: values
                    .iter()
                    .map(|v| scalar(column, v))
                    .collect::<Result<_>>()?,
            },
            Predicate::IsNull { column } => {
                column_type(column)?;
                Bound::IsNull {
                    column: column.clone(),
                }
            }
            Predicate::And(all) => {
                Bound::And(all.iter().map(|p| p.bind(schema)).collect::<Result<_>>()?)
            }
        })
    }
}

fn invalid(what: String) -> Error {
    Error::InvalidPredicate { what: what.into() }
}

/// `value` as a one-element array of `data_type`; fails rather than saturating or nulling.
fn cast_literal(value: &Literal, data_type: &DataType) -> Result<ArrayRef, ArrowError> {
    let array: ArrayRef = match value {
        Literal::Int(v) => Arc::new(Int64Array::from(vec![*v])),
        Literal::UInt(v) => Arc::new(UInt64Array::from(vec![*v])),
        Literal::Float(v) => Arc::new(Float64Array::from(vec![*v])),
        Literal::Bool(v) => Arc::new(BooleanArray::from(vec![*v])),
        Literal::Str(v) => Arc::new(StringArray::from(vec![v.as_str()])),
    };
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow::compute::cast_with_options(&array, data_type, &options)
}

/// A [`Predicate`] whose literals are arrays of their column's type.
#[derive(Debug, Clone)]
pub(crate) enum Bound {
    Compare {
        column: String,
        op: CmpOp,
        value: ArrayRef,
    },
    Between {
        column: String,
        low: ArrayRef,
        high: ArrayRef,
    },
    In {
        column: String,
        values: Vec<ArrayRef>,
    },
    IsNull {
        column: String,
    },
    And(Vec<Bound>),
}

/// The statistics of one column over a set of containers (row groups, or pages).
struct Stats {
    mins: ArrayRef,
    maxes: ArrayRef,
    null_counts: UInt64Array,
}

impl Bound {
    /// The columns the predicate reads.
    pub(crate) fn columns(&self, out: &mut Vec<String>) {
        match self {
            Bound::Compare { column, .. }
            | Bound::Between { column, .. }
            | Bound::In { column, .. }
            | Bound::IsNull { column } => out.push(column.clone()),
            Bound::And(all) => all.iter().for_each(|p| p.columns(out)),
        }
    }

    /// Which rows of `batch` (holding at least the predicate's columns) match.
    pub(crate) fn evaluate(
        &self,
        batch: &arrow::array::RecordBatch,
    ) -> Result<BooleanArray, ArrowError> {
        let column = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                ArrowError::SchemaError(format!("predicate column `{name}` not decoded"))
            })
        };
        let mask = match self {
            Bound::Compare {
                column: name,
                op,
                value,
            } => compare(&column(name)?, *op, value)?,
            Bound::Between {
                column: name,
                low,
                high,
            } => {
                let values = column(name)?;
                and(
                    &compare(&values, CmpOp::GtEq, low)?,
                    &compare(&values, CmpOp::LtEq, high)?,
                )?
            }
            Bound::In {
                column: name,
                values,
            } => {
                let array = column(name)?;
                let mut any = BooleanArray::from(vec![false; array.len()]);
                for value in values {
                    any = or(&any, &compare(&array, CmpOp::Eq, value)?)?;
                }
                any
            }
            Bound::IsNull { column: name } => arrow::compute::is_null(&column(name)?)?,
            Bound::And(all) => {
                let mut every = BooleanArray::from(vec![true; batch.num_rows()]);
                for predicate in all {
                    every = and(&every, &predicate.evaluate(batch)?)?;
                }
                every
            }
        };
        Ok(mask)
    }

    /// For each container described by `stats_of(column)`, whether statistics prove that no
    /// row in it can match. Unknown statistics prove nothing.
    fn cannot_match(&self, stats_of: &dyn Fn(&str) -> Option<Stats>, n: usize) -> Vec<bool> {
        let proven = |mask: Result<BooleanArray, ArrowError>| -> Vec<bool> {
            match mask {
                // A null (unknown statistic) proves nothing.
                Ok(mask) => (0..n).map(|i| mask.is_valid(i) && mask.value(i)).collect(),
                Err(_) => vec![false; n],
            }
        };
        let either = |a: Vec<bool>, b: Vec<bool>| a.iter().zip(&b).map(|(x, y)| *x || *y).collect();
        match self {
            Bound::Compare { column, op, value } => {
                let Some(stats) = stats_of(column) else {
                    return vec![false; n];
                };
                if is_nan(value) {
                    return vec![false; n];
                }
                let (min, max) = (&stats.mins, &stats.maxes);
                match op {
                    CmpOp::Eq => either(
                        proven(cmp_scalar(max, CmpOp::Lt, value)),
                        proven(cmp_scalar(min, CmpOp::Gt, value)),
                    ),
                    CmpOp::Lt => proven(cmp_scalar(min, CmpOp::GtEq, value)),
                    CmpOp::LtEq => proven(cmp_scalar(min, CmpOp::Gt, value)),
                    CmpOp::Gt => proven(cmp_scalar(max, CmpOp::LtEq, value)),
                    CmpOp::GtEq => proven(cmp_scalar(max, CmpOp::Lt, value)),
                }
            }
            Bound::Between { column, low, high } => {
                let Some(stats) = stats_of(column) else {
                    return vec![false; n];
                };
                if is_nan(low) || is_nan(high) {
                    return vec![false; n];
                }
                either(
                    proven(cmp_scalar(&stats.maxes, CmpOp::Lt, low)),
                    proven(cmp_scalar(&stats.mins, CmpOp::Gt, high)),
                )
            }
            Bound::In { column, values } => {
                let mut all = vec![true; n];
                for value in values {
                    let one = Bound::Compare {
                        column: column.clone(),
                        op: CmpOp::Eq,
                        value: Arc::clone(value),
                    }
                    .cannot_match(stats_of, n);
                    all.iter_mut().zip(one).for_each(|(a, b)| *a &= b);
                }
                all
            }
            Bound::IsNull { column } => match stats_of(column) {
                Some(stats) => (0..n)
                    .map(|i| stats.null_counts.is_valid(i) && stats.null_counts.value(i) == 0)
                    .collect(),
                None => vec![false; n],
            },
            Bound::And(all) => all.iter().fold(vec![false; n], |acc, p| {
                either(acc, p.cannot_match(stats_of, n))
            }),
        }
    }

    /// Row groups of a file that may hold matching rows, by footer statistics.
    pub(crate) fn row_groups_to_read(
        &self,
        metadata: &ParquetMetaData,
        arrow_schema: &Schema,
    ) -> Vec<usize> {
        let parquet_schema = metadata.file_metadata().schema_descr();
        let groups = metadata.row_groups();
        let stats_of = |name: &str| -> Option<Stats> {
            let converter =
                StatisticsConverter::try_new(name, arrow_schema, parquet_schema).ok()?;
            Some(Stats {
                mins: converter.row_group_mins(groups.iter()).ok()?,
                maxes: converter.row_group_maxes(groups.iter()).ok()?,
                null_counts: converter.row_group_null_counts(groups.iter()).ok()?,
            })
        };
        let cannot = self.cannot_match(&stats_of, groups.len());
        (0..groups.len()).filter(|&g| !cannot[g]).collect()
    }

    /// The rows of row group `group` on pages that may match, by the page index; `None` when
    /// the file has no page index (every row may match).
    pub(crate) fn page_selection(
        &self,
        metadata: &ParquetMetaData,
        arrow_schema: &Schema,
        group: usize,
    ) -> Option<RowSelection> {
        let page_index = metadata.page_index()?;
        let parquet_schema: &SchemaDescriptor = metadata.file_metadata().schema_descr();
        let rows = usize::try_from(metadata.row_group(group).num_rows()).ok()?;
        self.selection_in(
            metadata,
            page_index.as_ref(),
            parquet_schema,
            arrow_schema,
            group,
            rows,
        )
    }

    fn selection_in(
        &self,
        metadata: &ParquetMetaData,
        page_index: &dyn parquet::file::metadata::page_index::PageIndexProvider,
        parquet_schema: &SchemaDescriptor,
        arrow_schema: &Schema,
        group: usize,
        rows: usize,
    ) -> Option<RowSelection> {
        if let Bound::And(all) = self {
            // Pages of different columns have different boundaries: combine row ranges.
            return all
                .iter()
                .filter_map(|p| {
                    p.selection_in(
                        metadata,
                        page_index,
                        parquet_schema,
                        arrow_schema,
                        group,
                        rows,
                    )
                })
                .reduce(|a, b| a.intersection(&b));
        }
        let mut columns = Vec::new();
        self.columns(&mut columns);
        let converter =
            StatisticsConverter::try_new(&columns[0], arrow_schema, parquet_schema).ok()?;
        let groups = [group];
        let page_rows = converter
            .data_page_row_counts(page_index, metadata.row_groups(), &groups)
            .ok()??;
        let stats = Stats {
            mins: converter.data_page_mins(page_index, &groups).ok()?,
            maxes: converter.data_page_maxes(page_index, &groups).ok()?,
            null_counts: converter.data_page_null_counts(page_index, &groups).ok()?,
        };
        let pages = page_rows.len();
        if stats.mins.len() != pages || page_rows.null_count() > 0 {
            return None;
        }
        let cannot = self.cannot_match(&|_| Some(stats.clone_stats()), pages);
        let selectors: Vec<RowSelector> = (0..pages)
            .map(|p| {
                let n = page_rows.value(p) as usize;
                if cannot[p] {
                    RowSelector::skip(n)
                } else {
                    RowSelector::select(n)
                }
            })
            .collect();
        if selectors.iter().map(|s| s.row_count).sum::<usize>() != rows {
            return None; // an inconsistent page index proves nothing
        }
        Some(RowSelection::from(selectors))
    }
}

impl Stats {
    fn clone_stats(&self) -> Stats {
        Stats {
            mins: Arc::clone(&self.mins),
            maxes: Arc::clone(&self.maxes),
            null_counts: self.null_counts.clone(),
        }
    }
}

/// Whether a one-element literal array is a floating-point NaN.
fn is_nan(value: &ArrayRef) -> bool {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float16Type, Float32Type, Float64Type};
    match value.data_type() {
        DataType::Float16 => value.as_primitive::<Float16Type>().value(0).is_nan(),
        DataType::Float32 => value.as_primitive::<Float32Type>().value(0).is_nan(),
        DataType::Float64 => value.as_primitive::<Float64Type>().value(0).is_nan(),
        _ => false,
    }
}

fn cmp_scalar(array: &ArrayRef, op: CmpOp, value: &ArrayRef) -> Result<BooleanArray, ArrowError> {
    let scalar = Scalar::new(Arc::clone(value));
    match op {
        CmpOp::Eq => cmp::eq(array, &scalar),
        CmpOp::Lt => cmp::lt(array, &scalar),
        CmpOp::LtEq => cmp::lt_eq(array, &scalar),
        CmpOp::Gt => cmp::gt(array, &scalar),
        CmpOp::GtEq => cmp::gt_eq(array, &scalar),
    }
}

/// `array op value` with IEEE semantics for floats: NaN compares false (arrow's kernels order
/// NaN above every number).
fn compare(array: &ArrayRef, op: CmpOp, value: &ArrayRef) -> Result<BooleanArray, ArrowError> {
    let result = cmp_scalar(array, op, value)?;
    if !matches!(
        array.data_type(),
        DataType::Float16 | DataType::Float32 | DataType::Float64
    ) {
        return Ok(result);
    }
    // x == x is false only for NaN under IEEE, but arrow's total order says NaN == NaN; so
    // compute NaN-ness directly.
    let not_nan = not_nan_mask(array);
    let value_is_nan = is_nan(value);
    let result = and(&result, &not_nan)?;
    Ok(if value_is_nan {
        BooleanArray::from(vec![false; array.len()])
    } else {
        result
    })
}

fn not_nan_mask(array: &ArrayRef) -> BooleanArray {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float16Type, Float32Type, Float64Type};
    match array.data_type() {
        DataType::Float16 => {
            BooleanArray::from_unary(array.as_primitive::<Float16Type>(), |x| !x.is_nan())
        }
        DataType::Float32 => {
            BooleanArray::from_unary(array.as_primitive::<Float32Type>(), |x| !x.is_nan())
        }
        DataType::Float64 => {
            BooleanArray::from_unary(array.as_primitive::<Float64Type>(), |x| !x.is_nan())
        }
        _ => not(&BooleanArray::from(vec![false; array.len()])).expect("same length"),
    }
}
