//! The small value types of a conversion: options in, progress and report out.

use arrow::datatypes::SchemaRef;

/// Records read to infer a schema when none is given. See [`Conversion::with_infer_records`].
///
/// [`Conversion::with_infer_records`]: super::Conversion::with_infer_records
pub const DEFAULT_INFER_RECORDS: usize = 1000;

/// Records decoded into one Arrow batch. See [`Conversion::with_batch_rows`].
///
/// [`Conversion::with_batch_rows`]: super::Conversion::with_batch_rows
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// Rows per Parquet row group. See [`Conversion::with_row_group_rows`].
///
/// [`Conversion::with_row_group_rows`]: super::Conversion::with_row_group_rows
pub const DEFAULT_ROW_GROUP_ROWS: usize = 1 << 20;

/// Target bytes per Parquet data page. See [`Conversion::with_page_bytes`].
///
/// [`Conversion::with_page_bytes`]: super::Conversion::with_page_bytes
pub const DEFAULT_PAGE_BYTES: usize = 1 << 20;

/// Longest record accepted, in bytes. See [`Conversion::with_max_record_bytes`].
///
/// [`Conversion::with_max_record_bytes`]: super::Conversion::with_max_record_bytes
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 20;

/// Most columns (leaf fields, nested ones counted) a conversion writes. See
/// [`Conversion::with_max_columns`].
///
/// [`Conversion::with_max_columns`]: super::Conversion::with_max_columns
pub const DEFAULT_MAX_COLUMNS: usize = 100_000;

/// Most cells (records × leaf columns) one decoded batch holds. The Arrow decoders size their
/// buffers by rows × columns before reading a byte, so a batch of a very wide input gets fewer
/// records than [`DEFAULT_BATCH_ROWS`] (a 200,000-column CSV record: 20 rows, not a 13 GB
/// allocation for 8,192).
pub const MAX_BATCH_CELLS: usize = 1 << 22;

/// Parquet compression. See [`Conversion::with_compression`].
///
/// [`Conversion::with_compression`]: super::Conversion::with_compression
pub const DEFAULT_COMPRESSION: Compression = Compression::Zstd(3);

/// What to do with a bad record. See [`Conversion::with_bad_records`].
///
/// [`Conversion::with_bad_records`]: super::Conversion::with_bad_records
pub const DEFAULT_BAD_RECORDS: BadRecords = BadRecords::Fail;

/// How many skipped records [`Report::skipped`] describes individually; the rest are only
/// counted, so a file of garbage cannot grow the report without bound.
pub const MAX_REPORTED_SKIPS: usize = 16;

/// The CSV field delimiter. See [`CsvOptions::with_delimiter`].
pub const DEFAULT_DELIMITER: u8 = b',';

/// The CSV quote character. See [`CsvOptions::with_quote`].
pub const DEFAULT_QUOTE: u8 = b'"';

/// How the Parquet output is compressed.
///
/// # Choosing
///
/// `Zstd(3)` (the default) usually gives clearly smaller files than Snappy for a modest cost
/// in write time, and decodes fast; higher levels trade write time for size and barely change
/// read speed. `Snappy` is the cheapest to write and read, and every Parquet reader has it.
/// `None` is for data that does not compress (embeddings, already compressed blobs) and for
/// benchmarks. Measure on your own data before tuning the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Zstandard at the given level, 1 (fastest) to 22 (smallest).
    Zstd(i32),
    /// Snappy.
    Snappy,
    /// No compression.
    None,
}

/// What a conversion does with a record that cannot be parsed or does not fit the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadRecords {
    /// Stop at the first bad record with [`Error::MalformedRecord`] naming its line; no output
    /// file is left behind.
    ///
    /// [`Error::MalformedRecord`]: crate::Error::MalformedRecord
    Fail,
    /// Leave the record out, count it in [`Report::records_skipped`], describe the first
    /// [`MAX_REPORTED_SKIPS`] in [`Report::skipped`], and go on.
    Skip,
}

