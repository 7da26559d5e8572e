//! The WebAssembly sandbox's escape tests: each guest tries a way out and must fail. Paths
//! outside the pre-opened directories by `..`, a symbolic link, a name prefix or an absolute
//! path; writes outside the scratch directory; imports the host does not offer (WASI's file
//! and socket calls); an infinite loop (by fuel, and by wall time); memory and stack bombs;
//! an output flood; a scratch-quota flood. And one guest that does its job, through the
//! `wasm_run` tool.

use std::path::{Path, PathBuf};

use mlinfra_agent::wasm::{DENIED, NOT_FOUND, QUOTA, WasmLimits, WasmOutcome, WasmSandbox};
use mlinfra_agent::{AgentServer, DataRoot};
use serde_json::json;

use crate::common::{Pipe, call};

/// The host interface's imports and a one-page memory, around `body`.
fn guest(body: &str) -> String {
    format!(
        r#"(module
  (import "mlinfra" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "mlinfra" "output_write" (func $output_write (param i32 i32) (result i32)))
  (import "mlinfra" "file_size" (func $file_size (param i32 i32) (result i64)))
  (import "mlinfra" "file_read" (func $file_read (param i32 i32 i64 i32 i32) (result i64)))
  (import "mlinfra" "file_write" (func $file_write (param i32 i32 i64 i32 i32) (result i64)))
  (memory (export "memory") 1)
  {body})"#
    )
}

/// Reads a path from its input, reads that file into memory at 4096, writes what it read to
/// its output, and exits with `file_read`'s result.
fn reader() -> String {
    guest(
        r#"(func (export "run") (result i32) (local $n i32) (local $r i64)
             (local.set $n (call $input_read (i32.const 0) (i32.const 1024)))
             (local.set $r (call $file_read (i32.const 0) (local.get $n) (i64.const 0)
                                            (i32.const 4096) (i32.const 4096)))
             (if (i64.gt_s (local.get $r) (i64.const 0))
               (then (drop (call $output_write (i32.const 4096) (i32.wrap_i64 (local.get $r))))))
             (i32.wrap_i64 (local.get $r)))"#,
    )
}

/// Reads a path from its input and writes the path itself into that file: exits with
/// `file_write`'s result.
fn writer() -> String {
    guest(
        r#"(func (export "run") (result i32) (local $n i32)
             (local.set $n (call $input_read (i32.const 0) (i32.const 1024)))
             (i32.wrap_i64 (call $file_write (i32.const 0) (local.get $n) (i64.const 0)
                                             (i32.const 0) (local.get $n))))"#,
    )
}

/// `data/ok.txt`; beside the root `secret.txt` and `data-evil/secret.txt`; in the root a
/// link `data/link` to the secret; an empty scratch directory.
struct Layout {
    base: tempfile::TempDir,
}

