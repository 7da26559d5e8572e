//! Converts CSV and JSON-lines files to Parquet, streaming, with typed errors that name the line
//! of a bad record.
//!
//! ```
//! use mlinfra_data::convert::{BadRecords, Compression, Conversion};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (input, output) = (dir.path().join("in.csv"), dir.path().join("out.parquet"));
//! std::fs::write(&input, "id,score,label\n1,0.5,cat\n2,,dog\nthree,1,cow\n").unwrap();
//!
//! let report = Conversion::csv(&input)
//!     .with_compression(Compression::Zstd(3))
//!     .with_bad_records(BadRecords::Skip)
//!     .with_infer_records(2)
//!     .with_progress(|p| eprintln!("{} of {:?} bytes", p.bytes_read, p.bytes_total))
//!     .write(&output)?;
//! assert_eq!(report.rows_written, 2);
//! assert_eq!(report.records_skipped, 1); // "three" is not an Int64
//! assert_eq!(report.skipped[0].line, 4);
//! # Ok::<(), mlinfra_data::Error>(())
//! ```
//!
//! # What happens
//!
//! The input is split into records here (CSV: a quote-aware splitter that mirrors arrow-csv's
//! parser; JSON lines: one record per line), each tagged with the line it starts on. Records go
//! to arrow-csv's or arrow-json's `Decoder` a batch at a time, and each batch to a
//! [`parquet::arrow::ArrowWriter`]. The output is written to a temporary file beside the
//! target and renamed over it only when complete: readers see the old file or the whole new
//! one, and a failed conversion leaves nothing behind.
//!
//! The Parquet file has the configured row groups, compression and page size, with page-level
//! statistics, so it carries a column index and an offset index for page pruning.
//!
//! # Bad records
//!
//! A record is bad when it cannot be parsed or does not fit the schema: a CSV record with the
//! wrong number of fields, invalid UTF-8, an unterminated quote at the end of the file, a value
//! that does not parse as its column's type, an empty value in a non-nullable column, a JSON
//! line that is not one JSON object, or (inferred schema only) a JSON key that is not in it.
//! Under [`BadRecords::Fail`] (the default) the first one stops the conversion with
//! [`Error::MalformedRecord`] naming the file and the line the record starts on (for a CSV
//! record with a quoted line break, its first line). Under [`BadRecords::Skip`] it is left
//! out and counted in the [`Report`]. A bad CSV header, and a record longer than
//! [`Conversion::with_max_record_bytes`] ([`Error::RecordTooLarge`]), always stop it.
//!
//! Blank lines are not records: they are skipped silently in both formats and counted nowhere.
//! They still count as lines, so line numbers match an editor's.
//!
//! # Schema inference
//!
//! Without [`Conversion::with_schema`] the schema is inferred from the first
//! [`Conversion::with_infer_records`] records ([`DEFAULT_INFER_RECORDS`]); bad records there are
//! left out of the sample. Every inferred column is nullable. A later value that does not fit
//! the inferred type is a bad record (it is not widened after the fact); give a schema, or a
//! larger sample, when the first records are not representative.
//!
//! CSV, per column, over the non-empty values seen (arrow-csv's rules, so the decoder accepts
//! everything inference saw):
//!
//! | values | type |
//! |---|---|
//! | integers, `[+-]?[0-9]+`, fitting `i64` | `Int64` |
//! | integers mixed with decimals, exponents (`1e3`), `NaN`, `nan`, `inf`, `-inf` | `Float64` |
//! | `true` / `false`, any case | `Boolean` |
//! | `YYYY-MM-DD` | `Date32` |
//! | `YYYY-MM-DD hh:mm:ss` (or `T`), optional fraction and offset | `Timestamp`, no time zone, unit from the longest fraction: s, ms, us or ns |
//! | anything else, or a mix of the above (integers and booleans, say) | `Utf8` |
//! | no values at all (empty fields, or no records) | `Utf8` |
//!
//! An empty field is null and does not vote; no other spelling (`NULL`, `NA`) is null. Headers
//! name the columns; without one they are `column_1`, `column_2`, ...
//!
//! JSON lines: numbers are `Int64` when every value is an integer and `Float64` otherwise,
//! strings `Utf8`, booleans `Boolean`, objects `Struct`, arrays `List`; a key holding several
//! scalar kinds becomes `Utf8`, keeping numbers and booleans as their JSON text; a key that
//! is only ever `null` or `[]` becomes `Utf8` (or a list of it). A missing key is null. Keys
//! come in order of first appearance, as pyarrow lists them (arrow-json's inference reads
//! objects into serde_json maps, which keep document order in this workspace:
//! `preserve_order`). A line whose types conflict with
//! earlier lines (an object where a number was) is left out of the sample and fails when
//! decoded.
//!
//! ## Where CSV inference differs from pyarrow
//!
//! Checked against `pyarrow.csv.read_csv` 26.0.1 with default options (the test
//! `csv_inference_matches_pyarrow_where_it_should` pins the cases):
//!
//! - A column with no values is `Utf8`, not `null`: a null column would lose values that
//!   appear after the sample.
//! - Only the empty field is null. pyarrow also reads `NULL`, `null`, `NA`, `N/A`, `NaN`, `nan`
//!   and others as null; here they are text (or, for `NaN`/`nan`, a float NaN).
//! - `+4` is an integer here; pyarrow makes a column with a leading `+` `double`.
//! - Values are not trimmed: ` 1` is text here, an integer to pyarrow.
//! - Integers beyond `i64` are text here; pyarrow makes them `double`, losing precision.
//! - `1`/`0` mixed with `true`/`false` are text here; pyarrow reads them as booleans.
//! - Timestamps take the unit of the longest fraction seen; pyarrow uses `s` without a
//!   fraction and `ns` with one, and reads a `Z` suffix as UTC where this gives no time zone.
//!
//! # Costs
//!
//! One pass over the input. Memory is bounded by the configuration, not the input size: the
//! inference sample (up to `infer_records` records, decoded and freed first), one batch of
//! `batch_rows` records held twice (text and Arrow), and the unfinished row group, which the
//! Parquet writer keeps encoded and compressed in memory until `row_group_rows` rows are in
//! it. [`Report::peak_buffered_records`] and [`Report::peak_writer_bytes`] report the first and
//! last. A batch that holds a bad record is decoded about three times: whole, then record by
//! record to find the bad ones, then the good ones together; clean batches are decoded once.
//!
//! # Not supported
//!
//! Compressed input, CSV comment lines, custom null spellings, other line terminators, and
//! JSON values spanning lines (each JSON-lines record is one line).

