//! Container operations: create, start, stop, delete, exec, status, kill, ps, wait.

use super::placement::{resolve_device, volume_owner};
use super::{agent_link, id, Error, Runtime};
use crate::config::RootfsConfig;
use crate::pod_vmm::control::PodAgent;
use crate::pod_vmm::{self, control};
use crate::state::{ContainerRecord, DiskOwner, LockKind, PodRecord, State};
use crate::timeouts::POD_END_GRACE;
use agent::client::AgentCalls;
use agent::protocol::{
    default_namespaces, ContainerSpec, ContainerState, ContainerStats, ErrorKind, LinuxSetup,
    Mount, ProcessInfo, ProcessSpec, RootfsSpec, StdioStream,
};
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::timeouts::CONTAINER_STOP_GRACE as STOP_GRACE;

/// What the API reports about a container.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerInfo {
    pub pod: String,
    pub id: String,
    pub state: State,
    /// Pid of its first process in the guest.
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub guest_device: Option<String>,
    pub rootfs: RootfsConfig,
    /// Its virtio-fs shares in the running VM (rootfs, host mounts).
    pub shares: Vec<String>,
    pub args: Vec<String>,
    pub created_unix: u64,
    /// Its last start was interrupted (its starter died, or could not record the outcome) and
    /// the agent could not be asked how it stands: its state is the one before that start.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
}

impl ContainerInfo {
    pub(crate) fn from_record(pod: &str, c: &ContainerRecord) -> ContainerInfo {
        ContainerInfo {
            pod: pod.to_string(),
            id: c.id.clone(),
            state: c.state,
            pid: c.pid,
            exit_code: c.exit_code,
            guest_device: c.guest_device.clone(),
            rootfs: c.config.rootfs.clone(),
            shares: c.shares.clone(),
            args: c.config.process.args.clone(),
            created_unix: c.created_unix,
            starting: c.starting,
        }
    }
}

