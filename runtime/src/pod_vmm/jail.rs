//! The jail of a pod's guest-facing threads, in the pod process itself (Firecracker's jailer
//! is the model; ember does it per thread, in-process).
//!
//! The thread that builds and runs the VM ([`super::vm::Vm::boot`]) enters its own mount
//! namespace before it builds anything: every mount there private, a small tmpfs as its root
//! (`pivot_root`, the host's root detached) holding only what the VM needs at the same paths
//! as outside — the pod directory, the kernel and initrd, the disks, the snapshot it restores,
//! `/dev/kvm` (and `/dev/net/tun` for a networked pod) — and `/proc/self/fd` (virtio-fs
//! reopens its `O_PATH` handles there). The vCPU threads and the device event loop are started
//! by that thread, so they live in the jail too: a path a guest-facing thread opens resolves
//! inside it, and the host's other files are not there to open. Their seccomp filters forbid
//! `mount`, `umount2`, `pivot_root`, `chroot`, `unshare` and `setns`, so the jail cannot be
//! undone from them.
//!
//! The vCPU threads also take a user of their own, [`vcpu_user`]: uid and gid
//! `VCPU_USER_BASE + the pod process's pid`, unique among running pods without any allocation
//! to keep or leak (pids are unique among live processes), no supplementary groups, no
//! capabilities. A vCPU needs no user (its descriptors and memory are open), and under another
//! uid it cannot signal, trace or touch through `/proc` the host's root processes, nor another
//! pod's vCPUs.
//!
//! The pod process's main and control threads stay in the host's mount namespace: they open
//! what the pod's clients name (a container's rootfs directory to share, an image to insert,
//! a snapshot's place) and hand the devices open descriptors.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the vCPU threads' users start: far above the ranges `/etc/subuid` hands out for user
/// namespaces (100000 and up, 65536 each) and the pid limit's 2^22 below 2^31.
pub const VCPU_USER_BASE: u32 = 0x6000_0000;

/// The user the vCPU threads of this pod process switch to (uid and gid alike), when it runs
/// as root; `None` otherwise (an unprivileged pod process cannot switch).
pub fn vcpu_user() -> Option<u32> {
    nix::unistd::geteuid()
        .is_root()
        .then(|| VCPU_USER_BASE + std::process::id())
}

/// Why a jail (or another private mount namespace built here) could not be made; each is
/// fatal to the pod's start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("The path {} is not absolute", .0.display())]
    Relative(PathBuf),
}

/// One host path the jailed threads see, at the same place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    pub writable: bool,
}

impl Bind {
    pub fn ro(path: impl Into<PathBuf>) -> Bind {
        Bind {
            path: path.into(),
            writable: false,
        }
    }

    pub fn rw(path: impl Into<PathBuf>) -> Bind {
        Bind {
            path: path.into(),
            writable: true,
        }
    }
}

