//! Object stores through the `object_store` crate: `s3://`, `gs://`, `az://`, `http(s)://`.
//!
//! Configuration, listing rules and the runtime are described in the [parent module](super).

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use url::Url;

use crate::{Error, Result};

/// An object store and the URI prefix its objects are named under (`s3://bucket`).
#[derive(Debug)]
pub(crate) struct RemoteStore {
    store: Arc<dyn ObjectStore>,
    root: String,
}

/// One object in a [`RemoteStore`].
#[derive(Debug, Clone)]
pub(crate) struct RemoteObject {
    store: Arc<RemoteStore>,
    path: ObjectPath,
}

/// An object a dataset URI resolved to.
pub(crate) struct ListedObject {
    pub(crate) uri: PathBuf,
    pub(crate) len: u64,
    pub(crate) object: RemoteObject,
}

impl RemoteObject {
    /// The object's URI, as shards and manifests name it.
    pub(crate) fn uri(&self) -> String {
        format!("{}/{}", self.store.root, self.path)
    }

    fn error(&self, source: object_store::Error) -> Error {
        Error::ObjectStore {
            uri: self.uri().into(),
            source: Box::new(source),
        }
    }

    /// The bytes of `ranges` (already checked and coalesced), fetched concurrently.
    pub(crate) fn get_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let store = Arc::clone(&self.store.store);
        let path = self.path.clone();
        let ranges = ranges.to_vec();
        run(async move { store.get_ranges(&path, &ranges).await })?.map_err(|e| self.error(e))
    }

    /// Size and modification time (nanoseconds since the Unix epoch) now; `None` when the
    /// object does not exist.
    pub(crate) fn stat(&self) -> Result<Option<(u64, u64)>> {
        let store = Arc::clone(&self.store.store);
        let path = self.path.clone();
        match run(async move { store.head(&path).await })? {
            Ok(meta) => Ok(Some(stamp(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Feeds the object's bytes to `hasher`, in order, 16 MiB per request.
    pub(crate) fn hash_into(&self, hasher: &mut blake3::Hasher) -> Result<()> {
        self.for_each_chunk(|chunk| {
            hasher.update(chunk);
            Ok(())
        })
    }

    /// The whole object, in order, in chunks of at most 16 MiB (one ranged GET each), so a
    /// large object is never held in memory at once.
    pub(crate) fn for_each_chunk(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        const CHUNK: u64 = 16 << 20;
        let Some((len, _)) = self.stat()? else {
            return Err(self.error(object_store::Error::NotFound {
                path: self.path.to_string(),
                source: "object vanished while reading it".into(),
            }));
        };
        let mut start = 0;
        while start < len {
            let end = len.min(start + CHUNK);
            for part in &self.get_ranges(std::slice::from_ref(&(start..end)))? {
                f(part)?;
            }
            start = end;
        }
        Ok(())
    }
}

fn stamp(meta: &ObjectMeta) -> (u64, u64) {
    let modified_ns = meta
        .last_modified
        .timestamp_nanos_opt()
        .map_or(0, |ns| u64::try_from(ns).unwrap_or(0));
    (meta.size, modified_ns)
}

/// Whether `uri` names an object store (rather than a local path).
pub(crate) fn is_remote(uri: &str) -> bool {
    uri.split_once("://")
        .is_some_and(|(scheme, _)| scheme != "file")
}

/// The object a URI names, without checking it exists (for [`Manifest::verify`]).
///
/// [`Manifest::verify`]: crate::Manifest::verify
pub(crate) fn object(uri: &str, options: &[(String, String)]) -> Result<RemoteObject> {
    let (store, path) = open_store(uri, options)?;
    Ok(RemoteObject { store, path })
}

/// The Parquet objects `uri` names, sorted by path; see the [module docs](self).
pub(crate) fn resolve(uri: &str, options: &[(String, String)]) -> Result<Vec<ListedObject>> {
    let (store, path) = open_store(uri, options)?;
    let remote = &store.store;
    let error = |source| store_error(uri, source);
    let text = path.as_ref().to_owned();
    let metas: Vec<ObjectMeta> = if let Some(glob_at) = text.find(['*', '?', '[']) {
        let pattern = glob::Pattern::new(&text).map_err(|_| Error::InvalidUri {
            uri: uri.into(),
            reason: "malformed glob pattern",
        })?;
        let prefix = ObjectPath::from(&text[..text[..glob_at].rfind('/').unwrap_or(0)]);
        list(remote, prefix)?
            .map_err(error)?
            .into_iter()
            // `*` stays inside one path part, as in a shell and the local glob.
            .filter(|meta| {
                let options = glob::MatchOptions {
                    require_literal_separator: true,
                    ..glob::MatchOptions::new()
                };
                pattern.matches_with(meta.location.as_ref(), options)
            })
            .collect()
    } else {
        let head = {
            let remote = Arc::clone(remote);
            let path = path.clone();
            run(async move { remote.head(&path).await })?
        };
        match head {
            Ok(meta) => vec![meta],
            // Not an object: a prefix ("directory"), unless the store cannot list.
            Err(object_store::Error::NotFound { .. }) => list(remote, path.clone())?
                .map_err(error)?
                .into_iter()
                .filter(|meta| is_dataset_file(&path, &meta.location))
                .collect(),
            Err(e) => return Err(error(e)),
        }
    };
    let mut files: Vec<ListedObject> = metas
        .into_iter()
        .map(|meta| {
            let object = RemoteObject {
                store: Arc::clone(&store),
                path: meta.location,
            };
            ListedObject {
                uri: object.uri().into(),
                len: meta.size,
                object,
            }
        })
        .collect();
    if files.is_empty() {
        return Err(Error::NoFiles { uri: uri.into() });
    }
    files.sort_by(|a, b| a.object.path.cmp(&b.object.path));
    Ok(files)
}

/// Every object under `prefix`, recursively.
fn list(
    store: &Arc<dyn ObjectStore>,
    prefix: ObjectPath,
) -> Result<Result<Vec<ObjectMeta>, object_store::Error>> {
    let store = Arc::clone(store);
    run(async move { store.list(Some(&prefix)).try_collect().await })
}

/// A `*.parquet` object under `prefix` none of whose path parts below the prefix starts with
/// `_` or `.` (Spark's `_SUCCESS`, `_metadata`, hidden staging directories).
fn is_dataset_file(prefix: &ObjectPath, location: &ObjectPath) -> bool {
    let Some(parts) = location.prefix_match(prefix) else {
        return false;
    };
    let parts: Vec<_> = parts.collect();
    !parts.is_empty()
        && parts
            .iter()
            .all(|part| !part.as_ref().starts_with(['_', '.']))
        && location.extension() == Some("parquet")
}

/// The store for `uri` and the object path inside it.
#[cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure", feature = "http")),
    allow(unreachable_code, unused_variables)
)]
fn open_store(uri: &str, options: &[(String, String)]) -> Result<(Arc<RemoteStore>, ObjectPath)> {
    let invalid = |reason| Error::InvalidUri {
        uri: uri.into(),
        reason,
    };
    let url = Url::parse(uri).map_err(|_| invalid("not a valid URL"))?;
    let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|_| invalid("unknown scheme"))?;
    install_crypto_provider();
    // Each store's builder: configured by `options` over the environment, then built. A macro
    // because the builders share method names but no trait.
    #[allow(unused_macros)] // used by none when `remote` is enabled alone
    macro_rules! build {
        ($builder:expr) => {{
            let mut builder = $builder;
            for (key, value) in options {
                let Ok(config_key) = key.to_ascii_lowercase().parse() else {
                    return Err(Error::InvalidOption {
                        option: "with_storage_option",
                        reason: format!("`{key}` is not a configuration key of this object store")
                            .into(),
                    });
                };
                builder = builder.with_config(config_key, value);
            }
            Arc::new(builder.build().map_err(|e| store_error(uri, e))?)
        }};
    }
    let store: Arc<dyn ObjectStore> = match scheme {
        #[cfg(feature = "s3")]
        ObjectStoreScheme::AmazonS3 => {
            build!(object_store::aws::AmazonS3Builder::from_env().with_url(uri))
        }
        #[cfg(feature = "gcs")]
        ObjectStoreScheme::GoogleCloudStorage => {
            build!(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(uri))
        }
        #[cfg(feature = "azure")]
        ObjectStoreScheme::MicrosoftAzure => {
            build!(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(uri))
        }
        #[cfg(feature = "http")]
        ObjectStoreScheme::Http => {
            let base = &url[..url::Position::BeforePath];
            build!(object_store::http::HttpBuilder::new().with_url(base))
        }
        _ => {
            return Err(Error::UnsupportedScheme {
                scheme: url.scheme().into(),
            });
        }
    };
    let root = store_root(&url, &path);
    Ok((Arc::new(RemoteStore { store, root }), path))
}

fn store_error(uri: &str, source: object_store::Error) -> Error {
    Error::ObjectStore {
        uri: uri.into(),
        source: Box::new(source),
    }
}

/// `scheme://authority` plus whatever leading path parts name the container rather than the
/// object (the bucket of a path-style `https://s3.amazonaws.com/bucket/key` URL).
fn store_root(url: &Url, path: &ObjectPath) -> String {
    let base = &url[..url::Position::BeforePath];
    let url_parts: Vec<&str> = url.path().split('/').filter(|p| !p.is_empty()).collect();
    let object_parts = path.parts().count();
    let container = &url_parts[..url_parts.len().saturating_sub(object_parts)];
    if container.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{}", container.join("/"))
    }
}

