//! Post-training (issue 22, items 5 and 6): forward passes over packed rows, the SFT loss on
//! masked tokens, SFT through the trainer, and DPO.

use std::sync::Arc;

use arrow::array::{BooleanBuilder, Int32Builder, ListBuilder, RecordBatch};
use burn::tensor::{Device, Tensor, TensorData};
use mlinfra_data::Dataset;
use mlinfra_loader::{Loader, Pack, Shuffle, TensorBatch, Tensors};
use mlinfra_train::collective::Single;
use mlinfra_train::models::{Llama, PackedRows};
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::peft::{LoraConfig, TargetModules};
use mlinfra_train::post_training::{DEFAULT_BETA, Dpo, Sft};
use mlinfra_train::trainer::{Task, TrainerConfig};
use mlinfra_train::{Precision, Sharding, SplitMix64, StepOptions, Trainer};

use crate::fixtures::{llama_logits, tiny_llama, tiny_llama_config, write_parquet};

/// `sequences` packed into rows of `seq_len` in the order given, each row's sequences listed.
fn pack(rows: &[&[&[u32]]], seq_len: usize) -> PackedRows {
    let mut packed = PackedRows {
        rows: rows.len(),
        seq_len,
        tokens: vec![0; rows.len() * seq_len],
        positions: vec![0; rows.len() * seq_len],
        segments: vec![0; rows.len() * seq_len],
    };
    for (r, sequences) in rows.iter().enumerate() {
        let mut at = r * seq_len;
        for (s, sequence) in sequences.iter().enumerate() {
            for (p, &t) in sequence.iter().enumerate() {
                packed.tokens[at] = t;
                packed.positions[at] = p;
                packed.segments[at] = s as u32 + 1;
                at += 1;
            }
        }
    }
    packed
}

const A: &[u32] = &[3, 17, 5, 40, 2];
const B: &[u32] = &[9, 33, 21, 8];
const C: &[u32] = &[1, 44, 12, 12, 30, 7, 6];

/// Each sequence of a packed row computes what it computes alone: attention stays inside its
/// segment, positions restart, padding changes nothing.
#[test]
fn packed_sequences_compute_as_if_alone() {
    let device = Device::flex();
    let model = tiny_llama(&device);
    let rows = pack(&[&[A, B], &[C]], 12);
    let cells: Vec<usize> = (0..rows.cells())
        .filter(|&c| rows.segments[c] != 0)
        .collect();
    let logits = model
        .packed_logits(&rows, &cells)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let vocab = tiny_llama_config().vocab_size;
    // The selected cells, in order: A, B, then C (row 1).
    for (sequence, start) in [(A, 0), (B, A.len()), (C, A.len() + B.len())] {
        let alone = llama_logits(&model, sequence);
        let packed = &logits[start * vocab..(start + sequence.len()) * vocab];
        let diff = alone
            .iter()
            .zip(packed)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "sequence at {start}: {diff}");
    }
    let error = model.packed_logits(&rows, &[24]).unwrap_err().to_string();
    assert!(error.contains("cell 24 is outside the 24 cells"), "{error}");
    let error = model.packed_logits(&rows, &[9]).unwrap_err().to_string();
    assert!(error.contains("cell 9 is padding"), "{error}");
    let mut empty = rows.clone();
    empty.segments.fill(0);
    let error = model.packed_logits(&empty, &[0]).unwrap_err().to_string();
    assert!(error.contains("all 24 cells are padding"), "{error}");
}

fn batch_of(rows: &PackedRows, mask: &[bool]) -> TensorBatch {
    let shape = [rows.rows, rows.seq_len];
    let ints = |v: Vec<i64>| TensorData::new(v, shape);
    TensorBatch::from_columns(vec![
        (
            "ids".into(),
            ints(rows.tokens.iter().map(|&t| i64::from(t)).collect()),
        ),
        (
            "ids_positions".into(),
            ints(rows.positions.iter().map(|&p| p as i64).collect()),
        ),
        (
            "ids_segments".into(),
            TensorData::new(
                rows.segments.iter().map(|&s| s as i32).collect::<Vec<_>>(),
                shape,
            ),
        ),
        (
            "ids_loss_mask".into(),
            TensorData::new(mask.to_vec(), shape),
        ),
    ])
}