/// Result of a finished `exec`.
#[derive(Clone, Debug, Serialize)]
pub struct ExecOutput {
    pub exec_id: String,
    pub pid: i32,
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

fn container_not_found(pod: &str, id: &str) -> Error {
    Error::ContainerNotFound {
        pod: pod.to_string(),
        id: id.to_string(),
    }
}

/// A container's rootfs or volume must name a file or directory that exists, or a disk the
/// pod config declares.
fn check_source(rec: &PodRecord, what: &str, source: &RootfsConfig) -> Result<(), Error> {
    match source {
        RootfsConfig::Image { path, .. } | RootfsConfig::Dir { path } if !path.exists() => Err(
            Error::Config(format!("{what} {} does not exist", path.display())),
        ),
        RootfsConfig::Dir { path } if !path.is_dir() => Err(Error::Config(format!(
            "{what} {} is not a directory (an image file is --rootfs-image)",
            path.display()
        ))),
        RootfsConfig::Image { path, .. } if path.is_dir() => Err(Error::Config(format!(
            "{what} {} is a directory, not an image file",
            path.display()
        ))),
        RootfsConfig::Disk { id } if !rec.config.disks.iter().any(|d| d.id == *id) => Err(
            Error::Config(format!("the pod config declares no disk {id}")),
        ),
        RootfsConfig::Share { path, .. } if !path.is_absolute() || !path.is_dir() => {
            Err(Error::Config(format!(
                "{what} {} is not an absolute path to a directory",
                path.display()
            )))
        }
        _ => Ok(()),
    }
}

/// Host mounts must name an absolute destination and an existing host directory or file.
fn check_host_mounts(mounts: &[crate::config::HostMount]) -> Result<(), Error> {
    for m in mounts {
        let md = std::fs::metadata(&m.source).ok();
        if !m.source.is_absolute() || !md.is_some_and(|md| md.is_dir() || md.is_file()) {
            return Err(Error::Config(format!(
                "host mount source {} is not an absolute path to a directory or file",
                m.source.display()
            )));
        }
        if !m.destination.starts_with('/') {
            return Err(Error::Config(format!(
                "host mount destination {:?} is not absolute",
                m.destination
            )));
        }
    }
    Ok(())
}

/// virtio-fs share names of container `cid`: its rootfs, and its host mount number `n`.
fn rootfs_share(cid: &str) -> String {
    format!("{cid}.rootfs")
}
fn mount_share(cid: &str, n: usize) -> String {
    format!("{cid}.m{n}")
}

pub(crate) fn require_running(rec: &PodRecord, action: &'static str) -> Result<(), Error> {
    if rec.state != State::Running {
        return Err(Error::PodNotRunning {
            id: rec.id.clone(),
            state: rec.state,
            action,
        });
    }
    Ok(())
}

/// Exports what container `cid` takes from the host by virtio-fs (its `Share` rootfs, its host
/// mounts) in the pod's running VM, recording each name in `shares` as it goes; a share the
/// container already has (a retried create) is not added twice.
fn add_shares(
    dir: &Path,
    cid: &str,
    cfg: &super::ContainerConfig,
    shares: &mut Vec<String>,
) -> Result<(), Error> {
    let mut wanted = Vec::new();
    if let RootfsConfig::Share { path, read_only } = &cfg.rootfs {
        wanted.push((rootfs_share(cid), path.clone(), *read_only));
    }
    for (n, m) in cfg.host_mounts.iter().enumerate() {
        wanted.push((mount_share(cid, n), m.source.clone(), m.read_only()));
    }
    for (name, path, read_only) in wanted {
        if shares.contains(&name) {
            continue;
        }
        control::request(
            &dir.join(pod_vmm::CONTROL_SOCKET),
            &control::Request::AddShare {
                name: name.clone(),
                path,
                read_only,
            },
            control::DEFAULT_TIMEOUT,
        )
        .map_err(Error::Control)?;
        shares.push(name);
    }
    Ok(())
}

/// Withdraws virtio-fs shares from the pod's running VM (best effort: a VM that is gone has
/// none left, which is no warning: a failed start's cleanup would otherwise end its output
/// with it, and engines read the runtime's last words as its error).
fn remove_shares(dir: &Path, shares: &[String]) {
    for name in shares {
        match control::request(
            &dir.join(pod_vmm::CONTROL_SOCKET),
            &control::Request::RemoveShare { name: name.clone() },
            control::DEFAULT_TIMEOUT,
        ) {
            Ok(_) => {}
            Err(e) if e.is_gone() => {
                log::debug!("Share {name}: the pod's VMM process is gone, and the share with it")
            }
            Err(e) => log::warn!("Cannot withdraw share {name}: {}", crate::error::report(&e)),
        }
    }
}

impl Runtime {
    /// Record a container in a pod. In a running pod it is created in the guest at once: a
    /// rootfs image (or a directory, packed into one) goes into a free disk slot of the VM
    /// ([`super::PodConfig::disk_slots`]); otherwise it is created at the pod's next start.
    pub fn create_container(
        &self,
        pod: &str,
        cid: &str,
        config: super::ContainerConfig,
    ) -> Result<ContainerInfo, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        if config.process.args.is_empty() {
            return Err(Error::Config("the container's process has no args".into()));
        }
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        if rec.containers.contains_key(cid) {
            return Err(Error::ContainerExists {
                pod: pod.to_string(),
                id: cid.to_string(),
            });
        }
        check_source(&rec, "rootfs", &config.rootfs)?;
        check_host_mounts(&config.host_mounts)?;
        if let Some(volume) = &config.volume {
            if !matches!(
                volume,
                RootfsConfig::Image { .. } | RootfsConfig::Disk { .. }
            ) {
                return Err(Error::Config("a volume is an image or a pod disk".into()));
            }
            check_source(&rec, "volume", volume)?;
        }
        let live = match rec.state {
            State::Running => true,
            State::Paused => {
                return Err(Error::PodNotRunning {
                    id: pod.to_string(),
                    state: rec.state,
                    action: "create a container",
                })
            }
            State::Ready | State::Stopped => false,
        };
        let vowner = volume_owner(cid);
        let mut guest_device = resolve_device(&rec.disks, cid, &config.rootfs);
        let mut volume_device = config
            .volume
            .as_ref()
            .and_then(|v| resolve_device(&rec.disks, &vowner, v));
        let mut in_slots = false;
        let needs_disk = !matches!(
            config.rootfs,
            RootfsConfig::GuestPath { .. } | RootfsConfig::Share { .. }
        );
        if live && needs_disk && guest_device.is_none() {
            // Into a disk slot of the running VM.
            let (image, read_only) = match &config.rootfs {
                RootfsConfig::Image { path, read_only } => (path.clone(), *read_only),
                RootfsConfig::Dir { path } => (self.rootfs_image(&dir, cid, path)?, false),
                RootfsConfig::Disk { .. }
                | RootfsConfig::GuestPath { .. }
                | RootfsConfig::Share { .. } => {
                    return Err(Error::Config(format!(
                        "pod {pod} has no disk for this rootfs"
                    )))
                }
            };
            let owner = DiskOwner::Container(cid.to_string());
            guest_device = Some(Self::insert_disk_locked(
                &dir, &mut rec, &image, read_only, owner,
            )?);
            in_slots = true;
        }
        if let (true, None, Some(RootfsConfig::Image { path, read_only })) =
            (live, &volume_device, &config.volume)
        {
            let owner = DiskOwner::Container(vowner.clone());
            match Self::insert_disk_locked(&dir, &mut rec, path, *read_only, owner) {
                Ok(dev) => volume_device = Some(dev),
                Err(e) => {
                    let _ = Self::eject_disk_locked(
                        &dir,
                        &mut rec,
                        &DiskOwner::Container(cid.to_string()),
                    );
                    let _ = Self::store(&dir, &rec);
                    return Err(e);
                }
            }
            in_slots = true;
        }
        rec.containers.insert(
            cid.to_string(),
            ContainerRecord {
                id: cid.to_string(),
                state: State::Ready,
                config,
                created_unix: crate::state::now_unix(),
                guest_device: if live { guest_device } else { None },
                volume_device: if live { volume_device } else { None },
                in_agent: false,
                exit_code: None,
                starting: false,
                pid: None,
                shares: Vec::new(),
            },
        );
        if live {
            if let Err(e) = self.agent_create(&dir, &mut rec, cid) {
                // Not created anywhere: forget it.
                if let Some(c) = rec.containers.remove(cid) {
                    remove_shares(&dir, &c.shares);
                }
                if in_slots {
                    for owner in [cid.to_string(), vowner] {
                        let _ =
                            Self::eject_disk_locked(&dir, &mut rec, &DiskOwner::Container(owner));
                    }
                    let _ = Self::store(&dir, &rec);
                }
                return Err(e);
            }
        }
        Self::store(&dir, &rec)?;
        let c = rec
            .containers
            .get(cid)
            .ok_or_else(|| container_not_found(pod, cid))?;
        Ok(ContainerInfo::from_record(pod, c))
    }

