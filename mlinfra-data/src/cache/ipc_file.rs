//! [`IpcFile`]: an Arrow IPC file, memory-mapped, whose arrays point into the mapping.
//!
//! # Zero copy
//!
//! The whole file becomes one Arrow [`Buffer`] owned by the memory map
//! (`bytes::Bytes::from_owner`); arrow's [`FileDecoder`] slices array buffers out of it without
//! copying, and with `require_alignment` it refuses a buffer that is misaligned for its type
//! instead of silently copying it. Files this crate writes are 64-byte aligned, so their arrays
//! are always views of the page cache.
//!
//! # Hostile input
//!
//! Every offset and length in the footer is checked against the file before it is used, the
//! flatbuffers are verified by arrow, array data is validated on decode, and decoder panics are
//! contained: a malformed file yields a typed [`Error`], never a panic or an out-of-bounds read.
//!
//! # Costs
//!
//! Opening maps the file and reads the footer plus one message header per record batch (a page
//! each); batches are decoded on first use ([`IpcFile::batch`]), which validates that batch's
//! arrays (O(1) for fixed-width columns, a UTF-8 pass for string columns) and keeps it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileDecoder;
use arrow::ipc::{Block, MetadataVersion};

use crate::error::contain_panics;
use crate::{Error, Result};

/// `ARROW1` and two bytes of padding open an IPC file; `ARROW1` closes it.
const MAGIC: &[u8; 6] = b"ARROW1";
/// Leading magic and padding.
const HEADER_LEN: usize = 8;
/// Footer length (`i32`) and the closing magic.
const TRAILER_LEN: usize = 10;
/// An encapsulated message starts with a continuation marker and its metadata length.
const CONTINUATION: [u8; 4] = [0xff; 4];

/// A memory-mapped Arrow IPC file whose arrays point into the mapping.
///
/// The whole file is one Arrow buffer owned by the map; decoded arrays are slices of it, and a
/// buffer misaligned for its type is refused rather than silently copied (files written by
/// [`IpcCache`](crate::IpcCache) are 64-byte aligned). Every footer offset is checked against
/// the file, array data is validated on decode, and decoder panics are contained: a malformed
/// file is a typed [`Error`], never a panic or an out-of-bounds read.
///
/// Opening reads the footer and one message header per batch; a batch is decoded on first use
/// ([`IpcFile::batch`]) and kept.
///
///
/// The mapping assumes the file is not truncated or rewritten while open (files this crate
/// writes are renamed into place once complete and never modified). Truncation by another
/// process would make reads of the lost pages fault, as with every memory-mapped reader.
#[derive(Debug)]
pub struct IpcFile {
    path: PathBuf,
    /// The whole file; array buffers are slices of it.
    mapping: Buffer,
    schema: SchemaRef,
    decoder: FileDecoder,
    /// Record batch blocks, in file order, with their checked byte ranges.
    blocks: Vec<(Block, Range<usize>)>,
    /// `batch_starts[i]` is the first row of batch `i`; one extra entry holds the row count.
    batch_starts: Vec<u64>,
    decoded: Vec<OnceLock<RecordBatch>>,
}