/// The SFT loss against an f64 reference computed from each sequence's own forward pass:
/// the mean of `-log softmax(logits[t])[token[t+1]]` over the masked next tokens that stay in
/// their sequence.
#[test]
fn the_sft_loss_is_the_mean_over_masked_next_tokens() {
    let device = Device::flex();
    let model = tiny_llama(&device);
    let rows = pack(&[&[A, B], &[C]], 12);
    // Mask: A's last two, all of B (its first token is never scored: nothing precedes it),
    // C's tokens 3..6, and padding (never scored).
    let mut mask = vec![false; rows.cells()];
    for cell in [3, 4, 5, 6, 7, 8, 15, 16, 17, 20, 21, 22, 23] {
        mask[cell] = true;
    }
    let mut reference = Vec::new();
    for (sequence, start) in [(A, 0usize), (B, A.len()), (C, 12)] {
        let logits = llama_logits(&model, sequence);
        let vocab = tiny_llama_config().vocab_size;
        for t in 0..sequence.len() - 1 {
            if !mask[start + t + 1] {
                continue;
            }
            let row: Vec<f64> = logits[t * vocab..(t + 1) * vocab]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let max = row.iter().copied().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            reference.push(lse - row[sequence[t + 1] as usize]);
        }
    }
    let want = reference.iter().sum::<f64>() / reference.len() as f64;
    let mut rng = SplitMix64::new(1);
    let (loss, count) = Sft::new("ids")
        .loss(&model, batch_of(&rows, &mask), &device, &mut rng)
        .unwrap();
    assert_eq!(count, reference.len() as u64);
    assert_eq!(count, 2 + 3 + 3);
    let got = f64::from(loss.into_scalar::<f32>());
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

/// A one-rank trainer of an adapter: AdamW at 1e-2 with `warmup` steps and cosine decay over
/// `steps`, clipping at 1.0, metrics to `metrics`.
fn adapter_trainer<T: Task<Llama>>(
    model: Llama,
    task: T,
    loader: mlinfra_loader::LoaderBuilder,
    (steps, warmup, metrics): (u64, u64, &std::path::Path),
    seed: u64,
) -> Trainer<Single, Llama, T> {
    let options = StepOptions {
        schedule: LrSchedule::warmup_cosine(1e-2, warmup, steps, 0.1),
        max_grad_norm: Some(1.0),
        sharding: Sharding::Replicated,
        precision: Precision::F32,
        loss_scaling: None,
    };
    let config = TrainerConfig {
        steps,
        micro_batches: 1,
        eval_every: None,
        checkpoint: None,
        metrics: Some(metrics.to_path_buf()),
        progress: false,
        seed,
    };
    Trainer::new(
        Single,
        model,
        task,
        loader,
        &OptimizerConfig::adamw(),
        options,
        config,
    )
    .unwrap()
}

/// Sequences `prompt ++ answer` where the answer is a fixed function of the prompt.
fn toy_sequences(count: usize) -> Vec<(Vec<i32>, Vec<bool>)> {
    let mut rng = SplitMix64::new(21);
    (0..count)
        .map(|_| {
            let len = 3 + (rng.next_u64() % 4) as usize;
            let prompt: Vec<i32> = (0..len).map(|_| 4 + (rng.next_u64() % 20) as i32).collect();
            let answer = [prompt[0] + 20, prompt[len - 1] + 20, 1];
            let tokens: Vec<i32> = prompt.iter().chain(&answer).copied().collect();
            let mask = (0..tokens.len()).map(|i| i >= len).collect();
            (tokens, mask)
        })
        .collect()
}

fn write_sequences(path: &std::path::Path, sequences: &[(Vec<i32>, Vec<bool>)]) {
    let mut ids = ListBuilder::new(Int32Builder::new());
    let mut masks = ListBuilder::new(BooleanBuilder::new());
    for (tokens, mask) in sequences {
        ids.values().append_slice(tokens);
        ids.append(true);
        masks.values().append_slice(mask);
        masks.append(true);
    }
    let batch = RecordBatch::try_from_iter([
        ("input_ids", Arc::new(ids.finish()) as _),
        ("assistant_masks", Arc::new(masks.finish()) as _),
    ])
    .unwrap();
    write_parquet(path, &batch);
}

/// LoRA SFT through the trainer on packed rows: the adapter learns the answers (the loss on
/// them falls by more than half) while the frozen base does not move.
#[test]
fn lora_sft_on_packed_rows_learns_and_leaves_the_base_alone() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sft.parquet");
    write_sequences(&path, &toy_sequences(96));
    let dataset = Arc::new(Dataset::open(path.to_str().unwrap()).unwrap());
    let loader = Loader::builder(dataset, 16)
        .collate(
            Tensors::new()
                .columns(["input_ids", "assistant_masks"])
                .pack("input_ids", Pack::new(32, 0).loss_mask("assistant_masks")),
        )
        .shuffle(Shuffle::Exact)
        .seed(3);
    let lora = LoraConfig::new(8, 16.0).with_target_modules(TargetModules::all_linear());
    let adapted = tiny_llama(&device).with_adapter("sft", &lora, 2).unwrap();
    let base_before = llama_logits(&adapted.clone().with_adapters_enabled(false), A);
    let steps = 60;
    let metrics = dir.path().join("metrics.jsonl");
    let mut trainer = adapter_trainer(
        adapted,
        Sft::new("input_ids"),
        loader,
        (steps, 5, &metrics),
        1,
    );
    let summary = trainer.fit().unwrap();
    let log = mlinfra_train::trainer::read_metrics(&metrics).unwrap();
    let losses: Vec<f64> = log
        .records
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    mlinfra_test_utils::log_line(&format!(
        "LoRA SFT on packed rows: loss {first:.3} -> {:.3} in {steps} steps ({} scored tokens)",
        summary.last_loss, summary.samples
    ));
    assert!(
        summary.last_loss < 0.5 * first,
        "loss {first} -> {}",
        summary.last_loss
    );
    let trained = trainer.model().clone();
    let base_after = llama_logits(&trained.clone().with_adapters_enabled(false), A);
    assert_eq!(base_before, base_after, "the frozen base moved");
}

