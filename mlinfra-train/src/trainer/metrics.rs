//! The trainer's outputs: JSON-lines metrics and a progress bar (rank 0 only).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::EvalSums;
use crate::{Error, Result, StepReport};

/// The metrics log: one JSON object per line, flushed per line so a crash loses at most the
/// line being written. Appends, so a resumed run continues the same file.
pub(super) struct Metrics {
    out: Option<(BufWriter<File>, Box<Path>)>,
}

/// A run killed mid-line leaves a line without its newline; ends it, so the next run's first
/// record starts a line of its own instead of gluing onto the torn one.
fn end_torn_line(file: &mut File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    file.seek(SeekFrom::End(-1))?;
    file.read_exact(&mut last)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    Ok(())
}

impl Metrics {
    pub(super) fn open(path: Option<&Path>, rank: usize) -> Result<Metrics> {
        let out = match path {
            Some(path) if rank == 0 => {
                let io = |source| Error::CheckpointIo {
                    path: path.into(),
                    source,
                };
                let mut file = File::options()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(path)
                    .map_err(io)?;
                end_torn_line(&mut file).map_err(io)?;
                Some((BufWriter::new(file), path.into()))
            }
            _ => None,
        };
        Ok(Metrics { out })
    }

    fn line(&mut self, value: serde_json::Value) -> Result<()> {
        let Some((out, path)) = &mut self.out else {
            return Ok(());
        };
        writeln!(out, "{value}")
            .and_then(|()| out.flush())
            .map_err(|source| Error::CheckpointIo {
                path: path.clone(),
                source,
            })
    }

    pub(super) fn train(
        &mut self,
        report: &StepReport,
        epoch: u64,
        step_time: Duration,
        elapsed: Duration,
        extra: &[(String, f64)],
    ) -> Result<()> {
        let mut record = json!({
            "kind": "train",
            "step": report.step + 1,
            "epoch": epoch,
            "loss": finite(report.loss),
            "grad_norm": finite(report.grad_norm),
            "clipped": report.clipped,
            "skipped": report.skipped,
            "loss_scale": report.loss_scale,
            "lr": report.lr,
            "samples": report.samples,
            "samples_per_s": report.samples as f64 / step_time.as_secs_f64().max(1e-9),
            "elapsed_s": elapsed.as_secs_f64(),
        });
        if let Some(fields) = record.as_object_mut() {
            for (name, value) in extra {
                // The trainer's own keys win over a task's of the same name.
                fields
                    .entry(name.clone())
                    .or_insert_with(|| json!(finite(*value)));
            }
        }
        self.line(record)
    }

    pub(super) fn eval(&mut self, step: u64, sums: &EvalSums) -> Result<()> {
        self.line(json!({
            "kind": "eval",
            "step": step,
            "loss": finite(sums.loss()),
            "accuracy": finite(sums.accuracy()),
            "samples": sums.samples,
        }))
    }

    pub(super) fn checkpoint(&mut self, step: u64, took: Duration) -> Result<()> {
        self.line(json!({"kind": "checkpoint", "step": step, "save_s": took.as_secs_f64()}))
    }

    pub(super) fn resume(&mut self, step: u64) -> Result<()> {
        self.line(json!({"kind": "resume", "step": step}))
    }
}

/// The records of a metrics log, as [`read_metrics`] found them.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MetricsLog {
    /// Each line that is a JSON object, in order.
    pub records: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Lines that are not (a write cut short by a crash: the last line of a killed run, which
    /// the next run ends with a newline before appending).
    pub torn_lines: usize,
}

/// Reads a metrics log written by a [`Trainer`](super::Trainer) (one JSON object per line,
/// appended to across resumed runs), skipping torn lines: a crash mid-write leaves a partial
/// line, and that must not make a finished run's log unreadable. The caller decides whether
/// [`MetricsLog::torn_lines`] is worth a warning. Reads at most 1 GiB.
///
/// # Errors
///
/// [`Error::CheckpointIo`] when the file cannot be read (missing, not a regular file, over
/// 1 GiB).
pub fn read_metrics(path: &Path) -> Result<MetricsLog> {
    let bytes =
        mlinfra_data::files::read_regular(path, 1 << 30).map_err(|source| Error::CheckpointIo {
            path: path.into(),
            source,
        })?;
    let mut log = MetricsLog::default();
    for line in bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        match serde_json::from_slice(line) {
            Ok(serde_json::Value::Object(record)) => log.records.push(record),
            _ => log.torn_lines += 1,
        }
    }
    Ok(log)
}

/// JSON has no NaN or infinity: they are written as `null`.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// A progress bar over optimizer steps with the latest loss and learning rate.
pub(super) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub(super) fn new(visible: bool, done: u64, total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if visible {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_position(done);
        Progress { bar }
    }

    pub(super) fn step(&mut self, report: &StepReport) {
        self.bar.set_position(report.step + 1);
        self.bar
            .set_message(format!("loss {:.4} lr {:.2e}", report.loss, report.lr));
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21, defect 9: one torn line (a launch killed mid-write) made reading the log
    /// fail, so `train_digits` exited 2 after its training had finished, and its supervisor
    /// relaunched it until it gave up. Torn lines are skipped and counted, wherever the next
    /// launch's newline left them.
    #[test]
    fn torn_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let log = concat!(
            "{\"kind\":\"train\",\"step\":1,\"loss\":2.0}\n",
            "{\"kind\":\"train\",\"step\":2,\"lo\n",
            "{\"kind\":\"resume\",\"step\":1}\n",
            "\n",
            "{\"kind\":\"eval\",\"step\":2,\"loss\":1.5}\n",
            "{\"kind\":\"train\",\"st"
        );
        std::fs::write(&path, log).unwrap();
        let read = read_metrics(&path).unwrap();
        assert_eq!(read.torn_lines, 2);
        let kinds: Vec<&str> = read
            .records
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["train", "resume", "eval"]);
        // What the writer does on the next launch: end the torn line, then append.
        let mut metrics = Metrics::open(Some(&path), 0).unwrap();
        metrics.resume(2).unwrap();
        drop(metrics);
        let read = read_metrics(&path).unwrap();
        assert_eq!((read.records.len(), read.torn_lines), (4, 2));
        assert!(matches!(
            read_metrics(&dir.path().join("missing.jsonl")),
            Err(Error::CheckpointIo { .. })
        ));
    }
}
