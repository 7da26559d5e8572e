//! S3: moto's server. `scripts/moto-venv` installs it into a venv outside the repository and
//! prints the path of its `moto_server`, which `scripts/check` exports as [`MOTO_SERVER_VAR`].

use super::{ObjectServer, ServerProcess};

/// The environment variable naming moto's `moto_server` executable.
pub const MOTO_SERVER_VAR: &str = "MLINFRA_MOTO_SERVER";

/// Credentials moto accepts (any are accepted; these are its documented test values).
pub const ACCESS_KEY: &str = "testing";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "testing";

/// A running moto server; killed on drop.
#[derive(Debug)]
pub struct S3Server {
    process: ServerProcess,
}

impl S3Server {
    /// `http://127.0.0.1:PORT`: also the base of plain-HTTP URLs of public objects
    /// (`{endpoint}/{bucket}/{key}`).
    pub fn endpoint(&self) -> String {
        self.process.endpoint()
    }

    /// Uploads `body` as a world-readable object, so plain `http://` GETs can read it too.
    pub fn put_public(&self, bucket: &str, key: &str, body: &[u8]) {
        self.process.expect(
            &[200],
            "uploading",
            ("PUT", &format!("/{bucket}/{key}")),
            &[("x-amz-acl", "public-read".to_owned())],
            body,
        );
    }
}

impl ObjectServer for S3Server {
    fn start() -> Option<S3Server> {
        let process = ServerProcess::start(MOTO_SERVER_VAR, "scripts/moto-venv", |port| {
            vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        })?;
        Some(S3Server { process })
    }

    fn storage_options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_access_key_id", ACCESS_KEY.to_owned()),
            ("aws_secret_access_key", SECRET_KEY.to_owned()),
            ("aws_region", "us-east-1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn uri(&self, bucket: &str, key: &str) -> String {
        format!("s3://{bucket}/{key}")
    }

    /// moto accepts unsigned requests.
    fn create_bucket(&self, bucket: &str) {
        self.process.expect(
            &[200],
            "creating a bucket",
            ("PUT", &format!("/{bucket}")),
            &[],
            &[],
        );
    }

    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.put_public(bucket, key, body);
    }

    fn delete(&self, bucket: &str, key: &str) {
        self.process.expect(
            &[204],
            "deleting",
            ("DELETE", &format!("/{bucket}/{key}")),
            &[],
            &[],
        );
    }
}
