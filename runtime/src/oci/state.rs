//! Persisted state of OCI containers: one directory per container under the state root
//! (`--root`, default `/run/ember`), holding `state.json` (written atomically: write, fsync,
//! rename) and a `lock` file taken with `flock` around every read-modify-write.
//!
//! The status a reader sees is the saved one checked against the host process that stands for
//! the container (its shim): once that process is gone, the container is `stopped`.

use crate::state::lock::{self, LockKind, PodLock};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Version of the `state.json` format.
pub const FORMAT_VERSION: u32 = 1;
/// The OCI runtime spec version ember reports and accepts (major 1).
pub const OCI_VERSION: &str = "1.0.2";
/// The default state root.
pub use crate::api::DEFAULT_ROOT;

const STATE_FILE: &str = "state.json";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("Cannot lock the container's state")]
    Lock(#[source] lock::Error),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("container does not exist")]
    NotFound,
    #[error("invalid id format: {0}")]
    InvalidId(String),
    #[error("Cannot use state root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Bad state file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Unsupported state format version {0}")]
    Version(u32),
}

/// Container status, as runc reports it (`paused` is runc's addition to the OCI four).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// What ember keeps about one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub status: Status,
    /// The host process that lives exactly as long as the container (its shim).
    pub pid: Option<i32>,
    /// That process's start time (field 22 of /proc/PID/stat), so a reused pid is not taken
    /// for it.
    pub pid_start: Option<u64>,
    /// RFC 3339, UTC.
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The pod this container belongs to (its own id for a pod of one or a sandbox).
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Exit code once stopped, when known.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The host cgroup its shim joined (the spec's `cgroupsPath`), removed at delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cgroup: Option<String>,
}

impl Record {
    pub fn new(id: &str, bundle: &Path, rootfs: &Path) -> Record {
        Record {
            format: FORMAT_VERSION,
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            status: Status::Creating,
            pid: None,
            pid_start: None,
            created: rfc3339_now(),
            owner: owner_name(),
            annotations: BTreeMap::new(),
            sandbox_id: None,
            host_cgroup: None,
            exit_code: None,
        }
    }

    /// Whether the process standing for the container still runs.
    pub fn process_alive(&self) -> bool {
        match self.pid {
            Some(pid) if pid > 0 => {
                process_start_time(pid).is_some_and(|t| Some(t) == self.pid_start)
            }
            _ => false,
        }
    }

