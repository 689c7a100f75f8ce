//! The runc-shaped operations behind `ember create|start|state|kill|delete|exec|ps|pause|
//! resume|list|run`. Errors carry runc's wording where the engines match on it.

use super::bundle::{Bundle, BundleError, ContainerConfig, OciHooks, PodRole, ProcessConfig};
use super::control::{self, Client, ControlError, Request, Response};
use super::sandbox::{Backend, Stdio};
use super::shim;
use super::state::{process_start_time, OciState, Record, StateError, Status, Store};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OpsError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Control(#[from] ControlError),
    /// runc's words, which engines read for their exit code (podman: 127, 126).
    #[error("unable to start container process: {0}")]
    Command(String),
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container in the {0} state")]
    StartOther(Status),
    #[error("container not running")]
    NotRunning,
    #[error("Bad resources: {0}")]
    BadResources(String),
    #[error("cannot exec in a {0} container")]
    ExecNotRunning(Status),
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped { id: String, status: Status },
    #[error("container {id} is not running")]
    PauseNotRunning { id: String },
    #[error("container {id} is not paused")]
    ResumeNotPaused { id: String },
    #[error("cannot allocate tty if ember will detach without setting console socket")]
    NeedConsoleSocket,
    #[error("Cannot start the container's shim process")]
    Fork(#[source] nix::Error),
    #[error("{0}")]
    CreateFailed(String),
    #[error("Cannot write pid file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Bad --user {0}: want UID[:GID]")]
    BadUser(String),
    #[error("Cannot use this process's stdio")]
    Stdio(#[source] io::Error),
    #[error("error running {kind} hook")]
    Hook {
        kind: &'static str,
        #[source]
        source: crate::hooks::Error,
    },
}

/// The state JSON a hook gets on stdin: the container's OCI state with `status`.
fn hook_state(rec: &Record, status: Status) -> String {
    let mut state = rec.oci_state();
    state.status = status;
    serde_json::to_string(&state).unwrap_or_default()
}

/// Runs `prestart` then `createRuntime` hooks (runc's order, at the same point: the
/// container exists, its process has not started), stopping at the first failure.
fn run_create_hooks(hooks: &OciHooks, rec: &Record) -> Result<(), OpsError> {
    let state = hook_state(rec, Status::Creating);
    for (kind, list) in [
        ("prestart", &hooks.prestart),
        ("createRuntime", &hooks.create_runtime),
    ] {
        crate::hooks::run_all(list, &state).map_err(|source| OpsError::Hook { kind, source })?;
    }
    for (kind, list) in [
        ("createContainer", &hooks.create_container),
        ("startContainer", &hooks.start_container),
    ] {
        if !list.is_empty() {
            log::warn!(
                "container {}: {} {kind} hook(s) not run: they run in the container's namespaces, inside its VM, where host programs cannot",
                rec.id,
                list.len()
            );
        }
    }
    Ok(())
}

/// Runs hooks whose failures do not fail the operation (`poststart`, `poststop`): each
/// failure is a warning.
fn run_hooks_warning(kind: &str, hooks: &[crate::config::Hook], rec: &Record, status: Status) {
    for e in crate::hooks::run_all_best_effort(hooks, &hook_state(rec, status)) {
        log::warn!(
            "container {}: {kind} hook: {}",
            rec.id,
            crate::error::report(&e)
        );
    }
}

/// The state root every operation uses.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub store: Store,
}

/// What `create` (and `run`) were given.
#[derive(Clone, Debug, Default)]
pub struct CreateOpts {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// The pod of the running ember container whose namespaces `config` joins by
/// `/proc/PID/ns/TYPE` (PID: that container's shim, the pid its `state` reports): a podman
/// pod's infra container, `podman run --ipc|--pid|--network container:NAME`. Those namespaces
/// exist only in that container's VM, so the container is made there, a member of its pod
/// (the pod's own id when the owner is a member itself), joining them in the guest.
fn namespace_owner(store: &Store, config: &ContainerConfig) -> Option<String> {
    config
        .namespaces
        .iter()
        .filter_map(|n| n.path.as_deref().and_then(proc_ns_pid))
        .find_map(|pid| store.running_with_pid(pid))
        .map(|rec| rec.sandbox_id.unwrap_or(rec.id))
}

/// The pid of a `/proc/PID/ns/TYPE` path.
fn proc_ns_pid(path: &Path) -> Option<i32> {
    let mut parts = path.strip_prefix("/proc").ok()?.components();
    let pid = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    let ns = parts.next()?.as_os_str();
    (ns == "ns" && parts.next().is_some() && parts.next().is_none()).then_some(pid)
}

/// Validate the bundle, record the container and fork its shim, which creates the container
/// through `backend`. Returns the shim's pid once the container exists; on failure nothing is
/// left behind.
pub fn create(
    ctx: &Ctx,
    id: &str,
    opts: &CreateOpts,
    backend: &dyn Backend,
) -> Result<i32, OpsError> {
    super::state::validate_id(id)?;
    let bundle = Bundle::load(&opts.bundle)?;
    let mut config = bundle.container_config(id)?;
    if config.role == PodRole::Single && backend.groups_by_namespace() {
        if let Some(sandbox_id) = namespace_owner(&ctx.store, &config) {
            log::info!(
                "container {id}: joins namespaces of a container of pod {sandbox_id}: created in its VM"
            );
            config.role = PodRole::Member { sandbox_id };
        }
    }
    if config.process.terminal && opts.console_socket.is_none() {
        return Err(OpsError::NeedConsoleSocket);
    }
    let lock = ctx.store.create(id)?;
    // After the id is taken (runc refuses an existing id first), before anything is made.
    if let Err(msg) = backend.check_command(&config) {
        let _ = ctx.store.remove(id);
        return Err(OpsError::Command(msg));
    }
    let mut rec = Record::new(id, &bundle.dir, &config.rootfs);
    rec.annotations = config.annotations.clone();
    rec.host_cgroup = super::vm::host_cgroup(&config);
    if let Some(note) = super::vm::host_cgroup_note(&config) {
        log::info!("container {id}: {note}");
    }
    rec.sandbox_id = match &config.role {
        PodRole::Member { sandbox_id } => Some(sandbox_id.clone()),
        _ => Some(id.to_string()),
    };
    let cleanup = |e: OpsError| {
        let _ = ctx.store.remove(id);
        e
    };
    ctx.store.save(&rec).map_err(|e| cleanup(e.into()))?;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| cleanup(OpsError::Fork(e)))?;
    // SAFETY: the ember CLI is single-threaded here, so the child may run any code.
    match unsafe { fork() }.map_err(|e| cleanup(OpsError::Fork(e)))? {
        ForkResult::Child => {
            drop(rd);
            drop(lock);
            let code = run_shim(
                ctx,
                id,
                &config,
                opts.console_socket.as_deref(),
                backend,
                wr,
            );
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(wr);
            // The shim is known from now on: `delete --force` of a container still being
            // created kills it.
            rec.pid = Some(child.as_raw());
            rec.pid_start = process_start_time(child.as_raw());
            let _ = ctx.store.save(&rec);
            drop(lock);
            let mut msg = String::new();
            let _ = fs::File::from(rd).read_to_string(&mut msg);
            if msg != "ok" {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                // Whatever the shim had made before it failed (a pod, its VM) goes too.
                backend.cleanup(id);
                let msg = if msg.is_empty() {
                    "The container's shim died while creating it".to_string()
                } else {
                    msg
                };
                return Err(cleanup(OpsError::CreateFailed(msg)));
            }
            let pid = child.as_raw();
            if let Err(e) = run_create_hooks(&bundle.hooks(), &rec) {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                backend.cleanup(id);
                return Err(cleanup(e));
            }
            let _lock = ctx.store.lock(id).map_err(|e| {
                let _ = kill(child, Signal::SIGKILL);
                cleanup(e.into())
            })?;
            // Deleted meanwhile (`delete --force` while creating): the shim is gone too.
            let mut rec = ctx.store.load(id).map_err(|e| {
                let _ = kill(child, Signal::SIGKILL);
                backend.cleanup(id);
                OpsError::from(e)
            })?;
            rec.status = Status::Created;
            ctx.store.save(&rec).map_err(|e| {
                let _ = kill(child, Signal::SIGKILL);
                cleanup(e.into())
            })?;
            if let Some(path) = &opts.pid_file {
                write_pid_file(path, pid).map_err(|e| {
                    let _ = kill(child, Signal::SIGKILL);
                    cleanup(e)
                })?;
            }
            Ok(pid)
        }
    }
}

/// The forked shim: create the container, report to the parent through `ready`, serve.
fn run_shim(
    ctx: &Ctx,
    id: &str,
    config: &super::bundle::ContainerConfig,
    console_socket: Option<&Path>,
    backend: &dyn Backend,
    ready: OwnedFd,
) -> i32 {
    close_inherited(&[ready.as_raw_fd()]);
    let mut ready = fs::File::from(ready);
    let _ = nix::unistd::setsid();
    shim::confine();
    // The process the engine knows as the container's goes where runc would put it: the
    // spec's cgroupsPath (the pod process it starts follows, and sets the limits there).
    if let Some(cg) = super::vm::host_cgroup(config) {
        let root = Path::new(crate::pod_vmm::cgroup::CGROUP_ROOT);
        let dir = crate::pod_vmm::cgroup::path_for(root, Some(&cg), id);
        if let Err(e) = crate::pod_vmm::cgroup::enter(root, &dir) {
            log::warn!(
                "container {id}: the shim stays in its parent's cgroup: {}",
                crate::error::report(&e)
            );
        }
    }
    let fail = |ready: &mut fs::File, msg: String| {
        let _ = ready.write_all(msg.as_bytes());
        1
    };
    // This shim's pid is the one `state` reports, and an engine may configure that pid's
    // network namespace after create (`ctr run --cni`): it must be one of its own, not the
    // host's, and the VM boots at start, wired to what the engine configured
    // ([`super::boot_at_start`], as ember's shim v2 does for its tasks).
    let own_netns = config.wants_own_netns();
    if own_netns {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return fail(&mut ready, format!("Cannot make a network namespace: {e}"));
        }
    }
    let stdio = match (config.process.terminal, console_socket) {
        (true, Some(sock)) => tty_stdio(sock),
        _ => Stdio::inherit()
            .map(|s| (s, None))
            .map_err(|e| format!("Cannot use stdio: {e}")),
    };
    let (stdio, window) = match stdio {
        Ok(s) => s,
        Err(msg) => return fail(&mut ready, msg),
    };
    let later = if own_netns { backend.detached() } else { None };
    let sandbox: Arc<dyn super::sandbox::Sandbox> = match later {
        Some(backend) => match super::boot_at_start::BootAtStart::create(
            backend,
            config.clone(),
            ctx.store.dir(id),
            stdio,
            PathBuf::from(format!("/proc/{}/ns/net", std::process::id())),
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => return fail(&mut ready, crate::error::report(&e)),
        },
        None => match backend.create(config, &ctx.store.dir(id), stdio) {
            Ok(s) => Arc::from(s),
            Err(e) => return fail(&mut ready, crate::error::report(&e)),
        },
    };
    if let Some(window) = window {
        let sandbox = sandbox.clone();
        window.watch(move |rows, cols| {
            if let Err(e) = sandbox.resize(None, rows, cols) {
                log::debug!("terminal not resized: {}", crate::error::report(&e));
            }
        });
    }
    // The control socket exists once the container does: until then nothing answers, and
    // `delete --force` kills the shim instead of waiting for it.
    let listener = match shim::listen(&ctx.store, id) {
        Ok(l) => l,
        Err(e) => {
            sandbox.shutdown();
            return fail(&mut ready, crate::error::report(&e));
        }
    };
    detach_stdio();
    if ready.write_all(b"ok").is_err() {
        return 1;
    }
    drop(ready);
    serve_beside_view(&ctx.store, id, config, listener, sandbox)
}

