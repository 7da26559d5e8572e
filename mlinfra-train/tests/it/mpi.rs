//! The MPI collective across real processes: `mpirun -np 2` of this test binary (feature
//! `mpi`). Each operation matches sums worked out by hand; two MPI ranks with half the batch each must end where one process with the whole
//! batch ends, to 1e-6, as the thread ranks do in `data_parallel`.

use std::path::{Path, PathBuf};
use std::process::Command;

use mlinfra_test_utils::is_ci;
use mlinfra_train::Sharding;
use mlinfra_train::collective::{Collective, MpiCollective, all_gather_u64, shard_range};
use mlinfra_train::optim::OptimizerConfig;

use crate::data_parallel::{Data, adamw, max_abs_diff, one_process, sgd_momentum, train};

/// Where the ranks write their final weights.
const OUT_VAR: &str = "MLINFRA_IT_MPI_OUT";

/// The cases: 8 steps of global batch 64 on the same data as `data_parallel`.
fn cases() -> Vec<(&'static str, OptimizerConfig, Sharding)> {
    vec![
        ("adamw-replicated", adamw(), Sharding::Replicated),
        ("adamw-zero1", adamw(), Sharding::Zero1),
        ("sgd-replicated", sgd_momentum(), Sharding::Replicated),
        ("sgd-zero1", sgd_momentum(), Sharding::Zero1),
    ]
}

fn data() -> Data {
    Data::new(8 * 64, 11)
}

fn weights_file(out: &Path, case: &str, rank: usize) -> PathBuf {
    out.join(format!("{case}-rank{rank}.bin"))
}

/// One MPI rank: trains every case with its half of each batch and writes its final weights.
#[test]
#[ignore = "an MPI rank of two_mpi_ranks_match_one_process_with_the_doubled_batch, started by mpirun"]
fn rank() {
    let Some(out) = std::env::var_os(OUT_VAR).map(PathBuf::from) else {
        eprintln!("mpi::rank runs only under mpirun ({OUT_VAR} unset)");
        return;
    };
    let mut collective = MpiCollective::init().unwrap();
    let (rank, world) = (collective.rank(), collective.world());
    assert_eq!(world, 2, "started with -np {world}");
    check_operations(&mut collective);
    let data = data();
    for (case, optimizer, sharding) in cases() {
        let (weights, _) = train(&mut collective, &optimizer, sharding, &data, 8, 64, &[32]);
        let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(weights_file(&out, case, rank), bytes).unwrap();
    }
    collective.finish().unwrap();
}

/// An MPI rank of `a_rank_that_returns_an_error_ends_the_job`: rank 1 gives up with an error
/// (drops its handle without `finish`) while rank 0 waits in a collective for it.
#[test]
#[ignore = "an MPI rank of a_rank_that_returns_an_error_ends_the_job, started by mpirun"]
fn failing_rank() {
    if std::env::var_os(OUT_VAR).is_none() {
        eprintln!("mpi::failing_rank runs only under mpirun ({OUT_VAR} unset)");
        return;
    }
    let mut collective = MpiCollective::init().unwrap();
    if collective.rank() == 1 {
        // What `?` does with an error in a rank's main: the handle is dropped, unfinished.
        drop(collective);
        unreachable!("dropping an unfinished MPI rank aborts the job");
    }
    let mut waiting = [1.0f64];
    let _ = collective.all_reduce_f64(&mut waiting);
    unreachable!("rank 1 never joins this all-reduce");
}

