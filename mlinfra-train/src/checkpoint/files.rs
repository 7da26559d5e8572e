//! Durable file writes and content hashes: the two primitives every checkpoint file uses.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use mlinfra_data::files;
use sha2::{Digest, Sha256};

use super::direct;

/// Writes `bytes` to `path` so that a reader sees either the old file (or none) or all of the
/// new one, never a prefix, and so that the write survives a power cut:
/// [`mlinfra_data::files::write_atomic_with`]. Through the page cache: for small files
/// (manifests).
///
/// On error the temp file is removed and `path` is untouched.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |temp, name| {
        direct::write_buffered(temp, bytes, name).map(|file| (file, ()))
    })
}

/// The atomic-replace protocol of [`write_atomic`] around `body`, which creates the temp file
/// (given its path and the final file's name, for fault points), fills it, and returns a
/// handle whose `fsync` makes it durable, and what else it has to say. The fault point
/// `write.unrenamed` sits between the durable temp file and its rename.
pub(crate) fn write_atomic_with<T>(
    path: &Path,
    body: impl FnOnce(&Path, &str) -> io::Result<(File, T)>,
) -> io::Result<T> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    files::write_atomic_with(
        path,
        |temp| body(temp, &name),
        || crate::fault::point("write.unrenamed", &name),
    )
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    files::sync_dir(dir)
}

/// SHA-256 of `bytes`, lowercase hex.
#[cfg(test)]
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Opens a checkpoint file for reading: a regular file, not through a symlink, without
/// blocking ([`files::open_regular_no_follow`]). A checkpoint holds only files this crate
/// wrote, so anything else there is tampering, and must not hang or flood the reader.
pub(crate) fn open_checkpoint_file(path: &Path) -> Result<File, String> {
    files::open_regular_no_follow(path).map_err(|e| format!("cannot open: {e}"))
}

/// Reads a whole file and checks it against its recorded length and SHA-256 (reading at most
/// one byte more than recorded). Returns the bytes on success and a sentence saying what is
/// wrong otherwise.
pub(crate) fn read_verified(path: &Path, bytes: u64, sha256: &str) -> Result<Vec<u8>, String> {
    let mut file = open_checkpoint_file(path)?;
    let data = files::read_bounded(&mut file, bytes).map_err(|e| match e.kind() {
        io::ErrorKind::FileTooLarge => {
            format!("is longer than the {bytes} bytes the manifest says (replaced)")
        }
        _ => format!("cannot read: {e}"),
    })?;
    check(data.len() as u64, &Sha256::digest(&data), bytes, sha256)?;
    Ok(data)
}

/// Streams a file through SHA-256 without keeping it: validation of files this rank does not
/// otherwise need. Same contract as [`read_verified`]: at most one byte past the recorded
/// length is read.
pub(crate) fn verify(path: &Path, bytes: u64, sha256: &str) -> Result<(), String> {
    let mut file = open_checkpoint_file(path)?.take(bytes.saturating_add(1));
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| format!("cannot read: {e}"))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buffer[..n]);
    }
    check(len, &hasher.finalize(), bytes, sha256)
}

/// The one comparison of a file's length and digest with its manifest record.
fn check(len: u64, digest: &[u8], bytes: u64, sha256: &str) -> Result<(), String> {
    if len != bytes {
        return Err(format!(
            "is {len} bytes, the manifest says {bytes} (truncated or replaced)"
        ));
    }
    let actual = hex(digest);
    if actual != sha256 {
        return Err(format!(
            "sha256 is {actual}, the manifest says {sha256} (corrupted)"
        ));
    }
    Ok(())
}

/// Lowercase hex of a digest.
pub(crate) fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The 32 bytes of a lowercase-hex SHA-256 as 4 words, for [`crate::collective::all_gather_u64`].
pub(crate) fn sha256_words(hex: &str) -> [u64; 4] {
    let mut words = [0u64; 4];
    for (i, word) in words.iter_mut().enumerate() {
        *word = u64::from_str_radix(&hex[i * 16..(i + 1) * 16], 16).unwrap_or(0);
    }
    words
}

/// The inverse of [`sha256_words`].
pub(crate) fn sha256_from_words(words: &[u64]) -> String {
    words.iter().map(|w| format!("{w:016x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn sha256_matches_the_published_vector() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let words = sha256_words(&sha256_hex(b"abc"));
        assert_eq!(sha256_from_words(&words), sha256_hex(b"abc"));
    }

    #[test]
    fn an_atomic_write_replaces_whole_files_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("mlinfra-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let sha = sha256_hex(b"second, longer");
        assert!(verify(&path, 14, &sha).is_ok());
        assert!(verify(&path, 13, &sha).unwrap_err().contains("truncated"));
        assert!(
            read_verified(&path, 14, &sha256_hex(b"x"))
                .unwrap_err()
                .contains("corrupted")
        );
        // A directory where the file should go: the write fails and nothing is left behind.
        let blocked = dir.join("blocked");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(write_atomic(&blocked, b"data").is_err());
        assert!(blocked.join("inner").is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }
}
