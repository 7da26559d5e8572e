//! Checkpoints: verified, atomic, resharded, and refused when they do not fit.

use burn::tensor::{Device, Int, Tensor, TensorData};
use mlinfra_test_utils::rng::SplitMix64 as Rng;
use mlinfra_train::checkpoint::{
    Checkpoint, CheckpointConfig, Checkpointer, MANIFEST, SaveMode, Snapshot, step_dir,
};
use mlinfra_train::collective::{Collective, Single};
use mlinfra_train::models::{Mlp, MlpConfig};
use mlinfra_train::optim::{LrSchedule, OptimizerConfig};
use mlinfra_train::{DataParallel, Error, Precision, Sharding, StepOptions};

use crate::collective::on_ranks;

const INPUT: usize = 5;

fn mlp(hidden: usize, device: &Device) -> Mlp {
    MlpConfig {
        input: INPUT,
        hidden: vec![hidden],
        classes: 3,
        seed: 1,
    }
    .init(device)
    .unwrap()
}

fn options(sharding: Sharding) -> StepOptions {
    StepOptions {
        schedule: LrSchedule::constant(0.01),
        max_grad_norm: None,
        sharding,
        precision: Precision::F32,
        loss_scaling: None,
    }
}

/// An engine trained `steps` steps on seeded data (8 rows per rank per step).
fn trained<C: Collective>(collective: C, sharding: Sharding, steps: u64) -> (DataParallel<C>, Mlp) {
    let device = Device::flex().autodiff();
    let rank = collective.rank();
    let (mut engine, mut model) = DataParallel::new(
        collective,
        mlp(7, &device),
        &OptimizerConfig::adamw(),
        options(sharding),
    )
    .unwrap();
    let mut rng = Rng::new(rank as u64);
    for _ in 0..steps {
        let x = Tensor::<2>::from_data(
            TensorData::new(rng.vec_f32(8 * INPUT, -1.0, 1.0), [8, INPUT]),
            &device,
        );
        let labels: Vec<i64> = (0..8).map(|_| (rng.next_u64() % 3) as i64).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [8]), &device);
        let grads = model.loss(x, y).backward();
        engine.accumulate(&model, &grads, 8).unwrap();
        model = engine.step(model).unwrap().0;
    }
    (engine, model)
}

fn save<C: Collective>(engine: &mut DataParallel<C>, checkpointer: &mut Checkpointer, rng: u64) {
    let snapshot = engine.snapshot(None, rng).unwrap();
    checkpointer.save(engine.collective(), snapshot).unwrap();
}

/// All ranks' snapshots concatenated: the master weights and each optimizer tensor, as bits.
fn gathered(snapshots: &[Snapshot]) -> (Vec<u32>, Vec<(String, Vec<u8>)>) {
    let master = snapshots
        .iter()
        .flat_map(|s| s.master.iter().map(|v| v.to_bits()))
        .collect();
    let mut state: Vec<(String, Vec<u8>)> = Vec::new();
    for snapshot in snapshots {
        for (name, data) in &snapshot.optimizer.tensors {
            match state.iter_mut().find(|(n, _)| n == name) {
                Some((_, bytes)) => bytes.extend_from_slice(data.as_bytes()),
                None => state.push((name.clone(), data.as_bytes().to_vec())),
            }
        }
    }
    (master, state)
}

