//! Conversion tests: every case checks exact values read back from the Parquet output.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema, TimeUnit,
};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::PageIndexPolicy;

use super::*;
use split::Splitter;

/// A temporary directory holding one input file; the output goes beside it.
struct Case {
    dir: tempfile::TempDir,
    input: PathBuf,
}

impl Case {
    fn new(name: &str, bytes: impl AsRef<[u8]>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        Self { dir, input }
    }

    fn output(&self) -> PathBuf {
        self.dir.path().join("out.parquet")
    }

    /// Files in the directory other than the input: the output, and any leftover temp file.
    fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| Path::new(n) != self.input.file_name().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn csv(text: &str) -> Case {
    Case::new("in.csv", text)
}

fn jsonl(text: &str) -> Case {
    Case::new("in.jsonl", text)
}

/// Reads a whole Parquet file back as one batch.
fn read_back(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn column<'b>(batch: &'b RecordBatch, name: &str) -> &'b Arc<dyn Array> {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn ints(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    column(batch, name)
        .as_primitive::<Int64Type>()
        .iter()
        .collect()
}

fn floats(batch: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    column(batch, name)
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

fn bools(batch: &RecordBatch, name: &str) -> Vec<Option<bool>> {
    column(batch, name).as_boolean().iter().collect()
}

fn strs(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    column(batch, name)
        .as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_owned))
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn types(schema: &Schema) -> Vec<(String, DataType)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect()
}

fn malformed(error: Error) -> (PathBuf, u64, String) {
    match error {
        Error::MalformedRecord { path, line, what } => (path.into(), line, what.into()),
        other => panic!("expected MalformedRecord, got {other:?}"),
    }
}

// ---- CSV: inference, schema, quoting ----

#[test]
fn csv_header_and_inferred_types_round_trip() {
    let case = csv("id,score,ok,name,note\n1,0.5,true,alice,\n2,,FALSE,bob,x\n-3,2,,,y\n");
    let report = Conversion::csv(&case.input).write(case.output()).unwrap();
    assert_eq!(
        types(&report.schema),
        [
            ("id".into(), DataType::Int64),
            ("score".into(), DataType::Float64), // 0.5 and 2: mixed int/float
            ("ok".into(), DataType::Boolean),
            ("name".into(), DataType::Utf8),
            ("note".into(), DataType::Utf8),
        ]
    );
    assert!(report.schema.fields().iter().all(|f| f.is_nullable()));
    assert_eq!((report.rows_written, report.records_skipped), (3, 0));
    assert_eq!(
        report.bytes_in,
        std::fs::metadata(&case.input).unwrap().len()
    );
    assert_eq!(
        report.bytes_out,
        std::fs::metadata(case.output()).unwrap().len()
    );
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "id"), [Some(1), Some(2), Some(-3)]);
    assert_eq!(floats(&batch, "score"), [Some(0.5), None, Some(2.0)]);
    assert_eq!(bools(&batch, "ok"), [Some(true), Some(false), None]);
    assert_eq!(strs(&batch, "name"), [s("alice"), s("bob"), None]);
    assert_eq!(strs(&batch, "note"), [None, s("x"), s("y")]);
    assert_eq!(case.leftovers(), ["out.parquet"]);
}

#[test]
fn given_schema_maps_columns_by_position_and_types_values() {
    let case = csv("a,b,c\n1,2.5,x\n,3,\n");
    let schema = Schema::new(vec![
        Field::new("n", DataType::Int32, true),
        Field::new("f", DataType::Float32, false),
        Field::new("s", DataType::Utf8, true),
    ]);
    let report = Conversion::csv(&case.input)
        .with_schema(schema.clone())
        .write(case.output())
        .unwrap();
    assert_eq!(report.schema.as_ref(), &schema);
    let batch = read_back(&case.output());
    assert_eq!(batch.schema().fields(), schema.fields());
    let n: Vec<_> = batch.column(0).as_primitive::<Int32Type>().iter().collect();
    let f: Vec<_> = batch
        .column(1)
        .as_primitive::<Float32Type>()
        .iter()
        .collect();
    assert_eq!(n, [Some(1), None]);
    assert_eq!(f, [Some(2.5), Some(3.0)]);
    assert_eq!(strs(&batch, "s"), [s("x"), None]);
}

#[test]
fn empty_value_in_a_non_nullable_column_is_a_bad_record() {
    let case = csv("a,b\n1,x\n2,\n");
    let schema = Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Utf8, false),
    ]);
    let error = Conversion::csv(&case.input)
        .with_schema(schema)
        .write(case.output())
        .unwrap_err();
    let (_, line, what) = malformed(error);
    assert_eq!(
        (line, what.as_str()),
        (3, "column `b` is empty but not nullable")
    );
}

#[test]
fn quoted_fields_hold_delimiters_quotes_and_line_breaks() {
    // The record on lines 3-4 spans a line break; the bad record after it is on line 5.
    let case = csv("id,text\n1,\"a, b\"\n2,\"two\nlines, \"\"quoted\"\"\"\n3,x,extra\n4,\"\"\n");
    let report = Conversion::csv(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    assert_eq!(report.rows_written, 3);
    assert_eq!(
        report.skipped,
        [SkippedRecord {
            line: 5,
            reason: "expected 2 fields, found 3".into()
        }]
    );
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "id"), [Some(1), Some(2), Some(4)]);
    // An empty quoted field is empty, hence null, like an unquoted one.
    assert_eq!(
        strs(&batch, "text"),
        [s("a, b"), s("two\nlines, \"quoted\""), None]
    );
}

