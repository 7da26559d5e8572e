//! `data_inspect [--scan] PATH`: what a Parquet dataset is, as one JSON object on stdout.
//!
//! ```text
//! $ cargo run -p mlinfra-examples --example data_inspect -- data/train/
//! {"uri":"data/train/","rows":2000000,"files":4,"row_groups":16,"columns":[...],"fingerprint":"blake3:..."}
//! $ cargo run -p mlinfra-examples --example data_inspect -- --scan data/train/
//! {"uri":"data/train/",...,"scanned_rows":2000000}
//! ```
//!
//! PATH is anything [`Dataset::open`] accepts: a file, a directory, a glob, a `file://` URI.
//! Without `--scan` only footers are read. With it, every column of every row group is
//! decoded through the dataset's scan, and `scanned_rows` is the row count decoded (equal to
//! `rows` for a sound dataset): a bad page anywhere is found, not just a bad footer.
//!
//! On any failure it prints the typed error and its causes on stderr and exits with status 2;
//! it never panics, whatever the input (decoder panics are contained by `mlinfra-data`).

use std::process::ExitCode;

use mlinfra_data::Dataset;

const USAGE: &str =
    "usage: data_inspect [--scan] PATH   (a Parquet file, directory, glob or file:// URI)";

fn main() -> ExitCode {
    let mut scan = false;
    let mut uri = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--scan" if !scan => scan = true,
            _ if uri.is_none() && !arg.starts_with("--") => uri = Some(arg),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(uri) = uri else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match inspect(uri, scan) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(2)
        }
    }
}

/// The dataset's summary as JSON; with `scan`, plus the rows a full decode returned.
fn inspect(uri: String, scan: bool) -> mlinfra_data::Result<serde_json::Value> {
    let dataset = Dataset::open(uri)?;
    let mut summary = serde_json::to_value(dataset.summary()?).expect("a summary is plain data");
    if scan {
        let mut rows = 0u64;
        for batch in dataset.scan().build() {
            rows += batch?.num_rows() as u64;
        }
        summary["scanned_rows"] = rows.into();
    }
    Ok(summary)
}
