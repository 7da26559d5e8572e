//! [`Dataset`]: one logical table over many Parquet files.
//!
//! Opening reads only footers (and page indexes, when the files have them): schema, row counts
//! per file and per row group. Rows are numbered `0..num_rows` across the files in sorted path
//! order; [`Dataset::take`] and [`Dataset::scan`] read by that numbering.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use rayon::prelude::*;

use crate::error::contain_panics;
use crate::source::SourceFile;
use crate::storage::{IoCounters, Location, Mapping, ShardReader};
use crate::{Error, Result, source};

/// Default cap on the uncompressed page bytes of one row group's projected columns: 1 GiB.
/// See [`DatasetBuilder::with_max_decoded_bytes`].
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 1 << 30;

/// Options for opening a [`Dataset`].
///
/// ```no_run
/// use mlinfra_data::DatasetBuilder;
///
/// let dataset = DatasetBuilder::new("data/train-*.parquet")
///     .with_max_decoded_bytes(256 << 20)
///     .build()?;
/// # Ok::<(), mlinfra_data::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DatasetBuilder {
    uri: String,
    max_decoded_bytes: u64,
    coalesce_gap: Option<u64>,
    memory_map: bool,
    storage_options: Vec<(String, String)>,
    #[cfg(feature = "encryption")]
    decryption: Option<crate::Decryption>,
}

impl DatasetBuilder {
    /// Options for the dataset at `uri`: a Parquet file, a directory, a glob, a `file://` URI,
    /// or an object-store URI (`s3://bucket/prefix/`, `gs://`, `az://`, `https://host/x.parquet`)
    /// when the crate has the store's feature.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
            coalesce_gap: None,
            memory_map: true,
            storage_options: Vec::new(),
            #[cfg(feature = "encryption")]
            decryption: None,
        }
    }

    /// Merge reads of byte ranges at most `bytes` apart into one request, reading the gap
    /// (see [how reads are made](crate::storage)).
    ///
    /// Defaults to [`DEFAULT_LOCAL_COALESCE_GAP`](crate::storage::DEFAULT_LOCAL_COALESCE_GAP)
    /// for local files and
    /// [`DEFAULT_REMOTE_COALESCE_GAP`](crate::storage::DEFAULT_REMOTE_COALESCE_GAP) for object
    /// stores; 0 reads exactly the pages needed.
    pub fn with_coalesce_gap(mut self, bytes: u64) -> Self {
        self.coalesce_gap = Some(bytes);
        self
    }

    /// Whether local files are memory-mapped (the default) or read into buffers with `pread`.
    /// Mapping saves a copy of every byte; a file is mapped on first read and stays mapped while
    /// the dataset is open, and the contract is that no file is truncated meanwhile (see
    /// [how reads are made](crate::storage)). Footers are always read.
    pub fn with_memory_map(mut self, memory_map: bool) -> Self {
        self.memory_map = memory_map;
        self
    }

    /// An object-store configuration value, for example `("aws_endpoint",
    /// "http://127.0.0.1:9000")` or `("aws_region", "eu-west-1")`: `object_store`'s
    /// configuration keys, applied over what the environment sets (`AWS_*`, `GOOGLE_*`,
    /// `AZURE_*`). Ignored for local files.
    ///
    /// An unknown key is [`Error::InvalidOption`] from [`build`](Self::build).
    pub fn with_storage_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.storage_options.push((key.into(), value.into()));
        self
    }

    /// The most bytes one decode may make: a row group of a scan, the rows a
    /// [`take`](Dataset::take) reads from one row group, a `take`'s output. A guard against
    /// files that would exhaust memory, checked twice: against the footer's uncompressed page
    /// sizes before anything is read ([`Error::DecodeLimit`]), and against the decoded arrays
    /// as they are made, so that values repeated by reference (a dictionary value shared by
    /// many rows) count once per row ([`Error::MaterializeLimit`]; see
    /// [how](crate::materialize)).
    ///
    /// Defaults to [`DEFAULT_MAX_DECODED_BYTES`].
    pub fn with_max_decoded_bytes(mut self, bytes: u64) -> Self {
        self.max_decoded_bytes = bytes;
        self
    }

    /// Decrypt the files with these keys (Parquet modular encryption).
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn with_decryption(mut self, keys: crate::Decryption) -> Self {
        self.decryption = Some(keys);
        self
    }

    /// The reader options every shard is opened with.
    fn reader_options(&self) -> Result<ArrowReaderOptions> {
        let options = ArrowReaderOptions::new();
        #[cfg(feature = "encryption")]
        if let Some(keys) = &self.decryption {
            let properties = keys
                .properties()
                .map_err(|e| Error::parquet(Path::new(&self.uri), e))?;
            return Ok(options.with_file_decryption_properties(properties));
        }
        Ok(options)
    }

    /// Resolves the URI and reads every file's footer.
    ///
    /// # Errors
    ///
    /// [`Error::NoFiles`], [`Error::InvalidUri`], [`Error::UnsupportedScheme`] for the URI;
    /// [`Error::InvalidOption`] for an unknown storage option; [`Error::Io`],
    /// `Error::ObjectStore`, [`Error::Parquet`], [`Error::CorruptMetadata`],
    /// [`Error::DecoderPanic`] for a file that cannot be opened; [`Error::SchemaMismatch`] when
    /// files disagree.
    pub fn build(self) -> Result<Dataset> {
        let files = source::resolve(&self.uri, &self.storage_options)?;
        let options = self.reader_options()?;
        let mut shards: Vec<Shard> = files
            .into_par_iter()
            .map(|file| Shard::open(file, options.clone()))
            .collect::<Result<_>>()?;

        // `resolve` never returns an empty list, so there is a first shard.
        let schema = Arc::clone(shards[0].metadata.schema());
        if let Some(other) = shards
            .iter()
            .find(|s| s.metadata.schema().fields() != schema.fields())
        {
            return Err(Error::SchemaMismatch {
                path: other.path.as_path().into(),
                first: shards[0].path.as_path().into(),
            });
        }
        let mut first_row = 0u64;
        for shard in &mut shards {
            shard.first_row = first_row;
            first_row += shard.num_rows;
        }
        let columns: Arc<[usize]> = (0..schema.fields().len()).collect();
        Ok(Dataset {
            shared: Arc::new(Shared {
                uri: self.uri,
                shards,
                num_rows: first_row,
                max_decoded_bytes: self.max_decoded_bytes,
                manifest: std::sync::OnceLock::new(),
                io: IoCounters::default(),
                coalesce_gap: self.coalesce_gap,
                memory_map: self.memory_map,
                checked_pages: Default::default(),
                dictionary_widths: Default::default(),
            }),
            columns,
            arrangement: None,
            schema,
        })
    }
}

