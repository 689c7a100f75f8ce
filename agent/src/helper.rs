//! The container helper: the agent binary re-exec'd as `ember-agent __ember_helper` in a
//! freshly cloned child (see [`crate::spawn`]). Single-threaded, so it may set up mounts,
//! join namespaces and change credentials freely before it execs the user's command.

use crate::mounts;
use crate::protocol::{self, ContainerSpec, Namespace, ProcessSpec};
use crate::spawn::{HelperMsg, HelperTask};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// fd the agent passes the control socket on.
pub const CONTROL_FD: i32 = 3;

/// Errors inside the helper (reported to the agent as text).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read the task")]
    Task(#[source] protocol::FrameError),
    #[error("Mount setup failed")]
    Mounts(#[source] mounts::Error),
    #[error("Cannot set hostname {name:?}")]
    Hostname {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot open namespace {path}")]
    OpenNamespace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot join namespace {path}")]
    JoinNamespace {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot enter the container root")]
    Root(#[source] nix::Error),
    #[error("Cannot bring up the loopback interface")]
    Loopback(#[source] std::io::Error),
    #[error("Cannot make the container's cgroup namespace")]
    CgroupNamespace(#[source] nix::Error),
    #[error("Cannot set up the controlling terminal")]
    Terminal(#[source] nix::Error),
    #[error("Cannot open a terminal at {path}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot hand the terminal to the agent")]
    SendConsole(#[source] crate::spawn::Error),
    #[error("Cannot set credentials (uid {uid}, gid {gid})")]
    Credentials {
        uid: u32,
        gid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    #[error("Capabilities")]
    Caps(#[source] crate::caps::Error),
    #[error("Cannot set the NIS domain name {name:?}")]
    Domainname {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("Bad sysctl key {0:?}")]
    SysctlKey(String),
    #[error("Cannot set sysctl {key} to {value:?}")]
    Sysctl {
        key: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot change directory to {cwd}")]
    Cwd {
        cwd: String,
        #[source]
        source: nix::Error,
    },
    #[error("No command given")]
    NoArgs,
    #[error("Argument or environment entry contains a NUL byte")]
    Nul,
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("Cannot execute {path}")]
    Exec {
        path: String,
        #[source]
        source: nix::Error,
    },
}

/// Entry point of `ember-agent __ember_helper`. Never returns.
pub fn main() -> ! {
    // SAFETY: the agent installed the control socket as fd 3 for us (spawn::child_exec);
    // nothing else in this fresh process owns it.
    let mut control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let task: HelperTask = match protocol::recv(&mut control) {
        Ok(t) => t,
        Err(e) => fail(&mut control, &Error::Task(e), 1),
    };
    match task {
        HelperTask::Init {
            rootfs,
            spec,
            no_pivot,
            share_pid,
        } => {
            CONSOLE_PENDING.store(spec.process.terminal, Ordering::Relaxed);
            // Another container's namespaces first (its pid namespace is already this
            // process's): the setup below (hostname, sysctls) is then done in them.
            // (A shared user namespace the clone joined already, before making the others.)
            let shared = match (share_pid, &spec.share) {
                (Some(pid), Some(share)) => {
                    let others: Vec<Namespace> = share
                        .namespaces
                        .iter()
                        .copied()
                        .filter(|ns| *ns != Namespace::User)
                        .collect();
                    join_namespaces(pid, &others)
                }
                _ => Ok(()),
            };
            if let Err(e) =
                shared.and_then(|()| setup_container(&rootfs, &spec, no_pivot, share_pid, &control))
            {
                fail(&mut control, &e, 1);
            }
            if protocol::send(&mut control, &HelperMsg::Ready).is_err() {
                std::process::exit(1);
            }
            // Blocked here until StartContainer (or EOF when the container is destroyed).
            match protocol::recv::<_, HelperMsg>(&mut control) {
                Ok(HelperMsg::Start) => {}
                _ => std::process::exit(1),
            }
            let e = exec_process(&spec.process);
            fail(&mut control, &e, 127)
        }
        HelperTask::Exec {
            target_pid,
            namespaces,
            process,
        } => {
            CONSOLE_PENDING.store(process.terminal, Ordering::Relaxed);
            // The container's devpts is reachable as /dev/ptmx once inside its mount
            // namespace; a container without one shares the agent's.
            let own_mnt = namespaces.contains(&Namespace::Mount);
            let console = |control: &UnixStream| match process.terminal {
                true => open_console(Path::new("/dev/ptmx"), &process, control),
                false => Ok(()),
            };
            let joined = (if own_mnt { Ok(()) } else { console(&control) })
                .and_then(|()| join_container(target_pid, &namespaces))
                .and_then(|()| if own_mnt { console(&control) } else { Ok(()) });
            if let Err(e) = joined {
                fail(&mut control, &e, 1);
            }
            let e = exec_process(&process);
            fail(&mut control, &e, 127)
        }
    }
}

/// Whether the agent still waits for this terminal process's pty (see
/// [`crate::spawn::recv_console`]). The helper is single-threaded.
static CONSOLE_PENDING: AtomicBool = AtomicBool::new(false);

fn fail(control: &mut UnixStream, e: &Error, code: i32) -> ! {
    if CONSOLE_PENDING.swap(false, Ordering::Relaxed) {
        let _ = crate::spawn::send_console(control, None);
    }
    let _ = protocol::send(control, &HelperMsg::Failed(crate::error_chain(e)));
    std::process::exit(code)
}

/// Makes the process's terminal from the devpts behind `ptmx` (the container's own, so the
/// process finds its `/dev/pts/N`), sends the master to the agent and installs the slave as
/// fds 0-2, owned by the process's user.
fn open_console(ptmx: &Path, p: &ProcessSpec, control: &UnixStream) -> Result<(), Error> {
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)
        .map_err(|source| Error::Console {
            path: ptmx.to_path_buf(),
            source,
        })?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which outlives the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(Error::Terminal(nix::Error::last()));
    }
    // TIOCGPTPEER opens the slave through the master: no path lookup in either devpts.
    // SAFETY: integer argument only; returns a new fd or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    };
    if slave < 0 {
        return Err(Error::Terminal(nix::Error::last()));
    }
    // SAFETY: a fresh fd from the kernel that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    nix::unistd::fchown(
        &slave,
        Some(nix::unistd::Uid::from_raw(p.uid)),
        Some(nix::unistd::Gid::from_raw(p.gid)),
    )
    .map_err(Error::Terminal)?;
    crate::spawn::send_console(control, Some(master.as_raw_fd())).map_err(Error::SendConsole)?;
    CONSOLE_PENDING.store(false, Ordering::Relaxed);
    for target in 0..3 {
        // SAFETY: fds 0-2 are the /dev/null placeholders the agent gave this helper; dup2
        // replaces them atomically and nothing in this single-threaded process holds them.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(Error::Terminal(nix::Error::last()));
        }
    }
    Ok(())
}

fn setup_container(
    rootfs: &Path,
    spec: &ContainerSpec,
    no_pivot: bool,
    share_pid: Option<i32>,
    control: &UnixStream,
) -> Result<(), Error> {
    let own_mnt = spec.namespaces.contains(&Namespace::Mount);
    if spec.namespaces.contains(&Namespace::Cgroup) {
        // The agent placed this process in the container's cgroup before handing it the
        // task: the new namespace is rooted there.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(Error::CgroupNamespace)?;
    }
    if own_mnt {
        mounts::prepare_container_root(rootfs, &spec.mounts, &spec.linux).map_err(Error::Mounts)?;
        // Not from a user namespace of its own: this process is root only there, and may not
        // enter the other container's mount namespace.
        let shares_ipc = spec
            .share
            .as_ref()
            .is_some_and(|s| s.namespaces.contains(&Namespace::Ipc))
            && !spec.namespaces.contains(&Namespace::User);
        if let (true, Some(pid)) = (shares_ipc, share_pid) {
            mounts::share_shm(pid, rootfs).map_err(Error::Mounts)?;
        }
    }
    if spec.process.terminal {
        // The container's own devpts when it has a mount namespace, else the agent's.
        let ptmx = if own_mnt {
            rootfs.join("dev/pts/ptmx")
        } else {
            PathBuf::from("/dev/ptmx")
        };
        open_console(&ptmx, &spec.process, control)?;
    }
    // As runc: an empty name leaves the one the new UTS namespace copied.
    let own_uts = spec.namespaces.contains(&Namespace::Uts);
    if let (Some(name), true) = (&spec.hostname, own_uts) {
        if !name.is_empty() {
            nix::unistd::sethostname(name).map_err(|source| Error::Hostname {
                name: name.clone(),
                source,
            })?;
        }
    }
    if let (Some(name), true) = (&spec.linux.domainname, own_uts) {
        if !name.is_empty() {
            set_domainname(name)?;
        }
    }
    if spec.namespaces.contains(&Namespace::Net) {
        // A fresh network namespace has only a downed loopback.
        crate::netif::loopback_up().map_err(Error::Loopback)?;
    }
    let how = match (own_mnt, no_pivot) {
        (false, _) => mounts::RootSwitch::Chroot,
        (true, false) => mounts::RootSwitch::Pivot,
        (true, true) => mounts::RootSwitch::MoveMount,
    };
    mounts::enter_root(rootfs, how).map_err(Error::Mounts)?;
    // After the switch, in runc's order: the spec's propagation again, now on the container's
    // own root, then the read-only root, sysctls (before /proc/sys may become read-only),
    // read-only paths, masked paths.
    if let (true, Some(p)) = (own_mnt, spec.linux.root_propagation.as_deref()) {
        mounts::set_root_propagation(p).map_err(Error::Mounts)?;
    }
    if own_mnt && spec.linux.readonly_root {
        mounts::readonly_root().map_err(Error::Mounts)?;
    }
    for (key, value) in &spec.linux.sysctl {
        if !sysctl_from_outside(key, &spec.namespaces) {
            write_sysctl(key, value)?;
        }
    }
    if own_mnt {
        for p in &spec.linux.readonly_paths {
            mounts::readonly_path(Path::new(p)).map_err(Error::Mounts)?;
        }
        for p in &spec.linux.masked_paths {
            mounts::mask_path(Path::new(p)).map_err(Error::Mounts)?;
        }
    }
    Ok(())
}

fn set_domainname(name: &str) -> Result<(), Error> {
    // SAFETY: setdomainname reads `len` bytes from the pointer, which outlives the call.
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(Error::Domainname {
            name: name.to_string(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// `/proc/sys/...` of a sysctl key (`net.ipv4.ip_forward`): dots become slashes; a key with
/// a slash or an empty component (`..`) is refused, so it cannot leave `/proc/sys`.
pub fn sysctl_path(key: &str) -> Result<PathBuf, Error> {
    if key.is_empty() || key.contains('/') || key.split('.').any(str::is_empty) {
        return Err(Error::SysctlKey(key.to_string()));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// Whether the agent writes sysctl `key` itself, before the clone: a `net.` key of a container
/// without a network namespace of its own is the VM's network namespace's, the agent's, which
/// a helper in a user namespace may not write (and every container of the VM shares).
pub fn sysctl_from_outside(key: &str, namespaces: &[Namespace]) -> bool {
    key.starts_with("net.") && !namespaces.contains(&Namespace::Net)
}

pub fn write_sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = sysctl_path(key)?;
    std::fs::write(&path, value.as_bytes()).map_err(|source| Error::Sysctl {
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Opens `/proc/<pid>/<name>`.
fn open_proc(pid: i32, name: &str) -> Result<(String, File), Error> {
    let path = format!("/proc/{pid}/{name}");
    File::open(&path)
        .map(|f| (path.clone(), f))
        .map_err(|source| Error::OpenNamespace { path, source })
}

/// A namespace file opened to be joined: its kind, its path (for errors) and the file.
type OpenedNamespace = (Namespace, (String, File));

/// Opens the namespaces of `pid` among `namespaces` (not pid, which is entered before a
/// clone), in the order they are joined: the mount namespace late, as /proc changes with it.
fn open_namespaces(pid: i32, namespaces: &[Namespace]) -> Result<Vec<OpenedNamespace>, Error> {
    let mut joins = Vec::new();
    for (ns, name) in [
        (Namespace::Ipc, "ns/ipc"),
        (Namespace::Uts, "ns/uts"),
        (Namespace::Net, "ns/net"),
        (Namespace::Cgroup, "ns/cgroup"),
        (Namespace::Mount, "ns/mnt"),
        // The user namespace after the others: the agent's root may join any of them (a
        // sandbox's, the container's own), and once in it this process is root only there
        // (its ids are then set inside it, by the process's user).
        (Namespace::User, "ns/user"),
    ] {
        if namespaces.contains(&ns) {
            joins.push((ns, open_proc(pid, name)?));
        }
    }
    Ok(joins)
}

fn enter_namespaces(joins: Vec<OpenedNamespace>) -> Result<(), Error> {
    for (ns, (path, f)) in joins {
        nix::sched::setns(f.as_fd(), crate::spawn::ns_flag(ns))
            .map_err(|source| Error::JoinNamespace { path, source })?;
    }
    Ok(())
}

/// Joins the namespaces of `pid` among `namespaces` (pid excepted).
fn join_namespaces(pid: i32, namespaces: &[Namespace]) -> Result<(), Error> {
    enter_namespaces(open_namespaces(pid, namespaces)?)
}

/// Joins the namespaces (except pid, which the agent did before cloning) and the root of
/// the container whose init is `target_pid`.
fn join_container(target_pid: i32, namespaces: &[Namespace]) -> Result<(), Error> {
    // Open everything first: after joining the mount namespace /proc is the container's.
    let joins = open_namespaces(target_pid, namespaces)?;
    let root = if namespaces.contains(&Namespace::Mount) {
        None
    } else {
        Some(open_proc(target_pid, "root")?)
    };
    enter_namespaces(joins)?;
    if namespaces.contains(&Namespace::User) {
        // As runc after joining a user namespace: become its root (the agent's ids are not
        // mapped there), so that what this helper makes, the terminal included, is owned
        // inside it and may be given to the process's user.
        let root_cred = |source| Error::Credentials {
            uid: 0,
            gid: 0,
            source,
        };
        let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        nix::unistd::setresgid(gid, gid, gid).map_err(root_cred)?;
        nix::unistd::setresuid(uid, uid, uid).map_err(root_cred)?;
    }
    // Joining a mount namespace also moves root and cwd to its root; without one, chroot.
    if let Some((_, root)) = root {
        nix::unistd::fchdir(root.as_fd()).map_err(Error::Root)?;
        nix::unistd::chroot(".").map_err(Error::Root)?;
        nix::unistd::chdir("/").map_err(Error::Root)?;
    }
    Ok(())
}

/// Applies the process's settings and execs it. Returns only on failure.
fn exec_process(p: &ProcessSpec) -> Error {
    match prepare_and_exec(p) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn prepare_and_exec(p: &ProcessSpec) -> Result<std::convert::Infallible, Error> {
    // The control socket must close when exec succeeds: that is the agent's "started".
    // SAFETY: fcntl on our own fd; no memory effects.
    unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    if p.terminal {
        nix::unistd::setsid().map_err(Error::Terminal)?;
        // SAFETY: TIOCSCTTY takes an int argument; fd 0 is the pty slave (open_console).
        let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        if rc != 0 {
            return Err(Error::Terminal(nix::Error::last()));
        }
    }
    // The rlimits and oom_score_adj were set by the agent (spawn::FromOutside).
    let caps = p
        .capabilities
        .as_deref()
        .map(crate::caps::parse)
        .transpose()
        .map_err(Error::Caps)?;
    if let Some(sets) = &caps {
        crate::caps::before_setuid(sets).map_err(Error::Caps)?;
    }
    nix::unistd::chdir(p.cwd.as_str()).map_err(|source| Error::Cwd {
        cwd: p.cwd.clone(),
        source,
    })?;
    let cred = |source| Error::Credentials {
        uid: p.uid,
        gid: p.gid,
        source,
    };
    // Before the user changes (as runc does): a process without HOME finds its home in the
    // container's /etc/passwd, read as root and only then.
    let env = with_home(&p.env, p.uid, || {
        std::fs::read_to_string("/etc/passwd").unwrap_or_default()
    });
    let groups: Vec<nix::unistd::Gid> = p
        .additional_gids
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(cred)?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(p.gid)).map_err(cred)?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(p.uid)).map_err(cred)?;
    if let Some(sets) = &caps {
        crate::caps::after_setuid(sets).map_err(Error::Caps)?;
    }
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(Error::NoNewPrivs(nix::Error::last()));
        }
    }
    let arg0 = p.args.first().ok_or(Error::NoArgs)?;
    let path = resolve_command(arg0, &p.env)?;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::Nul)?;
    let args = to_cstrings(&p.args)?;
    let env = to_cstrings(&env)?;
    // The Rust runtime ignores SIGPIPE; the command expects the default.
    // SAFETY: resetting a signal disposition; no memory effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let e = nix::unistd::execve(&cpath, &args, &env).err();
    Err(Error::Exec {
        path: path.display().to_string(),
        source: e.unwrap_or(nix::Error::UnknownErrno),
    })
}

/// `env` with `HOME` set as runc sets it when the process has none (or an empty one): the
/// home of the first `passwd` entry (the container's `/etc/passwd`, read only then) with
/// `uid`, else "/".
fn with_home(env: &[String], uid: u32, passwd: impl FnOnce() -> String) -> Vec<String> {
    let mut env: Vec<String> = env
        .iter()
        .filter(|v| v.as_str() != "HOME=")
        .cloned()
        .collect();
    if !env.iter().any(|v| v.starts_with("HOME=")) {
        let passwd = passwd();
        let home = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 6 && f[2].parse() == Ok(uid))
            .map_or("/", |f| f[5]);
        env.push(format!("HOME={home}"));
    }
    env
}

fn to_cstrings(v: &[String]) -> Result<Vec<CString>, Error> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| Error::Nul))
        .collect()
}

/// Finds `cmd` like `execvp` does, with `PATH` from the process's environment.
pub fn resolve_command(cmd: &str, env: &[String]) -> Result<PathBuf, Error> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(cmd);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Error::NotFound(cmd.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_commands_like_execvp() {
        assert_eq!(resolve_command("/x/y", &[]).unwrap(), PathBuf::from("/x/y"));
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(
            resolve_command("sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(matches!(
            resolve_command("no-such-cmd-ember", &env),
            Err(Error::NotFound(_))
        ));
    }

    /// runc's HOME: kept when given, else the user's passwd home, else "/".
    #[test]
    fn a_process_without_home_gets_its_users_home() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      broken-line\n\
                      app:x:1000:1000:container user:/tmp:/bin/sh\n\
                      again:x:1000:1000::/elsewhere:/bin/sh\n";
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let home = |env: Vec<String>| env.into_iter().find(|v| v.starts_with("HOME="));
        assert_eq!(
            home(with_home(&env(&["A=1"]), 1000, || passwd.to_string())).as_deref(),
            Some("HOME=/tmp")
        );
        assert_eq!(
            home(with_home(&env(&["HOME="]), 0, || passwd.to_string())).as_deref(),
            Some("HOME=/root")
        );
        assert_eq!(
            home(with_home(&env(&["HOME=/mine"]), 0, || passwd.to_string())).as_deref(),
            Some("HOME=/mine")
        );
        assert_eq!(
            home(with_home(&env(&[]), 4242, || passwd.to_string())).as_deref(),
            Some("HOME=/")
        );
        assert_eq!(
            home(with_home(&env(&[]), 0, String::new)).as_deref(),
            Some("HOME=/")
        );
        assert_eq!(
            with_home(&env(&["A=1", "B=2"]), 0, || passwd.to_string()).len(),
            3
        );
    }

    #[test]
    fn sysctl_keys_stay_in_proc_sys() {
        assert_eq!(
            sysctl_path("kernel.msgmax").unwrap(),
            PathBuf::from("/proc/sys/kernel/msgmax")
        );
        for bad in [
            "",
            "kernel..msgmax",
            ".kernel",
            "kernel.",
            "../../etc",
            "a/b",
            "x..",
        ] {
            assert!(
                matches!(sysctl_path(bad), Err(Error::SysctlKey(_))),
                "{bad:?}"
            );
        }
    }
}
