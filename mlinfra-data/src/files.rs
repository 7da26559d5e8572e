//! Files by name: opening paths someone else chose, and replacing files atomically. The one
//! implementation every layer uses (datasets, tensor files, the IPC cache, loader shards and
//! checkpoints), so each guarantee below holds everywhere or nowhere.
//!
//! # Opening a path the project did not create
//!
//! A path from a user, a directory listing or a manifest may name anything: a FIFO (whose
//! `open` blocks until a writer appears: forever), a character device such as `/dev/zero`
//! (endless bytes), a directory, or a symlink to any of those. [`open_regular`] opens without
//! blocking (`O_NONBLOCK`, which a FIFO honours and a regular file ignores) and then requires a
//! regular file, so none of those can hang or flood a reader: they are
//! [`io::ErrorKind::InvalidInput`] errors that name the kind of file found.
//! [`open_regular_no_follow`] also refuses a symlink in the last component, for files the
//! project wrote itself (checkpoints), where a symlink can only be tampering. User files keep
//! following symlinks: model and dataset caches (Hugging Face's among them) are made of them.
//!
//! [`read_bounded`] reads at most a stated number of bytes plus one, so a file that grew (or a
//! size that lied) is reported, not read to exhaustion.
//!
//! # Replacing a file
//!
//! [`write_atomic`] and [`write_atomic_with`] write to a temporary file in the same directory
//! (a unique name per process and call, created exclusively, so it never follows a planted
//! symlink), `fsync` it, rename it over the target, and `fsync` the directory, so that after a
//! crash or power cut a reader finds the old file or the whole new one, never a prefix, and a
//! completed write stays completed. On error the temporary file is removed and the target is
//! untouched. Cost: two `fsync`s per file.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Opens `path` for reading if it is a regular file (following symlinks), without ever
/// blocking; see the [module docs](self).
///
/// # Errors
///
/// The operating system's error, or [`io::ErrorKind::InvalidInput`] naming what `path` is
/// instead of a regular file (a FIFO, a device, a directory, a socket).
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_checked(path, false)
}

/// [`open_regular`] that also refuses a symlink as the last component of `path`: for files
/// the caller wrote itself.
///
/// # Errors
///
/// As [`open_regular`]; a symlink is an error of the operating system's (`ELOOP`).
pub fn open_regular_no_follow(path: &Path) -> io::Result<File> {
    open_checked(path, true)
}

fn open_checked(path: &Path, no_follow: bool) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if no_follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = File::options().read(true).custom_flags(flags).open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file"),
    ))
}

/// Reads the rest of `file`, which should hold at most `limit` bytes: reads at most
/// `limit + 1` and fails if it got them, so an endless or grown file costs `limit` bytes of
/// memory, not all of it.
///
/// # Errors
///
/// Read errors, or [`io::ErrorKind::FileTooLarge`] when the file holds more than `limit`
/// bytes.
pub fn read_bounded(file: &mut File, limit: u64) -> io::Result<Vec<u8>> {
    // The file's own size is a hint for the allocation, never trusted beyond the limit.
    let hint = file.metadata().map_or(0, |m| m.len()).min(limit);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("holds more than the {limit} bytes expected"),
        ));
    }
    Ok(bytes)
}

/// [`open_regular`] then [`read_bounded`]: a small file (an index, a manifest) read whole.
///
/// # Errors
///
/// As those two.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_bounded(&mut open_regular(path)?, limit)
}

/// Writes `bytes` to `path` atomically and durably (see the [module docs](self)), through the
/// page cache.
///
/// # Errors
///
/// The operating system's errors; `path` is then untouched and no temporary file is left.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(
        path,
        |temp| {
            use std::io::Write as _;
            let mut file = create_new(temp)?;
            file.write_all(bytes)?;
            Ok((file, ()))
        },
        || {},
    )
}

/// The atomic-replace protocol of [`write_atomic`] around `body`, which creates the temporary
/// file at the path it is given (with [`create_new`], or its own flags such as `O_DIRECT`, but
/// always exclusively), fills it, and returns the open handle (whose `fsync` makes it
/// durable) and whatever else it has to report. `before_rename` runs once the temporary file
/// is durable and before the rename: a hook for crash tests.
///
/// # Errors
///
/// `body`'s error or the operating system's; `path` is then untouched and the temporary file
/// removed.
pub fn write_atomic_with<T>(
    path: &Path,
    body: impl FnOnce(&Path) -> io::Result<(File, T)>,
    before_rename: impl FnOnce(),
) -> io::Result<T> {
    let temp = temp_path(path)?;
    let written = (|| {
        let (file, said) = body(&temp)?;
        file.sync_all()?;
        drop(file);
        before_rename();
        fs::rename(&temp, path)?;
        Ok(said)
    })();
    match written {
        Ok(said) => {
            sync_dir(parent_dir(path))?;
            Ok(said)
        }
        Err(error) => {
            let _ = fs::remove_file(&temp);
            Err(error)
        }
    }
}

/// Creates `path` for writing, failing if anything (a file, a symlink) is already there.
///
/// # Errors
///
/// The operating system's.
pub fn create_new(path: &Path) -> io::Result<File> {
    File::options().write(true).create_new(true).open(path)
}

/// A temporary path beside `path`: hidden, and unique per process and call, so concurrent
/// writers of the same file never share one.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] for a path without a file name.
pub fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(temp))
}

/// Makes a directory's entries (creations, renames, removals) durable.
///
/// # Errors
///
/// The operating system's.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_device_and_a_directory_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("data.parquet");
        mlinfra_test_utils::hostile::mkfifo(&fifo);
        for (path, what) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ] {
            let error = open_regular(path).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{path:?}");
            assert!(error.to_string().starts_with(what), "{error}");
        }
    }

    #[test]
    fn symlinks_are_followed_or_refused_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"bytes").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_regular(&link).is_ok());
        assert!(open_regular_no_follow(&target).is_ok());
        assert!(open_regular_no_follow(&link).is_err());
        // A link to a device is refused either way.
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(open_regular(&zero).is_err());
    }

    #[test]
    fn bounded_reads_stop_one_byte_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let read = |limit| read_bounded(&mut open_regular(&path).unwrap(), limit);
        assert_eq!(read(10).unwrap(), b"0123456789");
        assert_eq!(read(64).unwrap(), b"0123456789");
        assert_eq!(read(9).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        // An endless file costs the limit, not all of it.
        let mut zero = File::open("/dev/zero").unwrap();
        assert_eq!(
            read_bounded(&mut zero, 1 << 20).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
    }

    #[test]
    fn an_atomic_write_replaces_whole_files_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failing body leaves the old file and no temporary one.
        let error = write_atomic_with(
            &path,
            |temp| {
                create_new(temp)?;
                Err::<(File, ()), _>(io::Error::other("disk full"))
            },
            || {},
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "disk full");
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory where the file should go: the write fails and nothing is left behind.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(write_atomic(&blocked, b"data").is_err());
        assert!(blocked.join("inner").is_dir());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
