//! A cgroup per pod on the host: the pod process (the VMM, its vCPU threads, its devices'
//! event loop) moves itself into `<cgroup2 mount>/ember/<pod id>` — or the pod config's
//! `cgroup`, which the OCI face sets to the spec's `cgroupsPath`, so that the engine finds its
//! container's sandbox where runc would put the container (Kata does the same) — before it
//! starts a thread,
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

/// The pod's cgroup directory under `root` (a cgroup2 mount): its configured one
/// ([`crate::config::PodConfig::cgroup`]), else `ember/<pod>`.
pub fn path_for(root: &Path, configured: Option<&str>, pod: &str) -> PathBuf {
    match configured {
        Some(rel) => root.join(rel.trim_start_matches('/')),
        None => root.join(PARENT).join(pod),
    }
}

/// Checks a configured cgroup path: relative to the cgroup2 root (a leading `/` allowed),
/// plain names (no `.`, `..` or empty components), and not the root itself.
pub fn check_path(rel: &str) -> Result<(), String> {
    let rel = rel.trim_start_matches('/');
    let bad = rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'));
    if bad {
        return Err(format!(
            "cgroup {rel:?}: a path under the cgroup2 root, of plain names"
        ));
    }
    Ok(())
}

/// Makes `dir` (under `root`) and its missing parents, each parent handing the memory, pids
/// and cpu controllers down.
fn make(root: &Path, dir: &Path) -> Result<(), Error> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut at = root.to_path_buf();
    for part in rel.components() {
        delegate(&at)?;
        at.push(part);
        match fs::create_dir(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "create",
                    path: at,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Move this whole process into `dir` under `root` (made if missing, no limits set): an OCI
/// container's shim, the process engines know as the container's, joins the spec's
/// `cgroupsPath` so. `Ok(false)` where `root` is not a cgroup2 mount.
pub fn enter(root: &Path, dir: &Path) -> Result<bool, Error> {
    if !agent::cgroup::is_cgroup2(root) {
        return Ok(false);
    }
    make(root, dir)?;
    move_in(dir)?;
    Ok(true)
}

/// Move this whole process into `dir`.
fn move_in(dir: &Path) -> Result<(), Error> {
    write(
        &dir.join("cgroup.procs"),
        "move the process into",
        &std::process::id().to_string(),
    )
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

/// Move this whole process into the pod's cgroup `dir` under `root` ([`path_for`]; made with
/// its parents, with `limits` on the controllers it has). `Ok(None)` where `root` is not a
/// cgroup2 mount.
pub fn join(root: &Path, dir: &Path, limits: &Limits) -> Result<Option<PathBuf>, Error> {
    if !agent::cgroup::is_cgroup2(root) {
        return Ok(None);
    }
    make(root, dir)?;
    let dir = dir.to_path_buf();
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
    move_in(&dir)?;
    Ok(Some(dir))
}

/// At the pod process's end: move it back to the root cgroup and remove its own (a cgroup
/// with a process in it cannot go). Best effort: whoever deletes the pod removes what is left
/// ([`remove`]).
/// Move this whole process out of the pod's cgroup `dir` (to `back_to`, else to `root`'s top)
/// and remove `dir`.
pub fn leave(root: &Path, dir: &Path, back_to: Option<&Path>) {
    let to = back_to.unwrap_or(root).join("cgroup.procs");
    let _ = fs::write(to, std::process::id().to_string());
    remove(dir);
}

/// The cgroup v2 directory this process is in, under `root` (from `/proc/self/cgroup`).
pub fn current(root: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_of(root, &text)
}

/// The cgroup v2 directory a `/proc/<pid>/cgroup` text names (its `0::` line), under `root`.
fn cgroup_of(root: &Path, text: &str) -> Option<PathBuf> {
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = rel.trim().trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    })
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
    fn the_current_cgroup_is_read_from_the_v2_line() {
        let root = Path::new("/sys/fs/cgroup");
        let v1_and_v2 = "12:pids:/user.slice\n0::/system.slice/containerd.service\n";
        assert_eq!(
            cgroup_of(root, v1_and_v2),
            Some(root.join("system.slice/containerd.service"))
        );
        assert_eq!(cgroup_of(root, "0::/\n"), Some(root.to_path_buf()));
        assert_eq!(cgroup_of(root, "1:name=systemd:/x\n"), None);
        assert_eq!(cgroup_of(root, "0::/a/../../etc\n"), None);
    }

    #[test]
    fn no_cgroup2_mount_means_no_cgroup() {
        let dir = std::env::temp_dir().join(format!("ember-nocg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cg = path_for(&dir, None, "p");
        assert_eq!(join(&dir, &cg, &Limits::for_vm(256, 1)).unwrap(), None);
        assert!(!enter(&dir, &cg).unwrap());
        assert!(!dir.join(PARENT).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_configured_cgroup_is_used_checked_and_made_with_its_parents() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(path_for(root, None, "p"), root.join("ember/p"));
        assert_eq!(
            path_for(root, Some("/libpod_parent/libpod-abc"), "p"),
            root.join("libpod_parent/libpod-abc")
        );
        assert!(check_path("/libpod_parent/libpod-abc").is_ok());
        assert!(check_path("kubepods/burstable/pod1/c2").is_ok());
        for bad in ["", "/", "a//b", "a/../b", "../x", "./a", "a/."] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        // Parents are made one by one (each would hand its controllers down).
        let dir = std::env::temp_dir().join(format!("ember-cgmake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let deep = path_for(&dir, Some("a/b/c"), "p");
        make(&dir, &deep).unwrap();
        assert!(deep.is_dir());
        make(&dir, &deep).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
