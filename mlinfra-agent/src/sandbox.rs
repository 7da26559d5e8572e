//! A subprocess sandbox for tools that run user-supplied commands: the command runs with
//! resource limits, a filesystem allow-list, no network and a narrowed set of system calls,
//! and is killed (with everything it started) past its time or its output budget.
//!
//! The layers, each enforced by the kernel on the child before it executes the command:
//! - **rlimits** (`rlimit`): CPU seconds, address space, processes, open files, file size, no
//!   core dumps. When this server runs as root the child also drops to `nobody` (65534), so
//!   the process limit applies (the kernel does not count root's processes against it).
//! - **Landlock** (`landlock`, ABI 4 or later, or the sandbox refuses to run): reads only under
//!   the system directories a program needs to load (`/usr`, `/lib`, `/lib64`, `/bin`, the
//!   loader's cache, `/dev/zero`, `/dev/urandom`; `/dev/null` also writable) and the
//!   directories given as readable, writes only under those given as writable; no TCP bind
//!   or connect; from ABI 6, no signals to processes outside the sandbox and no abstract Unix
//!   sockets. Rules are about the files reached, not the names used, so `..`, symbolic links
//!   and name prefixes (`/data-evil` beside `/data`) lead nowhere new.
//! - **seccomp** (`seccompiler`, Firecracker's): `socket` (every other kind of network, raw
//!   sockets, netlink), leaving the process group (`setsid`, `setpgid`), `ptrace`, mounts,
//!   new namespaces (`unshare`, `setns`, `clone` with a `CLONE_NEW*` flag; `clone3` answers
//!   `ENOSYS` so the C library falls back to `clone`), module loading, `bpf`, keyrings,
//!   `io_uring` (which bypasses seccomp), cross-process memory, and changing owners, modes,
//!   times or extended attributes (which Landlock does not cover) fail with `EPERM`.
//! - **a process group of its own**, which it cannot leave: the wall-clock limit, the output
//!   budget and the command's end kill the whole group (a fork bomb's children included).
//!
//! Known gaps: without Landlock ABI 6 (Linux 6.12) signals are not scoped, so a command run
//! with the server's own uid (a server not running as root) could signal the server; the
//! process limit counts every process of the sandbox's uid (as `nobody`, shared by concurrent
//! runs), where a cgroup's `pids.max` would count one run's.
//!
//! The threat model is Firecracker's and gVisor's in miniature: the command is hostile, the
//! kernel is trusted. A microVM or gVisor would also shrink the kernel's surface; that is not
//! attempted here.
//!
//! The ruleset and the filter are built in the parent; between `fork` and `exec` the child
//! only makes system calls (no allocation: the parent may have other threads).

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};
use rmcp::schemars::{self, JsonSchema};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The Landlock ABI the sandbox needs: 4 adds TCP rules (Linux 6.7). From ABI 6 it also
/// scopes signals and abstract Unix sockets.
pub const REQUIRED_LANDLOCK_ABI: i64 = 4;

/// System paths every program may read (and execute): the loader, libraries, binaries.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/dev/zero",
    "/dev/urandom",
];

/// The uid and gid of `nobody`, which the child becomes when the server runs as root.
const NOBODY: u32 = 65534;

/// What a sandboxed command may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Limits {
    /// CPU seconds (`RLIMIT_CPU`): then `SIGXCPU`, and `SIGKILL` one second later.
    pub cpu_seconds: u64,
    /// Address space, bytes (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Processes of the sandbox's user (`RLIMIT_NPROC`).
    pub processes: u64,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// The largest file it may write, bytes (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Wall-clock time before the whole process group is killed.
    pub wall_seconds: f64,
    /// Bytes of stdout and of stderr kept; past either, the process group is killed.
    pub output_bytes: usize,
}

impl Default for Limits {
    /// 10 CPU seconds, 1 GiB of address space, 64 processes, 64 open files, 64 MiB files,
    /// 30 s of wall time, 1 MiB of each output stream.
    fn default() -> Self {
        Self {
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            processes: 64,
            open_files: 64,
            file_bytes: 64 << 20,
            wall_seconds: 30.0,
            output_bytes: 1 << 20,
        }
    }
}

/// What a sandboxed command did.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SandboxOutput {
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did (9 when the sandbox killed it).
    pub signal: Option<i32>,
    /// Its standard output, at most `output_bytes` (lossy UTF-8).
    pub stdout: String,
    /// Its standard error, likewise.
    pub stderr: String,
    /// Whether an output stream passed `output_bytes` (the process group was then killed).
    pub truncated: bool,
    /// Whether it ran past `wall_seconds` (the process group was then killed).
    pub timed_out: bool,
    /// Wall time, milliseconds.
    pub wall_ms: f64,
}