impl Layout {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let path = base.path();
        for dir in ["data", "scratch", "data-evil"] {
            std::fs::create_dir(path.join(dir)).unwrap();
        }
        std::fs::write(path.join("data/ok.txt"), "hello from the data root").unwrap();
        std::fs::write(path.join("secret.txt"), "secret").unwrap();
        std::fs::write(path.join("data-evil/secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(path.join("secret.txt"), path.join("data/link")).unwrap();
        Self { base }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.base.path().join(relative)
    }

    fn sandbox(&self, limits: WasmLimits) -> WasmSandbox {
        WasmSandbox::new(limits)
            .unwrap()
            .allow_read(DataRoot::new(self.path("data")).unwrap())
    }

    fn run(
        &self,
        limits: WasmLimits,
        module: &str,
        input: &str,
    ) -> mlinfra_agent::wasm::WasmOutput {
        self.sandbox(limits)
            .run(
                module.as_bytes(),
                "run",
                input.as_bytes(),
                Some(&self.path("scratch")),
            )
            .unwrap()
    }
}

#[test]
fn a_guest_reads_only_the_data_root_and_its_scratch_directory() {
    let layout = Layout::new();
    let limits = WasmLimits::default();
    let ok = layout.run(limits, &reader(), "/data/ok.txt");
    assert_eq!(ok.outcome, WasmOutcome::Exited);
    assert_eq!(ok.output, "hello from the data root");
    assert_eq!(ok.exit_code, Some(24));

    let secret = layout.path("secret.txt");
    let secret = secret.to_str().unwrap();
    for (path, expected) in [
        ("/data/../secret.txt", DENIED),
        ("/data/link", DENIED),
        ("/data-evil/secret.txt", DENIED),
        ("/data/../data-evil/secret.txt", DENIED),
        (&format!("/data/{secret}"), DENIED),
        (secret, DENIED),
        ("/etc/passwd", DENIED),
        ("data/ok.txt", DENIED),
        ("/scratch/../secret.txt", DENIED),
        ("/data/missing.txt", NOT_FOUND),
    ] {
        let out = layout.run(limits, &reader(), path);
        assert_eq!(
            out.exit_code,
            Some(expected as i32),
            "reading {path}: {out:?}"
        );
        assert!(out.output.is_empty(), "{path} leaked {:?}", out.output);
    }
}

#[test]
fn a_guest_writes_only_plain_names_in_its_scratch_directory() {
    let layout = Layout::new();
    let limits = WasmLimits::default();
    let out = layout.run(limits, &writer(), "/scratch/result.txt");
    assert_eq!(out.exit_code, Some("/scratch/result.txt".len() as i32));
    assert_eq!(
        std::fs::read_to_string(layout.path("scratch/result.txt")).unwrap(),
        "/scratch/result.txt"
    );
    // Planted by someone else: a link in the scratch directory is not followed.
    std::os::unix::fs::symlink(layout.path("secret.txt"), layout.path("scratch/link")).unwrap();
    for path in [
        "/data/new.txt",
        "/data/ok.txt",
        "/scratch/../escaped.txt",
        "/scratch/sub/x.txt",
        "/scratch/link",
        "/tmp/escaped.txt",
        "/scratch/",
    ] {
        let out = layout.run(limits, &writer(), path);
        assert_eq!(
            out.exit_code,
            Some(DENIED as i32),
            "writing {path}: {out:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(layout.path("data/ok.txt")).unwrap(),
        "hello from the data root"
    );
    assert_eq!(
        std::fs::read_to_string(layout.path("secret.txt")).unwrap(),
        "secret"
    );
    assert!(!layout.path("escaped.txt").exists());
    assert!(!Path::new("/tmp/escaped.txt").exists());

    // The quota: bytes, then files.
    let tiny = WasmLimits {
        write_bytes: 8,
        ..limits
    };
    let out = layout.run(tiny, &writer(), "/scratch/too-long-for-eight-bytes");
    assert_eq!(out.exit_code, Some(QUOTA as i32));
    let one_file = WasmLimits { files: 0, ..limits };
    let out = layout.run(one_file, &writer(), "/scratch/another.txt");
    assert_eq!(out.exit_code, Some(QUOTA as i32));
    assert!(!layout.path("scratch/another.txt").exists());
}

#[test]
fn a_guest_has_no_imports_but_the_host_interface() {
    let layout = Layout::new();
    let sandbox = layout.sandbox(WasmLimits::default());
    for import in [
        r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
        r#"(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))"#,
        r#"(import "env" "system" (func (param i32) (result i32)))"#,
    ] {
        let module = format!(
            r#"(module {import} (memory (export "memory") 1) (func (export "run") (result i32) i32.const 0))"#
        );
        let error = sandbox
            .run(module.as_bytes(), "run", b"", None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("instantiate"), "{import}: {error}");
    }
}

#[test]
fn an_infinite_loop_stops_by_fuel_and_by_wall_time() {
    let layout = Layout::new();
    let spin =
        guest(r#"(func (export "run") (result i32) (loop $forever (br $forever)) (i32.const 0))"#);
    let out = layout.run(
        WasmLimits {
            fuel: 5_000_000,
            ..WasmLimits::default()
        },
        &spin,
        "",
    );
    assert_eq!(out.outcome, WasmOutcome::OutOfFuel, "{out:?}");
    assert!(out.fuel_used >= 5_000_000 - 10, "{out:?}");

    // Fuel that would last for hours: the wall clock stops it.
    let out = layout.run(
        WasmLimits {
            fuel: u64::MAX / 2,
            wall_seconds: 0.3,
            ..WasmLimits::default()
        },
        &spin,
        "",
    );
    assert_eq!(out.outcome, WasmOutcome::TimedOut, "{out:?}");
    assert!(out.wall_ms >= 300.0 && out.wall_ms < 5_000.0, "{out:?}");
}

#[test]
fn memory_and_stack_bombs_are_refused() {
    let layout = Layout::new();
    let limits = WasmLimits {
        memory_bytes: 4 << 20,
        ..WasmLimits::default()
    };
    // Ask for 4 GiB, then for one more page at a time until refused: the guest sees -1, as
    // from a full heap, and its memory stays under the cap.
    let grow = guest(
        r#"(func (export "run") (result i32)
             (if (i32.ne (memory.grow (i32.const 65535)) (i32.const -1)) (then (return (i32.const 1))))
             (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
             (memory.size))"#,
    );
    let out = layout.run(limits, &grow, "");
    assert_eq!(out.outcome, WasmOutcome::Exited, "{out:?}");
    assert_eq!(out.exit_code, Some(64), "pages under a 4 MiB cap: {out:?}");
    assert_eq!(out.memory_peak_bytes, 4 << 20);
    assert!(out.memory_denied >= 2, "{out:?}");

    // A module that starts over the cap does not start.
    let big = r#"(module (memory (export "memory") 1000) (func (export "run") (result i32) i32.const 0))"#;
    let error = layout
        .sandbox(limits)
        .run(big.as_bytes(), "run", b"", None)
        .unwrap_err();
    assert!(error.to_string().contains("instantiate"), "{error}");

    // Unbounded recursion traps on the stack limit; the host is fine.
    let recurse =
        guest(r#"(func $down (export "run") (result i32) (i32.add (call $down) (i32.const 1)))"#);
    let out = layout.run(limits, &recurse, "");
    assert_eq!(out.outcome, WasmOutcome::Trapped, "{out:?}");
    assert!(
        out.trap.as_deref().unwrap_or("").contains("stack"),
        "{out:?}"
    );
}

#[test]
fn an_output_flood_is_cut_at_the_limit() {
    let layout = Layout::new();
    let flood = guest(
        r#"(data (i32.const 0) "flood flood flood ")
           (func (export "run") (result i32)
             (loop $more (drop (call $output_write (i32.const 0) (i32.const 18))) (br $more))
             (i32.const 0))"#,
    );
    let out = layout.run(
        WasmLimits {
            output_bytes: 1000,
            ..WasmLimits::default()
        },
        &flood,
        "",
    );
    assert_eq!(out.outcome, WasmOutcome::OutputLimit, "{out:?}");
    assert_eq!(out.output.len(), 1000);
    assert!(out.output.starts_with("flood flood"));
}

#[tokio::test]
async fn wasm_run_runs_a_guest_through_the_server() {
    let layout = Layout::new();
    let scratch = layout.path("scratch-root");
    let server = AgentServer::new(DataRoot::new(layout.path("data")).unwrap())
        .with_wasm(WasmLimits::default(), &scratch)
        .unwrap();
    // An upper-casing filter: input to output, and to /scratch/upper.txt.
    let upper = guest(
        r#"(data (i32.const 8192) "/scratch/upper.txt")
           (func (export "run") (result i32) (local $n i32) (local $i i32) (local $c i32)
             (local.set $n (call $input_read (i32.const 0) (i32.const 4096)))
             (block $done (loop $each
               (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
               (local.set $c (i32.load8_u (local.get $i)))
               (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
                 (then (i32.store8 (local.get $i) (i32.sub (local.get $c) (i32.const 32)))))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br $each)))
             (drop (call $output_write (i32.const 0) (local.get $n)))
             (drop (call $file_write (i32.const 8192) (i32.const 18) (i64.const 0) (i32.const 0) (local.get $n)))
             (i32.const 7))"#,
    );
    let mut pipe = Pipe::open(server).await;
    let result = pipe
        .result(call(
            2,
            "wasm_run",
            json!({"wat": upper, "input": "shout, please"}),
        ))
        .await;
    let report = &result["structuredContent"];
    assert_eq!(report["outcome"], "exited", "{result}");
    assert_eq!(report["exit_code"], 7);
    assert_eq!(report["output"], "SHOUT, PLEASE");
    assert_eq!(report["files"], json!(["upper.txt"]));
    assert!(report["fuel_used"].as_u64().unwrap() > 13);

    // The module as a file under the root; a missing entry and two sources are the caller's
    // errors, as tool errors.
    std::fs::write(layout.path("data/reader.wat"), reader()).unwrap();
    let result = pipe
        .result(call(
            3,
            "wasm_run",
            json!({"path": "reader.wat", "input": "/data/ok.txt"}),
        ))
        .await;
    assert_eq!(
        result["structuredContent"]["output"],
        "hello from the data root"
    );
    for (id, arguments, expected) in [
        (
            4,
            json!({"path": "reader.wat", "entry": "main"}),
            "no function `main`",
        ),
        (
            5,
            json!({"path": "reader.wat", "wat": "(module)"}),
            "exactly one",
        ),
        (6, json!({"path": "../secret.txt"}), "refused"),
        (7, json!({"wat": "(module (func"}), "wasm_run"),
    ] {
        let result = pipe.result(call(id, "wasm_run", arguments)).await;
        assert_eq!(result["isError"], true, "{result}");
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(text.contains(expected), "{text}");
    }
    pipe.close().await;
    // The run's scratch directory is gone.
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
}