#[test]
fn tsv_with_escape_character() {
    let case = csv("k\tv\n1\t\"say \\\"hi\\\"\"\n2\tplain\n");
    let options = CsvOptions::new()
        .with_delimiter(b'\t')
        .with_escape(Some(b'\\'));
    Conversion::csv(&case.input)
        .with_csv_options(options)
        .write(case.output())
        .unwrap();
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "k"), [Some(1), Some(2)]);
    assert_eq!(strs(&batch, "v"), [s("say \"hi\""), s("plain")]);
}

#[test]
fn headerless_csv_names_columns_by_position() {
    let case = csv("1,a\n2,b\n");
    let report = Conversion::csv(&case.input)
        .with_csv_options(CsvOptions::new().with_header(false))
        .write(case.output())
        .unwrap();
    assert_eq!(
        types(&report.schema),
        [
            ("column_1".into(), DataType::Int64),
            ("column_2".into(), DataType::Utf8)
        ]
    );
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "column_1"), [Some(1), Some(2)]);
}

#[test]
fn crlf_line_endings() {
    let case = csv("a,b\r\n1,x\r\n\r\n2,\"y\r\nz\"\r\n3,w,bad\r\n");
    let report = Conversion::csv(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    // Lines: 1 header, 2 "1,x", 3 blank, 4-5 the quoted record, 6 the bad one.
    assert_eq!(report.skipped[0].line, 6);
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "a"), [Some(1), Some(2)]);
    assert_eq!(strs(&batch, "b"), [s("x"), s("y\r\nz")]);

    let case = jsonl("{\"a\":1}\r\n\r\n{\"a\":2,\"b\":\"t\"}\r\n");
    Conversion::json_lines(&case.input)
        .write(case.output())
        .unwrap();
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "a"), [Some(1), Some(2)]);
    assert_eq!(strs(&batch, "b"), [None, s("t")]);
}

#[test]
fn multi_megabyte_field_survives_the_splitter() {
    // 6 MiB spanning many reads, with delimiters, quotes and line breaks inside.
    let big: String = (0..6 << 20)
        .map(|i| match i % 97 {
            0 => ',',
            1 => '\n',
            _ => char::from(b'a' + (i % 26) as u8),
        })
        .collect();
    let text = format!("id,blob,after\n1,\"{big}\",x\n2,small,y\n3,a,b,c\n");
    let case = csv(&text);
    let report = Conversion::csv(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    let big_lines = big.matches('\n').count() as u64;
    assert_eq!(report.skipped[0].line, 4 + big_lines);
    let batch = read_back(&case.output());
    assert_eq!(strs(&batch, "blob"), [Some(big), s("small")]);
    assert_eq!(strs(&batch, "after"), [s("x"), s("y")]);
}

// ---- bad records ----

/// Rows 1..=10 of `id,name,score`, with row 6 (on line 7) one field short.
fn ten_rows_line_7_short() -> String {
    let mut text = String::from("id,name,score\n");
    for i in 1..=10 {
        match i {
            6 => text.push_str("6,six\n"),
            _ => text.push_str(&format!("{i},n{i},{}.5\n", i * 10)),
        }
    }
    text
}

#[test]
fn wrong_field_count_fails_naming_line_7() {
    let case = csv(&ten_rows_line_7_short());
    let error = Conversion::csv(&case.input)
        .write(case.output())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{}:7: expected 3 fields, found 2", case.input.display())
    );
    let (path, line, _) = malformed(error);
    assert_eq!((path, line), (case.input.clone(), 7));
    assert_eq!(
        case.leftovers(),
        Vec::<String>::new(),
        "no output on failure"
    );
}

#[test]
fn wrong_field_count_skipped_converts_the_rest() {
    let case = csv(&ten_rows_line_7_short());
    let report = Conversion::csv(&case.input)
        .with_bad_records(BadRecords::Skip)
        .with_batch_rows(4) // the bad record lands mid-batch
        .write(case.output())
        .unwrap();
    assert_eq!((report.rows_written, report.records_skipped), (9, 1));
    assert_eq!(
        report.skipped,
        [SkippedRecord {
            line: 7,
            reason: "expected 3 fields, found 2".into()
        }]
    );
    let batch = read_back(&case.output());
    let ids: Vec<i64> = (1..=10).filter(|&i| i != 6).collect();
    assert_eq!(
        ints(&batch, "id"),
        ids.iter().map(|&i| Some(i)).collect::<Vec<_>>()
    );
    let names: Vec<_> = ids.iter().map(|i| s(&format!("n{i}"))).collect();
    assert_eq!(strs(&batch, "name"), names);
    let scores: Vec<_> = ids.iter().map(|&i| Some(i as f64 * 10.0 + 0.5)).collect();
    assert_eq!(floats(&batch, "score"), scores);
}