/// Saved by 2 ZeRO-1 ranks, loaded by 3 ZeRO-1 ranks and by 1 replicated rank: the restored
/// master weights and optimizer state, put back together, are the saved ones bit for bit.
#[test]
fn a_checkpoint_reshards_from_n_to_m_ranks_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let saved = on_ranks(2, |c| {
        let (mut engine, _) = trained(c, Sharding::Zero1, 3);
        let mut checkpointer = Checkpointer::new(CheckpointConfig::new(dir.path())).unwrap();
        save(&mut engine, &mut checkpointer, 7);
        engine.snapshot(None, 7).unwrap()
    });
    let expected = gathered(&saved);
    assert!(!expected.1.is_empty(), "AdamW state was saved");
    for (world, sharding) in [
        (3, Sharding::Zero1),
        (1, Sharding::Replicated),
        (2, Sharding::Replicated),
        (2, Sharding::Zero2),
    ] {
        let restored = on_ranks(world, |mut c| {
            let checkpoint = Checkpoint::latest(dir.path(), &mut c).unwrap().unwrap();
            assert_eq!(checkpoint.step(), 3);
            let device = Device::flex().autodiff();
            let (engine, _) = DataParallel::resume(
                c,
                mlp(7, &device),
                &OptimizerConfig::adamw(),
                options(sharding),
                &checkpoint,
            )
            .unwrap();
            assert_eq!(engine.steps(), 3);
            engine.snapshot(None, 0).unwrap()
        });
        let restored = match sharding {
            Sharding::Replicated => gathered(&restored[..1]),
            _ => gathered(&restored),
        };
        assert_eq!(restored, expected, "world {world} {sharding:?}");
    }
}

/// Flips one bit of, then truncates, the newest checkpoint's rank file: loading falls back to
/// the previous checkpoint and says why.
#[test]
fn a_corrupt_checkpoint_is_detected_and_the_previous_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = trained(Single, Sharding::Replicated, 1);
    let mut checkpointer = Checkpointer::new(CheckpointConfig {
        keep_last: 0,
        ..CheckpointConfig::new(dir.path())
    })
    .unwrap();
    save(&mut engine, &mut checkpointer, 1);
    let (mut engine, _) = trained(Single, Sharding::Replicated, 2);
    save(&mut engine, &mut checkpointer, 2);
    let newest = step_dir(dir.path(), 2).join("rank-00000.bpk");
    let original = std::fs::read(&newest).unwrap();

    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    std::fs::write(&newest, &flipped).unwrap();
    let checkpoint = Checkpoint::latest(dir.path(), &mut Single)
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.step(), 1);
    assert_eq!(checkpoint.skipped().len(), 1);
    assert!(
        checkpoint.skipped()[0].1.contains("sha256"),
        "{:?}",
        checkpoint.skipped()
    );
    assert!(matches!(
        Checkpoint::open(step_dir(dir.path(), 2)),
        Err(Error::CheckpointCorrupt { .. })
    ));

    std::fs::write(&newest, &original[..original.len() - 100]).unwrap();
    let checkpoint = Checkpoint::latest(dir.path(), &mut Single)
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.step(), 1);
    assert!(
        checkpoint.skipped()[0].1.contains("truncated"),
        "{:?}",
        checkpoint.skipped()
    );

    // A garbled manifest, and a directory without one (a save that crashed): both skipped.
    std::fs::write(&newest, &original).unwrap();
    std::fs::write(step_dir(dir.path(), 2).join(MANIFEST), b"{\"format\": 1,").unwrap();
    std::fs::create_dir_all(step_dir(dir.path(), 3)).unwrap();
    assert_eq!(
        Checkpoint::latest(dir.path(), &mut Single)
            .unwrap()
            .unwrap()
            .step(),
        1
    );
    // Nothing valid at all: a fresh start, not an error.
    std::fs::remove_file(step_dir(dir.path(), 1).join(MANIFEST)).unwrap();
    assert!(
        Checkpoint::latest(dir.path(), &mut Single)
            .unwrap()
            .is_none()
    );
}

/// On two ranks, one of which sees a corrupt newest checkpoint: both take the previous one.
#[test]
fn ranks_agree_on_the_checkpoint_to_load() {
    let dir = tempfile::tempdir().unwrap();
    for steps in [1, 2] {
        on_ranks(2, |c| {
            let (mut engine, _) = trained(c, Sharding::Zero1, steps);
            let mut checkpointer = Checkpointer::new(CheckpointConfig::new(dir.path())).unwrap();
            save(&mut engine, &mut checkpointer, 0);
        });
    }
    let file = step_dir(dir.path(), 2).join("rank-00001.bpk");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[300] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let steps = on_ranks(2, |mut c| {
        Checkpoint::latest(dir.path(), &mut c)
            .unwrap()
            .unwrap()
            .step()
    });
    assert_eq!(steps, [1, 1]);
}