/// A sandbox configuration: the limits and the directories a command may read and write.
#[derive(Debug, Clone)]
pub struct Sandbox {
    limits: Limits,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
}

/// The running kernel's Landlock ABI version; 0 without Landlock.
pub fn landlock_abi() -> i64 {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // SAFETY: with these arguments the call only reports the ABI version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    version.max(0)
}

/// Whether a kernel with Landlock ABI `abi` can run the sandbox: an error saying why not
/// (the sandbox refuses to run a command unconfined).
///
/// # Errors
///
/// [`Error::Sandbox`] when `abi` is below [`REQUIRED_LANDLOCK_ABI`].
pub fn check_support(abi: i64) -> Result<()> {
    if abi >= REQUIRED_LANDLOCK_ABI {
        return Ok(());
    }
    let what = if abi == 0 {
        "this kernel has no Landlock (not built in, or not in the `lsm=` boot list)".to_owned()
    } else {
        format!("this kernel's Landlock is ABI {abi}, without network rules")
    };
    Err(Error::Sandbox {
        reason: format!(
            "{what}; the sandbox needs ABI {REQUIRED_LANDLOCK_ABI} (Linux 6.7) and will not run commands unconfined"
        )
        .into(),
    })
}

impl Sandbox {
    /// A sandbox with `limits`, reading only the system paths until told more.
    ///
    /// # Errors
    ///
    /// [`Error::Sandbox`] when the kernel cannot enforce it (see [`check_support`]).
    pub fn new(limits: Limits) -> Result<Self> {
        check_support(landlock_abi())?;
        Ok(Self {
            limits,
            read: Vec::new(),
            write: Vec::new(),
        })
    }

    /// Also lets commands read (and execute) files under `dir`.
    #[must_use]
    pub fn allow_read(mut self, dir: impl Into<PathBuf>) -> Self {
        self.read.push(dir.into());
        self
    }

