//! Azure Blob Storage: Microsoft's Azurite emulator (npm). `scripts/azurite-install` installs
//! it outside the repository and prints the path of its `azurite-blob`, which `scripts/check`
//! exports as [`AZURITE_VAR`].
//!
//! Azurite checks Shared Key signatures, so the requests that set a test up (create a
//! container, upload, delete) are signed here with the emulator's published account key:
//! HMAC-SHA256 over the canonical request, as the Azure SDKs do.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{ObjectServer, ServerProcess};

/// The environment variable naming Azurite's `azurite-blob` executable.
pub const AZURITE_VAR: &str = "MLINFRA_AZURITE";

/// The emulator's account and key, published in Azurite's documentation.
pub const ACCOUNT: &str = "devstoreaccount1";
/// See [`ACCOUNT`].
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The REST API version the setup requests speak.
const API_VERSION: &str = "2021-08-06";

/// A running Azurite blob server; killed on drop.
#[derive(Debug)]
pub struct AzureServer {
    process: ServerProcess,
}

impl AzureServer {
    /// A signed request to `/{account}/{path}` with `query` parameters; `extra` headers must
    /// be `x-ms-*` headers (they are signed).
    fn signed(
        &self,
        expected: &[u16],
        what: &str,
        (method, path): (&str, &str),
        query: &[(&str, &str)],
        extra: &[(&str, String)],
        body: &[u8],
    ) {
        let mut headers: Vec<(&str, String)> = vec![
            ("x-ms-date", http_date(SystemTime::now())),
            ("x-ms-version", API_VERSION.to_owned()),
        ];
        headers.extend(extra.iter().cloned());
        headers.sort_by(|a, b| a.0.cmp(b.0));
        let url_path = format!("/{ACCOUNT}/{path}");
        let mut sorted_query = query.to_vec();
        sorted_query.sort();

        // The string to sign: the verb, eleven standard headers (only Content-Length is sent),
        // the x-ms-* headers, then the resource with its query parameters.
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let mut to_sign = format!("{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n");
        for (name, value) in &headers {
            to_sign.push_str(&format!("{name}:{value}\n"));
        }
        to_sign.push_str(&format!("/{ACCOUNT}{url_path}"));
        for (name, value) in &sorted_query {
            to_sign.push_str(&format!("\n{name}:{value}"));
        }
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &BASE64
                .decode(ACCOUNT_KEY)
                .expect("the published key is base64"),
        );
        let signature = BASE64.encode(ring::hmac::sign(&key, to_sign.as_bytes()));
        headers.push(("Authorization", format!("SharedKey {ACCOUNT}:{signature}")));

        let query_string: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", super::percent_encode(v)))
            .collect();
        let target = if query_string.is_empty() {
            url_path
        } else {
            format!("{url_path}?{}", query_string.join("&"))
        };
        self.process
            .expect(expected, what, (method, &target), &headers, body);
    }
}

impl ObjectServer for AzureServer {
    fn start() -> Option<AzureServer> {
        let process = ServerProcess::start(AZURITE_VAR, "scripts/azurite-install", |port| {
            [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--silent",
            ]
            .map(str::to_owned)
            .to_vec()
        })?;
        Some(AzureServer { process })
    }

    /// Path-style URLs under the emulator's account, signed with its key.
    fn storage_options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", ACCOUNT.to_owned()),
            ("azure_storage_account_key", ACCOUNT_KEY.to_owned()),
            (
                "azure_storage_endpoint",
                format!("{}/{ACCOUNT}", self.process.endpoint()),
            ),
            ("azure_allow_http", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn uri(&self, bucket: &str, key: &str) -> String {
        format!("az://{bucket}/{key}")
    }

    fn create_bucket(&self, bucket: &str) {
        self.signed(
            &[201],
            "creating a container",
            ("PUT", bucket),
            &[("restype", "container")],
            &[],
            &[],
        );
    }

    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.signed(
            &[201],
            "uploading",
            ("PUT", &format!("{bucket}/{key}")),
            &[],
            &[("x-ms-blob-type", "BlockBlob".to_owned())],
            body,
        );
    }

    fn delete(&self, bucket: &str, key: &str) {
        self.signed(
            &[202],
            "deleting",
            ("DELETE", &format!("{bucket}/{key}")),
            &[],
            &[],
            &[],
        );
    }
}

/// `time` as an RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`), as HTTP and Azure want it.
fn http_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn http_dates_match_published_examples() {
        // RFC 7231's example, and a leap day.
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(
            super::http_date(at(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            super::http_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(super::http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
