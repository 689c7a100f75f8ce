//! cgroup v2: one cgroup per container (process list, freezer, kill, stats).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not a cgroup v2 mount")]
    NotCgroup2(PathBuf),
    #[error("Invalid cgroup path {0:?}")]
    InvalidPath(String),
    #[error("Cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write {file}")]
    Write {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {0} did not reach the frozen={1} state")]
    FreezeTimeout(PathBuf, bool),
    #[error("The device rules of cgroup {path}")]
    Devices {
        path: PathBuf,
        #[source]
        source: Box<crate::devcgroup::Error>,
    },
    #[error("Cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is the root (or any directory) of a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Enables every available controller for the children of `dir` (best effort: a controller
/// that cannot be enabled, e.g. one bound to cgroup v1, is skipped).
pub fn enable_controllers(dir: &Path) {
    let Ok(avail) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    for c in avail.split_whitespace() {
        let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
}

/// A container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates (or reuses) `root/rel`, enabling controllers on the way down.
    pub fn create(root: &Path, rel: &str) -> Result<Cgroup, Error> {
        if !is_cgroup2(root) {
            return Err(Error::NotCgroup2(root.to_path_buf()));
        }
        let rel = rel.trim_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::InvalidPath(rel.to_string()));
        }
        let mut dir = root.to_path_buf();
        for comp in rel.split('/') {
            enable_controllers(&dir);
            dir.push(comp);
            if !dir.exists() {
                fs::create_dir(&dir).map_err(|source| Error::Create {
                    path: dir.clone(),
                    source,
                })?;
            }
        }
        Ok(Cgroup { path: dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), Error> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Pids in the cgroup.
    pub fn procs(&self) -> Result<Vec<i32>, Error> {
        let text = self.read("cgroup.procs")?;
        Ok(text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Freezes (`true`) or thaws the cgroup and waits until the kernel reports it done.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), Error> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.read("cgroup.events")?;
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::FreezeTimeout(self.path.clone(), frozen));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the cgroup is frozen.
    pub fn frozen(&self) -> bool {
        self.read("cgroup.events")
            .map(|e| e.lines().any(|l| l.trim() == "frozen 1"))
            .unwrap_or(false)
    }

    /// Kills every process in the cgroup: `cgroup.kill` where the kernel has it (5.14+),
    /// else SIGKILL to each listed pid.
    pub fn kill_all(&self) -> Result<(), Error> {
        if self.path.join("cgroup.kill").exists() {
            return self.write("cgroup.kill", "1");
        }
        self.signal_all(libc::SIGKILL)
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal_all(&self, signal: i32) -> Result<(), Error> {
        for pid in self.procs()? {
            // SAFETY: kill(2) has no memory effects. A pid that exited meanwhile fails ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Writes `limits` into the cgroup's interface files (only those that are set). A limit
    /// whose controller the kernel lacks is an error, as with runc.
    pub fn apply(&self, limits: &crate::protocol::CgroupLimits) -> Result<(), Error> {
        let bound = |v: i64| {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(m) = limits.memory_max {
            self.write("memory.max", &bound(m))?;
        }
        if let Some(m) = limits.memory_swap_max {
            self.write("memory.swap.max", &bound(m))?;
        }
        if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
            let quota = limits
                .cpu_quota
                .filter(|q| *q > 0)
                .map_or("max".to_string(), |q| q.to_string());
            let period = limits.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
            self.write("cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(w) = limits.cpu_weight {
            self.write("cpu.weight", &w.clamp(1, 10_000).to_string())?;
        }
        if let Some(p) = limits.pids_max {
            self.write("pids.max", &bound(p))?;
        }
        if let Some(rules) = &limits.devices {
            let devices = |source| Error::Devices {
                path: self.path.clone(),
                source: Box::new(source),
            };
            let filter = crate::devcgroup::Filter::from_rules(rules).map_err(devices)?;
            crate::devcgroup::attach(&self.path, &filter).map_err(devices)?;
        }
        Ok(())
    }

    /// `memory.current`, where the memory controller is enabled.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.read("memory.current").ok()?.trim().parse().ok()
    }

    /// `usage_usec` from `cpu.stat`.
    pub fn cpu_usec(&self) -> Option<u64> {
        let stat = self.read("cpu.stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Removes the cgroup once its processes are gone (waits up to `timeout`).
    pub fn remove(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::Remove {
                        path: self.path.clone(),
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<(), Error> {
        let file = self.path.join(file);
        fs::write(&file, value).map_err(|source| Error::Write { file, source })
    }

    fn read(&self, file: &str) -> Result<String, Error> {
        let file = self.path.join(file);
        fs::read_to_string(&file).map_err(|source| Error::Read { file, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_cgroup2_root_and_bad_paths() {
        let tmp = std::env::temp_dir();
        assert!(matches!(
            Cgroup::create(&tmp, "ember/x"),
            Err(Error::NotCgroup2(_))
        ));
        if let Some(root) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(Path::new)
            .find(|p| is_cgroup2(p))
        {
            for bad in ["", "a/../b", "a//b", "."] {
                assert!(
                    matches!(Cgroup::create(root, bad), Err(Error::InvalidPath(_))),
                    "{bad:?} accepted"
                );
            }
        }
    }
}
