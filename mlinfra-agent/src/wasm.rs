//! The WebAssembly sandbox: guest code run on wasmtime's core runtime, with no ambient
//! authority, behind the `wasm_run` tool.
//!
//! A guest is a core WebAssembly module (binary, or text) that exports its linear memory as
//! `memory` and an entry function (`run` unless named otherwise) taking nothing and returning
//! an `i32` exit code, or nothing (exit code 0). It may import only the functions below, from
//! the module `mlinfra`; anything else fails at instantiation. There is no WASI: no clock,
//! no randomness, no environment, no sockets, no file but the two pre-opened directories.
//!
//! # Host interface
//!
//! Pointers and lengths are `i32` (read as unsigned); file offsets `i64`. A negative result
//! is one of the error codes below.
//!
//! | Import | Does |
//! |---|---|
//! | `input_read(buf, len) -> i32` | copies the next bytes of the run's input; 0 at its end |
//! | `output_write(buf, len) -> i32` | appends to the run's output; past the limit the run stops |
//! | `file_size(path, path_len) -> i64` | a file's size |
//! | `file_read(path, path_len, offset, buf, len) -> i64` | bytes read from `offset` |
//! | `file_write(path, path_len, offset, buf, len) -> i64` | bytes written at `offset` (created if missing) |
//!
//! Paths: `/data/REL` names a file under the server's data root (read only), resolved as every
//! tool resolves paths ([`DataRoot::resolve`]: no `..`, no symlink leading out, no prefix
//! trick); `/scratch/NAME` a file in the run's own scratch directory (read and write; a flat
//! directory, plain names only, opened without following links). Codes: [`NOT_FOUND`],
//! [`DENIED`], [`INVALID`], [`IO_ERROR`], [`QUOTA`].
//!
//! # Limits ([`WasmLimits`])
//!
//! - Fuel (wasmtime counts about one unit per WebAssembly operation): a guest in a loop
//!   stops with `out_of_fuel`, however the host is loaded.
//! - Wall time, by epoch interruption (a ticker increments the engine's epoch every 10 ms):
//!   catches time spent in host calls, which fuel does not count.
//! - Linear memory: a `memory.grow` past the cap returns -1 to the guest, as a full heap
//!   would; a module whose initial memory is over the cap does not instantiate. One
//!   instance, one memory, tables of bounded length, a bounded native stack.
//! - Output bytes; bytes written and files created in the scratch directory; the module's
//!   size (compilation is linear in it, and happens before fuel counts).
//!
//! What it does not cover: Cranelift miscompiling a hostile module (wasmtime's fuzzed
//! compiler is the trust base here, as in every wasmtime embedding); compilation time of a
//! module under the size cap is not preempted.
//!
//! Why a host interface of our own rather than WASI preview 2: WASI's component model and
//! its `wasmtime-wasi` implementation more than double the build this sandbox adds, for a
//! surface (clocks, sockets, environment) the sandbox would then have to switch back off.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rmcp::schemars::{self, JsonSchema};
use serde::Serialize;
use wasmtime::{Caller, Config, Engine, Linker, Memory, Module, Store, Trap};

use crate::{DataRoot, Error, Result};

/// The file or its directory does not exist.
pub const NOT_FOUND: i64 = -1;
/// The path is outside the pre-opened directories, escapes one, or is not writable.
pub const DENIED: i64 = -2;
/// A pointer range outside the guest's memory, a path that is not UTF-8, a negative offset.
pub const INVALID: i64 = -3;
/// The host's read or write failed.
pub const IO_ERROR: i64 = -4;
/// The scratch directory's byte or file quota is spent.
pub const QUOTA: i64 = -5;

/// The import module the host functions live in.
const HOST_MODULE: &str = "mlinfra";
/// How often the epoch ticker advances the engine's epoch.
const TICK: Duration = Duration::from_millis(10);
/// Table elements a guest may have (each a pointer on the host).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Bytes one host call copies at most (guests loop for more).
const MAX_CALL_BYTES: usize = 16 << 20;