/// A checkpoint of another model or optimizer is a typed error naming the difference.
#[test]
fn a_checkpoint_that_does_not_fit_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = trained(Single, Sharding::Replicated, 2);
    let mut checkpointer = Checkpointer::new(CheckpointConfig::new(dir.path())).unwrap();
    save(&mut engine, &mut checkpointer, 0);
    let checkpoint = Checkpoint::latest(dir.path(), &mut Single)
        .unwrap()
        .unwrap();
    let device = Device::flex().autodiff();
    let resume = |model: Mlp, optimizer: &OptimizerConfig| {
        DataParallel::resume(
            Single,
            model,
            optimizer,
            options(Sharding::Replicated),
            &checkpoint,
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let wider = resume(mlp(9, &device), &OptimizerConfig::adamw());
    assert!(
        wider.contains("layers.0.weight") && wider.contains("[5, 9]") && wider.contains("[5, 7]"),
        "{wider}"
    );
    let deeper = MlpConfig {
        input: INPUT,
        hidden: vec![7, 4],
        classes: 3,
        seed: 1,
    }
    .init(&device)
    .unwrap();
    let deeper = resume(deeper, &OptimizerConfig::adamw());
    assert!(deeper.contains("layers.1.weight"), "{deeper}");
    let sgd = resume(mlp(7, &device), &OptimizerConfig::sgd());
    assert!(sgd.contains("AdamW") && sgd.contains("Sgd"), "{sgd}");

    // The AdamW state removed from the rank file (and the manifest's hash updated): loading
    // would silently restart the moments, so it is refused.
    let stripped = tempfile::tempdir().unwrap();
    let (mut fresh, _) = trained(Single, Sharding::Replicated, 0);
    let mut snapshot = fresh.snapshot(None, 0).unwrap();
    snapshot.step = 2;
    snapshot.master = engine.snapshot(None, 0).unwrap().master;
    Checkpointer::new(CheckpointConfig::new(stripped.path()))
        .unwrap()
        .save(fresh.collective(), snapshot)
        .unwrap();
    let checkpoint = Checkpoint::latest(stripped.path(), &mut Single)
        .unwrap()
        .unwrap();
    let error = DataParallel::resume(
        Single,
        mlp(7, &device),
        &OptimizerConfig::adamw(),
        options(Sharding::Replicated),
        &checkpoint,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(error, Error::CheckpointMismatch { .. }), "{error}");
    assert!(error.to_string().contains("no AdamW state"), "{error}");
}

/// A save that cannot write (here: a file stands where its directory must go) reports the
/// error and leaves the previous checkpoint the newest valid one.
#[test]
fn a_failed_write_reports_and_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut checkpointer = Checkpointer::new(CheckpointConfig::new(dir.path())).unwrap();
    let (mut engine, _) = trained(Single, Sharding::Replicated, 1);
    save(&mut engine, &mut checkpointer, 0);
    let (mut engine, _) = trained(Single, Sharding::Replicated, 2);
    std::fs::write(step_dir(dir.path(), 2), b"in the way").unwrap();
    let snapshot = engine.snapshot(None, 0).unwrap();
    let error = checkpointer
        .save(engine.collective(), snapshot)
        .unwrap_err();
    assert!(matches!(error, Error::CheckpointIo { .. }), "{error}");
    assert!(error.to_string().contains("step-000000000002"), "{error}");
    assert_eq!(
        Checkpoint::latest(dir.path(), &mut Single)
            .unwrap()
            .unwrap()
            .step(),
        1
    );
}