    /// The status as seen now: a container whose process is gone is stopped.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            // Creating without a process yet: the `create` command is still at work.
            Status::Creating if self.pid.is_none() => Status::Creating,
            s if self.process_alive() => s,
            _ => Status::Stopped,
        }
    }

    /// The pid to report: 0 once stopped, as runc does.
    pub fn effective_pid(&self) -> i32 {
        match self.effective_status() {
            Status::Stopped => 0,
            _ => self.pid.unwrap_or(0),
        }
    }

    /// The OCI state JSON (runc's shape: ociVersion, id, pid, status, bundle, rootfs,
    /// created, owner, annotations when any).
    pub fn oci_state(&self) -> OciState {
        OciState {
            oci_version: OCI_VERSION.to_string(),
            id: self.id.clone(),
            pid: self.effective_pid(),
            status: self.effective_status(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: self.owner.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

/// What `ember state` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
}

/// An exclusive lock on one container's state (`<dir>/lock`, [`PodLock`]), held until dropped.
pub struct Lock {
    _lock: PodLock,
}

/// The state root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The root from a `--root` flag, else `EMBER_ROOT`, else [`DEFAULT_ROOT`] (as the pod
    /// commands resolve it: one state root for both faces).
    pub fn new(root: Option<&Path>) -> Store {
        Store {
            root: crate::api::Runtime::from_flag(root).root().to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one container.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn ensure_root(&self) -> Result<(), StateError> {
        fs::create_dir_all(&self.root).map_err(|source| StateError::Root {
            path: self.root.clone(),
            source,
        })
    }

    /// Make the directory of a new container and lock it. Fails if the id is taken.
    pub fn create(&self, id: &str) -> Result<Lock, StateError> {
        validate_id(id)?;
        self.ensure_root()?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()))
            }
            Err(source) => return Err(StateError::Io { path: dir, source }),
        }
        self.lock(id)
    }

    /// Lock an existing container's state.
    pub fn lock(&self, id: &str) -> Result<Lock, StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(StateError::NotFound);
        }
        // The pod store's lock: one implementation for both faces.
        match PodLock::acquire(&dir, LockKind::Write) {
            Ok(lock) => Ok(Lock { _lock: lock }),
            Err(lock::Error::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(StateError::NotFound)
            }
            Err(e) => Err(StateError::Lock(e)),
        }
    }

    /// Read a container's record.
    pub fn load(&self, id: &str) -> Result<Record, StateError> {
        validate_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let data = fs::read(&path).map_err(|e| not_found_or(e, &path))?;
        let rec: Record =
            serde_json::from_slice(&data).map_err(|source| StateError::Parse { path, source })?;
        if rec.format != FORMAT_VERSION {
            return Err(StateError::Version(rec.format));
        }
        Ok(rec)
    }

    /// Write a container's record atomically (the caller holds its lock).
    pub fn save(&self, rec: &Record) -> Result<(), StateError> {
        validate_id(&rec.id)?;
        let dir = self.dir(&rec.id);
        let tmp = dir.join(".state.json.tmp");
        let path = dir.join(STATE_FILE);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let data = serde_json::to_vec_pretty(rec).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(())
    }

    /// Remove a container's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }

    /// The running container whose process (its shim) is `pid`.
    pub fn running_with_pid(&self, pid: i32) -> Option<Record> {
        self.ids()
            .ok()?
            .into_iter()
            .filter_map(|id| self.load(&id).ok())
            .find(|rec| rec.pid == Some(pid) && rec.effective_status() == Status::Running)
    }

    /// Ids of all containers with a state file, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Root {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn not_found_or(e: io::Error, path: &Path) -> StateError {
    if e.kind() == io::ErrorKind::NotFound {
        StateError::NotFound
    } else {
        StateError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Container ids as runc takes them: letters, digits, `_ + - .`, not `.` or `..`, at most
/// 1024 bytes.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// Start time of a process in clock ticks since boot, or None when it does not exist (or is a
/// zombie: a dead container whose shim was not reaped yet is stopped).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn owner_name() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return "root".to_string();
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == uid.to_string())
        .map_or_else(|| uid.to_string(), |f| f[0].to_string())
}

/// The current time in RFC 3339 (UTC, nanoseconds), as runc writes `created`.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

pub use crate::logging::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ember-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "abc-1.2_3+x", "0123456789abcdef"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "a\n"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_save_load_list_remove() {
        let root = temp_root("cycle");
        let store = Store::new(Some(&root));
        let lock = store.create("c1").unwrap();
        let mut rec = Record::new("c1", Path::new("/b"), Path::new("/b/rootfs"));
        rec.annotations.insert("k".into(), "v".into());
        store.save(&rec).unwrap();
        drop(lock);
        assert!(matches!(store.create("c1"), Err(StateError::Exists(_))));
        assert_eq!(store.load("c1").unwrap(), rec);
        assert_eq!(store.ids().unwrap(), vec!["c1".to_string()]);
        store.remove("c1").unwrap();
        assert!(matches!(store.load("c1"), Err(StateError::NotFound)));
        assert!(store.ids().unwrap().is_empty());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn status_follows_the_process() {
        let mut rec = Record::new("x", Path::new("/b"), Path::new("/b/rootfs"));
        assert_eq!(rec.effective_status(), Status::Creating);
        let me = std::process::id() as i32;
        rec.pid = Some(me);
        rec.pid_start = process_start_time(me);
        rec.status = Status::Running;
        assert_eq!(rec.effective_status(), Status::Running);
        assert_eq!(rec.effective_pid(), me);
        // A pid whose start time does not match is someone else's process.
        rec.pid_start = rec.pid_start.map(|t| t + 1);
        assert_eq!(rec.effective_status(), Status::Stopped);
        assert_eq!(rec.effective_pid(), 0);
    }

    #[test]
    fn state_json_has_the_oci_fields() {
        let mut rec = Record::new("x", Path::new("/b"), Path::new("/b/rootfs"));
        rec.status = Status::Stopped;
        let v = serde_json::to_value(rec.oci_state()).unwrap();
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["id"], "x");
        assert_eq!(v["status"], "stopped");
        assert_eq!(v["pid"], 0);
        assert_eq!(v["bundle"], "/b");
        assert!(v.get("annotations").is_none());
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
    }
}