/// One logical table over one or many Parquet files with the same schema.
///
/// Rows are numbered `0..num_rows()` across the files in sorted path order.
///
/// # Costs
///
/// - [`open`](Dataset::open): one footer read per file, in parallel (rayon); memory is the
///   footers and page indexes, kilobytes per file.
/// - [`project`](Dataset::project), `clone`: free (views sharing the opened footers).
/// - [`take`](Dataset::take): one reader per file touched, one read and decode per page that
///   holds a requested row, for each projected column.
/// - [`scan`](Dataset::scan): every page once; at most `readahead + 1` decoded row groups alive.
#[derive(Debug, Clone)]
pub struct Dataset {
    shared: Arc<Shared>,
    /// Root column indices read, in output order.
    columns: Arc<[usize]>,
    /// Where each output column sits in a decoded batch, when that differs from output order
    /// (see [`Dataset::arrange`]); computed once per projection, not per batch.
    arrangement: Option<Arc<[usize]>>,
    /// The output schema: the file schema projected to `columns`.
    schema: SchemaRef,
}

#[derive(Debug)]
pub(crate) struct Shared {
    uri: String,
    shards: Vec<Shard>,
    num_rows: u64,
    max_decoded_bytes: u64,
    /// Computed on first use by [`Dataset::manifest`]: it reads every byte.
    pub(crate) manifest: std::sync::OnceLock<crate::Manifest>,
    /// What `take` and `scan` fetched ([`Dataset::bytes_read`], [`Dataset::read_requests`]).
    pub(crate) io: IoCounters,
    /// [`DatasetBuilder::with_coalesce_gap`]; `None` for each location's default.
    pub(crate) coalesce_gap: Option<u64>,
    /// [`DatasetBuilder::with_memory_map`].
    pub(crate) memory_map: bool,
    /// List pages whose row lengths were checked (see `direct.rs`).
    pub(crate) checked_pages: crate::direct::CheckedPages,
    /// Longest dictionary values of byte-array column chunks (see `materialize.rs`).
    pub(crate) dictionary_widths: crate::materialize::DictionaryWidths,
}

