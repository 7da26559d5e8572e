//! Turns batches of split records into Arrow, finding the bad record when a batch fails, and
//! infers schemas from a sample of records.
//!
//! The fast path hands a whole batch of records to one arrow-csv or arrow-json `Decoder`. Only
//! when that fails (or yields a different row count than records went in) is the batch
//! decoded again one record at a time to find the bad ones, and then the good ones once more
//! together. A batch holding a bad record therefore costs about three decodes instead of one;
//! clean batches cost nothing extra.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::options::CsvOptions;

/// Records of one batch, back to back in `bytes`, each ending in a line break.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub bytes: Vec<u8>,
    /// End offset in `bytes` and starting line of each record.
    pub records: Vec<(usize, u64)>,
}

impl Chunk {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Marks the bytes appended since the previous record as a record starting on `line`.
    pub(crate) fn seal(&mut self, line: u64) {
        self.records.push((self.bytes.len(), line));
    }

    pub(crate) fn record(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.records[i - 1].0 };
        &self.bytes[start..self.records[i].0]
    }
}

/// The syntax of the input, with what decoding it needs.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    Csv(CsvOptions),
    JsonLines {
        /// Refuse keys that are not in the schema instead of dropping them; set when the
        /// schema was inferred, so a key the sample did not show is not silently lost.
        strict: bool,
    },
}

enum Inner {
    // Boxed: arrow-csv's decoder is four times the size of arrow-json's.
    Csv(Box<arrow::csv::reader::Decoder>),
    Json(arrow::json::reader::Decoder),
}

/// Decodes chunks of records against one schema; see the [module docs](self).
pub(crate) struct RecordDecoder {
    format: Format,
    schema: SchemaRef,
    batch_rows: usize,
    /// Kept between clean chunks; dropped after an error, which may leave it mid-record.
    decoder: Option<Inner>,
}

/// A record the decoder rejected.
pub(crate) struct BadRecord {
    pub line: u64,
    pub what: String,
}

