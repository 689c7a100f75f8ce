//! A pod's VM lives in its own detached ember process (`ember pod __vmm --root R ID`), or on
//! a thread of a long-lived ember process that is the pod's process ([`host`]: containerd's
//! shim v2), which serves it the same way.
//!
//! The starter ([`spawn`]) runs `std::env::current_exe()` in a new session with stdio to
//! `<pod dir>/vmm.log` and one end of a notify socketpair on fd 3 (`EMBER_NOTIFY_FD=3`). The
//! VMM process ([`serve`]) binds `<pod dir>/vsock.sock_1025` (where the guest agent announces
//! itself with its `Hello` frame) and `<pod dir>/control.sock`, boots the VM with the vmm
//! library (vsock UDS `<pod dir>/vsock.sock`, console `<pod dir>/console.log`), and reports on
//! the socket in the pod protocol ([`protocol::Report`]): the phases, then `Ready` once the
//! agent announced, or `Failed`.
//! The starter waits for `Ready` with a timeout ([`Spawned::wait_ready`]); on error, EOF (the
//! process died) or timeout it kills the process group and reports the cause with the log's
//! tail. After `Ready` it records the pod process and commits ([`Spawned::commit`]); a
//! [`Spawned`] dropped uncommitted kills the process. The VMM process waits for the commit
//! with the start timeout and ends itself (VM, agent, sockets) when its starter closes the
//! socket or never commits: a starter killed or failing at any step leaves nothing running.
//!
//! After `Ready` the VMM process serves its control socket ([`control`]: ping, pause, resume,
//! stop, disk slots, shares, snapshots, counters, and the pod's event stream, [`events`]:
//! container exits relayed from the agent's own stream, pause, resume, the VM's end) until the
//! VM ends, and checks that the guest's agent answers
//! ([`watchdog`]: a VM whose agent stays silent for `agent_timeout_secs` is stopped). When the
//! VM ends on its own (guest shutdown, crash) the process marks the pod stopped itself and
//! runs the poststop hooks, through a [`hooks::Runner`] started before its main thread took
//! its seccomp filter; when `stop` was requested, the caller that asked does that.

pub mod cgroup;
pub mod control;
pub mod events;
pub mod host_agent;
pub mod jail;
pub mod proc;
pub mod protocol;
mod vm;
mod watchdog;