    /// Create the container in the guest (the agent prepares it; its process waits for start).
    pub(crate) fn agent_create(
        &self,
        dir: &Path,
        rec: &mut PodRecord,
        cid: &str,
    ) -> Result<(), Error> {
        let c = rec
            .containers
            .get_mut(cid)
            .ok_or_else(|| container_not_found(&rec.id, cid))?;
        let shared = add_shares(dir, cid, &c.config, &mut c.shares);
        let cfg = &c.config;
        shared?;
        let rootfs = match (&cfg.rootfs, &c.guest_device) {
            (RootfsConfig::GuestPath { path }, _) => RootfsSpec::Path {
                path: path.clone(),
                read_only: false,
            },
            (RootfsConfig::Share { read_only, .. }, _) => RootfsSpec::Share {
                name: rootfs_share(cid),
                read_only: *read_only || cfg.readonly_rootfs,
            },
            (rootfs, Some(dev)) => RootfsSpec::BlockDevice {
                path: dev.clone(),
                fstype: cfg.fstype.clone().unwrap_or_else(|| "ext4".into()),
                read_only: cfg.readonly_rootfs
                    || matches!(
                        rootfs,
                        RootfsConfig::Image {
                            read_only: true,
                            ..
                        }
                    ),
            },
            (_, None) => {
                return Err(Error::Config(format!(
                    "container {cid} has no disk attached"
                )))
            }
        };
        let mut mounts = cfg.mounts.clone();
        mounts.extend(cfg.host_mounts.iter().enumerate().map(|(n, m)| {
            let mut options = m.options.clone();
            if !options.iter().any(|o| o == "bind" || o == "rbind") {
                options.push("bind".into());
            }
            Mount {
                destination: m.destination.clone(),
                source: mount_share(cid, n),
                fstype: None,
                options,
                from_volume: false,
                from_share: true,
            }
        }));
        let spec = ContainerSpec {
            rootfs,
            mounts,
            hostname: cfg.hostname.clone(),
            namespaces: cfg.namespaces.clone().unwrap_or_else(default_namespaces),
            process: cfg.process.clone(),
            cgroup_path: cfg.cgroup_path.clone(),
            volume: c.volume_device.as_ref().map(|dev| RootfsSpec::BlockDevice {
                path: dev.clone(),
                fstype: "ext4".into(),
                read_only: false,
            }),
            limits: cfg.limits.clone(),
            // The root is remounted read-only after setup, as runc does, whatever the
            // rootfs device's own mode.
            linux: LinuxSetup {
                readonly_root: cfg.linux.readonly_root || cfg.readonly_rootfs,
                ..cfg.linux.clone()
            },
            share: cfg.share.clone(),
        };
        agent_call(dir)
            .create_container(cid, spec)
            .map_err(Error::agent("CreateContainer"))?;
        c.in_agent = true;
        Ok(())
    }

