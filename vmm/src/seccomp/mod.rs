//! seccomp filters per VMM thread, compiled with rust-vmm's `seccompiler`.
//!
//! Each thread that handles what a guest controls installs the allow-list of its kind before
//! it touches guest input: the vCPU threads before their first `KVM_RUN`, the device event
//! loop before it serves the first event, the pod process's control thread before it serves
//! its socket and its main thread once the VM is built, the relays before they copy. A thread's filter stays with it and is inherited
//! by the threads it starts (filters stack: a syscall must pass every one).
//!
//! A syscall outside its thread's list does not return: the kernel sends `SIGSYS`
//! (`SECCOMP_RET_TRAP`), whose handler here writes one log line naming the thread and the
//! syscall (to stderr, which is a pod's `vmm.log`, and to the extra log set with
//! [`report_to`]) and ends the process with [`EXIT_BAD_SYSCALL`].
//!
//! A vCPU thread's `ioctl`s are restricted to the requests it makes ([`vcpu_ioctls`]:
//! `KVM_RUN`, the state reads of a pause and a snapshot, the binary statistics descriptor);
//! the other threads' are not (TAP offloads, terminals, the KVM calls of the thread that owns
//! the VM).
//!
//! The lists ([`ThreadKind::allowed`]) cover what the threads do with glibc and with musl (the
//! static build), which use different syscalls for the same call (`open` or `openat`, `poll`
//! or `ppoll`). A JSON file in seccompiler's format ([`Filters::from_file`]) replaces them,
//! with one filter per thread kind named by [`ThreadKind::name`].

mod ioctls;
mod syscalls;

pub use ioctls::vcpu_ioctls;
pub use syscalls::SYSCALLS;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit code of a process ended by a forbidden syscall (128 + SIGSYS, as a shell shows a
/// death by that signal).
pub const EXIT_BAD_SYSCALL: i32 = 128 + libc::SIGSYS;

/// The kinds of thread that get their own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// A vCPU: `KVM_RUN`, its exits to the buses, the saving of its state.
    Vcpu,
    /// The device event loop: virtio queues and their backends (disk files, TAP, vsock Unix
    /// sockets, virtio-fs shares).
    EventLoop,
    /// The VMM's API: a pod process's control server, its main thread and the thread that
    /// owns the VM.
    Control,
    /// Copies between the guest agent's streams and local descriptors.
    Relay,
}

/// What every thread may do: memory, locks, time, signals, its own end.
const COMMON: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "close",
    "lseek",
    "fcntl",
    "fstat",
    "newfstatat",
    "statx",
    "poll",
    "ppoll",
    "futex",
    "mmap",
    "munmap",
    "mremap",
    "madvise",
    "mprotect",
    "brk",
    "rt_sigreturn",
    "rt_sigprocmask",
    "sigaltstack",
    "restart_syscall",
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
    "sched_yield",
    "getrandom",
    "getpid",
    "gettid",
    // abort() on a panic: glibc raises with tgkill, musl with tkill.
    "tgkill",
    "tkill",
    "exit",
    "exit_group",
];

const VCPU: &[&str] = &[
    // Only the requests of `vcpu_ioctls` ([`ThreadKind::ioctls`]); pread64 reads the binary
    // stats descriptor.
    "ioctl", "pread64",
];

/// The syscall number of `ioctl` on x86_64.
const SYS_IOCTL: i64 = 16;

/// Files and directories as the virtio-fs passthrough and the block backends use them, and
/// as the control thread opens disks, shares and snapshot files.
const FILES: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "fallocate",
    "ftruncate",
    "fstatfs",
    "statfs",
    "stat",
    "lstat",
    "access",
    "faccessat",
    "faccessat2",
    "getdents64",
    "mkdir",
    "mkdirat",
    "mknodat",
    "unlink",
    "unlinkat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "linkat",
    "symlinkat",
    "readlink",
    "readlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "utimensat",
    "fgetxattr",
    "fsetxattr",
    "flistxattr",
    "fremovexattr",
    "getxattr",
    "lgetxattr",
    "setxattr",
    "lsetxattr",
    "listxattr",
    "llistxattr",
    "removexattr",
    "lremovexattr",
    "copy_file_range",
    "flock",
    "dup",
    "dup2",
    "dup3",
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "getuid",
    "getgid",
    "geteuid",
    "getegid",
];

