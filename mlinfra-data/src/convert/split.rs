//! Splits input bytes into records, counting lines, before any parsing.
//!
//! Arrow's readers do not say reliably which line a bad record is on, and stop at the first
//! one. Splitting first gives every record its starting line, lets a bad record be dropped
//! without losing the ones around it, and catches the cheap problems (field count, UTF-8,
//! unterminated quotes) in one pass over the bytes. The CSV state machine mirrors `csv-core`,
//! which arrow-csv uses, so a record split here is exactly one record to arrow-csv.
//!
//! Cost: one branch per input byte for CSV, a `memchr`-style scan for JSON lines, plus a UTF-8
//! validation pass; records are copied once, into the caller's batch buffer.

use std::io::BufRead;

use super::options::CsvOptions;

/// One record the splitter appended to the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRecord {
    /// The 1-based line on which the record starts.
    pub line: u64,
    /// CSV: fields in the record. JSON lines: always 1.
    pub fields: usize,
    /// A problem found while splitting (invalid UTF-8, unterminated quote).
    pub problem: Option<Box<str>>,
}

/// Why splitting stopped.
#[derive(Debug)]
pub(crate) enum SplitError {
    /// Reading the input failed.
    Io(std::io::Error),
    /// The record starting on `line` grew past the limit.
    TooLarge { line: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsvState {
    /// At the start of a field.
    FieldStart,
    /// In an unquoted field, or after the closing quote of a quoted one.
    Unquoted,
    /// Inside quotes.
    Quoted,
    /// Inside quotes, right after the escape character.
    QuotedEscape,
    /// Inside quotes, right after a quote: a closing quote, or the first of a doubled pair.
    QuoteInQuoted,
}

#[derive(Debug, Clone)]
pub(crate) enum Syntax {
    Csv {
        delimiter: u8,
        quote: u8,
        escape: Option<u8>,
    },
    JsonLines,
}

impl Syntax {
    pub(crate) fn csv(options: &CsvOptions) -> Self {
        Syntax::Csv {
            delimiter: options.delimiter,
            quote: options.quote,
            escape: options.escape,
        }
    }
}

/// Splits a byte stream into records; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Splitter<R> {
    reader: R,
    syntax: Syntax,
    /// The line of the next unread byte.
    line: u64,
    /// The last byte consumed, so a `\r\n` split across reads counts as one line break.
    prev: u8,
    bytes_read: u64,
    max_record_bytes: usize,
}

impl<R: BufRead> Splitter<R> {
    pub(crate) fn new(reader: R, syntax: Syntax, max_record_bytes: usize) -> Self {
        Self {
            reader,
            syntax,
            line: 1,
            prev: 0,
            bytes_read: 0,
            max_record_bytes,
        }
    }