    /// Look up a container of a locked pod.
    fn container<'a>(rec: &'a mut PodRecord, cid: &str) -> Result<&'a mut ContainerRecord, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let pod = rec.id.clone();
        rec.containers
            .get_mut(cid)
            .ok_or_else(|| container_not_found(&pod, cid))
    }

    /// Start a created container's process.
    pub fn start_container(&self, pod: &str, cid: &str) -> Result<ContainerInfo, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        require_running(&rec, "start a container")?;
        if Self::container(&mut rec, cid)?.starting && reconcile_start(&dir, &mut rec, cid) {
            // The last start got through to the agent but not to the record: it is recorded.
            Self::store(&dir, &rec)?;
            return Ok(ContainerInfo::from_record(
                pod,
                Self::container(&mut rec, cid)?,
            ));
        }
        let c = Self::container(&mut rec, cid)?;
        if c.state != State::Ready {
            return Err(Error::ContainerState {
                action: "start",
                id: cid.to_string(),
                source: crate::state::TransitionError {
                    from: c.state,
                    to: State::Running,
                },
            });
        }
        // The intent first: a record that cannot be written (a full or read-only state root)
        // fails the start before the guest changes.
        c.starting = true;
        Self::store(&dir, &rec)?;
        crate::pod_vmm::proc::pause_at("container-start:intent");
        let started = agent_call(&dir)
            .start_container(cid)
            .map_err(Error::agent("StartContainer"));
        let c = Self::container(&mut rec, cid)?;
        c.starting = false;
        match started {
            Ok(pid) => {
                c.state = State::Running;
                c.pid = Some(pid);
            }
            Err(e) => {
                // Not started: the intent goes (best effort; left behind, the next start asks
                // the agent).
                let _ = Self::store(&dir, &rec);
                return Err(e);
            }
        }
        let info = ContainerInfo::from_record(pod, c);
        Self::store(&dir, &rec)?;
        Ok(info)
    }

    /// Stop a container: SIGTERM to all its processes, SIGKILL after a grace period, and
    /// record how its first process ended.
    pub fn stop_container(&self, pod: &str, cid: &str) -> Result<ContainerInfo, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        let pod_running = rec.state == State::Running;
        let c = Self::container(&mut rec, cid)?;
        c.state
            .check(State::Stopped)
            .map_err(|source| Error::ContainerState {
                action: "stop",
                id: cid.to_string(),
                source,
            })?;
        if pod_running && c.in_agent && c.state == State::Running {
            c.exit_code = Some(stop_in_agent(&dir, cid)?);
        }
        c.state = State::Stopped;
        let info = ContainerInfo::from_record(pod, c);
        Self::store(&dir, &rec)?;
        Ok(info)
    }

    /// Delete a ready or stopped container (with `force`, also a running one).
    pub fn delete_container(&self, pod: &str, cid: &str, force: bool) -> Result<(), Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        let pod_running = rec.state == State::Running;
        let c = Self::container(&mut rec, cid)?;
        if matches!(c.state, State::Running | State::Paused) && !force {
            return Err(Error::ContainerRunning(cid.to_string()));
        }
        if pod_running && c.in_agent {
            let mut client = agent_call(&dir);
            match client.destroy_container(cid) {
                Ok(()) => {}
                Err(e) if e.agent_kind() == Some(ErrorKind::NotFound) => {}
                Err(e) => return Err(Error::agent("DestroyContainer")(e)),
            }
        }
        if let Some(c) = rec.containers.remove(cid) {
            if pod_running {
                remove_shares(&dir, &c.shares);
            }
        }
        let mut in_slot = false;
        if pod_running {
            for owner in [cid.to_string(), volume_owner(cid)] {
                in_slot |= Self::eject_disk_locked(&dir, &mut rec, &DiskOwner::Container(owner))?;
            }
        }
        if !pod_running || in_slot {
            // Its packed rootfs image is only needed while attached.
            let _ = std::fs::remove_file(dir.join("disks").join(format!("{cid}.ext4")));
        }
        Self::store(&dir, &rec)
    }

    /// Status of one container (notices a process that ended).
    pub fn container_status(&self, pod: &str, cid: &str) -> Result<ContainerInfo, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let info = self.pod_status(pod)?;
        info.containers
            .into_iter()
            .find(|c| c.id == cid)
            .ok_or_else(|| container_not_found(pod, cid))
    }

    /// Send `signal` to the container's first process, or with `all` to every process in it.
    /// A container created in the guest but not started yet can be signalled too (runc's
    /// `kill` of a created container).
    pub fn kill_container(
        &self,
        pod: &str,
        cid: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Read)?;
        require_running(&rec, "signal a container")?;
        let c = Self::container(&mut rec, cid)?;
        let created = c.state == State::Ready && c.in_agent;
        if c.state != State::Running && !created {
            return Err(Error::ContainerNotRunning {
                id: cid.to_string(),
                state: c.state,
                action: "signal it",
            });
        }
        let mut client = agent_call(&dir);
        client
            .signal(cid, None, signal, all)
            .map_err(Error::agent("Signal"))
    }

    /// Send `signal` to process `exec_id` that [`Runtime::exec_start`] started in the
    /// container.
    pub fn kill_exec(&self, pod: &str, cid: &str, exec_id: &str, signal: i32) -> Result<(), Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        id::validate("exec", exec_id).map_err(Error::Id)?;
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Read)?;
        require_running(&rec, "signal a process")?;
        Self::container(&mut rec, cid)?;
        let mut client = agent_call(&dir);
        client
            .signal(cid, Some(exec_id), signal, false)
            .map_err(Error::agent("Signal"))
    }

    /// What the container uses now, as the agent counts it in the guest (the container's
    /// cgroup there): processes, memory, CPU time.
    pub fn container_stats(&self, pod: &str, cid: &str) -> Result<ContainerStats, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Read)?;
        require_running(&rec, "read a container's statistics")?;
        Self::container(&mut rec, cid)?;
        let mut client = agent_call(&dir);
        let stats = client.stats().map_err(Error::agent("Stats"))?;
        stats
            .containers
            .into_iter()
            .find(|s| s.id == cid)
            .ok_or_else(|| Error::Config(format!("container {cid} is not in the guest")))
    }

    /// New cgroup limits for a container of a running pod (`runc update`): those set are
    /// written into its cgroup in the guest, the others kept. The VM's own size stays: a
    /// memory limit above it bounds nothing more.
    pub fn update_container(
        &self,
        pod: &str,
        cid: &str,
        limits: agent::protocol::CgroupLimits,
    ) -> Result<(), Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        self.guest_call(pod, cid, "update a container's limits", |a| {
            a.update_container(cid, limits)
                .map_err(Error::agent("UpdateContainer"))
        })
    }

    /// Set the window size of the pty of a terminal process of the container (`exec_id`
    /// `None`: its first process), as the engine's terminal has it.
    pub fn resize_terminal(
        &self,
        pod: &str,
        cid: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        if let Some(e) = exec_id {
            id::validate("exec", e).map_err(Error::Id)?;
        }
        self.guest_call(pod, cid, "resize a terminal", |a| {
            a.resize_terminal(cid, exec_id, rows, cols)
                .map_err(Error::agent("ResizeTerminal"))
        })
    }

    /// Freeze a running container's processes (cgroup freezer in the guest).
    pub fn pause_container(&self, pod: &str, cid: &str) -> Result<ContainerInfo, Error> {
        self.freeze(pod, cid, State::Paused)
    }

    /// Thaw a paused container.
    pub fn resume_container(&self, pod: &str, cid: &str) -> Result<ContainerInfo, Error> {
        self.freeze(pod, cid, State::Running)
    }

    fn freeze(&self, pod: &str, cid: &str, to: State) -> Result<ContainerInfo, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let (from, action, call) = match to {
            State::Paused => (State::Running, "pause", "Pause"),
            _ => (State::Paused, "resume", "Resume"),
        };
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        require_running(&rec, "pause or resume a container")?;
        let c = Self::container(&mut rec, cid)?;
        if c.state != from {
            return Err(Error::ContainerState {
                action,
                id: cid.to_string(),
                source: crate::state::TransitionError { from: c.state, to },
            });
        }
        let mut client = agent_call(&dir);
        let r = if to == State::Paused {
            client.pause(cid)
        } else {
            client.resume(cid)
        };
        r.map_err(Error::agent(call))?;
        c.state = to;
        let info = ContainerInfo::from_record(pod, c);
        Self::store(&dir, &rec)?;
        Ok(info)
    }

    /// Processes of a running container.
    pub fn container_processes(&self, pod: &str, cid: &str) -> Result<Vec<ProcessInfo>, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        self.guest_call(pod, cid, "list processes", |a| {
            a.process_list(cid).map_err(Error::agent("ProcessList"))
        })
    }

    /// Start a process in a running container; returns its exec id and guest pid. Read its
    /// output with [`Runtime::attach`] and its end with [`Runtime::wait_process`].
    pub fn exec_start(
        &self,
        pod: &str,
        cid: &str,
        exec_id: Option<&str>,
        process: ProcessSpec,
    ) -> Result<(String, i32), Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let exec_id = match exec_id {
            Some(e) => {
                id::validate("exec", e).map_err(Error::Id)?;
                e.to_string()
            }
            None => new_exec_id(),
        };
        if process.args.is_empty() {
            return Err(Error::Config("the process has no args".into()));
        }
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Read)?;
        require_running(&rec, "exec")?;
        let c = Self::container(&mut rec, cid)?;
        if c.state != State::Running {
            return Err(Error::ContainerNotRunning {
                id: cid.to_string(),
                state: c.state,
                action: "exec in it",
            });
        }
        let mut client = agent_call(&dir);
        crate::pod_vmm::proc::pause_at("exec:call");
        let pid = client
            .exec(cid, &exec_id, process)
            .map_err(Error::agent("Exec"))?;
        Ok((exec_id, pid))
    }

    /// A raw stdio stream of a container's process (`exec_id` `None`: its first process).
    pub fn attach(
        &self,
        pod: &str,
        cid: &str,
        exec_id: Option<&str>,
        stream: StdioStream,
    ) -> Result<std::os::unix::net::UnixStream, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Read)?;
        require_running(&rec, "attach")?;
        Self::container(&mut rec, cid)?;
        agent_link::attach(&dir, cid, exec_id, stream).map_err(|source| Error::Agent {
            call: "AttachStdio",
            source,
        })
    }

    /// Wait until a process of the container ends; returns its exit code (128+signal when
    /// killed). Waits without a time limit and without holding the pod's lock; fails when the
    /// pod's VM goes away.
    pub fn wait_process(&self, pod: &str, cid: &str, exec_id: Option<&str>) -> Result<i32, Error> {
        id::validate("container", cid).map_err(Error::Id)?;
        let dir = {
            let (_lock, dir, mut rec) = self.open(pod, LockKind::Read)?;
            Self::container(&mut rec, cid)?;
            if let (None, State::Stopped, Some(code)) = (
                exec_id,
                rec.state,
                rec.containers.get(cid).and_then(|c| c.exit_code),
            ) {
                return Ok(code);
            }
            require_running(&rec, "wait")?;
            dir
        };
        let mut client = agent_link::connect(&dir, None).map_err(|source| Error::Agent {
            call: "Wait",
            source,
        })?;
        let status = match client.wait(cid, exec_id) {
            Ok(s) => s,
            // The agent answered: its error is the answer.
            Err(e) if e.agent_kind().is_some() => return Err(Error::agent("Wait")(e)),
            // The connection broke: the pod may have ended under it.
            Err(e) => {
                return Err(self
                    .ended_meanwhile(pod, "Wait")
                    .unwrap_or_else(|| Error::agent("Wait")(e)))
            }
        };
        if exec_id.is_none() {
            self.record_exit(pod, cid, status.code);
        }
        Ok(status.code)
    }

    /// A wait on the agent broke: when the pod was stopped meanwhile (its VM ended, its agent
    /// went silent), that is the error, with the reason its record gives. The pod process
    /// records the end just after the VM is gone: looked for during [`POD_END_GRACE`].
    fn ended_meanwhile(&self, pod: &str, call: &'static str) -> Option<Error> {
        let deadline = std::time::Instant::now() + POD_END_GRACE;
        let ended = |reason: String| Error::PodEnded {
            pod: pod.to_string(),
            call,
            reason,
        };
        loop {
            match self.open(pod, LockKind::Read) {
                Ok((_lock, _dir, rec)) if rec.state == State::Stopped => {
                    return Some(ended(
                        rec.stop_reason
                            .unwrap_or_else(|| "no reason recorded".into()),
                    ));
                }
                // Deleted with its VM (the owner of a pod that others joined exited).
                Err(Error::PodNotFound(_)) => return Some(ended("it was deleted".into())),
                _ => {}
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The container's first process ended with `code`: it is stopped (best effort; `status`
    /// notices it anyway).
    fn record_exit(&self, pod: &str, cid: &str, code: i32) {
        let Ok((_lock, dir, mut rec)) = self.open(pod, LockKind::Write) else {
            return;
        };
        if let Some(c) = rec.containers.get_mut(cid) {
            if matches!(c.state, State::Running | State::Paused) {
                c.state = State::Stopped;
                c.exit_code = Some(code);
                if let Err(e) = Self::store(&dir, &rec) {
                    log::warn!(
                        "Cannot record the exit of {cid}: {}",
                        crate::error::report(&e)
                    );
                }
            }
        }
    }

    /// Run a process in a running container to its end and collect its output (stdin is
    /// empty).
    pub fn exec(&self, pod: &str, cid: &str, process: ProcessSpec) -> Result<ExecOutput, Error> {
        let (exec_id, pid) = self.exec_start(pod, cid, None, process)?;
        let eid = Some(exec_id.as_str());
        // The relay writes into pipes whose other ends are read here.
        let io = |what: &str| {
            let what = what.to_string();
            move |e: nix::Error| Error::Io {
                what,
                source: std::io::Error::from(e),
            }
        };
        let (out_r, out_w) = nix::unistd::pipe().map_err(io("Cannot make a pipe"))?;
        let (err_r, err_w) = nix::unistd::pipe().map_err(io("Cannot make a pipe"))?;
        let null = std::fs::File::open("/dev/null").map_err(|source| Error::Io {
            what: "Cannot open /dev/null".into(),
            source,
        })?;
        let stdio = super::Stdio {
            stdin: null.into(),
            stdout: out_w,
            stderr: err_w,
        };
        let relays = super::Relays::attach(self, pod, cid, eid, stdio)?;
        let read_all = |fd: std::os::fd::OwnedFd| {
            move || {
                let mut buf = Vec::new();
                let _ = std::fs::File::from(fd).read_to_end(&mut buf);
                buf
            }
        };
        let err_reader = crate::logging::thread("exec-stderr", read_all(err_r));
        let stdout = read_all(out_r)();
        let stderr = err_reader.join().unwrap_or_default();
        relays.join();
        let exit_code = self.wait_process(pod, cid, eid)?;
        Ok(ExecOutput {
            exec_id,
            pid,
            exit_code,
            stdout,
            stderr,
        })
    }

    /// Containers the agent reports as stopped although the record says running, with their
    /// exit codes. Errors (agent unreachable) count as "nothing known".
    pub(crate) fn exited_containers(&self, dir: &Path, rec: &PodRecord) -> Vec<(String, i32)> {
        let running: Vec<&str> = rec
            .containers
            .values()
            .filter(|c| c.state == State::Running && c.in_agent)
            .map(|c| c.id.as_str())
            .collect();
        if running.is_empty() {
            return Vec::new();
        }
        let mut client = PodAgent::new(dir, Duration::from_secs(5));
        let Ok(stats) = client.stats() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in stats.containers {
            if s.state == ContainerState::Stopped && running.contains(&s.id.as_str()) {
                if let Ok(status) = client.wait(&s.id, None) {
                    out.push((s.id, status.code));
                }
            }
        }
        out
    }
}

/// The pod's agent for `call`, with the ordinary call timeout: through the pod process, which
/// makes the call ([`crate::pod_vmm::control::PodAgent`]).
fn agent_call(dir: &Path) -> PodAgent {
    PodAgent::new(dir, agent_link::CALL_TIMEOUT)
}

impl Runtime {
    /// `call` on the agent of running pod `pod` about its container `cid`, which the guest
    /// holds (refused otherwise, with `action` in the error), under the pod's shared lock.
    fn guest_call<T>(
        &self,
        pod: &str,
        cid: &str,
        action: &'static str,
        call: impl FnOnce(&mut PodAgent) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Read)?;
        require_running(&rec, action)?;
        in_guest(Self::container(&mut rec, cid)?)?;
        call(&mut agent_call(&dir))
    }
}

/// Refuses a container the agent does not hold (created in the record only).
fn in_guest(c: &ContainerRecord) -> Result<(), Error> {
    if c.in_agent {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "container {} is not in the guest",
            c.id
        )))
    }
}

