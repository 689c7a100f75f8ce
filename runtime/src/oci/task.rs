//! containerd's shim v2: ember as `containerd-shim-ember-v2` (runtime `io.containerd.ember.v2`),
//! serving containerd's Task API over ttrpc with containerd's own crates (`containerd-shim`,
//! its protos and `ttrpc`).
//!
//! containerd runs the binary with `start` in a bundle; [`EmberShim::start_shim`] starts the
//! long-lived shim server (the same binary, grouped by CRI sandbox id, so one shim serves a
//! whole CRI pod) and prints its address. The server's [`TaskService`] runs each task through
//! the same [`VmBackend`] and [`Sandbox`] as the runc face: a container without CRI grouping
//! gets a pod of its own, a CRI member joins its sandbox's pod; the pod library does the rest,
//! with the VM on this process's threads ([`crate::api::Runtime::hosting_vms`]): the shim is
//! the pod's process.
//! Events (`/tasks/create`, `start`, `exit`, `delete`, `exec-added`, `exec-started`,
//! `paused`, `resumed`) go back to containerd through its publisher.
//!
//! When a task's process exits its VM goes at once (the pod's disks are throw-away images);
//! its exit code is kept for `wait`, `state` and `delete`.
//!
//! A task whose spec asks for a network namespace of its own (none by path: a plain `ctr
//! run`) gets one from a holder process ([`NetnsHolder`]), whose pid is the task's pid until
//! it starts: `ctr run --cni` configures `/proc/<task pid>/ns/net` between create and start
//! (for runc that is the container's own namespace; the shim's would be the host's). Such a
//! task's VM boots at start, wired to that namespace when the engine gave it an interface.

use super::boot_at_start::BootAtStart;
use super::bundle::{Bundle, ProcessConfig};
use super::sandbox::{Backend, Sandbox, Stdio};
use super::vm::VmBackend;
use containerd_shim as shim;
use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

/// The runtime name containerd knows ember's shim by.
pub const RUNTIME_ID: &str = "io.containerd.ember.v2";
/// The binary name containerd looks for on its PATH for [`RUNTIME_ID`] (a link to `ember`).
pub const BINARY_NAME: &str = "containerd-shim-ember-v2";
/// Set for the shim server process, which runs as `ember` (its resolved executable).
pub const SERVER_ENV: &str = "EMBER_SHIM_V2";
/// Set for a [`NetnsHolder`] process (the same executable).
pub const NETNS_HOLDER_ENV: &str = "EMBER_NETNS_HOLDER";
/// The type containerd decodes [`shim::Task::stats`]'s answer as.
const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
/// Exit code of a process whose end could not be learnt (its VM died under it), or that
/// never ran (its start failed).
const LOST: u32 = 255;

/// The shim binary's side of containerd's protocol.
pub struct EmberShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

/// Where the shim's pods and images live (the runc face's state root by default).
fn state_root() -> PathBuf {
    crate::api::Runtime::from_flag(None).root().to_path_buf()
}

impl shim::Shim for EmberShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &shim::Flags, _config: &mut shim::Config) -> Self {
        EmberShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> shim::Result<String> {
        // One shim per CRI pod: its members name their sandbox; everything else its own id.
        let role = std::env::current_dir()
            .ok()
            .and_then(|dir| Bundle::load(&dir).ok())
            .map(|b| super::bundle::pod_role(&opts.id, &b.annotations()));
        let grouping = match role {
            Some(super::bundle::PodRole::Member { sandbox_id }) => sandbox_id,
            _ => opts.id.clone(),
        };
        // The server is this executable again (`current_exe`, the link resolved), told by
        // the environment that it is the shim.
        let (_pid, address) = shim::spawn(opts, &grouping, vec![(SERVER_ENV, "1")])?;
        Ok(address)
    }

