//! A bounds-checked little-endian reader over an untrusted byte slice.
//!
//! Every read checks the remaining length first and reports a shortfall as a message naming
//! the field and its byte offset; nothing here indexes without a check, so no input can make
//! it panic. Messages are plain strings because the caller adds context (which metadata key,
//! which tensor) before turning them into [`Error::TensorFile`](crate::Error::TensorFile).

/// A fault found while parsing: the text of [`Error::TensorFile`](crate::Error::TensorFile)'s
/// `what`, before the caller prefixes its context.
pub(crate) type Fault = String;

/// Longest name quoted in full in an error message; longer (hostile) names are cut so that a
/// message stays short whatever the file holds.
const MAX_QUOTED: usize = 64;

/// Quotes `name` (text from an untrusted file) for an error message: cut to 64 characters,
/// with control characters and invisible formatting (bidirectional overrides, zero-width
/// characters) escaped as `\n`, `\u{202e}`..., so that a name can neither forge lines in a log
/// nor reorder what a terminal shows.
pub fn quoted(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(4 * MAX_QUOTED) + 2);
    out.push('`');
    for (i, c) in name.chars().enumerate() {
        if i == MAX_QUOTED {
            out.push('…');
            break;
        }
        let invisible = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || invisible {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

/// Reads fields in order from `bytes`, tracking the absolute offset of the next one.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes` (the whole file, so offsets are file offsets).
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// The file offset of the next field.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The message for a field of `what` at `at` that does not fit in the file.
    pub(crate) fn past_end(&self, what: &str, at: usize) -> Fault {
        format!(
            "{what} at byte {at} runs past the end of the file ({} bytes)",
            self.bytes.len()
        )
    }

    /// The next `n` bytes, or a fault naming `what` if fewer remain.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Fault> {
        if n > self.remaining() {
            return Err(self.past_end(what, self.pos));
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Fault> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, Fault> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, Fault> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, Fault> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: a `u64` byte length, then that many bytes of UTF-8.
    ///
    /// The length is checked against the bytes left before anything is allocated, so a hostile
    /// length costs nothing.
    pub(crate) fn string(&mut self, what: &str) -> Result<Box<str>, Fault> {
        let at = self.pos;
        let len = self.u64(&format!("{what} length"))?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "{what} length {len} at byte {at} runs past the end of the file ({} bytes)",
                self.bytes.len()
            ));
        }
        let start = self.pos;
        // Cannot fail: the length was checked above.
        let bytes = self.take(len as usize, what)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.into()),
            Err(error) => Err(format!(
                "{what} at byte {start} is not valid UTF-8 (bad byte at {})",
                start + error.valid_up_to()
            )),
        }
    }

    /// Fails unless at least `count * min_size` bytes remain: the check that keeps a hostile
    /// count from driving a long loop or a large allocation.
    pub(crate) fn check_count(
        &self,
        what: &str,
        count: u64,
        at: usize,
        min_size: usize,
    ) -> Result<usize, Fault> {
        let remaining = self.remaining();
        match count.checked_mul(min_size as u64) {
            Some(needed) if needed <= remaining as u64 => Ok(count as usize),
            _ => Err(format!(
                "{what} {count} at byte {at} cannot fit in the file: each takes at least \
                 {min_size} bytes and only {remaining} remain"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_fields_and_tracks_the_offset() {
        let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];
        let mut cursor = Cursor::new(&bytes);
        assert_eq!(cursor.u32("a"), Ok(1));
        assert_eq!(cursor.u64("b"), Ok(2));
        assert_eq!(cursor.pos(), 12);
        assert_eq!(cursor.u8("c"), Ok(7));
        assert_eq!(
            cursor.u8("d").unwrap_err(),
            "d at byte 13 runs past the end of the file (13 bytes)"
        );
    }

    #[test]
    fn a_huge_string_length_is_refused_before_allocating() {
        let mut bytes = i64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let error = Cursor::new(&bytes).string("name").unwrap_err();
        assert_eq!(
            error,
            "name length 9223372036854775807 at byte 0 runs past the end of the file (11 bytes)"
        );
    }

    #[test]
    fn invalid_utf8_names_the_bad_byte() {
        let mut bytes = 3u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[b'a', 0xFF, b'b']);
        let error = Cursor::new(&bytes).string("key").unwrap_err();
        assert_eq!(error, "key at byte 8 is not valid UTF-8 (bad byte at 9)");
    }

    #[test]
    fn counts_are_checked_against_the_bytes_left() {
        let bytes = [0; 100];
        let cursor = Cursor::new(&bytes);
        assert_eq!(cursor.check_count("n", 4, 0, 25), Ok(4));
        assert!(cursor.check_count("n", 5, 0, 25).is_err());
        assert!(cursor.check_count("n", 1 << 60, 0, 24).is_err());
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        assert_eq!(quoted("a.b"), "`a.b`");
        let long = "x".repeat(1000);
        assert_eq!(quoted(&long).chars().count(), MAX_QUOTED + 3);
    }

    #[test]
    fn quoting_escapes_what_could_forge_or_hide_text() {
        assert_eq!(quoted("blk.0.attn_q"), "`blk.0.attn_q`");
        assert_eq!(quoted("a\nb\r\x1b[31m"), "`a\\nb\\r\\u{1b}[31m`");
        assert_eq!(quoted("x\u{202e}y"), "`x\\u{202e}y`");
        let long = "é".repeat(MAX_QUOTED + 5);
        assert_eq!(quoted(&long), format!("`{}…`", "é".repeat(MAX_QUOTED)));
    }
}
