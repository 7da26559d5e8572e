//! The subprocess sandbox's escape tests: each tries a way out and must fail. Paths outside
//! the allow-list by `..`, a symbolic link or a name prefix; writes outside it; the network;
//! fork, memory and CPU bombs; an output flood; and a kernel without Landlock, where the
//! sandbox refuses to run at all.
//!
//! As root (CI), the command runs as `nobody`; the files it must not read are world-readable,
//! so only the sandbox stands in the way.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlinfra_agent::sandbox::{Limits, Sandbox, SandboxOutput, check_support, landlock_abi};

struct Layout {
    base: tempfile::TempDir,
}

impl Layout {
    /// `data/ok.txt` (readable), `scratch/` (writable, with a link to the secret), and beside
    /// them `secret.txt` and `data-evil/secret.txt`.
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let path = base.path();
        for dir in ["data", "scratch", "data-evil"] {
            std::fs::create_dir(path.join(dir)).unwrap();
        }
        std::fs::write(path.join("data/ok.txt"), "ok").unwrap();
        std::fs::write(path.join("secret.txt"), "secret").unwrap();
        std::fs::write(path.join("data-evil/secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(path.join("secret.txt"), path.join("scratch/link")).unwrap();
        // Everyone may read everything, and `nobody` may write the scratch directory: only the
        // sandbox keeps the command in.
        for dir in [path, &path.join("data"), &path.join("data-evil")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(path.join("scratch"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        Self { base }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.base.path().join(relative)
    }

    fn sandbox(&self, limits: Limits) -> Sandbox {
        Sandbox::new(limits)
            .unwrap()
            .allow_read(self.path("data"))
            .allow_write(self.path("scratch"))
    }

    fn run(&self, limits: Limits, program: &str, args: &[&str]) -> SandboxOutput {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.sandbox(limits)
            .run(Path::new(program), &args, &self.path("scratch"), b"")
            .unwrap()
    }
}

fn sh(layout: &Layout, script: &str) -> SandboxOutput {
    layout.run(Limits::default(), "/bin/sh", &["-c", script])
}

/// Skips outside CI where the kernel cannot run the sandbox (a failure under CI=true).
fn supported() -> bool {
    let abi = landlock_abi();
    if check_support(abi).is_err() {
        assert!(
            !mlinfra_test_utils::is_ci(),
            "Landlock ABI {abi}: the sandbox cannot run (required under CI=true)"
        );
        eprintln!("skipped: Landlock ABI {abi}");
        return false;
    }
    true
}

#[test]
fn files_outside_the_allow_list_stay_out_of_reach() {
    if !supported() {
        return;
    }
    let layout = Layout::new();
    let base = layout.base.path().display().to_string();
    let allowed = sh(&layout, &format!("cat {base}/data/ok.txt"));
    assert_eq!(
        (allowed.exit_code, allowed.stdout.as_str()),
        (Some(0), "ok"),
        "{allowed:?}"
    );
    for (what, script) in [
        ("..", "cat ../secret.txt".to_owned()),
        ("an absolute path", format!("cat {base}/secret.txt")),
        ("a symbolic link", "cat link".to_owned()),
        ("a name prefix", format!("cat {base}/data-evil/secret.txt")),
        ("a listing", format!("ls {base}")),
        ("/etc", "cat /etc/passwd".to_owned()),
    ] {
        let refused = sh(&layout, &script);
        assert_ne!(refused.exit_code, Some(0), "{what}: {refused:?}");
        assert!(!refused.stdout.contains("secret"), "{what}: {refused:?}");
        assert!(
            refused.stderr.contains("Permission denied"),
            "{what}: {refused:?}"
        );
    }
    // Writes: inside the writable directory only.
    let inside = sh(&layout, "echo x > inside.txt");
    assert_eq!(inside.exit_code, Some(0), "{inside:?}");
    assert!(layout.path("scratch/inside.txt").is_file());
    for target in [
        format!("{base}/outside.txt"),
        format!("{base}/data/new.txt"),
    ] {
        let refused = sh(&layout, &format!("echo x > {target}"));
        assert_ne!(refused.exit_code, Some(0), "{target}: {refused:?}");
        assert!(!Path::new(&target).exists(), "{target} was written");
    }
}

#[test]
fn the_network_is_out_of_reach() {
    if !supported() {
        return;
    }
    let layout = Layout::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect =
        format!("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)");
    let udp = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))";
    for script in [connect.as_str(), udp] {
        let refused = layout.run(Limits::default(), "/usr/bin/python3", &["-c", script]);
        assert_ne!(refused.exit_code, Some(0), "{refused:?}");
        assert!(refused.stderr.contains("PermissionError"), "{refused:?}");
    }
    assert!(listener.accept().is_err(), "nothing connected");
}

#[test]
fn fork_memory_and_cpu_bombs_are_contained() {
    if !supported() {
        return;
    }
    let layout = Layout::new();
    // A fork bomb: the process limit stops it multiplying, the wall clock ends it, and the
    // whole group dies with it.
    let started = Instant::now();
    let limits = Limits {
        wall_seconds: 3.0,
        processes: 32,
        ..Limits::default()
    };
    let bomb = layout.run(limits, "/bin/sh", &["-c", "b() { b | b & }; b; sleep 60"]);
    assert!(started.elapsed() < Duration::from_secs(20), "{bomb:?}");
    assert!(bomb.timed_out || bomb.exit_code.is_some(), "{bomb:?}");
    // Memory: a 4 GiB allocation under a 512 MiB limit fails inside the command.
    let limits = Limits {
        memory_bytes: 512 << 20,
        ..Limits::default()
    };
    let hog = layout.run(
        limits,
        "/usr/bin/python3",
        &["-c", "b = bytearray(4 << 30)"],
    );
    assert_ne!(hog.exit_code, Some(0), "{hog:?}");
    assert!(hog.stderr.contains("MemoryError"), "{hog:?}");
    // CPU: a busy loop gets SIGXCPU after its CPU second, long before the wall clock.
    let limits = Limits {
        cpu_seconds: 1,
        wall_seconds: 20.0,
        ..Limits::default()
    };
    let started = Instant::now();
    let spin = layout.run(limits, "/bin/sh", &["-c", "while :; do :; done"]);
    assert_eq!(spin.signal, Some(libc::SIGXCPU), "{spin:?}");
    assert!(!spin.timed_out && started.elapsed() < Duration::from_secs(10));
}

#[test]
fn leaving_the_group_stalling_on_input_and_changing_modes_fail() {
    if !supported() {
        return;
    }
    let layout = Layout::new();
    let base = layout.base.path().display().to_string();
    // A child that leaves the process group would outlive the kill (and hold the pipes).
    let started = Instant::now();
    let limits = Limits {
        wall_seconds: 2.0,
        ..Limits::default()
    };
    let escape = layout.run(
        limits,
        "/usr/bin/python3",
        &["-c", "import os; os.setsid()"],
    );
    assert!(escape.stderr.contains("PermissionError"), "{escape:?}");
    let detached = layout.run(
        Limits {
            wall_seconds: 2.0,
            ..Limits::default()
        },
        "/bin/sh",
        &["-c", "setsid sleep 100 & sleep 100"],
    );
    assert!(detached.timed_out, "{detached:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the run came back"
    );
    // 1 MiB of input to a command that never reads it: the clock still runs.
    let args = vec!["100".to_owned()];
    let started = Instant::now();
    let stalled = layout
        .sandbox(Limits {
            wall_seconds: 2.0,
            ..Limits::default()
        })
        .run(
            Path::new("/bin/sleep"),
            &args,
            &layout.path("scratch"),
            &vec![b'x'; 1 << 20],
        )
        .unwrap();
    assert!(
        stalled.timed_out && started.elapsed() < Duration::from_secs(10),
        "{stalled:?}"
    );
    // Modes, owners and namespaces, which Landlock does not cover.
    for script in [
        format!("chmod 600 {base}/secret.txt"),
        format!("touch -d 2000-01-01 {base}/secret.txt"),
        "unshare -U true".to_owned(),
    ] {
        let refused = sh(&layout, &script);
        assert_ne!(refused.exit_code, Some(0), "{script}: {refused:?}");
    }
    let mode = std::fs::metadata(layout.path("secret.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "the mode is unchanged");
    // What a shell needs still works: /dev/null, a temporary file.
    let ordinary = sh(
        &layout,
        "echo x > /dev/null && mktemp > /dev/null && echo ok",
    );
    assert_eq!(ordinary.stdout, "ok\n", "{ordinary:?}");
}

#[test]
fn an_output_flood_is_cut_and_killed() {
    if !supported() {
        return;
    }
    let layout = Layout::new();
    let limits = Limits {
        output_bytes: 64 << 10,
        ..Limits::default()
    };
    let started = Instant::now();
    let flood = layout.run(limits, "/usr/bin/yes", &[]);
    assert!(flood.truncated, "{:?}", flood.exit_code);
    assert_eq!(flood.stdout.len(), 64 << 10);
    assert_eq!(flood.signal, Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn without_landlock_the_sandbox_refuses_to_run() {
    for abi in [0, 1, 3] {
        let error = check_support(abi).unwrap_err().to_string();
        assert!(
            error.contains("will not run commands unconfined"),
            "{abi}: {error}"
        );
    }
    assert!(check_support(4).is_ok());
    assert!(check_support(7).is_ok());
}

/// The `sandbox_run` tool: reads the data root, writes its scratch directory, reports what it
/// left there; the file beside the root stays out of reach; a missing program is a tool error.
#[test]
fn sandbox_run_reads_the_root_and_nothing_beside_it() {
    use serde_json::{Value, json};

    use crate::common::{Fixture, Pipe, call};

    if !supported() {
        return;
    }
    let fixture = Fixture::new();
    for dir in [fixture.base.path().to_path_buf(), fixture.root()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let server = fixture
        .server()
        .with_sandbox(Limits::default(), fixture.base.path().join("scratch"))
        .unwrap();
    let root = fixture.root().display().to_string();
    let secret = fixture.secret().display().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results: Vec<Value> = runtime.block_on(async {
        let mut pipe = Pipe::open(server).await;
        let calls = [
            json!(["ls", root]),
            json!(["sh", "-c", "echo hi > out.txt; cat out.txt"]),
            json!(["cat", secret]),
            json!(["no-such-program"]),
        ];
        let mut results = Vec::new();
        for (id, command) in (2..).zip(calls) {
            results.push(
                pipe.result(call(id, "sandbox_run", json!({"command": command})))
                    .await,
            );
        }
        results
    });
    let listed = &results[0]["structuredContent"];
    assert_eq!(listed["stdout"], "points.parquet\n", "{}", results[0]);
    let wrote = &results[1]["structuredContent"];
    assert_eq!(
        (wrote["stdout"].as_str(), &wrote["files"]),
        (Some("hi\n"), &json!(["out.txt"])),
        "{}",
        results[1]
    );
    let refused = &results[2]["structuredContent"];
    assert_ne!(refused["exit_code"], 0, "{}", results[2]);
    assert!(
        refused["stderr"]
            .as_str()
            .unwrap()
            .contains("Permission denied")
    );
    assert_eq!(results[3]["isError"], true, "{}", results[3]);
    // Each run's scratch directory is gone afterwards.
    let left = std::fs::read_dir(fixture.base.path().join("scratch"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}