/// A hand-built DPO batch: each pair's prompt with its chosen and rejected answers, padded on
/// the right.
fn dpo_batch(pairs: &[(Vec<u32>, Vec<u32>, Vec<u32>)]) -> TensorBatch {
    let mut columns = Vec::new();
    for (name, pick) in [
        (
            "chosen",
            (|p: &(Vec<u32>, Vec<u32>, Vec<u32>)| &p.1) as fn(&_) -> &Vec<u32>,
        ),
        ("rejected", |p| &p.2),
    ] {
        let len = pairs
            .iter()
            .map(|p| p.0.len() + pick(p).len())
            .max()
            .unwrap();
        let (mut ids, mut mask, mut completion) = (Vec::new(), Vec::new(), Vec::new());
        for pair in pairs {
            let answer = pick(pair);
            let real = pair.0.len() + answer.len();
            ids.extend(pair.0.iter().chain(answer).map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(0, len - real));
            mask.extend((0..len).map(|i| i < real));
            completion.extend((0..len).map(|i| i32::from(i >= pair.0.len() && i < real)));
        }
        let shape = [pairs.len(), len];
        columns.push((name.to_owned(), TensorData::new(ids, shape)));
        columns.push((format!("{name}_mask"), TensorData::new(mask, shape)));
        columns.push((
            format!("{name}_completion"),
            TensorData::new(completion, shape),
        ));
    }
    TensorBatch::from_columns(columns)
}

fn toy_pairs(count: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let len = 2 + (rng.next_u64() % 3) as usize;
            let prompt: Vec<u32> = (0..len).map(|_| 4 + (rng.next_u64() % 20) as u32).collect();
            let right = prompt[0] + 20;
            let wrong = 4 + (right - 4 + 1 + (rng.next_u64() % 40) as u32) % 44;
            (prompt, vec![right, 1], vec![wrong, 1])
        })
        .collect()
}