impl Dataset {
    /// Opens the dataset at `uri` with default options; see [`DatasetBuilder`].
    ///
    /// # Errors
    ///
    /// As [`DatasetBuilder::build`].
    pub fn open(uri: impl Into<String>) -> Result<Self> {
        DatasetBuilder::new(uri).build()
    }

    /// The URI the dataset was opened from.
    pub fn uri(&self) -> &str {
        &self.shared.uri
    }

    /// The schema of the batches this dataset returns (after projection).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows in the dataset, from the footers.
    pub fn num_rows(&self) -> u64 {
        self.shared.num_rows
    }

    /// The files, in row order.
    pub fn shards(&self) -> &[Shard] {
        &self.shared.shards
    }

    /// A view of this dataset reading only the named columns, in the given order.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchColumn`] for a name the schema does not have.
    pub fn project<S: AsRef<str>>(&self, columns: &[S]) -> Result<Dataset> {
        let file_schema = self.shared.shards[0].metadata.schema();
        let columns: Arc<[usize]> = columns
            .iter()
            .map(|name| {
                let name = name.as_ref();
                file_schema
                    .index_of(name)
                    .map_err(|_| Error::NoSuchColumn { name: name.into() })
            })
            .collect::<Result<_>>()?;
        let schema = Arc::new(
            file_schema
                .project(&columns)
                .expect("indices come from index_of on this schema"),
        );
        Ok(Dataset {
            shared: Arc::clone(&self.shared),
            arrangement: arrangement(&columns),
            columns,
            schema,
        })
    }

    /// The schema of the files, before projection.
    pub(crate) fn file_schema(&self) -> &SchemaRef {
        self.shared.shards[0].metadata.schema()
    }

