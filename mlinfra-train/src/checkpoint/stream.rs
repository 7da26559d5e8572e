//! Streaming a rank file to disk: the burnpack container is never assembled in memory.
//!
//! A container is a short prefix (header, CBOR index, padding), then each tensor's bytes at
//! the next [`TENSOR_ALIGNMENT`] boundary. [`Container::plan`] lays one out as a list of byte
//! slices that borrow the tensors' own storage, and [`Container::write`] runs three things at
//! once:
//!
//! - this thread copies the slices into a small ring of aligned chunk buffers;
//! - an I/O thread appends each chunk to the file as it fills (direct I/O where the file
//!   system has it, see [`super::direct`]);
//! - a hash thread computes the file's SHA-256 from the slices themselves.
//!
//! So a save costs one copy of the state (into buffers small enough to stay in cache), the
//! device write, and a SHA-256 pass that overlaps both; the memory it needs beyond the state
//! is the ring ([`RING`] × [`CHUNK`]), kept from save to save.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::mpsc;

use burn_pack::{
    DType, HEADER_SIZE, Header, Scalar, TENSOR_ALIGNMENT, Tensor, Writer,
    aligned_data_section_start,
};
use sha2::{Digest, Sha256};

use super::direct::{AlignedBuffer, FileSink, WriteKind};

/// Bytes per chunk buffer (a multiple of the direct-I/O alignment).
const CHUNK: usize = 8 << 20;
/// Chunk buffers in flight: the copy can run this far ahead of the device.
const RING: usize = 4;

/// Alignment padding comes from here: it is always shorter than [`TENSOR_ALIGNMENT`].
static ZEROS: [u8; TENSOR_ALIGNMENT as usize] = [0; TENSOR_ALIGNMENT as usize];

/// One tensor to store: name, dtype, shape, and its little-endian bytes.
pub(crate) struct Entry<'a> {
    pub(crate) name: String,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) bytes: &'a [u8],
}

/// A burnpack container laid out over borrowed tensor bytes; see the [module docs](self).
pub(crate) struct Container<'a> {
    /// Header, CBOR index and the padding up to the data section.
    prefix: Vec<u8>,
    /// Each tensor's bytes, after the given count of zero bytes.
    tensors: Vec<(usize, &'a [u8])>,
    len: usize,
}

impl<'a> Container<'a> {
    /// Lays out `entries` (written in this order), string `metadata` and `scalars` exactly as
    /// burn-pack's [`Writer`] would.
    ///
    /// The index is burn-pack's own: a [`Writer`] over the same entries, made with byte
    /// providers that refuse, encodes its header, index and padding and stops at the first
    /// tensor (its documented behaviour on a failing provider). Its output buffer is
    /// `calloc`ed at the container's full size, but only the prefix's pages are ever touched.
    /// The tests pin the streamed bytes to `Writer::write_into`'s.
    pub(crate) fn plan(
        entries: Vec<Entry<'a>>,
        metadata: &[(&str, String)],
        scalars: Vec<(String, Scalar)>,
    ) -> Result<Container<'a>, String> {
        let placeholders = entries
            .iter()
            .map(|entry| {
                Tensor::deferred(
                    entry.name.clone(),
                    entry.dtype,
                    entry.shape.clone(),
                    None,
                    entry.bytes.len(),
                    || Err(burn_pack::Error::IoError("index only".to_owned())),
                )
            })
            .collect();
        let mut writer = Writer::new(placeholders);
        for (key, value) in metadata {
            writer = writer.with_metadata(key, value);
        }
        for (key, value) in scalars {
            writer = writer.with_scalar(&key, value);
        }
        let len = writer.size().map_err(|e| format!("encoding: {e}"))?;

        let mut tensors = Vec::with_capacity(entries.len());
        let mut data_len = 0usize;
        for entry in entries {
            let start = data_len.next_multiple_of(TENSOR_ALIGNMENT as usize);
            tensors.push((start - data_len, entry.bytes));
            data_len = start + entry.bytes.len();
        }

