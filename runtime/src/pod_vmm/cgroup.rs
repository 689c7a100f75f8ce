//! A cgroup per pod on the host: the pod process (the VMM, its vCPU threads, its devices'
//! event loop) moves itself into `<cgroup2 mount>/ember/<pod id>` before it starts a thread,
//! with limits sized from the VM: `memory.max` = guest memory + [`VMM_MEMORY_OVERHEAD_MIB`],
//! `pids.max` = [`PIDS_MAX`], `cpu.max` = one CPU per vCPU plus one for the VMM's own
//! threads. A VMM that runs away (a leak, a guest driving it to allocate) is throttled or
//! OOM-killed inside its pod's cgroup, never the host; `memory.events` there says so.
//!
//! Only the unified hierarchy (cgroup v2) is used; on a host without it the pod process stays
//! where it was started, and says so in its log.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the unified hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent of every pod's cgroup, under [`CGROUP_ROOT`].
pub const PARENT: &str = "ember";
/// What a pod process may use beyond its guest's memory (its own heap, device buffers, the
/// page cache of what it reads and writes).
pub const VMM_MEMORY_OVERHEAD_MIB: u64 = 256;
/// Tasks of a pod process: its threads and the hooks it runs.
pub const PIDS_MAX: u32 = 256;
/// cgroup v2's default CPU period.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The limits of a pod's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: u64,
    pub pids_max: u32,
    /// `cpu.max`: quota and period in microseconds.
    pub cpu_max: (u64, u64),
}

impl Limits {
    /// What a VM of `mem_mib` MiB and `vcpus` vCPUs gets.
    pub fn for_vm(mem_mib: u32, vcpus: u8) -> Limits {
        Limits {
            memory_max: (u64::from(mem_mib) + VMM_MEMORY_OVERHEAD_MIB) << 20,
            pids_max: PIDS_MAX,
            cpu_max: ((u64::from(vcpus) + 1) * CPU_PERIOD_US, CPU_PERIOD_US),
        }
    }
}

/// The pod's cgroup directory under `root` (a cgroup2 mount).
pub fn path_for(root: &Path, pod: &str) -> PathBuf {
    root.join(PARENT).join(pod)
}

fn write(path: &Path, what: &'static str, value: &str) -> Result<(), Error> {
    fs::write(path, value).map_err(|source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The controllers of `dir` (its `cgroup.controllers`).
fn controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Hand the memory, pids and cpu controllers that `dir` has down to its children.
fn delegate(dir: &Path) -> Result<(), Error> {
    let have = controllers(dir);
    let wanted: Vec<String> = ["memory", "pids", "cpu"]
        .iter()
        .filter(|c| have.iter().any(|h| h == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(
        &dir.join("cgroup.subtree_control"),
        "enable controllers in",
        &wanted.join(" "),
    )
}

/// Move this whole process into pod `pod`'s cgroup under `root` (created, with `limits` on
/// the controllers it has). `Ok(None)` where `root` is not a cgroup2 mount.
pub fn join(root: &Path, pod: &str, limits: &Limits) -> Result<Option<PathBuf>, Error> {
    if !root.join("cgroup.controllers").is_file() {
        return Ok(None);
    }
    let parent = root.join(PARENT);
    fs::create_dir_all(&parent).map_err(|source| Error::Io {
        what: "create",
        path: parent.clone(),
        source,
    })?;
    delegate(root)?;
    delegate(&parent)?;
    let dir = path_for(root, pod);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(Error::Io {
                what: "create",
                path: dir,
                source,
            })
        }
    }
    let have = controllers(&dir);
    let has = |c: &str| have.iter().any(|h| h == c);
    if has("memory") {
        write(
            &dir.join("memory.max"),
            "limit memory in",
            &limits.memory_max.to_string(),
        )?;
    }
    if has("pids") {
        write(
            &dir.join("pids.max"),
            "limit tasks in",
            &limits.pids_max.to_string(),
        )?;
    }
    if has("cpu") {
        let (quota, period) = limits.cpu_max;
        write(
            &dir.join("cpu.max"),
            "limit CPU in",
            &format!("{quota} {period}"),
        )?;
    }
    write(
        &dir.join("cgroup.procs"),
        "move the pod process into",
        &std::process::id().to_string(),
    )?;
    Ok(Some(dir))
}

/// At the pod process's end: move it back to the root cgroup and remove its own (a cgroup
/// with a process in it cannot go). Best effort: whoever deletes the pod removes what is left
/// ([`remove`]).
pub fn leave(root: &Path, dir: &Path) {
    let _ = fs::write(root.join("cgroup.procs"), std::process::id().to_string());
    remove(dir);
}

/// Remove a pod's cgroup directory once nothing is in it (errors ignored: already gone, or a
/// process still in it that the caller is about to kill).
pub fn remove(dir: &Path) {
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_sized_from_the_vm() {
        let l = Limits::for_vm(1152, 2);
        assert_eq!(l.memory_max, (1152 + 256) << 20);
        assert_eq!(l.cpu_max, (300_000, 100_000));
        assert_eq!(l.pids_max, 256);
    }

    #[test]
    fn no_cgroup2_mount_means_no_cgroup() {
        let dir = std::env::temp_dir().join(format!("ember-nocg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(join(&dir, "p", &Limits::for_vm(256, 1)).unwrap(), None);
        assert!(!dir.join(PARENT).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