    /// The root column indices read, in output order, each with its output field.
    pub(crate) fn roots(&self) -> Vec<(usize, &arrow::datatypes::Field)> {
        self.columns
            .iter()
            .copied()
            .zip(self.schema.fields().iter().map(|f| f.as_ref()))
            .collect()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The shard holding global row `row` and the row's index inside it.
    pub(crate) fn locate(&self, row: u64) -> (usize, u64) {
        let shards = &self.shared.shards;
        let shard = shards.partition_point(|s| s.first_row + s.num_rows <= row);
        (shard, row - shards[shard].first_row)
    }

    /// The Parquet projection mask of this view for `shard`.
    pub(crate) fn mask(&self, shard: &Shard) -> ProjectionMask {
        ProjectionMask::roots(
            shard.metadata.parquet_schema(),
            self.columns.iter().copied(),
        )
    }

    /// Puts a batch decoded through [`Dataset::mask`] into this view's column order: the
    /// Parquet reader returns projected columns in file order, whatever order was asked for.
    /// Free when the orders agree; otherwise a reshuffle of `Arc`s, no data copied.
    pub(crate) fn arrange(&self, batch: RecordBatch, path: &Path) -> Result<RecordBatch> {
        match &self.arrangement {
            None => Ok(batch),
            Some(positions) => batch.project(positions).map_err(|e| Error::arrow(path, e)),
        }
    }

    /// Uncompressed page bytes of this view's columns in `row_group` of `shard`, as the footer
    /// states them (untrusted: saturating).
    pub(crate) fn projected_uncompressed_bytes(&self, shard: &Shard, row_group: usize) -> u64 {
        let parquet_schema = shard.metadata.parquet_schema();
        let group = &shard.metadata.metadata().row_groups()[row_group];
        group
            .columns()
            .iter()
            .enumerate()
            .filter(|(leaf, _)| {
                self.columns
                    .contains(&parquet_schema.get_column_root_idx(*leaf))
            })
            .map(|(_, column)| u64::try_from(column.uncompressed_size()).unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add)
    }

    /// The decode cap ([`DatasetBuilder::with_max_decoded_bytes`]).
    pub(crate) fn max_decoded_bytes(&self) -> u64 {
        self.shared.max_decoded_bytes
    }

    /// Checks that decoding `row_group` of `shard` stays under the decode cap.
    pub(crate) fn check_decode_limit(&self, shard: &Shard, row_group: usize) -> Result<()> {
        let bytes = self.projected_uncompressed_bytes(shard, row_group);
        let limit = self.shared.max_decoded_bytes;
        if bytes > limit {
            return Err(Error::DecodeLimit {
                path: shard.path.as_path().into(),
                row_group,
                bytes,
                limit,
            });
        }
        Ok(())
    }
}

/// Where each of `columns` (output order) sits in a batch the Parquet reader decodes, which
/// holds the distinct columns in file order; `None` when the two orders agree.
fn arrangement(columns: &[usize]) -> Option<Arc<[usize]>> {
    let mut file_order = columns.to_vec();
    file_order.sort_unstable();
    file_order.dedup();
    if file_order == columns {
        return None;
    }
    let positions = columns
        .iter()
        .map(|c| {
            file_order
                .binary_search(c)
                .expect("file_order holds every column")
        })
        .collect();
    Some(positions)
}

/// One Parquet file of a [`Dataset`]: where it is and how its rows are grouped.
#[derive(Debug)]
pub struct Shard {
    /// The local path, or the object's URI.
    path: PathBuf,
    location: Location,
    /// The file's size when it was opened.
    size: u64,
    metadata: ArrowReaderMetadata,
    first_row: u64,
    num_rows: u64,
    /// `row_group_starts[g]` is the first row of row group `g` inside this file; one extra
    /// entry holds `num_rows`, so group `g` spans `starts[g]..starts[g + 1]`.
    row_group_starts: Vec<u64>,
    /// The file's memory map, once read with one (see [`Mapping`]).
    mapping: Mapping,
}

impl Shard {
    fn open(file: SourceFile, options: ArrowReaderOptions) -> Result<Self> {
        let SourceFile {
            path,
            location,
            listed_len,
        } = file;
        let reader = ShardReader::open(&path, &location, listed_len, None, None, None)?;
        let size = reader.len();
        let metadata = contain_panics(&path, || reader.load_metadata(options.clone()))?;
        let metadata = if crate::compat::needed(&metadata) {
            let footer_start = reader.footer_start()?;
            crate::compat::apply(metadata, footer_start, options)
                .map_err(|e| Error::parquet(&path, e))?
        } else {
            metadata
        };
        drop(reader);
        let mut row_group_starts = Vec::with_capacity(metadata.metadata().num_row_groups() + 1);
        let mut rows = 0u64;
        for group in metadata.metadata().row_groups() {
            row_group_starts.push(rows);
            let group_rows =
                u64::try_from(group.num_rows()).map_err(|_| Error::CorruptMetadata {
                    path: path.as_path().into(),
                    what: "negative row group row count".into(),
                })?;
            rows = rows
                .checked_add(group_rows)
                .ok_or_else(|| Error::CorruptMetadata {
                    path: path.as_path().into(),
                    what: "row counts overflow".into(),
                })?;
        }
        row_group_starts.push(rows);
        Ok(Shard {
            path,
            location,
            size,
            metadata,
            first_row: 0,
            num_rows: rows,
            row_group_starts,
            mapping: Default::default(),
        })
    }

    /// The file's path; for an object in an object store, its URI (`s3://bucket/key`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes when the dataset was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Rows in this file (the sum of its row groups' counts).
    pub fn num_rows(&self) -> u64 {
        self.num_rows
    }

    /// The dataset-wide index of this file's first row.
    pub fn first_row(&self) -> u64 {
        self.first_row
    }

    /// Rows in each row group, in file order.
    pub fn row_group_rows(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.row_group_starts.windows(2).map(|w| w[1] - w[0])
    }

    /// Row groups in this file.
    pub fn num_row_groups(&self) -> usize {
        self.row_group_starts.len() - 1
    }

    pub(crate) fn metadata(&self) -> &ArrowReaderMetadata {
        &self.metadata
    }

    /// The row group holding file-local row `row`, and that group's first row.
    pub(crate) fn row_group_of(&self, row: u64) -> (usize, u64) {
        let group = self.row_group_starts.partition_point(|&start| start <= row) - 1;
        (group, self.row_group_starts[group])
    }

    /// Rows in row group `group`.
    pub(crate) fn rows_in_group(&self, group: usize) -> u64 {
        self.row_group_starts[group + 1] - self.row_group_starts[group]
    }
}
