//! A container whose VM boots when it starts. A spec that asks for a network namespace of its
//! own gets one on the host (the runc CLI's per-container shim: its own; ember's shim v2: its
//! task's namespace holder), whose pid `state` reports, and an engine may configure that
//! namespace between create and start (`ctr run --cni`, as CNI does for runc). Booting at
//! start lets the VM be wired to what the engine configured. Both OCI faces use this one
//! state machine ([`super::ops`], [`super::task`]).

use super::bundle::{ContainerConfig, ProcessConfig};
use super::sandbox::{Backend, Sandbox, SandboxError, Stdio, Usage};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

enum Phase {
    /// Created: the VM boots at start, with this stdio.
    Created(Option<Stdio>),
    Booted(Arc<dyn Sandbox>),
    /// Killed or shut down before it started (or its VM could not boot): the exit code.
    Ended(i32),
}

/// A [`Sandbox`] that makes its real one with `backend` at [`Sandbox::start`].
pub struct BootAtStart {
    backend: Box<dyn Backend + Send + Sync>,
    config: ContainerConfig,
    state_dir: PathBuf,
    /// The namespace the engine may configure (`/proc/<pid>/ns/net`).
    netns: PathBuf,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl BootAtStart {
    /// Records the container with `backend` ([`Backend::record`]: its pod is listed, not
    /// booted) and returns it created.
    pub fn create(
        backend: Box<dyn Backend + Send + Sync>,
        config: ContainerConfig,
        state_dir: PathBuf,
        stdio: Stdio,
        netns: PathBuf,
    ) -> Result<BootAtStart, SandboxError> {
        backend.record(&config, &state_dir)?;
        Ok(BootAtStart {
            backend,
            config,
            state_dir,
            netns,
            phase: Mutex::new(Phase::Created(Some(stdio))),
            changed: Condvar::new(),
        })
    }

    /// It ends without having booted: what [`Backend::record`] made goes, unless its boot is
    /// under way (then [`Sandbox::start`] releases what booted).
    fn end_unbooted(&self, phase: &mut Phase, code: i32) {
        let booting = matches!(phase, Phase::Created(None));
        *phase = Phase::Ended(code);
        if !booting {
            self.backend.cleanup(&self.config.id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, phase: Phase) {
        *self.lock() = phase;
        self.changed.notify_all();
    }

    /// The booted sandbox, or why there is none.
    fn booted(&self) -> Result<Arc<dyn Sandbox>, SandboxError> {
        match &*self.lock() {
            Phase::Booted(s) => Ok(s.clone()),
            Phase::Created(_) => Err(SandboxError::Refused(
                "the container is not started (its VM boots at start)".into(),
            )),
            Phase::Ended(_) => Err(SandboxError::Refused("the container is stopped".into())),
        }
    }
}

impl Sandbox for BootAtStart {
    fn start(&self) -> Result<i32, SandboxError> {
        let stdio = match &mut *self.lock() {
            Phase::Created(stdio) => stdio.take(),
            Phase::Booted(_) => None,
            Phase::Ended(_) => {
                return Err(SandboxError::Refused("the container is stopped".into()));
            }
        };
        let Some(stdio) = stdio else {
            return Err(SandboxError::Refused(
                "the container is already started".into(),
            ));
        };
        match self.backend.create_recorded(
            &self.config.clone().with_configured_netns(&self.netns),
            &self.state_dir,
            stdio,
        ) {
            Ok(sandbox) => {
                let sandbox: Arc<dyn Sandbox> = Arc::from(sandbox);
                let mut phase = self.lock();
                if let Phase::Ended(_) = &*phase {
                    drop(phase);
                    sandbox.shutdown();
                    return Err(SandboxError::Refused(
                        "the container was killed while its VM booted".into(),
                    ));
                }
                *phase = Phase::Booted(sandbox.clone());
                drop(phase);
                self.changed.notify_all();
                sandbox.start()
            }
            Err(e) => {
                // As a container whose process could not be started: it is stopped, and what
                // was recorded for it goes.
                self.set(Phase::Ended(255));
                self.backend.cleanup(&self.config.id);
                Err(e)
            }
        }
    }

    fn wait(&self) -> Result<i32, SandboxError> {
        let mut phase = self.lock();
        loop {
            match &*phase {
                Phase::Booted(s) => {
                    let s = s.clone();
                    drop(phase);
                    return s.wait();
                }
                Phase::Ended(code) => return Ok(*code),
                Phase::Created(_) => {
                    phase = self.changed.wait(phase).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    fn signal(&self, signal: i32, all: bool) -> Result<(), SandboxError> {
        {
            let mut phase = self.lock();
            if let Phase::Created(_) = &*phase {
                // runc's created container is its init waiting to exec: a signal ends it.
                self.end_unbooted(&mut phase, 128 + signal);
                drop(phase);
                self.changed.notify_all();
                return Ok(());
            }
        }
        self.booted()?.signal(signal, all)
    }

    fn signal_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError> {
        self.booted()?.signal_exec(exec_id, signal)
    }

    fn resize(&self, exec_id: Option<&str>, rows: u16, cols: u16) -> Result<(), SandboxError> {
        self.booted()?.resize(exec_id, rows, cols)
    }

    fn exec(
        &self,
        exec_id: &str,
        process: &ProcessConfig,
        stdio: Stdio,
        started: &mut dyn FnMut(i32),
    ) -> Result<i32, SandboxError> {
        self.booted()?.exec(exec_id, process, stdio, started)
    }

    fn processes(&self) -> Result<Vec<(i32, String)>, SandboxError> {
        match self.booted() {
            Ok(s) => s.processes(),
            // Nothing runs yet (runc lists no process of a created container either).
            Err(_) => Ok(Vec::new()),
        }
    }

    fn usage(&self) -> Result<Usage, SandboxError> {
        match self.booted() {
            Ok(s) => s.usage(),
            Err(_) => Ok(Usage::default()),
        }
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.booted()?.pause()
    }

    fn resume(&self) -> Result<(), SandboxError> {
        self.booted()?.resume()
    }

    fn update(&self, limits: &agent::protocol::CgroupLimits) -> Result<(), SandboxError> {
        self.booted()?.update(limits)
    }

    fn shutdown(&self) {
        let booted = {
            let mut phase = self.lock();
            match &*phase {
                Phase::Booted(s) => Some(s.clone()),
                Phase::Created(_) => {
                    self.end_unbooted(&mut phase, 137);
                    None
                }
                Phase::Ended(_) => None,
            }
        };
        self.changed.notify_all();
        if let Some(s) = booted {
            s.shutdown();
        }
    }
}