#[test]
fn non_numeric_value_in_an_int_column() {
    // Beyond the inference sample, so `id` is Int64 and line 5's value does not fit.
    let case = csv("id,v\n1,a\n2,b\n3,c\nfour,d\n5,e\n");
    let error = Conversion::csv(&case.input)
        .with_infer_records(3)
        .with_batch_rows(2)
        .write(case.output())
        .unwrap_err();
    let (_, line, what) = malformed(error);
    assert_eq!(
        (line, what.as_str()),
        (5, "column `id`: cannot parse \"four\" as Int64")
    );
    assert!(case.leftovers().is_empty());

    let report = Conversion::csv(&case.input)
        .with_infer_records(3)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    assert_eq!(report.skipped[0].line, 5);
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "id"), [Some(1), Some(2), Some(3), Some(5)]);
    assert_eq!(strs(&batch, "v"), [s("a"), s("b"), s("c"), s("e")]);
}

#[test]
fn invalid_utf8_is_a_bad_record() {
    let case = Case::new("in.csv", b"a,b\n1,ok\n2,bad\xff\xfe\n3,fine\n");
    let (_, line, what) = malformed(
        Conversion::csv(&case.input)
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!(
        (line, what.as_str()),
        (3, "invalid UTF-8 at byte 5 of the record")
    );

    let report = Conversion::csv(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    assert_eq!(report.records_skipped, 1);
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "a"), [Some(1), Some(3)]);
    assert_eq!(strs(&batch, "b"), [s("ok"), s("fine")]);
}

#[test]
fn a_bad_header_fails_even_when_skipping() {
    let case = Case::new("in.csv", b"a,\xff\n1,2\n");
    let (_, line, what) = malformed(
        Conversion::csv(&case.input)
            .with_bad_records(BadRecords::Skip)
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!(
        (line, what.as_str()),
        (1, "header: invalid UTF-8 at byte 2 of the record")
    );
}

#[test]
fn unterminated_quote_and_overlong_record() {
    let case = csv("a,b\n1,x\n2,\"never closed\n3,y\n");
    let (_, line, what) = malformed(
        Conversion::csv(&case.input)
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!((line, what.as_str()), (3, "unterminated quoted field"));

    let error = Conversion::csv(&case.input)
        .with_max_record_bytes(8)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap_err();
    match error {
        Error::RecordTooLarge { line, limit, .. } => assert_eq!((line, limit), (3, 8)),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert!(case.leftovers().is_empty());
}

#[test]
fn skipped_records_are_all_counted_but_few_described() {
    let mut text = String::from("a,b\n");
    for i in 0..100 {
        text.push_str(if i % 2 == 0 { "1,x\n" } else { "only-one\n" });
    }
    let case = csv(&text);
    let report = Conversion::csv(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    assert_eq!((report.rows_written, report.records_skipped), (50, 50));
    assert_eq!(report.skipped.len(), MAX_REPORTED_SKIPS);
    let lines: Vec<u64> = report.skipped.iter().map(|r| r.line).collect();
    let expected: Vec<u64> = (0..MAX_REPORTED_SKIPS as u64).map(|k| 3 + 2 * k).collect();
    assert_eq!(lines, expected);
}

// ---- empty input ----

#[test]
fn empty_file_without_schema_is_an_error_and_with_schema_an_empty_table() {
    for case in [csv(""), csv("\n\n"), jsonl(""), jsonl("\n  \n")] {
        let is_csv = case.input.extension().unwrap() == "csv";
        let conversion = match is_csv {
            true => Conversion::csv(&case.input),
            false => Conversion::json_lines(&case.input),
        };
        match conversion.write(case.output()).unwrap_err() {
            Error::EmptyInput { path } => assert_eq!(&*path, case.input.as_path()),
            other => panic!("expected EmptyInput, got {other:?}"),
        }
        assert!(case.leftovers().is_empty());

        let schema = Schema::new(vec![Field::new("x", DataType::Int64, true)]);
        let conversion = match is_csv {
            true => Conversion::csv(&case.input),
            false => Conversion::json_lines(&case.input),
        };
        let report = conversion
            .with_schema(schema.clone())
            .write(case.output())
            .unwrap();
        assert_eq!((report.rows_written, report.row_groups), (0, 0));
        let batch = read_back(&case.output());
        assert_eq!(
            (batch.num_rows(), batch.schema().fields()),
            (0, schema.fields())
        );
    }
}

#[test]
fn header_only_gives_text_columns_and_no_rows() {
    let case = csv("a,b,c\n");
    let report = Conversion::csv(&case.input).write(case.output()).unwrap();
    assert_eq!(
        types(&report.schema),
        [
            ("a".into(), DataType::Utf8),
            ("b".into(), DataType::Utf8),
            ("c".into(), DataType::Utf8)
        ]
    );
    let batch = read_back(&case.output());
    assert_eq!(batch.num_rows(), 0);
    assert_eq!(batch.num_columns(), 3);
}

// ---- JSON lines ----

#[test]
fn json_lines_nested_fields_missing_keys_and_blank_lines() {
    let text = concat!(
        "{\"id\": 1, \"user\": {\"name\": \"ann\", \"age\": 31}, \"tags\": [\"a\", \"b\"], \"w\": 0.5}\n",
        "\n", // blank: skipped silently
        "{\"id\": 2, \"user\": {\"name\": \"bo\"}, \"tags\": []}\n",
        "{\"id\": 3, \"tags\": null, \"w\": 2, \"extra\": null}\n",
    );
    let case = jsonl(text);
    let report = Conversion::json_lines(&case.input)
        .write(case.output())
        .unwrap();
    // Columns in the order the file first shows them, as pyarrow lists them (serde_json's
    // `preserve_order`, on for the workspace); `extra`, first seen later, comes last.
    let user = DataType::Struct(
        vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("age", DataType::Int64, true),
        ]
        .into(),
    );
    let tags = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    assert_eq!(
        types(&report.schema),
        [
            ("id".into(), DataType::Int64),
            ("user".into(), user),
            ("tags".into(), tags), // only strings and []
            ("w".into(), DataType::Float64),
            ("extra".into(), DataType::Utf8), // only ever null
        ]
    );
    assert_eq!((report.rows_written, report.records_skipped), (3, 0));

    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "id"), [Some(1), Some(2), Some(3)]);
    assert_eq!(floats(&batch, "w"), [Some(0.5), None, Some(2.0)]);
    let user = column(&batch, "user").as_struct();
    assert!(user.is_null(2), "missing object key is null");
    let ages: Vec<_> = user
        .column_by_name("age")
        .unwrap()
        .as_primitive::<Int64Type>()
        .iter()
        .take(2)
        .collect();
    let names: Vec<_> = user
        .column_by_name("name")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .take(2)
        .collect();
    assert_eq!(names, [Some("ann"), Some("bo")]);
    assert_eq!(ages, [Some(31), None]);
    let tags = column(&batch, "tags").as_list::<i32>();
    let tag_values = |i: usize| -> Vec<Option<String>> {
        tags.value(i)
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_owned))
            .collect()
    };
    assert_eq!(tag_values(0), [s("a"), s("b")]);
    assert_eq!((tag_values(1), tags.is_null(1)), (vec![], false));
    assert!(tags.is_null(2));
    assert_eq!(strs(&batch, "extra"), [None, None, None]);
}