/// What a guest may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WasmLimits {
    /// Fuel units (about one per WebAssembly operation).
    pub fuel: u64,
    /// Wall-clock time, seconds (epoch interruption, 10 ms granularity).
    pub wall_seconds: f64,
    /// Linear memory, bytes.
    pub memory_bytes: usize,
    /// Native stack the guest's calls may use, bytes.
    pub stack_bytes: usize,
    /// Output kept, bytes; past it the run stops (`output_limit`).
    pub output_bytes: usize,
    /// Bytes written to the scratch directory, all files together.
    pub write_bytes: u64,
    /// Files created in the scratch directory.
    pub files: usize,
    /// The module's size, binary or text, bytes.
    pub module_bytes: usize,
}

impl Default for WasmLimits {
    /// A billion fuel units, 10 s, 256 MiB of memory, 512 KiB of stack, 1 MiB of output,
    /// 64 MiB and 64 files of scratch, 8 MiB modules.
    fn default() -> Self {
        Self {
            fuel: 1_000_000_000,
            wall_seconds: 10.0,
            memory_bytes: 256 << 20,
            stack_bytes: 512 << 10,
            output_bytes: 1 << 20,
            write_bytes: 64 << 20,
            files: 64,
            module_bytes: 8 << 20,
        }
    }
}

/// How a guest's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WasmOutcome {
    /// The entry function returned.
    Exited,
    /// It trapped (an `unreachable`, a bad memory access, a stack overflow...).
    Trapped,
    /// Its fuel ran out.
    OutOfFuel,
    /// Its wall time ran out.
    TimedOut,
    /// It wrote more output than the limit.
    OutputLimit,
}

/// What a guest did.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct WasmOutput {
    /// How the run ended.
    pub outcome: WasmOutcome,
    /// The entry function's result, when it returned (0 for one returning nothing).
    pub exit_code: Option<i32>,
    /// The trap's message, when it trapped.
    pub trap: Option<String>,
    /// Its output, at most `output_bytes` (lossy UTF-8).
    pub output: String,
    /// Fuel units spent.
    pub fuel_used: u64,
    /// The largest its linear memory grew, bytes.
    pub memory_peak_bytes: usize,
    /// `memory.grow` requests refused for going past the cap.
    pub memory_denied: u32,
    /// Wall time, milliseconds.
    pub wall_ms: f64,
}

/// A configured WebAssembly sandbox; cheap to clone (one engine, one epoch ticker).
#[derive(Debug, Clone)]
pub struct WasmSandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    limits: WasmLimits,
    data: Option<DataRoot>,
    /// Shared by every sandbox made from one [`WasmSandbox::new`].
    ticker: Arc<Ticker>,
}