/// Unix sockets (vsock's host side, the agent, the control socket): making and naming them.
const SOCKETS: &[&str] = &["socket", "connect", "getsockname", "getpeername"];

/// Talking over connected and listening sockets (every kind that has sockets, the relays'
/// announce thread included).
const SOCKET_IO: &[&str] = &[
    "accept",
    "accept4",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "shutdown",
    "getsockopt",
    "setsockopt",
];

const EVENT_LOOP: &[&str] = &[
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "eventfd2",
    // TAP offloads, terminal state of a console on a tty.
    "ioctl",
    // A rate-limited device arms its limiter's timer.
    "timerfd_settime",
];

const CONTROL: &[&str] = &[
    // KVM ioctls of pause statistics and snapshots; disk and share setup.
    "ioctl",
    "eventfd2",
    "epoll_ctl",
    "pipe2",
    "bind",
    "listen",
    "socketpair",
    // The vCPUs' kick signal handler, installed as the VM starts running.
    "rt_sigaction",
    // The vCPU threads it starts drop their capabilities (under this filter, until they
    // install their own).
    "capget",
    "capset",
    // ...and stack their own filters on this one, having taken their own user.
    "seccomp",
    "setgroups",
    "setresgid",
    "setresuid",
    // A pod process's main thread waits for its poststop hooks' runner (a child started
    // before the filter).
    "wait4",
    // Threads it starts (the vCPUs, from the thread that owns the VM).
    "clone",
    "clone3",
    "set_robust_list",
    "rseq",
    "prctl",
    "sched_getaffinity",
    "uname",
];