#[test]
fn json_line_that_is_not_json() {
    let case = jsonl("{\"a\": 1}\n{\"a\": 2}\nnot json\n\n{\"a\": 4}\n");
    let (path, line, what) = malformed(
        Conversion::json_lines(&case.input)
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!((path, line), (case.input.clone(), 3));
    assert_eq!(what, "encountered unexpected 'o' whilst parsing literal");
    assert!(case.leftovers().is_empty());

    let report = Conversion::json_lines(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    assert_eq!((report.records_skipped, report.skipped[0].line), (1, 3));
    assert_eq!(
        ints(&read_back(&case.output()), "a"),
        [Some(1), Some(2), Some(4)]
    );
}

#[test]
fn json_lines_bad_in_other_ways() {
    let case = jsonl(concat!(
        "{\"a\": 1, \"s\": \"x\"}\n",
        "{\"a\": \"two\"}\n",          // 2: string in an Int64 column
        "{\"a\": 3}{\"a\": 33}\n",     // 3: two values on one line
        "[1, 2]\n",                    // 4: not an object
        "{\"a\": 5, \"new\": true}\n", // 5: key the sample did not show
        "{\"a\": 6, \"s\": 7}\n",      // 6: fine: numbers coerce into text
        "{\"a\": 7\n",                 // 7: truncated
    ));
    let report = Conversion::json_lines(&case.input)
        .with_infer_records(1)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    let skipped: Vec<(u64, &str)> = report
        .skipped
        .iter()
        .map(|r| (r.line, &*r.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                2,
                "whilst decoding field 'a': failed to parse \"two\" as Int64"
            ),
            (3, "line holds more than one JSON value"),
            (4, "expected { got [1, 2]"),
            (5, "column 'new' missing from schema"),
            (7, "truncated record whilst reading object"),
        ]
    );
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "a"), [Some(1), Some(6)]);
    assert_eq!(strs(&batch, "s"), [s("x"), s("7")]);

    // With a given schema, unknown keys are ignored: the schema selects keys.
    let schema = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
    let report = Conversion::json_lines(&case.input)
        .with_schema(schema)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    let lines: Vec<u64> = report.skipped.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3, 4, 7]);
    assert_eq!(
        ints(&read_back(&case.output()), "a"),
        [Some(1), Some(5), Some(6)]
    );
}