/// The thread advancing the engine's epoch; stopped when dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmSandbox")
            .field("limits", &self.limits)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl WasmSandbox {
    /// A sandbox with `limits` and no pre-opened directory.
    ///
    /// # Errors
    ///
    /// [`Error::Sandbox`] when wasmtime cannot build an engine for this machine.
    pub fn new(limits: WasmLimits) -> Result<Self> {
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits.stack_bytes);
        let engine = Engine::new(&config).map_err(|error| Error::Sandbox {
            reason: format!("wasmtime: {error}").into(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|error| Error::Sandbox {
                    reason: format!("cannot start the epoch ticker: {error}").into(),
                })?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                limits,
                data: None,
                ticker: Arc::new(Ticker { stop }),
            }),
        })
    }

    /// Pre-opens `root` at `/data`, read only.
    pub fn allow_read(self, root: DataRoot) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                engine: inner.engine.clone(),
                limits: inner.limits,
                data: Some(root),
                ticker: Arc::clone(&inner.ticker),
            }),
        }
    }

    /// The limits runs get.
    pub fn limits(&self) -> &WasmLimits {
        &self.inner.limits
    }

    /// Runs `module` (binary, or WebAssembly text) from its export `entry`, with `input`,
    /// `scratch` pre-opened at `/scratch` when given.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] (tool `wasm_run`) when the module is too large, does not
    /// parse or validate, imports what the host does not offer, needs more memory than the
    /// cap from the start, or lacks `memory` or `entry` of the right type. What the guest does
    /// once running is its [`WasmOutput`], not an error.
    pub fn run(
        &self,
        module: &[u8],
        entry: &str,
        input: &[u8],
        scratch: Option<&Path>,
    ) -> Result<WasmOutput> {
        let limits = self.inner.limits;
        let refuse = |reason: String| Error::InvalidArgument {
            tool: "wasm_run",
            reason: reason.into(),
        };
        if module.len() > limits.module_bytes {
            return Err(refuse(format!(
                "the module is {} bytes, over the limit of {}",
                module.len(),
                limits.module_bytes
            )));
        }
        let binary = wat::parse_bytes(module).map_err(|error| refuse(error.to_string()))?;
        let module = Module::new(&self.inner.engine, &binary)
            .map_err(|error| refuse(format!("invalid module: {error}")))?;

        let host = Host {
            input: input.to_vec(),
            input_read: 0,
            output: Vec::new(),
            output_limit: limits.output_bytes,
            data: self.inner.data.clone(),
            scratch: scratch.map(Path::to_path_buf),
            written: 0,
            files_created: 0,
            limits,
            memory_peak: 0,
            memory_denied: 0,
        };
        let mut store = Store::new(&self.inner.engine, host);
        store.limiter(|host| host);
        store
            .set_fuel(limits.fuel)
            .map_err(|error| Error::Internal {
                reason: format!("fuel: {error}").into(),
            })?;
        let ticks = (limits.wall_seconds / TICK.as_secs_f64()).ceil().max(1.0) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let linker = host_interface(&self.inner.engine)?;
        let started = Instant::now();
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(|error| refuse(format!("cannot instantiate: {error}")))?;
        if instance.get_memory(&mut store, "memory").is_none() {
            return Err(refuse("the module exports no memory named `memory`".into()));
        }
        let result = if let Ok(run) = instance.get_typed_func::<(), i32>(&mut store, entry) {
            run.call(&mut store, ())
        } else if let Ok(run) = instance.get_typed_func::<(), ()>(&mut store, entry) {
            run.call(&mut store, ()).map(|()| 0)
        } else {
            return Err(refuse(format!(
                "the module exports no function `{entry}` taking nothing and returning an i32 \
                 or nothing"
            )));
        };
        let wall_ms = started.elapsed().as_secs_f64() * 1e3;
        let fuel_used = limits.fuel - store.get_fuel().unwrap_or(0);
        let (outcome, exit_code, trap) = match result {
            Ok(code) => (WasmOutcome::Exited, Some(code), None),
            Err(error) => {
                let trap = error.downcast_ref::<Trap>().copied();
                let outcome = match trap {
                    _ if error.downcast_ref::<OutputLimit>().is_some() => WasmOutcome::OutputLimit,
                    Some(Trap::OutOfFuel) => WasmOutcome::OutOfFuel,
                    Some(Trap::Interrupt) => WasmOutcome::TimedOut,
                    _ => WasmOutcome::Trapped,
                };
                // The trap itself, not the guest's backtrace wrapped around it.
                let message = trap.map_or_else(|| error.to_string(), |trap| trap.to_string());
                (outcome, None, Some(message))
            }
        };
        let host = store.into_data();
        Ok(WasmOutput {
            outcome,
            exit_code,
            trap,
            output: String::from_utf8_lossy(&host.output).into_owned(),
            fuel_used,
            memory_peak_bytes: host.memory_peak,
            memory_denied: host.memory_denied,
            wall_ms,
        })
    }
}

/// The guest's output passed its limit: returned from `output_write` to stop the run.
#[derive(Debug)]
struct OutputLimit;

impl std::fmt::Display for OutputLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("output limit reached")
    }
}

impl std::error::Error for OutputLimit {}

/// One run's host state.
struct Host {
    input: Vec<u8>,
    input_read: usize,
    output: Vec<u8>,
    output_limit: usize,
    data: Option<DataRoot>,
    scratch: Option<PathBuf>,
    written: u64,
    files_created: usize,
    limits: WasmLimits,
    memory_peak: usize,
    memory_denied: u32,
}

impl wasmtime::ResourceLimiter for Host {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            self.memory_denied += 1;
            return Ok(false);
        }
        self.memory_peak = self.memory_peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// A file a guest names, once checked.