/// Async: what is written is the state when `save` returned, though training went on; and
/// retention keeps the newest `keep_last`.
#[test]
fn an_async_save_writes_the_state_it_was_given_and_old_ones_are_retired() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let mut checkpointer = Checkpointer::new(CheckpointConfig {
        keep_last: 2,
        mode: SaveMode::Async,
        ..CheckpointConfig::new(dir.path())
    })
    .unwrap();
    let (mut engine, mut model) = trained(Single, Sharding::Replicated, 1);
    let mut rng = Rng::new(9);
    let mut saved = Vec::new();
    for _ in 0..4 {
        saved.push(engine.snapshot(None, 0).unwrap().master);
        save(&mut engine, &mut checkpointer, 0);
        // Train on while the write runs.
        let x = Tensor::<2>::from_data(
            TensorData::new(rng.vec_f32(8 * INPUT, -1.0, 1.0), [8, INPUT]),
            &device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64; 8], [8]), &device);
        let grads = model.loss(x, y).backward();
        engine.accumulate(&model, &grads, 8).unwrap();
        model = engine.step(model).unwrap().0;
        checkpointer.poll(engine.collective()).unwrap();
    }
    checkpointer.wait(engine.collective()).unwrap();
    let mut steps: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    steps.sort();
    assert_eq!(steps, ["step-000000000003", "step-000000000004"]);
    let checkpoint = Checkpoint::latest(dir.path(), &mut Single)
        .unwrap()
        .unwrap();
    let (restored, _) = DataParallel::resume(
        Single,
        mlp(7, &device),
        &OptimizerConfig::adamw(),
        options(Sharding::Replicated),
        &checkpoint,
    )
    .unwrap();
    assert_eq!(restored.snapshot(None, 0).unwrap().master, saved[3]);
    assert_ne!(saved[3], engine.snapshot(None, 0).unwrap().master);
}

/// Two saves (steps 1 and 2) by two ZeRO-1 ranks, each writing a file; keeps everything.
fn two_rank_checkpoints(dir: &std::path::Path) {
    for steps in [1, 2] {
        on_ranks(2, |c| {
            let (mut engine, _) = trained(c, Sharding::Zero1, steps);
            let mut checkpointer = Checkpointer::new(CheckpointConfig {
                keep_last: 0,
                ..CheckpointConfig::new(dir)
            })
            .unwrap();
            save(&mut engine, &mut checkpointer, 0);
        });
    }
}

/// Rewrites the manifest of step `step` under `dir` through `edit`.
fn edit_manifest(dir: &std::path::Path, step: u64, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = step_dir(dir, step).join(MANIFEST);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
}

/// The newest checkpoint both ranks agree on, and what the newer ones were skipped for.
fn latest_of_two_ranks(dir: &std::path::Path) -> (u64, Vec<String>) {
    let found = on_ranks(2, |mut c| {
        let checkpoint = Checkpoint::latest(dir, &mut c).unwrap().unwrap();
        let skipped: Vec<String> = checkpoint.skipped().iter().map(|s| s.1.clone()).collect();
        // Loading it must work too: no panic on the way in.
        let device = Device::flex().autodiff();
        DataParallel::resume(
            c,
            mlp(7, &device),
            &OptimizerConfig::adamw(),
            options(Sharding::Zero1),
            &checkpoint,
        )
        .unwrap();
        (checkpoint.step(), skipped)
    });
    assert_eq!(found[0], found[1]);
    found.into_iter().next().unwrap()
}

/// Issue 21, defect 4: a manifest naming one rank twice passed verification (each file
/// matched its record) and restore then panicked on a `copy_from_slice` of the wrong length.
/// It is now a corrupt checkpoint, and the previous one is used.
#[test]
fn a_manifest_with_a_duplicate_rank_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    two_rank_checkpoints(dir.path());
    edit_manifest(dir.path(), 2, |m| m["files"][1]["rank"] = 0.into());
    let (step, skipped) = latest_of_two_ranks(dir.path());
    assert_eq!(step, 1);
    assert!(skipped[0].contains("duplicate"), "{skipped:?}");
}