/// The HTTP client is rustls with ring, built without a default crypto provider (so the
/// crate does not compile aws-lc); install ring as the process default unless the application
/// installed one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Runs `future` on the crate's I/O runtime and waits for its output; see the
/// [module docs](self).
fn run<F>(future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mlinfra-data-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    let runtime = runtime.as_ref().map_err(|message| Error::Io {
        path: std::path::Path::new("<object store runtime>").into(),
        source: std::io::Error::other(message.clone()),
    })?;
    let (sender, receiver) = crossbeam_channel::bounded(1);
    runtime.spawn(async move {
        let _ = sender.send(future.await);
    });
    // A closed channel means the task panicked inside the store client.
    receiver.recv().map_err(|_| Error::Io {
        path: std::path::Path::new("<object store runtime>").into(),
        source: std::io::Error::other("an object store request panicked"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_keeps_the_bucket_of_path_style_urls() {
        for (uri, root) in [
            ("s3://bucket/a/b.parquet", "s3://bucket"),
            (
                "https://s3.us-east-1.amazonaws.com/bucket/a/b.parquet",
                "https://s3.us-east-1.amazonaws.com/bucket",
            ),
            (
                "http://127.0.0.1:9000/data/x.parquet",
                "http://127.0.0.1:9000",
            ),
        ] {
            let url = Url::parse(uri).unwrap();
            let (_, path) = ObjectStoreScheme::parse(&url).unwrap();
            assert_eq!(store_root(&url, &path), root, "{uri}");
            assert_eq!(format!("{root}/{path}"), uri);
        }
    }

    #[test]
    fn only_visible_parquet_objects_under_the_prefix_are_dataset_files() {
        let prefix = ObjectPath::from("data");
        let yes = |p: &str| is_dataset_file(&prefix, &ObjectPath::from(p));
        assert!(yes("data/a.parquet"));
        assert!(yes("data/year=2024/a.parquet"));
        assert!(!yes("data/_SUCCESS"));
        assert!(!yes("data/_tmp/a.parquet"));
        assert!(!yes("data/.hidden.parquet"));
        assert!(!yes("data/a.csv"));
        assert!(!yes("database/a.parquet"));
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let options = [("aws_not_a_key".to_owned(), "x".to_owned())];
        match object("s3://bucket/x.parquet", &options) {
            Err(Error::InvalidOption { reason, .. }) => assert!(reason.contains("aws_not_a_key")),
            other => panic!("{other:?}"),
        }
    }
}