    /// Also lets commands create, write and delete files under `dir`.
    #[must_use]
    pub fn allow_write(mut self, dir: impl Into<PathBuf>) -> Self {
        self.write.push(dir.into());
        self
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `program` with `args` in `cwd`, `stdin` as its input, inside the sandbox.
    ///
    /// # Errors
    ///
    /// [`Error::Sandbox`] when the sandbox cannot be set up or the command cannot start (a
    /// missing program, a refused directory); what the command itself does is in the output.
    pub fn run(
        &self,
        program: &Path,
        args: &[String],
        cwd: &Path,
        stdin: &[u8],
    ) -> Result<SandboxOutput> {
        let failed = |what: &str, error: &dyn std::fmt::Display| Error::Sandbox {
            reason: format!("{what}: {error}").into(),
        };
        let mut ruleset = Some(
            self.ruleset()
                .map_err(|e| failed("the Landlock ruleset", &e))?,
        );
        let filters = syscall_filters().map_err(|e| failed("the seccomp filter", &e))?;
        // SAFETY: geteuid cannot fail.
        let drop_root = unsafe { libc::geteuid() } == 0;
        let limits = self.limits.clone();
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", cwd)
            .env("TMPDIR", cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and only makes system
        // calls on values prepared in the parent (no allocation, no locks).
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                set_limits(&limits)?;
                if drop_root
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(NOBODY) != 0
                        || libc::setuid(NOBODY) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                let ruleset = ruleset
                    .take()
                    .ok_or_else(|| std::io::Error::other("ruleset used"))?;
                match ruleset.restrict_self() {
                    Ok(status) if status.ruleset == RulesetStatus::FullyEnforced => {}
                    _ => return Err(std::io::Error::other("Landlock not enforced")),
                }
                for filter in &filters {
                    seccompiler::apply_filter(filter).map_err(std::io::Error::other)?;
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| failed(&format!("starting {}", program.display()), &e))?;
        let group = child.id() as libc::pid_t;
        let kill_group = move || {
            // SAFETY: signalling our child's process group.
            unsafe { libc::killpg(group, libc::SIGKILL) };
        };
        let overflowed = Arc::new(AtomicBool::new(false));
        let readers = [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ]
        .map(|stream| {
            let (overflowed, cap) = (Arc::clone(&overflowed), self.limits.output_bytes);
            std::thread::spawn(move || capture(stream, cap, &overflowed, kill_group))
        });
        // Input on a thread of its own: a command that does not read it must not stop the
        // clock (a full pipe would block this thread forever).
        if let Some(mut input) = child.stdin.take() {
            let stdin = stdin.to_vec();
            std::thread::spawn(move || {
                // A command that does not read its input closes the pipe: not an error.
                let _ = input.write_all(&stdin);
            });
        }
        let deadline = Duration::from_secs_f64(self.limits.wall_seconds.max(0.0));
        let mut timed_out = false;
        let status = loop {
            match child.try_wait().map_err(|e| failed("waiting", &e))? {
                Some(status) => break status,
                None if started.elapsed() >= deadline => {
                    timed_out = true;
                    kill_group();
                    break child.wait().map_err(|e| failed("waiting", &e))?;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        // Whatever the command left behind (a fork bomb's children) goes with it.
        kill_group();
        // The group is dead, so its pipes close; the readers end promptly.
        let [stdout, stderr] = readers.map(|reader| reader.join().unwrap_or_default());
        Ok(SandboxOutput {
            exit_code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            truncated: overflowed.load(Ordering::Relaxed),
            timed_out,
            wall_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The Landlock ruleset: every filesystem access and TCP handled (so denied unless a rule
    /// allows it), reads of the system paths and `read`, everything under `write`.
    fn ruleset(&self) -> std::result::Result<RulesetCreated, Box<dyn std::error::Error>> {
        // The newest ABI this kernel has that the sandbox uses (checked at `new`: at least 4).
        let abi = if landlock_abi() >= 6 {
            ABI::V6
        } else {
            ABI::V4
        };
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))?
            .handle_access(AccessNet::from_all(abi))?
            .scope(Scope::from_all(abi))?
            .create()?;
        // System files (the loader's cache, devices) get the file subset of the read rights;
        // those this system lacks are skipped.
        ruleset = ruleset.add_rules(landlock::path_beneath_rules(
            SYSTEM_READ,
            AccessFs::from_read(abi),
        ))?;
        ruleset = ruleset.add_rules(landlock::path_beneath_rules(
            ["/dev/null"],
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))?;
        for (dirs, access) in [
            (&self.read, AccessFs::from_read(abi)),
            (&self.write, AccessFs::from_all(abi)),
        ] {
            for dir in dirs {
                let fd = PathFd::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
            }
        }
        Ok(ruleset)
    }
}

/// The system calls a sandboxed command may not make (`EPERM`), then `clone3` answering
/// `ENOSYS` (its flags are behind a pointer a filter cannot read; the C library then uses
/// `clone`, whose namespace flags the first filter refuses).
fn syscall_filters() -> std::result::Result<[BpfProgram; 2], Box<dyn std::error::Error>> {
    let mut denied = vec![
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_setsid,
        libc::SYS_setpgid,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        // Owners, modes, times and extended attributes: not covered by Landlock.
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_fremovexattr,
    ];
    #[cfg(target_arch = "x86_64")]
    denied.extend([
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_utime,
        libc::SYS_utimes,
        libc::SYS_futimesat,
    ]);
    let arch = std::env::consts::ARCH.try_into()?;
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
        denied.into_iter().map(|call| (call, Vec::new())).collect();
    // `clone` creating a namespace: one rule per flag (a rule matches when its flag is set).
    let namespaces = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWCGROUP,
    ];
    let clone_rules = namespaces
        .into_iter()
        .map(|flag| {
            let flag = flag as u64;
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let refuse = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let no_clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok([refuse.try_into()?, no_clone3.try_into()?])
}

/// The child's resource limits.
fn set_limits(limits: &Limits) -> std::io::Result<()> {
    use rlimit::Resource;
    // CPU: SIGXCPU at the limit (a chance to stop cleanly), SIGKILL a second later.
    Resource::CPU.set(limits.cpu_seconds, limits.cpu_seconds.saturating_add(1))?;
    for (resource, value) in [
        (Resource::AS, limits.memory_bytes),
        (Resource::NPROC, limits.processes),
        (Resource::NOFILE, limits.open_files),
        (Resource::FSIZE, limits.file_bytes),
        (Resource::CORE, 0),
    ] {
        resource.set(value, value)?;
    }
    Ok(())
}

/// Reads `stream` to its end keeping at most `cap` bytes; past `cap`, flags the overflow and
/// kills the process group (a flood is stopped, not buffered).
fn capture(
    stream: Option<Box<dyn Read + Send>>,
    cap: usize,
    overflowed: &AtomicBool,
    kill_group: impl Fn(),
) -> Vec<u8> {
    let Some(mut stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return kept,
            Ok(read) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..read.min(room)]);
                if read > room {
                    overflowed.store(true, Ordering::Relaxed);
                    kill_group();
                    return kept;
                }
            }
        }
    }
}
