//! SmolLM2-135M (Q4_1) on serve's host runner with [`SimdKernels`] (issue 24, items 3 and
//! 4): logits within a stated tolerance of burn's f32 decoder (the dequantized reference),
//! the same greedy choice at every position, and a request's logits the same bits alone or
//! in a batch of 16.

use burn::tensor::Device;
use mlinfra_data::tensor::GgufFile;
use mlinfra_kernels::cpu::SimdKernels;
use mlinfra_serve::host::HostLlamaRunner;
use mlinfra_serve::runner::{LlamaRunner, Logits, ModelRunner};
use mlinfra_serve::sched::{StepBatch, StepSeq};
use mlinfra_test_utils::log_line;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const BLOCK: usize = 16;

/// One step of several sequences, each `(tokens, start, block table)`; logits for all tokens.
fn batch(parts: &[(&[u32], usize, Vec<u32>)]) -> StepBatch {
    let mut out = StepBatch {
        copies: Vec::new(),
        tokens: Vec::new(),
        positions: Vec::new(),
        seqs: Vec::new(),
        logit_rows: Vec::new(),
    };
    for (id, (tokens, start, table)) in parts.iter().enumerate() {
        let query_start = out.tokens.len();
        out.seqs.push(StepSeq {
            id: id as u64,
            query_start,
            query_len: tokens.len(),
            context_len: start + tokens.len(),
            block_table: table.clone(),
            adapter: None,
        });
        out.logit_rows
            .extend(query_start..query_start + tokens.len());
        out.tokens.extend_from_slice(tokens);
        out.positions.extend(*start..start + tokens.len());
    }
    out
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

fn prompts(file: &GgufFile) -> Vec<Vec<u32>> {
    let tokenizer = mlinfra_data::tokenizer::Tokenizer::from_gguf(file).unwrap();
    [
        "The capital of France is",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "def fibonacci(n):\n    ",
    ]
    .iter()
    .map(|text| tokenizer.encode(text).unwrap())
    .collect()
}

/// Stated tolerances: the quantized path rounds activations to 8 bits per 32-block (and K/V
/// to f16), so its logits differ from the f32 reference's by a fraction of their spread.
/// Per row, `max |Δ| / (max - min of the reference row)`: measured 0.040 at worst on these
/// prompts, bounded at 0.08; and the KL divergence of the next-token distributions
/// (`KL(reference ‖ ours)`, nats, what llama.cpp's `perplexity --kl-divergence` reports for
/// quantizations): measured 0.0035 mean and 0.012 worst, bounded at 0.02 and 0.1. The host
/// runner on f32 kernels is within 0.0005 of the spread of the same
/// reference: the difference is the 8-bit activations, which llama.cpp computes the same
/// way. A wrong kernel (a mis-ordered nibble, a lost minimum) moves logits by the whole
/// spread.
const RELATIVE_TOLERANCE: f64 = 0.08;
/// A reference margin (logits) between the best and second-best token past which the
/// quantized path must pick the same: several times its largest logit error on the top
/// tokens (≈ 0.2).
const CLEAR_MARGIN: f32 = 1.0;
const MEAN_KL_TOLERANCE: f64 = 0.02;
const WORST_KL_TOLERANCE: f64 = 0.1;

/// `KL(softmax(p) ‖ softmax(q))` in nats, in f64.
fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let log_softmax = |x: &[f32]| -> Vec<f64> {
        let max = x.iter().fold(f64::MIN, |m, &v| m.max(f64::from(v)));
        let sum: f64 = x.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        x.iter().map(|&v| f64::from(v) - max - sum.ln()).collect()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum()
}

#[test]
fn smollm2_logits_are_the_f32_references_within_tolerance() {
    let Some(path) = mlinfra_test_utils::model(MODEL) else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let kernels = SimdKernels::new(2);
    log_line(&format!("host kernels: {}", {
        use mlinfra_serve::host::HostKernels;
        kernels.describe()
    }));
    let mut fast = HostLlamaRunner::from_gguf(&file, Box::new(kernels), 8, BLOCK).unwrap();
    let mut reference = LlamaRunner::from_gguf(&file, 8, BLOCK, &Device::flex()).unwrap();
    let (mut worst, mut worst_kl, mut kl_sum) = (0f64, 0f64, 0f64);
    let (mut agree, mut rows, mut clear) = (0, 0, 0);
    for ids in prompts(&file) {
        let step = batch(&[(&ids, 0, vec![0, 1, 2, 3])]);
        let (got, want): (Logits, Logits) = (
            fast.execute(&step).unwrap(),
            reference.execute(&step).unwrap(),
        );
        for (g, w) in got.iter().zip(want.iter()) {
            let spread = w.iter().fold(f32::MIN, |m, &v| m.max(v))
                - w.iter().fold(f32::MAX, |m, &v| m.min(v));
            let diff = g
                .iter()
                .zip(w)
                .map(|(&a, &b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(f64::from(diff / spread));
            let kl = kl_divergence(w, g);
            kl_sum += kl;
            worst_kl = worst_kl.max(kl);
            agree += usize::from(argmax(g) == argmax(w));
            // Where the reference's best two are further apart than the path's errors, the
            // greedy choice must agree.
            let best = argmax(w);
            let runner_up = w
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != best)
                .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
            if w[best] - runner_up > CLEAR_MARGIN {
                clear += 1;
                assert_eq!(argmax(g), best, "row {rows}: a clear greedy choice changed");
            }
            rows += 1;
        }
    }
    log_line(&format!(
        "SmolLM2 Q4_1, SIMD kernels vs f32 reference: worst max|Δ|/spread {worst:.4} \
         (tolerance {RELATIVE_TOLERANCE}), KL divergence mean {:.5} worst {worst_kl:.5} \
         (tolerances {MEAN_KL_TOLERANCE}, {WORST_KL_TOLERANCE}), greedy agreement \
         {agree}/{rows} positions ({clear} with a margin above {CLEAR_MARGIN}, all agreeing)",
        kl_sum / rows as f64
    ));
    assert!(worst < RELATIVE_TOLERANCE, "max |Δ| / spread = {worst}");
    assert!(
        kl_sum / (rows as f64) < MEAN_KL_TOLERANCE,
        "mean KL = {}",
        kl_sum / rows as f64
    );
    assert!(worst_kl < WORST_KL_TOLERANCE, "worst KL = {worst_kl}");
    assert!(
        clear * 2 > rows,
        "too few clear positions ({clear}/{rows}) to test"
    );
}

/// Serve's batch invariance with these kernels: 16 requests in one step (prefills of
/// different lengths), and each one's logits equal its logits alone, bit for bit, on another
/// thread count. (That the instruction sets compute the same bits is the matrix tests'.)
#[test]
fn a_request_gets_the_same_bits_alone_or_in_a_batch_of_16() {
    let Some(path) = mlinfra_test_utils::model(MODEL) else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let prompts = prompts(&file);
    let requests: Vec<Vec<u32>> = (0..16)
        .map(|i| {
            let prompt = &prompts[i % prompts.len()];
            prompt[..prompt.len().min(2 + i % 5)].to_vec()
        })
        .collect();
    let table = |i: usize| vec![i as u32];
    let mut batched =
        HostLlamaRunner::from_gguf(&file, Box::new(SimdKernels::new(2)), 16, BLOCK).unwrap();
    let parts: Vec<(&[u32], usize, Vec<u32>)> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_slice(), 0, table(i)))
        .collect();
    let together = batched.execute(&batch(&parts)).unwrap();
    let mut alone_runner =
        HostLlamaRunner::from_gguf(&file, Box::new(SimdKernels::new(1)), 16, BLOCK).unwrap();
    let rows: Vec<&[f32]> = together.iter().collect();
    let mut at = 0;
    for (i, request) in requests.iter().enumerate() {
        let alone = alone_runner
            .execute(&batch(&[(request.as_slice(), 0, table(i))]))
            .unwrap();
        for (j, (mine, theirs)) in rows[at..at + request.len()]
            .iter()
            .zip(alone.iter())
            .enumerate()
        {
            let differ = mine
                .iter()
                .zip(theirs)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                differ.is_none(),
                "request {i}, row {j}: batched logits differ from alone at id {differ:?}"
            );
        }
        at += request.len();
    }
}
