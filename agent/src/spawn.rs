//! Starting container processes, agent side.
//!
//! The agent is multi-threaded, so between `clone` and `exec` the child does only
//! async-signal-safe work: install its stdio and control socket as fds 0-3 and re-exec the
//! agent binary (`/proc/self/exe __ember_helper`). The fresh, single-threaded helper
//! ([`crate::helper`]) reads its [`HelperTask`] from fd 3, sets the container up and execs
//! the user's command, reporting over the same socket (runc's `runc init` pattern):
//!
//! agent -> helper: `HelperTask`, later `HelperMsg::Start` (container init only)
//! helper -> agent: `HelperMsg::Ready` (init set up) or `HelperMsg::Failed(reason)`;
//! a successful exec closes fd 3 (close-on-exec), so the agent sees EOF.

use crate::cgroup::Cgroup;
use crate::protocol::{self, ContainerSpec, FrameError, IdMapping, Namespace, ProcessSpec, Rlimit};
use crate::reaper::Reaper;
use crate::stdio::ChildStdio;
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// argv[1] that turns the agent binary into the helper.
pub const HELPER_ARG: &str = "__ember_helper";

/// Errors of spawning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot create the control socket")]
    Socket(#[source] std::io::Error),
    #[error("Cannot enter the container's pid namespace")]
    PidNamespace(#[source] nix::Error),
    #[error("clone failed")]
    Clone(#[source] nix::Error),
    #[error("The spawning thread failed")]
    Thread,
    #[error("Cannot place process {pid} in its cgroup")]
    Cgroup {
        pid: i32,
        #[source]
        source: crate::cgroup::Error,
    },
    #[error("Cannot talk to the container helper")]
    Control(#[source] FrameError),
    #[error("Container setup failed: {0}")]
    Setup(String),
    #[error("Container helper answered out of turn")]
    Protocol,
    #[error("Cannot pass the container's terminal")]
    Console(#[source] nix::Error),
    #[error("Container helper exited before finishing setup")]
    HelperDied,
    #[error("Cannot write the user namespace's {which}")]
    IdMap {
        which: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Unknown rlimit {0:?}")]
    UnknownRlimit(String),
    #[error("Cannot set {kind} to {soft}/{hard}")]
    Rlimit {
        kind: String,
        soft: u64,
        hard: u64,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot join the user namespace of the container it shares ({0})")]
    JoinUser(&'static str),
    #[error("Cannot set oom_score_adj to {value}")]
    OomScoreAdj {
        value: i32,
        #[source]
        source: std::io::Error,
    },
}

/// What the helper is to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperTask {
    /// Set up a new container rooted at `rootfs`, wait for [`HelperMsg::Start`], exec.
    /// `no_pivot` switches root by moving the mount instead of `pivot_root`. `share_pid`:
    /// the init of the container whose namespaces the spec shares (its pid namespace was
    /// entered before the clone; the helper joins the others first).
    Init {
        rootfs: PathBuf,
        spec: Box<ContainerSpec>,
        no_pivot: bool,
        #[serde(default)]
        share_pid: Option<i32>,
    },
    /// Join the namespaces and root of `target_pid` and exec `process`.
    Exec {
        target_pid: i32,
        namespaces: Vec<Namespace>,
        process: ProcessSpec,
    },
}

/// Messages on the control socket after the task.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperMsg {
    Ready,
    Start,
    Failed(String),
}

/// Clone flags for a container's own namespaces.
/// The namespaces a container's helper is cloned into. Not the cgroup namespace: it must be
/// rooted at the container's cgroup, which the helper enters after the clone, so the helper
/// unshares it itself.
pub fn clone_flags(namespaces: &[Namespace]) -> CloneFlags {
    namespaces
        .iter()
        .filter(|ns| **ns != Namespace::Cgroup)
        .fold(CloneFlags::empty(), |f, ns| f | ns_flag(*ns))
}

pub fn ns_flag(ns: Namespace) -> CloneFlags {
    match ns {
        Namespace::Pid => CloneFlags::CLONE_NEWPID,
        Namespace::Mount => CloneFlags::CLONE_NEWNS,
        Namespace::Uts => CloneFlags::CLONE_NEWUTS,
        Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
        Namespace::Net => CloneFlags::CLONE_NEWNET,
        Namespace::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        Namespace::User => CloneFlags::CLONE_NEWUSER,
    }
}

/// What the agent sets on a helper from outside before handing it its task: what a process
/// in a user namespace may not do itself (raise a hard rlimit, lower its oom_score_adj, map
/// its ids), done for every helper as runc's parent does it for its init.
struct FromOutside<'a> {
    /// The uid and gid maps of the container's new user namespace.
    id_maps: Option<(&'a [IdMapping], &'a [IdMapping])>,
    rlimits: &'a [Rlimit],
    oom_score_adj: Option<i32>,
}

impl<'a> FromOutside<'a> {
    fn of(task: &'a HelperTask) -> FromOutside<'a> {
        match task {
            HelperTask::Init { spec, .. } => FromOutside {
                id_maps: spec
                    .namespaces
                    .contains(&Namespace::User)
                    .then_some((&spec.linux.uid_mappings, &spec.linux.gid_mappings)),
                rlimits: &spec.process.rlimits,
                oom_score_adj: spec.process.oom_score_adj,
            },
            HelperTask::Exec { process, .. } => FromOutside {
                id_maps: None,
                rlimits: &process.rlimits,
                oom_score_adj: process.oom_score_adj,
            },
        }
    }
}

/// The text of `/proc/PID/uid_map` (or `gid_map`) for `maps`: one line per range.
pub fn id_map_text(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

/// Writes the maps of the user namespace of `pid` (each file takes one write).
fn write_id_maps(pid: i32, uids: &[IdMapping], gids: &[IdMapping]) -> Result<(), Error> {
    for (which, maps) in [("uid_map", uids), ("gid_map", gids)] {
        std::fs::write(format!("/proc/{pid}/{which}"), id_map_text(maps))
            .map_err(|source| Error::IdMap { which, source })?;
    }
    Ok(())
}

/// libc's type of an rlimit resource (glibc names it, musl takes an int).
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// The rlimits of the OCI spec, by name.
const RLIMITS: [(&str, Resource); 16] = [
    ("RLIMIT_AS", libc::RLIMIT_AS),
    ("RLIMIT_CORE", libc::RLIMIT_CORE),
    ("RLIMIT_CPU", libc::RLIMIT_CPU),
    ("RLIMIT_DATA", libc::RLIMIT_DATA),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", libc::RLIMIT_NICE),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
    ("RLIMIT_RSS", libc::RLIMIT_RSS),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("RLIMIT_STACK", libc::RLIMIT_STACK),
];

fn rlimit_resource(kind: &str) -> Option<Resource> {
    RLIMITS.iter().find(|(k, _)| *k == kind).map(|(_, r)| *r)
}

/// Whether `kind` is an rlimit the agent knows (checked at create, before anything is made).
pub fn known_rlimit(kind: &str) -> bool {
    rlimit_resource(kind).is_some()
}

/// Sets `r` on process `pid` (prlimit: a hard limit above the agent's is raised, which the
/// process itself could not do inside a user namespace).
fn set_rlimit(pid: i32, r: &Rlimit) -> Result<(), Error> {
    let resource = rlimit_resource(&r.kind).ok_or_else(|| Error::UnknownRlimit(r.kind.clone()))?;
    let lim = libc::rlimit {
        rlim_cur: r.soft,
        rlim_max: r.hard,
    };
    // SAFETY: prlimit reads `lim`, which lives for the call, and writes nothing (null old).
    let rc = unsafe { libc::prlimit(pid, resource, &lim, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(Error::Rlimit {
            kind: r.kind.clone(),
            soft: r.soft,
            hard: r.hard,
            source: nix::Error::last(),
        });
    }
    Ok(())
}

fn apply_from_outside(pid: i32, outside: &FromOutside) -> Result<(), Error> {
    for r in outside.rlimits {
        set_rlimit(pid, r)?;
    }
    if let Some(value) = outside.oom_score_adj {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string())
            .map_err(|source| Error::OomScoreAdj { value, source })?;
    }
    Ok(())
}

/// A started helper: its pid and the agent's end of the control socket.
pub struct Spawned {
    pub pid: i32,
    pub control: UnixStream,
}

/// Clones a child with `flags` (inside the pid namespace `pid_ns` when given), execs the
/// helper in it, places it in `cgroup`, sets from outside what the helper may not set itself
/// ([`FromOutside`]) and hands it `task`.
///
/// With `CLONE_NEWUSER` the child waits, before its exec, until the agent wrote the new
/// namespace's id maps, then becomes its root (uid and gid 0 inside): the helper execs as
/// that root and keeps its capabilities there, as runc's init does after its parent mapped it.
/// With `join_user` (another container's user namespace) the child joins it first and makes
/// `flags`' namespaces inside it, then waits the same way and becomes its root.
pub fn spawn_helper(
    reaper: &Reaper,
    flags: CloneFlags,
    pid_ns: Option<File>,
    join_user: Option<File>,
    stdio: ChildStdio,
    cgroup: Option<&Cgroup>,
    task: &HelperTask,
) -> Result<Spawned, Error> {
    let outside = FromOutside::of(task);
    let (mut control, child_end) = UnixStream::pair().map_err(Error::Socket)?;
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
        child_end.as_raw_fd(),
    ];
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Socket(e.into()));
    let user_ns = flags.contains(CloneFlags::CLONE_NEWUSER);
    let sync = if user_ns || join_user.is_some() {
        Some(pipe()?)
    } else {
        None
    };
    let sync_fds = sync.as_ref().map(|(r, w)| [r.as_raw_fd(), w.as_raw_fd()]);
    // Joining another container's user namespace: the clone joins it itself (only a
    // single-threaded process may) and makes its own namespaces after, so that they are owned
    // by it, in runc's order; a PID namespace of its own takes one more clone, whose pid the
    // first reports on `report` before it exits.
    let report = join_user.as_ref().map(|_| pipe()).transpose()?;
    let join = match (&join_user, &report) {
        (Some(ns), Some((_, w))) => Some(JoinUser {
            user_fd: ns.as_raw_fd(),
            unshare: (flags - CloneFlags::CLONE_NEWPID).bits(),
            new_pid: flags.contains(CloneFlags::CLONE_NEWPID),
            report: w.as_raw_fd(),
        }),
        _ => None,
    };
    // The first clone's own flags: none when it joins first and unshares after.
    let first_flags = if join.is_some() {
        CloneFlags::empty()
    } else {
        flags
    };
    let first = reaper.spawn(|| match &pid_ns {
        None => clone_exec(first_flags, fds, sync_fds, join),
        Some(ns) => {
            // setns(CLONE_NEWPID) only changes where this thread's *children* go; do it on a
            // throwaway thread so the agent's other threads are untouched.
            std::thread::scope(|s| {
                s.spawn(|| {
                    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWPID)
                        .map_err(Error::PidNamespace)?;
                    clone_exec(first_flags, fds, sync_fds, join)
                })
                .join()
                .map_err(|_| Error::Thread)?
            })
        }
    })?;
    drop(child_end);
    drop(stdio);
    drop(join_user);
    let pid = match report {
        None => first,
        Some((r, w)) => {
            drop(w);
            second_clone(reaper, first, r)?
        }
    };
    let kill = |e: Error| {
        // SAFETY: kill(2) on our own, just-created child; no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        e
    };
    if let Some((_, release)) = sync {
        if user_ns {
            let (uids, gids) = outside.id_maps.unwrap_or_default();
            write_id_maps(pid, uids, gids).map_err(kill)?;
        }
        nix::unistd::write(&release, &[1]).map_err(|e| kill(Error::Socket(e.into())))?;
    }
    if let Some(cg) = cgroup {
        cg.add(pid)
            .map_err(|source| kill(Error::Cgroup { pid, source }))?;
    }
    apply_from_outside(pid, &outside).map_err(kill)?;
    protocol::send(&mut control, task).map_err(|e| kill(Error::Control(e)))?;
    Ok(Spawned { pid, control })
}

/// First byte from the helper of a terminal process, with the pty master as SCM_RIGHTS.
pub const CONSOLE_MASTER: u8 = b'C';
/// First byte from the helper of a terminal process whose setup failed before the pty
/// existed; its `Failed` frame follows.
pub const CONSOLE_NONE: u8 = b'N';

/// Receives the pty master the helper of a terminal process made inside the container.
pub fn recv_console(control: &mut UnixStream) -> Result<OwnedFd, Error> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let (n, fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let msg = recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(Error::Console)?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(Error::Console)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS fds are new in this process and owned by nobody else.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    match (n, byte[0]) {
        (0, _) => Err(Error::HelperDied),
        (_, CONSOLE_MASTER) => fds.into_iter().next().ok_or(Error::Protocol),
        (_, CONSOLE_NONE) => match read_report(control) {
            Err(e) => Err(e),
            Ok(_) => Err(Error::Protocol),
        },
        _ => Err(Error::Protocol),
    }
}

/// Helper side of [`recv_console`]: `master` when the pty exists, else None.
pub fn send_console(control: &UnixStream, master: Option<RawFd>) -> Result<(), Error> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let (byte, fds) = match master {
        Some(fd) => ([CONSOLE_MASTER], vec![fd]),
        None => ([CONSOLE_NONE], vec![]),
    };
    let iov = [std::io::IoSlice::new(&byte)];
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(control.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
        .map(|_| ())
        .map_err(Error::Console)
}

/// Sends a control message to the helper.
pub fn send_msg(control: &mut UnixStream, msg: &HelperMsg) -> Result<(), Error> {
    protocol::send(control, msg).map_err(Error::Control)
}

/// Waits for the helper's report after setup (`Ready`) or after exec (EOF).
/// Returns `Ok(true)` for `Ready`, `Ok(false)` for a successful exec.
pub fn read_report(control: &mut UnixStream) -> Result<bool, Error> {
    match protocol::recv::<_, HelperMsg>(control) {
        Ok(HelperMsg::Ready) => Ok(true),
        Ok(HelperMsg::Failed(reason)) => Err(Error::Setup(reason)),
        Ok(HelperMsg::Start) => Err(Error::Protocol),
        Err(FrameError::Closed) => Ok(false),
        Err(e) => Err(Error::Control(e)),
    }
}

/// What the clone of a helper that joins another container's user namespace does before it
/// waits for the agent's release (see [`spawn_helper`]).
#[derive(Clone, Copy)]
struct JoinUser {
    /// That namespace (`/proc/PID/ns/user` of the other container's init).
    user_fd: RawFd,
    /// The container's own namespaces but the PID one, made (unshare) once inside.
    unshare: libc::c_int,
    /// A PID namespace of its own: made by a second clone.
    new_pid: bool,
    /// Where the first clone writes the helper's pid (0: itself).
    report: RawFd,
}

/// The helper's pid as the first clone (`first`) reports it on `report`: itself (0), or the
/// second clone it made in the container's new PID namespace, which the agent then watches
/// (reparented to the agent, a subreaper, once the first has exited, which it does at once).
fn second_clone(reaper: &Reaper, first: i32, report: OwnedFd) -> Result<i32, Error> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&report, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::Error::EINTR) => {}
            Err(_) => break,
        }
    }
    if got < buf.len() {
        // It exited first: its code says where (child_exec's _exit codes).
        let code = reaper
            .wait(first, Some(std::time::Duration::from_secs(5)))
            .ok()
            .flatten()
            .map(|s| s.code);
        reaper.forget(first);
        return Err(Error::JoinUser(match code {
            Some(JOIN_SETNS_FAILED) => "setns refused",
            Some(JOIN_UNSHARE_FAILED) => "its own namespaces could not be made inside it",
            Some(JOIN_CLONE_FAILED) => "the clone into its own PID namespace failed",
            _ => "the clone died",
        }));
    }
    match i32::from_ne_bytes(buf) {
        0 => Ok(first),
        second => {
            let _ = reaper.wait(first, Some(std::time::Duration::from_secs(5)));
            reaper.forget(first);
            // It waits for the release: it cannot have exited unwatched.
            reaper.spawn(|| Ok::<i32, Error>(second))
        }
    }
}