/// TRL's check: with the adapter's `B` at zero the policy is the reference, so every reward
/// is 0 and the loss is ln 2.
#[test]
fn the_dpo_loss_is_ln_2_at_the_start() {
    let device = Device::flex().autodiff();
    let lora = LoraConfig::new(4, 8.0).with_target_modules(TargetModules::all_linear());
    let policy = tiny_llama(&device).with_adapter("dpo", &lora, 3).unwrap();
    let dpo = Dpo::new(DEFAULT_BETA, "chosen", "rejected").unwrap();
    let (losses, sums) = dpo
        .pair_losses(&policy, dpo_batch(&toy_pairs(6, 1)))
        .unwrap();
    let loss = f64::from(losses.mean().into_scalar::<f32>());
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "{loss}");
    assert_eq!(sums.pairs, 6);
    assert!(sums.reward_chosen.abs() < 1e-9 && sums.reward_rejected.abs() < 1e-9);
    // Precomputed reference log-probs (TRL's precompute_ref_log_probs) of the policy itself,
    // here with a non-zero `B`: ln 2 again, and not when the reference is the base.
    let moved = LoraConfig::new(4, 8.0)
        .with_target_modules(TargetModules::all_linear())
        .with_init_lora_weights(false);
    let policy = tiny_llama(&device).with_adapter("dpo", &moved, 3).unwrap();
    let pairs = toy_pairs(6, 1);
    let (chosen, rejected) = dpo.completion_logps(&policy, dpo_batch(&pairs)).unwrap();
    let mut columns = dpo_batch(&pairs).into_columns();
    columns.push(("ref_chosen_logps".into(), TensorData::new(chosen, [6])));
    columns.push(("ref_rejected_logps".into(), TensorData::new(rejected, [6])));
    let (losses, _) = dpo
        .pair_losses(&policy, TensorBatch::from_columns(columns))
        .unwrap();
    let loss = f64::from(losses.mean().into_scalar::<f32>());
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "{loss}");
    let (losses, _) = dpo.pair_losses(&policy, dpo_batch(&pairs)).unwrap();
    let against_base = f64::from(losses.mean().into_scalar::<f32>());
    assert!(
        (against_base - std::f64::consts::LN_2).abs() > 1e-3,
        "{against_base}"
    );
    // An empty completion is refused, naming the pair.
    let mut pairs = toy_pairs(2, 1);
    pairs[1].2.clear();
    let error = dpo
        .pair_losses(&policy, dpo_batch(&pairs))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("pair 1 of the batch has an empty `rejected` completion"),
        "{error}"
    );
}

/// Visits the trainable parameters in order: reads each one's gradient, or moves element
/// `index` of parameter `which` by `delta`.
struct Trainable<'a> {
    seen: usize,
    which: usize,
    index: usize,
    delta: f64,
    grads: Option<&'a burn::tensor::Gradients>,
    read: Vec<f64>,
}

impl burn::module::ModuleMapper for Trainable<'_> {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        if !param.is_require_grad() {
            return param;
        }
        let here = self.seen;
        self.seen += 1;
        if here != self.which {
            return param;
        }
        if let Some(grads) = self.grads {
            let grad = param.val().grad(grads).unwrap();
            self.read = grad
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap();
            return param;
        }
        let (index, delta) = (self.index, self.delta);
        param.map(|t| {
            let shape = t.shape();
            let mut values = t
                .clone()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap();
            values[index] += delta;
            Tensor::<D>::from_data(
                TensorData::new(values, shape),
                (&t.device(), burn::tensor::DType::F64),
            )
            .require_grad()
        })
    }
}

