//! Data parallelism: ranks and micro-batches change nothing but rounding; ZeRO-1 holds 1/N of
//! the optimizer state, ZeRO-2 also 1/N of the gradients; clipping is by the global norm.

use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_test_utils::rng::SplitMix64 as Rng;
use mlinfra_train::collective::{Collective, Single};
use mlinfra_train::models::{Mlp, MlpConfig};
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::{DataParallel, LossScaling, ParamLayout, Precision, Sharding, StepOptions};

use crate::collective::on_ranks;

const INPUT: usize = 6;
const CLASSES: usize = 4;

/// A seeded classification set: `rows` samples of `INPUT` features and a label.
pub(crate) struct Data {
    x: Vec<f32>,
    y: Vec<i64>,
}

impl Data {
    pub(crate) fn new(rows: usize, seed: u64) -> Data {
        let mut rng = Rng::new(seed);
        let x = rng.vec_f32(rows * INPUT, -1.0, 1.0);
        let y = (0..rows)
            .map(|_| (rng.next_u64() % CLASSES as u64) as i64)
            .collect();
        Data { x, y }
    }

    /// Rows `range` as autodiff tensors.
    fn batch(&self, range: std::ops::Range<usize>, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let n = range.len();
        let x = self.x[range.start * INPUT..range.end * INPUT].to_vec();
        let y = self.y[range].to_vec();
        (
            Tensor::from_data(TensorData::new(x, [n, INPUT]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }
}

fn config() -> MlpConfig {
    MlpConfig {
        input: INPUT,
        hidden: vec![16, 8],
        classes: CLASSES,
        seed: 3,
    }
}

fn options(sharding: Sharding) -> StepOptions {
    StepOptions {
        schedule: LrSchedule::warmup_cosine(0.05, 2, 6, 0.1),
        max_grad_norm: Some(10.0),
        sharding,
        precision: Precision::F32,
        loss_scaling: None,
    }
}

pub(crate) fn adamw() -> OptimizerConfig {
    OptimizerConfig::AdamW {
        beta1: 0.9,
        beta2: 0.99,
        epsilon: 1e-6,
        weight_decay: 0.01,
    }
}

pub(crate) fn sgd_momentum() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
        weight_decay: 1e-3,
    }
}

/// Trains `steps` steps on one rank: each step takes the global batch `global` rows from
/// `step * global`, of which this rank's share is cut into micro-batches of `micro` rows.
/// Returns the final flat weights and the optimizer state bytes.
pub(crate) fn train<C: Collective>(
    collective: C,
    optimizer: &OptimizerConfig,
    sharding: Sharding,
    data: &Data,
    steps: usize,
    global: usize,
    micro: &[usize],
) -> (Vec<f32>, usize) {
    let device = Device::flex().autodiff();
    let (rank, world) = (collective.rank(), collective.world());
    let model = config().init(&device).unwrap();
    let (mut engine, mut model) =
        DataParallel::new(collective, model, optimizer, options(sharding)).unwrap();
    let per_rank = global / world;
    assert_eq!(micro.iter().sum::<usize>(), per_rank);
    for step in 0..steps {
        let mut start = step * global + rank * per_rank;
        for &rows in micro {
            let (x, y) = data.batch(start..start + rows, &device);
            let grads = Mlp::loss(&model, x, y).backward();
            engine.accumulate(&model, &grads, rows as u64).unwrap();
            start += rows;
        }
        let (next, report) = engine.step(model).unwrap();
        assert_eq!(report.samples, global as u64);
        model = next;
    }
    let values = engine.layout().values(&model).unwrap();
    (values, engine.optimizer_state_bytes())
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The reference of the data-parallel tests: one process, the whole batch of 64 per step.
pub(crate) fn one_process(optimizer: &OptimizerConfig, data: &Data, steps: usize) -> Vec<f32> {
    train(
        Single,
        optimizer,
        Sharding::Replicated,
        data,
        steps,
        64,
        &[64],
    )
    .0
}

/// The acceptance test: 2 ranks with half the batch each end where 1 process with the whole
/// batch ends, to 1e-6, for AdamW and for SGD with momentum, replicated, ZeRO-1 and ZeRO-2.
#[test]
fn two_ranks_match_one_process_with_the_doubled_batch() {
    let data = Data::new(8 * 64, 11);
    for optimizer in [adamw(), sgd_momentum()] {
        let one_process = |steps| one_process(&optimizer, &data, steps);
        let single = one_process(8);
        // ZeRO-2 with two unequal micro-batches: its reduce-scatter runs per micro-batch.
        for (sharding, micro) in [
            (Sharding::Replicated, &[32][..]),
            (Sharding::Zero1, &[32][..]),
            (Sharding::Zero2, &[8, 24][..]),
        ] {
            let ranks = on_ranks(2, |c| train(c, &optimizer, sharding, &data, 8, 64, micro));
            assert_eq!(ranks[0].0, ranks[1].0, "ranks hold identical weights");
            let diff = max_abs_diff(&ranks[0].0, &single);
            assert!(
                diff <= 1e-6,
                "{optimizer:?} {sharding:?}: max |diff| {diff:e}"
            );
        }
        let moved = max_abs_diff(&one_process(0), &single);
        assert!(moved > 1e-3, "training moved the weights by {moved}");
    }
}

/// A rank that has no micro-batch in a step (its data ran out first) contributes nothing to
/// it, not the gradients of its previous step: the step equals one process over the other
/// rank's rows alone.
#[test]
fn a_rank_without_micro_batches_contributes_nothing_to_the_step() {
    /// Rank `rank`'s rows at `step`: 32 of the 64, except that rank 1 has none at step 1.
    fn rows_of(step: usize, rank: usize) -> Option<std::ops::Range<usize>> {
        let start = step * 64 + rank * 32;
        (step != 1 || rank == 0).then_some(start..start + 32)
    }
    /// Three steps over `ranks`' rows (all of them for the one-process reference).
    fn train_steps<C: Collective>(collective: C, data: &Data, sharding: Sharding) -> Vec<f32> {
        let device = Device::flex().autodiff();
        let ranks = if collective.world() == 1 {
            vec![0, 1]
        } else {
            vec![collective.rank()]
        };
        let model = config().init(&device).unwrap();
        let (mut engine, mut model) =
            DataParallel::new(collective, model, &adamw(), options(sharding)).unwrap();
        for step in 0..3 {
            for range in ranks.iter().filter_map(|&rank| rows_of(step, rank)) {
                let rows = range.len() as u64;
                let (x, y) = data.batch(range, &device);
                let grads = Mlp::loss(&model, x, y).backward();
                engine.accumulate(&model, &grads, rows).unwrap();
            }
            model = engine.step(model).unwrap().0;
        }
        engine.layout().values(&model).unwrap()
    }
    let data = Data::new(3 * 64, 14);
    let single = train_steps(Single, &data, Sharding::Replicated);
    for sharding in [Sharding::Replicated, Sharding::Zero1] {
        let ranks = on_ranks(2, |c| train_steps(c, &data, sharding));
        let diff = max_abs_diff(&ranks[0], &single);
        assert!(diff <= 1e-6, "{sharding:?}: max |diff| {diff:e}");
    }
}

/// Gradient accumulation averages: micro-batches of 16 and 48 rows equal one batch of 64.
#[test]
fn accumulation_averages_over_unequal_micro_batches() {
    let data = Data::new(5 * 64, 12);
    let (whole, _) = train(Single, &adamw(), Sharding::Replicated, &data, 5, 64, &[64]);
    let (split, _) = train(
        Single,
        &adamw(),
        Sharding::Replicated,
        &data,
        5,
        64,
        &[16, 48],
    );
    let diff = max_abs_diff(&whole, &split);
    assert!(diff <= 1e-6, "max |diff| {diff:e}");
}

/// ZeRO-1 on N ranks keeps 1/N of the AdamW state per rank (two moments of its shard),
/// against the whole state on every rank when replicated.
#[test]
fn zero1_keeps_one_nth_of_the_optimizer_state_per_rank() {
    let data = Data::new(2 * 60, 13);
    let params = {
        let model = config().init(&Device::flex()).unwrap();
        ParamLayout::of(&model).unwrap().len()
    };
    let replicated = train(Single, &adamw(), Sharding::Replicated, &data, 2, 60, &[60]).1;
    assert_eq!(
        replicated,
        2 * 4 * params,
        "AdamW: two f32 moments per parameter"
    );
    for world in [2, 3] {
        let per_rank = 60 / world;
        let ranks = on_ranks(world, |c| {
            train(c, &adamw(), Sharding::Zero1, &data, 2, 60, &[per_rank])
        });
        let bytes: Vec<usize> = ranks.iter().map(|(_, bytes)| *bytes).collect();
        assert_eq!(bytes.iter().sum::<usize>(), replicated, "{bytes:?}");
        let largest = *bytes.iter().max().unwrap();
        assert!(
            largest <= replicated.div_ceil(world) + 8,
            "world {world}: {bytes:?} of {replicated}"
        );
    }
}

/// ZeRO-2 keeps 1/N of the gradients per rank (the sum and the averaged shard), against the
/// whole sum plus a shard under ZeRO-1 and two whole vectors when replicated.
#[test]
fn zero2_keeps_one_nth_of_the_gradients_per_rank() {
    let params = {
        let model = config().init(&Device::flex()).unwrap();
        ParamLayout::of(&model).unwrap().len()
    };
    for world in [2, 3] {
        for sharding in [Sharding::Replicated, Sharding::Zero1, Sharding::Zero2] {
            let bytes = on_ranks(world, |c| {
                let device = Device::flex().autodiff();
                let model = config().init(&device).unwrap();
                let (engine, _) = DataParallel::new(c, model, &adamw(), options(sharding)).unwrap();
                (engine.gradient_bytes(), engine.shard().len())
            });
            for (got, shard) in bytes {
                let want = match sharding {
                    Sharding::Replicated => 2 * params,
                    Sharding::Zero1 => params + shard,
                    _ => 2 * shard,
                } * 4;
                assert_eq!(got, want, "{sharding:?} on {world} ranks");
                if sharding == Sharding::Zero2 {
                    assert!(shard <= params.div_ceil(world), "{shard} of {params}");
                }
            }
        }
    }
}

/// Clipping is by the global norm over all parameters, checked against an f64 reference: with
/// plain SGD at lr 1 the update is exactly the clipped gradient.
#[test]
fn clipping_scales_by_the_global_norm() {
    let device = Device::flex().autodiff();
    let data = Data::new(32, 14);
    let model = config().init(&device).unwrap();
    let options = StepOptions {
        schedule: LrSchedule::constant(1.0),
        max_grad_norm: Some(0.05),
        sharding: Sharding::Replicated,
        precision: Precision::F32,
        loss_scaling: None,
    };
    let (mut engine, model) =
        DataParallel::new(Single, model, &OptimizerConfig::sgd(), options).unwrap();
    let layout = engine.layout().clone();
    let before = layout.values(&model).unwrap();
    let (x, y) = data.batch(0..32, &device);
    let grads = model.loss(x, y).backward();
    let flat = layout.grads(&model, &grads).unwrap();
    engine.accumulate(&model, &grads, 32).unwrap();
    let (model, report) = engine.step(model).unwrap();

    let norm = flat
        .iter()
        .map(|g| f64::from(*g).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        (report.grad_norm - norm).abs() <= 1e-6 * norm,
        "{} vs {norm}",
        report.grad_norm
    );
    assert!(report.clipped && norm > 0.05);
    let scale = 0.05 / (norm + 1e-6);
    let after = layout.values(&model).unwrap();
    for i in 0..before.len() {
        let want = f64::from(before[i]) - scale * f64::from(flat[i]);
        assert!((f64::from(after[i]) - want).abs() <= 1e-6, "param {i}");
    }
    let update_norm = before
        .iter()
        .zip(&after)
        .map(|(b, a)| f64::from(b - a).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        (update_norm - 0.05).abs() < 1e-5,
        "update norm {update_norm}"
    );
}

/// Dynamic loss scaling in f16: an inf injected into a batch makes the step a no-op (weights
/// unchanged, bit for bit) and halves the scale; good steps grow it back; training then goes on
/// as if the bad batch had never come.
#[test]
fn an_injected_inf_skips_the_step_and_backs_off_the_loss_scale() {
    let device = Device::flex().autodiff();
    let data = Data::new(4 * 32, 15);
    let scaling = LossScaling {
        init_scale: 1024.0,
        growth_interval: 2,
        ..LossScaling::pytorch()
    };
    let start = |scaling| {
        let options = StepOptions {
            precision: Precision::F16,
            loss_scaling: Some(scaling),
            ..StepOptions::new(LrSchedule::constant(0.01))
        };
        let model = config().init(&device).unwrap();
        DataParallel::new(Single, model, &adamw(), options).unwrap()
    };
    let step = |engine: &mut DataParallel<Single>, model: Mlp, x: Tensor<2>, y| {
        let scale = engine.loss_scale();
        let grads = (model.loss(x, y) * scale).backward();
        engine.accumulate(&model, &grads, 32).unwrap();
        engine.step(model).unwrap()
    };
    let batch = |i: usize| data.batch(i * 32..(i + 1) * 32, &device);

    // With the bad batch: good, bad, good, good.
    let (mut engine, model) = start(scaling);
    let (model, first) = step(&mut engine, model, batch(0).0, batch(0).1);
    assert!(!first.skipped && first.loss_scale == 1024.0);
    let before = engine.layout().values(&model).unwrap();
    let (mut x, y) = batch(1);
    let mut poisoned = x.to_data().try_to_vec::<f32>().unwrap();
    poisoned[7] = f32::INFINITY;
    x = Tensor::from_data(TensorData::new(poisoned, [32, INPUT]), &device);
    let (model, bad) = step(&mut engine, model, x, y);
    assert!(bad.skipped && !bad.grad_norm.is_finite(), "{bad:?}");
    assert_eq!(engine.loss_scale(), 512.0, "backed off");
    assert!(
        engine.layout().values(&model).unwrap() == before,
        "a skipped step moved weights"
    );
    let (model, _) = step(&mut engine, model, batch(2).0, batch(2).1);
    let (model, last) = step(&mut engine, model, batch(3).0, batch(3).1);
    assert!(!last.skipped && last.loss_scale == 512.0);
    assert_eq!(engine.loss_scale(), 1024.0, "grown after 2 good steps");
    let with_bad = engine.layout().values(&model).unwrap();

    // Without it: good, good, good. The scales differ by powers of two, which f16 carries
    // exactly away from its subnormal range, so the weights agree to rounding.
    let (mut engine, model) = start(scaling);
    let (model, _) = step(&mut engine, model, batch(0).0, batch(0).1);
    let (model, _) = step(&mut engine, model, batch(2).0, batch(2).1);
    let (model, _) = step(&mut engine, model, batch(3).0, batch(3).1);
    let without = engine.layout().values(&model).unwrap();
    let diff = max_abs_diff(&with_bad, &without);
    assert!(diff <= 1e-3, "max |diff| {diff:e}");
    assert!(max_abs_diff(&with_bad, &before) > 1e-3, "training moved on");
}

/// Issue 22 (a frozen base): parameters frozen with `set_require_grad(false)` are outside the
/// engine's layout. They keep their values through training, hold no optimizer state, and the
/// rest trains as it would on its own.
#[test]
fn frozen_parameters_are_neither_trained_nor_laid_out() {
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::Tensor;

    /// Freezes the parameters whose visit index is in `frozen` (the first layer's weight and
    /// bias are indices 0 and 1).
    struct Freeze {
        next: usize,
        frozen: Vec<usize>,
    }
    impl ModuleMapper for Freeze {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let index = self.next;
            self.next += 1;
            if self.frozen.contains(&index) {
                param.set_require_grad(false)
            } else {
                param
            }
        }
    }

    let data = Data::new(64, 3);
    let device = Device::flex().autodiff();
    let model = config().init(&device).unwrap();
    let all = ParamLayout::of(&model).unwrap();
    let before = all.values(&model).unwrap();
    let model = model.map(&mut Freeze {
        next: 0,
        frozen: vec![0, 1],
    });
    let trainable = ParamLayout::trainable(&model).unwrap();
    let first_layer = all.slots()[0].len + all.slots()[1].len;
    assert_eq!(trainable.len(), all.len() - first_layer);
    assert_eq!(trainable.slots()[0].path, all.slots()[2].path);
    let (mut engine, mut model) =
        DataParallel::new(Single, model, &adamw(), options(Sharding::Replicated)).unwrap();
    for step in 0..3 {
        let (x, y) = data.batch(step * 16..(step + 1) * 16, &device);
        let grads = Mlp::loss(&model, x, y).backward();
        engine.accumulate(&model, &grads, 16).unwrap();
        model = engine.step(model).unwrap().0;
    }
    // AdamW's two f32 moments, for the trainable parameters only.
    let state = engine.optimizer_state_bytes();
    assert!(
        (2 * 4 * trainable.len()..2 * 4 * all.len()).contains(&state),
        "{state} bytes of optimizer state"
    );
    let after = all.values(&model).unwrap();
    assert_eq!(
        after[..first_layer],
        before[..first_layer],
        "a frozen weight moved"
    );
    assert_ne!(
        after[first_layer..],
        before[first_layer..],
        "the rest did not train"
    );
}