/// What a jail holds.
#[derive(Clone, Debug)]
pub struct Spec {
    /// An empty directory on the host that becomes the jail's root (a tmpfs is mounted on it
    /// in the jail's namespace only; the host sees the empty directory).
    pub root: PathBuf,
    pub binds: Vec<Bind>,
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

fn cstr(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Sys {
        what: format!("use the path {}", p.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

pub(crate) fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), Error> {
    let what = || format!("mount {}", target.display());
    let source = source.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|f| CString::new(f).unwrap_or_default());
    let data = data.map(|d| CString::new(d).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives across the call.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if r != 0 {
        return Err(sys(what())(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Where `path` goes under the jail's root.
pub(crate) fn inside(root: &Path, path: &Path) -> Result<PathBuf, Error> {
    let rel = path
        .strip_prefix("/")
        .map_err(|_| Error::Relative(path.to_path_buf()))?;
    Ok(root.join(rel))
}

/// Bind `host` (a directory or any other file) onto `target`, read-only unless `writable`.
fn bind(host: &Path, target: &Path, writable: bool) -> Result<(), Error> {
    let meta = fs::metadata(host).map_err(sys(format!("look at {}", host.display())))?;
    if meta.is_dir() {
        fs::create_dir_all(target).map_err(sys(format!("create {}", target.display())))?;
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(sys(format!("create {}", parent.display())))?;
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .map_err(sys(format!("create {}", target.display())))?;
    }
    mount(Some(host), target, None, libc::MS_BIND, None)?;
    if !writable {
        mount(
            None,
            target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
            None,
        )?;
    }
    Ok(())
}

/// Put the calling thread (and the threads it starts afterwards) into the jail `spec`
/// describes. Only this thread changes: the process's other threads keep the host's view.
pub fn enter(spec: &Spec) -> Result<(), Error> {
    fs::create_dir_all(&spec.root).map_err(sys(format!("create {}", spec.root.display())))?;
    private_namespace()?;
    mount(
        Some(Path::new("ember-jail")),
        &spec.root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )?;
    for b in &spec.binds {
        bind(&b.path, &inside(&spec.root, &b.path)?, b.writable)?;
    }
    // virtio-fs reopens its O_PATH handles through /proc/self/fd: this process's fd table
    // only, not the rest of /proc (whose /proc/PID/root would lead out of the jail).
    let fd_dir = PathBuf::from(format!("/proc/{}/fd", std::process::id()));
    let jail_fd = inside(&spec.root, Path::new("/proc/self/fd"))?;
    fs::create_dir_all(&jail_fd).map_err(sys(format!("create {}", jail_fd.display())))?;
    mount(Some(&fd_dir), &jail_fd, None, libc::MS_BIND, None)?;
    // The jail's root read-only from here on (its binds keep their own modes).
    mount(
        None,
        &spec.root,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )?;
    pivot_into(&spec.root, true)
}

/// A mount namespace of the calling thread's own (CLONE_NEWNS implies a private fs_struct:
/// the process's other threads keep theirs), every mount in it private, so nothing done there
/// reaches the host's mounts.
pub(crate) fn private_namespace() -> Result<(), Error> {
    // SAFETY: unshare(2) with a flag constant; it affects only the calling thread here.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(sys("make a mount namespace")(
            std::io::Error::last_os_error(),
        ));
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

/// Makes `root` (a mount point) the calling thread's root, the old root detached: the root
/// of its mount namespace, what a process that joins the namespace (`setns`) gets too. Where
/// the host runs from its initramfs (rootfs cannot be pivoted) and `or_chroot`, `root` is
/// moved onto "/" and chrooted into, as switch_root does (a joiner of the namespace would
/// not be confined by that).
pub(crate) fn pivot_into(root: &Path, or_chroot: bool) -> Result<(), Error> {
    let root = cstr(root)?;
    // SAFETY: chdir takes a NUL-terminated path that outlives the call.
    if unsafe { libc::chdir(root.as_ptr()) } != 0 {
        return Err(sys("enter the new root")(std::io::Error::last_os_error()));
    }
    let dot = c".".as_ptr();
    // pivot_root with the old root stacked on the new one (pivot_root(".", ".")), then the
    // old root detached: nothing of the host's tree is left in this namespace.
    // SAFETY: pivot_root and umount2 take NUL-terminated paths that outlive the calls.
    let pivoted = unsafe { libc::syscall(libc::SYS_pivot_root, dot, dot) } == 0;
    if pivoted {
        // SAFETY: as above.
        if unsafe { libc::umount2(dot, libc::MNT_DETACH) } != 0 {
            return Err(sys("detach the host's root")(
                std::io::Error::last_os_error(),
            ));
        }
    } else {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) || !or_chroot {
            return Err(sys("pivot_root")(err));
        }
        // The host runs from its initramfs (rootfs cannot be pivoted): move the jail onto
        // "/" and chroot into it, as switch_root does.
        mount(
            Some(Path::new(".")),
            Path::new("/"),
            None,
            libc::MS_MOVE,
            None,
        )?;
        // SAFETY: chroot takes a NUL-terminated path that outlives the call.
        if unsafe { libc::chroot(dot) } != 0 {
            return Err(sys("chroot into the jail")(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: as above.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(sys("enter the jail's root")(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread in a jail sees only its binds; the process's other threads keep the host.
    #[test]
    fn a_jailed_thread_sees_only_its_binds() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping a_jailed_thread_sees_only_its_binds: needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("ember-jail-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let shared = base.join("pod");
        fs::create_dir_all(&shared).unwrap();
        fs::write(shared.join("record"), b"mine").unwrap();
        let kernel = base.join("vmlinux");
        fs::write(&kernel, b"kernel").unwrap();
        let outside = base.join("secret");
        fs::write(&outside, b"host only").unwrap();
        let spec = Spec {
            root: shared.join("jail"),
            binds: vec![Bind::rw(&shared), Bind::ro(&kernel)],
        };
        let (shared2, kernel2, outside2) = (shared.clone(), kernel.clone(), outside.clone());
        let seen = std::thread::spawn(move || {
            enter(&spec).unwrap();
            let own = fs::read(shared2.join("record")).unwrap();
            fs::write(shared2.join("written-in-jail"), b"x").unwrap();
            let k = fs::read(&kernel2).unwrap();
            let k_write = fs::OpenOptions::new().write(true).open(&kernel2).is_err();
            let secret = fs::read(&outside2).is_err();
            let etc = Path::new("/etc/passwd").exists();
            let fd_dir = fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0);
            let proc_1 = Path::new("/proc/1").exists();
            (own, k, k_write, secret, etc, fd_dir, proc_1)
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, b"mine");
        assert_eq!(seen.1, b"kernel");
        assert!(seen.2, "the kernel is read-only in the jail");
        assert!(seen.3, "a host file outside the jail is not there");
        assert!(!seen.4, "no /etc in the jail");
        assert!(seen.5 > 0, "/proc/self/fd lists this process's descriptors");
        assert!(!seen.6, "no other /proc entries");
        // The test's own thread still sees the host, and the jail's write landed on it.
        assert!(Path::new("/etc/passwd").exists());
        assert_eq!(fs::read(shared.join("written-in-jail")).unwrap(), b"x");
        assert_eq!(fs::read(&outside).unwrap(), b"host only");
        fs::remove_dir_all(&base).unwrap();
    }
}