/// Serves the container on a thread of its own while this thread — the shim's main thread,
/// whose namespaces engines take for the container's — waits for its start, then enters the
/// container's view ([`super::view`]) before `start` answers. The shim's exit code.
fn serve_beside_view(
    store: &super::state::Store,
    id: &str,
    config: &super::bundle::ContainerConfig,
    listener: std::os::unix::net::UnixListener,
    sandbox: Arc<dyn super::sandbox::Sandbox>,
) -> i32 {
    enum Event {
        Started(std::sync::mpsc::SyncSender<()>),
        Ended,
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let started = tx.clone();
    let on_started: shim::OnStarted = Arc::new(move || {
        let (ack, acked) = std::sync::mpsc::sync_channel(1);
        if started.send(Event::Started(ack)).is_ok() {
            let _ = acked.recv_timeout(crate::timeouts::SHIM_VIEW);
        }
    });
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("shim".into())
            .spawn_scoped(s, move || {
                let code = shim::serve(store, id, listener, sandbox, on_started);
                let _ = tx.send(Event::Ended);
                code
            });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                log::error!("container {id}: cannot start the shim's thread: {e}");
                return shim::LOST_EXIT_CODE;
            }
        };
        let mut in_view = false;
        while let Ok(Event::Started(ack)) = rx.recv() {
            if !in_view {
                in_view = true;
                match super::view::enter(config) {
                    Ok(()) => log::debug!("container {id}: the shim's main thread is in its view"),
                    Err(e) => log::warn!(
                        "container {id}: no view of its files for the engine (podman cp, top \
                         would reach the host's): {}",
                        crate::error::report(&e)
                    ),
                }
            }
            let _ = ack.send(());
        }
        worker.join().unwrap_or(shim::LOST_EXIT_CODE)
    })
}

