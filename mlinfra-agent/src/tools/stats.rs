//! `dataset_stats`: per-column statistics over every row, in one streaming pass, as
//! `pandas.DataFrame.describe` and Hugging Face's dataset viewer report them: for numbers the
//! count, nulls, minimum, maximum, mean and standard deviation; for strings and binaries
//! the nulls and the shortest and longest value; for other types the nulls.
//!
//! Means and variances are two-pass sums in f64 within each batch, merged across batches with
//! Chan et al.'s formula, all of it on the values less the column's first value: a column of
//! large, close values (timestamps, ids) loses no precision to a sum of squares or to a mean
//! rounded at its magnitude.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use rmcp::schemars::{self, JsonSchema};
use serde::Serialize;

use crate::root::DataRoot;
use crate::tools::datasets::DatasetPath;
use crate::{Error, Result};

/// One column's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ColumnStats {
    /// The column's name.
    pub name: String,
    /// Its Arrow type.
    pub data_type: String,
    /// Values that are not null.
    pub count: u64,
    /// Null values.
    pub nulls: u64,
    /// Numbers: the smallest (NaNs skipped).
    pub min: Option<f64>,
    /// Numbers: the largest (NaNs skipped).
    pub max: Option<f64>,
    /// Numbers: the mean of the non-NaN values.
    pub mean: Option<f64>,
    /// Numbers: the sample standard deviation (n - 1), with two values or more.
    pub std: Option<f64>,
    /// Strings and binaries: the shortest value's length, bytes.
    pub min_length: Option<u64>,
    /// Strings and binaries: the longest value's length, bytes.
    pub max_length: Option<u64>,
}

/// A dataset's statistics.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatsReport {
    /// The path as requested.
    pub path: String,
    /// Rows read.
    pub rows: u64,
    /// Per column, in schema order.
    pub columns: Vec<ColumnStats>,
}

/// Running statistics of one column.
#[derive(Debug, Default)]
struct Running {
    count: u64,
    nulls: u64,
    numbers: u64,
    /// The column's first number: the moments are of the values less it.
    shift: Option<f64>,
    /// The mean less `shift`.
    mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
    min: Option<f64>,
    max: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
}

impl Running {
    fn add_numbers(&mut self, values: impl Iterator<Item = f64>) {
        let values: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
        let Some(&first) = values.first() else {
            return;
        };
        for &x in &values {
            self.min = Some(self.min.map_or(x, |m| m.min(x)));
            self.max = Some(self.max.map_or(x, |m| m.max(x)));
        }
        let shift = *self.shift.get_or_insert(first);
        // This batch's own moments, two passes, then merged: Chan et al.
        let n = values.len() as u64;
        let mean = values.iter().map(|x| x - shift).sum::<f64>() / n as f64;
        let m2: f64 = values
            .iter()
            .map(|x| (x - shift - mean) * (x - shift - mean))
            .sum();
        let total = self.numbers + n;
        let delta = mean - self.mean;
        self.m2 += m2 + delta * delta * (self.numbers as f64 * n as f64 / total as f64);
        self.mean += delta * n as f64 / total as f64;
        self.numbers = total;
    }

    fn add_length(&mut self, length: u64) {
        self.min_length = Some(self.min_length.map_or(length, |m| m.min(length)));
        self.max_length = Some(self.max_length.map_or(length, |m| m.max(length)));
    }

    fn add(&mut self, column: &dyn Array) -> Result<()> {
        self.nulls += column.null_count() as u64;
        self.count += (column.len() - column.null_count()) as u64;
        let kind = column.data_type();
        if kind.is_numeric() {
            let numbers = arrow::compute::cast(column, &DataType::Float64).map_err(|error| {
                Error::InvalidArgument {
                    tool: "dataset_stats",
                    reason: format!("reading a {kind} column as numbers: {error}").into(),
                }
            })?;
            self.add_numbers(numbers.as_primitive::<Float64Type>().iter().flatten());
        } else if matches!(
            kind,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        ) {
            // Byte lengths by Arrow's own kernel (Int32 or Int64 by type), nulls kept null.
            let lengths = arrow::compute::kernels::length::length(column)
                .and_then(|lengths| arrow::compute::cast(&lengths, &DataType::Int64))
                .map_err(|error| Error::InvalidArgument {
                    tool: "dataset_stats",
                    reason: format!("the lengths of a {kind} column: {error}").into(),
                })?;
            for length in lengths.as_primitive::<Int64Type>().iter().flatten() {
                self.add_length(length as u64);
            }
        }
        Ok(())
    }

    fn finish(self, name: String, data_type: String) -> ColumnStats {
        let numeric = self.numbers > 0;
        ColumnStats {
            name,
            data_type,
            count: self.count,
            nulls: self.nulls,
            min: self.min,
            max: self.max,
            mean: numeric.then(|| self.shift.unwrap_or(0.0) + self.mean),
            std: (self.numbers > 1).then(|| (self.m2 / (self.numbers - 1) as f64).sqrt()),
            min_length: self.min_length,
            max_length: self.max_length,
        }
    }
}

/// `dataset_stats`: reads every row once, batch by batch.
pub(crate) fn stats(root: &DataRoot, request: &DatasetPath) -> Result<StatsReport> {
    let dataset = root.open_dataset(&request.path)?;
    let schema = dataset.schema().clone();
    let mut running: Vec<Running> = schema.fields().iter().map(|_| Running::default()).collect();
    let mut rows = 0u64;
    for batch in dataset.scan().build() {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        for (column, stats) in batch.columns().iter().zip(&mut running) {
            stats.add(column.as_ref())?;
        }
    }
    let columns = schema
        .fields()
        .iter()
        .zip(running)
        .map(|(field, stats)| stats.finish(field.name().clone(), field.data_type().to_string()))
        .collect();
    Ok(StatsReport {
        path: request.path.clone(),
        rows,
        columns,
    })
}
