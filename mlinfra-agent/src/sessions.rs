//! HTTP sessions that survive a restart: rmcp's [`SessionStore`] over a directory.
//!
//! A 2025-11-25 client holds a session id (`Mcp-Session-Id`) from its `initialize`; the
//! session itself (rmcp's `LocalSessionManager`) lives in memory and dies with the process.
//! With a store, the server writes the client's `initialize` parameters to
//! `DIR/<session id>.json` after the handshake and deletes the file when the client ends the
//! session (HTTP `DELETE`); a request naming a session this process does not know is looked
//! up there, and rmcp replays the handshake, so the client carries on after a restart as if
//! nothing happened. (2026-07-28 requests are stateless: nothing to keep.)
//!
//! What a hostile client could do with it: name a session id that is a path (refused: ids are
//! the letters, digits, `-` and `_` rmcp's UUIDs use, at most 128 of them), or open sessions
//! without end to fill the disk (at most [`MAX_SESSIONS`] files are kept; past that a new
//! session is served but not persisted, and rmcp logs it). Files are written atomically,
//! mode 0600.

use std::path::{Path, PathBuf};

use rmcp::transport::streamable_http_server::session::{
    SessionState, SessionStore, SessionStoreError,
};

use crate::{Error, Result};

/// The most sessions kept on disk.
pub const MAX_SESSIONS: usize = 10_000;

/// Sessions persisted as files in one directory.
#[derive(Debug, Clone)]
pub struct FileSessionStore {
    dir: PathBuf,
}

impl FileSessionStore {
    /// The store in `dir`, created (0700) if missing.
    ///
    /// # Errors
    ///
    /// [`Error::JobStore`] when the directory cannot be made.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::JobStore {
                path: dir.clone(),
                source,
            })?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of session `id`, when `id` is a plain session id.
    fn file(&self, id: &str) -> Result<PathBuf, SessionStoreError> {
        let plain = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(format!("session id {id:?} is not a plain id").into());
        }
        Ok(self.dir.join(format!("{id}.json")))
    }
}

#[async_trait::async_trait]
impl SessionStore for FileSessionStore {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Ok(path) = self.file(session_id) else {
            // Not an id this store could have written: unknown, so the client gets a 404.
            return Ok(None);
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Box::new(error)),
        };
        Ok(Some(serde_json::from_slice(&bytes).map_err(|error| {
            format!("{}: not a session record: {error}", path.display())
        })?))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let path = self.file(session_id)?;
        let bytes = serde_json::to_vec(state)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), SessionStoreError> {
            let kept = std::fs::read_dir(&dir)?.take(MAX_SESSIONS + 1).count();
            if kept >= MAX_SESSIONS {
                return Err(format!("{MAX_SESSIONS} sessions kept already").into());
            }
            mlinfra_data::files::write_atomic(&path, &bytes)?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        let Ok(path) = self.file(session_id) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Box::new(error)),
            _ => Ok(()),
        }
    }
}
