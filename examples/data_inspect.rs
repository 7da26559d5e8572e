//! `data_inspect PATH`: what a Parquet dataset is, as one JSON object on stdout.
//!
//! ```text
//! $ cargo run -p mlinfra-examples --example data_inspect -- data/train/
//! {"uri":"data/train/","rows":2000000,"files":4,"row_groups":16,"columns":[...],"fingerprint":"blake3:..."}
//! ```
//!
//! PATH is anything [`Dataset::open`] accepts: a file, a directory, a glob, a `file://` URI.
//! On any failure it prints the typed error and its causes on stderr and exits with status 2;
//! it never panics, whatever the input (decoder panics are contained by `mlinfra-data`).

use std::process::ExitCode;

use mlinfra_data::Dataset;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(uri), None) = (args.next(), args.next()) else {
        eprintln!("usage: data_inspect PATH   (a Parquet file, directory, glob or file:// URI)");
        return ExitCode::from(2);
    };
    match Dataset::open(uri).and_then(|dataset| dataset.summary()) {
        Ok(summary) => {
            println!(
                "{}",
                serde_json::to_string(&summary).expect("a summary is plain data")
            );
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
