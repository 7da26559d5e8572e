//! Direct I/O for rank files: the bulk of a file goes from our buffer to the disk without a
//! copy into the page cache (Linux `O_DIRECT`), the way DeepSpeed's FastPersist writes
//! checkpoints.
//!
//! Why: a buffered write of a 100 MB+ file allocates and fills as many page-cache pages, and
//! on a VM that is the slow and erratic part (250 MB/s to 1.2 GB/s from one `dd` to the next
//! here, against a steady 1.2–1.5 GB/s direct). It also evicts the training job's own pages
//! for data nobody reads back until a restart.
//!
//! Direct I/O needs the buffer address, the file offset and the length aligned to the
//! device's logical block; [`ALIGN`] (4 KiB) is a multiple of every common one. The
//! checkpointer encodes into an [`AlignedBuffer`], writes its aligned prefix directly and the
//! few bytes of tail through a second, buffered handle. Where the file system refuses
//! `O_DIRECT` (tmpfs, some network file systems: `EINVAL`) or the platform has none, the whole
//! file is written buffered instead; the bytes on disk are the same either way.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

/// The alignment of direct writes: buffer address, file offset and length.
pub(crate) const ALIGN: usize = 4096;

/// Largest single direct `write`: bounds how much of the buffer the kernel pins at once.
const CHUNK: usize = 16 << 20;

/// A reusable byte buffer whose contents start on an [`ALIGN`] boundary.
///
/// Safe code only: the storage is over-allocated by [`ALIGN`] and the aligned window is found
/// inside it. Growing it touches the new pages once; reusing it costs nothing.
#[derive(Debug, Default)]
pub(crate) struct AlignedBuffer {
    storage: Vec<u8>,
    len: usize,
}

impl AlignedBuffer {
    /// Makes the buffer `len` bytes long and returns them. The contents are unspecified
    /// (whatever the last user left): callers overwrite every byte.
    pub(crate) fn resize(&mut self, len: usize) -> &mut [u8] {
        if self.storage.len() < len + ALIGN {
            self.storage.resize(len + ALIGN, 0);
        }
        self.len = len;
        let start = self.start();
        &mut self.storage[start..start + len]
    }

    /// The bytes of the last [`resize`](Self::resize).
    pub(crate) fn as_slice(&self) -> &[u8] {
        let start = self.start();
        &self.storage[start..start + self.len]
    }

    fn start(&self) -> usize {
        // `align_offset` may only answer usize::MAX for types it cannot align; u8 it can.
        self.storage.as_ptr().align_offset(ALIGN).min(ALIGN)
    }
}

/// How a file's bytes went to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// The aligned prefix with `O_DIRECT`, the tail buffered.
    Direct,
    /// Everything through the page cache.
    Buffered,
}

/// Creates `temp` and writes `bytes` into it, directly where possible (see the module docs),
/// stopping at the `write.partial/<file_name>` fault point once about half is written.
/// Returns a handle to `fsync` (it covers the whole file, whichever handle wrote which part)
/// and how the bytes went.
pub(crate) fn write_file(
    temp: &Path,
    bytes: &[u8],
    file_name: &str,
) -> io::Result<(File, WriteKind)> {
    let bulk = if bytes.as_ptr().align_offset(ALIGN) == 0 {
        bytes.len() / ALIGN * ALIGN
    } else {
        0
    };
    if bulk > 0 {
        match write_direct(temp, bytes, bulk, file_name) {
            Ok(file) => return Ok((file, WriteKind::Direct)),
            // Refused by the file system: start over, buffered (`create` truncates).
            Err(error) if is_unsupported(&error) => {}
            Err(error) => return Err(error),
        }
    }
    write_buffered(temp, bytes, file_name).map(|file| (file, WriteKind::Buffered))
}

/// The page-cache path: two halves, with the fault point between them.
pub(crate) fn write_buffered(temp: &Path, bytes: &[u8], file_name: &str) -> io::Result<File> {
    let mut file = File::create(temp)?;
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    file.write_all(head)?;
    crate::fault::point("write.partial", file_name);
    file.write_all(tail)?;
    Ok(file)
}

/// `bytes[..bulk]` (aligned) with `O_DIRECT` in [`CHUNK`]s, then the tail buffered.
fn write_direct(temp: &Path, bytes: &[u8], bulk: usize, file_name: &str) -> io::Result<File> {
    let mut direct = open_direct(temp)?;
    let half = bulk / 2 / ALIGN * ALIGN;
    for (range, is_first_half) in [(0..half, true), (half..bulk, false)] {
        for chunk in bytes[range].chunks(CHUNK) {
            // Every chunk but a half's last is CHUNK long and the halves start aligned, so
            // each write starts at an aligned offset; lengths are multiples of ALIGN.
            direct.write_all(chunk)?;
        }
        if is_first_half {
            crate::fault::point("write.partial", file_name);
        }
    }
    drop(direct);
    let mut tail = File::options().write(true).open(temp)?;
    tail.seek(SeekFrom::Start(bulk as u64))?;
    tail.write_all(&bytes[bulk..])?;
    Ok(tail)
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> io::Result<File> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether a direct open or write failed because direct I/O is not available there (rather
/// than for a reason the buffered path would meet too, such as a full disk).
fn is_unsupported(error: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if error.raw_os_error() == Some(libc::EINVAL) {
        return true;
    }
    error.kind() == io::ErrorKind::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aligned_window_survives_growth_and_reuse() {
        let mut buffer = AlignedBuffer::default();
        for len in [0, 1, 5000, 3 * ALIGN, 100] {
            let bytes = buffer.resize(len);
            assert_eq!(bytes.len(), len);
            assert_eq!(bytes.as_ptr().align_offset(ALIGN), 0);
            bytes.fill(7);
            assert!(buffer.as_slice().iter().all(|&b| b == 7));
        }
    }

    #[test]
    fn files_hold_exactly_the_bytes_whichever_path_wrote_them() {
        let dir = std::env::temp_dir().join(format!("mlinfra-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let direct_works = open_direct(&dir.join("probe")).is_ok();
        let mut buffer = AlignedBuffer::default();
        // Aligned with a tail, exactly aligned, shorter than one block, several chunks.
        for len in [3 * ALIGN + 17, 2 * ALIGN, 100, CHUNK + 5 * ALIGN + 1] {
            let bytes = buffer.resize(len);
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = (i * 31 % 251) as u8;
            }
            let path = dir.join(format!("f{len}"));
            let (file, kind) = write_file(&path, buffer.as_slice(), "f").unwrap();
            file.sync_all().unwrap();
            drop(file);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                buffer.as_slice(),
                "{len} bytes"
            );
            let expected = if direct_works && len >= ALIGN {
                WriteKind::Direct
            } else {
                WriteKind::Buffered
            };
            assert_eq!(kind, expected, "{len} bytes");
        }
        // An unaligned slice never goes direct.
        let (_, kind) = write_file(&dir.join("u"), &buffer.as_slice()[1..ALIGN * 2], "u").unwrap();
        assert_eq!(kind, WriteKind::Buffered);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