/// The container's stdio on a new pty whose master went to the engine's console socket, and
/// its window size, followed from here on (this shim, a session leader, has no threads yet).
fn tty_stdio(console_socket: &Path) -> Result<(Stdio, Option<super::tty::WindowSize>), String> {
    let slave =
        super::tty::pty_to_console_socket(console_socket).map_err(|e| crate::error::report(&e))?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| format!("Cannot duplicate the pty: {e}"))
    };
    // Without it the container runs on at the size it started with.
    let window = super::tty::WindowSize::follow(dup(&slave)?)
        .map_err(|e| log::warn!("The terminal keeps its size: {}", crate::error::report(&e)))
        .ok();
    let stdio = Stdio {
        stdin: dup(&slave)?,
        stdout: dup(&slave)?,
        stderr: slave,
    };
    Ok((stdio, window))
}

/// Close every descriptor above stderr except `keep`: what the engine passed `ember create`
/// (conmon's sync pipes, containerd's fifos) must not be held open by the shim for the
/// container's whole life, nor leak into the pod's VMM process.
/// The logger's own files stay open ([`crate::logging::file_descriptors`]).
fn close_inherited(keep: &[i32]) {
    let log = crate::logging::file_descriptors();
    let fds: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) && !log.contains(&fd) {
            // SAFETY: closing a descriptor number this single-threaded process inherited and
            // no Rust object of ours owns (ours are in `keep`); a stale number (the read_dir
            // handle itself, already closed) only yields EBADF.
            unsafe { libc::close(fd) };
        }
    }
}