#[test]
fn json_inference_leaves_out_conflicting_lines() {
    let case = jsonl("{\"a\": 1}\n{\"a\": {\"x\": 1}}\n{\"a\": 3}\n");
    let report = Conversion::json_lines(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    assert_eq!(types(&report.schema), [("a".into(), DataType::Int64)]);
    assert_eq!(report.skipped[0].line, 2);
    assert_eq!(ints(&read_back(&case.output()), "a"), [Some(1), Some(3)]);
}

// ---- round trip, streaming, metadata ----

/// The value of each column in row `i`, computed independently of the converter.
fn row(i: u64) -> (i64, f64, bool, Option<String>) {
    let int = (i as i64 * 7919) % 100_003 - 50_000;
    let float = i as f64 / 8.0 - 1000.0; // exact in binary, so text round-trips exactly
    let flag = i.is_multiple_of(3);
    let text =
        (!i.is_multiple_of(5)).then(|| format!("r{i},\"q\"{}", "z".repeat((i % 13) as usize)));
    (int, float, flag, text)
}

fn generated_csv(rows: u64) -> String {
    let mut text = String::from("int,float,flag,text\n");
    for i in 0..rows {
        let (int, float, flag, t) = row(i);
        let t = t
            .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
            .unwrap_or_default();
        text.push_str(&format!("{int},{float:?},{flag},{t}\n"));
    }
    text
}

#[test]
fn generated_rows_round_trip_exactly() {
    let rows = 20_000;
    let case = csv(&generated_csv(rows));
    let report = Conversion::csv(&case.input)
        .with_batch_rows(1000)
        .with_row_group_rows(3000)
        .write(case.output())
        .unwrap();
    assert_eq!(
        types(&report.schema),
        [
            ("int".into(), DataType::Int64),
            ("float".into(), DataType::Float64),
            ("flag".into(), DataType::Boolean),
            ("text".into(), DataType::Utf8),
        ]
    );
    let batch = read_back(&case.output());
    assert_eq!(batch.num_rows() as u64, rows);
    let (ints_, floats_, flags, texts): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = {
        let mut cols = (vec![], vec![], vec![], vec![]);
        for i in 0..rows {
            let (a, b, c, d) = row(i);
            cols.0.push(Some(a));
            cols.1.push(Some(b));
            cols.2.push(Some(c));
            cols.3.push(d);
        }
        cols
    };
    assert_eq!(ints(&batch, "int"), ints_);
    assert_eq!(floats(&batch, "float"), floats_);
    assert_eq!(bools(&batch, "flag"), flags);
    assert_eq!(strs(&batch, "text"), texts);
}

#[test]
fn memory_stays_flat_in_input_size() {
    let batch_rows = 256;
    let convert = |batches: u64| {
        let case = csv(&generated_csv(batch_rows as u64 * batches));
        let calls = Mutex::new(vec![]);
        let report = Conversion::csv(&case.input)
            .with_batch_rows(batch_rows)
            .with_infer_records(100)
            .with_row_group_rows(4 * batch_rows)
            .with_progress(|p| calls.lock().unwrap().push(p.clone()))
            .write(case.output())
            .unwrap();
        (
            report,
            calls.into_inner().unwrap(),
            std::fs::metadata(&case.input).unwrap().len(),
        )
    };
    let (small, _, _) = convert(10);
    let (large, calls, input_bytes) = convert(50);

    // One progress call per batch, each adding at most `batch_rows` rows.
    assert_eq!(calls.len(), 50);
    let mut previous = 0;
    for call in &calls {
        assert!(call.rows_written - previous <= batch_rows as u64);
        assert!(call.bytes_read <= input_bytes);
        assert_eq!(call.bytes_total, Some(input_bytes));
        previous = call.rows_written;
    }
    assert_eq!(calls.last().unwrap().bytes_read, input_bytes);
    assert_eq!(large.rows_written, 50 * batch_rows as u64);

    // Held records never exceed one batch plus the sample, however long the input.
    assert!(large.peak_buffered_records <= batch_rows + 100);
    assert_eq!(large.peak_buffered_records, small.peak_buffered_records);
    // The writer holds one row group: five times the input, about the same peak.
    assert!(large.peak_writer_bytes > 0);
    assert!(
        large.peak_writer_bytes <= small.peak_writer_bytes * 5 / 4,
        "writer peak grew with input: {} vs {}",
        large.peak_writer_bytes,
        small.peak_writer_bytes
    );
}

#[test]
fn parquet_has_page_index_configured_row_groups_and_codec() {
    let rows = 10_000;
    let case = csv(&generated_csv(rows));
    for (compression, codec) in [
        (
            Compression::Zstd(3),
            parquet::basic::Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
        ),
        (Compression::Snappy, parquet::basic::Compression::SNAPPY),
        (Compression::None, parquet::basic::Compression::UNCOMPRESSED),
    ] {
        let report = Conversion::csv(&case.input)
            .with_compression(compression)
            .with_batch_rows(700)
            .with_row_group_rows(3000)
            .with_page_bytes(4096)
            .write(case.output())
            .unwrap();
        assert_eq!(report.row_groups, 4);

        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let metadata =
            ArrowReaderMetadata::load(&File::open(case.output()).unwrap(), options).unwrap();
        let metadata = metadata.metadata();
        let sizes: Vec<i64> = metadata
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows())
            .collect();
        assert_eq!(sizes, [3000, 3000, 3000, 1000]);
        assert!(
            metadata
                .page_index()
                .expect("page index loaded")
                .is_complete()
        );
        for (rg, row_group) in metadata.row_groups().iter().enumerate() {
            let page_index = metadata.page_index_for_row_group(rg);
            for (c, chunk) in row_group.columns().iter().enumerate() {
                // The level is not stored in the file; compare the codec.
                assert_eq!(
                    std::mem::discriminant(&chunk.compression()),
                    std::mem::discriminant(&codec)
                );
                assert!(
                    chunk.statistics().is_some(),
                    "row group {rg} column {c} has stats"
                );
                assert!(
                    chunk.column_index_range().is_some() && chunk.offset_index_offset().is_some()
                );
                assert!(
                    page_index.column_index(c).is_some(),
                    "rg {rg} col {c} column index"
                );
                let offsets = page_index.offset_index(c).expect("offset index");
                assert!(!offsets.page_locations().is_empty());
            }
        }
        // 4 KiB pages: the text column of a 3000-row group spans several.
        let text_pages = metadata
            .page_index_for_row_group(0)
            .offset_index(3)
            .unwrap()
            .page_locations()
            .len();
        assert!(text_pages > 1, "{text_pages} pages");
    }
}

// ---- atomic output ----