impl RecordDecoder {
    /// Fails when the decoder cannot hold `schema` (a type arrow-json cannot read): checked
    /// once here, not reported as every record being bad.
    pub(crate) fn try_new(
        format: Format,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<Self, ArrowError> {
        let decoder = Some(build(&format, &schema, batch_rows)?);
        Ok(Self {
            format,
            schema,
            batch_rows,
            decoder,
        })
    }

    /// Decodes every record of `chunk`. Bad records go to `on_bad`, in input order, which
    /// stops decoding by returning an error; the batch holds the good records, in order.
    pub(crate) fn decode_chunk<E>(
        &mut self,
        chunk: &Chunk,
        mut on_bad: impl FnMut(BadRecord) -> Result<(), E>,
    ) -> Result<Result<RecordBatch, ArrowError>, E> {
        if let Ok(batch) = self.decode(&chunk.bytes, chunk.len()) {
            return Ok(Ok(batch));
        }
        let mut good = Chunk::default();
        for i in 0..chunk.len() {
            let (_, line) = chunk.records[i];
            let record = chunk.record(i);
            match self.decode(record, 1) {
                Ok(_) => {
                    good.bytes.extend_from_slice(record);
                    good.seal(line);
                }
                Err(e) => on_bad(BadRecord {
                    line,
                    what: self.describe(record, e),
                })?,
            }
        }
        // Records that decode alone decode together: nothing in either format depends on
        // the neighbouring record. A failure here is a bug, reported as an Arrow error.
        Ok(self.decode(&good.bytes, good.len()))
    }

    /// Decodes `bytes`, which must hold exactly `records` records, into one batch.
    fn decode(&mut self, bytes: &[u8], records: usize) -> Result<RecordBatch, ArrowError> {
        let result = self.decode_inner(bytes, records);
        if result.is_err() {
            self.decoder = None;
        }
        result
    }

    fn decode_inner(&mut self, bytes: &[u8], records: usize) -> Result<RecordBatch, ArrowError> {
        let decoder = match &mut self.decoder {
            Some(decoder) => decoder,
            None => self
                .decoder
                .insert(build(&self.format, &self.schema, self.batch_rows)?),
        };
        let mut offset = 0;
        while offset < bytes.len() {
            let n = match decoder {
                Inner::Csv(d) => d.decode(&bytes[offset..])?,
                Inner::Json(d) => d.decode(&bytes[offset..])?,
            };
            if n == 0 {
                // The decoder is full: the bytes held more records than were counted.
                return Err(mismatch(&self.format));
            }
            offset += n;
        }
        let batch = match decoder {
            Inner::Csv(d) => d.flush()?,
            Inner::Json(d) => d.flush()?,
        };
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
        if batch.num_rows() != records {
            return Err(mismatch(&self.format));
        }
        Ok(batch)
    }

    /// Says what is wrong with one record that failed to decode, in terms of its columns.
    fn describe(&self, record: &[u8], error: ArrowError) -> String {
        match &self.format {
            Format::JsonLines { .. } => message(error),
            // Field counts and UTF-8 were checked while splitting, so a CSV record fails on a
            // value. arrow-csv's message numbers lines from its own start; instead find the
            // column by decoding the record with only that column typed.
            Format::Csv(options) => {
                describe_csv_value(options, &self.schema, record).unwrap_or_else(|| message(error))
            }
        }
    }
}

fn build(format: &Format, schema: &SchemaRef, batch_rows: usize) -> Result<Inner, ArrowError> {
    Ok(match format {
        Format::Csv(options) => Inner::Csv(Box::new(
            csv_builder(options, schema.clone(), batch_rows).build_decoder(),
        )),
        Format::JsonLines { strict } => Inner::Json(
            arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(batch_rows)
                // Inference types a column Utf8 when it mixes strings with numbers or
                // booleans; keep those values as their JSON text rather than fail.
                .with_coerce_primitive(true)
                .with_strict_mode(*strict)
                .build_decoder()?,
        ),
    })
}

fn csv_builder(
    options: &CsvOptions,
    schema: SchemaRef,
    batch_rows: usize,
) -> arrow::csv::ReaderBuilder {
    let builder = arrow::csv::ReaderBuilder::new(schema)
        .with_header(false)
        .with_batch_size(batch_rows)
        .with_delimiter(options.delimiter)
        .with_quote(options.quote);
    match options.escape {
        Some(escape) => builder.with_escape(escape),
        None => builder,
    }
}

fn mismatch(format: &Format) -> ArrowError {
    ArrowError::ParseError(match format {
        Format::Csv(_) => "record splits into a different number of rows".into(),
        Format::JsonLines { .. } => "line holds more than one JSON value".into(),
    })
}

/// Arrow's message without its "Json error: "-style prefix, in lowercase like ours.
fn message(error: ArrowError) -> String {
    match error {
        ArrowError::JsonError(m) | ArrowError::ParseError(m) | ArrowError::CsvError(m) => {
            lowercase_first(&m)
        }
        other => other.to_string(),
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Decodes one CSV record with every column as nullable text: the header's names, or a bad
/// record's values. Empty fields are `None`.
pub(crate) fn csv_fields(
    options: &CsvOptions,
    record: &[u8],
    columns: usize,
) -> Result<Vec<Option<String>>, ArrowError> {
    let fields: Fields = (0..columns)
        .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut decoder = csv_builder(options, schema, 1).build_decoder();
    decoder.decode(record)?;
    let batch = decoder
        .flush()?
        .ok_or_else(|| ArrowError::ParseError("empty record".into()))?;
    Ok(batch
        .columns()
        .iter()
        .map(|column| {
            let column = column.as_string::<i32>();
            column.is_valid(0).then(|| column.value(0).to_owned())
        })
        .collect())
}

fn describe_csv_value(options: &CsvOptions, schema: &Schema, record: &[u8]) -> Option<String> {
    let values = csv_fields(options, record, schema.fields().len()).ok()?;
    for (i, field) in schema.fields().iter().enumerate() {
        if field.data_type() == &DataType::Utf8 && field.is_nullable() {
            continue; // cannot fail
        }
        let probe: Fields = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| match j == i {
                true => f.clone(),
                false => Arc::new(Field::new(f.name(), DataType::Utf8, true)),
            })
            .collect();
        let mut decoder = csv_builder(options, Arc::new(Schema::new(probe)), 1).build_decoder();
        if decoder.decode(record).and_then(|_| decoder.flush()).is_ok() {
            continue;
        }
        return Some(match &values[i] {
            None => format!("column `{}` is empty but not nullable", field.name()),
            Some(value) => format!(
                "column `{}`: cannot parse {:?} as {}",
                field.name(),
                shorten(value),
                field.data_type()
            ),
        });
    }
    None
}

/// Cuts a value quoted in a message to 64 characters.
fn shorten(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Infers CSV column types from `sample` (good records only, back to back); names come from
/// `names`. An empty sample gives all-Utf8 columns.
pub(crate) fn infer_csv(
    options: &CsvOptions,
    sample: &[u8],
    names: Vec<String>,
) -> Result<Schema, ArrowError> {
    let types: Vec<DataType> = if sample.is_empty() {
        vec![DataType::Utf8; names.len()]
    } else {
        let format = arrow::csv::reader::Format::default()
            .with_header(false)
            .with_delimiter(options.delimiter)
            .with_quote(options.quote);
        let format = match options.escape {
            Some(escape) => format.with_escape(escape),
            None => format,
        };
        let (inferred, _) = format.infer_schema(Cursor::new(sample), None)?;
        inferred
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect()
    };
    Ok(Schema::new(
        names
            .into_iter()
            .zip(types)
            .map(|(name, ty)| Field::new(name, no_null_type(ty), true))
            .collect::<Fields>(),
    ))
}

/// Infers a JSON-lines schema from `lines`. Lines that do not parse alone, or whose types
/// conflict with earlier lines (an object where a number was), are left out; they fail again,
/// with a line number, when decoded. `None` when no line is usable.
pub(crate) fn infer_json(lines: &[&[u8]]) -> Option<Schema> {
    let infer = |lines: &[&[u8]]| {
        let joined = lines.concat();
        arrow::json::reader::infer_json_schema(Cursor::new(joined), None).map(|(schema, _)| schema)
    };
    let mut usable: Vec<&[u8]> = lines
        .iter()
        .copied()
        .filter(|l| infer(&[l]).is_ok())
        .collect();
    loop {
        if usable.is_empty() {
            return None;
        }
        if let Ok(schema) = infer(&usable) {
            let fields: Fields = schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), no_null_type(f.data_type().clone()), true))
                .collect();
            return Some(Schema::new(fields));
        }
        // Binary-search the shortest failing prefix; its last line conflicts with the ones
        // before it. Lines pass alone, so a prefix of one never fails.
        let (mut ok, mut failing) = (1, usable.len());
        while failing - ok > 1 {
            let mid = (ok + failing) / 2;
            match infer(&usable[..mid]) {
                Ok(_) => ok = mid,
                Err(_) => failing = mid,
            }
        }
        usable.remove(failing - 1);
    }
}

