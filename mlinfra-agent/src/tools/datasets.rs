//! The dataset tools' arguments, results and work, over `mlinfra-data`. Each function is
//! synchronous (file reads); the server runs it on tokio's blocking pool.
//!
//! The argument and result types are the tools' contract: their JSON schemas (the MCP
//! `inputSchema` and `outputSchema`) are derived from them, and the field docs become the
//! schemas' descriptions.

use arrow::json::ArrayWriter;
use mlinfra_data::ColumnSummary;
use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

use crate::root::DataRoot;
use crate::{Error, Result};

/// The most rows `dataset_sample` returns.
pub const MAX_SAMPLE_ROWS: u32 = 100;
/// The most bytes of JSON `dataset_sample` returns (a row of long strings is refused, not
/// truncated).
pub const MAX_SAMPLE_BYTES: usize = 1 << 20;

/// A dataset to look at.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetPath {
    /// A Parquet file, or a directory of them, relative to the server's data root.
    pub path: String,
}

/// The first rows of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    /// A Parquet file, or a directory of them, relative to the server's data root.
    pub path: String,
    /// How many rows from the start, 1 to 100.
    #[serde(default = "default_sample_rows")]
    pub rows: u32,
}

fn default_sample_rows() -> u32 {
    10
}

/// One column.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its Arrow type, as Arrow prints it (`Int64`, `Utf8`, `List(Float32)`...).
    pub data_type: String,
    /// Whether it may hold nulls.
    pub nullable: bool,
}

impl From<ColumnSummary> for Column {
    fn from(column: ColumnSummary) -> Self {
        Self {
            name: column.name,
            data_type: column.data_type,
            nullable: column.nullable,
        }
    }
}

/// A dataset's schema and size.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SchemaReport {
    /// The path as requested.
    pub path: String,
    /// Rows in all files.
    pub rows: u64,
    /// Parquet files.
    pub files: usize,
    /// Row groups in all files.
    pub row_groups: usize,
    /// The columns, in schema order.
    pub columns: Vec<Column>,
}

/// A dataset's first rows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SampleReport {
    /// The path as requested.
    pub path: String,
    /// Rows in the dataset.
    pub total_rows: u64,
    /// The rows, one JSON object each (column name to value), in order.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// A dataset's content fingerprint.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FingerprintReport {
    /// The path as requested.
    pub path: String,
    /// `blake3:` and the hash over the schema and every file's bytes: equal exactly when the
    /// datasets are (mlinfra-data's manifest fingerprint).
    pub fingerprint: String,
    /// Rows in all files.
    pub rows: u64,
}

/// `dataset_schema`: reads the files' footers, not their data.
pub(crate) fn schema(root: &DataRoot, request: &DatasetPath) -> Result<SchemaReport> {
    let dataset = root.open_dataset(&request.path)?;
    Ok(SchemaReport {
        path: request.path.clone(),
        rows: dataset.num_rows(),
        files: dataset.shards().len(),
        row_groups: dataset.num_row_groups(),
        columns: dataset.columns().into_iter().map(Column::from).collect(),
    })
}

/// `dataset_sample`: decodes only the pages holding the first `rows` rows.
pub(crate) fn sample(root: &DataRoot, request: &SampleRequest) -> Result<SampleReport> {
    if !(1..=MAX_SAMPLE_ROWS).contains(&request.rows) {
        return Err(Error::InvalidArgument {
            tool: "dataset_sample",
            reason: format!("rows must be 1 to {MAX_SAMPLE_ROWS}, not {}", request.rows).into(),
        });
    }
    let dataset = root.open_dataset(&request.path)?;
    let total_rows = dataset.num_rows();
    let indices: Vec<u64> = (0..u64::from(request.rows).min(total_rows)).collect();
    let batch = dataset.take(&indices)?;
    let mut writer = ArrayWriter::new(Vec::new());
    writer
        .write(&batch)
        .and_then(|()| writer.finish())
        .map_err(|error| Error::InvalidArgument {
            tool: "dataset_sample",
            reason: format!("rows not representable as JSON: {error}").into(),
        })?;
    let json = writer.into_inner();
    if json.len() > MAX_SAMPLE_BYTES {
        return Err(Error::InvalidArgument {
            tool: "dataset_sample",
            reason: format!(
                "{} rows are {} bytes of JSON, over the {MAX_SAMPLE_BYTES}-byte limit: ask for fewer",
                indices.len(),
                json.len()
            )
            .into(),
        });
    }
    // An empty batch writes nothing rather than `[]`.
    let rows = if json.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&json).expect("arrow-json writes a JSON array of objects")
    };
    Ok(SampleReport {
        path: request.path.clone(),
        total_rows,
        rows,
    })
}