#[test]
fn failure_leaves_no_file_and_keeps_an_existing_one() {
    let case = csv(&ten_rows_line_7_short());
    std::fs::write(case.output(), b"previous contents").unwrap();
    Conversion::csv(&case.input)
        .write(case.output())
        .unwrap_err();
    assert_eq!(case.leftovers(), ["out.parquet"], "no temp file left");
    assert_eq!(std::fs::read(case.output()).unwrap(), b"previous contents");

    // Success replaces it.
    Conversion::csv(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap();
    assert_eq!(read_back(&case.output()).num_rows(), 9);
    assert_eq!(case.leftovers(), ["out.parquet"]);
}

#[test]
fn unwritable_output_is_an_io_error_naming_it() {
    let case = csv("a\n1\n");
    let output = case.dir.path().join("missing-dir").join("out.parquet");
    match Conversion::csv(&case.input).write(&output).unwrap_err() {
        Error::Io { path, .. } => assert_eq!(&*path, output.as_path()),
        other => panic!("expected Io, got {other:?}"),
    }
    match Conversion::csv(case.dir.path().join("nope.csv"))
        .write(case.output())
        .unwrap_err()
    {
        Error::Io { path, .. } => assert_eq!(&*path, case.dir.path().join("nope.csv").as_path()),
        other => panic!("expected Io, got {other:?}"),
    }
}

// ---- options ----

#[test]
fn invalid_options_are_refused_before_reading() {
    let case = csv("a\n1\n");
    let option = |conversion: Conversion<'_>| match conversion.write(case.output()).unwrap_err() {
        Error::InvalidOption { option, reason } => (option, reason.to_string()),
        other => panic!("expected InvalidOption, got {other:?}"),
    };
    let c = || Conversion::csv(&case.input);
    assert_eq!(
        option(c().with_compression(Compression::Zstd(23))),
        ("with_compression", "zstd level 23 is outside 1..=22".into())
    );
    assert_eq!(option(c().with_batch_rows(0)).0, "with_batch_rows");
    assert_eq!(option(c().with_row_group_rows(0)).0, "with_row_group_rows");
    assert_eq!(
        option(c().with_csv_options(CsvOptions::new().with_delimiter(b'"'))),
        (
            "with_csv_options",
            "delimiter, quote and escape must differ".into()
        )
    );
    assert_eq!(
        option(c().with_csv_options(CsvOptions::new().with_delimiter(b'\n'))).0,
        "with_csv_options"
    );
    assert_eq!(
        option(Conversion::json_lines(&case.input).with_csv_options(CsvOptions::new())).0,
        "with_csv_options"
    );
    let nested = Schema::new(vec![Field::new(
        "l",
        DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
        true,
    )]);
    assert_eq!(option(c().with_schema(nested)).0, "with_schema");
    assert_eq!(option(c().with_schema(Schema::empty())).0, "with_schema");
    let interval = Schema::new(vec![Field::new(
        "i",
        DataType::Interval(arrow::datatypes::IntervalUnit::DayTime),
        true,
    )]);
    let (name, reason) = option(Conversion::json_lines(&case.input).with_schema(interval));
    assert_eq!(name, "with_schema");
    assert!(
        reason.starts_with("the decoder cannot read this schema"),
        "{reason}"
    );
    assert!(case.leftovers().is_empty());
}

