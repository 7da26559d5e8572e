//! The host-memory runner (issue 24) on its reference kernels: its logits are transformers'
//! (the tiny fixture mlinfra-train checks its decoder with), steps through the paged KV
//! memory give the full forward's logits, a request's logits do not depend on its batch, and
//! files and batches that do not fit are typed errors.

use std::path::{Path, PathBuf};

use mlinfra_data::tensor::GgufFile;
use mlinfra_serve::Error;
use mlinfra_serve::host::{HostLlamaRunner, KvPrecision, ReferenceKernels};
use mlinfra_serve::runner::ModelRunner;
use mlinfra_serve::sched::{StepBatch, StepSeq};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mlinfra-train/tests/it/llama")
        .join(name)
}

fn tiny_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny.json")).unwrap()).unwrap()
}

fn tiny_runner(precision: KvPrecision) -> HostLlamaRunner {
    let file = GgufFile::open(fixture("tiny.gguf")).unwrap();
    HostLlamaRunner::from_gguf(&file, Box::new(ReferenceKernels), 8, 4)
        .unwrap()
        .with_kv_precision(precision)
}

/// One step of sequence `id`: `tokens` after `start` known ones, in the blocks `table`,
/// logits for every token.
fn seq_step(
    id: u64,
    query_start: usize,
    tokens: &[u32],
    start: usize,
    table: &[u32],
) -> (StepSeq, Vec<usize>) {
    (
        StepSeq {
            id,
            query_start,
            query_len: tokens.len(),
            context_len: start + tokens.len(),
            block_table: table.to_vec(),
            adapter: None,
        },
        (start..start + tokens.len()).collect(),
    )
}

/// A batch of several sequences' steps: `(tokens, start, block table)` each; logits for all.
fn batch(parts: &[(&[u32], usize, &[u32])]) -> StepBatch {
    let mut out = StepBatch {
        copies: Vec::new(),
        tokens: Vec::new(),
        positions: Vec::new(),
        seqs: Vec::new(),
        logit_rows: Vec::new(),
    };
    for (id, &(tokens, start, table)) in parts.iter().enumerate() {
        let query_start = out.tokens.len();
        let (seq, positions) = seq_step(id as u64, query_start, tokens, start, table);
        out.logit_rows
            .extend(query_start..query_start + tokens.len());
        out.tokens.extend_from_slice(tokens);
        out.positions.extend(positions);
        out.seqs.push(seq);
    }
    out
}