        let mut scratch = vec![0u8; len];
        let stopped = writer.write_into(&mut scratch).err();
        let header = Header::from_bytes(&scratch[..HEADER_SIZE.min(len)]).map_err(|e| {
            let why = stopped.map_or_else(String::new, |s| format!(" ({s})"));
            format!("encoding the index: {e}{why}")
        })?;
        let start = aligned_data_section_start(header.metadata_size as usize);
        if start + data_len != len {
            return Err(format!(
                "encoding: the index ends at {start} and the data takes {data_len} bytes, \
                 but the container is {len}"
            ));
        }
        scratch.truncate(start);
        Ok(Container {
            prefix: scratch,
            tensors,
            len,
        })
    }

    /// The file's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The file's bytes, in order, as slices.
    fn slices(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.prefix.as_slice()).chain(
            self.tensors
                .iter()
                .flat_map(|&(pad, bytes)| [&ZEROS[..pad], bytes]),
        )
    }

    /// SHA-256 of the file's bytes, lowercase hex.
    pub(crate) fn sha256(&self) -> String {
        let mut hasher = Sha256::new();
        for slice in self.slices() {
            hasher.update(slice);
        }
        super::files::hex(&hasher.finalize())
    }

    /// Creates `path` and writes the container into it (see the [module docs](self)), with
    /// chunk buffers from `pool` (returned to it, [`RING`] of them, afterwards). Returns a
    /// handle to `fsync`, the file's SHA-256 and how the bytes went to disk.
    ///
    /// `file_name` names the `write.partial` fault point.
    pub(crate) fn write(
        &self,
        path: &Path,
        file_name: &str,
        pool: &mut Vec<AlignedBuffer>,
    ) -> io::Result<(File, String, WriteKind)> {
        std::thread::scope(|scope| {
            let hash = scope.spawn(|| self.sha256());
            let (full_tx, full_rx) = mpsc::sync_channel::<(AlignedBuffer, usize)>(RING);
            let (empty_tx, empty_rx) = mpsc::channel::<AlignedBuffer>();
            let io = scope.spawn(move || {
                let mut sink = FileSink::create(path, self.len as u64, file_name);
                for (buffer, filled) in full_rx {
                    // After a failure, keep taking chunks (and handing them back) so the copy
                    // never blocks; the error is reported once the copy is done.
                    if let Ok(open) = &mut sink
                        && let Err(error) = open.append(&buffer.as_slice()[..filled])
                    {
                        sink = Err(error);
                    }
                    let _ = empty_tx.send(buffer);
                }
                sink.map(FileSink::finish)
            });

            let mut spare = std::mem::take(pool);
            spare.resize_with(RING.max(spare.len()), AlignedBuffer::default);
            let mut cursor = Cursor::new(self.slices().collect());
            // Until the slices run out, or the I/O thread is gone (it panicked: its join
            // says so).
            while let Some(mut buffer) = spare.pop().or_else(|| empty_rx.recv().ok()) {
                let filled = cursor.fill(buffer.resize(CHUNK));
                if filled == 0 {
                    spare.push(buffer);
                    break;
                }
                if let Err(mpsc::SendError((buffer, _))) = full_tx.send((buffer, filled)) {
                    spare.push(buffer);
                    break;
                }
            }
            drop(full_tx);
            let written = io
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            spare.extend(empty_rx.try_iter());
            *pool = spare;
            let sha256 = hash
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let (file, kind) = written?;
            Ok((file, sha256, kind))
        })
    }
}

/// A read position over a list of slices.
struct Cursor<'s> {
    slices: Vec<&'s [u8]>,
    index: usize,
    offset: usize,
}

impl<'s> Cursor<'s> {
    fn new(slices: Vec<&'s [u8]>) -> Self {
        Cursor {
            slices,
            index: 0,
            offset: 0,
        }
    }

    /// Copies the next bytes into `out`, as many as fit; returns how many (0 at the end).
    fn fill(&mut self, out: &mut [u8]) -> usize {
        let mut filled = 0;
        while filled < out.len() {
            let Some(slice) = self.slices.get(self.index) else {
                break;
            };
            let take = (slice.len() - self.offset).min(out.len() - filled);
            out[filled..filled + take].copy_from_slice(&slice[self.offset..self.offset + take]);
            filled += take;
            self.offset += take;
            if self.offset == slice.len() {
                self.index += 1;
                self.offset = 0;
            }
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_pack::Bytes;

    fn entries<'a>(data: &'a [Vec<u8>]) -> Vec<Entry<'a>> {
        data.iter()
            .enumerate()
            .map(|(i, bytes)| Entry {
                name: format!("t{i}"),
                dtype: DType::U8,
                shape: vec![bytes.len()],
                bytes,
            })
            .collect()
    }

    /// The streamed file is byte for byte what burn-pack's own writer makes, across odd tensor
    /// lengths (padding), an empty tensor, and a tensor spanning several chunks.
    #[test]
    fn the_streamed_file_is_burn_packs_own_container() {
        let dir = std::env::temp_dir().join(format!("mlinfra-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lens = [1usize, 0, 300, 2 * CHUNK + 4099, 17];
        let data: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(t, &len)| (0..len).map(|i| (i * 7 + t * 13) as u8).collect())
            .collect();
        let metadata = [("producer", "test".to_owned()), ("step", "3".to_owned())];
        let scalars = vec![("lr".to_owned(), Scalar::Float(0.5))];

        let reference = Writer::new(
            data.iter()
                .enumerate()
                .map(|(i, bytes)| {
                    Tensor::new(
                        format!("t{i}"),
                        DType::U8,
                        vec![bytes.len()],
                        None,
                        Bytes::from_bytes_vec(bytes.clone()),
                    )
                })
                .collect(),
        )
        .with_metadata("producer", "test")
        .with_metadata("step", "3")
        .with_scalar("lr", Scalar::Float(0.5));
        let expected = reference.into_bytes().unwrap().to_vec();

        let container = Container::plan(entries(&data), &metadata, scalars).unwrap();
        assert_eq!(container.len(), expected.len());
        let mut pool = Vec::new();
        let path = dir.join("c.bpk");
        let (file, sha256, _) = container.write(&path, "c.bpk", &mut pool).unwrap();
        file.sync_all().unwrap();
        drop(file);
        let written = std::fs::read(&path).unwrap();
        assert!(written == expected, "the streamed container differs");
        assert_eq!(sha256, super::super::files::sha256_hex(&expected));
        assert_eq!(pool.len(), RING, "every chunk buffer comes back");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_that_cannot_start_is_an_error_and_keeps_the_buffers() {
        let data = vec![vec![1u8; 10_000]];
        let container = Container::plan(entries(&data), &[], Vec::new()).unwrap();
        let mut pool = Vec::new();
        let missing = std::env::temp_dir()
            .join(format!("mlinfra-no-such-dir-{}", std::process::id()))
            .join("c.bpk");
        let error = container.write(&missing, "c.bpk", &mut pool).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert_eq!(pool.len(), RING);
    }
}
