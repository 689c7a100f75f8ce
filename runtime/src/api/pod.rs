//! Pod operations: create, start, stop, delete, run, list, status, pause, resume.

use super::{disk, id, Error, Runtime};
use crate::config::{Machine, RootfsConfig};
use crate::hooks::{self, state_json as hooks_state_json};
use crate::pod_vmm::{self, control};
use crate::state::{
    AttachedDisk, DiskOwner, DiskSlot, LockKind, Phase, PodLock, PodRecord, StartIntent, State,
    StopIntent, VmmProcess,
};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::container::ContainerInfo;
use super::placement::{guest_device, resolve_device, volume_owner};

use crate::timeouts::{LIST_LOCK as LIST_LOCK_WAIT, SHUTDOWN_GRACE, VMM_EXIT};

/// Longest `start_timeout_secs` a pod config may ask for (one hour).
pub const MAX_START_TIMEOUT_SECS: u64 = 3600;

/// What the API reports about a pod.
#[derive(Clone, Debug, Serialize)]
pub struct PodInfo {
    pub id: String,
    pub state: State,
    /// Pid of the ember process running the VM (its own pod process, or the process that
    /// hosts it: containerd's shim v2).
    pub vmm_pid: Option<i32>,
    /// The VM runs on threads of the process [`PodInfo::vmm_pid`] names, which hosts it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub vmm_hosted: bool,
    /// A start in progress: who runs it, and its VMM process once spawned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting: Option<StartIntent>,
    /// A stop that was interrupted after it was recorded (only seen where the state root
    /// cannot be written, so that nobody could finish it yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopping: Option<StopIntent>,
    pub created_unix: u64,
    pub dir: PathBuf,
    pub containers: Vec<ContainerInfo>,
    /// Guest block devices attached at the last start.
    pub disks: Vec<AttachedDisk>,
    /// The running VM's disk slots and what each holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<DiskSlot>,
    pub stop_reason: Option<String>,
    /// Phases of the last start.
    pub timings: Vec<Phase>,
    /// Problems that did not fail the call (e.g. a poststart hook failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl PodInfo {
    fn from_record(rec: &PodRecord, dir: &Path) -> PodInfo {
        PodInfo {
            id: rec.id.clone(),
            state: rec.state,
            vmm_pid: rec.vmm.as_ref().map(|v| v.pid),
            vmm_hosted: rec.vmm.as_ref().is_some_and(|v| v.hosted),
            starting: rec.starting.clone(),
            stopping: rec.stopping.clone(),
            created_unix: rec.created_unix,
            dir: dir.to_path_buf(),
            containers: rec
                .containers
                .values()
                .map(|c| ContainerInfo::from_record(&rec.id, c))
                .collect(),
            disks: rec.disks.clone(),
            slots: rec.slots.clone(),
            stop_reason: rec.stop_reason.clone(),
            timings: rec.timings.clone(),
            warnings: Vec::new(),
        }
    }
}

/// Largest guest memory a pod config may ask for (1 TiB).
const MAX_MEM_MIB: u32 = 1 << 20;
/// Most vCPUs (the VM's MP table limit).
const MAX_VCPUS: u8 = 32;
/// Most block devices a guest names (`/dev/vda` to `/dev/vdz`).
const MAX_DISKS: usize = 26;

/// Every numeric bound of a pod config, checked at create (hardening: a bad value must not
/// surface only at start, half-way through).
fn check_bounds(config: &super::PodConfig) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Config(m));
    if !(vmm::config::MIN_MEM_MIB..=MAX_MEM_MIB).contains(&config.mem_mib) {
        return bad(format!(
            "mem_mib must be {} to {MAX_MEM_MIB}",
            vmm::config::MIN_MEM_MIB
        ));
    }
    if !(1..=MAX_VCPUS).contains(&config.vcpus) {
        return bad(format!("vcpus must be 1 to {MAX_VCPUS}"));
    }
    // CIDs 0-2 are the hypervisor, local and host; u32::MAX is VMADDR_CID_ANY.
    if config.guest_cid < 3 || config.guest_cid == u32::MAX {
        return bad("guest_cid must be 3 to 4294967294".into());
    }
    if config.disks.len() + usize::from(config.disk_slots) > MAX_DISKS {
        return bad(format!(
            "{} disks and {} disk slots: a guest names at most {MAX_DISKS} disks",
            config.disks.len(),
            config.disk_slots
        ));
    }
    if !crate::config::CONSOLE_LIMIT_KIB.contains(&config.console_limit_kib) {
        return bad(format!(
            "console_limit_kib must be {} to {}",
            crate::config::CONSOLE_LIMIT_KIB.start(),
            crate::config::CONSOLE_LIMIT_KIB.end()
        ));
    }
    let agent = &crate::config::AGENT_TIMEOUT_SECS;
    if config.agent_timeout_secs != 0 && !agent.contains(&config.agent_timeout_secs) {
        return bad(format!(
            "agent_timeout_secs must be 0 (never stop the VM) or {} to {}",
            agent.start(),
            agent.end()
        ));
    }
    let disks = config
        .disks
        .iter()
        .map(|d| (format!("disk {}: rate_limit", d.id), d.rate_limit.as_ref()));
    let net = config.network.iter().flat_map(|n| {
        [
            (
                "network: rx_rate_limit".to_string(),
                n.rx_rate_limit.as_ref(),
            ),
            (
                "network: tx_rate_limit".to_string(),
                n.tx_rate_limit.as_ref(),
            ),
        ]
    });
    for (what, limit) in disks.chain(net) {
        if let Some(Err(e)) = limit.map(|l| l.validate()) {
            return bad(format!("{what}: {e}"));
        }
    }
    if let Some(Err(e)) = config.cgroup.as_deref().map(pod_vmm::cgroup::check_path) {
        return bad(e);
    }
    check_seccomp(&config.seccomp)
}

