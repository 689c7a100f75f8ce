//! Containers in a pod microVM: the [`Sandbox`] the shim drives, talking to the guest agent
//! (`agent::protocol`) over the pod's vsock, with the container's stdio relayed between the
//! agent's stdio streams and the descriptors the engine gave `ember create`.

use super::bundle::{ContainerConfig, MountConfig, PodRole, ProcessConfig};
use super::sandbox::{Backend, Sandbox, SandboxError, Stdio};
use crate::state::DiskOwner;
use agent::client::{AgentClient, ClientError};
use agent::protocol::{
    ContainerSpec, Mount, Namespace, ProcessSpec, Rlimit, RootfsSpec, StdioStream,
};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time limit for one ordinary request to the agent.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Trees the agent sets up itself for every container (/dev with devpts and shm, /proc,
/// /sys with its cgroup2): spec mounts at or under them are left to it.
const AGENT_MOUNTS: &[&str] = &["/proc", "/dev", "/sys"];
/// Pod-config disk ids of a container's pod: its rootfs and its copied host binds.
const ROOTFS_DISK: &str = "rootfs";
const VOLUME_DISK: &str = "volume";
/// Filesystem types that exist inside the guest and can be mounted there as the spec says.
const GUEST_FSTYPES: &[&str] = &["tmpfs", "mqueue", "proc", "sysfs"];

/// The agent's process description for an OCI process.
pub fn process_spec(p: &ProcessConfig) -> ProcessSpec {
    ProcessSpec {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: p.cwd.to_string_lossy().into_owned(),
        uid: p.uid,
        gid: p.gid,
        additional_gids: p.additional_gids.clone(),
        terminal: p.terminal,
        rlimits: p
            .rlimits
            .iter()
            .map(|r| Rlimit {
                kind: r.typ.clone(),
                soft: r.soft,
                hard: r.hard,
            })
            .collect(),
        no_new_privileges: p.no_new_privileges,
    }
}

/// Whether a spec mount can be made inside the guest (and is not one the agent makes anyway).
/// Bind mounts of host paths cannot: the guest does not see the host's filesystem.
pub fn guest_mount(m: &MountConfig) -> Option<Mount> {
    let dest = m.destination.to_string_lossy().into_owned();
    if AGENT_MOUNTS
        .iter()
        .any(|a| m.destination.starts_with(Path::new(a)))
    {
        return None;
    }
    let typ = m.typ.as_deref()?;
    if !GUEST_FSTYPES.contains(&typ) {
        return None;
    }
    Some(Mount {
        destination: dest,
        source: m
            .source
            .as_ref()
            .map_or_else(|| typ.to_string(), |s| s.to_string_lossy().into_owned()),
        fstype: Some(typ.to_string()),
        options: m.options.clone(),
        from_volume: false,
    })
}

/// Most bytes of host files and directories copied onto one container's volume disk.
pub const VOLUME_COPY_LIMIT: u64 = 512 << 20;

/// Whether `m` bind-mounts a host file or directory (podman's /etc/hosts, /etc/resolv.conf,
/// /run/.containerenv, `-v` volumes). The guest cannot see the host's filesystem: the
/// content of each goes onto the container's volume disk (see [`stage_volumes`]). Sockets
/// and devices cannot be carried into a VM; binds under the trees the agent makes itself
/// (/dev/shm, /sys/fs/cgroup) are its business.
pub fn host_bind(m: &MountConfig) -> bool {
    let is_bind = matches!(m.typ.as_deref(), Some("bind" | "rbind"))
        || m.options.iter().any(|o| o == "bind" || o == "rbind");
    let under_agent = AGENT_MOUNTS
        .iter()
        .any(|a| m.destination.starts_with(Path::new(a)));
    is_bind
        && !under_agent
        && m.source.as_ref().is_some_and(|s| {
            s.is_absolute() && std::fs::metadata(s).is_ok_and(|md| md.is_file() || md.is_dir())
        })
}

/// The host binds of `c`, in the order their copies are named on the volume disk (`0`, ...).
fn host_binds(c: &ContainerConfig) -> impl Iterator<Item = (usize, &MountConfig)> {
    c.mounts.iter().filter(|m| host_bind(m)).enumerate()
}

/// Errors of copying host binds onto a volume disk.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("Bind mount sources for {destinations} hold {bytes} bytes: more than the {limit} bytes ember copies into a VM")]
    TooLarge {
        destinations: String,
        bytes: u64,
        limit: u64,
    },
    #[error("Cannot copy bind mount source {source_path} for {destination}: {detail}")]
    Copy {
        source_path: PathBuf,
        destination: PathBuf,
        detail: String,
    },
    #[error("Cannot make the volume image")]
    Image(#[source] crate::api::disk::Error),
}

/// Copies the host binds of `c` into `stage/<n>` (`cp -a`: modes, owners, links kept) and
/// packs them into the ext4 image `image`. Returns false, making nothing, when `c` has none.
/// A snapshot taken at create: what the container writes there stays in its VM.
pub fn stage_volumes(c: &ContainerConfig, stage: &Path, image: &Path) -> Result<bool, VolumeError> {
    let binds: Vec<(usize, &MountConfig)> = host_binds(c).collect();
    if binds.is_empty() {
        return Ok(false);
    }
    let mut bytes = 0u64;
    for (_, m) in &binds {
        let src = m.source.as_deref().unwrap_or(Path::new("/"));
        bytes = bytes.saturating_add(match std::fs::metadata(src) {
            Ok(md) if md.is_dir() => crate::api::disk::content_size(src).unwrap_or(0),
            Ok(md) => md.len(),
            Err(_) => 0,
        });
    }
    if bytes > VOLUME_COPY_LIMIT {
        let destinations: Vec<String> = binds
            .iter()
            .map(|(_, m)| m.destination.display().to_string())
            .collect();
        return Err(VolumeError::TooLarge {
            destinations: destinations.join(", "),
            bytes,
            limit: VOLUME_COPY_LIMIT,
        });
    }
    let _ = std::fs::remove_dir_all(stage);
    let result = (|| {
        std::fs::create_dir_all(stage).map_err(|e| VolumeError::Copy {
            source_path: stage.to_path_buf(),
            destination: stage.to_path_buf(),
            detail: e.to_string(),
        })?;
        for (n, m) in &binds {
            let src = m.source.as_deref().unwrap_or(Path::new("/"));
            let copy_err = |detail: String| VolumeError::Copy {
                source_path: src.to_path_buf(),
                destination: m.destination.clone(),
                detail,
            };
            let out = std::process::Command::new("cp")
                .args(["-a", "-T", "--"])
                .arg(src)
                .arg(stage.join(n.to_string()))
                .output()
                .map_err(|e| copy_err(format!("cannot run cp: {e}")))?;
            if !out.status.success() {
                return Err(copy_err(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
        }
        crate::api::disk::make_ext4(stage, image).map_err(VolumeError::Image)
    })();
    let _ = std::fs::remove_dir_all(stage);
    result.map(|()| true)
}

/// The agent's container description: the rootfs on `rootfs_device` (ext4), the spec's
/// namespaces that the agent creates (a namespace joined by path is the pod's shared one,
/// which every container of the VM already has), mounts that exist in a guest, the host
/// binds from `volume_device` (made by [`stage_volumes`]), hostname, cgroup path and the
/// process.
pub fn container_spec(
    c: &ContainerConfig,
    rootfs_device: &str,
    volume_device: Option<&str>,
) -> ContainerSpec {
    let namespaces = c
        .namespaces
        .iter()
        .filter(|n| n.path.is_none())
        .filter_map(|n| match n.typ.as_str() {
            "pid" => Some(Namespace::Pid),
            "mnt" | "mount" => Some(Namespace::Mount),
            "uts" => Some(Namespace::Uts),
            "ipc" => Some(Namespace::Ipc),
            "net" | "network" => Some(Namespace::Net),
            // user, cgroup, time: the VM is the boundary; the agent does not make these.
            _ => None,
        })
        .collect();
    ContainerSpec {
        rootfs: RootfsSpec::BlockDevice {
            path: rootfs_device.to_string(),
            fstype: "ext4".to_string(),
            read_only: c.readonly_rootfs,
        },
        mounts: spec_mounts(c, volume_device.is_some()),
        hostname: c.hostname.clone(),
        namespaces,
        process: process_spec(&c.process),
        cgroup_path: c
            .cgroups_path
            .as_ref()
            .map(|p| p.to_string_lossy().trim_start_matches('/').to_string())
            .filter(|p| !p.is_empty() && !p.contains(':')),
        volume: volume_device.map(|d| RootfsSpec::BlockDevice {
            path: d.to_string(),
            fstype: "ext4".to_string(),
            read_only: false,
        }),
    }
}

/// The spec's mounts in their order: those a guest can make, and (`with_volume`) the host
/// binds as binds from the volume disk.
fn spec_mounts(c: &ContainerConfig, with_volume: bool) -> Vec<Mount> {
    let mut bind_no = 0;
    c.mounts
        .iter()
        .filter_map(|m| {
            if host_bind(m) {
                let n = bind_no;
                bind_no += 1;
                return with_volume.then(|| Mount {
                    destination: m.destination.to_string_lossy().into_owned(),
                    source: n.to_string(),
                    fstype: None,
                    options: m.options.clone(),
                    from_volume: true,
                });
            }
            guest_mount(m)
        })
        .collect()
}

/// Opens connections to one pod's agent.
pub trait Connector: Send + Sync {
    /// A stream connected to the agent's request port; `timeout` on reads and writes.
    fn stream(&self, timeout: Option<Duration>) -> Result<UnixStream, ClientError>;

    fn client(&self, timeout: Option<Duration>) -> Result<AgentClient<UnixStream>, SandboxError> {
        let s = self
            .stream(timeout)
            .map_err(|e| SandboxError::failed("Cannot reach the guest agent", e))?;
        Ok(AgentClient::new(s))
    }
}

/// The agent behind a VMM's hybrid vsock Unix socket (`CONNECT 1024`).
pub struct VsockConnector {
    pub uds: PathBuf,
}

impl Connector for VsockConnector {
    fn stream(&self, timeout: Option<Duration>) -> Result<UnixStream, ClientError> {
        let s = agent::client::connect_unix(&self.uds)?;
        let hs = Some(timeout.unwrap_or(CALL_TIMEOUT));
        let _ = s.set_read_timeout(hs);
        let _ = s.set_write_timeout(hs);
        let mut s = s;
        agent::client::vsock_handshake(&mut s, agent::protocol::DEFAULT_PORT)?;
        let _ = s.set_read_timeout(timeout);
        let _ = s.set_write_timeout(timeout);
        Ok(s)
    }
}

/// An agent listening on a plain Unix socket (an agent run on the host).
pub struct UnixConnector {
    pub path: PathBuf,
}

impl Connector for UnixConnector {
    fn stream(&self, timeout: Option<Duration>) -> Result<UnixStream, ClientError> {
        let s = agent::client::connect_unix(&self.path)?;
        let _ = s.set_read_timeout(timeout);
        let _ = s.set_write_timeout(timeout);
        Ok(s)
    }
}

fn agent_err(what: &str) -> impl FnOnce(ClientError) -> SandboxError + '_ {
    move |e| SandboxError::failed(what.to_string(), e)
}

/// Relays of one process's stdio; joined when it ends.
struct Relays {
    out: Vec<JoinHandle<()>>,
}

impl Relays {
    /// Attach the process's streams and copy: our stdin to its stdin, its stdout and stderr
    /// to ours.
    fn attach(
        conn: &dyn Connector,
        container_id: &str,
        exec_id: Option<&str>,
        stdio: Stdio,
    ) -> Result<Relays, SandboxError> {
        let attach = |stream| -> Result<UnixStream, SandboxError> {
            let client = conn.client(Some(CALL_TIMEOUT))?;
            let s = client
                .attach_stdio(container_id, exec_id, stream)
                .map_err(agent_err("Cannot attach to the container's stdio"))?;
            let _ = s.set_read_timeout(None);
            let _ = s.set_write_timeout(None);
            Ok(s)
        };
        let out = attach(StdioStream::Stdout)?;
        let err = attach(StdioStream::Stderr)?;
        let inp = attach(StdioStream::Stdin)?;
        let handles = vec![
            copy_thread(out, File::from(stdio.stdout)),
            copy_thread(err, File::from(stdio.stderr)),
        ];
        // Stdin is not joined: it ends when the caller's stdin does (or never, for a pipe
        // kept open), and the process's end does not wait for it.
        let stdin = File::from(stdio.stdin);
        std::thread::spawn(move || {
            let mut inp = inp;
            let mut stdin = stdin;
            let _ = io::copy(&mut stdin, &mut inp);
            let _ = inp.shutdown(Shutdown::Write);
        });
        Ok(Relays { out: handles })
    }

    fn join(self) {
        for h in self.out {
            let _ = h.join();
        }
    }
}

fn copy_thread(mut from: UnixStream, mut to: File) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = to.flush();
    })
}

