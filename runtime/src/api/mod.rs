//! The pod and container API (Kata virtcontainers' shape) over the guest agent.
//!
//! A [`Runtime`] works on one state root. Every call validates its ids, takes the pod's file
//! lock (shared for reads, exclusive for changes; across processes), loads the pod's record,
//! checks the state machine, acts, and stores the record atomically.
//!
//! ```no_run
//! use runtime::api::{ContainerConfig, PodConfig, RootfsConfig, Runtime};
//! # fn main() -> Result<(), runtime::api::Error> {
//! let rt = Runtime::new("/run/ember");
//! rt.create_pod("p1", PodConfig::default())?;
//! let rootfs = RootfsConfig::Dir { path: "/srv/busybox".into() };
//! rt.create_container("p1", "c1", ContainerConfig::new(rootfs, ["sleep", "1000"]))?;
//! rt.start_pod("p1")?; // boots the VM in a detached ember process, creates c1 in the guest
//! rt.start_container("p1", "c1")?;
//! let out = rt.exec("p1", "c1", agent::protocol::ProcessSpec::new(["echo", "hi"]))?;
//! assert_eq!(out.stdout, b"hi\n");
//! rt.stop_pod("p1")?;
//! rt.delete_pod("p1", false)?;
//! # Ok(()) }
//! ```

mod container;
pub mod disk;
pub mod id;
mod placement;
mod pod;
mod stdio;
mod template;

pub use crate::config;
pub use crate::{agent_link, hooks};

pub use crate::state::{Phase, State};
pub use agent::protocol::{ProcessInfo, ProcessSpec, StdioStream};
pub use config::{ContainerConfig, DiskConfig, Hook, Hooks, HostMount, PodConfig, RootfsConfig};
pub use container::{ContainerInfo, ExecOutput};
pub use pod::PodInfo;
pub use stdio::{Relays, Stdio};
pub use template::TemplateInfo;

use crate::state::{self, LockKind, PodLock, PodRecord, TransitionError};
use std::path::{Path, PathBuf};