/// Why a JSON line that no schema could be inferred from is bad.
pub(crate) fn json_line_problem(line: &[u8]) -> String {
    match arrow::json::reader::infer_json_schema(Cursor::new(line), None) {
        Err(e) => message(e),
        Ok(_) => "no usable JSON object".into(),
    }
}

/// Replaces `Null`, which inference gives a column with no values in the sample, by `Utf8`,
/// at any depth. A `Null` column would make the decoders drop (CSV) or refuse (JSON) values
/// that appear after the sample.
fn no_null_type(ty: DataType) -> DataType {
    match ty {
        DataType::Null => DataType::Utf8,
        DataType::List(item) => DataType::List(Arc::new(
            item.as_ref()
                .clone()
                .with_data_type(no_null_type(item.data_type().clone())),
        )),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| {
                    f.as_ref()
                        .clone()
                        .with_data_type(no_null_type(f.data_type().clone()))
                })
                .collect(),
        ),
        other => other,
    }
}

/// Whether arrow-csv can decode a column of this type.
pub(crate) fn csv_supports(ty: &DataType) -> bool {
    use DataType::*;
    match ty {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float16
        | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..)
        | Date32 | Date64 | Timestamp(..) | Null | Utf8 | Utf8View => true,
        Time32(unit) => matches!(
            unit,
            arrow::datatypes::TimeUnit::Second | arrow::datatypes::TimeUnit::Millisecond
        ),
        Time64(unit) => matches!(
            unit,
            arrow::datatypes::TimeUnit::Microsecond | arrow::datatypes::TimeUnit::Nanosecond
        ),
        Dictionary(key, value) => key.is_integer() && value.as_ref() == &Utf8,
        _ => false,
    }
}