const RELAY: &[&str] = &[
    // std::io::copy's zero-copy paths.
    "splice",
    "sendfile",
    "copy_file_range",
    "pipe2",
    "dup",
    // The announce thread takes the guest agent's connection: SOCKET_IO.
];

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::Control,
        ThreadKind::Relay,
    ];

    /// The filter's name in a JSON filter file.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event_loop",
            ThreadKind::Control => "control",
            ThreadKind::Relay => "relay",
        }
    }

    /// The syscalls the built-in filter of this kind allows (by name, sorted).
    pub fn allowed(self) -> Vec<&'static str> {
        let parts: &[&[&str]] = match self {
            ThreadKind::Vcpu => &[COMMON, VCPU],
            ThreadKind::EventLoop => &[COMMON, FILES, SOCKETS, SOCKET_IO, EVENT_LOOP],
            ThreadKind::Control => &[COMMON, FILES, SOCKETS, SOCKET_IO, CONTROL],
            ThreadKind::Relay => &[COMMON, SOCKET_IO, RELAY],
        };
        let mut names: Vec<&'static str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The ioctl requests (name, number) the built-in filter of this kind allows, `None` where
    /// it allows any (the ioctl's argument 1, compared on its low 32 bits: the kernel's `cmd`
    /// is an `unsigned int`, and musl passes it sign-extended).
    pub fn ioctls(self) -> Option<Vec<(&'static str, u64)>> {
        match self {
            ThreadKind::Vcpu => Some(vcpu_ioctls()),
            ThreadKind::EventLoop | ThreadKind::Control | ThreadKind::Relay => None,
        }
    }

    /// The built-in filter's rules: every allowed syscall, unconditionally or (ioctl of a
    /// vCPU) with one rule per allowed request.
    fn rules(self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, Error> {
        let mut rules = BTreeMap::new();
        for name in self.allowed() {
            let nr = syscall_number(name).ok_or(Error::UnknownSyscall(name, self.name()))?;
            let syscall_rules = match (nr, self.ioctls()) {
                (SYS_IOCTL, Some(requests)) => requests
                    .iter()
                    .map(|&(_, request)| {
                        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                            .and_then(|c| SeccompRule::new(vec![c]))
                            .map_err(|e| Error::Compile(self.name(), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => Vec::new(),
            };
            rules.insert(nr, syscall_rules);
        }
        Ok(rules)
    }

    /// `rules` as this kind's program: what they match is allowed, anything else traps.
    fn compile(self, rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, Error> {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(|e| Error::Compile(self.name(), e))?;
        BpfProgram::try_from(filter).map_err(|e| Error::Compile(self.name(), e))
    }
}

/// Why filters could not be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Unknown system call {0:?} in the built-in {1} filter")]
    UnknownSyscall(&'static str, &'static str),
    #[error("Cannot compile the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    #[error("Cannot read the seccomp filter file {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error("Bad seccomp filter file {}", .0.display())]
    Json(PathBuf, #[source] seccompiler::Error),
    #[error("Seccomp filter file {}: {why}", path.display())]
    Kinds { path: PathBuf, why: String },
    #[error("Cannot install the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("Cannot install the SIGSYS handler")]
    Handler(#[source] io::Error),
}

/// What no thread of a shim process does (containerd's shim v2 hosting its pod's VM, the runc
/// face's per-container shim), nor the programs it starts (OCI hooks, `mkfs.ext4`): loading
/// kernel code or a new kernel, rebooting, swap, process accounting, port I/O, handles that
/// open files by inode (the classic container escape), tracing or reading other processes'
/// memory, userfaultfd, the kernel keyring, perf events, quotas. Docker's default profile
/// refuses them too. They fail with EPERM.
pub const SHIM_DENIED: [&str; 23] = [
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "lookup_dcookie",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "quotactl",
    "name_to_handle_at",
];

/// Confines every thread of this process, those running and those to come, and the programs
/// it starts, to everything but [`SHIM_DENIED`] (EPERM). The VM's threads of a shim v2 add
/// their allow-lists on top ([`Filters::install`]).
pub fn deny_for_process() -> Result<(), Error> {
    const NAME: &str = "shim";
    let mut rules = BTreeMap::new();
    for name in SHIM_DENIED {
        let nr = syscall_number(name).ok_or(Error::UnknownSyscall(name, NAME))?;
        rules.insert(nr, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Compile(NAME, e))?;
    let program = BpfProgram::try_from(filter).map_err(|e| Error::Compile(NAME, e))?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| Error::Install(NAME, e))
}

/// One compiled filter per [`ThreadKind`].
pub struct Filters {
    programs: HashMap<ThreadKind, BpfProgram>,
    origin: String,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The number of syscall `name` on x86_64.
pub fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

/// The name of x86_64 syscall `nr`.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    SYSCALLS
        .iter()
        .find(|(_, n)| *n == nr)
        .map(|(name, _)| *name)
}

impl Filters {
    /// ember's allow-lists ([`ThreadKind::allowed`]); anything else traps.
    pub fn builtin() -> Result<Filters, Error> {
        let mut programs = HashMap::new();
        for kind in ThreadKind::ALL {
            programs.insert(kind, kind.compile(kind.rules()?)?);
        }
        Ok(Filters {
            programs,
            origin: "built-in".into(),
        })
    }

    /// Filters from a JSON file in seccompiler's format: an object with exactly one filter
    /// per thread kind (`vcpu`, `event_loop`, `control`, `relay`).
    pub fn from_file(path: &Path) -> Result<Filters, Error> {
        let file = std::fs::File::open(path).map_err(|e| Error::Read(path.to_path_buf(), e))?;
        let mut map = seccompiler::compile_from_json(io::BufReader::new(file), TargetArch::x86_64)
            .map_err(|e| Error::Json(path.to_path_buf(), e))?;
        let mut programs = HashMap::new();
        for kind in ThreadKind::ALL {
            let program = map.remove(kind.name()).ok_or_else(|| Error::Kinds {
                path: path.to_path_buf(),
                why: format!("no filter for the {:?} threads", kind.name()),
            })?;
            programs.insert(kind, program);
        }
        if let Some(other) = map.keys().next() {
            return Err(Error::Kinds {
                path: path.to_path_buf(),
                why: format!("unknown thread kind {other:?} (vcpu, event_loop, control or relay)"),
            });
        }
        Ok(Filters {
            programs,
            origin: path.display().to_string(),
        })
    }

    /// [`Filters::builtin`], compiled once per process.
    pub fn builtin_shared() -> Result<&'static Filters, Error> {
        static BUILTIN: std::sync::OnceLock<Filters> = std::sync::OnceLock::new();
        if let Some(f) = BUILTIN.get() {
            return Ok(f);
        }
        let f = Filters::builtin()?;
        Ok(BUILTIN.get_or_init(|| f))
    }

    /// The built-in filters as a filter file for [`Filters::from_file`]: one syscall per line,
    /// a starting point for a file of one's own. A syscall allowed only with some arguments
    /// (a vCPU's ioctl) has all its rules on its one line, one object per allowed request:
    ///
    /// ```text
    ///       { "syscall": "ioctl", "args": [{ "index": 1, "type": "dword", "op": "eq", "val": 44672, "comment": "KVM_RUN" }] }, { "syscall": "ioctl", "args": [...] }, ...,
    /// ```
    ///
    /// so that deleting that line takes the syscall out entirely.
    pub fn builtin_json() -> String {
        let mut out = String::from("{\n");
        for (i, kind) in ThreadKind::ALL.iter().enumerate() {
            out.push_str(&format!(
                "  \"{}\": {{\n    \"default_action\": \"trap\",\n    \"filter_action\": \"allow\",\n    \"filter\": [\n",
                kind.name()
            ));
            let names = kind.allowed();
            for (j, name) in names.iter().enumerate() {
                let comma = if j + 1 < names.len() { "," } else { "" };
                let line = match (syscall_number(name), kind.ioctls()) {
                    (Some(SYS_IOCTL), Some(requests)) => requests
                        .iter()
                        .map(|(request_name, request)| {
                            format!(
                                "{{ \"syscall\": \"{name}\", \"args\": [{{ \"index\": 1, \"type\": \"dword\", \"op\": \"eq\", \"val\": {request}, \"comment\": \"{request_name}\" }}] }}"
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => format!("{{ \"syscall\": \"{name}\" }}"),
                };
                out.push_str(&format!("      {line}{comma}\n"));
            }
            let comma = if i + 1 < ThreadKind::ALL.len() {
                ","
            } else {
                ""
            };
            out.push_str(&format!("    ]\n  }}{comma}\n"));
        }
        out.push_str("}\n");
        out
    }

    /// Where these filters come from (`built-in` or the file's path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Confine the calling thread to the filter of `kind`. Its name (as `std::thread` knows
    /// it) and kind are what a forbidden syscall's log line names.
    pub fn install(&self, kind: ThreadKind) -> Result<(), Error> {
        install_handler()?;
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        remember_thread(kind, &name);
        let program = &self.programs[&kind];
        if program.is_empty() {
            // A file's filter that compiled to nothing would be refused by the kernel anyway.
            return Err(Error::Install(kind.name(), seccompiler::Error::EmptyFilter));
        }
        seccompiler::apply_filter(program).map_err(|e| Error::Install(kind.name(), e))?;
        log::debug!(
            "seccomp: thread {name} confined to the {} filter ({})",
            kind.name(),
            self.origin
        );
        Ok(())
    }
}

// --- The report of a forbidden syscall -------------------------------------------------------

/// Log lines as JSON objects instead of logrus-style text.
static REPORT_JSON: AtomicBool = AtomicBool::new(false);
/// A second descriptor that gets the line (the engine's log of an OCI pod), or -1.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// How the line about a forbidden syscall is written: in the process log's format, and also
/// to `extra` (a descriptor that stays open for the process's life) when given.
pub fn report_to(json: bool, extra: Option<RawFd>) {
    REPORT_JSON.store(json, Ordering::Relaxed);
    REPORT_FD.store(extra.unwrap_or(-1), Ordering::Relaxed);
}

const NAME_MAX: usize = 32;

thread_local! {
    /// This thread's name and kind, kept where the signal handler can read them without
    /// allocating or locking.
    static THREAD: std::cell::Cell<([u8; NAME_MAX], usize, Option<ThreadKind>)> =
        const { std::cell::Cell::new(([0; NAME_MAX], 0, None)) };
}

fn remember_thread(kind: ThreadKind, name: &str) {
    let mut buf = [0u8; NAME_MAX];
    let n = name.len().min(NAME_MAX);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD.with(|t| t.set((buf, n, Some(kind))));
}

fn install_handler() -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
        // `extern "C"` function with the SA_SIGINFO signature, and the mask is initialised
        // by sigemptyset before use.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = sigsys_handler as extern "C" fn(_, _, _) as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
                result = Err(Error::Handler(io::Error::last_os_error()));
            }
        }
    });
    result
}

/// A fixed buffer that `core::fmt` writes into (no allocation in the signal handler).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The UTC date and time of a Unix time: (year, month, day, hour, minute, second).
fn utc(secs: i64) -> (i64, u64, u64, i64, i64, i64) {
    let (y, mo, d) = devices::legacy::cmos::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    (y, mo, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// The request of a forbidden ioctl as the kernel reads it (its `cmd` is an `unsigned int`;
/// musl passes it sign-extended).
fn ioctl_request(arg1: u64) -> u32 {
    arg1 as u32
}

/// The line the handler writes for syscall `nr` made by the current thread; `request` is an
/// ioctl's request (argument 1), named on the line.
fn report_line(nr: i64, request: Option<u32>, now_secs: i64, json: bool) -> Line {
    use std::fmt::Write;
    let (name, len, kind) = THREAD.with(|t| t.get());
    // A thread that installed no filter of its own runs under its creator's: std's handle
    // (set when the thread started; no allocation to read it) still names it.
    let current = std::thread::current();
    let thread = match kind {
        Some(_) => std::str::from_utf8(&name[..len]).unwrap_or("?"),
        None => current.name().unwrap_or("unnamed"),
    };
    let kind = kind.map_or("inherited", ThreadKind::name);
    let call = syscall_name(nr).unwrap_or("unknown");
    let (y, mo, d, h, mi, s) = utc(now_secs);
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    // " request 0x…" for an ioctl, nothing for any other call.
    struct Request(Option<u32>);
    impl std::fmt::Display for Request {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                Some(r) => write!(f, " request {r:#x}"),
                None => Ok(()),
            }
        }
    }
    let request = Request(request.filter(|_| nr == SYS_IOCTL));
    let msg_args = format_args!(
        "seccomp: thread {thread} ({kind} filter) made the forbidden system call {call} ({nr}){request}; the process ends"
    );
    let _ = if json {
        writeln!(
            line,
            r#"{{"level":"error","msg":"{msg_args}","time":"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z","thread":"{thread}","module":"vmm::seccomp"}}"#
        )
    } else {
        writeln!(
            line,
            r#"time="{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z" level=error msg="{msg_args}" thread={thread} module=vmm::seccomp"#
        )
    };
    line
}

extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers. For SIGSYS from
    // seccomp its union holds `_sigsys { void *_call_addr; int _syscall; unsigned _arch; }`
    // right after the three leading ints and their padding: `_syscall` is the int at
    // byte offset 24 on x86_64.
    let nr = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    let request = match i64::from(nr) {
        SYS_IOCTL if !ctx.is_null() => {
            // SAFETY: for SA_SIGINFO handlers the third argument is the `ucontext_t` of the
            // interrupted thread; a seccomp trap leaves the syscall's arguments in its
            // registers (x86_64: argument 1 in RSI).
            let rsi = unsafe {
                (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSI as usize]
            };
            Some(ioctl_request(rsi as u64))
        }
        _ => None,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given (vDSO, allowed in every filter).
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let line = report_line(
        i64::from(nr),
        request,
        ts.tv_sec,
        REPORT_JSON.load(Ordering::Relaxed),
    );
    let extra = REPORT_FD.load(Ordering::Relaxed);
    for fd in [libc::STDERR_FILENO, extra] {
        if fd >= 0 {
            // SAFETY: write(2) of an initialised buffer; async-signal-safe.
            unsafe { libc::write(fd, line.buf.as_ptr().cast(), line.len) };
        }
    }
    // SAFETY: _exit is async-signal-safe and ends the whole process at once.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) };
}

#[cfg(test)]
mod tests;