/// Issue 21, defect 5: a manifest saying `step: u64::MAX` made `step + 1` wrap to 0, so the
/// ranks agreed on "no checkpoint", resume started fresh, and retention then deleted the older
/// valid checkpoints. A manifest whose step is not its directory's is corrupt; and a
/// consistent checkpoint at step `u64::MAX` is found as itself, not as nothing.
#[test]
fn a_manifest_step_must_be_its_directorys_and_never_wraps() {
    let dir = tempfile::tempdir().unwrap();
    two_rank_checkpoints(dir.path());
    edit_manifest(dir.path(), 2, |m| m["step"] = u64::MAX.into());
    let (step, skipped) = latest_of_two_ranks(dir.path());
    assert_eq!(step, 1);
    assert!(skipped[0].contains("records step"), "{skipped:?}");
    // The same checkpoint moved to the directory its manifest names: valid, and the newest.
    std::fs::rename(step_dir(dir.path(), 2), step_dir(dir.path(), u64::MAX)).unwrap();
    let found = Checkpoint::latest(dir.path(), &mut Single)
        .unwrap()
        .unwrap();
    assert_eq!(found.step(), u64::MAX);
}

/// Issue 21, defect 6: a rank file that is a symlink to `/dev/zero` was hashed for ever, a
/// FIFO blocked `open`, and a manifest pointing at `/dev/zero` grew to 4 GB before failing.
/// Checkpoint files are opened without following symlinks and without blocking, must be
/// regular files, and are read to at most their recorded size plus one byte.
#[test]
fn checkpoint_files_that_are_not_regular_files_are_corrupt_at_once() {
    for tamper in [
        "rank symlink to /dev/zero",
        "rank FIFO",
        "manifest symlink to /dev/zero",
    ] {
        let dir = tempfile::tempdir().unwrap();
        two_rank_checkpoints(dir.path());
        let newest = step_dir(dir.path(), 2);
        let rank_file = newest.join("rank-00001.bpk");
        match tamper {
            "rank symlink to /dev/zero" => {
                std::fs::remove_file(&rank_file).unwrap();
                std::os::unix::fs::symlink("/dev/zero", &rank_file).unwrap();
            }
            "rank FIFO" => {
                std::fs::remove_file(&rank_file).unwrap();
                mlinfra_test_utils::hostile::mkfifo(&rank_file);
            }
            _ => {
                let manifest = newest.join(MANIFEST);
                std::fs::remove_file(&manifest).unwrap();
                std::os::unix::fs::symlink("/dev/zero", &manifest).unwrap();
            }
        }
        let root = dir.path().to_path_buf();
        let step = mlinfra_test_utils::hostile::within_seconds(tamper, move || {
            Checkpoint::latest(&root, &mut Single)
                .unwrap()
                .unwrap()
                .step()
        });
        assert_eq!(step, 1, "{tamper}");
    }
}

/// Issue 21, defect 7: a fresh run in a directory holding another run's higher-numbered
/// checkpoints had each of its own deleted by retention right after writing it. Retention now
/// never removes what it just wrote, nor anything above it.
#[test]
fn retention_keeps_what_it_just_wrote_and_what_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    // Another run's checkpoint at step 10.
    let (mut other, _) = trained(Single, Sharding::Replicated, 10);
    let mut checkpointer = Checkpointer::new(CheckpointConfig::new(dir.path())).unwrap();
    save(&mut other, &mut checkpointer, 0);
    checkpointer.wait(other.collective()).unwrap();
    // This run, keeping 1.
    let mut checkpointer = Checkpointer::new(CheckpointConfig {
        keep_last: 1,
        ..CheckpointConfig::new(dir.path())
    })
    .unwrap();
    for steps in [2, 3] {
        let (mut engine, _) = trained(Single, Sharding::Replicated, steps);
        save(&mut engine, &mut checkpointer, 0);
        checkpointer.wait(engine.collective()).unwrap();
        assert!(
            step_dir(dir.path(), steps).join(MANIFEST).is_file(),
            "step {steps} was removed right after it was written"
        );
    }
    assert!(
        !step_dir(dir.path(), 2).exists(),
        "keep_last 1: step 2 goes"
    );
    assert!(
        step_dir(dir.path(), 10).join(MANIFEST).is_file(),
        "not this run's"
    );
    assert_eq!(
        mlinfra_train::checkpoint::complete_steps(dir.path()).unwrap(),
        [10, 3]
    );
}