/// Point this process's own stdio at /dev/null: the container has its copies.
fn detach_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays open meanwhile.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Write the pid file the way runc does: a temporary file beside it, renamed over it.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), OpsError> {
    let err = |source| OpsError::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, pid.to_string()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// Let a created container's process run.
pub fn start(ctx: &Ctx, id: &str) -> Result<(), OpsError> {
    let _lock = ctx.store.lock(id)?;
    let mut rec = ctx.store.load(id)?;
    match rec.effective_status() {
        Status::Created => {}
        Status::Stopped => return Err(OpsError::StartStopped),
        Status::Running => return Err(OpsError::StartRunning),
        s => return Err(OpsError::StartOther(s)),
    }
    Client::call(&ctx.store.dir(id), &Request::Start)?;
    rec.status = Status::Running;
    ctx.store.save(&rec)?;
    // After the process started, before start returns (runtime-spec); failures are warnings.
    if let Ok(bundle) = Bundle::load(&rec.bundle) {
        run_hooks_warning(
            "poststart",
            &bundle.hooks().poststart,
            &rec,
            Status::Running,
        );
    }
    Ok(())
}

/// The OCI state of a container.
pub fn state(ctx: &Ctx, id: &str) -> Result<OciState, OpsError> {
    Ok(ctx.store.load(id)?.oci_state())
}

/// States of all containers.
pub fn list(ctx: &Ctx) -> Result<Vec<OciState>, OpsError> {
    let mut out = Vec::new();
    for id in ctx.store.ids()? {
        // A container deleted meanwhile is simply not listed.
        if let Ok(rec) = ctx.store.load(&id) {
            out.push(rec.oci_state());
        }
    }
    Ok(out)
}

/// Send a signal to the container's process (or all its processes).
pub fn kill_container(ctx: &Ctx, id: &str, signal: i32, all: bool) -> Result<(), OpsError> {
    let rec = ctx.store.load(id)?;
    match rec.effective_status() {
        Status::Created | Status::Running | Status::Paused => {}
        _ => return Err(OpsError::NotRunning),
    }
    match Client::call(&ctx.store.dir(id), &Request::Kill { signal, all }) {
        Ok(_) => Ok(()),
        // The shim cannot be reached but still runs: SIGKILL still must work.
        Err(ControlError::Connect { .. }) if signal == libc::SIGKILL => {
            kill_shim(&rec);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Delete a container's state; with `force`, stop it first when it runs.
pub fn delete(ctx: &Ctx, id: &str, force: bool, backend: &dyn Backend) -> Result<(), OpsError> {
    let rec = match ctx.store.load(id) {
        Ok(r) => r,
        Err(StateError::NotFound) => {
            // An aborted create may leave a directory without state; remove it.
            if super::state::validate_id(id).is_ok() && ctx.store.dir(id).is_dir() {
                ctx.store.remove(id)?;
                return Ok(());
            }
            return if force {
                Ok(())
            } else {
                Err(StateError::NotFound.into())
            };
        }
        Err(e) => return Err(e.into()),
    };
    // The bundle may be gone by now; then there are no hooks to run.
    let poststop = Bundle::load(&rec.bundle)
        .map(|b| b.hooks().poststop)
        .unwrap_or_default();
    match rec.effective_status() {
        Status::Stopped => {}
        Status::Created => stop_shim(ctx, &rec),
        status @ (Status::Running | Status::Paused) => {
            if !force {
                return Err(OpsError::DeleteNotStopped {
                    id: id.to_string(),
                    status,
                });
            }
            stop_shim(ctx, &rec);
        }
        Status::Creating => {
            if !force {
                return Err(OpsError::DeleteNotStopped {
                    id: id.to_string(),
                    status: Status::Creating,
                });
            }
            // The shim is still making the container and serves no requests yet.
            kill_shim(&rec);
            wait_gone(&rec, Duration::from_secs(5));
        }
    }
    // Whatever the shim could not release (it was killed, or died) goes now.
    backend.cleanup(id);
    if let Some(cg) = &rec.host_cgroup {
        let root = Path::new(crate::pod_vmm::cgroup::CGROUP_ROOT);
        crate::pod_vmm::cgroup::remove(&crate::pod_vmm::cgroup::path_for(root, Some(cg), id));
    }
    let _lock = match ctx.store.lock(id) {
        Ok(l) => l,
        // Removed meanwhile (a failed create cleans up after itself): nothing left to do.
        Err(StateError::NotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    ctx.store.remove(id)?;
    // After the container is deleted, before delete returns; failures are warnings.
    run_hooks_warning("poststop", &poststop, &rec, Status::Stopped);
    Ok(())
}

/// Ask the shim to tear the container and VM down, wait for it to go, kill it if it lingers.
fn stop_shim(ctx: &Ctx, rec: &Record) {
    let _ = Client::call(&ctx.store.dir(&rec.id), &Request::Shutdown);
    if !wait_gone(rec, Duration::from_secs(10)) {
        kill_shim(rec);
        wait_gone(rec, Duration::from_secs(5));
    }
}

fn kill_shim(rec: &Record) {
    if let Some(pid) = rec.pid {
        if rec.process_alive() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Wait until the record's process is gone; false on timeout.
fn wait_gone(rec: &Record, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while rec.process_alive() {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Processes in the container: (pid in the guest, command).
pub fn ps(ctx: &Ctx, id: &str) -> Result<Vec<(i32, String)>, OpsError> {
    let rec = ctx.store.load(id)?;
    match rec.effective_status() {
        Status::Created | Status::Running | Status::Paused => {}
        _ => return Err(OpsError::NotRunning),
    }
    match Client::call(&ctx.store.dir(id), &Request::Ps)? {
        Response::Processes(p) => Ok(p),
        _ => Ok(Vec::new()),
    }
}

pub fn pause(ctx: &Ctx, id: &str) -> Result<(), OpsError> {
    let _lock = ctx.store.lock(id)?;
    let mut rec = ctx.store.load(id)?;
    if rec.effective_status() != Status::Running {
        return Err(OpsError::PauseNotRunning { id: id.to_string() });
    }
    Client::call(&ctx.store.dir(id), &Request::Pause)?;
    rec.status = Status::Paused;
    ctx.store.save(&rec)?;
    Ok(())
}

pub fn resume(ctx: &Ctx, id: &str) -> Result<(), OpsError> {
    let _lock = ctx.store.lock(id)?;
    let mut rec = ctx.store.load(id)?;
    if rec.effective_status() != Status::Paused {
        return Err(OpsError::ResumeNotPaused { id: id.to_string() });
    }
    Client::call(&ctx.store.dir(id), &Request::Resume)?;
    rec.status = Status::Running;
    ctx.store.save(&rec)?;
    Ok(())
}

/// `runc update`'s input: a `linux.resources` object (`--resources FILE|-`) and the flags,
/// each of which overrides the object's field.
#[derive(Clone, Debug, Default)]
pub struct UpdateOpts {
    /// The JSON object.
    pub resources: Option<Vec<u8>>,
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub pids_limit: Option<i64>,
}

/// The cgroup limits `opts` ask for, converted as at create (devices are not updated, as
/// with runc).
pub fn update_limits(opts: &UpdateOpts) -> Result<agent::protocol::CgroupLimits, OpsError> {
    let mut res = match &opts.resources {
        Some(json) => {
            let r: oci_spec::runtime::LinuxResources =
                serde_json::from_slice(json).map_err(|e| OpsError::BadResources(e.to_string()))?;
            super::bundle::resources(&r)
        }
        None => crate::config::Resources::default(),
    };
    res.devices = None;
    res.memory_limit = opts.memory.or(res.memory_limit);
    res.memory_swap = opts.memory_swap.or(res.memory_swap);
    res.cpu_period = opts.cpu_period.or(res.cpu_period);
    res.cpu_quota = opts.cpu_quota.or(res.cpu_quota);
    res.cpu_shares = opts.cpu_shares.or(res.cpu_shares);
    res.pids_limit = opts.pids_limit.or(res.pids_limit);
    Ok(res.cgroup_limits())
}

/// A size as runc's flags take it (docker's `RAMInBytes`): bytes, or a number with a binary
/// unit `k`, `m`, `g`, `t`, `p` (an optional `b` after it, any case); `-1` is unlimited.
pub fn ram_in_bytes(s: &str) -> Result<i64, OpsError> {
    let bad = || OpsError::BadResources(format!("invalid size: {s:?}"));
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        Some('p') => (&t[..t.len() - 1], 50),
        _ => (t, 0),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if !(0.0..=i64::MAX as f64).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// New cgroup limits for a container that has not stopped (`runc update`), through its shim.
pub fn update(ctx: &Ctx, id: &str, limits: agent::protocol::CgroupLimits) -> Result<(), OpsError> {
    let _lock = ctx.store.lock(id)?;
    let rec = ctx.store.load(id)?;
    match rec.effective_status() {
        Status::Created | Status::Running | Status::Paused => {}
        _ => return Err(OpsError::NotRunning),
    }
    Client::call(&ctx.store.dir(id), &Request::Update { limits })?;
    Ok(())
}

/// What `exec` was given besides the process.
#[derive(Clone, Debug, Default)]
pub struct ExecOpts {
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    /// Where the pty master goes for a terminal process.
    pub console_socket: Option<PathBuf>,
}

/// Flags that build an exec process from the container's own process (runc's way).
#[derive(Clone, Debug, Default)]
pub struct ExecProcessArgs {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<String>,
    pub tty: bool,
}

/// The process `exec` runs: `--process FILE`, or the container's process with `args` and the
/// flags laid over it.
pub fn exec_process(
    ctx: &Ctx,
    id: &str,
    file: Option<&Path>,
    a: &ExecProcessArgs,
) -> Result<ProcessConfig, OpsError> {
    if let Some(f) = file {
        return Ok(ProcessConfig::load(f)?);
    }
    let rec = ctx.store.load(id)?;
    let mut base = Bundle::load(&rec.bundle)?.container_config(id)?.process;
    base.args = a.args.clone();
    if base.args.is_empty() {
        return Err(BundleError::NoArgs.into());
    }
    base.env.extend(a.env.iter().cloned());
    if let Some(cwd) = &a.cwd {
        base.cwd = cwd.clone();
    }
    if let Some(u) = &a.user {
        let bad = || OpsError::BadUser(u.clone());
        let mut parts = u.splitn(2, ':');
        base.uid = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if let Some(g) = parts.next() {
            base.gid = g.parse().map_err(|_| bad())?;
        }
    }
    base.terminal = a.tty;
    Ok(base)
}

/// Run a process in a running container with this process's stdio. Returns its exit code;
/// with `detach`, a child process waits for it (its pid goes to `--pid-file`) and this
/// returns 0 once it started.
pub fn exec(ctx: &Ctx, id: &str, process: ProcessConfig, opts: &ExecOpts) -> Result<i32, OpsError> {
    let rec = ctx.store.load(id)?;
    match rec.effective_status() {
        Status::Running => {}
        s => return Err(OpsError::ExecNotRunning(s)),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let exec_id = format!("exec-{}-{nanos}", std::process::id());
    let dir = ctx.store.dir(id);
    // A terminal process gets a pty whose master goes to the console socket; its slave is the
    // process's stdio. Otherwise our own stdin, stdout, stderr are.
    let pty = match (process.terminal, &opts.console_socket) {
        (false, _) => None,
        (true, None) => return Err(OpsError::NeedConsoleSocket),
        (true, Some(sock)) => Some(
            super::tty::pty_to_console_socket(sock)
                .map_err(|e| OpsError::CreateFailed(crate::error::report(&e)))?,
        ),
    };
    let fds: [i32; 3] = match &pty {
        Some(p) => [p.as_raw_fd(); 3],
        None => [0, 1, 2],
    };
    let req = Request::Exec {
        exec_id: exec_id.clone(),
        process,
    };
    if !opts.detach {
        let mut c = Client::connect(&dir)?;
        c.send(&req, &fds)?;
        drop(pty);
        return exec_wait(&mut c);
    }
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(OpsError::Fork)?;
    // SAFETY: the ember CLI is single-threaded here.
    match unsafe { fork() }.map_err(OpsError::Fork)? {
        ForkResult::Child => {
            drop(rd);
            let mut keep = vec![wr.as_raw_fd()];
            keep.extend(pty.as_ref().map(|p| p.as_raw_fd()));
            close_inherited(&keep);
            let mut wr = fs::File::from(wr);
            let _ = nix::unistd::setsid();
            // This child, a session leader without threads, follows the terminal's size (as
            // the container's shim does its own): each size the engine sets goes to the shim.
            let window = pty.as_ref().and_then(|p| p.try_clone().ok()).and_then(|p| {
                super::tty::WindowSize::follow(p)
                    .map_err(|e| log::warn!("The exec's terminal keeps its size: {e}"))
                    .ok()
            });
            let code = (|| -> Result<i32, OpsError> {
                let mut c = Client::connect(&dir)?;
                c.send(&req, &fds)?;
                drop(pty);
                match c.recv()? {
                    Response::Pid(_) => {}
                    Response::Exit(code) => {
                        let _ = wr.write_all(b"ok");
                        return Ok(code);
                    }
                    _ => {}
                }
                if let Some(window) = window {
                    let dir = dir.clone();
                    window.watch(move |rows, cols| {
                        let resize = Request::Resize {
                            exec_id: Some(exec_id.clone()),
                            rows,
                            cols,
                        };
                        let r = Client::connect(&dir).and_then(|mut c| {
                            c.send(&resize, &[])?;
                            c.recv()
                        });
                        if let Ok(Response::Error(e)) | Err(e) = r.map_err(|e| e.to_string()) {
                            log::debug!("exec's terminal not resized: {e}");
                        }
                    });
                }
                let _ = wr.write_all(b"ok");
                drop(wr);
                detach_stdio();
                exec_wait(&mut c)
            })();
            std::process::exit(code.unwrap_or(255));
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ = fs::File::from(rd).read_to_string(&mut msg);
            if msg != "ok" {
                let _ = waitpid(child, None);
                return Err(OpsError::CreateFailed("exec failed to start".to_string()));
            }
            if let Some(path) = &opts.pid_file {
                write_pid_file(path, child.as_raw())?;
            }
            Ok(0)
        }
    }
}

fn exec_wait(c: &mut Client) -> Result<i32, OpsError> {
    loop {
        match c.recv()? {
            Response::Exit(code) => return Ok(code),
            _ => continue,
        }
    }
}

/// `run`: create, start and (unless detached) wait for the container, then delete it.
/// Returns the container's exit code.
pub fn run(
    ctx: &Ctx,
    id: &str,
    opts: &CreateOpts,
    detach: bool,
    backend: &dyn Backend,
) -> Result<i32, OpsError> {
    let pid = create(ctx, id, opts, backend)?;
    if let Err(e) = start(ctx, id) {
        let _ = delete(ctx, id, true, backend);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => shim::LOST_EXIT_CODE,
    };
    let _ = delete(ctx, id, true, backend);
    Ok(code)
}

/// Directory of a container's control socket (for tests and tools).
pub fn control_socket(ctx: &Ctx, id: &str) -> PathBuf {
    ctx.store.dir(id).join(control::SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Hook;

    #[test]
    fn sizes_are_read_as_runc_reads_them() {
        for (s, want) in [
            ("1024", 1024),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("1g", 1 << 30),
            ("2kb", 2048),
            ("1.5k", 1536),
            ("-1", -1),
        ] {
            assert_eq!(ram_in_bytes(s).unwrap(), want, "{s}");
        }
        for bad in ["", "m", "12x", "-5", "1e40g"] {
            assert!(ram_in_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_proc_pid_ns_path_names_a_pid() {
        assert_eq!(proc_ns_pid(Path::new("/proc/42/ns/ipc")), Some(42));
        for other in [
            "/run/netns/netns-1",
            "/proc/42/ns",
            "/proc/self/ns/ipc",
            "/proc/42/task/43/ns/ipc",
            "/proc/42/ns/ipc/x",
            "proc/42/ns/ipc",
        ] {
            assert_eq!(proc_ns_pid(Path::new(other)), None, "{other}");
        }
    }

    fn sh(script: String) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script],
            env: vec![],
            timeout: Some(10),
        }
    }

    #[test]
    fn create_hooks_run_prestart_then_create_runtime_with_the_state() {
        let dir = crate::state::test_dir("oci-hooks");
        let log = dir.join("log");
        let l = log.display();
        let hooks = OciHooks {
            prestart: vec![sh(format!("echo prestart >> {l}; cat >> {l}; echo >> {l}"))],
            create_runtime: vec![sh(format!("echo createRuntime >> {l}"))],
            poststop: vec![sh(format!("echo never >> {l}"))],
            ..Default::default()
        };
        let mut rec = Record::new("c1", Path::new("/b"), Path::new("/b/rootfs"));
        rec.pid = Some(std::process::id() as i32);
        rec.pid_start = process_start_time(std::process::id() as i32);
        run_create_hooks(&hooks, &rec).unwrap();
        let text = fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            (lines[0], lines[2]),
            ("prestart", "createRuntime"),
            "{text}"
        );
        let state: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(state["id"], "c1");
        assert_eq!(state["status"], "creating");
        assert_eq!(state["bundle"], "/b");
        assert_eq!(state["pid"], std::process::id());

        // The first failure stops the chain and names the kind.
        fs::remove_file(&log).unwrap();
        let failing = OciHooks {
            prestart: vec![sh("echo broken >&2; exit 3".into())],
            create_runtime: vec![sh(format!("echo createRuntime >> {l}"))],
            ..Default::default()
        };
        let err = run_create_hooks(&failing, &rec).unwrap_err();
        let msg = crate::error::report(&err);
        assert!(
            msg.contains("prestart hook") && msg.contains("broken"),
            "{msg}"
        );
        assert!(!log.exists());

        // poststart / poststop failures are warnings: the later hooks still run.
        let post = [sh("exit 1".into()), sh(format!("echo post >> {l}"))];
        run_hooks_warning("poststop", &post, &rec, Status::Stopped);
        assert_eq!(fs::read_to_string(&log).unwrap(), "post\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