impl IpcFile {
    /// Maps the IPC file at `path` and reads its footer, dictionaries and batch row counts.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be opened or mapped; [`Error::CorruptMetadata`] for a
    /// file that is not an Arrow IPC file or whose footer points outside it; [`Error::Arrow`]
    /// for invalid flatbuffers, schema or dictionaries; [`Error::DecoderPanic`] if arrow panics.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt(
                path,
                format!("{len} bytes is too short for an Arrow IPC file"),
            ));
        }
        let map = crate::mmap::map_file(path)?;
        let mapping = Buffer::from(bytes::Bytes::from_owner(map));
        contain_panics(path, || Self::parse(path, mapping))
    }

    fn parse(path: &Path, mapping: Buffer) -> Result<Self> {
        let bytes = mapping.as_slice();
        if &bytes[..MAGIC.len()] != MAGIC || &bytes[bytes.len() - MAGIC.len()..] != MAGIC {
            return Err(corrupt(path, "no ARROW1 magic at both ends".into()));
        }
        let trailer = bytes.len() - TRAILER_LEN;
        let footer_len = i32::from_le_bytes(bytes[trailer..trailer + 4].try_into().unwrap());
        let footer_start = usize::try_from(footer_len)
            .ok()
            .and_then(|n| trailer.checked_sub(n))
            .filter(|&start| start >= HEADER_LEN)
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!(
                        "footer length {footer_len} does not fit in the {} bytes before the trailer",
                        trailer
                    ),
                )
            })?;
        let footer = arrow::ipc::root_as_footer(&bytes[footer_start..trailer])
            .map_err(|e| corrupt(path, format!("invalid footer flatbuffer: {e}")))?;
        let fb_schema = footer
            .schema()
            .ok_or_else(|| corrupt(path, "footer has no schema".into()))?;
        let schema = Arc::new(
            arrow::ipc::convert::try_fb_to_schema(fb_schema).map_err(|e| Error::arrow(path, e))?,
        );
        let version = footer.version();
        if version < MetadataVersion::V4 || version > MetadataVersion::V5 {
            return Err(corrupt(
                path,
                format!("metadata version {version:?} (V4 and V5 are read)"),
            ));
        }
        let mut decoder =
            FileDecoder::new(Arc::clone(&schema), version).with_require_alignment(true);

        for (i, block) in footer.dictionaries().iter().flatten().enumerate() {
            let range = block_range(path, block, footer_start, "dictionary", i)?;
            decoder
                .read_dictionary(block, &mapping.slice_with_length(range.start, range.len()))
                .map_err(|e| Error::arrow(path, e))?;
        }

        let mut blocks = Vec::new();
        let mut batch_starts = vec![0u64];
        for (i, block) in footer.recordBatches().iter().flatten().enumerate() {
            let range = block_range(path, block, footer_start, "record batch", i)?;
            let rows = message_rows(&bytes[range.clone()], block.metaDataLength() as usize)
                .map_err(|what| corrupt(path, format!("record batch {i}: {what}")))?;
            let last = *batch_starts.last().expect("starts with 0");
            batch_starts.push(
                last.checked_add(rows)
                    .ok_or_else(|| corrupt(path, "row counts overflow".into()))?,
            );
            blocks.push((*block, range));
        }
        let decoded = blocks.iter().map(|_| OnceLock::new()).collect();
        Ok(IpcFile {
            path: path.to_path_buf(),
            mapping,
            schema,
            decoder,
            blocks,
            batch_starts,
            decoded,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows in the file, from the batch headers.
    pub fn num_rows(&self) -> u64 {
        *self.batch_starts.last().expect("never empty")
    }

    /// Record batches in the file.
    pub fn num_batches(&self) -> usize {
        self.blocks.len()
    }

    /// The first row of each batch, and one past the last row.
    pub(crate) fn batch_starts(&self) -> &[u64] {
        &self.batch_starts
    }

    /// The mapped bytes of the whole file. Arrays of decoded batches point into this region.
    pub fn mapped_bytes(&self) -> &[u8] {
        self.mapping.as_slice()
    }

    /// Batch `index`, decoded (and validated) on first use, then kept; its arrays point into
    /// the mapping.
    ///
    /// # Errors
    ///
    /// [`Error::Arrow`] for invalid or misaligned array data; [`Error::RowCountMismatch`] when
    /// the batch disagrees with its header; [`Error::DecoderPanic`] if arrow panics.
    ///
    /// # Panics
    ///
    /// If `index >= num_batches()`.
    pub fn batch(&self, index: usize) -> Result<&RecordBatch> {
        let cell = &self.decoded[index];
        if let Some(batch) = cell.get() {
            return Ok(batch);
        }
        let (block, range) = &self.blocks[index];
        let path = self.path.as_path();
        let batch = contain_panics(path, || {
            self.decoder
                .read_record_batch(
                    block,
                    &self.mapping.slice_with_length(range.start, range.len()),
                )
                .map_err(|e| Error::arrow(path, e))?
                .ok_or_else(|| corrupt(path, format!("record batch {index} holds no message")))
        })?;
        let expected = self.batch_starts[index + 1] - self.batch_starts[index];
        crate::take::check_row_count(path, expected, std::slice::from_ref(&batch))?;
        Ok(cell.get_or_init(|| batch))
    }
}

fn corrupt(path: &Path, what: String) -> Error {
    Error::CorruptMetadata {
        path: path.into(),
        what: what.into(),
    }
}

/// The byte range of `block`, checked to lie between the header and the footer and to hold at
/// least a message prefix.
fn block_range(
    path: &Path,
    block: &Block,
    footer_start: usize,
    kind: &str,
    index: usize,
) -> Result<Range<usize>> {
    let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
    let range = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(meta).ok())
        .and_then(|(start, meta)| {
            let len = meta.checked_add(usize::try_from(body).ok()?)?;
            Some(start..start.checked_add(len)?)
        });
    match range {
        Some(range) if range.start >= HEADER_LEN && range.end <= footer_start && meta >= 8 => {
            Ok(range)
        }
        _ => Err(corrupt(
            path,
            format!(
                "{kind} block {index} (offset {offset}, metadata {meta} bytes, body {body} bytes) \
                 does not lie between the header and the footer at byte {footer_start}"
            ),
        )),
    }
}

/// Rows of the record batch whose encapsulated message (metadata of `meta_len` bytes, then the
/// body) is `message`: read from the flatbuffer header alone, without touching the body.
fn message_rows(message: &[u8], meta_len: usize) -> std::result::Result<u64, String> {
    // `meta_len >= 8` and `meta_len <= message.len()` were checked by `block_range`.
    let flatbuffer = if message[..4] == CONTINUATION {
        &message[8..meta_len]
    } else {
        // Pre-1.0 files: a bare 4-byte length, no continuation marker.
        &message[4..meta_len]
    };
    let header = arrow::ipc::root_as_message(flatbuffer)
        .map_err(|e| format!("invalid message flatbuffer: {e}"))?;
    let batch = header.header_as_record_batch().ok_or_else(|| {
        format!(
            "message is a {:?}, not a record batch",
            header.header_type()
        )
    })?;
    u64::try_from(batch.length()).map_err(|_| format!("negative row count {}", batch.length()))
}