/// child_exec's exit codes when joining a user namespace fails.
const JOIN_SETNS_FAILED: i32 = 121;
const JOIN_UNSHARE_FAILED: i32 = 122;
const JOIN_CLONE_FAILED: i32 = 123;

fn clone_exec(
    flags: CloneFlags,
    fds: [RawFd; 4],
    sync: Option<[RawFd; 2]>,
    join: Option<JoinUser>,
) -> Result<i32, Error> {
    // Everything the child touches is prepared here: it must not allocate.
    let exe = c"/proc/self/exe";
    let arg0 = c"ember-agent";
    let arg1 = CString::new(HELPER_ARG).map_err(|_| Error::Thread)?;
    let argv: [*const libc::c_char; 3] = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut stack = vec![0u8; 64 * 1024];
    let cb = Box::new(move || -> isize {
        // SAFETY: runs in the fresh child; only async-signal-safe calls on prepared data.
        unsafe { child_exec(&fds, sync, join, exe.as_ptr(), &argv, &envp) }
    });
    // SAFETY: the child runs `cb` on `stack` (64 KiB, far more than child_exec needs) and
    // then execs or exits; it shares no memory with us (no CLONE_VM).
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(Error::Clone)?;
    Ok(pid.as_raw())
}

/// # Safety
/// Must only run in a freshly cloned child; pointers must be valid C strings / arrays.
/// `sync`: the pipe of a child in a new (or joined) user namespace (read end, write end).
unsafe fn child_exec(
    fds: &[RawFd; 4],
    sync: Option<[RawFd; 2]>,
    join: Option<JoinUser>,
    exe: *const libc::c_char,
    argv: &[*const libc::c_char; 3],
    envp: &[*const libc::c_char; 1],
) -> isize {
    if let Some(j) = join {
        // SAFETY: plain namespace, clone and pipe syscalls in the single-threaded child; the
        // second clone (no CLONE_VM, no new stack) goes on as after fork().
        unsafe {
            if libc::setns(j.user_fd, libc::CLONE_NEWUSER) != 0 {
                libc::_exit(JOIN_SETNS_FAILED);
            }
            if j.unshare != 0 && libc::unshare(j.unshare) != 0 {
                libc::_exit(JOIN_UNSHARE_FAILED);
            }
            let mut helper: i32 = 0;
            if j.new_pid {
                let flags = (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_long;
                let r = libc::syscall(libc::SYS_clone, flags, 0 as libc::c_long, 0, 0, 0);
                if r < 0 {
                    libc::_exit(JOIN_CLONE_FAILED);
                }
                if r == 0 {
                    // The second clone: the helper, pid 1 of the new namespace.
                    libc::close(j.report);
                } else {
                    helper = r as i32;
                }
            }
            if !j.new_pid || helper != 0 {
                let bytes = helper.to_ne_bytes();
                if libc::write(j.report, bytes.as_ptr().cast(), bytes.len()) != 4 {
                    libc::_exit(JOIN_CLONE_FAILED);
                }
                libc::close(j.report);
                if helper != 0 {
                    libc::_exit(0);
                }
            }
        }
    }
    if let Some([read_end, write_end]) = sync {
        // Before the fds move (the pipe may sit on 0-3): wait for the maps (EOF without the
        // byte: the agent gave up), then become the namespace's root.
        // SAFETY: plain fd and credential syscalls in the child, on prepared data.
        unsafe {
            libc::close(write_end);
            let mut byte = 0u8;
            if libc::read(read_end, (&mut byte as *mut u8).cast(), 1) != 1 {
                libc::_exit(125);
            }
            libc::close(read_end);
            // Raw syscalls: libc's setres[ug]id signal every thread of the process, which in
            // this clone of a multi-threaded agent are not there (it would wait forever).
            if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
            {
                libc::_exit(125);
            }
        }
    }
    for (target, &fd) in fds.iter().enumerate() {
        let target = target as RawFd;
        // SAFETY: plain fd syscalls in the child.
        unsafe {
            if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0);
            } else if libc::dup2(fd, target) < 0 {
                libc::_exit(126);
            }
        }
    }
    // SAFETY: resetting signal state and exec are async-signal-safe; on failure we _exit.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::execve(exe, argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_namespaces() {
        assert_eq!(clone_flags(&[]), CloneFlags::empty());
        assert_eq!(
            clone_flags(&[Namespace::Pid, Namespace::Net]),
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET
        );
        assert_eq!(
            clone_flags(&protocol::default_namespaces()),
            CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
        );
        assert_eq!(clone_flags(&[Namespace::Net]), CloneFlags::CLONE_NEWNET);
        assert_eq!(
            clone_flags(&[Namespace::Cgroup, Namespace::Uts]),
            CloneFlags::CLONE_NEWUTS
        );
    }
}
