//! Resource subscriptions: a dataset a client subscribed to is watched, and the client told
//! (`notifications/resources/updated`) when its files change.
//!
//! Both eras: a 2025-11-25 session's `resources/subscribe` starts a watch that
//! `resources/unsubscribe` (or the session's end) stops; a 2026-07-28
//! `subscriptions/listen` stream watches the URIs its filter names for as long as it is open.
//!
//! A watch polls (every [`POLL`]) what the dataset's files look like from their metadata: each
//! file's path, size and modification time, in name order. No inotify: a dataset may sit on a
//! network file system where notify events do not arrive, and a poll of a few stat calls a
//! second costs nothing beside reading the data. A dataset that disappears is an update too
//! (its URI then fails to read). At most [`MAX_WATCHES`] watches run in one process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::{DataRoot, catalog};

/// How often a watched dataset's files are looked at.
pub const POLL: Duration = Duration::from_millis(500);
/// Watches one process runs at most (a client subscribing without end is refused past it).
pub const MAX_WATCHES: usize = 1024;

/// What a dataset looks like without reading it: each file's path, size and mtime.
type Look = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn look(root: &DataRoot, path: &str) -> Option<Look> {
    let resolved = root.resolve(path).ok()?;
    let mut files = Vec::new();
    let mut pending = vec![resolved];
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).ok()?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).ok()?;
            pending.extend(
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .take(catalog::MAX_VISITED),
            );
        } else {
            files.push((path, meta.len(), meta.modified().ok()));
        }
        if files.len() + pending.len() > catalog::MAX_VISITED {
            return None;
        }
    }
    files.sort();
    Some(files)
}

/// The watches running, by subscriber (a session id, empty for stdio) and URI.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    running: Mutex<HashMap<(String, String), CancellationToken>>,
    count: Arc<AtomicUsize>,
}

impl Watches {
    /// Whether `uri` names a dataset that exists under `root`.
    pub(crate) fn is_dataset(root: &DataRoot, uri: &str) -> bool {
        catalog::dataset_path(uri).is_some_and(|path| root.resolve(&path).is_ok())
    }

    /// Starts watching `uri` for `subscriber`, calling `notify` on each change until it
    /// returns false (the client is gone) or [`Watches::stop`]. A second subscription to the
    /// same URI by the same subscriber changes nothing. False when [`MAX_WATCHES`] run already.
    pub(crate) fn start<F, Fut>(
        &self,
        root: Arc<DataRoot>,
        subscriber: String,
        uri: String,
        notify: F,
    ) -> bool
    where
        F: Fn(String) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let key = (subscriber, uri.clone());
        if running.get(&key).is_some_and(|token| !token.is_cancelled()) {
            return true;
        }
        let Some(token) = self.reserve() else {
            return false;
        };
        running.insert(key, token.clone());
        let count = Arc::clone(&self.count);
        tokio::spawn(async move {
            watch(root, vec![uri], token, notify).await;
            count.fetch_sub(1, Ordering::Relaxed);
        });
        true
    }

    /// Stops `subscriber`'s watch of `uri`, if any.
    pub(crate) fn stop(&self, subscriber: &str, uri: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = running.remove(&(subscriber.to_owned(), uri.to_owned())) {
            token.cancel();
        }
    }

    /// A token for one more watch, or `None` at [`MAX_WATCHES`].
    pub(crate) fn reserve(&self) -> Option<CancellationToken> {
        let reserved = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_WATCHES).then_some(n + 1)
            })
            .is_ok();
        reserved.then(CancellationToken::new)
    }

    /// Gives back a token [`Watches::reserve`] gave, once its watch ended.
    pub(crate) fn release(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Polls `uris` until `stop` or until `notify` returns false, calling it with each URI whose
/// dataset changed.
pub(crate) async fn watch<F, Fut>(
    root: Arc<DataRoot>,
    uris: Vec<String>,
    stop: CancellationToken,
    notify: F,
) where
    F: Fn(String) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let looks = |root: Arc<DataRoot>, uris: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            uris.iter()
                .map(|uri| catalog::dataset_path(uri).and_then(|path| look(&root, &path)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    };
    let mut seen = looks(Arc::clone(&root), uris.clone()).await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let now = looks(Arc::clone(&root), uris.clone()).await;
        for ((uri, before), after) in uris.iter().zip(&seen).zip(&now) {
            if before != after && !notify(uri.clone()).await {
                return;
            }
        }
        seen = now;
    }
}