/// A pod config's seccomp filter file, compiled once: a missing, unreadable or bad file is
/// refused at create, with why.
fn check_seccomp(seccomp: &crate::config::Seccomp) -> Result<(), Error> {
    seccomp
        .check()
        .map_err(|e| Error::Config(format!("seccomp: {}", crate::error::report(&e))))
}

/// Mark a record stopped because its VMM is gone: containers stop with it.
fn mark_stopped(rec: &mut PodRecord, reason: Option<String>) {
    rec.state = State::Stopped;
    rec.vmm = None;
    rec.stopping = None;
    rec.slots.clear();
    rec.stop_reason = reason;
    for c in rec.containers.values_mut() {
        if matches!(c.state, State::Running | State::Paused) {
            c.state = State::Stopped;
        }
        // A fresh guest knows none of them.
        c.in_agent = false;
        c.starting = false;
    }
}

/// The stop reason of a `verb` ("start", "stop") whose ember process `by` recorded its intent
/// and did not clear it: it died, or gave up (the record could not be written).
fn interrupted(verb: &str, by: &VmmProcess) -> String {
    let why = if pod_vmm::proc::is_alive(by) {
        "gave up before it recorded the end"
    } else {
        "died"
    };
    format!("{verb} interrupted: ember process {} {why}", by.pid)
}

/// The end of an interrupted verb whose VM was dealt with: its sockets go, the pod is stopped
/// with the reason, and the log says so.
fn settle_interrupted(dir: &Path, rec: &mut PodRecord, verb: &str, by: &VmmProcess) {
    pod_vmm::remove_sockets(dir);
    let reason = interrupted(verb, by);
    log::warn!("pod {}: {reason}; finished it", rec.id);
    mark_stopped(rec, Some(reason));
}

/// A stop whose stopper let go of the pod's lock without recording the end (it was killed,
/// or the record could not be written): the stop is finished (the VMM process, if it still
/// runs, is asked to stop and killed after the grace period), its sockets go, and the pod is
/// stopped with the reason. Returns whether there was one.
fn recover_stop(dir: &Path, rec: &mut PodRecord) -> bool {
    let Some(intent) = rec.stopping.take() else {
        return false;
    };
    if let Some(vmm) = rec.vmm.clone() {
        stop_vmm(dir, &vmm);
    }
    settle_interrupted(dir, rec, "stop", &intent.stopper);
    true
}

/// Stop a VMM process: the stop request (it shuts the guest down: agent Shutdown, then a hard
/// stop after the grace period, and exits), SIGKILL when it does not exit in time. `Some`
/// says why it had to be killed.
fn stop_vmm(dir: &Path, vmm: &VmmProcess) -> Option<String> {
    let mut reason = None;
    if !pod_vmm::proc::is_alive(vmm) {
        return reason;
    }
    let sock = dir.join(pod_vmm::CONTROL_SOCKET);
    match control::request(&sock, &control::Request::Stop, crate::timeouts::POD_STOP) {
        Ok(control::Response::Stopped {
            unsynced: Some(why),
        }) => reason = Some(format!("stopped without the guest's sync: {why}")),
        Ok(_) => {}
        Err(e) => reason = Some(format!("stop request failed: {e}; killed")),
    }
    pod_vmm::proc::pause_at("stop:requested");
    if !pod_vmm::wait_ended(dir, vmm, SHUTDOWN_GRACE + VMM_EXIT) {
        pod_vmm::kill(vmm);
        reason.get_or_insert_with(|| "VMM did not exit in time; killed".into());
    }
    reason
}

/// Whether `e` says the state root cannot be written (read-only, full, not permitted): a read
/// that found something to record still reports it then.
fn unwritable(e: &Error) -> bool {
    match e {
        Error::State(crate::state::Error::Write { .. }) => true,
        Error::Lock(crate::state::lock::Error::Open { source, .. }) => matches!(
            source.raw_os_error(),
            Some(libc::EROFS | libc::ENOSPC | libc::EACCES | libc::EPERM)
        ),
        _ => false,
    }
}

/// A start whose starter let go of the pod's lock without finishing it (it was killed, or it
/// could not record the end): its VMM process, if it still runs (same pid and start time),
/// is killed with its session, its sockets go, and the pod is stopped with the reason.
/// Returns whether there was one.
/// An interrupted stop ([`recover_stop`]) is finished the same way.
pub(super) fn recover_start(dir: &Path, rec: &mut PodRecord) -> bool {
    if recover_stop(dir, rec) {
        return true;
    }
    let Some(intent) = rec.starting.take() else {
        return false;
    };
    // A hosted VM never outlives its start: its starter is a thread of the same process,
    // which stops and joins it when the start fails, and dies with it.
    if let Some(vmm) = intent.vmm.as_ref().filter(|v| !v.hosted) {
        pod_vmm::kill(vmm);
    }
    settle_interrupted(dir, rec, "start", &intent.starter);
    true
}