/// A container created in a pod's guest.
pub struct AgentSandbox {
    id: String,
    conn: Box<dyn Connector>,
    relays: Mutex<Option<Relays>>,
    /// Releases the VM (or the pod's share of it); run once.
    teardown: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl AgentSandbox {
    /// Create container `id` with `spec` through the agent behind `conn` and attach its stdio.
    pub fn create(
        id: &str,
        spec: ContainerSpec,
        conn: Box<dyn Connector>,
        stdio: Stdio,
        teardown: Box<dyn FnOnce() + Send>,
    ) -> Result<AgentSandbox, SandboxError> {
        let sb = AgentSandbox {
            id: id.to_string(),
            conn,
            relays: Mutex::new(None),
            teardown: Mutex::new(Some(teardown)),
        };
        let r = (|| {
            sb.conn
                .client(Some(CALL_TIMEOUT))?
                .create_container(id, spec)
                .map_err(agent_err("The agent could not create the container"))?;
            let relays = Relays::attach(sb.conn.as_ref(), id, None, stdio)?;
            if let Ok(mut g) = sb.relays.lock() {
                *g = Some(relays);
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(sb),
            Err(e) => {
                sb.shutdown();
                Err(e)
            }
        }
    }
}

impl Sandbox for AgentSandbox {
    fn start(&self) -> Result<i32, SandboxError> {
        self.conn
            .client(Some(CALL_TIMEOUT))?
            .start_container(&self.id)
            .map_err(agent_err("The agent could not start the container"))
    }

    fn wait(&self) -> Result<i32, SandboxError> {
        let status = self
            .conn
            .client(None)?
            .wait(&self.id, None)
            .map_err(agent_err("Waiting for the container failed"))?;
        let relays = self.relays.lock().ok().and_then(|mut g| g.take());
        if let Some(r) = relays {
            r.join();
        }
        Ok(status.code)
    }

    fn signal(&self, signal: i32, all: bool) -> Result<(), SandboxError> {
        self.conn
            .client(Some(CALL_TIMEOUT))?
            .signal(&self.id, None, signal, all)
            .map_err(agent_err("The agent could not signal the container"))
    }

    fn exec(
        &self,
        exec_id: &str,
        process: &ProcessConfig,
        stdio: Stdio,
        started: &mut dyn FnMut(i32),
    ) -> Result<i32, SandboxError> {
        let pid = self
            .conn
            .client(Some(CALL_TIMEOUT))?
            .exec(&self.id, exec_id, process_spec(process))
            .map_err(agent_err("The agent could not exec the process"))?;
        let relays = Relays::attach(self.conn.as_ref(), &self.id, Some(exec_id), stdio)?;
        started(pid);
        let status = self
            .conn
            .client(None)?
            .wait(&self.id, Some(exec_id))
            .map_err(agent_err("Waiting for the exec'd process failed"))?;
        relays.join();
        Ok(status.code)
    }

    fn processes(&self) -> Result<Vec<(i32, String)>, SandboxError> {
        let list = self
            .conn
            .client(Some(CALL_TIMEOUT))?
            .process_list(&self.id)
            .map_err(agent_err("The agent could not list processes"))?;
        Ok(list.into_iter().map(|p| (p.pid, p.cmd)).collect())
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.conn
            .client(Some(CALL_TIMEOUT))?
            .pause(&self.id)
            .map_err(agent_err("The agent could not pause the container"))
    }

    fn resume(&self) -> Result<(), SandboxError> {
        self.conn
            .client(Some(CALL_TIMEOUT))?
            .resume(&self.id)
            .map_err(agent_err("The agent could not resume the container"))
    }

    fn shutdown(&self) {
        let teardown = self.teardown.lock().ok().and_then(|mut g| g.take());
        if let Some(t) = teardown {
            if let Ok(mut c) = self.conn.client(Some(Duration::from_secs(5))) {
                let _ = c.destroy_container(&self.id);
            }
            t();
        }
    }
}

/// Directory under the OCI state root where the pods of OCI containers live (`@` cannot
/// start a container id, so no container's directory clashes with it).
pub const POD_ROOT: &str = "@pods";
/// File in the container's directory with the phases of its creation (for the benches).
pub const TIMINGS_FILE: &str = "timings.json";
/// How long `create` waits for a container's pod VM to get ready. Well under the engines' own
/// create timeouts (podman gives up after about four minutes), so that ember's error, with the
/// VM's boot phases, is the one reported. A hardware host boots the guest in ~100 ms; the
/// nested virtual test host in seconds.
pub const START_TIMEOUT_SECS: u64 = 120;

/// Disk slots of a CRI sandbox's VM: each member container takes one for its rootfs and one
/// more when it has host binds.
pub const SANDBOX_DISK_SLOTS: u8 = 8;
/// Owner-id suffix of a member container's volume disk in the sandbox pod's slots (`#` cannot
/// appear in a container id).
const VOLUME_OWNER_SUFFIX: &str = "#volume";

/// Containers in microVMs through `runtime::api`: the bundle's rootfs becomes an ext4 image,
/// a pod is created with that image as its first disk and started (the VM boots in a detached
/// ember process), and the container is created in the guest by the agent with everything
/// the spec says.
///
/// A container without CRI annotations gets a pod of its own. A CRI sandbox
/// (`io.kubernetes.cri.container-type: sandbox`) gets one with [`SANDBOX_DISK_SLOTS`] empty
/// disk slots; a member (`container`, with `io.kubernetes.cri.sandbox-id`) joins its
/// sandbox's running VM: its rootfs (and volume) images go into free slots and the agent
/// there creates it. Deleting a member empties its slots; deleting the sandbox stops the VM.
pub struct VmBackend {
    /// The OCI state root; pods go under `<root>/@pods`.
    pub root: PathBuf,
}

impl VmBackend {
    pub fn runtime(&self) -> crate::api::Runtime {
        crate::api::Runtime::new(self.root.join(POD_ROOT))
    }
}

/// The slot-disk owners of member container `id`: its rootfs and its volume.
fn member_owners(id: &str) -> [DiskOwner; 2] {
    [
        DiskOwner::Container(id.to_string()),
        DiskOwner::Container(format!("{id}{VOLUME_OWNER_SUFFIX}")),
    ]
}

/// Starts the pod of a container that owns its VM (no CRI grouping, or a CRI sandbox).
fn own_pod(
    rt: &crate::api::Runtime,
    config: &ContainerConfig,
    disks: Vec<crate::api::DiskConfig>,
) -> Result<(String, crate::api::PodInfo), SandboxError> {
    let pod = config.id.clone();
    let pod_config = crate::api::PodConfig {
        disks,
        disk_slots: match config.role {
            PodRole::Sandbox => SANDBOX_DISK_SLOTS,
            _ => 0,
        },
        annotations: config.annotations.clone(),
        start_timeout_secs: START_TIMEOUT_SECS,
        ..crate::api::PodConfig::default()
    };
    rt.create_pod(&pod, pod_config)
        .map_err(|e| SandboxError::failed("Cannot create the container's pod", e))?;
    match rt.start_pod(&pod) {
        Ok(info) => Ok((pod, info)),
        Err(e) => {
            let _ = rt.delete_pod(&pod, true);
            // The pod root goes too once no pod is left in it.
            let _ = std::fs::remove_dir(rt.root());
            Err(SandboxError::failed(
                "Cannot start the container's pod VM",
                e,
            ))
        }
    }
}

/// A member joins the running VM of its sandbox's pod: `disks` (rootfs, then volume) go into
/// free slots. Returns the pod, the guest devices and the teardown that empties the slots.
#[allow(clippy::type_complexity)]
fn join_pod(
    rt: &crate::api::Runtime,
    sandbox_id: &str,
    config: &ContainerConfig,
    disks: &[crate::api::DiskConfig],
) -> Result<(String, String, Option<String>, Box<dyn FnOnce() + Send>), SandboxError> {
    let owners = member_owners(&config.id);
    let mut devices = Vec::new();
    for (disk, owner) in disks.iter().zip(owners.iter()) {
        match rt.insert_disk(sandbox_id, &disk.path, disk.read_only, owner.clone()) {
            Ok(dev) => devices.push(dev),
            Err(e) => {
                for o in &owners {
                    let _ = rt.eject_disk(sandbox_id, o);
                }
                return Err(SandboxError::failed(
                    format!("Cannot add the container to the VM of its sandbox {sandbox_id}"),
                    e,
                ));
            }
        }
    }
    let rootfs = devices.first().cloned().unwrap_or_default();
    let volume = devices.get(1).cloned();
    let teardown_rt = rt.clone();
    let pod = sandbox_id.to_string();
    let teardown: Box<dyn FnOnce() + Send> = Box::new(move || {
        for o in &owners {
            let _ = teardown_rt.eject_disk(&pod, o);
        }
    });
    Ok((sandbox_id.to_string(), rootfs, volume, teardown))
}

impl Backend for VmBackend {
    fn cleanup(&self, id: &str) {
        let rt = self.runtime();
        if rt.pod_dir(id).is_dir() {
            let _ = rt.stop_pod(id);
            let _ = rt.delete_pod(id, true);
        }
        // A member whose shim is gone: out of its sandbox's agent, then out of the slots.
        let owners = member_owners(id);
        for pod in rt.list_pods().unwrap_or_default() {
            if !pod
                .slots
                .iter()
                .any(|s| s.disk.as_ref().is_some_and(|d| owners.contains(&d.owner)))
            {
                continue;
            }
            let conn = VsockConnector {
                uds: rt
                    .pod_dir(&pod.id)
                    .join(crate::api::agent_link::VSOCK_SOCKET),
            };
            if let Ok(mut c) = conn.client(Some(CALL_TIMEOUT)) {
                let _ = c.destroy_container(id);
            }
            for o in &owners {
                let _ = rt.eject_disk(&pod.id, o);
            }
        }
        let _ = std::fs::remove_dir(rt.root());
    }

    fn create(
        &self,
        config: &ContainerConfig,
        state_dir: &Path,
        stdio: Stdio,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        use crate::api::{disk, DiskConfig};
        let mut phases: Vec<(String, f64)> = Vec::new();
        let phase = |phases: &mut Vec<(String, f64)>, name: &str, since: Instant| {
            phases.push((name.to_string(), since.elapsed().as_secs_f64() * 1e3));
        };
        let t0 = Instant::now();
        let image = state_dir.join("rootfs.ext4");
        disk::make_ext4(&config.rootfs, &image)
            .map_err(|e| SandboxError::failed("Cannot make the container's rootfs image", e))?;
        phase(&mut phases, "rootfs_image", t0);
        let mut disks = vec![DiskConfig {
            id: ROOTFS_DISK.to_string(),
            path: image,
            read_only: config.readonly_rootfs,
        }];
        let t = Instant::now();
        let volume_image = state_dir.join("volume.ext4");
        let has_volume = stage_volumes(config, &state_dir.join("volume-stage"), &volume_image)
            .map_err(|e| SandboxError::failed("Cannot carry the bind mounts into the VM", e))?;
        if has_volume {
            disks.push(DiskConfig {
                id: VOLUME_DISK.to_string(),
                path: volume_image,
                read_only: false,
            });
            phase(&mut phases, "volume_image", t);
        }

        let rt = self.runtime();
        let (pod, device, volume_device, teardown) = match &config.role {
            PodRole::Member { sandbox_id } => {
                let t = Instant::now();
                let joined = join_pod(&rt, sandbox_id, config, &disks)?;
                phase(&mut phases, "disk_insert", t);
                joined
            }
            PodRole::Single | PodRole::Sandbox => {
                let t = Instant::now();
                let (pod, info) = own_pod(&rt, config, disks)?;
                phase(&mut phases, "pod_start", t);
                for p in &info.timings {
                    phases.push((format!("pod.{}", p.name), p.ms));
                }
                let device_of = |id: &str| {
                    info.disks
                        .iter()
                        .find(|d| d.owner == DiskOwner::Pod(id.to_string()))
                        .map(|d| d.guest_device.clone())
                };
                let device = device_of(ROOTFS_DISK).unwrap_or_else(|| "/dev/vda".to_string());
                let volume_device = device_of(VOLUME_DISK);
                let teardown_rt = rt.clone();
                let teardown_pod = pod.clone();
                let teardown: Box<dyn FnOnce() + Send> = Box::new(move || {
                    let _ = teardown_rt.stop_pod(&teardown_pod);
                    let _ = teardown_rt.delete_pod(&teardown_pod, true);
                    let _ = std::fs::remove_dir(teardown_rt.root());
                });
                (pod, device, volume_device, teardown)
            }
        };
        let conn = VsockConnector {
            uds: rt.pod_dir(&pod).join(crate::api::agent_link::VSOCK_SOCKET),
        };
        let t = Instant::now();
        let sandbox = AgentSandbox::create(
            &config.id,
            container_spec(config, &device, volume_device.as_deref()),
            Box::new(conn),
            stdio,
            teardown,
        )?;
        phase(&mut phases, "container_create", t);
        phase(&mut phases, "total", t0);
        let json: serde_json::Map<String, serde_json::Value> = phases
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect();
        let _ = std::fs::write(
            state_dir.join(TIMINGS_FILE),
            serde_json::Value::Object(json).to_string(),
        );
        Ok(Box::new(sandbox))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::bundle::{NamespaceConfig, Rlimit as OciRlimit};
    use std::collections::BTreeMap;

    fn mount(dest: &str, typ: &str) -> MountConfig {
        MountConfig {
            destination: dest.into(),
            typ: Some(typ.into()),
            source: Some(typ.into()),
            options: vec!["nosuid".into()],
        }
    }

    /// The mounts and namespaces podman 4.3 writes into config.json.
    fn podman_like() -> ContainerConfig {
        ContainerConfig {
            id: "c".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            readonly_rootfs: true,
            process: ProcessConfig {
                args: vec!["echo".into(), "hello".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 5,
                gid: 6,
                additional_gids: vec![7],
                terminal: false,
                rlimits: vec![OciRlimit {
                    typ: "RLIMIT_NOFILE".into(),
                    soft: 1,
                    hard: 2,
                }],
                no_new_privileges: true,
            },
            hostname: Some("h".into()),
            mounts: vec![
                mount("/proc", "proc"),
                mount("/dev", "tmpfs"),
                mount("/sys", "sysfs"),
                mount("/dev/pts", "devpts"),
                mount("/dev/mqueue", "mqueue"),
                mount("/etc/hosts", "bind"),
                mount("/sys/fs/cgroup", "cgroup"),
                mount("/scratch", "tmpfs"),
                mount("/q", "mqueue"),
            ],
            namespaces: ["pid", "net", "ipc", "uts", "mnt", "cgroup", "user"]
                .iter()
                .map(|t| NamespaceConfig {
                    typ: t.to_string(),
                    path: None,
                })
                .chain(std::iter::once(NamespaceConfig {
                    typ: "net".into(),
                    path: Some("/proc/1/ns/net".into()),
                }))
                .collect(),
            cgroups_path: Some("/libpod_parent/libpod-abc".into()),
            annotations: BTreeMap::new(),
            role: PodRole::Single,
        }
    }

    #[test]
    fn podman_config_maps_to_what_a_guest_can_do() {
        let spec = container_spec(&podman_like(), "/dev/vda", None);
        assert_eq!(
            spec.rootfs,
            RootfsSpec::BlockDevice {
                path: "/dev/vda".into(),
                fstype: "ext4".into(),
                read_only: true
            }
        );
        let dests: Vec<&str> = spec.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(dests, ["/scratch", "/q"]);
        assert_eq!(spec.mounts[0].fstype.as_deref(), Some("tmpfs"));
        assert_eq!(spec.mounts[0].options, ["nosuid"]);
        assert_eq!(
            spec.namespaces,
            [
                Namespace::Pid,
                Namespace::Net,
                Namespace::Ipc,
                Namespace::Uts,
                Namespace::Mount
            ]
        );
        assert_eq!(
            spec.cgroup_path.as_deref(),
            Some("libpod_parent/libpod-abc")
        );
        assert_eq!(spec.hostname.as_deref(), Some("h"));
        let p = &spec.process;
        assert_eq!(
            (p.uid, p.gid, p.additional_gids.as_slice()),
            (5, 6, &[7][..])
        );
        assert_eq!(p.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!((p.rlimits[0].soft, p.rlimits[0].hard), (1, 2));
        assert!(p.no_new_privileges);
    }

    fn bind(dest: &str, source: &Path, options: &[&str]) -> MountConfig {
        MountConfig {
            destination: dest.into(),
            typ: Some("bind".into()),
            source: Some(source.to_path_buf()),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn host_binds_are_copied_onto_the_volume_disk() {
        if std::process::Command::new("mkfs.ext4")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: mkfs.ext4 not installed");
            return;
        }
        let dir = crate::state::test_dir("oci-volume");
        std::fs::write(dir.join("hosts"), "10.0.0.7 db\n").unwrap();
        std::fs::create_dir_all(dir.join("data/sub")).unwrap();
        std::fs::write(dir.join("data/sub/f"), "volume file\n").unwrap();
        let mut c = podman_like();
        c.mounts = vec![
            mount("/proc", "proc"),
            bind("/etc/hosts", &dir.join("hosts"), &["rbind", "ro"]),
            // Under /dev (the agent's), missing, relative: not carried.
            bind("/dev/shm", &dir.join("data"), &["bind"]),
            bind("/missing", &dir.join("no-such"), &["bind"]),
            bind("/rel", Path::new("data"), &["bind"]),
            mount("/scratch", "tmpfs"),
            MountConfig {
                typ: None,
                ..bind("/data", &dir.join("data"), &["rbind"])
            },
        ];
        let (stage, image) = (dir.join("stage"), dir.join("volume.ext4"));
        assert!(stage_volumes(&c, &stage, &image).unwrap());
        assert!(!stage.exists(), "the staging copy is removed");
        let cat = |path: &str| {
            let out = std::process::Command::new("debugfs")
                .args(["-R", &format!("cat {path}")])
                .arg(&image)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(cat("/0"), "10.0.0.7 db\n");
        assert_eq!(cat("/1/sub/f"), "volume file\n");

        let spec = container_spec(&c, "/dev/vda", Some("/dev/vdb"));
        let got: Vec<(&str, &str, bool)> = spec
            .mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.source.as_str(), m.from_volume))
            .collect();
        assert_eq!(
            got,
            [
                ("/etc/hosts", "0", true),
                ("/scratch", "tmpfs", false),
                ("/data", "1", true)
            ]
        );
        assert_eq!(spec.mounts[0].options, ["rbind", "ro"]);
        assert_eq!(
            spec.volume,
            Some(RootfsSpec::BlockDevice {
                path: "/dev/vdb".into(),
                fstype: "ext4".into(),
                read_only: false
            })
        );
        // Without a volume disk the host binds are left out, as before.
        let spec = container_spec(&c, "/dev/vda", None);
        assert!(spec.volume.is_none());
        assert!(spec.mounts.iter().all(|m| !m.from_volume));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_host_binds_no_volume_and_too_much_is_refused() {
        let dir = crate::state::test_dir("oci-volume-big");
        let (stage, image) = (dir.join("stage"), dir.join("volume.ext4"));
        assert!(!stage_volumes(&podman_like(), &stage, &image).unwrap());
        assert!(!image.exists());
        // A sparse file over the limit: refused before anything is copied.
        let big = std::fs::File::create(dir.join("big")).unwrap();
        big.set_len(VOLUME_COPY_LIMIT + 1).unwrap();
        let mut c = podman_like();
        c.mounts = vec![bind("/big", &dir.join("big"), &["bind"])];
        let err = stage_volumes(&c, &stage, &image).unwrap_err();
        assert!(matches!(err, VolumeError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("/big"), "{err}");
        assert!(!stage.exists() && !image.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn systemd_style_cgroup_paths_are_not_passed() {
        let mut c = podman_like();
        c.cgroups_path = Some("machine.slice:libpod:abc".into());
        assert_eq!(container_spec(&c, "/dev/vda", None).cgroup_path, None);
    }
}