enum GuestPath {
    /// Under the data root: read only.
    Data(PathBuf),
    /// In the scratch directory: a plain name.
    Scratch(PathBuf),
}

impl Host {
    /// Where `path` leads, or the error code to return.
    fn resolve(&self, path: &str) -> Result<GuestPath, i64> {
        if let Some(relative) = path.strip_prefix("/data/") {
            let root = self.data.as_ref().ok_or(DENIED)?;
            return match root.resolve(relative) {
                Ok(resolved) => Ok(GuestPath::Data(resolved)),
                Err(Error::PathRefused { reason, .. }) if reason.starts_with("no such") => {
                    Err(NOT_FOUND)
                }
                Err(_) => Err(DENIED),
            };
        }
        if let Some(name) = path.strip_prefix("/scratch/") {
            let dir = self.scratch.as_ref().ok_or(DENIED)?;
            let plain = !name.is_empty()
                && name.len() <= 255
                && name != "."
                && name != ".."
                && !name.contains(['/', '\0']);
            return if plain {
                Ok(GuestPath::Scratch(dir.join(name)))
            } else {
                Err(DENIED)
            };
        }
        Err(DENIED)
    }

    fn file_size(&self, path: &str) -> i64 {
        let path = match self.resolve(path) {
            Ok(GuestPath::Data(path) | GuestPath::Scratch(path)) => path,
            Err(code) => return code,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => i64::try_from(meta.len()).unwrap_or(IO_ERROR),
            Ok(_) => DENIED,
            Err(error) => io_code(&error),
        }
    }