    /// The record length limit.
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Input bytes consumed so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Appends the next non-blank record to `out`, always ending it with a line break (one is
    /// added at end of input), and describes it; `None` at end of input. On error `out` may
    /// hold part of a record.
    pub(crate) fn next_record(
        &mut self,
        out: &mut Vec<u8>,
    ) -> Result<Option<RawRecord>, SplitError> {
        let start = out.len();
        let record = match self.syntax {
            Syntax::Csv {
                delimiter,
                quote,
                escape,
            } => self.next_csv(out, delimiter, quote, escape)?,
            Syntax::JsonLines => self.next_json_line(out)?,
        };
        Ok(record.map(|mut record| {
            if record.problem.is_none()
                && let Err(e) = std::str::from_utf8(&out[start..])
            {
                record.problem =
                    Some(format!("invalid UTF-8 at byte {} of the record", e.valid_up_to()).into());
            }
            record
        }))
    }

    fn next_csv(
        &mut self,
        out: &mut Vec<u8>,
        delimiter: u8,
        quote: u8,
        escape: Option<u8>,
    ) -> Result<Option<RawRecord>, SplitError> {
        let start = out.len();
        // `None` until the first byte of the record: line breaks before it are blank lines.
        let mut state: Option<CsvState> = None;
        let mut line = self.line;
        let mut fields = 1;
        loop {
            let buf = self.reader.fill_buf().map_err(SplitError::Io)?;
            if buf.is_empty() {
                let Some(state) = state else {
                    return Ok(None);
                };
                out.push(b'\n');
                let problem = matches!(state, CsvState::Quoted | CsvState::QuotedEscape)
                    .then(|| "unterminated quoted field".into());
                return Ok(Some(RawRecord {
                    line,
                    fields,
                    problem,
                }));
            }
            let mut taken = 0; // bytes of `buf` consumed
            let mut span = 0; // start of the bytes of `buf` that belong to the record
            let mut ended = false;
            // Locals, because `buf` borrows the reader inside `self`.
            let (mut at_line, mut prev) = (self.line, self.prev);
            for &b in buf {
                taken += 1;
                let line_break = b == b'\r' || b == b'\n';
                if line_break {
                    count_line(&mut at_line, &mut prev, b);
                } else {
                    prev = b;
                }
                state = match state {
                    // A line break before the record's first byte ends a blank line.
                    None if line_break => {
                        span = taken;
                        None
                    }
                    None => {
                        line = at_line;
                        let first = CsvState::FieldStart;
                        Some(csv_step(first, b, delimiter, quote, escape, &mut fields))
                    }
                    Some(s @ (CsvState::Quoted | CsvState::QuotedEscape)) => {
                        Some(csv_step(s, b, delimiter, quote, escape, &mut fields))
                    }
                    Some(_) if line_break => {
                        ended = true;
                        break;
                    }
                    Some(s) => Some(csv_step(s, b, delimiter, quote, escape, &mut fields)),
                };
            }
            out.extend_from_slice(&buf[span..taken]);
            (self.line, self.prev) = (at_line, prev);
            self.consume(taken);
            if ended {
                return Ok(Some(RawRecord {
                    line,
                    fields,
                    problem: None,
                }));
            }
            if state.is_some() && out.len() - start > self.max_record_bytes {
                return Err(SplitError::TooLarge { line });
            }
        }
    }

    fn next_json_line(&mut self, out: &mut Vec<u8>) -> Result<Option<RawRecord>, SplitError> {
        let start = out.len();
        loop {
            let line = self.line;
            loop {
                let buf = self.reader.fill_buf().map_err(SplitError::Io)?;
                if buf.is_empty() {
                    if out.len() == start {
                        return Ok(None);
                    }
                    out.push(b'\n');
                    break;
                }
                let (taken, ended) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (buf.len(), false),
                };
                out.extend_from_slice(&buf[..taken]);
                self.consume(taken);
                if ended {
                    self.line += 1;
                    break;
                }
                if out.len() - start > self.max_record_bytes {
                    return Err(SplitError::TooLarge { line });
                }
            }
            if !out[start..].iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(RawRecord {
                    line,
                    fields: 1,
                    problem: None,
                }));
            }
            // A blank line is not a record: skipped silently, as JSON-lines readers do.
            out.truncate(start);
        }
    }

    fn consume(&mut self, n: usize) {
        self.reader.consume(n);
        self.bytes_read += n as u64;
    }
}

/// Counts `\n`, `\r\n` and a lone `\r` as one line break each.
fn count_line(line: &mut u64, prev: &mut u8, b: u8) {
    if b == b'\r' || *prev != b'\r' {
        *line += 1;
    }
    *prev = b;
}

