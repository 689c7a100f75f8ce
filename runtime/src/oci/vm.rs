//! Containers in a pod microVM, through the pod library ([`crate::api`]): the [`Sandbox`] the
//! shim drives is a container of a pod, created, started, waited on, signalled and exec'd into
//! with the same calls `ember container ...` makes, so an OCI container is in its pod's record
//! (`ember pod status` lists it) and there is one way to reach a container. Its stdio is
//! relayed between the agent's stdio streams and the descriptors the engine gave
//! `ember create`.

use super::bundle::{ContainerConfig, MountConfig, PodRole, ProcessConfig};
use super::sandbox::Usage;
use super::sandbox::{Backend, Sandbox, SandboxError, Stdio};
use crate::api::{self, Relays, RootfsConfig, Runtime};
use crate::config::{
    LogConfig, Machine, NetworkConfig, OciRootfs, RuntimeConfig, Shutdown, Sizing,
};
use agent::protocol::{Mount, Namespace, ProcessSpec, Rlimit, SharedNamespaces};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Trees the agent sets up itself for every container (/dev with devpts and shm, /proc,
/// /sys with its cgroup2): host binds at or under them are left to it.
const AGENT_MOUNTS: &[&str] = &["/proc", "/dev", "/sys"];

/// Whether the agent makes this mount itself: /dev (its tmpfs) and /dev/pts, and anything
/// at or under /proc and /sys. Other mounts under /dev (mqueue, a tmpfs /dev/shm with its
/// options) are the spec's and made as it says.
fn agent_made(dest: &Path) -> bool {
    dest == Path::new("/dev")
        || dest.starts_with("/dev/pts")
        || dest.starts_with("/proc")
        || dest.starts_with("/sys")
}
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
        capabilities: p.capabilities.clone(),
        oom_score_adj: p.oom_score_adj,
    }
}

/// The host's hostname: what runc's container with a UTS namespace of its own and no (or an
/// empty) hostname sees, since that namespace starts as a copy of the host's.
fn host_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
}

/// Whether a spec mount can be made inside the guest (and is not one the agent makes anyway).
/// Bind mounts of host paths cannot: the guest does not see the host's filesystem.
pub fn guest_mount(m: &MountConfig) -> Option<Mount> {
    let dest = m.destination.to_string_lossy().into_owned();
    if let Some(shm) = shm_bind(m) {
        return Some(shm);
    }
    if agent_made(&m.destination) {
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
        from_share: false,
    })
}