    /// containerd's cleanup of a shim that is gone: whatever it left of task `id` goes.
    fn delete_shim(&mut self) -> shim::Result<api::DeleteResponse> {
        let backend = VmBackend {
            root: state_root(),
            machine: crate::config::Machine::Vm,
            log: crate::config::LogConfig::default(),
            hosts_vms: false,
        };
        backend.cleanup(&self.id);
        // The task's state directory (its timings), which the dead shim would have removed at
        // its delete; only for an id that names one (not a path elsewhere, not `@pods`).
        if crate::api::id::validate("container", &self.id).is_ok() {
            let _ = std::fs::remove_dir_all(backend.root.join(&self.id));
        }
        if let Ok(bundle) = std::env::current_dir() {
            unmount_rootfs(&bundle);
        }
        let mut resp = api::DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = Some(now()).into();
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let _ = crate::logging::init(&crate::logging::Config {
            // containerd's log FIFO in the bundle (the shim server runs there).
            file: Path::new("log").exists().then(|| PathBuf::from("log")),
            format: crate::logging::Format::Json,
            ..Default::default()
        });
        log::info!(
            "shim for {} in namespace {} serving",
            self.id,
            self.namespace
        );
        // Every thread of the server, containerd's ttrpc ones included (the VM's add their
        // allow-lists when they start).
        super::shim::confine();
        TaskService(Arc::new(Shared {
            tasks: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            publisher,
            namespace: self.namespace.clone(),
            exit: self.exit.clone(),
            backend: VmBackend {
                root: state_root(),
                machine: crate::config::Machine::from_env(),
                log: crate::config::LogConfig::default(),
                // The shim is its pod's process: the VM runs here.
                hosts_vms: true,
            },
        }))
    }
}

/// A process of a task (its init, or an exec) as containerd sees it.
#[derive(Clone, Debug, Default)]
struct Process {
    pid: u32,
    status: api::Status,
    exit: Option<(u32, Timestamp)>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
}

/// A process of the shim's in a network namespace of its own, for a task whose spec asks for
/// one: the namespace lives as long as the holder, which ends with the task (or with the shim:
/// it exits once its parent is gone).
struct NetnsHolder(std::process::Child);