/// One step of the CSV state machine for a byte that is not a record-ending line break.
fn csv_step(
    state: CsvState,
    b: u8,
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    fields: &mut usize,
) -> CsvState {
    use CsvState::*;
    match state {
        FieldStart | Unquoted | QuoteInQuoted if b == delimiter => {
            *fields += 1;
            FieldStart
        }
        FieldStart if b == quote => Quoted,
        FieldStart | Unquoted => Unquoted,
        Quoted if Some(b) == escape => QuotedEscape,
        Quoted if b == quote => QuoteInQuoted,
        Quoted | QuotedEscape => Quoted,
        QuoteInQuoted if b == quote => Quoted,
        // Bytes after a closing quote are data, as csv-core reads them.
        QuoteInQuoted => Unquoted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(syntax: Syntax, input: &[u8], chunk: usize) -> Vec<(String, RawRecord)> {
        // A tiny BufReader capacity exercises records and `\r\n` pairs split across reads.
        let reader = std::io::BufReader::with_capacity(chunk, input);
        let mut splitter = Splitter::new(reader, syntax, 1 << 20);
        let mut records = vec![];
        loop {
            let mut out = vec![];
            match splitter.next_record(&mut out).unwrap() {
                Some(record) => records.push((String::from_utf8_lossy(&out).into_owned(), record)),
                None => break,
            }
        }
        assert_eq!(splitter.bytes_read(), input.len() as u64);
        records
    }

    fn csv() -> Syntax {
        Syntax::csv(&CsvOptions::new())
    }

    fn rec(line: u64, fields: usize) -> RawRecord {
        RawRecord {
            line,
            fields,
            problem: None,
        }
    }

    #[test]
    fn csv_records_carry_their_start_line_and_field_count() {
        let input = b"a,b,c\n\n1,\"x,\ny\",3\r\n\r\n4,5\r6,\"q\"\"\",\n7";
        for chunk in [1, 2, 3, 64] {
            let records = split(csv(), input, chunk);
            let expected = vec![
                ("a,b,c\n".to_owned(), rec(1, 3)),
                ("1,\"x,\ny\",3\r".to_owned(), rec(3, 3)),
                ("4,5\r".to_owned(), rec(6, 2)),
                ("6,\"q\"\"\",\n".to_owned(), rec(7, 3)),
                ("7\n".to_owned(), rec(8, 1)),
            ];
            assert_eq!(records, expected, "read in chunks of {chunk}");
        }
    }

    #[test]
    fn csv_escape_and_text_after_closing_quote() {
        let syntax = Syntax::csv(&CsvOptions::new().with_escape(Some(b'\\')));
        let records = split(syntax, b"\"a\\\",b\",c\"d\"e,f\n", 4);
        assert_eq!(
            records,
            vec![("\"a\\\",b\",c\"d\"e,f\n".to_owned(), rec(1, 3))]
        );
    }

    #[test]
    fn csv_unterminated_quote_and_bad_utf8_are_flagged_not_fatal() {
        let records = split(csv(), b"a,\xff\nb,\"open\nc\n", 3);
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].1.problem.as_deref(),
            Some("invalid UTF-8 at byte 2 of the record")
        );
        assert_eq!(records[1].1.line, 2);
        assert_eq!(
            records[1].1.problem.as_deref(),
            Some("unterminated quoted field")
        );
    }

    #[test]
    fn json_lines_skip_blank_lines_and_keep_numbering() {
        let input = b"{\"a\":1}\n\n  \r\n{\"a\":2}\r\n{\"a\":3}";
        for chunk in [1, 5, 64] {
            let records = split(Syntax::JsonLines, input, chunk);
            let lines: Vec<u64> = records.iter().map(|(_, r)| r.line).collect();
            assert_eq!(lines, [1, 4, 5]);
            assert_eq!(records[2].0, "{\"a\":3}\n");
        }
    }

    #[test]
    fn an_overlong_record_is_refused_with_its_start_line() {
        let input = format!("a\nb\n\"{}", "x".repeat(100));
        let reader = std::io::BufReader::with_capacity(8, input.as_bytes());
        let mut splitter = Splitter::new(reader, csv(), 50);
        let mut out = vec![];
        splitter.next_record(&mut out).unwrap();
        splitter.next_record(&mut out).unwrap();
        match splitter.next_record(&mut out) {
            Err(SplitError::TooLarge { line }) => assert_eq!(line, 3),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}
