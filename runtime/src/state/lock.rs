//! Per-pod file locks across processes, virtcontainers' `rLockPod`/`rwLockPod`: every API call
//! takes `flock(2)` on the pod's lock file, shared for reads and exclusive for changes. The lock
//! is released when the guard drops (or the process dies), so a crashed caller never wedges a pod.
//!
//! A pod's lock file lives beside its directory, not in it ([`pod_lock_path`]:
//! `<root>/@pods/.<pod>.lock`; ids cannot start with `.`), so that removing the directory can
//! never race with a caller re-creating the lock file inside it (which left directories holding
//! only `lock`, an id that could neither be used nor deleted). Whoever deletes the pod unlinks
//! the lock file while it holds it exclusively ([`PodLock::remove`]); every acquirer checks,
//! once it holds the lock, that the file it locked is still the one at the path, and starts
//! over when it is not, so a lock on an unlinked file never counts.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the lock file inside a directory locked with [`PodLock::acquire`] (OCI containers).
pub const LOCK_FILE: &str = "lock";

/// The lock file of the pod whose directory is `dir`: `.<name>.lock` beside it.
pub fn pod_lock_path(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.lock"))
}

/// Environment variable overriding how long a call waits for a pod's lock, in milliseconds.
pub const LOCK_TIMEOUT_ENV: &str = "EMBER_LOCK_TIMEOUT_MS";

/// How long a call waits for a pod's lock unless told otherwise (a pod start holds it while the
/// guest boots, which takes a while under emulation).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error(
        "Timed out after {waited:?} waiting for the lock on {path} (another ember call holds it)"
    )]
    Timeout { path: PathBuf, waited: Duration },
}

/// Shared (read) or exclusive (read-write) access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Read,
    Write,
}

/// A held pod lock; released on drop.
#[derive(Debug)]
pub struct PodLock {
    /// `None`: a read where the state root cannot be written (see [`open_lock_file`]).
    _flock: Option<Flock<File>>,
    kind: LockKind,
    path: PathBuf,
}

