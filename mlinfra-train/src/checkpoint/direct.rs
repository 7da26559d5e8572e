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
//! device's logical block; [`ALIGN`] (4 KiB) is a multiple of every common one. Rank files
//! stream through [`AlignedBuffer`] chunks into a [`FileSink`], which writes them directly
//! and the few bytes of tail through a second, buffered handle. Where the file system refuses
//! `O_DIRECT` (tmpfs, some network file systems: `EINVAL`) or the platform has none, the whole
//! file is written buffered instead; the bytes on disk are the same either way.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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
    /// Its aligned bulk with `O_DIRECT` (an unaligned tail, if any, buffered).
    Direct,
    /// Everything through the page cache.
    Buffered,
}

/// A file written front to back, directly while the pieces allow it (see the module docs),
/// through the page cache from the first piece that does not (an unaligned address, offset
/// or length: in practice the last few bytes) or where the file system refuses direct I/O.
///
/// Stops at the `write.partial/<file name>` fault point once half of the declared length is
/// written.
pub(crate) struct FileSink {
    file: File,
    path: PathBuf,
    direct: bool,
    wrote_direct: bool,
    written: u64,
    half: u64,
    file_name: String,
}

impl FileSink {
    /// Creates (or truncates) `path` for a file of `len` bytes; `file_name` names the fault
    /// point.
    pub(crate) fn create(path: &Path, len: u64, file_name: &str) -> io::Result<FileSink> {
        let (file, direct) = match open_direct(path) {
            Ok(file) => (file, true),
            Err(error) if is_unsupported(&error) => (create_buffered(path)?, false),
            Err(error) => return Err(error),
        };
        // Halfway, rounded down to the alignment so both halves can go direct; at least one
        // byte, so that a 1-byte file still passes the fault point.
        let align = ALIGN as u64;
        let half = if len >= 2 * align {
            len / 2 / align * align
        } else {
            (len / 2).max(1)
        };
        Ok(FileSink {
            file,
            path: path.to_owned(),
            direct,
            wrote_direct: false,
            written: 0,
            half,
            file_name: file_name.to_owned(),
        })
    }

    /// Appends `bytes`.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let to_half = self.half.saturating_sub(self.written);
        if to_half > 0 && to_half < bytes.len() as u64 {
            let (head, tail) = bytes.split_at(to_half as usize);
            self.append_piece(head)?;
            return self.append_piece(tail);
        }
        self.append_piece(bytes)
    }

    /// Flushes nothing (the caller `fsync`s): returns the handle to sync, which covers the
    /// whole file whichever handle wrote which part, and how the bytes went.
    pub(crate) fn finish(self) -> (File, WriteKind) {
        let kind = if self.wrote_direct {
            WriteKind::Direct
        } else {
            WriteKind::Buffered
        };
        (self.file, kind)
    }

    fn append_piece(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if self.direct {
            let aligned = bytes.as_ptr().align_offset(ALIGN) == 0
                && self.written.is_multiple_of(ALIGN as u64);
            let bulk = if aligned {
                bytes.len() / ALIGN * ALIGN
            } else {
                0
            };
            let mut done = 0;
            for chunk in bytes[..bulk].chunks(CHUNK) {
                match self.file.write_all(chunk) {
                    Ok(()) => {
                        self.wrote_direct = true;
                        done += chunk.len();
                        self.advance(chunk.len());
                    }
                    // Refused by the file system before anything went direct: all buffered.
                    Err(error) if is_unsupported(&error) && !self.wrote_direct => break,
                    Err(error) => return Err(error),
                }
            }
            bytes = &bytes[done..];
            if !bytes.is_empty() {
                self.switch_to_buffered()?;
            }
        }
        if !bytes.is_empty() {
            self.file.write_all(bytes)?;
            self.advance(bytes.len());
        }
        Ok(())
    }

    /// From here on, through the page cache: a second handle, at the current end.
    fn switch_to_buffered(&mut self) -> io::Result<()> {
        let mut file = File::options().write(true).open(&self.path)?;
        file.seek(SeekFrom::Start(self.written))?;
        self.file = file;
        self.direct = false;
        Ok(())
    }

    fn advance(&mut self, len: usize) {
        let before = self.written;
        self.written += len as u64;
        if before < self.half && self.written >= self.half {
            crate::fault::point("write.partial", &self.file_name);
        }
    }
}

/// The page-cache path for small files: two halves, with the fault point between them.
pub(crate) fn write_buffered(temp: &Path, bytes: &[u8], file_name: &str) -> io::Result<File> {
    let mut file = create_buffered(temp)?;
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    file.write_all(head)?;
    crate::fault::point("write.partial", file_name);
    file.write_all(tail)?;
    Ok(file)
}

/// Creates (or truncates) a temporary file through the page cache, never through a symlink
/// planted at its name. Not `create_new`: a direct open that the file system refused may
/// already have created the file.
fn create_buffered(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
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
        // (file length, the pieces it is appended in): aligned with a tail, exactly aligned,
        // shorter than a block, more than one CHUNK, pieces that break the alignment midway.
        let cases: [(usize, &[usize]); 5] = [
            (3 * ALIGN + 17, &[3 * ALIGN + 17]),
            (2 * ALIGN, &[ALIGN, ALIGN]),
            (100, &[60, 40]),
            (CHUNK + 5 * ALIGN + 1, &[CHUNK + 5 * ALIGN + 1]),
            (4 * ALIGN, &[ALIGN, 10, 3 * ALIGN - 10]),
        ];
        for (case, (len, pieces)) in cases.into_iter().enumerate() {
            let bytes = buffer.resize(len);
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = (i * 31 % 251) as u8;
            }
            let path = dir.join(format!("f{case}"));
            let mut sink = FileSink::create(&path, len as u64, "f").unwrap();
            let mut at = 0;
            for piece in pieces {
                sink.append(&buffer.as_slice()[at..at + piece]).unwrap();
                at += piece;
            }
            let (file, kind) = sink.finish();
            file.sync_all().unwrap();
            drop(file);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                buffer.as_slice(),
                "case {case}"
            );
            let expected = if direct_works && len >= ALIGN {
                WriteKind::Direct
            } else {
                WriteKind::Buffered
            };
            assert_eq!(kind, expected, "case {case}");
        }
        // An unaligned start never goes direct.
        let mut sink = FileSink::create(&dir.join("u"), ALIGN as u64 * 2, "u").unwrap();
        sink.append(&buffer.as_slice()[1..ALIGN * 2 + 1]).unwrap();
        assert_eq!(sink.finish().1, WriteKind::Buffered);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
