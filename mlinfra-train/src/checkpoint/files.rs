//! Durable file writes and content hashes: the two primitives every checkpoint file uses.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::direct;

/// Writes `bytes` to `path` so that a reader sees either the old file (or none) or all of the
/// new one, never a prefix: temp file in the same directory, `fsync`, rename over `path`,
/// `fsync` of the directory (the rename itself must survive a power cut). Through the page
/// cache: for small files (manifests).
///
/// On error the temp file is removed and `path` is untouched.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |temp, name| {
        direct::write_buffered(temp, bytes, name).map(|file| (file, ()))
    })
}

/// The atomic-replace protocol of [`write_atomic`] around `body`, which creates the temp file
/// (given its path and the final file's name, for fault points), fills it, and returns a
/// handle whose `fsync` makes it durable, and what else it has to say.
pub(crate) fn write_atomic_with<T>(
    path: &Path,
    body: impl FnOnce(&Path, &str) -> io::Result<(File, T)>,
) -> io::Result<T> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut temp_name = name.to_os_string();
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let file_name = name.to_string_lossy();
    let written = (|| {
        let (file, said) = body(&temp, &file_name)?;
        file.sync_all()?;
        drop(file);
        crate::fault::point("write.unrenamed", &file_name);
        fs::rename(&temp, path)?;
        Ok(said)
    })();
    match written {
        Ok(said) => sync_dir(path.parent().unwrap_or(Path::new("."))).map(|()| said),
        Err(error) => {
            let _ = fs::remove_file(&temp);
            Err(error)
        }
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// SHA-256 of `bytes`, lowercase hex.
#[cfg(test)]
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Reads a whole file and checks it against its recorded length and SHA-256. Returns the bytes
/// on success and a sentence saying what is wrong otherwise.
pub(crate) fn read_verified(path: &Path, bytes: u64, sha256: &str) -> Result<Vec<u8>, String> {
    let mut data = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
    File::open(path)
        .map_err(|e| format!("cannot open: {e}"))?
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read: {e}"))?;
    check(data.len() as u64, &Sha256::digest(&data), bytes, sha256)?;
    Ok(data)
}

/// Streams a file through SHA-256 without keeping it: validation of files this rank does not
/// otherwise need. Same contract as [`read_verified`].
pub(crate) fn verify(path: &Path, bytes: u64, sha256: &str) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
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