/// Default state root.
pub const DEFAULT_ROOT: &str = "/run/ember";
/// Folder of the state root that holds the pods (`<root>/@pods/<pod>`), beside the OCI
/// containers' own folders (`<root>/<container>`): one store for both faces, and `@` cannot
/// start a container id, so the names never clash.
pub const PODS_DIR: &str = "@pods";
/// Environment variable naming the state root (the `--root` flag wins over it).
pub const ROOT_ENV: &str = "EMBER_ROOT";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Bad id")]
    Id(#[source] id::Error),
    #[error("Pod {0} does not exist")]
    PodNotFound(String),
    #[error("Pod {0} already exists")]
    PodExists(String),
    #[error("Container {id} does not exist in pod {pod}")]
    ContainerNotFound { pod: String, id: String },
    #[error("Container {id} already exists in pod {pod}")]
    ContainerExists { pod: String, id: String },
    #[error("Cannot {action} pod {id}")]
    PodState {
        action: &'static str,
        id: String,
        #[source]
        source: TransitionError,
    },
    #[error("Cannot {action} container {id}")]
    ContainerState {
        action: &'static str,
        id: String,
        #[source]
        source: TransitionError,
    },
    #[error("Pod {id} is {state}; it must be running to {action}")]
    PodNotRunning {
        id: String,
        state: State,
        action: &'static str,
    },
    #[error("Container {id} is {state}; it must be running to {action}")]
    ContainerNotRunning {
        id: String,
        state: State,
        action: &'static str,
    },
    #[error("Pod {id} is being started by ember process {pid}")]
    PodStarting { id: String, pid: i32 },
    #[error("Pod {0} is running; stop it first or use force")]
    PodRunning(String),
    #[error("Container {0} is running; stop it first or use force")]
    ContainerRunning(String),
    #[error("Invalid config: {0}")]
    Config(String),
    #[error("Template {0} does not exist")]
    TemplateNotFound(String),
    #[error("Template {0} already exists")]
    TemplateExists(String),
    #[error("Pod {pod} cannot start from template {template}: {why}")]
    TemplateMismatch {
        pod: String,
        template: String,
        why: String,
    },
    #[error("Pod state")]
    State(#[source] state::Error),
    #[error("Pod lock")]
    Lock(#[source] state::lock::Error),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Prestart hook failed")]
    Hook(#[source] hooks::Error),
    #[error("Cannot make the rootfs image of container {id}")]
    Disk {
        id: String,
        #[source]
        source: disk::Error,
    },
    #[error("This machine cannot run the pod's VM (EMBER_FORCE_KVM=1 tries anyway)")]
    Kvm(#[source] vmm::Error),
    #[error("The pod's VM did not start")]
    Vmm(#[source] crate::pod_vmm::Error),
    #[error("The pod's VMM process")]
    Control(#[source] crate::pod_vmm::control::Error),
    #[error("Agent call {call} failed")]
    Agent {
        call: &'static str,
        #[source]
        source: agent_link::Error,
    },
    #[error("Pod {pod} stopped while {call} waited on its agent: {reason}")]
    PodEnded {
        pod: String,
        call: &'static str,
        reason: String,
    },
}

impl Error {
    fn agent(call: &'static str) -> impl FnOnce(agent::client::ClientError) -> Error {
        move |e| Error::Agent {
            call,
            source: agent_link::Error::Client(e),
        }
    }
}

/// The pod/container API on one state root.
#[derive(Clone, Debug)]
pub struct Runtime {
    root: PathBuf,
    hosts_vms: bool,
}

impl Runtime {
    /// A runtime on `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            root: root.into(),
            hosts_vms: false,
        }
    }

    /// This runtime's pods run their VMs on threads of this process ([`crate::pod_vmm::host`])
    /// instead of pod processes of their own: for a long-lived caller that is its pod's
    /// process, containerd's shim v2. Its pods end with it.
    pub fn hosting_vms(mut self) -> Runtime {
        self.hosts_vms = true;
        self
    }

    /// The root from a `--root` flag, else `EMBER_ROOT`, else `/run/ember`.
    pub fn from_flag(root: Option<&Path>) -> Runtime {
        let root = root
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(ROOT_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        Runtime::new(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/@pods`, where the pods live.
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join(PODS_DIR)
    }

    /// Directory of a pod (whether or not it exists).
    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.pods_dir().join(pod)
    }

    /// Validate the id, lock an existing pod and load its record.
    fn open(&self, pod: &str, kind: LockKind) -> Result<(PodLock, PathBuf, PodRecord), Error> {
        self.open_timeout(pod, kind, state::lock::lock_timeout())
    }

    /// [`Runtime::open`] waiting at most `timeout` for the lock.
    fn open_timeout(
        &self,
        pod: &str,
        kind: LockKind,
        timeout: std::time::Duration,
    ) -> Result<(PodLock, PathBuf, PodRecord), Error> {
        id::validate("pod", pod).map_err(Error::Id)?;
        let dir = self.pod_dir(pod);
        if !dir.join(state::STATE_FILE).exists() {
            return Err(Error::PodNotFound(pod.to_string()));
        }
        let lock = match PodLock::acquire_pod(&dir, kind, timeout) {
            // `@pods` went with the pod's deletion.
            Err(state::lock::Error::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(Error::PodNotFound(pod.to_string()))
            }
            other => other.map_err(Error::Lock)?,
        };
        // It may have been deleted while we waited for the lock.
        let rec = match PodRecord::load(&dir) {
            Err(state::Error::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                drop(lock);
                self.reclaim(pod);
                return Err(Error::PodNotFound(pod.to_string()));
            }
            other => other.map_err(Error::State)?,
        };
        let mut rec = rec;
        // Holding the lock, a start intent means the start is over: it was interrupted.
        if kind == LockKind::Write && pod::recover_start(&dir, &mut rec) {
            Self::store(&dir, &rec)?;
        }
        Ok((lock, dir, rec))
    }

    /// Removes what is left of a pod that has no record: the lock file a caller made while
    /// the pod was being deleted, or a directory a crash left without its record. Only when
    /// nobody holds the pod's lock (else that holder is creating or deleting it).
    fn reclaim(&self, pod: &str) {
        let dir = self.pod_dir(pod);
        let Ok(lock) = PodLock::acquire_pod(&dir, LockKind::Write, std::time::Duration::ZERO)
        else {
            return;
        };
        if dir.join(state::STATE_FILE).exists() {
            return;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => log::warn!("pod {pod}: removed a directory that had no record"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                log::warn!("pod {pod}: cannot remove its directory without a record: {e}");
                return;
            }
        }
        lock.remove();
        let _ = std::fs::remove_dir(self.pods_dir());
    }

    fn store(dir: &Path, rec: &PodRecord) -> Result<(), Error> {
        rec.store(dir).map_err(Error::State)
    }
}

#[cfg(test)]
mod tests;