fn tokens(json: &Value) -> Vec<u32> {
    json["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

/// The tiny model's logits at all 10 positions are transformers' float32 forward and numpy's
/// float64 one (O(1-10) logits; a wrong RoPE pairing, norm or GQA grouping is off by O(1)):
/// with f32 KV to 2e-5, and with f16 KV (llama.cpp's) to the rounding of 8-value heads.
#[test]
fn tiny_logits_are_transformers() {
    let json = tiny_json();
    let ids = tokens(&json);
    let want: Vec<f64> = json["logits_f64"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let table = [0, 1, 2];
    for (precision, tolerance) in [(KvPrecision::F32, 2e-5), (KvPrecision::F16, 5e-3)] {
        let mut runner = tiny_runner(precision);
        let logits = runner.execute(&batch(&[(&ids, 0, &table)])).unwrap();
        let diff = max_abs_diff(logits.as_slice(), &want);
        assert!(
            diff < tolerance,
            "{precision:?}: max |ours - numpy f64| = {diff}"
        );
    }
}

/// A prompt, then one token per step through the paged memory (blocks out of order), gives
/// the whole forward's logits.
#[test]
fn stepping_through_paged_memory_is_the_whole_forward() {
    let ids = tokens(&tiny_json());
    let table = [5, 2, 7];
    let mut whole = tiny_runner(KvPrecision::F32);
    let full = whole.execute(&batch(&[(&ids, 0, &table)])).unwrap();
    let mut stepped = tiny_runner(KvPrecision::F32);
    let mut rows: Vec<f32> = stepped
        .execute(&batch(&[(&ids[..4], 0, &table)]))
        .unwrap()
        .as_slice()
        .to_vec();
    for (i, &token) in ids.iter().enumerate().skip(4) {
        rows.extend_from_slice(
            stepped
                .execute(&batch(&[(&[token], i, &table)]))
                .unwrap()
                .as_slice(),
        );
    }
    let full: Vec<f64> = full.as_slice().iter().map(|&v| f64::from(v)).collect();
    let diff = max_abs_diff(&rows, &full);
    assert!(diff < 1e-5, "stepped vs whole: max diff {diff}");
}

/// A sequence's logits are the same bits alone and batched with others (prefill and decode
/// rows mixed), whatever its position in the batch.
#[test]
fn a_sequence_gets_the_same_bits_alone_or_batched() {
    let ids = tokens(&tiny_json());
    let alone = tiny_runner(KvPrecision::F16)
        .execute(&batch(&[(&ids[..7], 0, &[0, 1])]))
        .unwrap();
    let mut runner = tiny_runner(KvPrecision::F16);
    let other: Vec<u32> = ids.iter().rev().copied().collect();
    runner.execute(&batch(&[(&other[..3], 0, &[4])])).unwrap();
    let batched = runner
        .execute(&batch(&[
            (&other[3..4], 3, &[4]),
            (&ids[..7], 0, &[0, 1]),
            (&ids[2..5], 0, &[6]),
        ]))
        .unwrap();
    let rows = |logits: &mut dyn Iterator<Item = &[f32]>| -> Vec<u32> {
        logits
            .flat_map(|row| row.iter().map(|v| v.to_bits()))
            .collect()
    };
    assert_eq!(
        rows(&mut batched.iter().skip(1).take(7)),
        rows(&mut alone.iter())
    );
}

#[test]
fn batches_that_do_not_fit_are_typed_errors() {
    let ids = tokens(&tiny_json());
    let mut runner = tiny_runner(KvPrecision::F16);
    let refused = |runner: &mut HostLlamaRunner, batch: StepBatch| -> String {
        match runner.execute(&batch) {
            Err(error @ Error::InvalidBatch { .. }) => error.to_string(),
            other => panic!("expected InvalidBatch, got {other:?}"),
        }
    };
    assert!(refused(&mut runner, batch(&[(&[64], 0, &[0])])).contains("vocabulary"));
    let mut wrong_position = batch(&[(&ids[..2], 0, &[0])]);
    wrong_position.positions[1] = 5;
    assert!(refused(&mut runner, wrong_position).contains("positions"));
    assert!(refused(&mut runner, batch(&[(&ids[..2], 0, &[9])])).contains("outside"));
    let mut with_adapter = batch(&[(&ids[..2], 0, &[0])]);
    with_adapter.seqs[0].adapter = Some("alpha".into());
    assert!(refused(&mut runner, with_adapter).contains("adapter"));
    let mut past_logits = batch(&[(&ids[..2], 0, &[0])]);
    past_logits.logit_rows.push(2);
    assert!(refused(&mut runner, past_logits).contains("logit row"));
    // The runner still serves.
    assert!(runner.execute(&batch(&[(&ids[..2], 0, &[0])])).is_ok());
}

/// A file whose tensors do not fit the architecture is refused at load, naming the tensor.
#[test]
fn tensors_that_do_not_fit_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    // `blk.1.ffn_down.weight`'s first dimension (its input width, 48) becomes 40.
    let name = b"blk.1.ffn_down.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("the tensor is in tiny.gguf")
        + name.len();
    assert_eq!(bytes[at..at + 4], 2u32.to_le_bytes(), "two dimensions");
    assert_eq!(bytes[at + 4..at + 12], 48u64.to_le_bytes());
    bytes[at + 4..at + 12].copy_from_slice(&40u64.to_le_bytes());
    let path = dir.path().join("narrow.gguf");
    std::fs::write(&path, bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let error = HostLlamaRunner::from_gguf(&file, Box::new(ReferenceKernels), 8, 4).unwrap_err();
    assert!(
        matches!(&error, Error::Weights { tensor, .. } if &**tensor == "blk.1.ffn_down.weight"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("the architecture needs [48, 32]"),
        "{error}"
    );
    let file = GgufFile::open(fixture("tiny.gguf")).unwrap();
    assert!(matches!(
        HostLlamaRunner::from_gguf(&file, Box::new(ReferenceKernels), 0, 4),
        Err(Error::InvalidConfig { .. })
    ));
}