/// How CSV input is split into records and fields.
///
/// Records end at `\n`, `\r\n` or a lone `\r` outside quotes; empty lines are skipped. Inside a
/// quoted field a doubled quote is a literal quote, and the field may hold delimiters and line
/// breaks. Every byte that is not a delimiter, quote, escape or line break is data, so bytes
/// are never trimmed. An empty field is null.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CsvOptions {
    pub(crate) delimiter: u8,
    pub(crate) quote: u8,
    pub(crate) escape: Option<u8>,
    pub(crate) has_header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl CsvOptions {
    /// Comma-delimited, `"`-quoted, no escape character, first record a header.
    pub fn new() -> Self {
        Self {
            delimiter: DEFAULT_DELIMITER,
            quote: DEFAULT_QUOTE,
            escape: None,
            has_header: true,
        }
    }

    /// The field delimiter, an ASCII byte other than `\r`, `\n` and the quote: `b'\t'` for TSV.
    /// Defaults to [`DEFAULT_DELIMITER`].
    pub fn with_delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// The quote character, an ASCII byte. Defaults to [`DEFAULT_QUOTE`].
    pub fn with_quote(mut self, quote: u8) -> Self {
        self.quote = quote;
        self
    }

    /// An escape character that makes the next byte literal inside a quoted field (as in
    /// `"say \"hi\""`), in addition to doubled quotes. Outside quotes it is ordinary data.
    /// Defaults to none.
    pub fn with_escape(mut self, escape: Option<u8>) -> Self {
        self.escape = escape;
        self
    }

    /// Whether the first record names the columns. Without a header, inferred columns are
    /// named `column_1`, `column_2`, ... Defaults to `true`.
    pub fn with_header(mut self, has_header: bool) -> Self {
        self.has_header = has_header;
        self
    }
}

/// Where a running conversion stands; passed to the [`Conversion::with_progress`] callback
/// after each batch is written.
///
/// [`Conversion::with_progress`]: super::Conversion::with_progress
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Input bytes consumed so far. Runs ahead of `rows_written` by up to one batch, and by the
    /// inference sample at the start.
    pub bytes_read: u64,
    /// The input's size, when it is a regular file.
    pub bytes_total: Option<u64>,
    /// Rows handed to the Parquet writer so far.
    pub rows_written: u64,
    /// Bad records skipped so far (always 0 under [`BadRecords::Fail`]).
    pub records_skipped: u64,
}

/// A record that [`BadRecords::Skip`] left out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedRecord {
    /// The 1-based line on which the record starts.
    pub line: u64,
    /// Why it was left out; the same text [`Error::MalformedRecord`] would carry.
    ///
    /// [`Error::MalformedRecord`]: crate::Error::MalformedRecord
    pub reason: Box<str>,
}

/// What a finished conversion did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// The schema written: the one given, or the one inferred.
    pub schema: SchemaRef,
    /// Rows in the Parquet file.
    pub rows_written: u64,
    /// Bad records left out under [`BadRecords::Skip`].
    pub records_skipped: u64,
    /// The first [`MAX_REPORTED_SKIPS`] of them, in input order.
    pub skipped: Vec<SkippedRecord>,
    /// Input bytes read.
    pub bytes_in: u64,
    /// Size of the Parquet file.
    pub bytes_out: u64,
    /// Row groups in the Parquet file.
    pub row_groups: usize,
    /// The most input records held in memory at once: the inference sample not yet decoded
    /// plus the batch being decoded. Bounded by `infer_records + batch_rows` whatever the input
    /// size; this is the number that shows conversion streams.
    pub peak_buffered_records: usize,
    /// The most bytes the Parquet writer held for its unfinished row group (its own estimate,
    /// sampled after each batch). Bounded by the row-group size, not the input size.
    pub peak_writer_bytes: usize,
}