#[test]
fn header_width_must_match_a_given_schema() {
    let case = csv("a,b\n1,2\n");
    let schema = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
    let (_, line, what) = malformed(
        Conversion::csv(&case.input)
            .with_schema(schema)
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!(
        (line, what.as_str()),
        (1, "header has 2 fields where the schema has 1")
    );
}

// ---- reference: pyarrow ----

/// The CSV both inferences read; each column probes one rule.
const PYARROW_CSV: &str = "\
id,score,flag,name,ratio,mixed,empty,day,ts_s,ts_frac,plus,ws,big,nulls,bool01
1,2.5,true,alice,1,1,,2024-01-02,2024-01-02 03:04:05,2024-01-02 03:04:05,-3, 1,9223372036854775808,NULL,1
2,,false,\"bob, jr\",2.5,x,,2024-02-03,2024-02-03T04:05:06,2024-01-02T03:04:05.123,+4,2 ,1,N/A,true
3,7e1,TRUE,,3,2,,2024-03-04,2024-03-04 05:06:07,2024-01-02 03:04:05,5,3,2,7,false
";

/// What `pyarrow.csv.read_csv` infers for [`PYARROW_CSV`]: pyarrow 26.0.1, default options,
/// run once offline so the test needs no Python:
/// `python -c 'import io, sys, pyarrow.csv as c; print(c.read_csv(io.BytesIO(sys.stdin.buffer.read())).schema)' < t.csv`
const PYARROW_TYPES: [(&str, &str); 15] = [
    ("id", "int64"),
    ("score", "double"),
    ("flag", "bool"),
    ("name", "string"),
    ("ratio", "double"),
    ("mixed", "string"),
    ("empty", "null"),
    ("day", "date32[day]"),
    ("ts_s", "timestamp[s]"),
    ("ts_frac", "timestamp[ns]"),
    ("plus", "double"),
    ("ws", "int64"),
    ("big", "double"),
    ("nulls", "int64"),
    ("bool01", "bool"),
];

/// The Arrow type a pyarrow type name stands for.
fn arrow_type_of_pyarrow(name: &str) -> DataType {
    match name {
        "int64" => DataType::Int64,
        "double" => DataType::Float64,
        "bool" => DataType::Boolean,
        "string" => DataType::Utf8,
        "null" => DataType::Null,
        "date32[day]" => DataType::Date32,
        "timestamp[s]" => DataType::Timestamp(TimeUnit::Second, None),
        "timestamp[ns]" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        other => panic!("unmapped pyarrow type {other}"),
    }
}

#[test]
fn csv_inference_matches_pyarrow_where_it_should() {
    // Deliberate differences, each explained in the module docs ("Where CSV inference differs
    // from pyarrow"), with the type we infer instead.
    let differs = [
        ("empty", DataType::Utf8),
        ("ts_frac", DataType::Timestamp(TimeUnit::Millisecond, None)),
        ("plus", DataType::Int64),
        ("ws", DataType::Utf8),
        ("big", DataType::Utf8),
        ("nulls", DataType::Utf8),
        ("bool01", DataType::Utf8),
    ];
    let case = csv(PYARROW_CSV);
    let report = Conversion::csv(&case.input).write(case.output()).unwrap();
    let ours = types(&report.schema);
    assert_eq!(ours.len(), PYARROW_TYPES.len());
    let mut agreed = 0;
    for ((name, ty), (py_name, py_type)) in ours.iter().zip(PYARROW_TYPES) {
        assert_eq!(name, py_name);
        let theirs = arrow_type_of_pyarrow(py_type);
        match differs.iter().find(|(n, _)| n == name) {
            Some((_, expected)) => {
                assert_eq!(ty, expected, "column {name}");
                assert_ne!(
                    ty, &theirs,
                    "column {name} is listed as differing but agrees"
                );
            }
            None => {
                assert_eq!(ty, &theirs, "column {name}");
                agreed += 1;
            }
        }
    }
    assert_eq!(agreed, 8);
    // And the values decode under the inferred types.
    let batch = read_back(&case.output());
    assert_eq!(ints(&batch, "plus"), [Some(-3), Some(4), Some(5)]);
    assert_eq!(floats(&batch, "score"), [Some(2.5), None, Some(70.0)]);
    assert_eq!(strs(&batch, "ws"), [s(" 1"), s("2 "), s("3")]);
    assert_eq!(strs(&batch, "nulls"), [s("NULL"), s("N/A"), s("7")]);
}

// ---- randomized: the splitter against arrow-csv, and no panics on garbage ----

/// A seeded xorshift generator: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn text(&mut self, alphabet: &[&[u8]], len: usize) -> Vec<u8> {
        (0..len)
            .flat_map(|_| alphabet[self.below(alphabet.len())].iter().copied())
            .collect()
    }
}

/// Every record the splitter cuts is exactly one record to arrow-csv, with the same fields:
/// decoding the whole input at once (ragged rows padded) equals decoding record by record.
#[test]
fn splitter_agrees_with_arrow_csv_on_random_input() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let alphabet: [&[u8]; 8] = [b"a", b"b", b",", b"\"", b"\n", b"\r\n", b"\r", b"\"\""];
    let options = CsvOptions::new();
    let mut checked = 0;
    for _ in 0..500 {
        let len = rng.below(40);
        let input = rng.text(&alphabet, len);
        let reader = BufReader::with_capacity(1 + rng.below(8), input.as_slice());
        let mut splitter = Splitter::new(reader, Syntax::csv(&options), 1 << 20);
        let (mut bytes, mut records) = (vec![], vec![]);
        while let Some(raw) = splitter.next_record(&mut bytes).unwrap() {
            records.push((bytes.len(), raw));
        }
        if records.is_empty() || records.iter().any(|(_, r)| r.problem.is_some()) {
            continue; // unterminated quotes: arrow-csv reads those differently, by design
        }
        let width = records.iter().map(|(_, r)| r.fields).max().unwrap();
        let text_schema = |n: usize| {
            Arc::new(Schema::new(
                (0..n)
                    .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            ))
        };
        let mut whole = arrow::csv::ReaderBuilder::new(text_schema(width))
            .with_header(false)
            .with_truncated_rows(true)
            .with_batch_size(1000)
            .build_decoder();
        let mut offset = 0;
        loop {
            let n = whole.decode(&input[offset..]).unwrap();
            if n == 0 {
                break;
            }
            offset += n;
        }
        let batch = whole.flush().unwrap().unwrap();
        assert_eq!(
            batch.num_rows(),
            records.len(),
            "input {:?}",
            String::from_utf8_lossy(&input)
        );
        let mut start = 0;
        for (row, (end, raw)) in records.iter().enumerate() {
            let fields = decode::csv_fields(&options, &bytes[start..*end], raw.fields).unwrap();
            for (c, value) in fields.iter().enumerate() {
                let column = batch.column(c).as_string::<i32>();
                let expected = column.is_valid(row).then(|| column.value(row).to_owned());
                assert_eq!(
                    value,
                    &expected,
                    "input {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            start = *end;
        }
        checked += 1;
    }
    assert!(
        checked > 200,
        "only {checked} inputs without unterminated quotes"
    );
}

/// Garbage in: a typed error or a report whose counts add up, never a panic or a stray file.
#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x0bad_cafe_f00d_0002);
    let alphabet: [&[u8]; 14] = [
        b"1", b"-2.5", b"x", b",", b"\"", b"\n", b"\r", b"{", b"}", b":", b"[", b"]", b"\xff",
        b"\"k\"",
    ];
    for i in 0..200 {
        let len = rng.below(60);
        let input = rng.text(&alphabet, len);
        let case = Case::new(if i % 2 == 0 { "in.csv" } else { "in.jsonl" }, &input);
        for policy in [BadRecords::Fail, BadRecords::Skip] {
            let conversion = match i % 2 == 0 {
                true => Conversion::csv(&case.input),
                false => Conversion::json_lines(&case.input),
            };
            let result = conversion
                .with_bad_records(policy)
                .with_batch_rows(1 + rng.below(4))
                .with_infer_records(1 + rng.below(4))
                .write(case.output());
            match result {
                Ok(report) => {
                    assert_eq!(
                        read_back(&case.output()).num_rows() as u64,
                        report.rows_written
                    );
                    std::fs::remove_file(case.output()).unwrap();
                }
                Err(Error::MalformedRecord { .. } | Error::EmptyInput { .. }) => {}
                Err(other) => panic!(
                    "unexpected {other:?} for {:?}",
                    String::from_utf8_lossy(&input)
                ),
            }
            assert!(case.leftovers().is_empty());
        }
    }
}

