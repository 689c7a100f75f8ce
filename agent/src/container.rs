//! Containers inside the agent: lifecycle, processes, cgroup operations.

use crate::cgroup::{self, Cgroup};
use crate::mounts;
use crate::protocol::{
    AgentStats, Capabilities, ContainerSpec, ContainerState, ContainerStats, ErrorKind, ExitStatus,
    Namespace, ProcessInfo, ProcessSpec, SharedNamespaces, StdioStream,
};
use crate::reaper::{self, Reaper};
use crate::spawn::{self, HelperMsg, HelperTask};
use crate::stdio::{self, ProcessStdio};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long container setup (mounts, namespaces) may take before create gives up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long destroy waits for killed processes to go.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of container operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid id {0:?} (use 1-64 of [A-Za-z0-9_.-], not starting with '.')")]
    InvalidId(String),
    #[error("No container {0}")]
    NotFound(String),
    #[error("No process {exec_id} in container {container_id}")]
    ExecNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("Container {0} already exists")]
    Exists(String),
    #[error("Process {exec_id} already exists in container {container_id}")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("Container {id} is {state:?}, expected {expected}")]
    State {
        id: String,
        state: ContainerState,
        expected: &'static str,
    },
    #[error("Container {0} has no cgroup (no cgroup v2 here)")]
    NoCgroup(String),
    #[error("Cannot prepare {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot open the container's pid namespace")]
    PidNamespace(#[source] io::Error),
    #[error("Container rootfs")]
    Mounts(#[source] mounts::Error),
    #[error("Container cgroup")]
    Cgroup(#[source] cgroup::Error),
    #[error("Process stdio")]
    Stdio(#[source] stdio::Error),
    #[error("Cannot start the process")]
    Spawn(#[source] spawn::Error),
    #[error("Process")]
    Reaper(#[source] reaper::Error),
    #[error("Container {0} did not stop after SIGKILL")]
    KillTimeout(String),
    #[error("Bad capabilities")]
    Capabilities(#[source] crate::caps::Error),
    #[error("Bad container setup")]
    Setup(#[source] crate::helper::Error),
    #[error("{0} needs the container's own mount namespace")]
    NeedsMountNamespace(&'static str),
    #[error(
        "The {0:?} namespace cannot be shared with another container (only Pid, Ipc, Uts, User)"
    )]
    NotJoinable(Namespace),
    #[error("The {0:?} namespace is both the container's own and shared with another")]
    OwnAndShared(Namespace),
    #[error("Container {target} has no live process whose namespaces {id} could join")]
    ShareTargetGone { id: String, target: String },
    #[error("Bad user namespace: {0}")]
    UserNamespace(String),
    #[error("Unknown rlimit {0:?}")]
    UnknownRlimit(String),
    #[error("Cannot name the VM")]
    Hostname(#[source] crate::init::Error),
    #[error("Cannot set sysctl {0} for the VM's network namespace")]
    Sysctl(String, #[source] crate::helper::Error),
}

impl Error {
    /// The protocol error kind for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidId(_)
            | Error::Capabilities(_)
            | Error::Setup(_)
            | Error::NeedsMountNamespace(_)
            | Error::NotJoinable(_)
            | Error::OwnAndShared(_)
            | Error::UserNamespace(_)
            | Error::UnknownRlimit(_)
            | Error::Mounts(mounts::Error::BadPropagation(_))
            | Error::Mounts(mounts::Error::BadDevice { .. }) => ErrorKind::BadRequest,
            Error::NotFound(_) | Error::ExecNotFound { .. } => ErrorKind::NotFound,
            Error::Exists(_) | Error::ExecExists { .. } => ErrorKind::AlreadyExists,
            Error::State { .. } | Error::ShareTargetGone { .. } => ErrorKind::InvalidState,
            Error::Reaper(reaper::Error::Exited(_)) => ErrorKind::InvalidState,
            Error::Reaper(reaper::Error::Unknown(_)) => ErrorKind::NotFound,
            Error::Stdio(stdio::Error::Busy(_)) | Error::Stdio(stdio::Error::NoTerminal) => {
                ErrorKind::InvalidState
            }
            Error::NoCgroup(_) => ErrorKind::Unsupported,
            _ => ErrorKind::Failed,
        }
    }
}

/// Where the agent keeps container state, and whether it is a guest's.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Bundles live in `<state_dir>/containers/<id>` (rootfs mounted at `.../rootfs`).
    pub state_dir: PathBuf,
    /// cgroup v2 mount under which container cgroups are created; `None` without cgroup v2.
    pub cgroup_root: Option<PathBuf>,
    /// Switch container roots by moving the mount instead of `pivot_root` (runc's
    /// `--no-pivot`; `pivot_root` already falls back to it where it cannot work).
    pub no_pivot: bool,
    /// The agent is the guest's real PID 1 (in the initial pid namespace), so it may change
    /// what is the whole machine's: the clock, the hostname, the kernel's entropy
    /// ([`crate::protocol::Request::Restored`]). False for an agent on a host (tests), PID 1
    /// of a pid namespace included.
    pub guest: bool,
}

struct Process {
    pid: i32,
    stdio: Arc<ProcessStdio>,
}

/// The stdio of a terminal process, from the pty master its helper sends back.
fn console_stdio(control: &mut UnixStream) -> Result<ProcessStdio, Error> {
    let master = spawn::recv_console(control).map_err(Error::Spawn)?;
    ProcessStdio::from_pty(master).map_err(Error::Stdio)
}

/// Where, in a container's bundle directory, its volume disk is mounted.
const VOLUME_DIR: &str = "volume";

struct Container {
    id: String,
    namespaces: Vec<Namespace>,
    bundle: PathBuf,
    rootfs: PathBuf,
    cgroup: Option<Cgroup>,
    init: Arc<Process>,
    /// The init's capabilities: an exec'd process without its own gets these.
    capabilities: Option<Box<Capabilities>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    started: bool,
    paused: bool,
    /// Control socket to the init helper until it is started.
    control: Option<UnixStream>,
    execs: HashMap<String, Arc<Process>>,
}

impl Container {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self, reaper: &Reaper, inner: &Inner) -> ContainerState {
        if !matches!(reaper.status(self.init.pid), Ok(None)) {
            ContainerState::Stopped
        } else if inner.paused {
            ContainerState::Paused
        } else if inner.started {
            ContainerState::Running
        } else {
            ContainerState::Created
        }
    }

    fn state_error(&self, state: ContainerState, expected: &'static str) -> Error {
        Error::State {
            id: self.id.clone(),
            state,
            expected,
        }
    }
}

/// The container whose namespaces a new one joins: its init, its pid namespace (when that
/// is shared: entered before the clone) and the namespaces shared.
struct ShareTarget {
    pid: i32,
    pid_ns: Option<File>,
    /// Its user namespace, when shared: the clone joins it first ([`spawn::spawn_helper`]).
    user_ns: Option<File>,
    namespaces: Vec<Namespace>,
}

/// The agent's containers.
pub struct Agent {
    opts: AgentOptions,
    started: Instant,
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    create_lock: Mutex<()>,
}

/// Checks an id used in paths and cgroup names.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

impl Agent {
    pub fn new(opts: AgentOptions, reaper: Arc<Reaper>) -> Agent {
        Agent {
            opts,
            started: Instant::now(),
            reaper,
            containers: Mutex::new(HashMap::new()),
            create_lock: Mutex::new(()),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A channel told `(pid, status)` of every process of this agent that exits from now on;
    /// [`Agent::container_of_init`] says which are containers' init processes.
    pub fn exits(&self) -> std::sync::mpsc::Receiver<(i32, crate::protocol::ExitStatus)> {
        self.reaper.subscribe()
    }

    /// The container whose init process is `pid`, if any.
    pub fn container_of_init(&self, pid: i32) -> Option<String> {
        self.map()
            .values()
            .find(|c| c.init.pid == pid)
            .map(|c| c.id.clone())
    }

    /// Whether this is a guest's agent (see [`AgentOptions::guest`]).
    pub fn is_guest(&self) -> bool {
        self.opts.guest
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, Error> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    fn process(&self, c: &Container, exec_id: Option<&str>) -> Result<Arc<Process>, Error> {
        match exec_id {
            None => Ok(Arc::clone(&c.init)),
            Some(e) => c
                .lock()
                .execs
                .get(e)
                .cloned()
                .ok_or_else(|| Error::ExecNotFound {
                    container_id: c.id.clone(),
                    exec_id: e.to_string(),
                }),
        }
    }

    /// Prepares a container; its init waits for [`Agent::start`].
    pub fn create(&self, id: &str, mut spec: ContainerSpec) -> Result<(), Error> {
        validate_id(id)?;
        validate_setup(&spec)?;
        let _serial = self.create_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.map().contains_key(id) {
            return Err(Error::Exists(id.to_string()));
        }
        let bundle = self.opts.state_dir.join("containers").join(id);
        let rootfs = bundle.join("rootfs");
        let volume = bundle.join(VOLUME_DIR);
        fs::create_dir_all(&rootfs).map_err(|source| Error::Dir {
            path: rootfs.clone(),
            source,
        })?;
        let cleanup_dirs = || {
            let _ = fs::remove_dir(&rootfs);
            let _ = fs::remove_dir(&volume);
            let _ = fs::remove_dir(&bundle);
        };
        if let Err(e) = mounts::mount_rootfs(&spec.rootfs, &rootfs) {
            cleanup_dirs();
            return Err(Error::Mounts(e));
        }
        let cleanup_mount = || {
            let _ = mounts::unmount_rootfs(&volume);
            let _ = mounts::unmount_rootfs(&rootfs);
            cleanup_dirs();
        };
        let volume_mounted = match &spec.volume {
            Some(v) => match mounts::mount_rootfs(v, &volume) {
                Ok(()) => Some(volume.as_path()),
                Err(e) => {
                    cleanup_mount();
                    return Err(Error::Mounts(e));
                }
            },
            None => None,
        };
        if let Err(e) = mounts::resolve_volume_sources(&mut spec.mounts, volume_mounted)
            .and_then(|()| mounts::resolve_share_sources(&mut spec.mounts))
        {
            cleanup_mount();
            return Err(Error::Mounts(e));
        }
        let cgroup = match &self.opts.cgroup_root {
            None => None,
            Some(root) => {
                let rel = spec
                    .cgroup_path
                    .clone()
                    .unwrap_or_else(|| format!("ember/{id}"));
                match Cgroup::create(root, &rel).and_then(|cg| {
                    if let Err(e) = cg.apply(&spec.limits) {
                        let _ = cg.remove(Duration::from_secs(1));
                        return Err(e);
                    }
                    Ok(cg)
                }) {
                    Ok(cg) => Some(cg),
                    Err(e) => {
                        cleanup_mount();
                        return Err(Error::Cgroup(e));
                    }
                }
            }
        };
        let cleanup_all = |pid: Option<i32>| {
            if let Some(pid) = pid {
                let _ = self.reaper.signal(pid, libc::SIGKILL);
                let _ = self.reaper.wait(pid, Some(KILL_TIMEOUT));
            }
            if let Some(cg) = &cgroup {
                let _ = cg.remove(Duration::from_secs(1));
            }
            cleanup_mount();
        };
        let (stdio, child) = match ProcessStdio::prepare(spec.process.terminal) {
            Ok(s) => s,
            Err(e) => {
                cleanup_all(None);
                return Err(Error::Stdio(e));
            }
        };
        // The process whose namespaces are shared (its pid namespace is entered before the
        // clone, the others by the helper).
        let share = match self.share_target(id, &spec) {
            Ok(s) => s,
            Err(e) => {
                cleanup_all(None);
                return Err(e);
            }
        };
        // A container that shares the VM's UTS namespace names the VM (under runc it shares
        // its host's, whose name it sees). Only a guest's agent: a host's name is not ours.
        let shares_vm_uts = !spec.namespaces.contains(&Namespace::Uts)
            && !spec
                .share
                .as_ref()
                .is_some_and(|s| s.namespaces.contains(&Namespace::Uts));
        if let (true, true, Some(name)) = (shares_vm_uts, self.opts.guest, &spec.hostname) {
            if !name.is_empty() {
                if let Err(e) = crate::init::set_hostname(name) {
                    cleanup_all(None);
                    return Err(Error::Hostname(e));
                }
            }
        }
        // Spec devices the VM has no node for, which a user namespace cannot make: made
        // here for the helper to bind.
        if spec.namespaces.contains(&Namespace::User) {
            if let Err(e) = mounts::make_nodes_outside(&spec.linux.devices) {
                cleanup_all(None);
                return Err(Error::Mounts(e));
            }
        }
        // The VM's network settings the spec asks for (a container without a network
        // namespace of its own shares the agent's).
        for (key, value) in &spec.linux.sysctl {
            if crate::helper::sysctl_from_outside(key, &spec.namespaces) {
                if let Err(e) = crate::helper::write_sysctl(key, value) {
                    cleanup_all(None);
                    return Err(Error::Sysctl(key.clone(), e));
                }
            }
        }
        let own = spec.namespaces.clone();
        // What an exec joins: the container's own namespaces and those it shares.
        let mut namespaces = own.clone();
        namespaces.extend(share.iter().flat_map(|s| s.namespaces.iter().copied()));
        let capabilities = spec.process.capabilities.clone();
        let (share_pid, pid_ns, user_ns) = match share {
            Some(s) => (Some(s.pid), s.pid_ns, s.user_ns),
            None => (None, None, None),
        };
        let task = HelperTask::Init {
            rootfs: rootfs.clone(),
            spec: Box::new(spec),
            no_pivot: self.opts.no_pivot,
            share_pid,
        };
        let spawned = match spawn::spawn_helper(
            &self.reaper,
            spawn::clone_flags(&own),
            pid_ns,
            user_ns,
            child,
            cgroup.as_ref(),
            &task,
        ) {
            Ok(s) => s,
            Err(e) => {
                cleanup_all(None);
                return Err(Error::Spawn(e));
            }
        };
        let mut control = spawned.control;
        let _ = control.set_read_timeout(Some(SETUP_TIMEOUT));
        let stdio = match stdio.map_or_else(|| console_stdio(&mut control), Ok) {
            Ok(s) => s,
            Err(e) => {
                cleanup_all(Some(spawned.pid));
                return Err(e);
            }
        };
        match spawn::read_report(&mut control) {
            Ok(true) => {}
            Ok(false) => {
                cleanup_all(Some(spawned.pid));
                return Err(Error::Spawn(spawn::Error::HelperDied));
            }
            Err(e) => {
                cleanup_all(Some(spawned.pid));
                return Err(Error::Spawn(e));
            }
        }
        let _ = control.set_read_timeout(None);
        let container = Container {
            id: id.to_string(),
            namespaces,
            bundle,
            rootfs,
            cgroup,
            init: Arc::new(Process {
                pid: spawned.pid,
                stdio: Arc::new(stdio),
            }),
            capabilities,
            inner: Mutex::new(Inner {
                control: Some(control),
                ..Inner::default()
            }),
        };
        self.map().insert(id.to_string(), Arc::new(container));
        Ok(())
    }

    /// For a spec that shares namespaces: the container it joins, checked to be alive.
    fn share_target(&self, id: &str, spec: &ContainerSpec) -> Result<Option<ShareTarget>, Error> {
        let Some(share) = spec.share.as_ref().filter(|s| !s.namespaces.is_empty()) else {
            return Ok(None);
        };
        let target = self.get(&share.container)?;
        let gone = || Error::ShareTargetGone {
            id: id.to_string(),
            target: share.container.clone(),
        };
        let state = {
            let inner = target.lock();
            target.state(&self.reaper, &inner)
        };
        if state == ContainerState::Stopped {
            return Err(gone());
        }
        let pid = target.init.pid;
        let open = |ns: Namespace, name: &str| {
            share
                .namespaces
                .contains(&ns)
                .then(|| File::open(format!("/proc/{pid}/ns/{name}")).map_err(|_| gone()))
                .transpose()
        };
        Ok(Some(ShareTarget {
            pid,
            pid_ns: open(Namespace::Pid, "pid")?,
            user_ns: open(Namespace::User, "user")?,
            namespaces: share.namespaces.clone(),
        }))
    }

    /// Lets the container's init exec its command; returns its pid.
    pub fn start(&self, id: &str) -> Result<i32, Error> {
        let c = self.get(id)?;
        let mut inner = c.lock();
        let state = c.state(&self.reaper, &inner);
        if state != ContainerState::Created {
            return Err(c.state_error(state, "Created"));
        }
        let mut control = inner
            .control
            .take()
            .ok_or_else(|| c.state_error(state, "Created"))?;
        let _ = control.set_read_timeout(Some(SETUP_TIMEOUT));
        spawn::send_msg(&mut control, &HelperMsg::Start).map_err(Error::Spawn)?;
        match spawn::read_report(&mut control) {
            Ok(false) => {
                inner.started = true;
                Ok(c.init.pid)
            }
            Ok(true) => Err(Error::Spawn(spawn::Error::Protocol)),
            Err(e) => Err(Error::Spawn(e)),
        }
    }

    /// Runs another process in a running container; returns its pid.
    pub fn exec(&self, id: &str, exec_id: &str, mut process: ProcessSpec) -> Result<i32, Error> {
        validate_id(exec_id)?;
        let c = self.get(id)?;
        if process.capabilities.is_none() {
            process.capabilities = c.capabilities.clone();
        }
        if let Some(caps) = &process.capabilities {
            crate::caps::parse(caps).map_err(Error::Capabilities)?;
        }
        let mut inner = c.lock();
        let state = c.state(&self.reaper, &inner);
        if state != ContainerState::Running {
            return Err(c.state_error(state, "Running"));
        }
        if inner.execs.contains_key(exec_id) {
            return Err(Error::ExecExists {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
        }
        let pid_ns = if c.namespaces.contains(&Namespace::Pid) {
            Some(File::open(format!("/proc/{}/ns/pid", c.init.pid)).map_err(Error::PidNamespace)?)
        } else {
            None
        };
        let (stdio, child) = ProcessStdio::prepare(process.terminal).map_err(Error::Stdio)?;
        let task = HelperTask::Exec {
            target_pid: c.init.pid,
            namespaces: c.namespaces.clone(),
            process,
        };
        let mut spawned = spawn::spawn_helper(
            &self.reaper,
            nix::sched::CloneFlags::empty(),
            pid_ns,
            None,
            child,
            c.cgroup.as_ref(),
            &task,
        )
        .map_err(Error::Spawn)?;
        let _ = spawned.control.set_read_timeout(Some(SETUP_TIMEOUT));
        let report = stdio
            .map_or_else(|| console_stdio(&mut spawned.control), Ok)
            .and_then(|stdio| {
                spawn::read_report(&mut spawned.control)
                    .map(|ready| (ready, stdio))
                    .map_err(Error::Spawn)
            });
        match report {
            Ok((false, stdio)) => {
                inner.execs.insert(
                    exec_id.to_string(),
                    Arc::new(Process {
                        pid: spawned.pid,
                        stdio: Arc::new(stdio),
                    }),
                );
                Ok(spawned.pid)
            }
            other => {
                let _ = self.reaper.signal(spawned.pid, libc::SIGKILL);
                let _ = self.reaper.wait(spawned.pid, Some(KILL_TIMEOUT));
                self.reaper.forget(spawned.pid);
                Err(match other {
                    Err(e) => e,
                    _ => Error::Spawn(spawn::Error::Protocol),
                })
            }
        }
    }

    /// Signals the init, an exec'd process, or (`all`) every process of the container.
    pub fn signal(
        &self,
        id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), Error> {
        let c = self.get(id)?;
        if all {
            let inner = c.lock();
            let state = c.state(&self.reaper, &inner);
            if state == ContainerState::Stopped {
                return Err(c.state_error(state, "a live container"));
            }
            if let Some(cg) = &c.cgroup {
                return cg.signal_all(signal).map_err(Error::Cgroup);
            }
            let _ = self.reaper.signal(c.init.pid, signal);
            for p in inner.execs.values() {
                let _ = self.reaper.signal(p.pid, signal);
            }
            return Ok(());
        }
        let p = self.process(&c, exec_id)?;
        self.reaper.signal(p.pid, signal).map_err(Error::Reaper)
    }

    /// Blocks until the process exits.
    pub fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus, Error> {
        let c = self.get(id)?;
        let p = self.process(&c, exec_id)?;
        drop(c);
        match self.reaper.wait(p.pid, None).map_err(Error::Reaper)? {
            Some(status) => Ok(status),
            None => Err(Error::Reaper(reaper::Error::Unknown(p.pid))),
        }
    }

    /// Processes of the container (its cgroup, or the agent's own list without cgroups).
    pub fn process_list(&self, id: &str) -> Result<Vec<ProcessInfo>, Error> {
        let c = self.get(id)?;
        let pids = match &c.cgroup {
            Some(cg) => cg.procs().map_err(Error::Cgroup)?,
            None => {
                let inner = c.lock();
                std::iter::once(c.init.pid)
                    .chain(inner.execs.values().map(|p| p.pid))
                    .filter(|pid| matches!(self.reaper.status(*pid), Ok(None)))
                    .collect()
            }
        };
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                cmd: read_cmdline(pid),
            })
            .collect())
    }

    pub fn pause(&self, id: &str) -> Result<(), Error> {
        self.set_paused(id, true)
    }

    pub fn resume(&self, id: &str) -> Result<(), Error> {
        self.set_paused(id, false)
    }

    /// New cgroup limits for a container that has not stopped (`runc update`).
    pub fn update(&self, id: &str, limits: &crate::protocol::CgroupLimits) -> Result<(), Error> {
        let c = self.get(id)?;
        let inner = c.lock();
        let state = c.state(&self.reaper, &inner);
        if state == ContainerState::Stopped {
            return Err(c.state_error(state, "Created, Running or Paused"));
        }
        let cg = c
            .cgroup
            .as_ref()
            .ok_or_else(|| Error::NoCgroup(id.into()))?;
        cg.apply(limits).map_err(Error::Cgroup)
    }

    fn set_paused(&self, id: &str, pause: bool) -> Result<(), Error> {
        let c = self.get(id)?;
        let mut inner = c.lock();
        let state = c.state(&self.reaper, &inner);
        let (want, name) = if pause {
            (ContainerState::Running, "Running")
        } else {
            (ContainerState::Paused, "Paused")
        };
        if state != want {
            return Err(c.state_error(state, name));
        }
        let cg = c
            .cgroup
            .as_ref()
            .ok_or_else(|| Error::NoCgroup(id.into()))?;
        cg.set_frozen(pause).map_err(Error::Cgroup)?;
        inner.paused = pause;
        Ok(())
    }

    /// Kills what still runs, unmounts the rootfs and removes the cgroup and bundle.
    pub fn destroy(&self, id: &str) -> Result<(), Error> {
        let c = self.get(id)?;
        let mut inner = c.lock();
        // A created-but-not-started init exits when its control socket closes.
        inner.control = None;
        let mut pids: Vec<i32> = vec![c.init.pid];
        pids.extend(inner.execs.values().map(|p| p.pid));
        if let Some(cg) = &c.cgroup {
            let _ = cg.kill_all();
        }
        for pid in &pids {
            let _ = self.reaper.signal(*pid, libc::SIGKILL);
        }
        for pid in &pids {
            if let Ok(None) = self.reaper.wait(*pid, Some(KILL_TIMEOUT)) {
                return Err(Error::KillTimeout(id.to_string()));
            }
        }
        c.init.stdio.close_stdin();
        for p in inner.execs.values() {
            p.stdio.close_stdin();
        }
        inner.paused = false;
        if let Some(cg) = &c.cgroup {
            if cg.frozen() {
                let _ = cg.set_frozen(false);
            }
            cg.remove(Duration::from_secs(5)).map_err(Error::Cgroup)?;
        }
        mounts::unmount_rootfs(&c.rootfs).map_err(Error::Mounts)?;
        let volume = c.bundle.join(VOLUME_DIR);
        mounts::unmount_rootfs(&volume).map_err(Error::Mounts)?;
        // Only empty directories are removed: never recurse into a (still) mounted rootfs.
        let _ = fs::remove_dir(&c.rootfs);
        let _ = fs::remove_dir(&volume);
        let _ = fs::remove_dir(&c.bundle);
        for pid in pids {
            self.reaper.forget(pid);
        }
        drop(inner);
        self.map().remove(id);
        Ok(())
    }

    /// Ids of all containers.
    pub fn ids(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Agent and container statistics.
    pub fn stats(&self) -> AgentStats {
        let (mem_total_kib, mem_available_kib) = meminfo();
        let containers: Vec<Arc<Container>> = self.map().values().cloned().collect();
        let mut stats: Vec<ContainerStats> = containers
            .iter()
            .map(|c| {
                let inner = c.lock();
                let state = c.state(&self.reaper, &inner);
                let pids = match &c.cgroup {
                    Some(cg) => cg.procs().map(|p| p.len() as u64).unwrap_or(0),
                    None => std::iter::once(c.init.pid)
                        .chain(inner.execs.values().map(|p| p.pid))
                        .filter(|pid| matches!(self.reaper.status(*pid), Ok(None)))
                        .count() as u64,
                };
                ContainerStats {
                    id: c.id.clone(),
                    state,
                    pids,
                    memory_bytes: c.cgroup.as_ref().and_then(Cgroup::memory_bytes),
                    cpu_usec: c.cgroup.as_ref().and_then(Cgroup::cpu_usec),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.id.cmp(&b.id));
        AgentStats {
            uptime_ms: self.uptime().as_millis() as u64,
            mem_total_kib,
            mem_available_kib,
            load_avg_1m: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0.0),
            containers: stats,
        }
    }

    /// Claims one stdio stream of the process for an attached connection (see
    /// [`crate::stdio::StdioClaim`]); refused while it is claimed already.
    pub fn claim_stdio(
        &self,
        id: &str,
        exec_id: Option<&str>,
        stream: StdioStream,
    ) -> Result<stdio::StdioClaim, Error> {
        let c = self.get(id)?;
        let p = self.process(&c, exec_id)?;
        p.stdio.claim(stream).map_err(Error::Stdio)
    }

    pub fn resize(
        &self,
        id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), Error> {
        let c = self.get(id)?;
        let p = self.process(&c, exec_id)?;
        p.stdio.resize(rows, cols).map_err(Error::Stdio)
    }
}

/// What create can refuse before anything is made: unknown capability names, bad sysctl
/// keys, and (as runc) mount-namespace settings of a container without one.
fn validate_setup(spec: &ContainerSpec) -> Result<(), Error> {
    if let Some(caps) = &spec.process.capabilities {
        crate::caps::parse(caps).map_err(Error::Capabilities)?;
    }
    for key in spec.linux.sysctl.keys() {
        crate::helper::sysctl_path(key).map_err(Error::Setup)?;
    }
    mounts::propagation_flags(spec.linux.root_propagation.as_deref()).map_err(Error::Mounts)?;
    if let Some(r) = spec
        .process
        .rlimits
        .iter()
        .find(|r| !spawn::known_rlimit(&r.kind))
    {
        return Err(Error::UnknownRlimit(r.kind.clone()));
    }
    validate_user_namespace(spec).map_err(Error::UserNamespace)?;
    for ns in spec.share.iter().flat_map(|s| &s.namespaces) {
        if !SharedNamespaces::JOINABLE.contains(ns) {
            return Err(Error::NotJoinable(*ns));
        }
        if spec.namespaces.contains(ns) {
            return Err(Error::OwnAndShared(*ns));
        }
    }
    if !spec.namespaces.contains(&Namespace::Mount) {
        let l = &spec.linux;
        let needs = [
            (!l.masked_paths.is_empty(), "maskedPaths"),
            (!l.readonly_paths.is_empty(), "readonlyPaths"),
            (!l.devices.is_empty(), "devices"),
            (l.readonly_root, "A read-only root"),
        ];
        if let Some((_, what)) = needs.iter().find(|(set, _)| *set) {
            return Err(Error::NeedsMountNamespace(what));
        }
    }
    Ok(())
}

/// The most lines a `uid_map` takes (the kernel's limit).
const MAX_ID_MAP_LINES: usize = 340;

/// A user namespace's maps, checked as runc checks them: given exactly when the container
/// makes the namespace, each range inside u32, and the namespace's root (uid and gid 0)
/// mapped, since the helper becomes that root. The kernel checks the rest (overlaps) when the
/// maps are written.
fn validate_user_namespace(spec: &ContainerSpec) -> Result<(), String> {
    let (uids, gids) = (&spec.linux.uid_mappings, &spec.linux.gid_mappings);
    if !spec.namespaces.contains(&Namespace::User) {
        if uids.is_empty() && gids.is_empty() {
            return Ok(());
        }
        return Err("uid/gid mappings given, but the container makes no user namespace".into());
    }
    for (which, maps) in [("uid", uids), ("gid", gids)] {
        if maps.is_empty() {
            return Err(format!("a user namespace needs {which} mappings"));
        }
        if maps.len() > MAX_ID_MAP_LINES {
            return Err(format!(
                "{} {which} mappings (at most {MAX_ID_MAP_LINES})",
                maps.len()
            ));
        }
        for m in maps.iter() {
            let fits = m.size > 0
                && m.container_id.checked_add(m.size).is_some()
                && m.host_id.checked_add(m.size).is_some();
            if !fits {
                return Err(format!(
                    "{which} mapping {} {} {} is empty or leaves the 32-bit ids",
                    m.container_id, m.host_id, m.size
                ));
            }
        }
        if !maps.iter().any(|m| m.container_id == 0) {
            return Err(format!(
                "no mapping for {which} 0: the container's setup runs as root of its user namespace"
            ));
        }
    }
    Ok(())
}

fn read_cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn meminfo() -> (u64, u64) {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validated() {
        for good in ["a", "c1", "my_container-2.x", &"a".repeat(64)] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"a".repeat(65), "ü"] {
            assert!(
                matches!(validate_id(bad), Err(Error::InvalidId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_kinds() {
        assert_eq!(Error::NotFound("x".into()).kind(), ErrorKind::NotFound);
        assert_eq!(Error::Exists("x".into()).kind(), ErrorKind::AlreadyExists);
        assert_eq!(
            Error::State {
                id: "x".into(),
                state: ContainerState::Created,
                expected: "Running"
            }
            .kind(),
            ErrorKind::InvalidState
        );
        assert_eq!(Error::NoCgroup("x".into()).kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn cmdline_of_self_is_readable() {
        let me = std::process::id() as i32;
        assert!(!read_cmdline(me).is_empty());
        assert_eq!(read_cmdline(-1), "");
    }
}
