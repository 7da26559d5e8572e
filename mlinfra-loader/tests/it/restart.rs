//! Resume across a real process restart: a child process runs part of an epoch and saves the
//! loader state to a file; other child processes resume from that file, on the same or another
//! world size, batch size and worker count. Together they must deliver exactly what one
//! uninterrupted run delivers.
//!
//! The children are this test binary run again on [`child_process`] with a job in the
//! environment, so the test needs nothing built beyond itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mlinfra_data::IpcCache;
use mlinfra_loader::{Loader, LoaderState, Remainder, Shuffle, Tensors};
use serde::{Deserialize, Serialize};

use crate::fixtures::Fixture;

const CHILD_JOB: &str = "MLINFRA_LOADER_RESTART_JOB";
const SEED: u64 = 2024;

/// What one child process does: every rank of a world, in turn, from the start of epoch 0 or
/// from a saved state.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    cache: PathBuf,
    world: u64,
    workers: usize,
    batch: usize,
    stop_after: Option<usize>,
    resume: Option<PathBuf>,
    state_out: Option<PathBuf>,
    /// Each rank's sample ids, as JSON.
    ids_out: PathBuf,
}

fn loader(cache: Arc<IpcCache>, job: &Job, rank: u64) -> Loader {
    let mut builder = Loader::builder(cache, job.batch)
        .collate(Tensors::new().columns(["id"]))
        .shuffle(Shuffle::Exact)
        .seed(SEED)
        .remainder(Remainder::Drop)
        .rank(rank, job.world)
        .workers(job.workers);
    if let Some(path) = &job.resume {
        let state: LoaderState =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        builder = builder.resume(state);
    }
    builder.build().unwrap()
}

/// Runs `job` in-process: each rank's ids, and the state after the last batch.
fn run_job(job: &Job) -> (Vec<Vec<u64>>, LoaderState) {
    let cache = Arc::new(IpcCache::open(&job.cache).unwrap());
    let mut per_rank = Vec::new();
    let mut state = None;
    for rank in 0..job.world {
        let mut loader = loader(cache.clone(), job, rank);
        let take = job.stop_after.unwrap_or(usize::MAX);
        let ids: Vec<u64> = loader
            .by_ref()
            .take(take)
            .flat_map(|batch| {
                let batch = batch.unwrap();
                // The `id` column holds each row's own id: the data matches the plan.
                let column: Vec<i64> = batch.data.get("id").unwrap().try_to_vec().unwrap();
                assert!(column.iter().zip(&batch.ids).all(|(&c, &i)| c as u64 == i));
                batch.ids
            })
            .collect();
        per_rank.push(ids);
        // Ranks step in lockstep: every rank's state is the same.
        let rank_state = loader.state().clone();
        assert!(state.as_ref().is_none_or(|s| *s == rank_state));
        state = Some(rank_state);
    }
    (per_rank, state.unwrap())
}

/// Entry point of the child processes, started by `spawn` (ignored in a normal run, like the
/// other crates' process helpers, so it is never counted as a passing test).
#[test]
#[ignore = "a child process of the restart tests, started by them"]
fn child_process() {
    let Ok(job) = std::env::var(CHILD_JOB) else {
        eprintln!("restart::child_process runs only as a child ({CHILD_JOB} unset)");
        return;
    };
    let job: Job = serde_json::from_str(&job).unwrap();
    let (per_rank, state) = run_job(&job);
    if let Some(path) = &job.state_out {
        std::fs::write(path, serde_json::to_string(&state).unwrap()).unwrap();
    }
    std::fs::write(&job.ids_out, serde_json::to_string(&per_rank).unwrap()).unwrap();
}

/// Runs `job` in a new process (this binary, on `child_process`); returns each rank's ids.
fn spawn(job: &Job) -> Vec<Vec<u64>> {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "restart::child_process",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_JOB, serde_json::to_string(job).unwrap())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&job.ids_out).unwrap()).unwrap()
}

/// Sample ids by global position: rank `r`'s `i`-th sample after position `start` sits at
/// `start + r + i × world`.
fn place(order: &mut [Option<u64>], start: u64, per_rank: &[Vec<u64>]) {
    let world = per_rank.len() as u64;
    for (rank, ids) in per_rank.iter().enumerate() {
        for (i, &id) in ids.iter().enumerate() {
            let slot = &mut order[(start + rank as u64 + i as u64 * world) as usize];
            assert!(slot.is_none(), "a position delivered twice");
            *slot = Some(id);
        }
    }
}

fn job(dir: &Path, name: &str, cache: &Path, world: u64, workers: usize, batch: usize) -> Job {
    Job {
        cache: cache.to_path_buf(),
        world,
        workers,
        batch,
        stop_after: None,
        resume: None,
        state_out: None,
        ids_out: dir.join(format!("{name}.json")),
    }
}

#[test]
fn a_restarted_process_continues_exactly_where_the_first_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture::write(dir.path(), 700);
    let cache = fixture.cache_dir.as_path();

    // The reference: one uninterrupted run of 2 ranks, in this process.
    let (uninterrupted, _) = run_job(&job(dir.path(), "full", cache, 2, 2, 8));
    let mut order = vec![None; 700];
    place(&mut order, 0, &uninterrupted);

    // Process 1: 2 ranks, 6 batches of 8 each, then it exits with the state saved.
    let state_file = dir.path().join("state.json");
    let first = spawn(&Job {
        stop_after: Some(6),
        state_out: Some(state_file.clone()),
        ..job(dir.path(), "first", cache, 2, 2, 8)
    });
    let state: LoaderState =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(state.consumed(), 2 * 6 * 8);

    // Process 2: the same world, more workers. Each rank's stream continues exactly.
    let same_world = spawn(&Job {
        resume: Some(state_file.clone()),
        ..job(dir.path(), "same", cache, 2, 4, 8)
    });
    for rank in 0..2 {
        let joined = [first[rank].clone(), same_world[rank].clone()].concat();
        assert_eq!(joined, uninterrupted[rank], "rank {rank}");
    }

    // Process 3: 3 ranks, batches of 5, 1 worker. The ranks together continue the global
    // order; only the tail that 3 ranks cannot share equally (Drop) is left out.
    let other_world = spawn(&Job {
        resume: Some(state_file),
        ..job(dir.path(), "other", cache, 3, 1, 5)
    });
    let mut resumed = vec![None; 700];
    place(&mut resumed, 0, &first);
    place(&mut resumed, state.consumed(), &other_world);
    let left = 700 - state.consumed();
    assert_eq!(
        resumed.iter().filter(|id| id.is_none()).count() as u64,
        left % 3
    );
    for (position, id) in resumed.iter().enumerate() {
        if id.is_some() {
            assert_eq!(*id, order[position], "position {position}");
        }
    }
}