#[test]
fn nothing_parsable_fails_at_the_first_record_or_is_empty_input_when_skipping() {
    let case = jsonl("\nnot json\n[1]\n");
    let (_, line, what) = malformed(
        Conversion::json_lines(&case.input)
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!(line, 2);
    assert!(what.starts_with("not valid JSON: expected ident"), "{what}");
    let error = Conversion::json_lines(&case.input)
        .with_bad_records(BadRecords::Skip)
        .write(case.output())
        .unwrap_err();
    assert!(matches!(error, Error::EmptyInput { .. }), "{error:?}");

    let case = jsonl("{}\n{}\n");
    let error = Conversion::json_lines(&case.input)
        .write(case.output())
        .unwrap_err();
    assert!(matches!(error, Error::EmptyInput { .. }), "{error:?}");

    let case = Case::new("in.csv", b"\xff,1\n");
    let (_, line, what) = malformed(
        Conversion::csv(&case.input)
            .with_csv_options(CsvOptions::new().with_header(false))
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!(
        (line, what.as_str()),
        (1, "invalid UTF-8 at byte 0 of the record")
    );
}

#[test]
fn a_configured_conversion_can_move_to_another_thread() {
    fn assert_send<T: Send>(_: &T) {}
    let conversion = Conversion::csv("in.csv").with_progress(|_| {});
    assert_send(&conversion);
}

#[test]
fn duplicate_header_names_are_refused_when_inferring() {
    let case = csv("a,b,a\n1,2,3\n");
    let (_, line, what) = malformed(
        Conversion::csv(&case.input)
            .write(case.output())
            .unwrap_err(),
    );
    assert_eq!(
        (line, what.as_str()),
        (1, "header: column name `a` appears twice")
    );
}

/// Issue 21, defect 13: a CSV of 200,000 columns and one row (1.2 MB) asked the decoder for
/// 200,000 × 8,192 cells up front, 13 GB, and aborted the process; a JSON-lines record with
/// 200,000 keys asked for 26 GB. Batches are now sized by the data (rows × columns under
/// `MAX_BATCH_CELLS`), and a schema wider than `with_max_columns` is a typed error.
#[test]
fn very_wide_inputs_are_sized_by_the_data_and_capped() {
    let wide = |columns: usize| {
        let header: Vec<String> = (0..columns).map(|i| format!("c{i}")).collect();
        let row: Vec<String> = (0..columns).map(|i| (i % 10).to_string()).collect();
        format!(
            "{}\n{}\n{}\n",
            header.join(","),
            row.join(","),
            row.join(",")
        )
    };
    let case = csv(&wide(200_000));
    match Conversion::csv(&case.input).write(case.output()) {
        Err(Error::TooManyColumns { columns, limit, .. }) => {
            assert_eq!((columns, limit), (200_000, DEFAULT_MAX_COLUMNS));
        }
        other => panic!("expected TooManyColumns, got {other:?}"),
    }
    assert!(case.leftovers().is_empty(), "{:?}", case.leftovers());
    // Under the cap, converted, values and all (each batch holds a few rows).
    let case = csv(&wide(20_000));
    let report = Conversion::csv(&case.input).write(case.output()).unwrap();
    assert_eq!(report.rows_written, 2);
    assert!(report.peak_buffered_records <= MAX_BATCH_CELLS / 20_000);
    let batch = read_back(&case.output());
    assert_eq!(batch.num_columns(), 20_000);
    assert_eq!(batch.column(19_999).as_primitive::<Int64Type>().value(1), 9);

    let keys = |count: usize| {
        let pairs: Vec<String> = (0..count).map(|i| format!("\"k{i}\":{}", i % 7)).collect();
        format!("{{{}}}\n", pairs.join(","))
    };
    let case = jsonl(&keys(200_000));
    assert!(matches!(
        Conversion::json_lines(&case.input).write(case.output()),
        Err(Error::TooManyColumns {
            columns: 200_000,
            ..
        })
    ));
    let case = jsonl(&format!("{}{}", keys(20_000), keys(20_000)));
    let report = Conversion::json_lines(&case.input)
        .write(case.output())
        .unwrap();
    assert_eq!(report.rows_written, 2);
    assert_eq!(read_back(&case.output()).num_columns(), 20_000);
}