/// How the agent reports each of the pod's containers; `None` when it cannot be asked.
fn agent_states(dir: &Path) -> Option<Vec<(String, ContainerState)>> {
    let stats = agent_call(dir).stats().ok()?;
    Some(
        stats
            .containers
            .into_iter()
            .map(|s| (s.id, s.state))
            .collect(),
    )
}

/// What the agent says of the containers whose start intent was left in the record (their
/// starter was killed, or could not record the outcome), asked only when there are some:
/// `(container, its state in the agent)`, `None` where the agent cannot tell.
pub(crate) fn interrupted_starts(
    dir: &Path,
    rec: &PodRecord,
) -> Vec<(String, Option<ContainerState>)> {
    let ids: Vec<&String> = rec
        .containers
        .values()
        .filter(|c| c.starting)
        .map(|c| &c.id)
        .collect();
    if ids.is_empty() || rec.state != State::Running {
        return Vec::new();
    }
    let states = agent_states(dir).unwrap_or_default();
    ids.into_iter()
        .map(|id| {
            let state = states.iter().find(|(s, _)| s == id).map(|(_, st)| *st);
            (id.clone(), state)
        })
        .collect()
}

/// Sets in `rec` what [`interrupted_starts`] found: a container the agent started is running
/// (`status` then notices it if it already ended), one it only created is ready again. One
/// the agent cannot tell about keeps its intent (`ContainerInfo::starting`) and gets a note.
/// Returns whether `rec` changed.
pub(crate) fn settle_starts(
    rec: &mut PodRecord,
    found: &[(String, Option<ContainerState>)],
    notes: &mut Vec<String>,
) -> bool {
    let mut changed = false;
    for (cid, state) in found {
        let Some(c) = rec.containers.get_mut(cid).filter(|c| c.starting) else {
            continue;
        };
        match state {
            Some(ContainerState::Running | ContainerState::Paused | ContainerState::Stopped) => {
                c.state = State::Running;
            }
            Some(_) => {}
            None => {
                notes.push(format!(
                    "container {cid}: its last start was interrupted and the agent cannot tell how it stands"
                ));
                continue;
            }
        }
        c.starting = false;
        changed = true;
    }
    changed
}