/// Whether the pod's VMM process is still there: pid alive with the same start time, and
/// its control socket not gone. `Err` carries why it is considered dead.
fn vmm_alive(dir: &Path, rec: &PodRecord, vmm: &VmmProcess) -> Result<(), String> {
    if !pod_vmm::proc::is_alive(vmm) {
        let cgroup = Some(pod_vmm::cgroup::path_for(
            Path::new(pod_vmm::cgroup::CGROUP_ROOT),
            rec.config.cgroup.as_deref(),
            &rec.id,
        ));
        return Err(format!(
            "VMM process {} died{}",
            vmm.pid,
            death_note(dir, cgroup.as_deref())
        ));
    }
    match control::request(
        &dir.join(pod_vmm::CONTROL_SOCKET),
        &control::Request::Ping,
        crate::timeouts::POD_PING,
    ) {
        Err(e) if e.is_gone() => Err(format!(
            "VMM process {} no longer serves its control socket",
            vmm.pid
        )),
        // Alive but slow to answer: still counted as running.
        _ => Ok(()),
    }
}

/// Why a pod process died, where it can be told: the OOM killer in its cgroup
/// (`memory.events`), or the last error its log has (a seccomp kill, a failed vCPU).
pub(super) fn death_note(dir: &Path, cgroup: Option<&Path>) -> String {
    let oom = cgroup
        .and_then(|cg| fs::read_to_string(cg.join("memory.events")).ok())
        .and_then(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .filter(|n| *n > 0);
    if oom.is_some() {
        let max = cgroup
            .and_then(|cg| fs::read_to_string(cg.join("memory.max")).ok())
            .unwrap_or_default();
        return format!(
            ": killed by the OOM killer in its cgroup (memory.max {})",
            max.trim()
        );
    }
    let log = fs::read_to_string(dir.join(pod_vmm::LOG_FILE)).unwrap_or_default();
    let last_error = log
        .lines()
        .rev()
        .take(50)
        .find(|l| l.contains("level=error") || l.contains(r#""level":"error""#));
    match last_error {
        Some(line) => format!(" ({}: {})", pod_vmm::LOG_FILE, line.trim()),
        None => String::new(),
    }
}

/// Containers the agent reported ended (`exited_containers`) are stopped with their exit
/// codes. Returns whether any changed.
fn settle_exits(rec: &mut PodRecord, exited: &[(String, i32)]) -> bool {
    let mut changed = false;
    for (cid, code) in exited {
        changed |= rec.record_exit(cid, *code);
    }
    changed
}

/// `Some(reason)` when the record says running/paused but the VMM is gone.
fn vmm_gone(dir: &Path, rec: &PodRecord) -> Option<String> {
    if !matches!(rec.state, State::Running | State::Paused) {
        return None;
    }
    match &rec.vmm {
        None => Some("no VMM process recorded".into()),
        Some(v) => vmm_alive(dir, rec, v).err(),
    }
}

impl Runtime {
    /// Create a pod in state `ready`: its directory, lock and record. Nothing runs yet.
    pub fn create_pod(&self, pod: &str, config: super::PodConfig) -> Result<PodInfo, Error> {
        id::validate("pod", pod).map_err(Error::Id)?;
        let mut seen = std::collections::BTreeSet::new();
        for d in &config.disks {
            id::validate("disk", &d.id).map_err(Error::Id)?;
            if !seen.insert(d.id.clone()) {
                return Err(Error::Config(format!("disk id {} appears twice", d.id)));
            }
        }
        check_bounds(&config)?;
        if !(1..=MAX_START_TIMEOUT_SECS).contains(&config.start_timeout_secs) {
            return Err(Error::Config(format!(
                "start_timeout_secs must be 1 to {MAX_START_TIMEOUT_SECS}"
            )));
        }
        let dir = self.pod_dir(pod);
        // `@pods` goes when its last pod does: make it again if a delete just removed it.
        let mut locked = Err(Error::PodNotFound(pod.to_string()));
        for _ in 0..3 {
            fs::create_dir_all(self.pods_dir()).map_err(|source| Error::Io {
                what: format!("Cannot create state root {}", self.pods_dir().display()),
                source,
            })?;
            locked =
                PodLock::acquire_pod(&dir, LockKind::Write, crate::state::lock::lock_timeout())
                    .map_err(Error::Lock);
            if !matches!(&locked, Err(Error::Lock(crate::state::lock::Error::Open { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound)
            {
                break;
            }
        }
        // The lock is held from before the directory exists until its record is stored, so
        // nobody ever sees a directory without a record that is not a crash's leftover.
        let lock = locked?;
        if dir.join(crate::state::STATE_FILE).exists() {
            return Err(Error::PodExists(pod.to_string()));
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => log::warn!("pod {pod}: reclaimed a directory that had no record"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: format!("Cannot remove {} (it has no record)", dir.display()),
                    source,
                })
            }
        }
        let result = fs::create_dir(&dir)
            .map_err(|source| Error::Io {
                what: format!("Cannot create {}", dir.display()),
                source,
            })
            .and_then(|()| {
                pod_vmm::proc::pause_at("create:dir");
                let rec = PodRecord::new(pod, config);
                Self::store(&dir, &rec)?;
                Ok(PodInfo::from_record(&rec, &dir))
            });
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
            lock.remove();
        }
        result
    }

    /// Follows the event stream of running (or paused) pod `pod`: `on_event` gets each event
    /// (a container's process exited, pause, resume, a silent agent, the VM's end) as the pod
    /// process tells it, until the VM ends. The pod's lock is held only to find its process.
    pub fn pod_events(
        &self,
        pod: &str,
        mut on_event: impl FnMut(&pod_vmm::protocol::EventRecord),
    ) -> Result<(), Error> {
        let socket = {
            let (_lock, dir, rec) = self.open(pod, LockKind::Read)?;
            if !matches!(rec.state, State::Running | State::Paused) {
                return Err(Error::PodNotRunning {
                    id: pod.to_string(),
                    state: rec.state,
                    action: "follow its events",
                });
            }
            dir.join(pod_vmm::CONTROL_SOCKET)
        };
        let mut events = control::subscribe(&socket).map_err(Error::Control)?;
        while let Some(ev) = events.next_event().map_err(Error::Control)? {
            on_event(&ev);
        }
        Ok(())
    }

    /// Status of a pod. Notices a VMM process that died (the pod becomes `stopped`), an
    /// interrupted pod start or stop (finished: the pod becomes `stopped`), containers whose
    /// interrupted start the agent made (`running`) or not (`ready`), and containers whose
    /// process ended (`stopped`, with their exit code); records what it noticed. Where the
    /// state root cannot be written (read-only, full) it still reports it, with a warning.
    pub fn pod_status(&self, pod: &str) -> Result<PodInfo, Error> {
        self.pod_status_timeout(pod, crate::state::lock::lock_timeout())
    }

    fn pod_status_timeout(&self, pod: &str, timeout: Duration) -> Result<PodInfo, Error> {
        let (lock, dir, rec) = self.open_timeout(pod, LockKind::Read, timeout)?;
        // What the pod is, as the next writer will record it (nothing is changed here: the
        // root may be read-only). Intents seen under the lock are interrupted verbs: their
        // writers hold the lock for writing until they clear them.
        let mut seen = rec.clone();
        let mut notes = Vec::new();
        let mut changed = true;
        if let Some(s) = seen.starting.take() {
            mark_stopped(&mut seen, Some(interrupted("start", &s.starter)));
        } else if let Some(s) = seen.stopping.clone() {
            match vmm_gone(&dir, &seen) {
                Some(_) => mark_stopped(&mut seen, Some(interrupted("stop", &s.stopper))),
                None => notes.push(format!(
                    "a stop by ember process {} was interrupted; the next change to the pod finishes it",
                    s.stopper.pid
                )),
            }
        } else if let Some(reason) = vmm_gone(&dir, &seen) {
            mark_stopped(&mut seen, Some(reason));
        } else {
            changed = false;
        }
        // A container start intent: the agent tells whether that start got through.
        let starts = super::container::interrupted_starts(&dir, &seen);
        changed |= super::container::settle_starts(&mut seen, &starts, &mut notes);
        let exited = if seen.state != State::Running {
            Vec::new()
        } else {
            self.exited_containers(&dir, &seen)
        };
        changed |= settle_exits(&mut seen, &exited);
        if !changed {
            let mut info = PodInfo::from_record(&seen, &dir);
            info.warnings = notes;
            return Ok(info);
        }
        // Something changed: take the lock for writing and re-check under it.
        drop(lock);
        match self.record_status(pod, &starts, &exited) {
            Err(e) if unwritable(&e) => {
                let mut info = PodInfo::from_record(&seen, &dir);
                info.warnings = notes;
                info.warnings.push(format!(
                    "not recorded: {} (the next call that can write the state root records it)",
                    crate::error::report(&e)
                ));
                Ok(info)
            }
            other => other,
        }
    }

    /// The write half of a status: opening the pod for writing recovers interrupted
    /// intents; a VMM found dead stops the pod, containers found started or ended are
    /// recorded.
    fn record_status(
        &self,
        pod: &str,
        starts: &[(String, Option<agent::protocol::ContainerState>)],
        exited: &[(String, i32)],
    ) -> Result<PodInfo, Error> {
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        let warnings = if let Some(reason) = vmm_gone(&dir, &rec) {
            mark_stopped(&mut rec, Some(reason));
            pod_vmm::remove_sockets(&dir);
            Self::store(&dir, &rec)?;
            self.poststop_hooks(&rec, &dir)
        } else {
            let mut notes = Vec::new();
            let changed = super::container::settle_starts(&mut rec, starts, &mut notes)
                | settle_exits(&mut rec, exited);
            if changed {
                Self::store(&dir, &rec)?;
            }
            notes
        };
        let mut info = PodInfo::from_record(&rec, &dir);
        info.warnings = warnings;
        Ok(info)
    }

    /// Every pod under the root, sorted by id. A pod whose record cannot be read is listed as
    /// stopped with a warning (its VMM may still run; `delete --force` removes it).
    pub fn list_pods(&self) -> Result<Vec<PodInfo>, Error> {
        let entries = match fs::read_dir(self.pods_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("Cannot read state root {}", self.pods_dir().display()),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(crate::state::STATE_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| id::validate("pod", n).is_ok())
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for pod in ids {
            match self.pod_status_timeout(&pod, LIST_LOCK_WAIT) {
                Ok(info) => out.push(info),
                // Busy (e.g. a start waiting for its guest): show the record as it stands;
                // records are replaced atomically, so a read without the lock is whole.
                Err(Error::Lock(crate::state::lock::Error::Timeout { .. })) => {
                    let dir = self.pod_dir(&pod);
                    if let Ok(rec) = PodRecord::load(&dir) {
                        let mut info = PodInfo::from_record(&rec, &dir);
                        info.warnings
                            .push("busy: another ember call holds the pod's lock".into());
                        out.push(info);
                    }
                }
                Err(Error::PodNotFound(_)) => {}
                // A record that cannot be read is reported, not hidden: its VMM may still run.
                Err(Error::State(e)) => {
                    let dir = self.pod_dir(&pod);
                    let mut info = PodInfo::from_record(
                        &PodRecord::new(&pod, super::PodConfig::default()),
                        &dir,
                    );
                    info.state = State::Stopped;
                    info.warnings.push(format!(
                        "unreadable record: {} (ember pod delete --force removes the pod)",
                        crate::error::report(&e)
                    ));
                    out.push(info);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Change the config of a pod that has not started yet and of its recorded containers
    /// (`f` gets both), checked as at create: what an OCI engine settles between create and
    /// start (the network namespace CNI configured) reaches the VM at its boot.
    pub fn change_ready_pod(
        &self,
        pod: &str,
        f: impl FnOnce(
            &mut super::PodConfig,
            &mut std::collections::BTreeMap<String, super::ContainerConfig>,
        ),
    ) -> Result<PodInfo, Error> {
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        if rec.state != State::Ready {
            return Err(Error::PodState {
                action: "change",
                id: pod.to_string(),
                source: crate::state::TransitionError {
                    from: rec.state,
                    to: State::Ready,
                },
            });
        }
        let mut config = rec.config.clone();
        let mut containers = rec
            .containers
            .iter()
            .map(|(id, c)| (id.clone(), c.config.clone()))
            .collect();
        f(&mut config, &mut containers);
        check_bounds(&config)?;
        rec.config = config;
        for (id, c) in containers {
            if let Some(r) = rec.containers.get_mut(&id) {
                r.config = c;
            }
        }
        Self::store(&dir, &rec)?;
        Ok(PodInfo::from_record(&rec, &dir))
    }

    /// Boot the pod's VM in a detached ember process (or on a thread of this one, for a
    /// runtime that [hosts its VMs](Runtime::hosting_vms)), wait for the agent's readiness,
    /// create the pod's containers in the guest, run the hooks.
    pub fn start_pod(&self, pod: &str) -> Result<PodInfo, Error> {
        let (_lock, dir, mut rec) = match self.open_timeout(pod, LockKind::Write, Duration::ZERO) {
            // Busy: refused at once when a live ember process is starting it, else wait.
            Err(Error::Lock(crate::state::lock::Error::Timeout { .. })) => {
                let intent = PodRecord::load(&self.pod_dir(pod))
                    .ok()
                    .and_then(|r| r.starting);
                if let Some(s) = intent.filter(|s| pod_vmm::proc::is_alive(&s.starter)) {
                    return Err(Error::PodStarting {
                        id: pod.to_string(),
                        pid: s.starter.pid,
                    });
                }
                self.open(pod, LockKind::Write)?
            }
            other => other?,
        };
        if let Some(reason) = vmm_gone(&dir, &rec) {
            mark_stopped(&mut rec, Some(reason));
        }
        rec.state
            .check(State::Running)
            .map_err(|source| Error::PodState {
                action: "start",
                id: pod.to_string(),
                source,
            })?;
        let t0 = Instant::now();
        let mut phases = Vec::new();
        let phase = |phases: &mut Vec<Phase>, name: &str, since: Instant| {
            phases.push(Phase {
                name: name.to_string(),
                ms: since.elapsed().as_secs_f64() * 1e3,
            })
        };
        let host_agent = matches!(rec.config.machine, Machine::HostAgent { .. });
        let guest_files = match &rec.config.machine {
            Machine::HostAgent { agent } => vec![("agent", agent.clone())],
            Machine::Vm => vec![
                ("kernel", rec.config.kernel_path()),
                ("initrd", rec.config.initrd_path()),
            ],
        };
        for (what, path) in guest_files {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "guest {what} {} not found (set it in the pod config or EMBER_GUEST_DIR)",
                    path.display()
                )));
            }
        }
        rec.restore_from = match &rec.config.template {
            Some(name) => Some(self.template_snapshot(pod, name, &rec.config)?),
            None => None,
        };
        // Disks: the pod's own, then one per container rootfs image.
        let t = Instant::now();
        rec.disks = self.plan_disks(&dir, &rec)?;
        if rec.restore_from.is_some() && !rec.disks.is_empty() {
            return Err(Error::TemplateMismatch {
                pod: pod.to_string(),
                template: rec.config.template.clone().unwrap_or_default(),
                why: format!(
                    "its containers need {} rootfs disks at boot (a template has none; use disk slots or shared rootfs)",
                    rec.disks.len()
                ),
            });
        }
        rec.slots = (0..usize::from(rec.config.disk_slots))
            .map(|i| {
                let guest_device = guest_device(rec.disks.len() + i)
                    .ok_or_else(|| Error::Config("more than 26 disks and disk slots".into()))?;
                Ok(DiskSlot {
                    guest_device,
                    disk: None,
                })
            })
            .collect::<Result<_, Error>>()?;
        for c in rec.containers.values_mut() {
            c.in_agent = false;
            c.guest_device = None;
            c.volume_device = None;
            c.shares.clear();
        }
        let disks = rec.disks.clone();
        for c in rec.containers.values_mut() {
            c.guest_device = resolve_device(&disks, &c.id, &c.config.rootfs);
            c.volume_device = c
                .config
                .volume
                .as_ref()
                .and_then(|v| resolve_device(&disks, &volume_owner(&c.id), v));
        }
        phase(&mut phases, "rootfs_images", t);
        let t = Instant::now();
        hooks::run_all(
            &rec.config.hooks.prestart,
            &hooks_state_json(&rec, &dir, "creating"),
        )
        .map_err(Error::Hook)?;
        phase(&mut phases, "prestart_hooks", t);
        rec.stop_reason = None;
        let t = Instant::now();
        let started = self.launch(pod, &dir, &mut rec, host_agent)?;
        phases.extend(started);
        phase(&mut phases, "vmm_spawn_to_ready", t);

        // Containers created before the start now get created in the guest.
        let t = Instant::now();
        let mut warnings = Vec::new();
        let ids: Vec<String> = rec
            .containers
            .values()
            .filter(|c| c.state == State::Ready)
            .map(|c| c.id.clone())
            .collect();
        for cid in ids {
            if let Err(e) = self.agent_create(&dir, &mut rec, &cid) {
                warnings.push(format!("container {cid}: {}", crate::error::report(&e)));
                if let Some(c) = rec.containers.get_mut(&cid) {
                    c.state = State::Stopped;
                }
            }
        }
        phase(&mut phases, "containers_created", t);
        phase(&mut phases, "total", t0);
        rec.timings = phases;
        Self::store(&dir, &rec)?;
        for e in hooks::run_all_best_effort(
            &rec.config.hooks.poststart,
            &hooks_state_json(&rec, &dir, "running"),
        ) {
            warnings.push(format!("poststart hook: {}", crate::error::report(&e)));
        }
        let mut info = PodInfo::from_record(&rec, &dir);
        info.warnings = warnings;
        Ok(info)
    }

    /// The irreversible part of a start, each step recorded before the next: the start intent;
    /// the VMM process spawned and named in it; its readiness; the pod running with it; the
    /// commit that tells the VMM process it is owned. On an error the spawned process is
    /// killed (a [`pod_vmm::Spawned`] dropped uncommitted) and the intent cleared, best
    /// effort: an intent left behind is recovered by the next caller ([`recover_start`]).
    fn launch(
        &self,
        pod: &str,
        dir: &Path,
        rec: &mut PodRecord,
        host_agent: bool,
    ) -> Result<Vec<Phase>, Error> {
        let prior = rec.state;
        rec.starting = Some(StartIntent {
            starter: pod_vmm::proc::this_process().unwrap_or(VmmProcess {
                pid: std::process::id() as i32,
                start_time: 0,
                hosted: false,
            }),
            vmm: None,
            since_unix: crate::state::now_unix(),
        });
        // Nothing irreversible yet: a failure here leaves the pod as it was.
        Self::store(dir, rec)?;
        pod_vmm::proc::pause_at("start:intent");
        let result = (|| {
            if !host_agent && std::env::var_os("EMBER_FORCE_KVM").is_none_or(|v| v != "1") {
                vmm::check_kvm_usable().map_err(Error::Kvm)?;
            }
            let mut spawned = if self.hosts_vms {
                pod_vmm::host(dir)
            } else {
                pod_vmm::spawn(&self.root, pod, dir)
            }
            .map_err(Error::Vmm)?;
            if let Some(s) = &mut rec.starting {
                s.vmm = Some(spawned.process.clone());
            }
            Self::store(dir, rec)?;
            pod_vmm::proc::pause_at("start:spawned");
            let phases = spawned
                .wait_ready(Duration::from_secs(rec.config.start_timeout_secs))
                .map_err(Error::Vmm)?;
            rec.vmm = Some(spawned.process.clone());
            rec.state = State::Running;
            rec.starting = None;
            Self::store(dir, rec)?;
            pod_vmm::proc::pause_at("start:recorded");
            spawned.commit().map_err(Error::Vmm)?;
            Ok(phases)
        })();
        if result.is_err() {
            rec.starting = None;
            rec.vmm = None;
            rec.state = prior;
            pod_vmm::remove_sockets(dir);
            if let Err(e) = Self::store(dir, rec) {
                log::warn!(
                    "pod {pod}: cannot record the failed start (the next call recovers it): {}",
                    crate::error::report(&e)
                );
            }
        }
        result
    }

    /// Create and start a pod; on a failed start nothing remains.
    pub fn run_pod(&self, pod: &str, config: super::PodConfig) -> Result<PodInfo, Error> {
        self.create_pod(pod, config)?;
        self.start_pod(pod).inspect_err(|_| {
            let _ = self.delete_pod(pod, true);
        })
    }

    /// Stop the pod's VM: ask the guest to shut down, stop the VM if it does not in time, wait
    /// for the VMM process to end. Containers become `stopped`.
    pub fn stop_pod(&self, pod: &str) -> Result<PodInfo, Error> {
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        let warnings = self.stop_locked(&dir, &mut rec)?;
        let mut info = PodInfo::from_record(&rec, &dir);
        info.warnings = warnings;
        Ok(info)
    }

    fn stop_locked(&self, dir: &Path, rec: &mut PodRecord) -> Result<Vec<String>, Error> {
        let gone = vmm_gone(dir, rec);
        rec.state
            .check(State::Stopped)
            .map_err(|source| Error::PodState {
                action: "stop",
                id: rec.id.clone(),
                source,
            })?;
        let mut reason = gone.clone();
        if let (None, Some(vmm)) = (&gone, rec.vmm.clone()) {
            // The intent first: a record that cannot be written (a full or read-only state
            // root) fails the stop before the VM changes. Once it is stored, whoever finds it
            // left behind finishes the stop ([`recover_stop`]).
            rec.stopping = Some(StopIntent {
                stopper: pod_vmm::proc::this_process().unwrap_or(VmmProcess {
                    pid: std::process::id() as i32,
                    start_time: 0,
                    hosted: false,
                }),
                since_unix: crate::state::now_unix(),
            });
            if let Err(e) = Self::store(dir, rec) {
                rec.stopping = None;
                return Err(e);
            }
            pod_vmm::proc::pause_at("stop:intent");
            // The VMM process leaves the record to us.
            reason = stop_vmm(dir, &vmm);
        }
        mark_stopped(rec, reason);
        pod_vmm::remove_sockets(dir);
        Self::store(dir, rec)?;
        Ok(self.poststop_hooks(rec, dir))
    }

    fn poststop_hooks(&self, rec: &PodRecord, dir: &Path) -> Vec<String> {
        hooks::run_all_best_effort(
            &rec.config.hooks.poststop,
            &hooks_state_json(rec, dir, "stopped"),
        )
        .iter()
        .map(|e| format!("poststop hook: {}", crate::error::report(e)))
        .collect()
    }

    /// Delete a pod that is ready or stopped (with `force`, stop it first).
    pub fn delete_pod(&self, pod: &str, force: bool) -> Result<(), Error> {
        let (lock, dir, mut rec) = match self.open(pod, LockKind::Write) {
            Err(Error::State(e)) if force => return self.delete_unreadable(pod, e),
            Err(Error::PodNotFound(_)) if force && self.pod_dir(pod).exists() => {
                return self.delete_recordless(pod)
            }
            other => other?,
        };
        if vmm_gone(&dir, &rec).is_none() && matches!(rec.state, State::Running | State::Paused) {
            if !force {
                return Err(Error::PodRunning(pod.to_string()));
            }
            self.stop_locked(&dir, &mut rec)?;
        }
        pod_vmm::proc::pause_at("delete:removing");
        self.remove_pod_dir(&dir, lock, rec.config.cgroup.as_deref())
    }

    /// Removes a pod's directory and then its lock file (held until then); the last pod takes
    /// `@pods` with it (fails, harmlessly, while others are there).
    fn remove_pod_dir(&self, dir: &Path, lock: PodLock, cgroup: Option<&str>) -> Result<(), Error> {
        fs::remove_dir_all(dir).map_err(|source| Error::Io {
            what: format!("Cannot remove {}", dir.display()),
            source,
        })?;
        lock.remove();
        let _ = fs::remove_dir(self.pods_dir());
        // What a pod process killed before it could leave its cgroup left behind.
        if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
            let root = Path::new(crate::pod_vmm::cgroup::CGROUP_ROOT);
            crate::pod_vmm::cgroup::remove(&crate::pod_vmm::cgroup::path_for(root, cgroup, id));
        }
        Ok(())
    }

    /// `delete --force` of a directory without a record (a crash's leftover): it goes.
    fn delete_recordless(&self, pod: &str) -> Result<(), Error> {
        let dir = self.pod_dir(pod);
        let lock = PodLock::acquire_pod(&dir, LockKind::Write, crate::state::lock::lock_timeout())
            .map_err(Error::Lock)?;
        if dir.join(crate::state::STATE_FILE).exists() {
            // Created meanwhile: a pod like any other.
            drop(lock);
            return self.delete_pod(pod, true);
        }
        log::warn!("pod {pod}: its directory has no record; removing it");
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::PodNotFound(pod.to_string()))
            }
            Err(source) => {
                return Err(Error::Io {
                    what: format!("Cannot remove {}", dir.display()),
                    source,
                })
            }
            Ok(()) => {}
        }
        lock.remove();
        let _ = fs::remove_dir(self.pods_dir());
        Ok(())
    }

    /// `delete --force` of a pod whose record cannot be read: its VMM process (if one still
    /// answers on the control socket, which tells its pid) is stopped and killed, then the
    /// directory goes.
    fn delete_unreadable(&self, pod: &str, why: crate::state::Error) -> Result<(), Error> {
        let dir = self.pod_dir(pod);
        let lock = PodLock::acquire_pod(&dir, LockKind::Write, crate::state::lock::lock_timeout())
            .map_err(Error::Lock)?;
        log::warn!(
            "pod {pod}: unreadable record ({}); removing it",
            crate::error::report(&why)
        );
        let socket = dir.join(pod_vmm::CONTROL_SOCKET);
        if let Ok(control::Response::Pong { pid, hosted }) =
            control::request(&socket, &control::Request::Ping, control::DEFAULT_TIMEOUT)
        {
            if let Some(vmm) = i32::try_from(pid).ok().and_then(|pid| {
                pod_vmm::proc::start_time(pid).map(|start_time| VmmProcess {
                    pid,
                    start_time,
                    hosted,
                })
            }) {
                let _ =
                    control::request(&socket, &control::Request::Stop, crate::timeouts::POD_STOP);
                if !pod_vmm::wait_ended(&dir, &vmm, SHUTDOWN_GRACE + VMM_EXIT) {
                    pod_vmm::kill(&vmm);
                }
            }
        }
        self.remove_pod_dir(&dir, lock, None)
    }

    /// Pause the pod's VM (its vCPUs stop).
    pub fn pause_pod(&self, pod: &str) -> Result<PodInfo, Error> {
        self.pause_resume(pod, State::Paused, "pause")
    }

    /// Resume a paused pod.
    pub fn resume_pod(&self, pod: &str) -> Result<PodInfo, Error> {
        self.pause_resume(pod, State::Running, "resume")
    }

    fn pause_resume(&self, pod: &str, to: State, action: &'static str) -> Result<PodInfo, Error> {
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        if let Some(reason) = vmm_gone(&dir, &rec) {
            mark_stopped(&mut rec, Some(reason));
            pod_vmm::remove_sockets(&dir);
            Self::store(&dir, &rec)?;
        }
        // Pause needs running, resume needs paused.
        let from_ok = match to {
            State::Paused => rec.state == State::Running,
            _ => rec.state == State::Paused,
        };
        if !from_ok {
            return Err(Error::PodState {
                action,
                id: pod.to_string(),
                source: crate::state::TransitionError {
                    from: rec.state,
                    to,
                },
            });
        }
        control::request(
            &dir.join(pod_vmm::CONTROL_SOCKET),
            &if to == State::Paused {
                control::Request::Pause
            } else {
                control::Request::Resume
            },
            control::DEFAULT_TIMEOUT,
        )
        .map_err(Error::Control)?;
        rec.state = to;
        // The containers' processes stop and go on with the VM.
        for c in rec.containers.values_mut() {
            c.state = match (to, c.state) {
                (State::Paused, State::Running) => State::Paused,
                (State::Running, State::Paused) => State::Running,
                (_, s) => s,
            };
        }
        Self::store(&dir, &rec)?;
        Ok(PodInfo::from_record(&rec, &dir))
    }

    /// Insert the image at `path` into a free disk slot of running pod `pod` (see
    /// [`crate::api::PodConfig::disk_slots`]); returns its guest device.
    pub fn insert_disk(
        &self,
        pod: &str,
        path: &Path,
        read_only: bool,
        owner: DiskOwner,
    ) -> Result<String, Error> {
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        let device = Self::insert_disk_locked(&dir, &mut rec, path, read_only, owner)?;
        Self::store(&dir, &rec)?;
        Ok(device)
    }

    /// Take the disk of `owner` out of its slot in running pod `pod`.
    pub fn eject_disk(&self, pod: &str, owner: &DiskOwner) -> Result<(), Error> {
        let (_lock, dir, mut rec) = self.open(pod, LockKind::Write)?;
        Self::eject_disk_locked(&dir, &mut rec, owner)?;
        Self::store(&dir, &rec)
    }

    pub(crate) fn insert_disk_locked(
        dir: &Path,
        rec: &mut PodRecord,
        path: &Path,
        read_only: bool,
        owner: DiskOwner,
    ) -> Result<String, Error> {
        super::container::require_running(rec, "insert a disk")?;
        let path = fs::canonicalize(path).map_err(|source| Error::Io {
            what: format!("Cannot find disk image {}", path.display()),
            source,
        })?;
        let Some(slot) = rec.slots.iter().position(|s| s.disk.is_none()) else {
            return Err(Error::Config(format!(
                "pod {} has no free disk slot ({} in all; set disk_slots in the pod config)",
                rec.id,
                rec.slots.len()
            )));
        };
        control::request(
            &dir.join(pod_vmm::CONTROL_SOCKET),
            &control::Request::InsertDisk {
                slot,
                path: path.clone(),
                read_only,
            },
            control::DEFAULT_TIMEOUT,
        )
        .map_err(Error::Control)?;
        let s = &mut rec.slots[slot];
        s.disk = Some(AttachedDisk {
            path,
            read_only,
            guest_device: s.guest_device.clone(),
            owner,
        });
        Ok(s.guest_device.clone())
    }

    /// Ejects `owner`'s disk when it sits in a slot; Ok(false) when it has none there.
    pub(crate) fn eject_disk_locked(
        dir: &Path,
        rec: &mut PodRecord,
        owner: &DiskOwner,
    ) -> Result<bool, Error> {
        let Some(slot) = rec
            .slots
            .iter()
            .position(|s| s.disk.as_ref().is_some_and(|d| d.owner == *owner))
        else {
            return Ok(false);
        };
        control::request(
            &dir.join(pod_vmm::CONTROL_SOCKET),
            &control::Request::EjectDisk { slot },
            control::DEFAULT_TIMEOUT,
        )
        .map_err(Error::Control)?;
        rec.slots[slot].disk = None;
        Ok(true)
    }

    /// Disks for the next start: the pod config's, then each container's image or packed dir.
    pub(crate) fn plan_disks(
        &self,
        dir: &Path,
        rec: &PodRecord,
    ) -> Result<Vec<AttachedDisk>, Error> {
        let mut disks = Vec::new();
        let mut push = |path: PathBuf, read_only: bool, owner: DiskOwner| {
            let guest = guest_device(disks.len())
                .ok_or_else(|| Error::Config("more than 26 disks".into()))?;
            disks.push(AttachedDisk {
                path,
                read_only,
                guest_device: guest,
                owner,
            });
            Ok::<(), Error>(())
        };
        for d in &rec.config.disks {
            push(d.path.clone(), d.read_only, DiskOwner::Pod(d.id.clone()))?;
        }
        for c in rec.containers.values() {
            if c.state == State::Stopped {
                continue;
            }
            match &c.config.rootfs {
                RootfsConfig::Image { path, read_only } => {
                    push(path.clone(), *read_only, DiskOwner::Container(c.id.clone()))?
                }
                RootfsConfig::Dir { path } => {
                    let image = self.rootfs_image(dir, &c.id, path)?;
                    push(image, false, DiskOwner::Container(c.id.clone()))?
                }
                RootfsConfig::Disk { .. }
                | RootfsConfig::GuestPath { .. }
                | RootfsConfig::Share { .. } => {}
            }
            if let Some(RootfsConfig::Image { path, read_only }) = &c.config.volume {
                push(
                    path.clone(),
                    *read_only,
                    DiskOwner::Container(volume_owner(&c.id)),
                )?
            }
        }
        Ok(disks)
    }

    /// `<pod dir>/disks/<container>.ext4`, made from `src` unless it exists (so a restarted pod
    /// keeps what its containers wrote).
    pub(crate) fn rootfs_image(&self, dir: &Path, cid: &str, src: &Path) -> Result<PathBuf, Error> {
        let disks = dir.join("disks");
        fs::create_dir_all(&disks).map_err(|source| Error::Io {
            what: format!("Cannot create {}", disks.display()),
            source,
        })?;
        let image = disks.join(format!("{cid}.ext4"));
        if !image.exists() {
            disk::make_ext4(src, &image).map_err(|source| Error::Disk {
                id: cid.to_string(),
                source,
            })?;
        }
        Ok(image)
    }
}