mod decode;
mod options;
mod split;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::ZstdLevel;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

pub use options::{
    BadRecords, Compression, CsvOptions, DEFAULT_BAD_RECORDS, DEFAULT_BATCH_ROWS,
    DEFAULT_COMPRESSION, DEFAULT_DELIMITER, DEFAULT_INFER_RECORDS, DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_PAGE_BYTES, DEFAULT_QUOTE, DEFAULT_ROW_GROUP_ROWS,
    MAX_BATCH_CELLS, MAX_REPORTED_SKIPS, Progress, Report, SkippedRecord,
};

use crate::{Error, Result};
use decode::{Chunk, Format, RecordDecoder};
use split::{RawRecord, SplitError, Splitter, Syntax};

/// A CSV or JSON-lines to Parquet conversion: the input, and how to read and write it. Built
/// with [`Conversion::csv`] or [`Conversion::json_lines`] and `with_*` setters, run with
/// [`Conversion::write`]. See the [module docs](self) for behaviour and costs.
pub struct Conversion<'a> {
    input: PathBuf,
    /// `None` for JSON lines.
    csv: Option<CsvOptions>,
    /// Set when `with_csv_options` was called on JSON lines; reported by `write`.
    csv_options_misused: bool,
    schema: Option<SchemaRef>,
    infer_records: usize,
    batch_rows: usize,
    row_group_rows: usize,
    page_bytes: usize,
    max_record_bytes: usize,
    max_columns: usize,
    compression: Compression,
    bad_records: BadRecords,
    progress: Option<ProgressFn<'a>>,
}