/// `dataset_fingerprint`: hashes every byte of every file (BLAKE3 on all cores).
pub(crate) fn fingerprint(root: &DataRoot, request: &DatasetPath) -> Result<FingerprintReport> {
    let dataset = root.open_dataset(&request.path)?;
    Ok(FingerprintReport {
        path: request.path.clone(),
        fingerprint: dataset.fingerprint()?.to_owned(),
        rows: dataset.num_rows(),
    })
}

/// A CSV or JSON-lines file to turn into Parquet.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvertRequest {
    /// The input, relative to the data root: `.csv` (header row, types inferred), or
    /// `.jsonl` / `.ndjson` (one JSON object per line).
    pub input: String,
    /// The new Parquet file, relative to the data root: a name ending in `.parquet` that
    /// does not exist yet.
    pub output: String,
}

/// What a conversion wrote.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConvertReport {
    /// The output as requested.
    pub output: String,
    /// Rows written.
    pub rows: u64,
    /// Row groups written.
    pub row_groups: usize,
    /// Bytes read and written.
    pub bytes_in: u64,
    /// Bytes of Parquet written.
    pub bytes_out: u64,
    /// The columns inferred.
    pub columns: Vec<Column>,
}

/// A dataset and the fingerprint it should have.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// A Parquet file, or a directory of them, relative to the server's data root.
    pub path: String,
    /// The fingerprint recorded earlier (`blake3:...`, from `dataset_fingerprint`).
    pub fingerprint: String,
}

/// Whether a dataset is still the one fingerprinted.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VerifyReport {
    /// The path as requested.
    pub path: String,
    /// Whether its fingerprint is the expected one.
    pub matches: bool,
    /// Its fingerprint now.
    pub fingerprint: String,
}

/// `dataset_convert`: streams the input into a new Parquet file (atomic: a temporary file
/// renamed into place, nothing left on failure). Bad records fail the conversion, named by
/// line.
pub(crate) fn convert(root: &DataRoot, request: &ConvertRequest) -> Result<ConvertReport> {
    let input = root.resolve(&request.input)?;
    let output = root.resolve_new(&request.output, ".parquet")?;
    let extension = input
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let conversion = match extension.as_deref() {
        Some("csv") => mlinfra_data::convert::Conversion::csv(&input),
        Some("jsonl" | "ndjson") => mlinfra_data::convert::Conversion::json_lines(&input),
        _ => {
            return Err(Error::InvalidArgument {
                tool: "dataset_convert",
                reason: "the input must end in .csv, .jsonl or .ndjson".into(),
            });
        }
    };
    let report = conversion.write(&output)?;
    // The columns as the dataset tools name them: read back from the new file's footer.
    let columns = root.open_dataset(&request.output)?.columns();
    Ok(ConvertReport {
        output: request.output.clone(),
        rows: report.rows_written,
        row_groups: report.row_groups,
        bytes_in: report.bytes_in,
        bytes_out: report.bytes_out,
        columns: columns.into_iter().map(Column::from).collect(),
    })
}

/// `dataset_verify`: recomputes the fingerprint (every byte read) and compares.
pub(crate) fn verify(root: &DataRoot, request: &VerifyRequest) -> Result<VerifyReport> {
    let now = fingerprint(
        root,
        &DatasetPath {
            path: request.path.clone(),
        },
    )?;
    Ok(VerifyReport {
        path: request.path.clone(),
        matches: now.fingerprint == request.fingerprint,
        fingerprint: now.fingerprint,
    })
}