/// A container whose start intent was left in the record: asks the agent how it stands and
/// records that. True when the agent started it (it is running now, or already ended); false
/// when it is still only created there (the start is to be made) or the agent cannot tell.
fn reconcile_start(dir: &Path, rec: &mut PodRecord, cid: &str) -> bool {
    let state = agent_states(dir)
        .and_then(|states| states.into_iter().find(|(s, _)| s == cid))
        .map(|(_, state)| state);
    let Some(c) = rec.containers.get_mut(cid) else {
        return false;
    };
    c.starting = false;
    match state {
        Some(ContainerState::Running | ContainerState::Paused | ContainerState::Stopped) => {
            log::warn!("container {cid}: its last start was not recorded; the agent started it");
            c.state = State::Running;
            true
        }
        _ => false,
    }
}

/// SIGTERM every process of the container, SIGKILL after the grace period; the exit code.
fn stop_in_agent(dir: &Path, cid: &str) -> Result<i32, Error> {
    let mut client = agent_call(dir);
    match client.signal(cid, None, libc::SIGTERM, true) {
        Ok(()) => {}
        // Already gone: Wait below tells how it ended.
        Err(e) if e.agent_kind() == Some(ErrorKind::InvalidState) => {}
        Err(e) => return Err(Error::agent("Signal")(e)),
    }
    match PodAgent::new(dir, STOP_GRACE).wait(cid, None) {
        Ok(status) => return Ok(status.code),
        Err(agent::client::ClientError::Frame(_)) => {}
        Err(e) => return Err(Error::agent("Wait")(e)),
    }
    let _ = client.signal(cid, None, libc::SIGKILL, true);
    client
        .wait(cid, None)
        .map(|s| s.code)
        .map_err(Error::agent("Wait"))
}

/// A fresh exec id: `exec-<pid>-<nanos>`.
fn new_exec_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "exec-{}-{}-{nanos}",
        std::process::id(),
        crate::state::now_unix()
    )
}