type ProgressFn<'a> = Box<dyn FnMut(&Progress) + Send + 'a>;

impl std::fmt::Debug for Conversion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversion")
            .field("input", &self.input)
            .field("csv", &self.csv)
            .field("schema", &self.schema)
            .field("infer_records", &self.infer_records)
            .field("batch_rows", &self.batch_rows)
            .field("row_group_rows", &self.row_group_rows)
            .field("page_bytes", &self.page_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_columns", &self.max_columns)
            .field("compression", &self.compression)
            .field("bad_records", &self.bad_records)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl<'a> Conversion<'a> {
    /// Converts the CSV file at `input`, read with [`CsvOptions::new`] unless
    /// [`Conversion::with_csv_options`] says otherwise. Nothing is read until
    /// [`Conversion::write`].
    pub fn csv(input: impl AsRef<Path>) -> Self {
        Self::new(input.as_ref(), Some(CsvOptions::new()))
    }

    /// Converts the JSON-lines file at `input`: one JSON object per line. Nothing is read
    /// until [`Conversion::write`].
    pub fn json_lines(input: impl AsRef<Path>) -> Self {
        Self::new(input.as_ref(), None)
    }

    fn new(input: &Path, csv: Option<CsvOptions>) -> Self {
        Self {
            input: input.to_path_buf(),
            csv,
            csv_options_misused: false,
            schema: None,
            infer_records: DEFAULT_INFER_RECORDS,
            batch_rows: DEFAULT_BATCH_ROWS,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            page_bytes: DEFAULT_PAGE_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_columns: DEFAULT_MAX_COLUMNS,
            compression: DEFAULT_COMPRESSION,
            bad_records: DEFAULT_BAD_RECORDS,
            progress: None,
        }
    }

    /// The schema to write, instead of inferring one. CSV columns map to fields by position
    /// (a header row must be as wide as the schema; its names are not checked) and must be
    /// types arrow-csv reads (no nested types); JSON keys map by name, and keys not in the
    /// schema are ignored, so a schema can select keys. Defaults to inference; see the
    /// [module docs](self).
    pub fn with_schema(mut self, schema: impl Into<SchemaRef>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// How many records schema inference reads, at least 1. Ignored with a schema. Defaults
    /// to [`DEFAULT_INFER_RECORDS`].
    pub fn with_infer_records(mut self, records: usize) -> Self {
        self.infer_records = records;
        self
    }

    /// Records decoded into one Arrow batch, at least 1: the unit of memory, of progress
    /// callbacks and of re-decoding when a record is bad. Defaults to [`DEFAULT_BATCH_ROWS`].
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows;
        self
    }

    /// Rows per Parquet row group, at least 1 (the last may have fewer). The writer holds one
    /// row group in memory, encoded. Defaults to [`DEFAULT_ROW_GROUP_ROWS`].
    pub fn with_row_group_rows(mut self, rows: usize) -> Self {
        self.row_group_rows = rows;
        self
    }

    /// Target size of a Parquet data page and of a column chunk's dictionary page, at least 1.
    /// A column whose dictionary outgrows it is written plain-encoded from then on. The writer
    /// checks sizes every 1024 values, so pages can run somewhat over. Defaults to
    /// [`DEFAULT_PAGE_BYTES`].
    pub fn with_page_bytes(mut self, bytes: usize) -> Self {
        self.page_bytes = bytes;
        self
    }

    /// The longest record accepted, in bytes, at least 1: a guard against an unterminated
    /// quote reading the whole rest of a file into memory. Defaults to
    /// [`DEFAULT_MAX_RECORD_BYTES`].
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// The most columns (leaf fields, nested ones counted) the output may have, at least 1:
    /// every column costs the Parquet writer buffers of its own, so a file of one very wide
    /// record must not exhaust memory. A wider schema (given or inferred) is
    /// [`Error::TooManyColumns`]. Defaults to [`DEFAULT_MAX_COLUMNS`].
    pub fn with_max_columns(mut self, columns: usize) -> Self {
        self.max_columns = columns;
        self
    }

    /// How the output is compressed; see [`Compression`] for the choice. Defaults to
    /// [`DEFAULT_COMPRESSION`].
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// What to do with a bad record. Defaults to [`DEFAULT_BAD_RECORDS`].
    pub fn with_bad_records(mut self, bad_records: BadRecords) -> Self {
        self.bad_records = bad_records;
        self
    }

    /// Called after each batch is written, on the converting thread; keep it cheap. `Send`
    /// so a configured conversion can be moved to a worker thread. Defaults to none.
    pub fn with_progress(mut self, progress: impl FnMut(&Progress) + Send + 'a) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// How the CSV input is split into records and fields. Only for [`Conversion::csv`]:
    /// on a JSON-lines conversion, [`Conversion::write`] returns [`Error::InvalidOption`].
    /// Defaults to [`CsvOptions::new`].
    pub fn with_csv_options(mut self, options: CsvOptions) -> Self {
        match &mut self.csv {
            Some(csv) => *csv = options,
            None => self.csv_options_misused = true,
        }
        self
    }

    /// Runs the conversion, writing Parquet to `output` atomically: a temporary file in the
    /// same directory, renamed over `output` once complete. On error nothing is left at
    /// `output` (an existing file there is untouched) and the temporary file is removed.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidOption`] for an out-of-range setting, checked before reading.
    /// - [`Error::MalformedRecord`] for a bad record under [`BadRecords::Fail`], or a bad CSV
    ///   header; [`Error::RecordTooLarge`] for an overlong record.
    /// - [`Error::EmptyInput`] when there is no schema and nothing to infer one from.
    /// - [`Error::Io`] when the input cannot be read or the output written, naming that file;
    ///   [`Error::Parquet`] when the Parquet writer fails, naming the output.
    /// - [`Error::Arrow`] only on an internal bug: records that decoded one by one failing to
    ///   decode together.
    pub fn write(mut self, output: impl AsRef<Path>) -> Result<Report> {
        let output = output.as_ref();
        let (properties, format) = self.validate()?;
        let mut progress = self.progress.take();
        let input = self.input.as_path();
        let syntax = match &self.csv {
            Some(options) => Syntax::csv(options),
            None => Syntax::JsonLines,
        };
        let mut records = Records::open(input, syntax, self.max_record_bytes)?;
        let header = self.read_header(&mut records)?;
        let (schema, format) = match &self.schema {
            Some(schema) => {
                self.check_header_width(header.as_ref(), schema)?;
                (schema.clone(), format)
            }
            None => {
                records.take_sample(self.infer_records)?;
                self.infer(format, header, &records.sample, &records.sample_raw)?
            }
        };

        let columns = leaf_columns(schema.fields());
        if columns > self.max_columns {
            return Err(Error::TooManyColumns {
                path: input.into(),
                columns,
                limit: self.max_columns,
            });
        }
        // Sized by the data: the decoders allocate rows × columns up front.
        let batch_rows = self.batch_rows.min(MAX_BATCH_CELLS / columns.max(1)).max(1);
        let mut decoder =
            RecordDecoder::try_new(format, schema.clone(), batch_rows).map_err(|e| {
                Error::InvalidOption {
                    option: "with_schema",
                    reason: format!("the decoder cannot read this schema: {e}").into(),
                }
            })?;

        let out = TempOutput::create(output)?;
        let file = out.file.try_clone().map_err(|e| Error::io(output, e))?;
        let mut writer =
            ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(properties))
                .map_err(|e| Error::parquet(output, e))?;
        let mut stats = Stats::default();
        let mut chunk = Chunk::default();
        loop {
            let width = schema.fields().len();
            self.fill(&mut chunk, &mut records, width, batch_rows, &mut stats)?;
            if chunk.is_empty() {
                break;
            }
            let held = chunk.len() + records.sample_pending();
            stats.peak_buffered_records = stats.peak_buffered_records.max(held);
            let policy = self.bad_records;
            let batch = decoder
                .decode_chunk(&chunk, |bad| {
                    stats.bad(policy, input, bad.line, bad.what.into())
                })?
                .map_err(|e| Error::arrow(input, e))?;
            writer
                .write(&batch)
                .map_err(|e| Error::parquet(output, e))?;
            stats.rows_written += batch.num_rows() as u64;
            stats.peak_writer_bytes = stats.peak_writer_bytes.max(writer.memory_size());
            if let Some(progress) = &mut progress {
                progress(&Progress {
                    bytes_read: records.reader.bytes_read(),
                    bytes_total: records.bytes_total,
                    rows_written: stats.rows_written,
                    records_skipped: stats.records_skipped,
                });
            }
        }

        writer.flush().map_err(|e| Error::parquet(output, e))?;
        let row_groups = writer.flushed_row_groups().len();
        // `into_inner` writes the footer; calling `finish` first would write it twice.
        let buffered = writer.into_inner().map_err(|e| Error::parquet(output, e))?;
        buffered
            .into_inner()
            .map_err(|e| Error::io(output, e.into_error()))?;
        let bytes_out = out.commit()?;
        Ok(Report {
            schema,
            rows_written: stats.rows_written,
            records_skipped: stats.records_skipped,
            skipped: stats.skipped,
            bytes_in: records.reader.bytes_read(),
            bytes_out,
            row_groups,
            peak_buffered_records: stats.peak_buffered_records,
            peak_writer_bytes: stats.peak_writer_bytes,
        })
    }

    /// Refills `chunk` with up to `batch_rows` records that passed the checks made while
    /// splitting (CSV records must have `columns` fields); records that failed them go to
    /// `stats` (or stop the conversion).
    fn fill(
        &self,
        chunk: &mut Chunk,
        records: &mut Records<'_>,
        columns: usize,
        batch_rows: usize,
        stats: &mut Stats,
    ) -> Result<()> {
        chunk.clear();
        while chunk.len() < batch_rows {
            let start = chunk.bytes.len();
            let Some(raw) = records.next(&mut chunk.bytes)? else {
                break;
            };
            let problem = raw.problem.or_else(|| {
                (self.csv.is_some() && raw.fields != columns)
                    .then(|| format!("expected {columns} fields, found {}", raw.fields).into())
            });
            match problem {
                Some(what) => {
                    chunk.bytes.truncate(start);
                    stats.bad(self.bad_records, &self.input, raw.line, what)?;
                }
                None => chunk.seal(raw.line),
            }
        }
        Ok(())
    }

    /// Reads the CSV header, if the options say there is one: its names and line. A bad
    /// header is never skipped: without it no column can be named.
    fn read_header(&self, records: &mut Records<'_>) -> Result<Option<(Vec<String>, u64)>> {
        let Some(options) = self.csv.as_ref().filter(|o| o.has_header) else {
            return Ok(None);
        };
        let mut bytes = vec![];
        let Some(raw) = records.reader.next(&mut bytes)? else {
            return Ok(None);
        };
        let malformed = |what: String| Error::MalformedRecord {
            path: self.input.as_path().into(),
            line: raw.line,
            what: format!("header: {what}").into(),
        };
        if let Some(problem) = &raw.problem {
            return Err(malformed(problem.to_string()));
        }
        let names = decode::csv_fields(options, &bytes, raw.fields)
            .map_err(|e| malformed(e.to_string()))?;
        let names = names.into_iter().map(Option::unwrap_or_default).collect();
        Ok(Some((names, raw.line)))
    }

    /// With a given schema, CSV columns map by position, so the header must be as wide.
    fn check_header_width(
        &self,
        header: Option<&(Vec<String>, u64)>,
        schema: &Schema,
    ) -> Result<()> {
        match header {
            Some((names, line)) if names.len() != schema.fields().len() => {
                Err(Error::MalformedRecord {
                    path: self.input.as_path().into(),
                    line: *line,
                    what: format!(
                        "header has {} fields where the schema has {}",
                        names.len(),
                        schema.fields().len()
                    )
                    .into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks every setting before any file is touched.
    fn validate(&self) -> Result<(WriterProperties, Format)> {
        let invalid = |option: &'static str, reason: String| Error::InvalidOption {
            option,
            reason: reason.into(),
        };
        for (option, value) in [
            ("with_infer_records", self.infer_records),
            ("with_batch_rows", self.batch_rows),
            ("with_row_group_rows", self.row_group_rows),
            ("with_page_bytes", self.page_bytes),
            ("with_max_record_bytes", self.max_record_bytes),
            ("with_max_columns", self.max_columns),
        ] {
            if value == 0 {
                return Err(invalid(option, "must be at least 1".into()));
            }
        }
        if self.csv_options_misused {
            return Err(invalid(
                "with_csv_options",
                "the input is JSON lines, not CSV".into(),
            ));
        }
        if let Some(schema) = &self.schema {
            if schema.fields().is_empty() {
                return Err(invalid("with_schema", "the schema has no fields".into()));
            }
            if self.csv.is_some()
                && let Some(field) = schema
                    .fields()
                    .iter()
                    .find(|f| !decode::csv_supports(f.data_type()))
            {
                return Err(invalid(
                    "with_schema",
                    format!(
                        "column `{}` has type {}, which CSV cannot hold",
                        field.name(),
                        field.data_type()
                    ),
                ));
            }
        }
        if let Some(csv) = &self.csv {
            let special = [Some(csv.delimiter), Some(csv.quote), csv.escape];
            if special
                .iter()
                .flatten()
                .any(|&b| !b.is_ascii() || b == b'\r' || b == b'\n')
            {
                return Err(invalid(
                    "with_csv_options",
                    "delimiter, quote and escape must be ASCII and not a line break".into(),
                ));
            }
            if csv.delimiter == csv.quote
                || csv
                    .escape
                    .is_some_and(|e| e == csv.delimiter || e == csv.quote)
            {
                return Err(invalid(
                    "with_csv_options",
                    "delimiter, quote and escape must differ".into(),
                ));
            }
        }
        let codec = match self.compression {
            Compression::Zstd(level) => {
                parquet::basic::Compression::ZSTD(ZstdLevel::try_new(level).map_err(|_| {
                    invalid(
                        "with_compression",
                        format!("zstd level {level} is outside 1..=22"),
                    )
                })?)
            }
            Compression::Snappy => parquet::basic::Compression::SNAPPY,
            Compression::None => parquet::basic::Compression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_data_page_size_limit(self.page_bytes)
            // A dictionary past this size falls back to plain encoding; bounding it too keeps
            // page size meaningful for high-cardinality columns.
            .set_dictionary_page_size_limit(self.page_bytes)
            // Page-level statistics make the writer emit the column index; the offset index
            // is always written. Together they let readers skip pages.
            .set_statistics_enabled(EnabledStatistics::Page)
            .build();
        let format = match &self.csv {
            Some(options) => Format::Csv(options.clone()),
            // Strictness is decided in `infer`; a given schema selects keys.
            None => Format::JsonLines { strict: false },
        };
        Ok((properties, format))
    }

    /// Infers the schema from the sample; see the module docs for the rules.
    fn infer(
        &self,
        format: Format,
        header: Option<(Vec<String>, u64)>,
        sample: &Chunk,
        raw: &[RawRecord],
    ) -> Result<(SchemaRef, Format)> {
        let empty = || Error::EmptyInput {
            path: self.input.as_path().into(),
        };
        let arrow = |e| Error::arrow(&self.input, e);
        match format {
            Format::Csv(options) => {
                // Columns: the header's, else the first clean record's.
                let columns = match &header {
                    Some((names, line)) => {
                        check_unique(names).map_err(|what| Error::MalformedRecord {
                            path: self.input.as_path().into(),
                            line: *line,
                            what: format!("header: {what}").into(),
                        })?;
                        names.len()
                    }
                    None => match raw.iter().find(|r| r.problem.is_none()) {
                        Some(first) => first.fields,
                        None => return Err(self.nothing_usable(sample, raw)),
                    },
                };
                let mut good = vec![];
                for (i, r) in raw.iter().enumerate() {
                    if r.problem.is_none() && r.fields == columns {
                        good.extend_from_slice(sample.record(i));
                    }
                }
                let names = header
                    .map(|(names, _)| names)
                    .unwrap_or_else(|| (1..=columns).map(|i| format!("column_{i}")).collect());
                let schema = decode::infer_csv(&options, &good, names).map_err(arrow)?;
                Ok((Arc::new(schema), Format::Csv(options)))
            }
            Format::JsonLines { .. } => {
                let lines: Vec<&[u8]> = (0..raw.len())
                    .filter(|&i| raw[i].problem.is_none())
                    .map(|i| sample.record(i))
                    .collect();
                let Some(schema) = decode::infer_json(&lines) else {
                    return Err(self.nothing_usable(sample, raw));
                };
                if schema.fields().is_empty() {
                    return Err(empty());
                }
                Ok((Arc::new(schema), Format::JsonLines { strict: true }))
            }
        }
    }

    /// The error when no sampled record could be parsed: under [`BadRecords::Fail`] the
    /// first record's problem (as decoding it would report), else [`Error::EmptyInput`].
    fn nothing_usable(&self, sample: &Chunk, raw: &[RawRecord]) -> Error {
        match (self.bad_records, raw.first()) {
            (BadRecords::Fail, Some(first)) => Error::MalformedRecord {
                path: self.input.as_path().into(),
                line: first.line,
                what: match &first.problem {
                    Some(problem) => problem.clone(),
                    None => decode::json_line_problem(sample.record(0)).into(),
                },
            },
            _ => Error::EmptyInput {
                path: self.input.as_path().into(),
            },
        }
    }
}

/// Leaf columns of `fields` (what Parquet writes a column chunk for): nested fields counted
/// through structs, lists and maps.
fn leaf_columns(fields: &arrow::datatypes::Fields) -> usize {
    use arrow::datatypes::DataType;
    fields
        .iter()
        .map(|field| match field.data_type() {
            DataType::Struct(children) => leaf_columns(children),
            DataType::List(child)
            | DataType::LargeList(child)
            | DataType::FixedSizeList(child, _)
            | DataType::Map(child, _) => leaf_columns(&[child.clone()].into()),
            _ => 1,
        })
        .sum()
}

/// Refuses a column name used twice: readers select columns by name, and most would pick
/// one of the two silently or fail.
fn check_unique(names: &[String]) -> std::result::Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    match names.iter().find(|name| !seen.insert(name.as_str())) {
        Some(name) => Err(format!("column name `{name}` appears twice")),
        None => Ok(()),
    }
}

/// The splitter, with the input's path for its errors.
struct Reader<'p> {
    splitter: Splitter<BufReader<File>>,
    path: &'p Path,
}

impl Reader<'_> {
    fn next(&mut self, out: &mut Vec<u8>) -> Result<Option<RawRecord>> {
        self.splitter.next_record(out).map_err(|e| match e {
            SplitError::Io(e) => Error::io(self.path, e),
            SplitError::TooLarge { line } => Error::RecordTooLarge {
                path: self.path.into(),
                line,
                limit: self.splitter.max_record_bytes() as u64,
            },
        })
    }

    fn bytes_read(&self) -> u64 {
        self.splitter.bytes_read()
    }
}

/// The input's records in order: the inference sample first (read ahead, held until
/// decoded), then the rest of the file.
struct Records<'p> {
    reader: Reader<'p>,
    /// The input's size, when it is a regular file.
    bytes_total: Option<u64>,
    sample: Chunk,
    sample_raw: Vec<RawRecord>,
    /// Sample records already handed out by `next`.
    replayed: usize,
}

impl<'p> Records<'p> {
    fn open(path: &'p Path, syntax: Syntax, max_record_bytes: usize) -> Result<Self> {
        // Not `files::open_regular`: a conversion streams its input once, front to back, so a
        // pipe is a real input here (`csv_to_parquet <(zcat x.csv.gz)`), and opening one waits
        // for its writer as a pipe's reader should. Memory stays bounded by the record cap.
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let bytes_total = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        Ok(Self {
            reader: Reader {
                splitter: Splitter::new(BufReader::new(file), syntax, max_record_bytes),
                path,
            },
            bytes_total,
            sample: Chunk::default(),
            sample_raw: vec![],
            replayed: 0,
        })
    }

    /// Reads up to `records` records ahead, for inference.
    fn take_sample(&mut self, records: usize) -> Result<()> {
        while self.sample_raw.len() < records {
            let Some(raw) = self.reader.next(&mut self.sample.bytes)? else {
                break;
            };
            self.sample.seal(raw.line);
            self.sample_raw.push(raw);
        }
        Ok(())
    }

    /// Sample records not yet handed out.
    fn sample_pending(&self) -> usize {
        self.sample_raw.len() - self.replayed
    }

    /// Appends the next record's bytes to `out` and describes it; `None` at end of input.
    fn next(&mut self, out: &mut Vec<u8>) -> Result<Option<RawRecord>> {
        if self.sample_pending() > 0 {
            out.extend_from_slice(self.sample.record(self.replayed));
            self.replayed += 1;
            return Ok(Some(self.sample_raw[self.replayed - 1].clone()));
        }
        if !self.sample_raw.is_empty() {
            // All handed out: free the sample's memory.
            (self.sample, self.sample_raw, self.replayed) = (Chunk::default(), vec![], 0);
        }
        self.reader.next(out)
    }
}

#[derive(Default)]
struct Stats {
    rows_written: u64,
    records_skipped: u64,
    skipped: Vec<SkippedRecord>,
    peak_buffered_records: usize,
    peak_writer_bytes: usize,
}

impl Stats {
    /// Fails on a bad record, or counts it, per `policy`.
    fn bad(&mut self, policy: BadRecords, path: &Path, line: u64, what: Box<str>) -> Result<()> {
        match policy {
            BadRecords::Fail => Err(Error::MalformedRecord {
                path: path.into(),
                line,
                what,
            }),
            BadRecords::Skip => {
                self.records_skipped += 1;
                if self.skipped.len() < MAX_REPORTED_SKIPS {
                    self.skipped.push(SkippedRecord { line, reason: what });
                }
                Ok(())
            }
        }
    }
}

/// The temporary output file; removed on drop unless committed.
struct TempOutput {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl TempOutput {
    fn create(target: &Path) -> Result<Self> {
        // Same directory, so the final rename cannot cross file systems; hidden, and unique
        // per process and call, so concurrent conversions never share one.
        let temp = crate::files::temp_path(target).map_err(|_| Error::InvalidOption {
            option: "write",
            reason: format!("output path {} has no file name", target.display()).into(),
        })?;
        let file = crate::files::create_new(&temp).map_err(|e| Error::io(target, e))?;
        Ok(Self {
            file,
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Syncs the file and renames it over the target; returns its size.
    fn commit(mut self) -> Result<u64> {
        let target = self.target.clone();
        let io = |e| Error::io(&target, e);
        self.file.sync_all().map_err(io)?;
        let bytes = self.file.metadata().map_err(io)?.len();
        std::fs::rename(&self.temp, &self.target).map_err(io)?;
        self.committed = true;
        // The rename itself survives a power cut only once the directory is synced.
        crate::files::sync_dir(crate::files::parent_dir(&self.target)).map_err(io)?;
        Ok(bytes)
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
