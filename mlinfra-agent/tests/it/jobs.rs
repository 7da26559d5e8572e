//! Training jobs: a classifier trained in the background to the accuracy its data allows;
//! stopped with a checkpoint and resumed to the same end; a record left `running` by a dead
//! process found `interrupted`; configurations that cannot run refused before a job exists;
//! job ids that could name a path refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use mlinfra_agent::jobs::{ClassifierConfig, JobState, JobStore, TrainConfig};
use mlinfra_agent::{DataRoot, Error};
use mlinfra_test_utils::rng::SplitMix64;
use parquet::arrow::ArrowWriter;

const FEATURES: usize = 8;
const CLASSES: usize = 4;

/// `rows` rows of features uniform in [-1, 1], labelled by a fixed linear teacher
/// (`argmax(W x)`): learnable to high accuracy, so a run that does not train fails the test.
pub fn teacher_parquet(path: &Path, rows: usize, seed: u64) {
    let w = SplitMix64::new(99).vec_f32(CLASSES * FEATURES, -1.0, 1.0);
    let x = SplitMix64::new(seed).vec_f32(rows * FEATURES, -1.0, 1.0);
    let labels: Vec<i64> = x
        .chunks_exact(FEATURES)
        .map(|row| {
            let score =
                |c: usize| -> f32 { (0..FEATURES).map(|f| w[c * FEATURES + f] * row[f]).sum() };
            (0..CLASSES)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap() as i64
        })
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "features",
            DataType::FixedSizeList(item.clone(), FEATURES as i32),
            false,
        ),
        Field::new("label", DataType::Int64, false),
    ]));
    let features =
        FixedSizeListArray::new(item, FEATURES as i32, Arc::new(Float32Array::from(x)), None);
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(features), Arc::new(Int64Array::from(labels))],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

struct Setup {
    base: tempfile::TempDir,
    root: Arc<DataRoot>,
}

impl Setup {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("data");
        std::fs::create_dir(&data).unwrap();
        teacher_parquet(&data.join("train.parquet"), 1024, 1);
        teacher_parquet(&data.join("test.parquet"), 512, 2);
        let root = Arc::new(DataRoot::new(&data).unwrap());
        Self { base, root }
    }

    fn store(&self) -> Arc<JobStore> {
        Arc::new(JobStore::open(self.base.path().join("state"), Arc::clone(&self.root)).unwrap())
    }
}

/// Waits (60 s at most) until the running job's status satisfies `reached`; fails when it
/// ends first.
fn until(store: &JobStore, id: &str, reached: impl Fn(&mlinfra_agent::jobs::JobStatus) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = store.status(id).unwrap();
        if reached(&status) {
            return;
        }
        assert_eq!(
            status.record.state,
            JobState::Running,
            "ended first: {status:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn classifier(epochs: u64) -> ClassifierConfig {
    ClassifierConfig {
        train: "train.parquet".into(),
        eval: Some("test.parquet".into()),
        features: "features".into(),
        label: "label".into(),
        classes: CLASSES,
        hidden: vec![32],
        epochs,
        batch: 32,
        lr: 1e-2,
        seed: 7,
        checkpoint_every: 20,
    }
}

#[test]
fn a_job_trains_in_the_background_to_the_accuracy_its_data_allows() {
    let setup = Setup::new();
    let store = setup.store();
    let started = store
        .start(TrainConfig::Classifier(classifier(8)), None)
        .unwrap();
    assert_eq!(started.record.state, JobState::Running);
    assert_eq!(started.record.total_steps, 1024 / 32 * 8);
    let done = store
        .wait(&started.record.id, Duration::from_secs(300))
        .unwrap();
    assert_eq!(done.record.state, JobState::Completed, "{done:?}");
    let outcome = done.record.outcome.clone().unwrap();
    assert_eq!(outcome.steps, 256);
    assert_eq!(done.step, 256, "the metrics log's last step");
    // A linear teacher: an MLP trained for 256 steps separates it well; chance is 25 %.
    let accuracy = outcome.eval_accuracy.unwrap();
    assert!(accuracy > 0.85, "eval accuracy {accuracy}");
    assert!(
        !done.checkpoints.is_empty() && done.checkpoints.len() <= 3,
        "{:?}",
        done.checkpoints
    );
    assert_eq!(done.checkpoints[0], 256, "the final step is checkpointed");

    // Inspected: each checkpoint verified, holding the MLP's 8x32 + 32 + 32x4 + 4 weights.
    let id = &started.record.id;
    let inspected = store.checkpoints(id, None).unwrap();
    let steps: Vec<u64> = inspected.iter().map(|c| c.step).collect();
    assert_eq!(steps, done.checkpoints);
    assert!(inspected.iter().all(|c| c.verified), "{inspected:?}");
    let newest = &inspected[0];
    assert_eq!(newest.parameters, Some(8 * 32 + 32 + 32 * 4 + 4));
    let shapes: Vec<&[usize]> = newest.tensors.iter().map(|t| t.shape.as_slice()).collect();
    assert!(
        shapes.contains(&&[8, 32][..]) && shapes.contains(&&[32, 4][..]),
        "{shapes:?}"
    );
    assert!(newest.bytes > 0 && newest.files.iter().all(|f| f.sha256.len() == 64));
    // A rank file altered on disk: the checkpoint no longer verifies, and says which file.
    let file = mlinfra_train::checkpoint::step_dir(&Path::new(&done.dir).join("checkpoints"), 256)
        .join(&newest.files[0].name);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let altered = store.checkpoints(id, Some(256)).unwrap();
    assert!(!altered[0].verified);
    assert!(
        altered[0]
            .error
            .as_deref()
            .unwrap()
            .contains(&newest.files[0].name),
        "{altered:?}"
    );
    assert!(matches!(
        store.checkpoints(id, Some(7)),
        Err(Error::Job { .. })
    ));
    // Listed, and read back by a fresh store (another process, after a restart) unchanged.
    drop(store);
    let listed = setup.store().list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record, done.record);
}

