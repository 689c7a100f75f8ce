//! Persisted pod and container state: versioned JSON records under the state root, written
//! atomically, guarded by per-pod file locks ([`lock`]).
//!
//! Layout of a state root (default `/run/ember`):
//! ```text
//! <root>/.<pod>.lock         flock(2) target (shared for reads, exclusive for changes),
//!                            beside the pod's directory so that deleting it cannot orphan it
//! <root>/<pod>/state.json    the PodRecord, containers included (format_version inside)
//! <root>/<pod>/vmm.log       stdout/stderr of the pod's detached VMM process
//! <root>/<pod>/console.log   the guest's serial console
//! <root>/<pod>/vsock.sock    hybrid vsock UDS (host -> guest: `CONNECT <port>\n`)
//! <root>/<pod>/vsock.sock_1025  the agent's readiness announcement arrives here
//! <root>/<pod>/control.sock  the VMM process's control socket (ping, pause, resume, stop)
//! <root>/<pod>/disks/        container rootfs images made at pod start
//! ```

pub mod lock;
mod machine;
pub mod template;

pub use lock::{LockKind, PodLock};
pub use machine::{State, TransitionError};

use crate::config::{ContainerConfig, PodConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the on-disk records. Bump when a change is not backwards compatible; a newer
/// version on disk is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// File holding a pod's record inside its directory.
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Corrupt state file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("State file {path} has format version {found}, newer than this ember understands ({supported})")]
    FutureVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
    },
    #[error("State file {path} has no format_version")]
    NoVersion { path: PathBuf },
}

/// The process that runs a pod's VM. The start time (from `/proc/<pid>/stat`) guards
/// against pid reuse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmProcess {
    pub pid: i32,
    pub start_time: u64,
    /// The VM runs on threads of a longer-lived ember process that hosts it (containerd's
    /// shim v2 of the pod) instead of a pod process of its own: the VM's end is the end of
    /// its control socket, not of the process, and killing the process kills its host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hosted: bool,
}

/// A pod start in progress, recorded before anything irreversible happens: the ember process
/// running it and, from the moment it is spawned, its VMM process. The start clears it when it
/// ends, failed or not; anyone else who holds the pod's lock and finds it knows that the start
/// was interrupted (its starter was killed, or could not record the end) and recovers the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartIntent {
    /// The ember process running the start (it holds the pod's write lock meanwhile).
    pub starter: VmmProcess,
    /// The VMM process it spawned, once there is one.
    #[serde(default)]
    pub vmm: Option<VmmProcess>,
    pub since_unix: u64,
}

/// A pod stop in progress, recorded before the VM is touched: the ember process running it
/// (it holds the pod's write lock meanwhile). The stop clears it with the record that says
/// the pod stopped; anyone else who holds the pod's lock and finds it knows that the stop was
/// interrupted (its stopper was killed, or could not record the end: a full state root) and
/// finishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopIntent {
    pub stopper: VmmProcess,
    pub since_unix: u64,
}

/// A disk attached to the pod's VM at its last start, in attachment order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedDisk {
    pub path: PathBuf,
    pub read_only: bool,
    /// Device name in the guest (`/dev/vda`, `/dev/vdb`, ... in attachment order).
    pub guest_device: String,
    /// Pod-config disk id, or the container whose rootfs it is.
    pub owner: DiskOwner,
}

/// A disk slot of the running VM: its guest device, and the disk inserted into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSlot {
    pub guest_device: String,
    #[serde(default)]
    pub disk: Option<AttachedDisk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum DiskOwner {
    Pod(String),
    Container(String),
}

/// One phase of a pod start and its duration, for `--timings` and the benches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub ms: f64,
}

/// A container as recorded in its pod's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub state: State,
    pub config: ContainerConfig,
    pub created_unix: u64,
    /// Guest block device holding the rootfs, once the pod runs.
    #[serde(default)]
    pub guest_device: Option<String>,
    /// Guest block device holding the container's volume disk, if it has one.
    #[serde(default)]
    pub volume_device: Option<String>,
    /// Whether the agent knows the container (created there).
    #[serde(default)]
    pub in_agent: bool,
    /// Exit code of the container's process once it ended (128+signal when killed).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// A start was asked of the agent and its outcome not recorded yet: whoever finds it set
    /// asks the agent how the container stands.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
    /// Pid of the container's process in the guest, when the agent reported one.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Names of the virtio-fs shares exported for it in the running VM (its rootfs, its host
    /// mounts); withdrawn when it is deleted.
    #[serde(default)]
    pub shares: Vec<String>,
}

