//! `csv_to_parquet INPUT OUTPUT [--json] [--skip-bad] [--compression zstd|snappy|none]`:
//! converts a CSV (or, with `--json`, JSON-lines) file to Parquet with a progress bar.
//!
//! ```text
//! $ cargo run --release -p mlinfra-examples --example csv_to_parquet -- demo.csv demo.parquet
//! error: converting demo.csv to demo.parquet: demo.csv:150002: expected 4 fields, found 2
//! $ cargo run --release -p mlinfra-examples --example csv_to_parquet -- demo.csv demo.parquet --skip-bad
//! wrote 199999 rows in 1 row groups (5577778 -> 2216754 bytes); skipped 1 bad records
//!   line 150002: expected 4 fields, found 2
//! ```
//!
//! The schema is inferred from the first records; the output has page-level statistics and a
//! page index, so readers (`mlinfra_data::Dataset::take`, pyarrow) fetch single pages. A bad record stops the conversion
//! with its line number (exit status 2), or with `--skip-bad` is counted and left out.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mlinfra_data::convert::{BadRecords, Compression, Conversion};

struct Args {
    input: String,
    output: String,
    json: bool,
    skip_bad: bool,
    compression: Compression,
}

fn parse_args() -> Result<Args> {
    let mut positional = Vec::new();
    let (mut json, mut skip_bad, mut compression) = (false, false, Compression::Zstd(3));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--skip-bad" => skip_bad = true,
            "--compression" => {
                compression = match args.next().as_deref() {
                    Some("zstd") => Compression::Zstd(3),
                    Some("snappy") => Compression::Snappy,
                    Some("none") => Compression::None,
                    other => bail!("--compression takes zstd, snappy or none, not {other:?}"),
                }
            }
            flag if flag.starts_with("--") => bail!("unknown flag {flag}"),
            _ => positional.push(arg),
        }
    }
    let [input, output]: [String; 2] = positional.try_into().map_err(|_| {
        anyhow::anyhow!(
            "usage: csv_to_parquet INPUT OUTPUT [--json] [--skip-bad] [--compression zstd|snappy|none]"
        )
    })?;
    Ok(Args {
        input,
        output,
        json,
        skip_bad,
        compression,
    })
}

fn run(args: Args) -> Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {binary_bytes}/{binary_total_bytes}  rows {msg}",
        )
        .expect("a valid template"),
    );
    let conversion = if args.json {
        Conversion::json_lines(&args.input)
    } else {
        Conversion::csv(&args.input)
    };
    let report = conversion
        .with_compression(args.compression)
        .with_bad_records(if args.skip_bad {
            BadRecords::Skip
        } else {
            BadRecords::Fail
        })
        .with_progress(|progress| {
            if let Some(total) = progress.bytes_total {
                bar.set_length(total);
            }
            bar.set_position(progress.bytes_read);
            bar.set_message(progress.rows_written.to_string());
        })
        .write(&args.output)
        .with_context(|| format!("converting {} to {}", args.input, args.output))?;
    bar.finish_and_clear();
    println!(
        "wrote {} rows in {} row groups ({} -> {} bytes); skipped {} bad records",
        report.rows_written,
        report.row_groups,
        report.bytes_in,
        report.bytes_out,
        report.records_skipped
    );
    for skipped in &report.skipped {
        println!("  line {}: {}", skipped.line, skipped.reason);
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
