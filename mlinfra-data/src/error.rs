//! The error type of `mlinfra-data`.

use std::path::Path;

use crate::tensor::TensorFormat;

/// Errors returned by `mlinfra-data`.
///
/// Each variant documents who is at fault: the caller, the input data, or external I/O. Paths
/// name the file at fault; the underlying cause, when there is one, is the error's `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a local file failed (external I/O).
    #[error("i/o error on {path}")]
    Io {
        /// The file the operation was on.
        path: Box<Path>,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The dataset URI matched no Parquet file: an empty directory, a glob without matches
    /// (caller).
    #[error("no parquet files found at `{uri}`")]
    NoFiles {
        /// The URI as given.
        uri: Box<str>,
    },
    /// The dataset URI is malformed (caller).
    #[error("invalid dataset uri `{uri}`: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: Box<str>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The URI names an object store this build was compiled without: enable the crate's
    /// `s3`, `gcs`, `azure` or `http` feature (caller).
    #[error(
        "`{scheme}://` datasets need an object-store feature this build lacks (s3, gcs, azure, http)"
    )]
    UnsupportedScheme {
        /// The URI scheme, for example `s3`.
        scheme: Box<str>,
    },
    /// An object-store request failed: not found, access denied, a network error, a bad
    /// endpoint or credentials (external I/O, or caller for configuration).
    #[cfg(feature = "remote")]
    #[error("object store error on {uri}")]
    ObjectStore {
        /// The object or dataset URI the request was for.
        uri: Box<str>,
        /// What the store reported.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A file is not valid Parquet, or a page in it failed to decode (input data).
    #[error("invalid parquet data in {path}")]
    Parquet {
        /// The file at fault.
        path: Box<Path>,
        /// What the Parquet reader reported.
        #[source]
        source: Box<parquet::errors::ParquetError>,
    },
    /// Decoded data failed an Arrow operation: usually data that is corrupt in a way the
    /// decoder did not catch (input data), otherwise an internal bug.
    #[error("invalid arrow data from {path}")]
    Arrow {
        /// The file the data came from.
        path: Box<Path>,
        /// What Arrow reported.
        #[source]
        source: Box<arrow::error::ArrowError>,
    },
    /// A file's metadata (a Parquet footer, an Arrow IPC footer or message header) contradicts
    /// itself or the file, for example a negative row count or an offset past the end (input
    /// data).
    #[error("corrupt metadata in {path}: {what}")]
    CorruptMetadata {
        /// The file at fault.
        path: Box<Path>,
        /// What is inconsistent, and where.
        what: Box<str>,
    },
    /// Decoding returned a different number of rows than the footer promises. Refused rather
    /// than delivered short: silently missing rows would change what a model trains on (input
    /// data, or a decoder bug).
    #[error("{path} decoded to {decoded} rows where its footer promises {expected}")]
    RowCountMismatch {
        /// The file at fault.
        path: Box<Path>,
        /// Rows the footer promises for what was read.
        expected: u64,
        /// Rows the decoder returned.
        decoded: u64,
    },
    /// A shard's schema differs from the dataset's, which is the first shard's (input data).
    #[error("schema of {path} differs from the dataset schema (taken from {first})")]
    SchemaMismatch {
        /// The shard whose schema differs.
        path: Box<Path>,
        /// The first shard, whose schema is the dataset's.
        first: Box<Path>,
    },
    /// A column name is not in the dataset's schema (caller).
    #[error("no column named `{name}` in the dataset")]
    NoSuchColumn {
        /// The name asked for.
        name: Box<str>,
    },
    /// A [`Predicate`](crate::Predicate) does not fit the schema: a literal that does not fit
    /// its column's type, or a column type predicates do not apply to (caller).
    #[error("invalid predicate: {what}")]
    InvalidPredicate {
        /// What is wrong.
        what: Box<str>,
    },
    /// A row index is past the end of the dataset (caller).
    #[error("row {index} out of range ({rows} rows)")]
    RowOutOfRange {
        /// The index asked for.
        index: u64,
        /// The number of rows in the dataset.
        rows: u64,
    },
    /// A row group would decode to more bytes than the configured cap allows; refused before
    /// any allocation (input data, or a cap set too low by the caller).
    #[error(
        "row group {row_group} of {path} holds {bytes} bytes of pages, over the {limit}-byte decode limit"
    )]
    DecodeLimit {
        /// The file at fault.
        path: Box<Path>,
        /// The row group that was refused.
        row_group: usize,
        /// Its uncompressed page bytes for the projected columns, from the footer.
        bytes: u64,
        /// The limit in force ([`DatasetBuilder::with_max_decoded_bytes`]).
        ///
        /// [`DatasetBuilder::with_max_decoded_bytes`]: crate::DatasetBuilder::with_max_decoded_bytes
        limit: u64,
    },
    /// Decoding made more bytes than the cap allows, counted in the decoded arrays: values
    /// repeated by reference (a dictionary value shared by many rows, a run of indices) count
    /// once per row. Stopped at the batch that crossed the cap (input data, or a cap set too
    /// low by the caller).
    #[error(
        "decoding {path} materializes more than the {limit}-byte limit (most in column `{column}`)"
    )]
    MaterializeLimit {
        /// The file being decoded (for a cache build, the dataset's URI).
        path: Box<Path>,
        /// The column holding the most bytes of the batch that crossed the limit.
        column: Box<str>,
        /// The limit in force ([`DatasetBuilder::with_max_decoded_bytes`], or for a cache
        /// build [`IpcCacheBuilder::with_max_bytes`]).
        ///
        /// [`DatasetBuilder::with_max_decoded_bytes`]: crate::DatasetBuilder::with_max_decoded_bytes
        /// [`IpcCacheBuilder::with_max_bytes`]: crate::IpcCacheBuilder::with_max_bytes
        limit: u64,
    },
    /// [`IpcCacheBuilder::create`] was pointed at a directory that holds other files and no
    /// cache; it deletes nothing it did not write (caller).
    ///
    /// [`IpcCacheBuilder::create`]: crate::cache::IpcCacheBuilder::create
    #[error("{path} is not empty and holds no mlinfra cache; refusing to replace it")]
    CacheDirInUse {
        /// The directory.
        path: Box<Path>,
    },
    /// A manifest or cache index is not valid JSON of the expected shape, has another format
    /// version, or records a fingerprint its contents do not hash to (input data: an edited or
    /// corrupted file).
    #[error("invalid manifest {path}: {what}")]
    InvalidManifest {
        /// The file read, or `(in memory)`.
        path: Box<Path>,
        /// What is wrong.
        what: Box<str>,
    },
    /// A CSV or JSON-lines record cannot be parsed or does not fit the schema: a wrong field
    /// count, invalid UTF-8, a value that does not parse as its column's type, a line that is
    /// not one JSON object, an unterminated quote (input data). Returned only under
    /// [`BadRecords::Fail`], or for a CSV header, which is never skipped.
    ///
    /// [`BadRecords::Fail`]: crate::convert::BadRecords::Fail
    #[error("{path}:{line}: {what}")]
    MalformedRecord {
        /// The input file.
        path: Box<Path>,
        /// The 1-based line on which the record starts.
        line: u64,
        /// What is wrong with the record, in this crate's words.
        what: Box<str>,
    },
    /// A record is longer than the configured limit, usually because of an unterminated quote
    /// that swallows the rest of the file (input data, or a limit set too low by the caller).
    /// Never skipped: after an unbalanced quote there is no reliable place to resume.
    #[error("{path}:{line}: record exceeds the {limit}-byte limit")]
    RecordTooLarge {
        /// The input file.
        path: Box<Path>,
        /// The 1-based line on which the record starts.
        line: u64,
        /// The limit in force ([`Conversion::with_max_record_bytes`]).
        ///
        /// [`Conversion::with_max_record_bytes`]: crate::convert::Conversion::with_max_record_bytes
        limit: u64,
    },
    /// No schema was given and the input has nothing to infer one from: an empty file, only
    /// blank lines, JSON objects without keys, or (under `BadRecords::Skip`) no parsable record
    /// among those sampled (input data; pass a schema to convert an empty file to an empty
    /// Parquet file).
    #[error("{path} has no records to infer a schema from")]
    EmptyInput {
        /// The input file.
        path: Box<Path>,
    },
    /// A conversion's schema (given, or inferred from the input) has more leaf columns than
    /// the configured cap (input data, or a cap set too low by the caller).
    #[error("{path}: {columns} columns, over the limit of {limit}")]
    TooManyColumns {
        /// The input file.
        path: Box<Path>,
        /// Leaf columns of the schema.
        columns: usize,
        /// The limit in force ([`Conversion::with_max_columns`]).
        ///
        /// [`Conversion::with_max_columns`]: crate::convert::Conversion::with_max_columns
        limit: usize,
    },
    /// A conversion option is out of range or contradicts another, for example a zstd level
    /// outside 1..=22 or a delimiter equal to the quote character (caller).
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// The setter at fault, for example `with_compression`.
        option: &'static str,
        /// What is wrong with the value.
        reason: Box<str>,
    },
    /// A tensor file (GGUF, safetensors) is malformed, or uses something this reader does not
    /// support, such as a GGUF version, a big-endian file, or a tensor type that cannot be
    /// converted to `f32` (input data).
    #[error("invalid or unsupported {format} file {path}: {what}")]
    TensorFile {
        /// The file at fault.
        path: Box<Path>,
        /// Its format.
        format: TensorFormat,
        /// What is wrong, and at which byte offset when the fault is in a particular field.
        what: Box<str>,
    },
    /// A tokenizer could not be built or used: its description in a model file is missing,
    /// malformed or of a kind this crate does not support (input data), or an id passed to
    /// `decode` is outside the vocabulary (caller).
    #[error("tokenizer from {origin}: {what}")]
    Tokenizer {
        /// The file it came from.
        origin: Box<str>,
        /// What is wrong.
        what: Box<str>,
    },
    /// A chat template could not be compiled or rendered: a syntax error, a template that
    /// raises on its input (`raise_exception`), one that ran out of its fuel or recursion
    /// budget, or one whose turns cannot be located for an assistant mask (input data).
    #[error("chat template from {origin}: {what}")]
    ChatTemplate {
        /// The file it came from.
        origin: Box<str>,
        /// What went wrong, with the template's line where minijinja knows it.
        what: Box<str>,
    },
    /// No tensor with this name in the file (caller).
    #[error("no tensor named `{name}` in {path}")]
    NoSuchTensor {
        /// The file that was searched.
        path: Box<Path>,
        /// The name asked for.
        name: Box<str>,
    },
    /// The Parquet or Arrow decoder panicked on this input. The panic is contained and reported
    /// here rather than unwinding through the caller (input data, and a bug in the decoder).
    #[error("decoder panicked on {path}: {message}")]
    DecoderPanic {
        /// The file being decoded.
        path: Box<Path>,
        /// The panic message.
        message: Box<str>,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn tensor_file(
        path: &Path,
        format: TensorFormat,
        what: impl Into<Box<str>>,
    ) -> Self {
        Error::TensorFile {
            path: path.into(),
            format,
            what: what.into(),
        }
    }

    pub(crate) fn no_such_tensor(path: &Path, name: &str) -> Self {
        Error::NoSuchTensor {
            path: path.into(),
            name: name.into(),
        }
    }

    pub(crate) fn arrow(path: &Path, source: arrow::error::ArrowError) -> Self {
        Error::Arrow {
            path: path.into(),
            source: Box::new(source),
        }
    }
}