/// Every operation against sums worked out here, on 7 elements: shards of 4 and 3, so the
/// padding of the short shard is exercised. A failed assertion fails the rank, hence mpirun.
fn check_operations(c: &mut MpiCollective) {
    let (rank, len) = (c.rank(), 7);
    let input = |r: usize| -> Vec<f32> { (0..len).map(|i| (r * 100 + i) as f32 * 0.25).collect() };
    let sum: Vec<f32> = (0..len).map(|i| input(0)[i] + input(1)[i]).collect();
    let mut reduced = input(rank);
    c.all_reduce(&mut reduced).unwrap();
    assert_eq!(reduced, sum, "all_reduce");
    let mine = shard_range(len, rank, 2);
    let mut shard = vec![0.0; mine.len()];
    c.reduce_scatter(&input(rank), &mut shard).unwrap();
    assert_eq!(shard[..], sum[mine.clone()], "reduce_scatter");
    let mut gathered = vec![0.0; len];
    c.all_gather(&shard, &mut gathered).unwrap();
    assert_eq!(gathered, sum, "all_gather");
    let mut broadcast = input(rank);
    c.broadcast(&mut broadcast, 1).unwrap();
    assert_eq!(broadcast, input(1), "broadcast");
    let mut scalars = [rank as f64, 1.5];
    c.all_reduce_f64(&mut scalars).unwrap();
    assert_eq!(scalars, [1.0, 3.0], "all_reduce_f64");
    let words = all_gather_u64(c, &[u64::MAX - rank as u64]).unwrap();
    assert_eq!(words, [u64::MAX, u64::MAX - 1], "all_gather_u64");
    let mut wrong = vec![0.0; mine.len() + 1];
    assert!(
        c.reduce_scatter(&input(rank), &mut wrong).is_err(),
        "a wrong shard length"
    );
    assert!(
        c.broadcast(&mut broadcast, 2).is_err(),
        "a root outside the world"
    );
    c.barrier().unwrap();
}

fn read_weights(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// `mpirun -np 2` of this test binary running the ignored test `rank_test`, with `out` for
/// the ranks' files; `None` (a printed skip, a failure under CI) without `mpirun`.
fn mpirun_ranks(rank_test: &str, out: &Path) -> Option<Command> {
    let mpirun = std::env::var_os("MPIRUN").unwrap_or_else(|| "mpirun".into());
    if Command::new(&mpirun).arg("--version").output().is_err() {
        let message = format!(
            "{} not found: install openmpi-bin",
            mpirun.to_string_lossy()
        );
        assert!(!is_ci(), "{message}; under CI=true the MPI test must run");
        eprintln!("skipped: {message}");
        return None;
    }
    let mut command = Command::new(&mpirun);
    command
        // --oversubscribe: 2 ranks even where MPI counts fewer free slots (CI containers).
        .args(["-np", "2", "--oversubscribe"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            rank_test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(OUT_VAR, out)
        // One machine: launch locally, without the ssh that Open MPI otherwise insists on
        // finding even for local ranks (CI machines have none).
        .env("OMPI_MCA_plm", "isolated")
        // CI runs as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    Some(command)
}

/// Issue 21 (sibling of the collective defects): a rank that returns an error used to leave
/// its peer blocked in the next collective and itself in `MPI_Finalize`, and the job hung.
/// Now the job ends, failed, within seconds. Without the abort this test times out.
#[test]
fn a_rank_that_returns_an_error_ends_the_job() {
    let out = tempfile::tempdir().unwrap();
    let Some(mut command) = mpirun_ranks("mpi::failing_rank", out.path()) else {
        return;
    };
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the MPI job still runs 120 s after a rank gave up: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "a job with a failed rank must fail");
    assert!(
        stderr.contains("ended without MpiCollective::finish"),
        "the abort says why: {stderr}"
    );
}

/// The acceptance test of the MPI collective, in CI.
#[test]
fn two_mpi_ranks_match_one_process_with_the_doubled_batch() {
    let out = tempfile::tempdir().unwrap();
    let Some(mut command) = mpirun_ranks("mpi::rank", out.path()) else {
        return;
    };
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "mpirun failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let data = data();
    for (case, optimizer, _) in cases() {
        let ranks = [0, 1].map(|rank| read_weights(&weights_file(out.path(), case, rank)));
        assert!(ranks[0] == ranks[1], "{case}: the MPI ranks disagree");
        let single = one_process(&optimizer, &data, 8);
        let diff = max_abs_diff(&ranks[0], &single);
        assert!(
            diff <= 1e-6,
            "{case}: max |diff| {diff:e} against one process"
        );
        let start = one_process(&optimizer, &data, 0);
        let moved = max_abs_diff(&start, &single);
        assert!(
            moved > 1e-3,
            "{case}: training moved the weights by {moved}"
        );
    }
}
