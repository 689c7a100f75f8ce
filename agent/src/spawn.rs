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
use crate::protocol::{self, ContainerSpec, FrameError, Namespace, ProcessSpec};
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
    }
}

/// A started helper: its pid and the agent's end of the control socket.
pub struct Spawned {
    pub pid: i32,
    pub control: UnixStream,
}

/// Clones a child with `flags` (inside the pid namespace `pid_ns` when given), execs the
/// helper in it, places it in `cgroup` and hands it `task`.
pub fn spawn_helper(
    reaper: &Reaper,
    flags: CloneFlags,
    pid_ns: Option<File>,
    stdio: ChildStdio,
    cgroup: Option<&Cgroup>,
    task: &HelperTask,
) -> Result<Spawned, Error> {
    let (mut control, child_end) = UnixStream::pair().map_err(Error::Socket)?;
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
        child_end.as_raw_fd(),
    ];
    let pid = reaper.spawn(|| match &pid_ns {
        None => clone_exec(flags, fds),
        Some(ns) => {
            // setns(CLONE_NEWPID) only changes where this thread's *children* go; do it on a
            // throwaway thread so the agent's other threads are untouched.
            std::thread::scope(|s| {
                s.spawn(|| {
                    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWPID)
                        .map_err(Error::PidNamespace)?;
                    clone_exec(flags, fds)
                })
                .join()
                .map_err(|_| Error::Thread)?
            })
        }
    })?;
    drop(child_end);
    drop(stdio);
    let kill = |e: Error| {
        // SAFETY: kill(2) on our own, just-created child; no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        e
    };
    if let Some(cg) = cgroup {
        cg.add(pid)
            .map_err(|source| kill(Error::Cgroup { pid, source }))?;
    }
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

fn clone_exec(flags: CloneFlags, fds: [RawFd; 4]) -> Result<i32, Error> {
    // Everything the child touches is prepared here: it must not allocate.
    let exe = c"/proc/self/exe";
    let arg0 = c"ember-agent";
    let arg1 = CString::new(HELPER_ARG).map_err(|_| Error::Thread)?;
    let argv: [*const libc::c_char; 3] = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut stack = vec![0u8; 64 * 1024];
    let cb = Box::new(move || -> isize {
        // SAFETY: runs in the fresh child; only async-signal-safe calls on prepared data.
        unsafe { child_exec(&fds, exe.as_ptr(), &argv, &envp) }
    });
    // SAFETY: the child runs `cb` on `stack` (64 KiB, far more than child_exec needs) and
    // then execs or exits; it shares no memory with us (no CLONE_VM).
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(Error::Clone)?;
    Ok(pid.as_raw())
}

/// # Safety
/// Must only run in a freshly cloned child; pointers must be valid C strings / arrays.
unsafe fn child_exec(
    fds: &[RawFd; 4],
    exe: *const libc::c_char,
    argv: &[*const libc::c_char; 3],
    envp: &[*const libc::c_char; 1],
) -> isize {
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