/// Opens (a writer: creates) the lock file. A reader opens it read-only, and when it is
/// missing and cannot be made because the directory is not writable (`EROFS`, `EACCES`), gets
/// `None`: reads then work on a read-only state root.
fn open_lock_file(path: &Path, kind: LockKind) -> std::io::Result<Option<File>> {
    if kind == LockKind::Read {
        match File::open(path) {
            Ok(f) => return Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let made = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
    match made {
        Ok(f) => Ok(Some(f)),
        Err(e)
            if kind == LockKind::Read
                && matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES))
                && path.parent().is_some_and(Path::is_dir) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl PodLock {
    /// Lock `<dir>/lock`, waiting at most [`lock_timeout`]. The directory must exist.
    pub fn acquire(dir: &Path, kind: LockKind) -> Result<PodLock, Error> {
        Self::acquire_timeout(dir, kind, lock_timeout())
    }

    /// Lock `<dir>/lock`, waiting at most `timeout`.
    pub fn acquire_timeout(
        dir: &Path,
        kind: LockKind,
        timeout: Duration,
    ) -> Result<PodLock, Error> {
        Self::acquire_file(&dir.join(LOCK_FILE), kind, timeout)
    }

    /// Lock the pod whose directory is `dir` ([`pod_lock_path`]), waiting at most `timeout`.
    /// Its parent (`<root>/@pods`) must exist; the pod directory need not.
    pub fn acquire_pod(dir: &Path, kind: LockKind, timeout: Duration) -> Result<PodLock, Error> {
        Self::acquire_file(&pod_lock_path(dir), kind, timeout)
    }

    /// [`PodLock::acquire_pod`] for a caller that only acts on a pod that still exists (a
    /// pod process recording what its VM did): `None` when the pod's record is gone, and the
    /// lock file a writer made for it afresh goes again, so that nothing of a deleted pod is
    /// left (it would keep `@pods` from going with the last pod).
    pub fn acquire_existing_pod(
        dir: &Path,
        kind: LockKind,
        timeout: Duration,
    ) -> Result<Option<PodLock>, Error> {
        let lock = match Self::acquire_pod(dir, kind, timeout) {
            // `@pods` went with the last pod.
            Err(Error::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            other => other?,
        };
        if dir.join(super::STATE_FILE).exists() {
            Ok(Some(lock))
        } else {
            lock.remove();
            Ok(None)
        }
    }

    /// Lock the file at `path` (a writer creates it), waiting at most `timeout`.
    pub fn acquire_file(path: &Path, kind: LockKind, timeout: Duration) -> Result<PodLock, Error> {
        let path = path.to_path_buf();
        let arg = match kind {
            LockKind::Read => FlockArg::LockSharedNonblock,
            LockKind::Write => FlockArg::LockExclusiveNonblock,
        };
        let start = Instant::now();
        // flock(2) has no timed wait; try without blocking and back off briefly, so that a call
        // never hangs behind a stuck holder.
        let mut pause = Duration::from_millis(2);
        loop {
            let file = match open_lock_file(&path, kind) {
                Ok(Some(f)) => f,
                // A reader of a state root nobody can write (read-only, or a pod whose lock
                // file was never made there): nothing can change under it, no lock needed.
                Ok(None) => {
                    return Ok(PodLock {
                        _flock: None,
                        kind,
                        path,
                    })
                }
                Err(source) => {
                    return Err(Error::Open {
                        path: path.clone(),
                        source,
                    })
                }
            };
            match Flock::lock(file, arg) {
                // Unlinked (the pod was deleted) or replaced while we waited: not the lock.
                Ok(flock) if !is_current(&flock, &path) => continue,
                Ok(flock) => {
                    return Ok(PodLock {
                        _flock: Some(flock),
                        kind,
                        path,
                    })
                }
                Err((_, Errno::EWOULDBLOCK)) | Err((_, Errno::EINTR)) => {}
                Err((_, source)) => return Err(Error::Lock { path, source }),
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Timeout { path, waited });
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// Unlink the lock file (its pod is gone), then release it. Only an exclusive holder
    /// removes it; anyone waiting on the unlinked file notices and locks the path afresh.
    pub fn remove(self) {
        if self.kind == LockKind::Write && self._flock.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether the locked file is still the one at `path` (same device and inode).
fn is_current(locked: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (locked.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The lock wait limit: `EMBER_LOCK_TIMEOUT_MS` when set to a number, else the default.
pub fn lock_timeout() -> Duration {
    std::env::var(LOCK_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_LOCK_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_dir;

    #[test]
    fn shared_locks_coexist_exclusive_excludes() {
        let dir = test_dir("lock-sem");
        let short = Duration::from_millis(30);
        let r1 = PodLock::acquire_timeout(&dir, LockKind::Read, short).unwrap();
        let r2 = PodLock::acquire_timeout(&dir, LockKind::Read, short).unwrap();
        // A writer cannot get in while readers hold the lock.
        let err = PodLock::acquire_timeout(&dir, LockKind::Write, short).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        drop(r1);
        drop(r2);
        let w = PodLock::acquire_timeout(&dir, LockKind::Write, short).unwrap();
        assert_eq!(w.kind(), LockKind::Write);
        // Neither readers nor writers get in while a writer holds it.
        assert!(PodLock::acquire_timeout(&dir, LockKind::Read, short).is_err());
        assert!(PodLock::acquire_timeout(&dir, LockKind::Write, short).is_err());
        drop(w);
        PodLock::acquire_timeout(&dir, LockKind::Read, short).unwrap();
    }

    #[test]
    fn readers_need_no_write_access() {
        let dir = test_dir("lock-ro");
        // An existing lock file that is read-only to us still takes a shared lock.
        drop(PodLock::acquire_timeout(&dir, LockKind::Write, Duration::ZERO).unwrap());
        let lock = dir.join(LOCK_FILE);
        std::fs::set_permissions(&lock, std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .unwrap();
        let r = PodLock::acquire_timeout(&dir, LockKind::Read, Duration::ZERO).unwrap();
        assert!(r._flock.is_some());
        drop(r);
        // A read-only bind mount of the directory without a lock file: reads go on unlocked,
        // writes are refused.
        std::fs::remove_file(&lock).unwrap();
        let ro = test_dir("lock-ro-mnt");
        let mounted = nix::mount::mount(
            Some(&dir),
            &ro,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .and_then(|()| {
            nix::mount::mount(
                None::<&str>,
                &ro,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND
                    | nix::mount::MsFlags::MS_REMOUNT
                    | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            )
        });
        if let Err(e) = mounted {
            println!("SKIPPED: read-only bind mount needs root ({e}); the rest ran");
            let _ = nix::mount::umount(&ro);
            return;
        }
        let r = PodLock::acquire_timeout(&ro, LockKind::Read, Duration::ZERO);
        let w = PodLock::acquire_timeout(&ro, LockKind::Write, Duration::ZERO);
        nix::mount::umount(&ro).unwrap();
        assert!(r.unwrap()._flock.is_none());
        assert!(matches!(w.unwrap_err(), Error::Open { .. }));
    }

    #[test]
    fn a_deleted_pod_is_not_locked_and_its_lock_file_does_not_come_back() {
        let dir = test_dir("lock-existing").join("pod");
        let path = pod_lock_path(&dir);
        let short = Duration::from_millis(30);
        assert!(PodLock::acquire_existing_pod(&dir, LockKind::Write, short)
            .unwrap()
            .is_none());
        assert!(!path.exists(), "a lock file for a pod that is not there");
        let gone = dir.parent().unwrap().join("gone/pod");
        assert!(PodLock::acquire_existing_pod(&gone, LockKind::Write, short)
            .unwrap()
            .is_none());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(super::super::STATE_FILE), "{}").unwrap();
        let held = PodLock::acquire_existing_pod(&dir, LockKind::Write, short).unwrap();
        assert!(held.is_some());
        assert!(path.exists());
    }

    #[test]
    fn removed_lock_is_never_held_twice() {
        let dir = test_dir("lock-remove").join("pod");
        let path = pod_lock_path(&dir);
        assert_eq!(path, dir.with_file_name(".pod.lock"));
        let short = Duration::from_millis(30);
        let held = PodLock::acquire_pod(&dir, LockKind::Write, short).unwrap();
        // A waiter opened the file before its holder unlinked it: once it gets the flock, it
        // sees the file is gone and locks the path afresh.
        let waiter = std::thread::spawn({
            let dir = dir.clone();
            move || PodLock::acquire_pod(&dir, LockKind::Write, Duration::from_secs(5)).unwrap()
        });
        std::thread::sleep(Duration::from_millis(50));
        held.remove();
        let w = waiter.join().unwrap();
        assert!(path.exists(), "the waiter made a new lock file");
        // That new file is the lock: nobody else gets it while the waiter holds it.
        let err = PodLock::acquire_pod(&dir, LockKind::Read, short).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        w.remove();
        assert!(!path.exists());
        // A reader never removes the file.
        let r = PodLock::acquire_pod(&dir, LockKind::Write, short).unwrap();
        drop(r);
        PodLock::acquire_pod(&dir, LockKind::Read, short)
            .unwrap()
            .remove();
        assert!(path.exists());
    }

    #[test]
    fn missing_dir_is_an_open_error() {
        let dir = test_dir("lock-missing").join("nope");
        let err = PodLock::acquire_timeout(&dir, LockKind::Read, Duration::ZERO).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
    }
}