    fn file_read(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> i64 {
        let file = match self.resolve(path) {
            Ok(GuestPath::Data(path)) => std::fs::File::open(path),
            Ok(GuestPath::Scratch(path)) => open_no_follow(&path, false),
            Err(code) => return code,
        };
        let read = file.and_then(|mut file| {
            if !file.metadata()?.is_file() {
                return Err(std::io::ErrorKind::PermissionDenied.into());
            }
            file.seek(SeekFrom::Start(offset))?;
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            Ok(filled)
        });
        match read {
            Ok(n) => n as i64,
            Err(error) => io_code(&error),
        }
    }

    fn file_write(&mut self, path: &str, offset: u64, bytes: &[u8]) -> i64 {
        if path.starts_with("/data/") {
            return DENIED;
        }
        let path = match self.resolve(path) {
            Ok(GuestPath::Scratch(path)) => path,
            Ok(GuestPath::Data(_)) => return DENIED,
            Err(code) => return code,
        };
        if self.written + bytes.len() as u64 > self.limits.write_bytes
            || offset.saturating_add(bytes.len() as u64) > self.limits.write_bytes
        {
            return QUOTA;
        }
        let exists = path.symlink_metadata().is_ok();
        if !exists && self.files_created >= self.limits.files {
            return QUOTA;
        }
        let written = open_no_follow(&path, true).and_then(|mut file| {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(bytes)
        });
        if !exists && path.symlink_metadata().is_ok() {
            self.files_created += 1;
        }
        match written {
            Ok(()) => {
                self.written += bytes.len() as u64;
                bytes.len() as i64
            }
            Err(error) => io_code(&error),
        }
    }
}

/// Opens `path` without following a symlink at its end; for writing, creating it (0600).
fn open_no_follow(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .create(write)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The error code for a failed file operation.
fn io_code(error: &std::io::Error) -> i64 {
    match error.kind() {
        std::io::ErrorKind::NotFound => NOT_FOUND,
        std::io::ErrorKind::PermissionDenied => DENIED,
        _ if error.raw_os_error() == Some(libc::ELOOP) => DENIED,
        _ => IO_ERROR,
    }
}

/// The guest's bytes at `[pointer, pointer + length)`, read as unsigned; `None` when outside
/// its memory.
fn guest_range(memory: &[u8], pointer: i32, length: i32) -> Option<std::ops::Range<usize>> {
    let start = pointer as u32 as usize;
    let end = start.checked_add(length as u32 as usize)?;
    (end <= memory.len()).then_some(start..end)
}

/// The guest's exported memory (checked to exist before the entry runs).
fn memory(caller: &mut Caller<'_, Host>) -> Option<Memory> {
    caller
        .get_export("memory")
        .and_then(|export| export.into_memory())
}

/// A path argument as UTF-8, or `INVALID`.
fn guest_path(memory: &[u8], pointer: i32, length: i32) -> Result<String, i64> {
    let range = guest_range(memory, pointer, length).ok_or(INVALID)?;
    std::str::from_utf8(&memory[range])
        .map(str::to_owned)
        .map_err(|_| INVALID)
}

/// `file_read` and `file_write`: the path and buffer checked against the guest's memory, then
/// `op` on at most [`MAX_CALL_BYTES`] of the buffer.
fn file_call(
    mut caller: Caller<'_, Host>,
    (path, path_len): (i32, i32),
    offset: i64,
    (buf, len): (i32, i32),
    op: impl FnOnce(&mut Host, &str, u64, &mut [u8]) -> i64,
) -> i64 {
    let Some(memory) = memory(&mut caller) else {
        return INVALID;
    };
    let (bytes, host) = memory.data_and_store_mut(&mut caller);
    let path = match guest_path(bytes, path, path_len) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let (Ok(offset), Some(range)) = (u64::try_from(offset), guest_range(bytes, buf, len)) else {
        return INVALID;
    };
    let end = range.start + range.len().min(MAX_CALL_BYTES);
    op(host, &path, offset, &mut bytes[range.start..end])
}

/// The `mlinfra` import module.
fn host_interface(engine: &Engine) -> Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    let failed = |error: wasmtime::Error| Error::Internal {
        reason: format!("wasm host interface: {error}").into(),
    };
    linker
        .func_wrap(
            HOST_MODULE,
            "input_read",
            |mut caller: Caller<'_, Host>, buf: i32, len: i32| -> i32 {
                let Some(memory) = memory(&mut caller) else {
                    return INVALID as i32;
                };
                let (bytes, host) = memory.data_and_store_mut(&mut caller);
                let Some(range) = guest_range(bytes, buf, len) else {
                    return INVALID as i32;
                };
                let rest = &host.input[host.input_read..];
                let n = rest.len().min(range.len()).min(MAX_CALL_BYTES);
                bytes[range.start..range.start + n].copy_from_slice(&rest[..n]);
                host.input_read += n;
                n as i32
            },
        )
        .map_err(failed)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "output_write",
            |mut caller: Caller<'_, Host>, buf: i32, len: i32| -> wasmtime::Result<i32> {
                let Some(memory) = memory(&mut caller) else {
                    return Ok(INVALID as i32);
                };
                let (bytes, host) = memory.data_and_store_mut(&mut caller);
                let Some(range) = guest_range(bytes, buf, len) else {
                    return Ok(INVALID as i32);
                };
                let room = host.output_limit - host.output.len();
                let kept = range.len().min(room);
                host.output
                    .extend_from_slice(&bytes[range.start..range.start + kept]);
                if kept < range.len() {
                    return Err(wasmtime::Error::new(OutputLimit));
                }
                Ok(kept as i32)
            },
        )
        .map_err(failed)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "file_size",
            |mut caller: Caller<'_, Host>, path: i32, path_len: i32| -> i64 {
                let Some(memory) = memory(&mut caller) else {
                    return INVALID;
                };
                let (bytes, host) = memory.data_and_store_mut(&mut caller);
                match guest_path(bytes, path, path_len) {
                    Ok(path) => host.file_size(&path),
                    Err(code) => code,
                }
            },
        )
        .map_err(failed)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "file_read",
            |caller: Caller<'_, Host>,
             path: i32,
             path_len: i32,
             offset: i64,
             buf: i32,
             len: i32| {
                file_call(
                    caller,
                    (path, path_len),
                    offset,
                    (buf, len),
                    Host::file_read,
                )
            },
        )
        .map_err(failed)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "file_write",
            |caller: Caller<'_, Host>,
             path: i32,
             path_len: i32,
             offset: i64,
             buf: i32,
             len: i32| {
                file_call(
                    caller,
                    (path, path_len),
                    offset,
                    (buf, len),
                    |host, path, offset, bytes| host.file_write(path, offset, bytes),
                )
            },
        )
        .map_err(failed)?;
    Ok(linker)
}