impl NetnsHolder {
    fn spawn() -> std::io::Result<NetnsHolder> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.env(NETNS_HOLDER_ENV, "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: unshare(2) is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().map(NetnsHolder)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this process is a [`NetnsHolder`].
pub fn invoked_as_netns_holder() -> bool {
    std::env::var_os(NETNS_HOLDER_ENV).is_some_and(|v| v == "1")
}

/// Run as a [`NetnsHolder`]: hold the namespace until killed or orphaned; never returns.
pub fn hold_netns() -> ! {
    let parent = nix::unistd::getppid();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        if nix::unistd::getppid() != parent {
            std::process::exit(0);
        }
    }
}

struct Task {
    bundle: String,
    /// The container in its VM; a [`BootAtStart`] for a task with a network namespace of its
    /// own ([`super::bundle::ContainerConfig::wants_own_netns`], held by `netns`).
    sandbox: Arc<dyn Sandbox>,
    netns: Option<NetnsHolder>,
    init: Process,
    execs: HashMap<String, (ProcessConfig, Process)>,
    /// The shim's own writers of the processes' stdin FIFOs ([`open_stdio`]), by exec id
    /// (the init's under ""): dropped at `CloseIO` or when the process ends.
    stdin_holds: HashMap<String, File>,
    /// A `Start` of the init is under way (one at a time).
    starting: bool,
}

struct Shared {
    tasks: Mutex<HashMap<String, Task>>,
    /// Signalled whenever a process's state changes (`wait` sleeps on it).
    changed: Condvar,
    publisher: RemotePublisher,
    namespace: String,
    exit: Arc<ExitSignal>,
    backend: VmBackend,
}

/// containerd's Task service over ember's pods.
#[derive(Clone)]
pub struct TaskService(Arc<Shared>);

fn rpc(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn not_found(id: &str) -> ttrpc::Error {
    rpc(Code::NOT_FOUND, format!("task {id} not found"))
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

/// The engine's stdio for a process: its FIFOs, `/dev/null` where it gave none (a terminal
/// process has no stderr: the pty's output is its stdout). The output FIFOs are opened
/// read-write, so an open never blocks on the other side. The stdin FIFO is opened for reading
/// with a writer of the shim's own beside it (the returned hold), so the process does not see
/// its stdin end before the engine has even opened its side: it sees the end once the engine
/// closed its side and the hold is dropped (`CloseIO`, or the process's end).
fn open_stdio(stdin: &str, stdout: &str, stderr: &str) -> std::io::Result<(Stdio, Option<File>)> {
    let output = |path: &str| -> std::io::Result<File> {
        if path.is_empty() {
            return OpenOptions::new().write(true).open("/dev/null");
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
    };
    let (input, hold) = if stdin.is_empty() {
        (OpenOptions::new().read(true).open("/dev/null")?, None)
    } else {
        // Non-blocking, or the open waits for a writer; reads block again once one exists.
        let input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(stdin)?;
        let hold = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(stdin)?;
        nix::fcntl::fcntl(
            &input,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )?;
        (input, Some(hold))
    };
    let stdio = Stdio {
        stdin: input.into(),
        stdout: output(stdout)?.into(),
        stderr: output(stderr)?.into(),
    };
    Ok((stdio, hold))
}

/// Mount one of containerd's rootfs mounts (a snapshotter's `bind` or `overlay`) at `target`,
/// in this process: the crate's helper forks and waits through a reaper, which ember does not
/// run (it waits for its own children).
fn mount_rootfs(
    fstype: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> Result<(), nix::Error> {
    use nix::mount::{mount, MsFlags};
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            other => data.push(other),
        }
    }
    let data = data.join(",");
    let fstype = (!fstype.is_empty() && fstype != "bind").then_some(fstype);
    mount(
        Some(source),
        target,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )?;
    // A bind mount takes `ro` only on a remount.
    if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Unmount what containerd mounted (or asked us to mount) at `<bundle>/rootfs`.
fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    while nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

impl TaskService {
    /// The task table, locked.
    fn tasks(&self) -> TtrpcResult<std::sync::MutexGuard<'_, HashMap<String, Task>>> {
        self.0.tasks.lock().map_err(|_| rpc(Code::INTERNAL, "lock"))
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let r = self
            .0
            .publisher
            .publish(Context::default(), topic, &self.0.namespace, event);
        if let Err(e) = r {
            log::warn!("Cannot publish {topic}: {e}");
        }
    }

    /// Record that a process of task `id` ended with `code` and tell containerd.
    fn exited(&self, id: &str, exec_id: Option<&str>, code: u32) {
        let at = now();
        let pid = {
            let Ok(mut tasks) = self.0.tasks.lock() else {
                return;
            };
            let Some(task) = tasks.get_mut(id) else {
                return;
            };
            let p = match exec_id {
                None => &mut task.init,
                Some(e) => match task.execs.get_mut(e) {
                    Some((_, p)) => p,
                    None => return,
                },
            };
            p.status = api::Status::STOPPED;
            p.exit = Some((code, at.clone()));
            let pid = p.pid;
            task.stdin_holds.remove(exec_id.unwrap_or(""));
            pid
        };
        self.0.changed.notify_all();
        let mut ev = TaskExit::new();
        ev.container_id = id.to_string();
        ev.id = exec_id.unwrap_or(id).to_string();
        ev.pid = pid;
        ev.exit_status = code;
        ev.exited_at = Some(at).into();
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev));
    }

    fn sandbox(&self, id: &str) -> TtrpcResult<Arc<dyn Sandbox>> {
        let tasks = self.tasks()?;
        let task = tasks.get(id).ok_or_else(|| not_found(id))?;
        Ok(task.sandbox.clone())
    }

    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<(String, Process)> {
        let tasks = self.tasks()?;
        let task = tasks.get(id).ok_or_else(|| not_found(id))?;
        if exec_id.is_empty() {
            return Ok((task.bundle.clone(), task.init.clone()));
        }
        task.execs
            .get(exec_id)
            .map(|(_, p)| (task.bundle.clone(), p.clone()))
            .ok_or_else(|| rpc(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }

    fn start_init(&self, id: &str) -> TtrpcResult<u32> {
        let sandbox = {
            let mut tasks = self.tasks()?;
            let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
            if task.init.status != api::Status::CREATED || task.starting {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("task {id} was started already"),
                ));
            }
            task.starting = true;
            task.sandbox.clone()
        };
        let started = sandbox.start();
        if let Ok(mut tasks) = self.0.tasks.lock() {
            if let Some(t) = tasks.get_mut(id) {
                t.starting = false;
            }
        }
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                // The container's process never ran; as under runc, whose init dies when
                // its start fails, the task is stopped now (exit 255, published), so that
                // containerd can delete it and nothing stays behind (`ctr run --rm`
                // deletes only a stopped task).
                let why = crate::error::report(&e);
                log::error!("task {id} did not start: {why}");
                sandbox.shutdown();
                self.exited(id, None, LOST);
                return Err(rpc(Code::FAILED_PRECONDITION, why));
            }
        };
        let pid = u32::try_from(pid).unwrap_or(0);
        if let Ok(mut tasks) = self.0.tasks.lock() {
            if let Some(t) = tasks.get_mut(id) {
                t.init.status = api::Status::RUNNING;
                t.init.pid = pid;
            }
        }
        self.watch_init(id, sandbox);
        let mut ev = TaskStart::new();
        ev.container_id = id.to_string();
        ev.pid = pid;
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        Ok(pid)
    }

    /// Wait for the task's init in a thread of its own; its end is published, and its VM goes.
    fn watch_init(&self, id: &str, sandbox: Arc<dyn Sandbox>) {
        let svc = self.clone();
        let tid = id.to_string();
        crate::logging::thread("task-wait", move || {
            let code = match sandbox.wait() {
                Ok(c) => u32::try_from(c).unwrap_or(LOST),
                Err(e) => {
                    log::error!("Lost task {tid}: {}", crate::error::report(&e));
                    LOST
                }
            };
            log::info!("task {tid} exited with code {code}");
            // Its VM goes now; the exit code stays for wait/state/delete.
            sandbox.shutdown();
            svc.exited(&tid, None, code);
        });
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let sandbox = self.sandbox(id)?;
        let (process, stdio) = {
            let mut tasks = self.tasks()?;
            let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
            let (cfg, p) = task
                .execs
                .get(exec_id)
                .ok_or_else(|| rpc(Code::NOT_FOUND, format!("exec {exec_id} not found")))?;
            if p.status != api::Status::CREATED {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} already started"),
                ));
            }
            let (stdio, hold) = open_stdio(&p.stdin, &p.stdout, &p.stderr)
                .map_err(|e| rpc(Code::INTERNAL, format!("exec stdio: {e}")))?;
            if let Some(hold) = hold {
                task.stdin_holds.insert(exec_id.to_string(), hold);
            }
            (cfg.clone(), stdio)
        };
        let (tx, rx) = mpsc::channel::<Result<i32, String>>();
        let svc = self.clone();
        let (tid, eid) = (id.to_string(), exec_id.to_string());
        crate::logging::thread("exec-wait", move || {
            let started = tx.clone();
            let r = sandbox.exec(&eid, &process, stdio, &mut |pid| {
                let _ = started.send(Ok(pid));
            });
            match r {
                Ok(code) => svc.exited(&tid, Some(&eid), u32::try_from(code).unwrap_or(LOST)),
                Err(e) => {
                    let msg = crate::error::report(&e);
                    // Before it started this is the start's answer; after, the exec is lost.
                    if tx.send(Err(msg.clone())).is_ok() {
                        log::warn!("exec {eid} of {tid}: {msg}");
                    }
                    svc.exited(&tid, Some(&eid), LOST);
                }
            }
        });
        let pid = match rx.recv_timeout(crate::timeouts::SHIM_CALL) {
            Ok(Ok(pid)) => u32::try_from(pid).unwrap_or(0),
            Ok(Err(msg)) => return Err(rpc(Code::FAILED_PRECONDITION, msg)),
            Err(_) => return Err(rpc(Code::DEADLINE_EXCEEDED, "exec did not start")),
        };
        if let Ok(mut tasks) = self.0.tasks.lock() {
            if let Some((_, p)) = tasks.get_mut(id).and_then(|t| t.execs.get_mut(exec_id)) {
                if p.status == api::Status::CREATED {
                    p.status = api::Status::RUNNING;
                }
                p.pid = pid;
            }
        }
        let mut ev = TaskExecStarted::new();
        ev.container_id = id.to_string();
        ev.exec_id = exec_id.to_string();
        ev.pid = pid;
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
        Ok(pid)
    }
}