use crate::state::{LockKind, Phase, PodLock, PodRecord, State, VmmProcess};
use crate::{config, hooks};
use agent::client::AgentCalls;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use protocol::{Commit, Message, Report, VERSION};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Control socket file in a pod directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Where the agent's readiness announcement arrives (vsock port 1025 on the host side).
pub const ANNOUNCE_SOCKET: &str = "vsock.sock_1025";
/// stdout/stderr of the VMM process.
pub const LOG_FILE: &str = "vmm.log";
/// The guest's serial console.
pub const CONSOLE_FILE: &str = "console.log";
/// Environment variable carrying the notify socket's fd number.
pub const NOTIFY_FD_ENV: &str = "EMBER_NOTIFY_FD";
/// The fd the notify socket gets in the VMM process.
const NOTIFY_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot find the ember executable")]
    Exe(#[source] std::io::Error),
    #[error("Cannot open {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot create the notify socket")]
    Socket(#[source] std::io::Error),
    #[error("Cannot start the VMM process")]
    Spawn(#[source] std::io::Error),
    #[error("The VMM process failed: {message}")]
    Failed { message: String },
    #[error("The VMM process exited before the guest was ready; vmm.log: {log_tail}")]
    Died { log_tail: String },
    #[error("The guest agent did not announce itself within {0:?} (see console.log in the pod directory)")]
    Timeout(Duration),
    #[error("The guest agent did not announce itself within {timeout:?}; VMM phases: {phases} (see console.log in the pod directory)")]
    NotReady { timeout: Duration, phases: String },
    #[error("Cannot use the notify socket")]
    Notify(#[source] std::io::Error),
    #[error("Bad report on the notify socket")]
    NotifyFrame(#[source] agent::protocol::FrameError),
    #[error("Cannot commit the start: the VMM process is gone")]
    Commit(#[source] agent::protocol::FrameError),
    #[error("The ember process that started the pod went away before the start was committed")]
    Orphaned,
    #[error("The start was not committed within {0:?}")]
    NotCommitted(Duration),
    #[error("Cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Pod state")]
    State(#[source] crate::state::Error),
    #[error("Pod lock")]
    Lock(#[source] crate::state::lock::Error),
    #[error("The VM failed")]
    Vm(#[source] vm::Error),
    #[error("The host agent failed")]
    HostAgent(#[source] host_agent::Error),
    #[error("Cannot start the poststop hooks' runner")]
    HookRunner(#[source] std::io::Error),
    #[error("The VM ended before the guest agent was ready: {0}")]
    EndedEarly(String),
    #[error("Cannot set up logging")]
    Logging(#[source] crate::logging::Error),
    #[error("Cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("Agent call {call} failed")]
    Agent {
        call: &'static str,
        #[source]
        source: crate::agent_link::Error,
    },
    #[error("Cannot read host entropy for the restored guest")]
    Entropy(#[source] std::io::Error),
}

/// A spawned VMM process (or a VM hosted on a thread of this process, [`host`]) whose start
/// is not committed yet. Dropped uncommitted, it is killed (with its session) and its sockets
/// go; a hosted one is told that its starter is gone, stops its VM and is joined.
#[derive(Debug)]
pub struct Spawned {
    /// The process, known from the moment it is spawned.
    pub process: VmmProcess,
    child: Option<std::process::Child>,
    thread: Option<std::thread::JoinHandle<()>>,
    channel: UnixStream,
    dir: PathBuf,
    log_path: PathBuf,
    start: Instant,
}

/// Start the detached VMM process of pod `pod`; [`Spawned::wait_ready`] then waits for its
/// guest agent.
pub fn spawn(root: &Path, pod: &str, dir: &Path) -> Result<Spawned, Error> {
    let exe = std::env::current_exe().map_err(Error::Exe)?;
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| Error::Log {
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| Error::Log {
        path: log_path.clone(),
        source,
    })?;
    remove_sockets(dir);
    // Both ends close on exec; the child's end is put on fd 3 without it in pre_exec.
    let (ours, theirs) = UnixStream::pair().map_err(Error::Socket)?;
    let their_raw = theirs.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .args(["pod", "__vmm", pod])
        .env(NOTIFY_FD_ENV, NOTIFY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (setsid, dup2, fcntl) on fds that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if their_raw == NOTIFY_FD {
                // dup2 onto itself keeps O_CLOEXEC: clear it.
                if libc::fcntl(NOTIFY_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(their_raw, NOTIFY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let child = cmd.spawn().map_err(Error::Spawn)?;
    drop(theirs);
    let pid = child.id() as i32;
    Ok(Spawned {
        process: VmmProcess {
            pid,
            start_time: proc::start_time(pid).unwrap_or(0),
            hosted: false,
        },
        child: Some(child),
        thread: None,
        channel: ours,
        dir: dir.to_path_buf(),
        log_path,
        start,
    })
}

/// Boot and serve pod `dir`'s VM on a thread of this process instead of a process of its own:
/// containerd's shim v2 hosts its pod's VM so (the shim *is* the pod process, as Kata's
/// runtime-rs shim hosts Dragonball). The thread is the pod process's main thread in all but
/// name: it takes the same seccomp filter, starts the same jailed VM, control, event and
/// watchdog threads, and ends when the VM does, its sockets removed last. What is per process
/// stays the host's: its logger (the VM's lines go to the shim's log), and its cgroup, which
/// becomes the pod's while the VM runs (Kata's `sandbox_cgroup_only`).
pub fn host(dir: &Path) -> Result<Spawned, Error> {
    remove_sockets(dir);
    let (ours, theirs) = UnixStream::pair().map_err(Error::Socket)?;
    let process = VmmProcess {
        hosted: true,
        ..proc::this_process().ok_or_else(|| {
            Error::Spawn(std::io::Error::other(
                "cannot read this process's start time",
            ))
        })?
    };
    let start = Instant::now();
    let vm_dir = dir.to_path_buf();
    let thread = crate::logging::spawn("pod-vmm", move || {
        let _ = serve_with(&vm_dir, Notifier(Some(theirs)), true, start);
    })
    .map_err(Error::Thread)?;
    Ok(Spawned {
        process,
        child: None,
        thread: Some(thread),
        channel: ours,
        dir: dir.to_path_buf(),
        log_path: dir.join(LOG_FILE),
        start,
    })
}

impl Spawned {
    /// Read [`Report`]s until `Ready`; the phases reported. `timeout` is the pod's start
    /// timeout: the wait is a little longer, so that the VMM process's own report (with its
    /// boot phases) arrives first.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Vec<Phase>, Error> {
        let timeout = timeout + Duration::from_secs(5);
        let mut phases = Vec::new();
        loop {
            let left = timeout.saturating_sub(self.start.elapsed());
            if left.is_zero() {
                return Err(Error::Timeout(timeout));
            }
            let ms = u16::try_from(left.as_millis().min(10_000)).unwrap_or(10_000);
            let mut fds = [PollFd::new(self.channel.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::Notify(e.into())),
            }
            // The writer sends each report whole, as one frame.
            let msg: Message<Report> = match agent::protocol::recv(&mut self.channel) {
                Ok(m) => m,
                Err(agent::protocol::FrameError::Closed) => {
                    return Err(Error::Died {
                        log_tail: log_tail(&self.log_path),
                    })
                }
                Err(e) => return Err(Error::NotifyFrame(e)),
            };
            if msg.version != VERSION {
                return Err(Error::Failed {
                    message: format!(
                        "the VMM process speaks protocol version {}, this ember {VERSION}",
                        msg.version
                    ),
                });
            }
            match msg.body {
                Report::Ready => return Ok(phases),
                Report::Failed { message } => return Err(Error::Failed { message }),
                Report::Phase { name, ms } => phases.push(Phase { name, ms }),
            }
        }
    }

    /// Tell the VMM process that the pod's record names it: it runs on, owned by the record.
    /// Call only once the record is stored.
    pub fn commit(mut self) -> Result<(), Error> {
        agent::protocol::send(&mut self.channel, &Message::new(Commit::Committed))
            .map_err(Error::Commit)?;
        if let Some(mut child) = self.child.take() {
            // Reap it if it exits while we still run (the CLI exits long before it does).
            crate::logging::thread("vmm-reaper", move || child.wait());
        }
        // A hosted VM's thread runs on, detached, until the VM ends.
        self.thread = None;
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The closed socket is the starter gone: the thread stops the VM and returns.
            let _ = self.channel.shutdown(std::net::Shutdown::Both);
            let _ = thread.join();
            remove_sockets(&self.dir);
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) of the process group we created with setsid; the child is not
        // reaped yet, so its pid is still ours.
        unsafe { libc::kill(-self.process.pid, libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
        remove_sockets(&self.dir);
    }
}

/// The last lines of a log file, on one line.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

/// Remove the pod's sockets (stale after the VMM process ended).
pub fn remove_sockets(dir: &Path) {
    for name in [
        CONTROL_SOCKET,
        ANNOUNCE_SOCKET,
        crate::agent_link::VSOCK_SOCKET,
    ] {
        let _ = fs::remove_file(dir.join(name));
    }
}

/// Whether pod `dir`'s VM, run by `p`, has ended: its process is gone, or (a hosted VM) its
/// control socket, which the hosting thread removes last.
pub fn ended(dir: &Path, p: &VmmProcess) -> bool {
    !proc::is_alive(p) || (p.hosted && !dir.join(CONTROL_SOCKET).exists())
}

/// Wait up to `timeout` for pod `dir`'s VM to end ([`ended`]); true when it did.
pub fn wait_ended(dir: &Path, p: &VmmProcess, timeout: Duration) -> bool {
    let start = Instant::now();
    while !ended(dir, p) {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// SIGKILL the VMM process (and its session) if it is still the recorded process. The host
/// of a hosted VM is killed with it (as Kata's VMM dies with its shim), unless it is this
/// process: then there is nothing to kill that would not take the caller too, and the VM
/// thread's own hard stop is what ends it.
pub fn kill(p: &VmmProcess) {
    if p.hosted && proc::is_this_process(p) {
        log::error!("the VM hosted in this process did not end when stopped");
        return;
    }
    if proc::is_alive(p) {
        // SAFETY: plain kill(2); the pid was checked against its start time just above.
        unsafe {
            libc::kill(-p.pid, libc::SIGKILL);
            libc::kill(p.pid, libc::SIGKILL);
        }
        let start = Instant::now();
        while proc::is_alive(p) && start.elapsed() < crate::timeouts::VMM_EXIT {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The notify socket of a VMM process (absent when run by hand: then nobody commits, and
/// nobody has to).
struct Notifier(Option<UnixStream>);

impl Notifier {
    fn from_env() -> Notifier {
        let fd = std::env::var(NOTIFY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        // Don't hand the fd down to anything we spawn (hooks).
        std::env::remove_var(NOTIFY_FD_ENV);
        Notifier(fd.and_then(|fd| {
            // SAFETY: F_GETFD only checks that fd is open; nothing else owns it in this process
            // (the starter put it there for us), so taking ownership is sound.
            unsafe {
                if libc::fcntl(fd, libc::F_GETFD) < 0 {
                    return None;
                }
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                Some(UnixStream::from_raw_fd(fd))
            }
        }))
    }

    /// Whether a starter waits on the other end (and must commit).
    fn has_starter(&self) -> bool {
        self.0.is_some()
    }

    /// Listen for the starter's answer: `Event::Committed`, or `Event::StarterGone` when it
    /// closes the socket (or sends anything else) first.
    fn listen(&self, events: mpsc::Sender<Event>) -> Result<(), Error> {
        let Some(s) = &self.0 else {
            return Ok(());
        };
        let mut s = s.try_clone().map_err(Error::Notify)?;
        crate::logging::spawn("starter", move || {
            let answer: Result<Message<Commit>, _> = agent::protocol::recv(&mut s);
            let event = match answer {
                Ok(m) if m.version == VERSION && m.body == Commit::Committed => Event::Committed,
                _ => Event::StarterGone,
            };
            let _ = events.send(event);
        })
        .map_err(Error::Thread)?;
        Ok(())
    }

    /// One report, as one frame.
    fn send(&mut self, report: Report) {
        if let Some(f) = &mut self.0 {
            let _ = agent::protocol::send(f, &Message::new(report));
        }
    }

    fn phase(&mut self, name: &str, since: Instant) {
        self.send(Report::Phase {
            name: name.to_string(),
            ms: since.elapsed().as_secs_f64() * 1e3,
        });
    }

    fn close(&mut self) {
        self.0 = None;
    }
}

/// Has the guest agent give its interface the engine's addresses, routes and MTU.
fn configure_guest_network(dir: &Path, net: &vm::GuestNetwork) -> Result<(), Error> {
    let call = |source| Error::Agent {
        call: "ConfigureNetwork",
        source,
    };
    let mut client =
        crate::agent_link::connect(dir, Some(crate::agent_link::CALL_TIMEOUT)).map_err(call)?;
    client
        .configure_network(net.interfaces.clone(), net.routes.clone())
        .map_err(|e| call(crate::agent_link::Error::Client(e)))
}

/// A guest restored from a template is a copy of it: the agent sets the clock, reseeds the
/// kernel's random generator with fresh host entropy (before anything reads the boot id,
/// which the kernel makes from it at first read) and takes the pod's hostname.
fn make_restored_guest_its_own(dir: &Path, pod: &str) -> Result<(), Error> {
    let call = |source| Error::Agent {
        call: "Restored",
        source,
    };
    let mut entropy = vec![0u8; RESTORE_ENTROPY_BYTES];
    devices::virtio::rng::host_random(&mut entropy).map_err(Error::Entropy)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut client =
        crate::agent_link::connect(dir, Some(crate::agent_link::CALL_TIMEOUT)).map_err(call)?;
    let info = client
        .restored(now.as_nanos() as u64, entropy, guest_hostname(pod))
        .map_err(|e| call(crate::agent_link::Error::Client(e)))?;
    log::info!(
        "restored guest made its own: clock stepped {} ms, boot id {}",
        info.clock_step_ms,
        info.boot_id
    );
    Ok(())
}

/// Host entropy given to a restored guest.
const RESTORE_ENTROPY_BYTES: usize = 64;

/// The pod id as a hostname (at most 64 of its characters, each a letter, digit, `-` or
/// `.`; others become `-`).
fn guest_hostname(pod: &str) -> String {
    let mut h: String = pod
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while h.starts_with(['-', '.']) {
        h.remove(0);
    }
    if h.is_empty() {
        h.push_str("ember");
    }
    h
}

/// The body of `ember pod __vmm`: boot the pod's VM and serve it until it ends.
pub fn serve(dir: &Path) -> Result<(), Error> {
    serve_with(dir, Notifier::from_env(), false, Instant::now())
}

/// Boot and serve the VM (in a pod process of its own, or `hosted` on a thread of a longer
/// lived one), reporting to the starter on `notify`; the pod's sockets go when it ends, the
/// control socket last of all, after everything of the VM.
fn serve_with(dir: &Path, mut notify: Notifier, hosted: bool, t0: Instant) -> Result<(), Error> {
    let result = serve_inner(dir, &mut notify, hosted, t0);
    if let Err(e) = &result {
        notify.send(Report::Failed {
            message: crate::error::report(e),
        });
    }
    remove_sockets(dir);
    result
}

fn serve_inner(dir: &Path, notify: &mut Notifier, hosted: bool, t0: Instant) -> Result<(), Error> {
    // No lock here: the starter holds the pod's write lock for the whole start and stored the
    // record before spawning us; records are replaced atomically, so this read is whole.
    let rec = PodRecord::load(dir).map_err(Error::State)?;
    // Our stderr is <pod dir>/vmm.log; the pod config may name one more file (the engine's).
    // A hosting process has its logger already.
    if !hosted {
        let log = &rec.config.log;
        crate::logging::init(&crate::logging::Config {
            file: None,
            also: log.file.clone(),
            format: log.format,
            debug: log.debug,
            errors_to_stderr: false,
        })
        .map_err(Error::Logging)?;
    }
    log::info!(
        "pod {}: VMM {} {} starting",
        rec.id,
        if hosted {
            "hosted by process"
        } else {
            "process"
        },
        std::process::id()
    );
    // Into the pod's own cgroup before any thread starts (so all of them are in it).
    let _cgroup = match rec.config.machine {
        config::Machine::Vm => PodCgroup::join(&rec, hosted),
        config::Machine::HostAgent { .. } => PodCgroup::none(),
    };
    let bind = |name: &str| {
        let path = dir.join(name);
        let _ = fs::remove_file(&path);
        UnixListener::bind(&path).map_err(|source| Error::Bind { path, source })
    };
    let announce = bind(ANNOUNCE_SOCKET)?;
    let control_listener = bind(CONTROL_SOCKET)?;
    // Whatever way this returns, the threads that wait on the sockets end (they would stay
    // blocked in a hosting process, holding the VM); the VM is gone first.
    let ending = Arc::new(AtomicBool::new(false));
    let listeners = WakeListeners {
        dir,
        ending: ending.clone(),
    };

    let (tx, rx) = mpsc::channel::<Event>();
    let t = Instant::now();
    let machine = match &rec.config.machine {
        config::Machine::HostAgent { agent } => Machine::Host(
            host_agent::HostAgent::boot(agent, dir, tx.clone()).map_err(Error::HostAgent)?,
        ),
        config::Machine::Vm => {
            Machine::Vm(vm::Vm::boot(&rec, dir, t0, tx.clone()).map_err(Error::Vm)?)
        }
    };
    notify.phase("vm_boot_call", t);

    // The main thread takes the control thread's filter now (the VM's own threads took
    // theirs), before it or the threads it starts read anything from the guest or the
    // starter. The poststop hooks of a VM that ends on its own then run in a runner started
    // just before, which may still start programs.
    let filters = machine.seccomp();
    let mut poststop = if rec.config.hooks.poststop.is_empty() {
        None
    } else {
        Some(hooks::Runner::spawn().map_err(Error::HookRunner)?)
    };
    vm::confine(filters.as_deref(), vmm::seccomp::ThreadKind::Control);
    notify.listen(tx.clone())?;

    // A booted guest announces readiness by connecting to vsock port 1025 on the host; a
    // restored one announced before its snapshot was taken: it is ready when it answers.
    let atx = tx.clone();
    let restored = rec.restore_from.is_some() && matches!(machine, Machine::Vm(_));
    if restored {
        let dir = dir.to_path_buf();
        let limit = Duration::from_secs(rec.config.start_timeout_secs);
        let filters = filters.clone();
        crate::logging::spawn("ready-ping", move || {
            vm::confine(filters.as_deref(), vmm::seccomp::ThreadKind::Control);
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                let ping =
                    crate::agent_link::connect(&dir, Some(crate::timeouts::AGENT_SHORT_CALL))
                        .ok()
                        .and_then(|mut c| c.ping().ok());
                if let Some(p) = ping {
                    let _ = atx.send(Event::Ready(p.agent_version));
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .map_err(Error::Thread)?;
    } else {
        let (filters, ending) = (filters.clone(), ending.clone());
        crate::logging::spawn("announce", move || {
            vm::confine(filters.as_deref(), vmm::seccomp::ThreadKind::Relay);
            loop {
                let hello = agent::client::accept_hello(&announce);
                if ending.load(Ordering::SeqCst) {
                    return;
                }
                match hello {
                    Ok(hello) => {
                        let _ = atx.send(Event::Ready(hello.agent_version));
                        return;
                    }
                    Err(e) => log::warn!("Bad agent announcement: {}", crate::error::report(&e)),
                }
            }
        })
        .map_err(Error::Thread)?;
    }

    let timeout = Duration::from_secs(rec.config.start_timeout_secs);
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Ready(agent_version)) => {
                log::info!("agent {agent_version} ready");
                notify.phase("agent_ready", t0);
                for (name, ms) in machine.timings() {
                    notify.send(Report::Phase {
                        name: format!("vm_{name}"),
                        ms,
                    });
                }
                break;
            }
            Ok(Event::Exited(msg)) => return Err(Error::EndedEarly(msg)),
            Ok(Event::StarterGone) => {
                machine.stop();
                return Err(Error::Orphaned);
            }
            Ok(Event::Committed | Event::Unresponsive(_)) => {}
            Err(_) => {
                let phases: Vec<String> = machine
                    .timings()
                    .iter()
                    .map(|(n, ms)| format!("{n} {ms:.0} ms"))
                    .collect();
                machine.stop();
                return Err(Error::NotReady {
                    timeout,
                    phases: if phases.is_empty() {
                        "none".into()
                    } else {
                        phases.join(", ")
                    },
                });
            }
        }
    }
    if restored {
        let t = Instant::now();
        if let Err(e) = make_restored_guest_its_own(dir, &rec.id) {
            machine.stop();
            return Err(e);
        }
        notify.phase("guest_made_its_own", t);
    }
    if let Some(net) = machine.network() {
        let t = Instant::now();
        if let Err(e) = configure_guest_network(dir, net) {
            machine.stop();
            return Err(e);
        }
        notify.phase("network_configured", t);
    }
    proc::pause_at("vmm:ready");
    notify.send(Report::Ready);
    if notify.has_starter() {
        if let Err(e) = wait_committed(&rx, dir, timeout, hosted) {
            machine.stop();
            return Err(e);
        }
    }
    notify.close();

    let requested = Arc::new(AtomicBool::new(false));
    let watch = Arc::new(watchdog::Watch::default());
    let hub = Arc::new(events::Hub::default());
    let target = watchdog::Watched {
        inner: machine.target(dir, requested.clone(), rec.config.shutdown),
        watch: watch.clone(),
        hub: hub.clone(),
        hosted,
        dir: dir.to_path_buf(),
    };
    let (control_filters, cending) = (filters.clone(), ending.clone());
    let control_thread = crate::logging::spawn("control", move || {
        vm::confine(
            control_filters.as_deref(),
            vmm::seccomp::ThreadKind::Control,
        );
        control::serve_until(control_listener, Arc::new(target), &cending)
    })
    .map_err(Error::Thread)?;
    // The guest agent's own event stream (its containers' exits), told to the subscribers.
    let (edir, ehub, efilters, eend) = (
        dir.to_path_buf(),
        hub.clone(),
        filters.clone(),
        ending.clone(),
    );
    crate::logging::spawn("agent-events", move || {
        vm::confine(efilters.as_deref(), vmm::seccomp::ThreadKind::Control);
        events::relay_agent(&edir, &ehub, &eend)
    })
    .map_err(Error::Thread)?;
    let (wdir, wreq, wend, wtx) = (
        dir.to_path_buf(),
        requested.clone(),
        ending.clone(),
        tx.clone(),
    );
    let limit = Duration::from_secs(rec.config.agent_timeout_secs);
    crate::logging::spawn("agent-watch", move || {
        vm::confine(filters.as_deref(), vmm::seccomp::ThreadKind::Control);
        watchdog::run(wdir, limit, watch, wreq, wend, wtx)
    })
    .map_err(Error::Thread)?;

    // Wait for the VM to end: on its own, by a stop request, or stopped here because its
    // agent went silent (that is then the reason recorded).
    let mut silenced = None;
    let reason = loop {
        match rx.recv() {
            Ok(Event::Exited(msg)) => break silenced.unwrap_or(msg),
            Ok(Event::Unresponsive(why)) => {
                if !requested.load(Ordering::SeqCst) {
                    hub.publish(protocol::PodEvent::AgentUnresponsive {
                        reason: why.clone(),
                    });
                    silenced = Some(why);
                    machine.stop();
                }
            }
            Ok(Event::Ready(_) | Event::Committed | Event::StarterGone) => {}
            Err(_) => break "VM thread vanished".to_string(),
        }
    };
    log::info!("VM ended: {reason}");
    if !requested.load(Ordering::SeqCst) {
        mark_ended(dir, &reason, poststop.take());
    }
    hub.publish(protocol::PodEvent::VmEnded { reason });
    // The control thread holds a handle on the VM (its memory, its devices' files): it ends
    // before the control socket goes, which tells a hosting process's callers that the VM is
    // gone (a container's rootfs can then be unmounted).
    listeners.wake();
    let _ = control_thread.join();
    Ok(())
}

/// At the end of [`serve_inner`]: the `ending` flag set, and one connection to each of the
/// pod's listening sockets, so that the threads blocked in their accept see it and return.
struct WakeListeners<'a> {
    dir: &'a Path,
    ending: Arc<AtomicBool>,
}

impl WakeListeners<'_> {
    fn wake(&self) {
        self.ending.store(true, Ordering::SeqCst);
        for name in [ANNOUNCE_SOCKET, CONTROL_SOCKET] {
            let _ = UnixStream::connect(self.dir.join(name));
        }
    }
}

impl Drop for WakeListeners<'_> {
    fn drop(&mut self) {
        self.wake();
    }
}

/// The pod process's cgroup ([`cgroup`]), left and removed when the process is done: back to
/// the root for a pod process about to exit, back to where it was for a hosting process.
struct PodCgroup {
    dir: Option<PathBuf>,
    back_to: Option<PathBuf>,
}

impl PodCgroup {
    fn none() -> PodCgroup {
        PodCgroup {
            dir: None,
            back_to: None,
        }
    }

    fn join(rec: &PodRecord, hosted: bool) -> PodCgroup {
        let back_to = if hosted {
            match cgroup::current(Path::new(cgroup::CGROUP_ROOT)) {
                Some(dir) => Some(dir),
                None => {
                    log::info!("cannot tell this process's cgroup: the hosted VM stays in it");
                    return PodCgroup::none();
                }
            }
        } else {
            None
        };
        let limits = cgroup::Limits::for_vm(rec.config.mem_mib, rec.config.vcpus);
        let root = Path::new(cgroup::CGROUP_ROOT);
        let dir = cgroup::path_for(root, rec.config.cgroup.as_deref(), &rec.id);
        match cgroup::join(root, &dir, &limits) {
            Ok(Some(dir)) => {
                log::info!(
                    "pod process in cgroup {} (memory.max {}, pids.max {}, cpu.max {} {})",
                    dir.display(),
                    limits.memory_max,
                    limits.pids_max,
                    limits.cpu_max.0,
                    limits.cpu_max.1
                );
                PodCgroup {
                    dir: Some(dir),
                    back_to,
                }
            }
            Ok(None) => {
                log::info!(
                    "no cgroup v2 hierarchy at {}: the pod process stays in its parent's cgroup",
                    cgroup::CGROUP_ROOT
                );
                PodCgroup::none()
            }
            Err(e) => {
                log::warn!(
                    "the pod process stays in its parent's cgroup: {}",
                    crate::error::report(&e)
                );
                PodCgroup::none()
            }
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            cgroup::leave(Path::new(cgroup::CGROUP_ROOT), dir, self.back_to.as_deref());
        }
    }
}

/// Wait for the starter's commit. A starter that closed the socket may have died just after
/// it stored the record: the record naming this process as the running pod's is the commit.
/// A hosted VM's starter is a thread of the same process, which cannot die on its own: its
/// closed socket is always a start given up.
fn wait_committed(
    rx: &mpsc::Receiver<Event>,
    dir: &Path,
    timeout: Duration,
    hosted: bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Committed) => return Ok(()),
            Ok(Event::StarterGone) => {
                let owned = !hosted
                    && PodRecord::load(dir).is_ok_and(|rec| {
                        rec.state == State::Running
                            && rec.vmm.as_ref().is_some_and(proc::is_this_process)
                    });
                return if owned { Ok(()) } else { Err(Error::Orphaned) };
            }
            Ok(Event::Exited(msg)) => return Err(Error::EndedEarly(msg)),
            Ok(Event::Ready(_) | Event::Unresponsive(_)) => {}
            Err(_) => return Err(Error::NotCommitted(timeout)),
        }
    }
}

/// For a pod process recording what its VM did after the fact: the pod's write lock (waited
/// for, as a client's call may hold it) and its record, while the pod exists and its record
/// says running or paused with this process's VM; `None` otherwise (deleted, stopped, another
/// VM process) — or when the lock cannot be had, which is logged as not recording `what`.
fn lock_own_record(dir: &Path, what: &str) -> Option<(PodLock, PodRecord)> {
    let lock =
        match PodLock::acquire_existing_pod(dir, LockKind::Write, crate::timeouts::RECORD_END_LOCK)
        {
            Ok(Some(lock)) => lock,
            Ok(None) => return None,
            Err(e) => {
                log::warn!(
                    "{what}: cannot lock the pod to record it: {}",
                    crate::error::report(&e)
                );
                return None;
            }
        };
    let rec = PodRecord::load(dir).ok()?;
    let ours = matches!(rec.state, State::Running | State::Paused)
        && rec.vmm.as_ref().is_some_and(proc::is_this_process);
    ours.then_some((lock, rec))
}

/// The VM ended without a stop request: record it and run the poststop hooks.
fn mark_ended(dir: &Path, reason: &str, poststop: Option<hooks::Runner>) {
    let Some((_lock, mut rec)) = lock_own_record(dir, &format!("the VM's end ({reason})")) else {
        return;
    };
    rec.state = State::Stopped;
    rec.vmm = None;
    rec.stop_reason = Some(reason.to_string());
    for c in rec.containers.values_mut() {
        if matches!(c.state, State::Running | State::Paused) {
            c.state = State::Stopped;
        }
        c.in_agent = false;
    }
    if let Err(e) = rec.store(dir) {
        log::error!("Cannot record the pod's end: {}", crate::error::report(&e));
    }
    if let Some(runner) = poststop {
        let state = crate::hooks::state_json(&rec, dir, "stopped");
        for e in runner.run(&rec.config.hooks.poststop, &state) {
            log::warn!("poststop hook: {e}");
        }
    }
}

/// The warning a pod process logs when its guest's agent did not do the sync before a stop
/// (its answer to the stop says so too: [`protocol::Response::Stopped`]).
pub const SYNC_FAILED: &str = "Guest sync before stop failed";

/// Before a machine is stopped at once: what its guest still has to do, by the pod's
/// [`config::Shutdown`]. `Graceful` asks the agent to shut the guest down (it stops every
/// container, syncs and reboots, which ends the VM) and returns whether that was asked; `Sync`
/// has the agent flush the guest's page cache to its disks (and returns why not, where it did
/// not); `Kill` says nothing.
fn before_stop(dir: &Path, shutdown: config::Shutdown) -> (bool, Option<String>) {
    let agent = || crate::agent_link::connect(dir, Some(crate::timeouts::AGENT_SHORT_CALL));
    match shutdown {
        config::Shutdown::Kill => (false, None),
        config::Shutdown::Sync => {
            let synced = match agent() {
                Ok(mut c) => c.sync().map_err(|e| crate::error::report(&e)),
                Err(e) => Err(crate::error::report(&e)),
            };
            match synced {
                Ok(()) => (false, None),
                Err(e) => {
                    log::warn!("{SYNC_FAILED} (stopping anyway): {e}");
                    (false, Some(e))
                }
            }
        }
        config::Shutdown::Graceful => (agent().is_ok_and(|mut c| c.shutdown().is_ok()), None),
    }
}

/// What runs the pod: a VM, or (test equipment) the agent as a host process.
enum Machine {
    Vm(vm::Vm),
    Host(host_agent::HostAgent),
}

impl Machine {
    fn target(
        &self,
        dir: &Path,
        requested: Arc<AtomicBool>,
        shutdown: config::Shutdown,
    ) -> Arc<dyn control::ControlTarget> {
        match self {
            Machine::Vm(vm) => Arc::new(vm::Target::new(vm.handle(), dir, requested, shutdown)),
            Machine::Host(h) => h.target(dir, requested, shutdown),
        }
    }

    fn stop(&self) {
        match self {
            Machine::Vm(vm) => vm.stop(),
            Machine::Host(h) => h.stop(),
        }
    }

    /// The seccomp filters of the pod process's guest-facing threads (none for the host
    /// agent, which is test equipment without a guest).
    fn seccomp(&self) -> Option<Arc<vmm::seccomp::Filters>> {
        match self {
            Machine::Vm(vm) => vm.seccomp(),
            Machine::Host(_) => None,
        }
    }

    fn timings(&self) -> Vec<(String, f64)> {
        match self {
            Machine::Vm(vm) => vm.timings(),
            Machine::Host(_) => Vec::new(),
        }
    }

    /// The agent's side of the engine's network, if the pod joined one.
    fn network(&self) -> Option<&vm::GuestNetwork> {
        match self {
            Machine::Vm(vm) => vm.network(),
            Machine::Host(_) => None,
        }
    }
}

/// What the VM, announce and starter threads tell the VMM process's main thread.
pub(crate) enum Event {
    Ready(String),
    Exited(String),
    /// The starter stored the record naming this process.
    Committed,
    /// The starter closed the notify socket without committing.
    StarterGone,
    /// The guest's agent stopped answering its health check ([`watchdog`]): why.
    Unresponsive(String),
}