/// DPO's gradients with respect to the adapter against central finite differences, in f64,
/// with a non-zero `B` so that policy and reference differ.
#[test]
fn dpo_gradients_match_finite_differences_in_f64() {
    use burn::module::Module;
    let device = Device::flex().autodiff();
    let lora = LoraConfig::new(2, 4.0)
        .with_target_modules(TargetModules::names(["q_proj", "down_proj"]))
        .with_init_lora_weights(false);
    let base = mlinfra_train::precision::cast_module(tiny_llama(&device), burn::tensor::DType::F64);
    let policy = base.with_adapter("dpo", &lora, 9).unwrap();
    let dpo = Dpo::new(0.5, "chosen", "rejected").unwrap();
    let pairs = toy_pairs(3, 4);
    let loss_of = |m: &Llama| {
        let (losses, _) = dpo.pair_losses(m, dpo_batch(&pairs)).unwrap();
        losses.mean()
    };
    let grads = loss_of(&policy).backward();
    let mut checked = 0;
    for which in [0usize, 1, 6, 7] {
        let mut reader = Trainable {
            seen: 0,
            which,
            index: 0,
            delta: 0.0,
            grads: Some(&grads),
            read: Vec::new(),
        };
        let _ = policy.clone().map(&mut reader);
        let analytic = reader.read;
        assert!(!analytic.is_empty(), "parameter {which} has a gradient");
        for index in [0, analytic.len() / 2, analytic.len() - 1] {
            let at = |delta: f64| {
                let mut mover = Trainable {
                    seen: 0,
                    which,
                    index,
                    delta,
                    grads: None,
                    read: Vec::new(),
                };
                let moved = policy.clone().map(&mut mover);
                loss_of(&moved).into_scalar::<f64>()
            };
            let h = 1e-6;
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let exact = analytic[index];
            assert!(
                (numeric - exact).abs() < 1e-6 * (1.0 + exact.abs()),
                "parameter {which}[{index}]: autodiff {exact}, finite differences {numeric}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

/// On a separable toy set (the chosen answer follows a rule, the rejected one does not), LoRA
/// DPO through the trainer reaches a reward accuracy of 1.0, and the metrics carry TRL's names.
#[test]
fn lora_dpo_separates_a_separable_toy_set() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let pairs = toy_pairs(32, 7);
    let path = dir.path().join("pairs.parquet");
    write_pairs(&path, &pairs);
    let dataset = Arc::new(Dataset::open(path.to_str().unwrap()).unwrap());
    let pad = mlinfra_loader::Pad::new(0);
    let loader = Loader::builder(dataset, 8)
        .collate(
            Tensors::new()
                .pad("chosen", pad)
                .pad("rejected", pad)
                .pad("chosen_completion", pad)
                .pad("rejected_completion", pad),
        )
        .shuffle(Shuffle::Exact)
        .seed(5);
    let lora = LoraConfig::new(8, 16.0).with_target_modules(TargetModules::all_linear());
    let policy = tiny_llama(&device).with_adapter("dpo", &lora, 4).unwrap();
    let dpo = Dpo::new(DEFAULT_BETA, "chosen", "rejected").unwrap();
    let before = dpo.pair_losses(&policy, dpo_batch(&pairs)).unwrap().1;
    let steps = 40;
    let metrics = dir.path().join("metrics.jsonl");
    let mut trainer = adapter_trainer(policy, dpo.clone(), loader, (steps, 4, &metrics), 2);
    trainer.fit().unwrap();
    let after = dpo
        .pair_losses(trainer.model(), dpo_batch(&pairs))
        .unwrap()
        .1;
    mlinfra_test_utils::log_line(&format!(
        "LoRA DPO on a separable toy set: reward accuracy {:.2} -> {:.2}, loss {:.3} -> {:.3}",
        before.accuracy(),
        after.accuracy(),
        before.loss / before.pairs as f64,
        after.loss / after.pairs as f64
    ));
    assert_eq!(after.accuracy(), 1.0);
    let log = mlinfra_train::trainer::read_metrics(&metrics).unwrap();
    let last = log
        .records
        .iter()
        .rev()
        .find(|r| r["kind"] == "train")
        .unwrap();
    for name in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(last[name].is_f64(), "{name} missing from {last:?}");
    }
    assert!(last["rewards/margins"].as_f64().unwrap() > 0.0);
}

fn write_pairs(path: &std::path::Path, pairs: &[(Vec<u32>, Vec<u32>, Vec<u32>)]) {
    let mut columns: Vec<(&str, arrow::array::ArrayRef)> = Vec::new();
    for (name, pick) in [
        (
            "chosen",
            (|p: &(Vec<u32>, Vec<u32>, Vec<u32>)| &p.1) as fn(&_) -> &Vec<u32>,
        ),
        ("rejected", |p| &p.2),
    ] {
        let mut ids = ListBuilder::new(Int32Builder::new());
        let mut completion = ListBuilder::new(arrow::array::Int8Builder::new());
        for pair in pairs {
            for &t in pair.0.iter().chain(pick(pair)) {
                ids.values().append_value(t as i32);
            }
            for i in 0..pair.0.len() + pick(pair).len() {
                completion
                    .values()
                    .append_value(i8::from(i >= pair.0.len()));
            }
            ids.append(true);
            completion.append(true);
        }
        columns.push((name, Arc::new(ids.finish())));
        columns.push((
            if name == "chosen" {
                "chosen_completion"
            } else {
                "rejected_completion"
            },
            Arc::new(completion.finish()),
        ));
    }
    write_parquet(path, &RecordBatch::try_from_iter(columns).unwrap());
}
