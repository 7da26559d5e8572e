//! [`Decryption`]: keys for Parquet modular encryption (the `encryption` feature).
//!
//! Parquet encrypts the footer and each column with AES-GCM under keys the writer chose: one
//! footer key, and optionally one key per column. Give the keys you have; a column whose key
//! is missing stays unreadable (reading it is an error, other columns still read). AES-GCM-CTR
//! files and keys held by a KMS (key metadata only) are not supported by the underlying reader
//! and are refused with a typed error.

use std::sync::Arc;

use parquet::encryption::decrypt::FileDecryptionProperties;

/// Decryption keys for a dataset's files (Parquet modular encryption, AES-GCM).
///
/// Give the footer key and the keys of the columns you may read; a column whose key is
/// missing stays unreadable. AES-GCM-CTR files and KMS-wrapped keys are refused with a typed
/// error by the underlying reader.
///
/// ```
/// use mlinfra_data::{DatasetBuilder, Decryption};
///
/// let keys = Decryption::new(b"0123456789012345")
///     .with_column_key("double_field", b"1234567890123450")
///     .with_column_key("float_field", b"1234567890123451");
/// let builder = DatasetBuilder::new("secret.parquet.encrypted").with_decryption(keys);
/// # let _ = builder;
/// ```
#[derive(Clone)]
pub struct Decryption {
    footer_key: Vec<u8>,
    column_keys: Vec<(String, Vec<u8>)>,
    aad_prefix: Option<Vec<u8>>,
}

impl std::fmt::Debug for Decryption {
    /// Keys are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryption")
            .field("footer_key", &"<redacted>")
            .field(
                "columns",
                &self.column_keys.iter().map(|(c, _)| c).collect::<Vec<_>>(),
            )
            .field("aad_prefix", &self.aad_prefix.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Decryption {
    /// Keys starting with the footer key (16, 24 or 32 bytes: AES-128, -192, -256).
    pub fn new(footer_key: impl AsRef<[u8]>) -> Self {
        Decryption {
            footer_key: footer_key.as_ref().to_vec(),
            column_keys: Vec::new(),
            aad_prefix: None,
        }
    }

    /// The key of column `column` (its dotted path for nested columns).
    pub fn with_column_key(mut self, column: &str, key: impl AsRef<[u8]>) -> Self {
        self.column_keys
            .push((column.to_owned(), key.as_ref().to_vec()));
        self
    }

    /// The AAD prefix, for files written without storing it.
    pub fn with_aad_prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.aad_prefix = Some(prefix.as_ref().to_vec());
        self
    }

    pub(crate) fn properties(&self) -> parquet::errors::Result<Arc<FileDecryptionProperties>> {
        let mut builder = FileDecryptionProperties::builder(self.footer_key.clone());
        for (column, key) in &self.column_keys {
            builder = builder.with_column_key(column, key.clone());
        }
        if let Some(prefix) = &self.aad_prefix {
            builder = builder.with_aad_prefix(prefix.clone());
        }
        builder.build()
    }
}
