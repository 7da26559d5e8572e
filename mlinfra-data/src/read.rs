//! [`ShardReader`]: how data pages are fetched from a shard, bounds-checked and counted.
//!
//! The Parquet reader asks for byte ranges (a page, a column chunk) whose offsets and lengths
//! come from the footer, which is untrusted. arrow-rs's reader for `File` allocates the
//! requested length before reading, so a footer claiming a 1 TB column chunk would try to
//! allocate 1 TB. Here every range is checked against the file's size first and refused with a
//! Parquet error (reported as [`Error::Parquet`](crate::Error::Parquet)) when it runs past the
//! end. Ranges are read with positional reads (`pread`): no seek, no shared cursor, safe from
//! many threads.
//!
//! Every byte fetched is added to the dataset's counter ([`Dataset::bytes_read`]), which is how
//! tests prove that `take` reads only the pages holding the requested rows.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

use crate::dataset::{Dataset, Shard};
use crate::{Error, Result};

/// A shard opened for reading data pages; see the [module docs](self).
pub(crate) struct ShardReader {
    file: Arc<File>,
    len: u64,
    bytes_read: Arc<AtomicU64>,
}

impl ShardReader {
    pub(crate) fn open(shard: &Shard, bytes_read: Arc<AtomicU64>) -> Result<Self> {
        let path = shard.path();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(ShardReader {
            file: Arc::new(file),
            len,
            bytes_read,
        })
    }

    /// Checks that `start..start + length` lies inside the file.
    fn check_range(&self, start: u64, length: u64) -> parquet::errors::Result<()> {
        match start.checked_add(length) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ParquetError::EOF(format!(
                "range of {length} bytes at offset {start} runs past the end of the file \
                 ({} bytes)",
                self.len
            ))),
        }
    }
}

impl Length for ShardReader {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for ShardReader {
    type T = RangeRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RangeRead> {
        self.check_range(start, 0)?;
        Ok(RangeRead {
            file: Arc::clone(&self.file),
            position: start,
            end: self.len,
            bytes_read: Arc::clone(&self.bytes_read),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.check_range(start, length as u64)?;
        let mut buffer = vec![0u8; length];
        self.file.read_exact_at(&mut buffer, start)?;
        self.bytes_read.fetch_add(length as u64, Ordering::Relaxed);
        Ok(buffer.into())
    }
}

/// A sequential reader from an offset to the end of the file, counting what it reads.
pub(crate) struct RangeRead {
    file: Arc<File>,
    position: u64,
    end: u64,
    bytes_read: Arc<AtomicU64>,
}

impl Read for RangeRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end - self.position).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        let n = self.file.read_at(&mut buf[..want], self.position)?;
        self.position += n as u64;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Dataset {
    /// Bytes of data pages this dataset (all views of it) has fetched from storage so far, by
    /// [`take`](Dataset::take) and [`scan`](Dataset::scan); footers read at open are not
    /// counted. A measure of I/O: compare it with the files' sizes.
    pub fn bytes_read(&self) -> u64 {
        self.shared().bytes_read.load(Ordering::Relaxed)
    }

    /// Opens `shard` for reading data pages, counted in [`Dataset::bytes_read`].
    pub(crate) fn shard_reader(&self, shard: &Shard) -> Result<ShardReader> {
        ShardReader::open(shard, Arc::clone(&self.shared().bytes_read))
    }
}
