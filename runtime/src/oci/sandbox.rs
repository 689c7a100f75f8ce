//! What the shim needs from the place a container runs: a created container it can start,
//! wait on, signal, exec into, list, pause and resume, and tear down. [`super::vm`] provides it
//! with a microVM per pod; tests provide their own.

use super::bundle::{ContainerConfig, ProcessConfig};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Refused(String),
}

impl SandboxError {
    pub fn failed(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SandboxError {
        SandboxError::Failed {
            what: what.into(),
            source: source.into(),
        }
    }
}

pub use crate::api::Stdio;

/// What a container uses now (its cgroup in the guest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Processes in the container.
    pub pids: u64,
    /// Memory charged to it, where the guest counts it.
    pub memory_bytes: Option<u64>,
    /// CPU time its processes used, µs, where the guest counts it.
    pub cpu_usec: Option<u64>,
}

/// A created container and the VM it lives in.
pub trait Sandbox: Send + Sync {
    /// Let the container's process run; its pid in the guest.
    fn start(&self) -> Result<i32, SandboxError>;
    /// Block until the container's process exits (its output delivered); its exit code
    /// (128 + signal when killed).
    fn wait(&self) -> Result<i32, SandboxError>;
    fn signal(&self, signal: i32, all: bool) -> Result<(), SandboxError>;
    /// Send `signal` to the process [`Sandbox::exec`] started as `exec_id`.
    fn signal_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError>;
    /// Set the window size of a terminal process's pty: the container's (`exec_id` `None`)
    /// or an exec'd one.
    fn resize(&self, exec_id: Option<&str>, rows: u16, cols: u16) -> Result<(), SandboxError>;
    /// Run a process in the container with `stdio`; `started` gets its pid; returns its exit
    /// code once it ends.
    fn exec(
        &self,
        exec_id: &str,
        process: &ProcessConfig,
        stdio: Stdio,
        started: &mut dyn FnMut(i32),
    ) -> Result<i32, SandboxError>;
    /// Processes in the container: (pid in the guest, command line).
    fn processes(&self) -> Result<Vec<(i32, String)>, SandboxError>;
    /// What the container uses now.
    fn usage(&self) -> Result<Usage, SandboxError>;
    fn pause(&self) -> Result<(), SandboxError>;
    fn resume(&self) -> Result<(), SandboxError>;
    /// New cgroup limits (`runc update`; containerd's `Update`): those set are written.
    fn update(&self, limits: &agent::protocol::CgroupLimits) -> Result<(), SandboxError>;
    /// Kill what runs and release the VM. Idempotent.
    fn shutdown(&self);
}

/// Makes sandboxes: boots (or joins) the pod and creates the container in it.
pub trait Backend {
    /// `state_dir` is the container's own directory (for images, sockets, logs).
    fn create(
        &self,
        config: &ContainerConfig,
        state_dir: &Path,
        stdio: Stdio,
    ) -> Result<Box<dyn Sandbox>, SandboxError>;

    /// Record the container ahead of a [`Backend::create_recorded`] that boots it later (at
    /// start: [`super::boot_at_start`]): from now on it is listed as created (in `ember pod
    /// status` of its pod, not booted). [`Backend::cleanup`] removes it. Default: nothing.
    fn record(&self, _config: &ContainerConfig, _state_dir: &Path) -> Result<(), SandboxError> {
        Ok(())
    }

    /// [`Backend::create`] of a container that [`Backend::record`] recorded, with `config` as
    /// it is now (an engine may have configured its network namespace meanwhile).
    fn create_recorded(
        &self,
        config: &ContainerConfig,
        state_dir: &Path,
        stdio: Stdio,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        self.create(config, state_dir, stdio)
    }

    /// Release what a container `id` may still hold when its shim is gone without doing it
    /// (killed, crashed), or what [`Backend::record`] made for one that never booted. Best
    /// effort, idempotent.
    fn cleanup(&self, _id: &str) {}

    /// Refuses, with runc's message, a container whose command cannot run in its rootfs
    /// (runc's `create` fails so: [`super::command`]). Default: nothing is checked.
    fn check_command(&self, _config: &ContainerConfig) -> Result<(), String> {
        Ok(())
    }

    /// Whether a container that joins another running container's namespaces by its pid
    /// (`/proc/PID/ns/TYPE`) is made in that container's pod ([`PodRole::Member`]): true
    /// where a running pod can take a container without a disk slot. Default: false.
    ///
    /// [`PodRole::Member`]: super::bundle::PodRole::Member
    fn groups_by_namespace(&self) -> bool {
        false
    }

    /// A copy of this backend that a shim can keep, to make its sandbox later (at start:
    /// [`super::boot_at_start`]); `None` where it cannot (the sandbox is made at create).
    fn detached(&self) -> Option<Box<dyn Backend + Send + Sync>> {
        None
    }
}