impl TaskService {
    /// Pause (`freeze`) or resume task `id` and tell containerd.
    fn freeze(&self, id: &str, freeze: bool) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox(id)?;
        let r = if freeze {
            sandbox.pause()
        } else {
            sandbox.resume()
        };
        r.map_err(|e| rpc(Code::FAILED_PRECONDITION, crate::error::report(&e)))?;
        if let Ok(mut tasks) = self.0.tasks.lock() {
            if let Some(t) = tasks.get_mut(id) {
                t.init.status = if freeze {
                    api::Status::PAUSED
                } else {
                    api::Status::RUNNING
                };
            }
        }
        if freeze {
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        } else {
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        }
        Ok(api::Empty::new())
    }
}

impl shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        crate::api::id::validate("container", &req.id)
            .map_err(|e| rpc(Code::INVALID_ARGUMENT, e))?;
        let exists = self.tasks()?.contains_key(&req.id);
        if exists {
            return Err(rpc(Code::ALREADY_EXISTS, format!("task {} exists", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        // The rootfs containerd prepared (snapshotter mounts) at <bundle>/rootfs.
        if !req.rootfs.is_empty() {
            let target = bundle.join("rootfs");
            std::fs::create_dir_all(&target)
                .map_err(|e| rpc(Code::INTERNAL, format!("{}: {e}", target.display())))?;
            for m in &req.rootfs {
                if let Err(e) = mount_rootfs(&m.type_, &m.source, &m.options, &target) {
                    unmount_rootfs(&bundle);
                    return Err(rpc(Code::INTERNAL, format!("mount rootfs: {e}")));
                }
            }
        }
        let fail = |code: Code, msg: String| {
            unmount_rootfs(&bundle);
            rpc(code, msg)
        };
        let mut config = Bundle::load(&bundle)
            .and_then(|b| b.container_config(&req.id))
            .map_err(|e| fail(Code::INVALID_ARGUMENT, crate::error::report(&e)))?;
        // A command that cannot run fails Create, as under runc (the kubelet's CreateContainerError).
        self.0.backend.check_command(&config).map_err(|msg| {
            fail(
                Code::FAILED_PRECONDITION,
                format!("unable to start container process: {msg}"),
            )
        })?;
        // A terminal task's pty is made in the guest, its output relayed to the stdout FIFO.
        config.process.terminal |= req.terminal;
        let (stdio, hold) = open_stdio(&req.stdin, &req.stdout, &req.stderr)
            .map_err(|e| fail(Code::INTERNAL, format!("task stdio: {e}")))?;
        let state_dir = self.0.backend.root.join(&req.id);
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| fail(Code::INTERNAL, format!("{}: {e}", state_dir.display())))?;
        // A task with a network namespace of its own gets its VM at start, wired to what the
        // engine configured in the namespace meanwhile (CNI).
        let (sandbox, netns): (Arc<dyn Sandbox>, _) = if config.wants_own_netns() {
            let holder = NetnsHolder::spawn().map_err(|e| {
                let _ = std::fs::remove_dir_all(&state_dir);
                fail(
                    Code::INTERNAL,
                    format!("a network namespace for the task: {e}"),
                )
            })?;
            let sandbox = BootAtStart::create(
                Box::new(self.0.backend.clone()),
                config.clone(),
                state_dir.clone(),
                stdio,
                holder.netns(),
            )
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&state_dir);
                fail(Code::INTERNAL, crate::error::report(&e))
            })?;
            (Arc::new(sandbox), Some(holder))
        } else {
            match self.0.backend.create(&config, &state_dir, stdio) {
                Ok(s) => (Arc::from(s), None),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&state_dir);
                    return Err(fail(Code::INTERNAL, crate::error::report(&e)));
                }
            }
        };
        let pid = netns
            .as_ref()
            .map_or_else(std::process::id, NetnsHolder::pid);
        let task = Task {
            bundle: req.bundle.clone(),
            sandbox,
            netns,
            init: Process {
                pid,
                status: api::Status::CREATED,
                exit: None,
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: config.process.terminal,
            },
            execs: HashMap::new(),
            stdin_holds: hold.into_iter().map(|h| (String::new(), h)).collect(),
            starting: false,
        };
        self.tasks()?.insert(req.id.clone(), task);
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        ev.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = if req.exec_id.is_empty() {
            self.start_init(&req.id)?
        } else {
            self.start_exec(&req.id, &req.exec_id)?
        };
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (bundle, p) = self.process(&req.id, &req.exec_id)?;
        let mut resp = api::StateResponse::new();
        resp.id = req.id.clone();
        resp.exec_id = req.exec_id.clone();
        resp.bundle = bundle;
        resp.pid = p.pid;
        resp.status = p.status.into();
        resp.stdin = p.stdin;
        resp.stdout = p.stdout;
        resp.stderr = p.stderr;
        resp.terminal = p.terminal;
        if let Some((code, at)) = p.exit {
            resp.exit_status = code;
            resp.exited_at = Some(at).into();
        }
        Ok(resp)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let what = if req.exec_id.is_empty() {
            format!("task {}", req.id)
        } else {
            format!("exec {} of task {}", req.exec_id, req.id)
        };
        match p.status {
            api::Status::STOPPED => {
                return Err(rpc(Code::NOT_FOUND, format!("{what} has already exited")))
            }
            api::Status::CREATED if !req.exec_id.is_empty() => {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("{what} is not started"),
                ))
            }
            _ => {}
        }
        let signal = i32::try_from(req.signal)
            .map_err(|_| rpc(Code::INVALID_ARGUMENT, "bad signal number"))?;
        let sandbox = self.sandbox(&req.id)?;
        let r = if req.exec_id.is_empty() {
            sandbox.signal(signal, req.all)
        } else {
            sandbox.signal_exec(&req.exec_id, signal)
        };
        r.map_err(|e| rpc(Code::FAILED_PRECONDITION, crate::error::report(&e)))?;
        // A created task's init ends with the signal, as under runc (one whose VM was to boot
        // at start ends without one): its end is published like a started one's.
        if req.exec_id.is_empty() && p.status == api::Status::CREATED {
            self.watch_init(&req.id, sandbox);
        }
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if !p.terminal {
            return Err(rpc(
                Code::FAILED_PRECONDITION,
                format!("{} has no terminal", req.id),
            ));
        }
        let size = |v: u32| {
            u16::try_from(v).map_err(|_| rpc(Code::INVALID_ARGUMENT, "window size out of range"))
        };
        let (rows, cols) = (size(req.height)?, size(req.width)?);
        let exec_id = (!req.exec_id.is_empty()).then_some(req.exec_id.as_str());
        self.sandbox(&req.id)?
            .resize(exec_id, rows, cols)
            .map_err(|e| rpc(Code::FAILED_PRECONDITION, crate::error::report(&e)))?;
        Ok(api::Empty::new())
    }

    /// The engine is done writing the process's stdin: the shim lets go of its own writer,
    /// so the process reads the end of its input.
    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let mut tasks = self.tasks()?;
        let task = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() && !task.execs.contains_key(&req.exec_id) {
            return Err(rpc(
                Code::NOT_FOUND,
                format!("exec {} not found", req.exec_id),
            ));
        }
        if req.stdin {
            task.stdin_holds.remove(&req.exec_id);
        }
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        crate::api::id::validate("exec", &req.exec_id)
            .map_err(|e| rpc(Code::INVALID_ARGUMENT, e))?;
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| rpc(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        let oci: oci_spec::runtime::Process = serde_json::from_slice(&spec.value)
            .map_err(|e| rpc(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        let mut process = ProcessConfig::from_oci(&oci)
            .map_err(|e| rpc(Code::INVALID_ARGUMENT, crate::error::report(&e)))?;
        process.terminal |= req.terminal;
        {
            let mut tasks = self.tasks()?;
            let task = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
            if task.execs.contains_key(&req.exec_id) {
                return Err(rpc(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            let p = Process {
                status: api::Status::CREATED,
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: process.terminal,
                ..Default::default()
            };
            task.execs.insert(req.exec_id.clone(), (process, p));
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev));
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut tasks = self.tasks()?;
        loop {
            let task = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let p = if req.exec_id.is_empty() {
                &task.init
            } else {
                &task
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| rpc(Code::NOT_FOUND, format!("exec {} not found", req.exec_id)))?
                    .1
            };
            if let Some((code, at)) = &p.exit {
                let mut resp = api::WaitResponse::new();
                resp.exit_status = *code;
                resp.exited_at = Some(at.clone()).into();
                return Ok(resp);
            }
            tasks = self
                .0
                .changed
                .wait(tasks)
                .map_err(|_| rpc(Code::INTERNAL, "lock"))?;
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut resp = api::DeleteResponse::new();
        if !req.exec_id.is_empty() {
            let mut tasks = self.tasks()?;
            let task = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
            let (_, p) = task
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| rpc(Code::NOT_FOUND, format!("exec {} not found", req.exec_id)))?;
            task.stdin_holds.remove(&req.exec_id);
            resp.pid = p.pid;
            if let Some((code, at)) = p.exit {
                resp.exit_status = code;
                resp.exited_at = Some(at).into();
            }
            return Ok(resp);
        }
        let task = {
            let mut tasks = self.tasks()?;
            match tasks.get(&req.id) {
                None => return Err(not_found(&req.id)),
                Some(t) if t.init.status == api::Status::RUNNING => {
                    return Err(rpc(
                        Code::FAILED_PRECONDITION,
                        format!("task {} is running; kill it first", req.id),
                    ))
                }
                Some(_) => {}
            }
            tasks.remove(&req.id).ok_or_else(|| not_found(&req.id))?
        };
        // A task that never ran still holds its VM.
        task.sandbox.shutdown();
        drop(task.netns);
        unmount_rootfs(Path::new(&task.bundle));
        let _ = std::fs::remove_dir_all(self.0.backend.root.join(&req.id));
        resp.pid = task.init.pid;
        let (code, at) = task.init.exit.unwrap_or((0, now()));
        resp.exit_status = code;
        resp.exited_at = Some(at.clone()).into();
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = task.init.pid;
        ev.exit_status = code;
        ev.exited_at = Some(at).into();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        self.0.changed.notify_all();
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let procs = self
            .sandbox(&req.id)?
            .processes()
            .map_err(|e| rpc(Code::FAILED_PRECONDITION, crate::error::report(&e)))?;
        let mut resp = api::PidsResponse::new();
        for (pid, _cmd) in procs {
            let mut info = containerd_shim::protos::types::task::ProcessInfo::new();
            info.pid = u32::try_from(pid).unwrap_or(0);
            resp.processes.push(info);
        }
        Ok(resp)
    }

    /// The task's usage as containerd's cgroup v1 metrics (what Kata's shim answers too):
    /// `pids.current`, the CPU time, the memory usage, as the guest counts them.
    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
        };
        use containerd_shim::protos::protobuf::Message;
        let usage = self
            .sandbox(&req.id)?
            .usage()
            .map_err(|e| rpc(Code::FAILED_PRECONDITION, crate::error::report(&e)))?;
        let mut m = Metrics::new();
        let mut pids = PidsStat::new();
        pids.current = usage.pids;
        m.pids = Some(pids).into();
        if let Some(usec) = usage.cpu_usec {
            let mut total = CPUUsage::new();
            total.total = usec.saturating_mul(1000);
            let mut cpu = CPUStat::new();
            cpu.usage = Some(total).into();
            m.cpu = Some(cpu).into();
        }
        if let Some(bytes) = usage.memory_bytes {
            let mut entry = MemoryEntry::new();
            entry.usage = bytes;
            let mut memory = MemoryStat::new();
            memory.usage = Some(entry).into();
            m.memory = Some(memory).into();
        }
        let mut any = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
        any.type_url = METRICS_TYPE.to_string();
        any.value = m
            .write_to_bytes()
            .map_err(|e| rpc(Code::INTERNAL, format!("metrics: {e}")))?;
        let mut resp = api::StatsResponse::new();
        resp.stats = Some(any).into();
        Ok(resp)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, true)
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, false)
    }

    /// New limits (`ctr task update`, the CRI's UpdateContainerResources): `resources` is
    /// the runtime spec's `LinuxResources`, JSON in an `Any` (containerd's typeurl).
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let Some(any) = req.resources.as_ref() else {
            return Ok(api::Empty::new());
        };
        let opts = super::ops::UpdateOpts {
            resources: Some(any.value.clone()),
            ..Default::default()
        };
        let limits = super::ops::update_limits(&opts)
            .map_err(|e| rpc(Code::INVALID_ARGUMENT, crate::error::report(&e)))?;
        self.sandbox(&req.id)?
            .update(&limits)
            .map_err(|e| rpc(Code::FAILED_PRECONDITION, crate::error::report(&e)))?;
        Ok(api::Empty::new())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let (_, p) = self.process(&req.id, "")?;
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = p.pid;
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(resp)
    }

    /// containerd asks each time a task goes; the shim ends with its last task.
    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let empty = self.0.tasks.lock().map(|t| t.is_empty()).unwrap_or(true);
        if empty {
            log::info!("last task gone: shim exits");
            self.0.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

/// Whether this process is containerd's shim: run by the name containerd knows, or the shim
/// server it started.
pub fn invoked_as_shim() -> bool {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == BINARY_NAME)
        || std::env::var_os(SERVER_ENV).is_some_and(|v| v == "1")
}

/// Run as containerd's shim (`containerd-shim-ember-v2 ...`); never returns.
pub fn main() -> ! {
    // Not handed down to what the shim starts (pod processes, hooks).
    std::env::remove_var(SERVER_ENV);
    // ember waits for its own children (pod processes, mkfs, hooks): no reaper thread may
    // take their exit statuses (it is set up before `Shim::new`, so say it here); and it logs
    // through its own backend, into containerd's log FIFO (`log` in the bundle).
    let config = shim::Config {
        no_reaper: true,
        no_sub_reaper: true,
        no_setup_logger: true,
        ..Default::default()
    };
    shim::run::<EmberShim>(RUNTIME_ID, Some(config));
    std::process::exit(0)
}