/// Whether a spec mount is a bind mount (by type or option).
fn is_bind(m: &MountConfig) -> bool {
    matches!(m.typ.as_deref(), Some("bind" | "rbind"))
        || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

/// podman's `/dev/shm` is a bind of a tmpfs it made on the host (`size=64000k` by default,
/// `--shm-size`): the guest gets a tmpfs of the same size in its place (shared memory cannot
/// cross the VM boundary, its size can).
fn shm_bind(m: &MountConfig) -> Option<Mount> {
    if m.destination != Path::new("/dev/shm") || !is_bind(m) {
        return None;
    }
    let st = nix::sys::statfs::statfs(m.source.as_deref()?).ok()?;
    if st.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return None;
    }
    let bytes = st.blocks() * st.block_size() as u64;
    let mut options: Vec<String> = m
        .options
        .iter()
        .filter(|o| !matches!(o.as_str(), "bind" | "rbind"))
        .cloned()
        .collect();
    options.extend(["mode=1777".to_string(), format!("size={}k", bytes / 1024)]);
    Some(Mount {
        destination: "/dev/shm".into(),
        source: "shm".into(),
        fstype: Some("tmpfs".into()),
        options,
        from_volume: false,
        from_share: false,
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
    let under_agent = AGENT_MOUNTS
        .iter()
        .any(|a| m.destination.starts_with(Path::new(a)));
    is_bind(m)
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

/// The agent's name for an OCI namespace type (time: the VM is the boundary; the agent does
/// not make it).
fn guest_namespace(typ: &str) -> Option<Namespace> {
    match typ {
        "user" => Some(Namespace::User),
        "pid" => Some(Namespace::Pid),
        "mnt" | "mount" => Some(Namespace::Mount),
        "uts" => Some(Namespace::Uts),
        "ipc" => Some(Namespace::Ipc),
        "net" | "network" => Some(Namespace::Net),
        "cgroup" => Some(Namespace::Cgroup),
        _ => None,
    }
}

/// A member's namespaces given by path that the agent can join in the VM: they are its
/// sandbox's (the CRI points them at the pause process; podman's pod members and
/// `container:NAME` joiners at the pid of the ember container they join,
/// [`super::ops`]), and the sandbox is a container of the same VM, named by the sandbox id.
fn sandbox_namespaces(c: &ContainerConfig) -> Option<SharedNamespaces> {
    let PodRole::Member { sandbox_id } = &c.role else {
        return None;
    };
    let namespaces: Vec<Namespace> = c
        .namespaces
        .iter()
        .filter(|n| n.path.is_some())
        .filter_map(|n| guest_namespace(&n.typ))
        .filter(|ns| SharedNamespaces::JOINABLE.contains(ns))
        .collect();
    (!namespaces.is_empty()).then(|| SharedNamespaces {
        container: sandbox_id.clone(),
        namespaces,
    })
}

/// The pod library's description of the container: its rootfs and volume (where the
/// caller put them), the spec's namespaces that the agent creates, those it joins (a
/// member's UTS, IPC, PID and user namespaces given by path are its sandbox's, which it
/// shares in the VM; a network namespace by path is the VM's own, which every container has), mounts
/// that exist in a guest, the host binds from the volume disk (made by [`stage_volumes`]),
/// hostname, cgroup path and the process.
pub fn container_config(
    c: &ContainerConfig,
    rootfs: RootfsConfig,
    binds: HostBinds,
    volume: Option<RootfsConfig>,
) -> api::ContainerConfig {
    let shared = sandbox_namespaces(c);
    for n in c.namespaces.iter().filter(|n| n.path.is_some()) {
        // The network namespace by path is the VM's own; the shared ones are the sandbox's.
        let joined = guest_namespace(&n.typ).is_some_and(|ns| {
            ns == Namespace::Net || shared.as_ref().is_some_and(|s| s.namespaces.contains(&ns))
        });
        if !joined {
            log::warn!(
                "container {}: {} namespace {}: a host namespace cannot be joined from inside a VM; the container has its pod VM's",
                c.id,
                n.typ,
                n.path.as_deref().unwrap_or(Path::new("")).display()
            );
        }
    }
    let namespaces = c
        .namespaces
        .iter()
        .filter(|n| n.path.is_none())
        .filter_map(|n| guest_namespace(&n.typ))
        .collect();
    let mut config = api::ContainerConfig::new(rootfs, Vec::<String>::new());
    config.fstype = Some("ext4".to_string());
    let binds = match binds {
        HostBinds::Volume if volume.is_none() => HostBinds::Dropped,
        b => b,
    };
    config.mounts = spec_mounts(c, binds);
    if binds == HostBinds::Shared {
        config.host_mounts = shared_binds(c);
    }
    // A UTS namespace of its own gets the spec's hostname, or the host's as under runc; one
    // joined by path is the pod's, whose name is left alone. Without one the container shares
    // its host's (podman --uts host, a CRI hostNetwork pod): the VM takes the host's name,
    // which is what runc's container sees.
    let uts = c.namespaces.iter().find(|n| n.typ == "uts");
    config.hostname = match uts {
        Some(n) if n.path.is_none() => c
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(host_hostname),
        None => host_hostname(),
        Some(_) => None,
    };
    config.namespaces = Some(namespaces);
    config.share = shared;
    config.process = process_spec(&c.process);
    // As runc: a process without a capabilities object has none.
    config.process.capabilities = Some(c.process.capabilities.clone().unwrap_or_default());
    config.linux = c.linux.clone();
    if !config
        .namespaces
        .as_ref()
        .is_some_and(|ns| ns.contains(&Namespace::User))
    {
        // A user namespace given by path is a member's sandbox's (joined, maps and all) or not
        // joined (warned above): its maps are not ours to make.
        config.linux.uid_mappings.clear();
        config.linux.gid_mappings.clear();
    }
    config.cgroup_path = c
        .cgroups_path
        .as_ref()
        .map(|p| p.to_string_lossy().trim_start_matches('/').to_string())
        .filter(|p| !p.is_empty() && !p.contains(':'));
    // Not a read-only rootfs mount (mount points of the spec's mounts could not be made in
    // it): the agent remounts the root read-only after setup, as runc does.
    config.readonly_rootfs = false;
    config.linux.readonly_root = c.readonly_rootfs;
    config.volume = volume;
    config.annotations = c.annotations.clone();
    config.limits = c.resources.cgroup_limits();
    config
}

/// The host cgroup of an OCI container's shim and pod process: the spec's `cgroupsPath` in
/// the cgroupfs form (`/libpod_parent/libpod-ID`, `/default/ID`, `kubepods/.../CID`), where
/// runc would put the container. The systemd form (`slice:prefix:name`) needs systemd to make
/// the scope; ember does not talk to systemd, so those pods keep `ember/<pod>` (`create` logs
/// why, [`host_cgroup_note`]).
pub fn host_cgroup(c: &ContainerConfig) -> Option<String> {
    let path = c.cgroups_path.as_ref()?.to_string_lossy().into_owned();
    (!path.contains(':') && crate::pod_vmm::cgroup::check_path(&path).is_ok())
        .then(|| path.trim_start_matches('/').to_string())
}

/// Why the spec's `cgroupsPath` is not joined ([`host_cgroup`] said no), if it has one.
pub fn host_cgroup_note(c: &ContainerConfig) -> Option<String> {
    let path = c.cgroups_path.as_ref()?.to_string_lossy().into_owned();
    let cgroup = crate::pod_vmm::cgroup::PARENT;
    if path.contains(':') {
        return Some(format!(
            "systemd cgroupsPath {path:?} not joined (no systemd driver): its pod's cgroup is {cgroup}/{}",
            c.id
        ));
    }
    crate::pod_vmm::cgroup::check_path(&path)
        .err()
        .map(|e| format!("{e}; not joined: its pod's cgroup is {cgroup}/{}", c.id))
}

/// The network namespace the spec joins by path, if any: the engine made it.
fn engine_netns(c: &ContainerConfig) -> Option<PathBuf> {
    c.namespaces
        .iter()
        .find(|n| matches!(n.typ.as_str(), "net" | "network"))
        .and_then(|n| n.path.clone())
}

/// How a container's host binds reach its VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostBinds {
    /// Shared live by virtio-fs ([`api::ContainerConfig::host_mounts`]).
    Shared,
    /// Copied onto the container's volume disk ([`stage_volumes`]): binds from the volume.
    Volume,
    /// Left out (a host agent's container sees what its mounts say).
    Dropped,
}

/// The spec's mounts in their order: those a guest can make, and (with
/// [`HostBinds::Volume`]) the host binds as binds from the volume disk.
fn spec_mounts(c: &ContainerConfig, binds: HostBinds) -> Vec<Mount> {
    let mut bind_no = 0;
    c.mounts
        .iter()
        .filter_map(|m| {
            if host_bind(m) {
                let n = bind_no;
                bind_no += 1;
                return (binds == HostBinds::Volume).then(|| Mount {
                    destination: m.destination.to_string_lossy().into_owned(),
                    source: n.to_string(),
                    fstype: None,
                    options: m.options.clone(),
                    from_volume: true,
                    from_share: false,
                });
            }
            guest_mount(m)
        })
        .collect()
}

/// The host binds of `c` as virtio-fs host mounts, in the spec's order (after the spec's
/// guest mounts: a bind over a tmpfs the spec makes first is rare enough).
fn shared_binds(c: &ContainerConfig) -> Vec<api::HostMount> {
    host_binds(c)
        .map(|(_, m)| api::HostMount {
            source: m.source.clone().unwrap_or_default(),
            destination: m.destination.to_string_lossy().into_owned(),
            options: m.options.clone(),
        })
        .collect()
}

fn api_err(what: &'static str) -> impl FnOnce(api::Error) -> SandboxError {
    move |e| SandboxError::failed(what, e)
}

/// An OCI container: container `id` of pod `pod`, through the pod library.
pub struct PodSandbox {
    rt: Runtime,
    pod: String,
    id: String,
    /// The pod is the container's own (not a CRI sandbox's that it joined): it goes with it.
    owns_pod: bool,
    relays: Mutex<Option<Relays>>,
    released: Mutex<bool>,
}

impl PodSandbox {
    /// The sandbox of container `id`, created in running pod `pod`, with its stdio attached.
    pub fn attach(
        rt: Runtime,
        pod: &str,
        owns_pod: bool,
        id: &str,
        stdio: Stdio,
    ) -> Result<PodSandbox, SandboxError> {
        let sb = PodSandbox {
            rt,
            pod: pod.to_string(),
            id: id.to_string(),
            owns_pod,
            relays: Mutex::new(None),
            released: Mutex::new(false),
        };
        match Relays::attach(&sb.rt, pod, id, None, stdio) {
            Ok(relays) => {
                if let Ok(mut g) = sb.relays.lock() {
                    *g = Some(relays);
                }
                Ok(sb)
            }
            Err(e) => {
                sb.shutdown();
                Err(SandboxError::failed(
                    "Cannot attach to the container's stdio",
                    e,
                ))
            }
        }
    }

    /// The pod holding the container.
    pub fn pod(&self) -> &str {
        &self.pod
    }
}

impl Sandbox for PodSandbox {
    fn start(&self) -> Result<i32, SandboxError> {
        let info = self
            .rt
            .start_container(&self.pod, &self.id)
            .map_err(api_err("Cannot start the container"))?;
        Ok(info.pid.unwrap_or(0))
    }

    fn wait(&self) -> Result<i32, SandboxError> {
        let code = self
            .rt
            .wait_process(&self.pod, &self.id, None)
            .map_err(api_err("Waiting for the container failed"))?;
        let relays = self.relays.lock().ok().and_then(|mut g| g.take());
        if let Some(r) = relays {
            r.join();
        }
        Ok(code)
    }

    fn signal(&self, signal: i32, all: bool) -> Result<(), SandboxError> {
        self.rt
            .kill_container(&self.pod, &self.id, signal, all)
            .map_err(api_err("Cannot signal the container"))
    }

    fn signal_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError> {
        self.rt
            .kill_exec(&self.pod, &self.id, exec_id, signal)
            .map_err(api_err("Cannot signal the exec'd process"))
    }

    fn resize(&self, exec_id: Option<&str>, rows: u16, cols: u16) -> Result<(), SandboxError> {
        self.rt
            .resize_terminal(&self.pod, &self.id, exec_id, rows, cols)
            .map_err(api_err("Cannot resize the terminal"))
    }

    fn exec(
        &self,
        exec_id: &str,
        process: &ProcessConfig,
        stdio: Stdio,
        started: &mut dyn FnMut(i32),
    ) -> Result<i32, SandboxError> {
        let (exec_id, pid) = self
            .rt
            .exec_start(&self.pod, &self.id, Some(exec_id), process_spec(process))
            .map_err(api_err("Cannot exec the process"))?;
        let relays = Relays::attach(&self.rt, &self.pod, &self.id, Some(&exec_id), stdio)
            .map_err(api_err("Cannot attach to the process's stdio"))?;
        started(pid);
        let code = self
            .rt
            .wait_process(&self.pod, &self.id, Some(&exec_id))
            .map_err(api_err("Waiting for the exec'd process failed"))?;
        relays.join();
        Ok(code)
    }

    fn processes(&self) -> Result<Vec<(i32, String)>, SandboxError> {
        let list = self
            .rt
            .container_processes(&self.pod, &self.id)
            .map_err(api_err("Cannot list the container's processes"))?;
        Ok(list.into_iter().map(|p| (p.pid, p.cmd)).collect())
    }

    fn usage(&self) -> Result<Usage, SandboxError> {
        let s = self
            .rt
            .container_stats(&self.pod, &self.id)
            .map_err(api_err("Cannot read the container's statistics"))?;
        Ok(Usage {
            pids: s.pids,
            memory_bytes: s.memory_bytes,
            cpu_usec: s.cpu_usec,
        })
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.rt
            .pause_container(&self.pod, &self.id)
            .map(|_| ())
            .map_err(api_err("Cannot pause the container"))
    }

    fn resume(&self) -> Result<(), SandboxError> {
        self.rt
            .resume_container(&self.pod, &self.id)
            .map(|_| ())
            .map_err(api_err("Cannot resume the container"))
    }

    fn update(&self, limits: &agent::protocol::CgroupLimits) -> Result<(), SandboxError> {
        self.rt
            .update_container(&self.pod, &self.id, limits.clone())
            .map_err(api_err("Cannot update the container's limits"))
    }

    /// The container's own pod is deleted (its VM stopped at once: the pod's disks are this
    /// container's throw-away images); a member leaves its sandbox's pod (destroyed in the
    /// guest, its disks out of the slots).
    fn shutdown(&self) {
        let Ok(mut released) = self.released.lock() else {
            return;
        };
        if std::mem::replace(&mut *released, true) {
            return;
        }
        let r = if self.owns_pod {
            self.rt.delete_pod(&self.pod, true)
        } else {
            self.rt.delete_container(&self.pod, &self.id, true)
        };
        match r {
            Ok(()) | Err(api::Error::PodNotFound(_) | api::Error::ContainerNotFound { .. }) => {}
            Err(e) => log::warn!(
                "Cannot release container {} of pod {}: {}",
                self.id,
                self.pod,
                crate::error::report(&e)
            ),
        }
    }
}

/// File in the container's directory with the phases of its creation (for the benches).
pub const TIMINGS_FILE: &str = "timings.json";

/// Disk slots of a CRI sandbox's VM: each member container takes one for its rootfs and one
/// more when it has host binds.
pub const SANDBOX_DISK_SLOTS: u8 = 8;
/// Pod-config disk ids of a container's own pod: its rootfs and its copied host binds.
const ROOTFS_DISK: &str = "rootfs";
const VOLUME_DISK: &str = "volume";

/// Containers in microVMs through the pod library: the bundle's rootfs becomes an ext4 image;
/// a container without CRI annotations gets a pod of its own with that image as its first
/// disk (the VM boots in a detached ember process); the container is created in the pod with
/// everything the spec says.
///
/// A CRI sandbox (`io.kubernetes.cri.container-type: sandbox`) gets a pod with
/// [`SANDBOX_DISK_SLOTS`] empty disk slots; a member (`container`, with
/// `io.kubernetes.cri.sandbox-id`) is created in its sandbox's running pod: the pod library
/// puts its rootfs (and volume) images into free slots. Deleting a member empties its slots;
/// deleting the sandbox stops the VM.
#[derive(Clone)]
pub struct VmBackend {
    /// The state root (OCI containers' folders and `@pods`).
    pub root: PathBuf,
    /// What runs the pods (test equipment may ask for the host agent).
    pub machine: Machine,
    /// The engine's `--log` and format: the pod's VMM process logs there too.
    pub log: LogConfig,
    /// The pods' VMs run in this process (containerd's shim v2, the pod's process), not in
    /// pod processes of their own.
    pub hosts_vms: bool,
}

impl VmBackend {
    pub fn runtime(&self) -> Runtime {
        let rt = Runtime::new(&self.root);
        if self.hosts_vms {
            rt.hosting_vms()
        } else {
            rt
        }
    }

    /// Create (not start) the pod of a container that owns its VM (no CRI grouping, or a CRI
    /// sandbox), with `disks`.
    fn own_pod(
        &self,
        rt: &Runtime,
        settings: &RuntimeConfig,
        config: &ContainerConfig,
        disks: Vec<api::DiskConfig>,
        shared: bool,
    ) -> Result<(), SandboxError> {
        let h = &settings.hypervisor;
        let size = Sizing::for_resources(h, &config.resources);
        for note in &size.notes {
            log::warn!("container {}: {note}", config.id);
        }
        let mut log = self.log.clone();
        log.debug |= settings.runtime.debug;
        let disks = disks
            .into_iter()
            .map(|d| api::DiskConfig {
                rate_limit: h.disk_rate_limit(),
                ..d
            })
            .collect();
        let pod_config = api::PodConfig {
            kernel: h.kernel.clone(),
            initrd: h.initrd.clone(),
            extra_cmdline: h.extra_cmdline.clone(),
            mem_mib: size.mem_mib,
            vcpus: size.vcpus,
            disks,
            // Members' rootfs images go into slots; shared ones need none.
            disk_slots: match config.role {
                PodRole::Sandbox if !shared => SANDBOX_DISK_SLOTS,
                _ => 0,
            },
            annotations: config.annotations.clone(),
            start_timeout_secs: crate::timeouts::OCI_POD_START_SECS,
            // Disks are this container's throw-away images: nothing to flush first. A shared
            // rootfs gets the guest's last writes first.
            shutdown: if shared {
                Shutdown::Sync
            } else {
                Shutdown::Kill
            },
            // The engine's network namespace (podman's bridge, CRI's sandbox netns): the VM
            // gets its interface.
            network: self.network(settings, config),
            machine: self.machine.clone(),
            log,
            seccomp: h.seccomp.clone(),
            jail: h.jail,
            // Where runc would put the container (its shim is there too).
            cgroup: host_cgroup(config),
            agent_timeout_secs: settings
                .runtime
                .agent_timeout_secs
                .unwrap_or(api::PodConfig::default().agent_timeout_secs),
            ..api::PodConfig::default()
        };
        let mut pod_config = pod_config;
        if let Some(name) = &settings.runtime.template {
            match rt.template_fits(name, &pod_config) {
                Ok(()) => pod_config.template = Some(name.clone()),
                Err(why) => log::info!(
                    "container {}: not started from template {name} ({why}): booting",
                    config.id
                ),
            }
        }
        rt.create_pod(&config.id, pod_config)
            .map(|_| ())
            .map_err(api_err("Cannot create the container's pod"))
    }

    /// The engine's network namespace (podman's bridge, CRI's sandbox netns, what CNI
    /// configured between create and start) that the VM gets its interface from.
    fn network(&self, settings: &RuntimeConfig, config: &ContainerConfig) -> Option<NetworkConfig> {
        match self.machine {
            Machine::Vm => engine_netns(config).map(|netns| {
                let (rx, tx) = settings.hypervisor.net_rate_limits();
                NetworkConfig {
                    rx_rate_limit: rx,
                    tx_rate_limit: tx,
                    ..NetworkConfig::new(netns)
                }
            }),
            Machine::HostAgent { .. } => None,
        }
    }

    /// Everything of a create but the boot: the container's images, its own pod (created,
    /// not started) or its sandbox's running pod, and the container recorded in it (a
    /// member's created in the guest at once, since its pod runs).
    fn prepare(
        &self,
        rt: &Runtime,
        settings: &RuntimeConfig,
        config: &ContainerConfig,
        state_dir: &Path,
        phases: &mut Timings,
    ) -> Result<Prepared, SandboxError> {
        use crate::api::{disk, DiskConfig};
        let t0 = Instant::now();
        let (rootfs, binds, volume) = if let Machine::HostAgent { .. } = self.machine {
            // The agent runs on this host: the bundle's rootfs is its own directory. Host
            // binds are not carried (a host agent's container sees what its mounts say).
            let path = config.rootfs.to_string_lossy().into_owned();
            (RootfsConfig::GuestPath { path }, HostBinds::Dropped, None)
        } else if settings.runtime.rootfs == OciRootfs::VirtioFs {
            // Shared live: nothing to copy, whatever the image's size.
            // Writable: `root.readonly` is the agent's remount once the spec's mount points
            // are made, as runc does it.
            let rootfs = RootfsConfig::Share {
                path: config.rootfs.clone(),
                read_only: false,
            };
            (rootfs, HostBinds::Shared, None)
        } else {
            let image = state_dir.join("rootfs.ext4");
            disk::make_ext4(&config.rootfs, &image)
                .map_err(|e| SandboxError::failed("Cannot make the container's rootfs image", e))?;
            phases.since("rootfs_image", t0);
            let t = Instant::now();
            let volume_image = state_dir.join("volume.ext4");
            let has_volume = stage_volumes(config, &state_dir.join("volume-stage"), &volume_image)
                .map_err(|e| SandboxError::failed("Cannot carry the bind mounts into the VM", e))?;
            if has_volume {
                phases.since("volume_image", t);
            }
            let rootfs = RootfsConfig::Image {
                path: image,
                read_only: false,
            };
            let volume = has_volume.then_some(RootfsConfig::Image {
                path: volume_image,
                read_only: false,
            });
            (rootfs, HostBinds::Volume, volume)
        };
        let (pod, owns_pod, rootfs, volume) = match &config.role {
            // The pod library puts the images into free disk slots of the running VM.
            PodRole::Member { sandbox_id } => (sandbox_id.clone(), false, rootfs, volume),
            PodRole::Single | PodRole::Sandbox => {
                // The images are the pod's own disks, attached at boot.
                let mut disks = Vec::new();
                let mut as_disk = |id: &str, r: RootfsConfig| match r {
                    RootfsConfig::Image { path, read_only } => {
                        disks.push(DiskConfig {
                            id: id.to_string(),
                            path,
                            read_only,
                            rate_limit: None,
                        });
                        RootfsConfig::Disk { id: id.to_string() }
                    }
                    other => other,
                };
                let rootfs = as_disk(ROOTFS_DISK, rootfs);
                let volume = volume.map(|v| as_disk(VOLUME_DISK, v));
                let t = Instant::now();
                self.own_pod(rt, settings, config, disks, binds == HostBinds::Shared)?;
                phases.since("pod_create", t);
                (config.id.clone(), true, rootfs, volume)
            }
        };
        let t = Instant::now();
        let created = rt.create_container(
            &pod,
            &config.id,
            container_config(config, rootfs, binds, volume),
        );
        if let Err(e) = created {
            if owns_pod {
                let _ = rt.delete_pod(&pod, true);
            }
            return Err(SandboxError::failed(
                "Cannot create the container in its pod",
                e,
            ));
        }
        phases.since("container_create", t);
        Ok(Prepared { pod, owns_pod })
    }

    /// Boot what [`VmBackend::prepare`] made (a container's own pod starts, its container
    /// created in the guest with it) and attach the container's stdio.
    fn boot(
        &self,
        rt: Runtime,
        prepared: Prepared,
        id: &str,
        stdio: Stdio,
        phases: &mut Timings,
    ) -> Result<PodSandbox, SandboxError> {
        let Prepared { pod, owns_pod } = prepared;
        if owns_pod {
            let t = Instant::now();
            let started = rt
                .start_pod(&pod)
                .map_err(|e| SandboxError::failed("Cannot start the container's pod VM", e))
                .and_then(|info| {
                    // The pod starts what it recorded: a container the guest refused is
                    // stopped, and why is among the start's warnings.
                    match info.containers.iter().find(|c| c.id == id) {
                        Some(c) if c.state == api::State::Ready => Ok(info),
                        _ => Err(SandboxError::failed(
                            format!("Cannot create container {id} in its pod's VM"),
                            info.warnings.join("; "),
                        )),
                    }
                });
            match started {
                Ok(info) => {
                    phases.since("pod_start", t);
                    for p in &info.timings {
                        phases.0.push((format!("pod.{}", p.name), p.ms));
                    }
                }
                Err(e) => {
                    let _ = rt.delete_pod(&pod, true);
                    return Err(e);
                }
            }
        }
        let t = Instant::now();
        let sandbox = PodSandbox::attach(rt, &pod, owns_pod, id, stdio)?;
        phases.since("stdio_attach", t);
        Ok(sandbox)
    }
}

/// What [`VmBackend::prepare`] made: the container is in `pod` (its own when `owns_pod`).
struct Prepared {
    pod: String,
    owns_pod: bool,
}

/// Phases of a create (ms each), written to the container's [`TIMINGS_FILE`] for the benches.
#[derive(Default)]
struct Timings(Vec<(String, f64)>);

impl Timings {
    fn since(&mut self, name: &str, since: Instant) {
        self.0
            .push((name.to_string(), since.elapsed().as_secs_f64() * 1e3));
    }

    /// The phases a [`Backend::record`] wrote before (its create at start goes on from them).
    fn load(state_dir: &Path) -> Timings {
        let map: serde_json::Map<String, serde_json::Value> =
            std::fs::read(state_dir.join(TIMINGS_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        Timings(
            map.into_iter()
                .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                .collect(),
        )
    }

    fn write(self, state_dir: &Path) {
        let json: serde_json::Map<String, serde_json::Value> = self
            .0
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect();
        let _ = std::fs::write(
            state_dir.join(TIMINGS_FILE),
            serde_json::Value::Object(json).to_string(),
        );
    }
}

/// The pod config of a template for the OCI face's containers (`ember template create NAME
/// --oci`): what a container without resource limits gets (kernel, initrd, command line,
/// memory and vCPUs of the runtime configuration), with a placeholder NIC for the engine's
/// network its pods join.
pub fn oci_template_config(settings: &RuntimeConfig) -> api::PodConfig {
    let h = &settings.hypervisor;
    let size = Sizing::for_resources(h, &Default::default());
    api::PodConfig {
        kernel: h.kernel.clone(),
        initrd: h.initrd.clone(),
        extra_cmdline: h.extra_cmdline.clone(),
        mem_mib: size.mem_mib,
        vcpus: size.vcpus,
        start_timeout_secs: crate::timeouts::OCI_POD_START_SECS,
        net_placeholder: true,
        seccomp: h.seccomp.clone(),
        jail: h.jail,
        ..api::PodConfig::default()
    }
}

impl Backend for VmBackend {
    fn check_command(&self, config: &ContainerConfig) -> Result<(), String> {
        super::command::check(config)
    }

    fn detached(&self) -> Option<Box<dyn Backend + Send + Sync>> {
        Some(Box::new(self.clone()))
    }

    /// A container's own pod has no disk slots: a joiner needs its rootfs shared (virtio-fs,
    /// the default) or the host agent's directory.
    fn groups_by_namespace(&self) -> bool {
        matches!(self.machine, Machine::HostAgent { .. })
            || RuntimeConfig::load().is_ok_and(|s| s.runtime.rootfs == OciRootfs::VirtioFs)
    }

    fn cleanup(&self, id: &str) {
        let rt = self.runtime();
        if rt.pod_dir(id).is_dir() {
            let _ = rt.delete_pod(id, true);
        }
        // A member whose shim is gone: out of its sandbox's pod.
        for pod in rt.list_pods().unwrap_or_default() {
            if pod.containers.iter().any(|c| c.id == id) {
                let _ = rt.delete_container(&pod.id, id, true);
            }
        }
    }

    fn create(
        &self,
        config: &ContainerConfig,
        state_dir: &Path,
        stdio: Stdio,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        timed(
            state_dir,
            Timings::default(),
            "total",
            |phases, settings| {
                let rt = self.runtime();
                let prepared = self.prepare(&rt, settings, config, state_dir, phases)?;
                let sandbox = self.boot(rt, prepared, &config.id, stdio, phases)?;
                Ok(Box::new(sandbox) as Box<dyn Sandbox>)
            },
        )
    }

    fn record(&self, config: &ContainerConfig, state_dir: &Path) -> Result<(), SandboxError> {
        timed(
            state_dir,
            Timings::default(),
            "recorded",
            |phases, settings| {
                self.prepare(&self.runtime(), settings, config, state_dir, phases)
                    .map(|_| ())
            },
        )
    }

    fn create_recorded(
        &self,
        config: &ContainerConfig,
        state_dir: &Path,
        stdio: Stdio,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        let earlier = Timings::load(state_dir);
        timed(state_dir, earlier, "total_at_start", |phases, settings| {
            let rt = self.runtime();
            let prepared = Prepared {
                pod: config.id.clone(),
                owns_pod: true,
            };
            if engine_netns(config).is_some() {
                // The engine configured the container's namespace meanwhile (CNI): the VM
                // gets its interface, and the container the VM's network instead of one of
                // its own.
                let network = self.network(settings, config);
                let changed = rt.change_ready_pod(&prepared.pod, |pod, containers| {
                    pod.network = network;
                    if let Some(ns) = containers
                        .get_mut(&config.id)
                        .and_then(|c| c.namespaces.as_mut())
                    {
                        ns.retain(|n| *n != Namespace::Net);
                    }
                });
                if let Err(e) = changed {
                    let _ = rt.delete_pod(&prepared.pod, true);
                    return Err(SandboxError::failed(
                        "Cannot give the container's pod its network",
                        e,
                    ));
                }
            }
            let sandbox = self.boot(rt, prepared, &config.id, stdio, phases)?;
            Ok(Box::new(sandbox) as Box<dyn Sandbox>)
        })
    }
}

/// Runs `f` with the runtime configuration (read at every create, as Kata's shim reads its
/// configuration.toml) and `phases`, then adds `total` (how long it all took) and writes
/// them to the container's [`TIMINGS_FILE`].
fn timed<T>(
    state_dir: &Path,
    mut phases: Timings,
    total: &str,
    f: impl FnOnce(&mut Timings, &RuntimeConfig) -> Result<T, SandboxError>,
) -> Result<T, SandboxError> {
    let t0 = Instant::now();
    let settings = RuntimeConfig::load()
        .map_err(|e| SandboxError::failed("Cannot load the runtime configuration", e))?;
    let out = f(&mut phases, &settings)?;
    phases.since(total, t0);
    phases.write(state_dir);
    Ok(out)
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
                capabilities: Some(Box::new(agent::protocol::Capabilities {
                    bounding: vec!["CAP_KILL".into(), "CAP_NET_ADMIN".into()],
                    effective: vec!["CAP_NET_ADMIN".into()],
                    ..Default::default()
                })),
                oom_score_adj: Some(100),
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
            resources: Default::default(),
            linux: agent::protocol::LinuxSetup {
                sysctl: [("kernel.msgmax".to_string(), "4096".to_string())].into(),
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                root_propagation: Some("rprivate".into()),
                uid_mappings: vec![agent::protocol::IdMapping {
                    container_id: 0,
                    host_id: 100000,
                    size: 65536,
                }],
                ..Default::default()
            },
        }
    }

    #[test]
    fn podman_config_maps_to_what_a_guest_can_do() {
        let disk = RootfsConfig::Disk {
            id: "rootfs".into(),
        };
        let spec = container_config(&podman_like(), disk.clone(), HostBinds::Volume, None);
        assert_eq!(spec.rootfs, disk);
        // root.readonly: a remount after setup, not a read-only rootfs mount.
        assert!(spec.linux.readonly_root && !spec.readonly_rootfs);
        assert_eq!(spec.fstype.as_deref(), Some("ext4"));
        let dests: Vec<&str> = spec.mounts.iter().map(|m| m.destination.as_str()).collect();
        // /dev/mqueue is the spec's to make; /dev, /dev/pts, /proc, /sys are the agent's.
        assert_eq!(dests, ["/dev/mqueue", "/scratch", "/q"]);
        assert_eq!(spec.mounts[0].fstype.as_deref(), Some("mqueue"));
        assert_eq!(spec.mounts[1].fstype.as_deref(), Some("tmpfs"));
        assert_eq!(spec.mounts[1].options, ["nosuid"]);
        assert_eq!(
            spec.namespaces.unwrap(),
            [
                Namespace::Pid,
                Namespace::Net,
                Namespace::Ipc,
                Namespace::Uts,
                Namespace::Mount,
                Namespace::Cgroup,
                Namespace::User
            ]
        );
        // The user namespace's maps go to the agent as the spec gives them; with a user
        // namespace by path (not joined) they do not.
        assert_eq!(spec.linux.uid_mappings[0].host_id, 100000);
        let mut by_path = podman_like();
        for n in by_path.namespaces.iter_mut().filter(|n| n.typ == "user") {
            n.path = Some("/proc/1/ns/user".into());
        }
        let spec = container_config(&by_path, disk.clone(), HostBinds::Volume, None);
        assert!(!spec.namespaces.unwrap().contains(&Namespace::User));
        assert!(spec.linux.uid_mappings.is_empty());
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
        let caps = p.capabilities.as_ref().unwrap();
        assert_eq!(caps.bounding, ["CAP_KILL", "CAP_NET_ADMIN"]);
        assert_eq!(caps.effective, ["CAP_NET_ADMIN"]);
        assert!(caps.permitted.is_empty() && caps.ambient.is_empty());
        assert_eq!(p.oom_score_adj, Some(100));
        assert_eq!(spec.linux.sysctl["kernel.msgmax"], "4096");
        assert_eq!(spec.linux.masked_paths, ["/proc/kcore"]);
        assert_eq!(spec.linux.readonly_paths, ["/proc/sys"]);
        assert_eq!(spec.linux.root_propagation.as_deref(), Some("rprivate"));
    }

    #[test]
    fn no_capabilities_object_means_none_as_under_runc() {
        let mut c = podman_like();
        c.process.capabilities = None;
        let spec = container_config(&c, RootfsConfig::default(), HostBinds::Shared, None);
        assert_eq!(spec.process.capabilities, Some(Box::default()));
        // An exec'd process without its own keeps None: the agent gives it the init's.
        assert_eq!(process_spec(&c.process).capabilities, None);
    }

    #[test]
    fn a_cri_member_shares_its_sandboxs_namespaces_given_by_path() {
        let ns = |typ: &str, path: Option<&str>| NamespaceConfig {
            typ: typ.into(),
            path: path.map(PathBuf::from),
        };
        let mut c = podman_like();
        c.namespaces = vec![
            ns("pid", None),
            ns("mount", None),
            ns("network", Some("/var/run/netns/cni-1")),
            ns("ipc", Some("/proc/42/ns/ipc")),
            ns("uts", Some("/proc/42/ns/uts")),
            ns("user", Some("/proc/42/ns/user")),
        ];
        c.linux.uid_mappings = vec![agent::protocol::IdMapping {
            container_id: 0,
            host_id: 100000,
            size: 65536,
        }];
        // Not a member: nothing to share with (the host's namespaces cannot be joined).
        let spec = container_config(&c, RootfsConfig::default(), HostBinds::Shared, None);
        assert_eq!(spec.share, None);
        c.role = PodRole::Member {
            sandbox_id: "sb".into(),
        };
        let spec = container_config(&c, RootfsConfig::default(), HostBinds::Shared, None);
        assert_eq!(
            spec.share,
            Some(SharedNamespaces {
                container: "sb".into(),
                namespaces: vec![Namespace::Ipc, Namespace::Uts, Namespace::User],
            })
        );
        assert_eq!(
            spec.namespaces,
            Some(vec![Namespace::Pid, Namespace::Mount])
        );
        // The joined user namespace's maps are the sandbox's, not sent again.
        assert!(spec.linux.uid_mappings.is_empty());
        // The pod's hostname stays (the UTS namespace is the sandbox's).
        assert_eq!(spec.hostname, None);
    }

    #[test]
    fn empty_hostname_is_the_hosts_and_a_joined_uts_namespace_keeps_the_pods() {
        let host = host_hostname().unwrap();
        let mut c = podman_like();
        for empty in [None, Some(String::new())] {
            c.hostname = empty;
            let spec = container_config(&c, RootfsConfig::default(), HostBinds::Shared, None);
            assert_eq!(spec.hostname.as_deref(), Some(host.as_str()));
        }
        c.hostname = Some("h".into());
        c.namespaces = vec![NamespaceConfig {
            typ: "uts".into(),
            path: Some("/proc/1/ns/uts".into()),
        }];
        let spec = container_config(&c, RootfsConfig::default(), HostBinds::Shared, None);
        assert_eq!(spec.hostname, None);
        // No UTS namespace: the host's (the VM takes it).
        c.namespaces.clear();
        let spec = container_config(&c, RootfsConfig::default(), HostBinds::Shared, None);
        assert_eq!(spec.hostname.as_deref(), Some(host.as_str()));
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

        let rootfs = RootfsConfig::Disk {
            id: "rootfs".into(),
        };
        let volume = RootfsConfig::Disk {
            id: "volume".into(),
        };
        let spec = container_config(&c, rootfs.clone(), HostBinds::Volume, Some(volume.clone()));
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
        assert_eq!(spec.volume, Some(volume));
        // Without a volume disk the host binds are left out, as before.
        let spec = container_config(&c, rootfs, HostBinds::Volume, None);
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
    fn host_binds_are_shared_live_with_their_options() {
        let dir = crate::state::test_dir("oci-shared-binds");
        std::fs::write(dir.join("hosts"), "10.0.0.7 db\n").unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut c = podman_like();
        c.mounts = vec![
            mount("/proc", "proc"),
            bind("/etc/hosts", &dir.join("hosts"), &["rbind", "ro"]),
            bind("/dev/shm", &dir.join("data"), &["bind"]),
            bind("/missing", &dir.join("no-such"), &["bind"]),
            mount("/scratch", "tmpfs"),
            bind("/data", &dir.join("data"), &["rbind"]),
        ];
        c.resources.memory_limit = Some(1 << 30);
        let rootfs = RootfsConfig::Share {
            path: c.rootfs.clone(),
            read_only: c.readonly_rootfs,
        };
        let spec = container_config(&c, rootfs.clone(), HostBinds::Shared, None);
        assert_eq!(spec.rootfs, rootfs);
        let got: Vec<(&str, &Path, bool)> = spec
            .host_mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.source.as_path(), m.read_only()))
            .collect();
        assert_eq!(
            got,
            [
                ("/etc/hosts", dir.join("hosts").as_path(), true),
                ("/data", dir.join("data").as_path(), false)
            ]
        );
        // The guest's own mounts stay; no copies, no volume.
        let dests: Vec<&str> = spec.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(dests, ["/scratch"]);
        assert!(spec.mounts.iter().all(|m| !m.from_volume && !m.from_share));
        assert_eq!(spec.volume, None);
        assert_eq!(spec.limits.memory_max, Some(1 << 30));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_network_namespace_by_path_is_the_engines() {
        let mut c = podman_like();
        assert_eq!(engine_netns(&c), None);
        c.namespaces = vec![
            NamespaceConfig {
                typ: "pid".into(),
                path: None,
            },
            NamespaceConfig {
                typ: "network".into(),
                path: Some("/run/netns/cni-1".into()),
            },
        ];
        assert_eq!(engine_netns(&c), Some(PathBuf::from("/run/netns/cni-1")));
        // Joined by the VM, not made in the guest.
        let spec = container_config(&c, RootfsConfig::default(), HostBinds::Shared, None);
        assert_eq!(spec.namespaces.unwrap(), [Namespace::Pid]);
    }

    #[test]
    fn podmans_shm_bind_becomes_a_tmpfs_of_its_size() {
        let dir = crate::state::test_dir("oci-shm");
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).unwrap();
        let bind = MountConfig {
            destination: "/dev/shm".into(),
            typ: Some("bind".into()),
            source: Some(shm.clone()),
            options: vec!["bind".into(), "nosuid".into(), "noexec".into()],
        };
        // Not a tmpfs (the test dir): left to the agent.
        let on_tmpfs = nix::mount::mount(
            Some("tmpfs"),
            &shm,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64000k"),
        );
        let got = guest_mount(&bind);
        let _ = nix::mount::umount(&shm);
        match on_tmpfs {
            Ok(()) => {
                let m = got.expect("a tmpfs in its place");
                assert_eq!(m.fstype.as_deref(), Some("tmpfs"));
                assert_eq!(m.options, ["nosuid", "noexec", "mode=1777", "size=64000k"]);
            }
            Err(e) => println!("SKIPPED: the tmpfs half needs root ({e})"),
        }
        assert_eq!(guest_mount(&bind), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn systemd_style_cgroup_paths_are_not_passed() {
        let mut c = podman_like();
        c.cgroups_path = Some("machine.slice:libpod:abc".into());
        let rootfs = RootfsConfig::Disk {
            id: "rootfs".into(),
        };
        assert_eq!(
            container_config(&c, rootfs, HostBinds::Shared, None).cgroup_path,
            None
        );
    }
}
