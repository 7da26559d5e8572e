//! [`Summary`]: what a dataset is, in one serialisable value (what `data_inspect` prints).

use serde::Serialize;

use crate::Result;
use crate::dataset::Dataset;

/// A dataset described from its footers and manifest: no data pages are decoded, but computing
/// the fingerprint reads every byte once (see [`Dataset::manifest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// The URI the dataset was opened from.
    pub uri: String,
    /// Rows, from the footers.
    pub rows: u64,
    /// Parquet files.
    pub files: usize,
    /// Row groups across all files.
    pub row_groups: usize,
    /// The columns of the (projected) schema, in order.
    pub columns: Vec<ColumnSummary>,
    /// The dataset's fingerprint ([`Dataset::fingerprint`]).
    pub fingerprint: String,
}

/// One column of a [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ColumnSummary {
    /// Column name.
    pub name: String,
    /// The Arrow type, as Arrow displays it (for example `FixedSizeList(64 x Float32)`).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether the column may hold nulls.
    pub nullable: bool,
}

impl Dataset {
    /// Describes the dataset; see [`Summary`] for the cost.
    ///
    /// # Errors
    ///
    /// As [`Dataset::manifest`].
    pub fn summary(&self) -> Result<Summary> {
        Ok(Summary {
            uri: self.uri().to_owned(),
            rows: self.num_rows(),
            files: self.shards().len(),
            row_groups: self.num_row_groups(),
            columns: self.columns(),
            fingerprint: self.fingerprint()?.to_owned(),
        })
    }

    /// The (projected) schema's columns, in order: from the footers, no I/O.
    pub fn columns(&self) -> Vec<ColumnSummary> {
        self.schema()
            .fields()
            .iter()
            .map(|field| ColumnSummary {
                name: field.name().clone(),
                data_type: field.data_type().to_string(),
                nullable: field.is_nullable(),
            })
            .collect()
    }

    /// Row groups across all files, from the footers.
    pub fn num_row_groups(&self) -> usize {
        self.shards().iter().map(|s| s.num_row_groups()).sum()
    }
}
