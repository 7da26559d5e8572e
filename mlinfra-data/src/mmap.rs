//! Read-only memory maps: how Parquet shards, IPC cache files and tensor files are read without
//! copying.

use std::path::Path;

use memmap2::Mmap;

use crate::{Error, Result};

/// Maps the file at `path` read-only.
///
/// The caller's type must document the contract this relies on: the file is neither modified
/// nor truncated while mapped (see [`storage`](crate::storage), [`IpcFile`](crate::IpcFile) and
/// the [`tensor`](crate::tensor) module).
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    // Never blocks on a FIFO, and refuses devices: only regular files are mapped.
    let file = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only and nothing writes through it, but another process (or
    // this one) could still modify or truncate the file while it is mapped, which would change
    // bytes behind a `&[u8]` or make reading them fault. That cannot be prevented from here; it
    // is the documented contract of every type built on this function that the file stays
    // unchanged while open, as for every mmap-based reader (pyarrow's, llama.cpp's). Everything
    // about the contents is untrusted and validated before use.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}