/// Runs `decode` on data from `path`, turning a panic inside the Parquet or Arrow decoders into
/// [`Error::DecoderPanic`]. Malformed files have made those decoders panic before; a dataset
/// library must not take its caller down with them, nor print a "panicked at" report for what
/// it returns as an error: while `decode` runs, this thread's panics are not reported by the
/// panic hook (see [`quiet_contained_panics`]).
pub(crate) fn contain_panics<T>(path: &Path, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_contained_panics();
    CONTAINING.with(|depth| depth.set(depth.get() + 1));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode));
    CONTAINING.with(|depth| depth.set(depth.get() - 1));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            Err(Error::DecoderPanic {
                path: path.into(),
                message: message.into(),
            })
        }
    }
}

std::thread_local! {
    /// How many [`contain_panics`] calls this thread is inside.
    static CONTAINING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Wraps the process's panic hook, once: a panic on a thread inside [`contain_panics`] is
/// returned as an error, so it is not reported; every other panic reaches the hook that was
/// installed before (the default one prints "thread ... panicked at"), as it would have.
fn quiet_contained_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINING.with(|depth| depth.get()) == 0 {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned so growth is a decision: box any payload that would push it past this.
    #[test]
    fn error_stays_small() {
        assert!(
            size_of::<Error>() <= 48,
            "Error is {} bytes",
            size_of::<Error>()
        );
    }

    #[test]
    fn io_error_names_the_path_and_keeps_the_cause_as_source() {
        let error = Error::io(
            Path::new("/data/shard-0.parquet"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(error.to_string(), "i/o error on /data/shard-0.parquet");
        let source = std::error::Error::source(&error).expect("the cause is kept as source");
        assert_eq!(
            source.to_string(),
            std::io::Error::from(std::io::ErrorKind::NotFound).to_string()
        );
    }

    #[test]
    fn panics_become_typed_errors_naming_the_file() {
        let path = Path::new("bad.parquet");
        let error = contain_panics::<()>(path, || panic!("index out of bounds")).unwrap_err();
        match error {
            Error::DecoderPanic { path: at, message } => {
                assert_eq!(&*at, path);
                assert_eq!(&*message, "index out of bounds");
            }
            other => panic!("expected DecoderPanic, got {other:?}"),
        }
        assert_eq!(contain_panics(path, || Ok(7)).unwrap(), 7);
    }
}