#[test]
fn a_stopped_job_resumes_from_its_checkpoint_to_the_same_end() {
    let setup = Setup::new();
    let store = setup.store();
    let id = store
        .start(TrainConfig::Classifier(classifier(40)), None)
        .unwrap()
        .record
        .id;
    // Let it take some steps, then stop it: a checkpoint after the current step.
    until(&store, &id, |status| status.step >= 30);
    store.stop(&id).unwrap();
    let stopped = store.wait(&id, Duration::from_secs(120)).unwrap();
    assert_eq!(stopped.record.state, JobState::Stopped, "{stopped:?}");
    let at = stopped.record.outcome.as_ref().unwrap().steps;
    assert!((30..1280).contains(&at), "stopped at {at}");
    assert_eq!(stopped.checkpoints[0], at, "a checkpoint at the stop");
    // Only one job trains at a time; a stopped one cannot be stopped again.
    assert!(matches!(store.stop(&id), Err(Error::Job { .. })));

    // The data changed since the start: no resume onto it.
    let train = setup.base.path().join("data/train.parquet");
    let original = std::fs::read(&train).unwrap();
    teacher_parquet(&train, 1024, 99);
    let refused = store.resume(&id).unwrap_err().to_string();
    assert!(refused.contains("its data changed"), "{refused}");
    std::fs::write(&train, original).unwrap();

    let resumed = store.resume(&id).unwrap();
    assert_eq!(resumed.record.launches, 2);
    let done = store.wait(&id, Duration::from_secs(600)).unwrap();
    assert_eq!(done.record.state, JobState::Completed, "{done:?}");
    let outcome = done.record.outcome.unwrap();
    assert_eq!(outcome.resumed_from, Some(at));
    assert_eq!(outcome.steps, 1280);
    assert!(
        matches!(store.resume(&id), Err(Error::Job { .. })),
        "a completed job does not resume"
    );
}

#[test]
fn a_job_left_running_by_a_dead_process_is_interrupted_and_resumable() {
    let setup = Setup::new();
    let store = setup.store();
    let id = store
        .start(TrainConfig::Classifier(classifier(40)), None)
        .unwrap()
        .record
        .id;
    until(&store, &id, |status| !status.checkpoints.is_empty());
    store.stop(&id).unwrap();
    let before = store.wait(&id, Duration::from_secs(120)).unwrap();
    // What a kill -9 mid-run leaves: checkpoints, and a record that says `running`.
    let record = setup
        .base
        .path()
        .join("state/jobs")
        .join(&id)
        .join("job.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    json["state"] = "running".into();
    std::fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();
    drop(store);

    let restarted = setup.store();
    let status = restarted.status(&id).unwrap();
    assert_eq!(status.record.state, JobState::Interrupted);
    assert_eq!(status.checkpoints, before.checkpoints, "checkpoints intact");
    assert_eq!(status.step, before.step, "the metrics log intact");
    restarted.resume(&id).unwrap();
    let done = restarted.wait(&id, Duration::from_secs(600)).unwrap();
    assert_eq!(done.record.state, JobState::Completed, "{done:?}");
    assert_eq!(
        done.record.outcome.unwrap().resumed_from,
        Some(before.checkpoints[0])
    );
}

#[test]
fn configurations_that_cannot_run_are_refused_before_a_job_exists() {
    let setup = Setup::new();
    let store = setup.store();
    let cases: Vec<(&str, ClassifierConfig)> = vec![
        (
            "one class",
            ClassifierConfig {
                classes: 1,
                ..classifier(1)
            },
        ),
        (
            "no such column",
            ClassifierConfig {
                features: "pixels".into(),
                ..classifier(1)
            },
        ),
        (
            "label as features",
            ClassifierConfig {
                features: "label".into(),
                ..classifier(1)
            },
        ),
        (
            "outside the root",
            ClassifierConfig {
                train: "../train.parquet".into(),
                ..classifier(1)
            },
        ),
        (
            "missing file",
            ClassifierConfig {
                train: "nope.parquet".into(),
                ..classifier(1)
            },
        ),
        (
            "batch over the rows",
            ClassifierConfig {
                batch: 4096,
                ..classifier(1)
            },
        ),
        (
            "zero learning rate",
            ClassifierConfig {
                lr: 0.0,
                ..classifier(1)
            },
        ),
        (
            "no hidden layer",
            ClassifierConfig {
                hidden: vec![],
                ..classifier(1)
            },
        ),
    ];
    for (what, config) in cases {
        let error = store
            .start(TrainConfig::Classifier(config), None)
            .unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidArgument { .. } | Error::PathRefused { .. }
            ),
            "{what}: {error}"
        );
    }
    assert!(store.list().unwrap().is_empty(), "no job was created");
    for id in ["../state", "", "a/b", "TRAIN-1", "train-1"] {
        assert!(matches!(store.status(id), Err(Error::Job { .. })), "{id:?}");
    }
}

#[test]
fn a_second_server_on_the_same_state_directory_is_refused() {
    let setup = Setup::new();
    let first = setup.store();
    let second = JobStore::open(setup.base.path().join("state"), Arc::clone(&setup.root));
    let error = second.unwrap_err().to_string();
    assert!(
        error.contains("another server holds this state directory"),
        "{error}"
    );
    drop(first);
    setup.store();
}