/// A pod: its config, state, VMM process and containers. One file per pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub format_version: u32,
    pub id: String,
    pub state: State,
    pub config: PodConfig,
    pub created_unix: u64,
    #[serde(default)]
    pub vmm: Option<VmmProcess>,
    /// A start in progress (or interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting: Option<StartIntent>,
    /// A stop in progress (or interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<StopIntent>,
    #[serde(default)]
    pub disks: Vec<AttachedDisk>,
    /// The running VM's disk slots (empty at boot) and what was inserted into each.
    #[serde(default)]
    pub slots: Vec<DiskSlot>,
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Phases of the last start.
    #[serde(default)]
    pub timings: Vec<Phase>,
    /// Why the pod stopped, when it did not stop on request (e.g. its VMM process died).
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The snapshot the pod's VM starts from at its next start (its config's template, when
    /// the pod fits it), instead of booting.
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
}

impl PodRecord {
    /// Container `cid`'s first process exited with `code`: a running container is stopped
    /// with it (true); one already recorded otherwise is left as it is (false).
    pub fn record_exit(&mut self, cid: &str, code: i32) -> bool {
        match self.containers.get_mut(cid) {
            Some(c) if c.state == State::Running => {
                c.state = State::Stopped;
                c.exit_code = Some(code);
                true
            }
            _ => false,
        }
    }

    pub fn new(id: &str, config: PodConfig) -> PodRecord {
        PodRecord {
            format_version: FORMAT_VERSION,
            id: id.to_string(),
            state: State::Ready,
            config,
            created_unix: now_unix(),
            vmm: None,
            starting: None,
            stopping: None,
            disks: Vec::new(),
            slots: Vec::new(),
            containers: BTreeMap::new(),
            timings: Vec::new(),
            stop_reason: None,
            restore_from: None,
        }
    }

    /// Load `<dir>/state.json`, refusing a newer format version.
    pub fn load(dir: &Path) -> Result<PodRecord, Error> {
        load_versioned(&dir.join(STATE_FILE), FORMAT_VERSION)
    }

    /// Write `<dir>/state.json` atomically.
    pub fn store(&self, dir: &Path) -> Result<(), Error> {
        store_json(&dir.join(STATE_FILE), self)
    }
}

/// Load a JSON record whose `format_version` must be present and at most `supported`.
pub fn load_versioned<T: serde::de::DeserializeOwned>(
    path: &Path,
    supported: u32,
) -> Result<T, Error> {
    let path = path.to_path_buf();
    let bytes = fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
    let found = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::NoVersion { path: path.clone() })?;
    if found > u64::from(supported) {
        return Err(Error::FutureVersion {
            path,
            found,
            supported,
        });
    }
    serde_json::from_value(value).map_err(|source| Error::Parse { path, source })
}

/// Write `record` as pretty JSON to `path`, atomically.
pub fn store_json<T: Serialize>(path: &Path, record: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// Replace `path` with `bytes` so that a reader sees the old or the new content, never a part:
/// write a temporary file beside it, fsync it, rename it over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh, empty directory for one test.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ember-rt-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_version() {
        let dir = test_dir("state-rt");
        let mut rec = PodRecord::new("p1", PodConfig::default());
        rec.containers.insert(
            "c1".into(),
            ContainerRecord {
                id: "c1".into(),
                state: State::Ready,
                config: ContainerConfig::default(),
                created_unix: 1,
                guest_device: None,
                volume_device: None,
                in_agent: false,
                exit_code: None,
                starting: false,
                pid: None,
                shares: vec!["c1.rootfs".into()],
            },
        );
        rec.store(&dir).unwrap();
        let text = fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["format_version"], FORMAT_VERSION);
        assert_eq!(v["state"], "ready");
        assert_eq!(PodRecord::load(&dir).unwrap(), rec);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn future_version_is_refused() {
        let dir = test_dir("state-future");
        let rec = PodRecord::new("p1", PodConfig::default());
        let mut v = serde_json::to_value(&rec).unwrap();
        v["format_version"] = serde_json::json!(FORMAT_VERSION + 1);
        fs::write(dir.join(STATE_FILE), v.to_string()).unwrap();
        let err = PodRecord::load(&dir).unwrap_err();
        assert!(
            matches!(err, Error::FutureVersion { found, .. } if found == u64::from(FORMAT_VERSION) + 1)
        );
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn missing_version_and_garbage_are_refused() {
        let dir = test_dir("state-bad");
        fs::write(dir.join(STATE_FILE), "{\"id\":\"x\"}").unwrap();
        assert!(matches!(
            PodRecord::load(&dir),
            Err(Error::NoVersion { .. })
        ));
        fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        assert!(matches!(PodRecord::load(&dir), Err(Error::Parse { .. })));
        fs::remove_file(dir.join(STATE_FILE)).unwrap();
        assert!(matches!(PodRecord::load(&dir), Err(Error::Read { .. })));
    }

    #[test]
    fn atomic_write_replaces_whole_content() {
        let dir = test_dir("state-atomic");
        let path = dir.join("f.json");
        write_atomic(&path, b"first version, long content").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        // Writing into a missing directory fails cleanly.
        let err = write_atomic(&dir.join("missing/f.json"), b"x").unwrap_err();
        assert!(matches!(err, Error::Write { .. }));
    }
}
