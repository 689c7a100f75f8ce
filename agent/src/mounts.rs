//! Mounts: the container rootfs (in the agent's namespace) and, inside the container's mount
//! namespace, /proc, /dev, /sys, the spec's mounts and the switch to the new root.

use crate::protocol::{Device, LinuxSetup, Mount, RootfsSpec, SHARED_FS_MOUNT, SHARED_FS_TAG};
use nix::mount::{MntFlags, MsFlags};
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

/// Errors of mounting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot unmount {target}")]
    Umount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Mount destination {0:?} is not an absolute path without '..'")]
    BadDestination(String),
    #[error("Mount of {destination}: volume source {source_path:?} is not a relative path on the volume")]
    BadVolumeSource {
        destination: String,
        source_path: String,
    },
    #[error("Mount of {0} takes its source from the container's volume, but it has none")]
    NoVolume(String),
    #[error("{0:?} is not a share name (one path component)")]
    BadShare(String),
    #[error("Cannot switch root to {path}")]
    PivotRoot {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot create device node {path}")]
    Mknod {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot create device node {path} in a user namespace, and the VM has no such node (at {guest_path} or by its numbers) to bind")]
    NoNodeToBind { path: PathBuf, guest_path: PathBuf },
    #[error("Unknown root propagation {0:?} (want shared, slave, private or unbindable, or one with an r prefix)")]
    BadPropagation(String),
    #[error("Device {path}: unknown type {kind:?} (want c, u, b or p)")]
    BadDevice { path: String, kind: String },
    #[error("Cannot make {path} read-only")]
    Readonly {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "Cannot take /dev/shm of the container whose IPC namespace this one shares (pid {pid})"
    )]
    ShareShm {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot mask {path}")]
    Mask {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn mount(
    what: &str,
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(mount_error(what, target))
}

/// The error of mounting `what` at `target`.
fn mount_error<'a>(what: &'a str, target: &'a Path) -> impl FnOnce(nix::Error) -> Error + 'a {
    move |source| Error::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        source,
    }
}

/// A container that shares another's IPC namespace gets its `/dev/shm` too, as under runc,
/// where the engine binds one host tmpfs into both (podman's pod members, CRI containers of
/// a pod): a clone of the mount at `/dev/shm` in the mount namespace of `target_pid` (the
/// other container's init), taken there, put over `rootfs/dev/shm` here. Run by a
/// single-threaded helper before it switches root; its root and cwd are its namespace's root
/// afterwards, as before.
pub fn share_shm(target_pid: i32, rootfs: &Path) -> Result<(), Error> {
    use nix::sched::{setns, CloneFlags};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    let err = |source| Error::ShareShm {
        pid: target_pid,
        source,
    };
    let open = |path: String| {
        fs::File::open(path)
            .map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
    };
    let own = open("/proc/self/ns/mnt".to_string())?;
    let theirs = open(format!("/proc/{target_pid}/ns/mnt"))?;
    setns(theirs.as_fd(), CloneFlags::CLONE_NEWNS).map_err(err)?;
    // SAFETY: open_tree takes a NUL-terminated path that outlives the call; the fd it returns
    // is owned here.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/dev/shm".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let tree = (tree >= 0)
        // SAFETY: a new fd, owned by nothing else.
        .then(|| unsafe { OwnedFd::from_raw_fd(tree as i32) })
        .ok_or_else(nix::Error::last);
    // Back home whatever open_tree did.
    setns(own.as_fd(), CloneFlags::CLONE_NEWNS).map_err(err)?;
    let tree = tree.map_err(err)?;
    let target = rootfs.join("dev/shm");
    mkdir_p(&target)?;
    let target_c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| err(nix::Error::EINVAL))?;
    // SAFETY: both paths are NUL-terminated and outlive the call; `tree` is a mount fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(mount_error("the shared /dev/shm", &target)(
            nix::Error::last(),
        ));
    }
    Ok(())
}

/// open_tree(2): a detached copy of the mount (linux/mount.h).
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// move_mount(2): the source is the fd itself (linux/mount.h).
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn mkdir_p(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Mounts the container rootfs at `target` (in the agent's mount namespace).
pub fn mount_rootfs(spec: &RootfsSpec, target: &Path) -> Result<(), Error> {
    mkdir_p(target)?;
    match spec {
        RootfsSpec::BlockDevice {
            path,
            fstype,
            read_only,
        } => {
            wait_for_medium(Path::new(path), MEDIUM_WAIT);
            let mut flags = MsFlags::empty();
            if *read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            mount(path, Some(path), target, Some(fstype), flags, None)
        }
        RootfsSpec::Share { name, read_only } => {
            let path = share_path(name)?;
            let path = path.to_string_lossy();
            mount_rootfs(
                &RootfsSpec::Path {
                    path: path.into_owned(),
                    read_only: *read_only,
                },
                target,
            )
        }
        RootfsSpec::Path { path, read_only } => {
            // Not recursive: a container root made from a directory of the guest (even `/`)
            // must not carry the guest's own /proc, /sys, /dev or /run mounts — mounting the
            // container's sysfs on top of the guest's one would fail with EBUSY.
            mount(path, Some(path), target, None, MsFlags::MS_BIND, None)?;
            if *read_only {
                mount(
                    "read-only remount",
                    None,
                    target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None,
                )?;
            }
            Ok(())
        }
    }
}

/// Where share `name` of the VM's virtio-fs device is, mounting the device
/// ([`SHARED_FS_TAG`] at [`SHARED_FS_MOUNT`]) on first use. A share is a root entry of the
/// device: one path component.
pub fn share_path(name: &str) -> Result<PathBuf, Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::BadShare(name.to_string()));
    }
    static MOUNTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut mounted = MOUNTED.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(SHARED_FS_MOUNT);
    if !*mounted {
        mkdir_p(root)?;
        // Not nosuid or nodev: containers' roots are binds of its shares, and on runc's
        // overlay root a setuid binary elevates and a device node opens (as far as the
        // container's device rules allow: [`crate::devcgroup`]).
        mount(
            "virtio-fs",
            Some(SHARED_FS_TAG),
            root,
            Some("virtiofs"),
            MsFlags::empty(),
            None,
        )?;
        *mounted = true;
    }
    Ok(root.join(name))
}

/// Gives the mounts marked `from_share` the path of their share ([`share_path`]).
pub fn resolve_share_sources(mounts: &mut [Mount]) -> Result<(), Error> {
    for m in mounts.iter_mut().filter(|m| m.from_share) {
        m.source = share_path(&m.source)?.to_string_lossy().into_owned();
        m.from_share = false;
    }
    Ok(())
}

/// Gives the mounts marked `from_volume` their absolute source under `volume` (where the
/// container's volume disk is mounted). Sources resolve like destinations: `..` and
/// symlinks on the volume cannot lead outside it.
pub fn resolve_volume_sources(mounts: &mut [Mount], volume: Option<&Path>) -> Result<(), Error> {
    for m in mounts.iter_mut().filter(|m| m.from_volume) {
        let Some(volume) = volume else {
            return Err(Error::NoVolume(m.destination.clone()));
        };
        let relative = Path::new(&m.source);
        if m.source.is_empty() || relative.is_absolute() {
            return Err(Error::BadVolumeSource {
                destination: m.destination.clone(),
                source_path: m.source.clone(),
            });
        }
        let resolved = in_root(volume, &format!("/{}", m.source))?;
        m.source = resolved.to_string_lossy().into_owned();
        m.from_volume = false;
    }
    Ok(())
}

/// How long a block device may take to show the disk just inserted into its slot.
const MEDIUM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A disk inserted into a running VM's slot reaches the guest as a config interrupt, and
/// virtio_blk updates the size from a workqueue: wait (up to `limit`) until the kernel shows
/// a nonzero size in `/sys/class/block/<name>/size`. Devices without that file (not a
/// whole disk, or no sysfs) are not waited for; a size still 0 is left to mount to report.
pub fn wait_for_medium(device: &Path, limit: std::time::Duration) {
    let Some(name) = device.file_name() else {
        return;
    };
    let size = Path::new("/sys/class/block").join(name).join("size");
    let deadline = std::time::Instant::now() + limit;
    loop {
        match fs::read_to_string(&size) {
            Ok(s) if s.trim().parse::<u64>().is_ok_and(|n| n > 0) => return,
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => return,
        }
    }
}

/// Unmounts the rootfs (lazily, so a leftover user cannot block destroy).
pub fn unmount_rootfs(target: &Path) -> Result<(), Error> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(Error::Umount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// Mount flags and filesystem data parsed from OCI-style options.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    pub data: Vec<String>,
    /// `tmpcopyup` (runc's extension): a tmpfs starts with what its mount point held.
    pub copy_up: bool,
}

/// Splits options into flags and data (`size=64m`, ...). Clearing flags (`rw`, `suid`, ...)
/// just drop the matching flag.
pub fn parse_options(options: &[String]) -> ParsedOptions {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut copy_up = false;
    for o in options {
        let (set, clear) = match o.as_str() {
            "tmpcopyup" => {
                copy_up = true;
                (MsFlags::empty(), MsFlags::empty())
            }
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "defaults" => {
                (MsFlags::empty(), MsFlags::empty())
            }
            other => {
                data.push(other.to_string());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags |= set;
        flags &= !clear;
    }
    ParsedOptions {
        flags,
        data,
        copy_up,
    }
}

/// Copies the tree under `from` into `to` (an existing directory): directories, regular files,
/// symlinks and device/fifo nodes, with their modes and owners (runc's `tmpcopyup`).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let md = fs::symlink_metadata(&src)?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            fs::copy(&src, &dst)?;
        } else {
            nix::sys::stat::mknod(
                &dst,
                nix::sys::stat::SFlag::from_bits_truncate(md.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777),
                md.rdev(),
            )
            .map_err(io::Error::from)?;
        }
        std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid()))?;
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        }
    }
    Ok(())
}

/// Most symlinks followed while resolving one path (as the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: u32 = 40;

/// Resolves the absolute container path `dest` under `root` the way it would resolve after
/// the switch to `root`: symlinks inside the rootfs are followed relative to `root` and `..`
/// stops at `root`, so a hostile image cannot point a mount outside its rootfs.
pub fn in_root(root: &Path, dest: &str) -> Result<PathBuf, Error> {
    if !Path::new(dest).is_absolute() {
        return Err(Error::BadDestination(dest.to_string()));
    }
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = Path::new(dest)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&c);
        let is_link = fs::symlink_metadata(&candidate)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            resolved.push(&c);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(Error::BadDestination(dest.to_string()));
        }
        let target = fs::read_link(&candidate).map_err(|source| Error::Create {
            path: candidate.clone(),
            source,
        })?;
        if target.is_absolute() {
            resolved = PathBuf::new();
        }
        for (i, tc) in target
            .components()
            .filter_map(|tc| match tc {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .enumerate()
        {
            pending.insert(i, tc);
        }
    }
    Ok(root.join(resolved))
}

/// Applies one spec mount under `root`.
pub fn apply_mount(root: &Path, m: &Mount) -> Result<(), Error> {
    let target = in_root(root, &m.destination)?;
    let opts = parse_options(&m.options);
    let is_bind = opts.flags.contains(MsFlags::MS_BIND)
        || matches!(m.fstype.as_deref(), None | Some("bind") | Some("rbind"));
    // A bind of anything but a directory (a file, a device node, a socket) gets a file to
    // mount on, as runc makes one.
    let source_is_dir = fs::metadata(&m.source).map_or(true, |md| md.is_dir());
    if is_bind && !source_is_dir {
        if let Some(parent) = target.parent() {
            mkdir_p(parent)?;
        }
        if !target.exists() {
            fs::write(&target, b"").map_err(|source| Error::Create {
                path: target.clone(),
                source,
            })?;
        }
    } else {
        mkdir_p(&target)?;
    }
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if is_bind {
        let mut flags = opts.flags | MsFlags::MS_BIND;
        if m.fstype.as_deref() == Some("rbind") {
            flags |= MsFlags::MS_REC;
        }
        mount(
            &m.source,
            Some(&m.source),
            &target,
            None,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None,
        )?;
        // Bind mounts take their other flags only on a remount.
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            remount_bind(&m.source, &target, extra)?;
        }
        Ok(())
    } else {
        // tmpcopyup: what the mount point holds stays reachable through a private bind while
        // the tmpfs covers it, and is copied in.
        let keep = (opts.copy_up && m.fstype.as_deref() == Some("tmpfs"))
            .then(|| root.with_extension(format!("copyup-{}", std::process::id())));
        if let Some(keep) = &keep {
            mkdir_p(keep)?;
            let src = target.to_string_lossy();
            mount(
                "copy-up source",
                Some(src.as_ref()),
                keep,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
        let mut mounted = mount(
            &m.source,
            Some(&m.source),
            &target,
            m.fstype.as_deref(),
            opts.flags,
            data,
        );
        if let Some(keep) = &keep {
            mounted = mounted.and_then(|()| {
                copy_tree(keep, &target).map_err(|source| Error::Create {
                    path: target.clone(),
                    source,
                })
            });
            let _ = nix::mount::umount2(keep, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(keep);
        }
        mounted
    }
}

/// Inside a fresh mount namespace: sets the propagation, mounts /proc, /dev (tmpfs with the
/// usual nodes, devpts, shm unless the spec mounts its own), /sys and the spec's mounts
/// under `root`, then makes the spec's device nodes.
pub fn prepare_container_root(
    root: &Path,
    mounts: &[Mount],
    linux: &LinuxSetup,
) -> Result<(), Error> {
    // As runc: the whole tree gets the spec's propagation (default rslave: nothing made in
    // the container reaches the agent), the rootfs mount (the agent mounted it) is private
    // so that neither the bind below propagates nor pivot_root refuses a shared parent.
    let propagation = propagation_flags(linux.root_propagation.as_deref())?;
    mount(
        "root propagation",
        None,
        Path::new("/"),
        None,
        propagation,
        None,
    )?;
    mount(
        "private rootfs",
        None,
        root,
        None,
        MsFlags::MS_PRIVATE,
        None,
    )?;
    // pivot_root needs the new root to be a mount point of this namespace.
    mount(
        "rootfs",
        Some(&root.to_string_lossy()),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = root.join("proc");
    mkdir_p(&proc_dir)?;
    mount(
        "proc",
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    mount(
        "dev",
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        match nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        ) {
            Ok(()) => {}
            // A user namespace makes no device nodes: the agent's own are bound, as runc binds
            // the host's.
            Err(nix::Error::EPERM) => {
                bind_node(&Path::new("/dev").join(name), &path)?;
                continue;
            }
            Err(source) => {
                return Err(Error::Mknod {
                    path: path.clone(),
                    source,
                })
            }
        }
        // mknod honours the umask; set the mode explicitly.
        let _ = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        );
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    mount(
        "devpts",
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    if !mounts
        .iter()
        .any(|m| Path::new(&m.destination) == Path::new("/dev/shm"))
    {
        mount(
            "shm",
            Some("shm"),
            &shm,
            Some("tmpfs"),
            nosuid_nodev_noexec,
            Some("mode=1777,size=65536k"),
        )?;
    }
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        symlink(to, &path).map_err(|source| Error::Create { path, source })?;
    }
    let sys = root.join("sys");
    mkdir_p(&sys)?;
    let sys_ro = if linux.sysfs_writable {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    match nix::mount::mount(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        nosuid_nodev_noexec | sys_ro,
        None::<&str>,
    ) {
        Ok(()) => {}
        // In a user namespace that does not own the network namespace (the container uses
        // the VM's): the agent's /sys, bound as runc binds the host's.
        Err(nix::Error::EPERM) => bind_in_place("sysfs", Path::new("/sys"), &sys, sys_ro)?,
        other => other.map_err(mount_error("sysfs", &sys))?,
    }
    // cgroup v2, read-only as runc mounts it for podman: with a cgroup namespace it shows the
    // container's own cgroup (its limits, its processes).
    let cgroup = sys.join("fs/cgroup");
    if cgroup.is_dir() {
        let cgroup2 = || {
            nix::mount::mount(
                Some("cgroup2"),
                &cgroup,
                Some("cgroup2"),
                nosuid_nodev_noexec | MsFlags::MS_RDONLY,
                None::<&str>,
            )
        };
        let mounted = match cgroup2() {
            // Over the agent's own cgroup2 mount (a bound /sys brings it, locked: it cannot
            // be unmounted in a user namespace) the kernel refuses the same superblock: a
            // small tmpfs between them.
            Err(nix::Error::EBUSY) => mount(
                "cgroup2 cover",
                Some("tmpfs"),
                &cgroup,
                Some("tmpfs"),
                nosuid_nodev_noexec | MsFlags::MS_RDONLY,
                Some("size=4k,mode=755"),
            )
            .map(|()| cgroup2())?,
            other => other,
        };
        match mounted {
            Ok(()) => {}
            // A user namespace without a cgroup namespace of its own: the agent's hierarchy.
            Err(nix::Error::EPERM) => bind_in_place(
                "cgroup2",
                Path::new("/sys/fs/cgroup"),
                &cgroup,
                MsFlags::MS_RDONLY,
            )?,
            other => other.map_err(mount_error("cgroup2", &cgroup))?,
        }
    }
    for m in mounts {
        apply_mount(root, m)?;
    }
    for d in &linux.devices {
        make_device(root, d)?;
    }
    Ok(())
}

/// Binds device node `source` (the agent's) onto a file made at `target`: what a user
/// namespace does instead of `mknod`.
fn bind_node(source: &Path, target: &Path) -> Result<(), Error> {
    if fs::symlink_metadata(target).is_err() {
        fs::write(target, b"").map_err(|source| Error::Create {
            path: target.to_path_buf(),
            source,
        })?;
    }
    mount(
        "device node",
        Some(&source.to_string_lossy()),
        target,
        None,
        MsFlags::MS_BIND,
        None,
    )
}

/// Binds the agent's tree `source` recursively at `target` (what a filesystem the user
/// namespace may not mount becomes), read-only when `ro` says so.
fn bind_in_place(what: &str, source: &Path, target: &Path, ro: MsFlags) -> Result<(), Error> {
    mount(
        what,
        Some(&source.to_string_lossy()),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if ro.contains(MsFlags::MS_RDONLY) {
        remount_bind(what, target, MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

/// Remounts the bind at `target` with `flags`. Inside a user namespace a mount keeps the
/// nosuid/nodev/noexec/atime flags it came with (they are locked): where the plain remount is
/// refused it is repeated with those, as runc does.
fn remount_bind(what: &str, target: &Path, flags: MsFlags) -> Result<(), Error> {
    let flags = flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
        Err(nix::Error::EPERM) => mount(
            what,
            None,
            target,
            None,
            flags | statvfs_flags(target),
            None,
        ),
        other => other.map_err(mount_error(what, target)),
    }
}

/// Mount flags of an OCI `rootfsPropagation` value (runc's table); `None` is runc's default.
pub fn propagation_flags(value: Option<&str>) -> Result<MsFlags, Error> {
    let (rec, base) = match value {
        None | Some("") => return Ok(MsFlags::MS_REC | MsFlags::MS_SLAVE),
        Some(v) => match v.strip_prefix('r') {
            Some(rest) => (MsFlags::MS_REC, rest),
            None => (MsFlags::empty(), v),
        },
    };
    let flag = match base {
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return Err(Error::BadPropagation(value.unwrap_or("").to_string())),
    };
    Ok(rec | flag)
}

/// After the switch: gives the container's root the spec's propagation (an empty value
/// leaves it private).
pub fn set_root_propagation(value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Ok(());
    }
    let flags = propagation_flags(Some(value))?;
    mount("root propagation", None, Path::new("/"), None, flags, None)
}

/// Makes device node `d` under `root` (replacing what is there, e.g. one of the agent's
/// own nodes), with its mode and owner, as runc's `mknodDevice`. What cannot be replaced (a
/// privileged container's `/dev/pts/ptmx`, devpts's own) is kept, as runc keeps a node that
/// exists.
pub fn make_device(root: &Path, d: &Device) -> Result<(), Error> {
    use nix::sys::stat::Mode;
    let kind = node_kind(d)?;
    let path = in_root(root, &d.path)?;
    if let Some(parent) = path.parent() {
        mkdir_p(parent)?;
    }
    let _ = fs::remove_file(&path);
    let mode = Mode::from_bits_truncate(d.file_mode.unwrap_or(0o666) & 0o7777);
    let fail = |source| Error::Mknod {
        path: path.clone(),
        source,
    };
    let dev = nix::sys::stat::makedev(d.major as u64, d.minor as u64);
    match nix::sys::stat::mknod(&path, kind, mode, dev) {
        Ok(()) => {}
        Err(nix::Error::EEXIST) => return Ok(()),
        // In a user namespace: the VM's node at the same path, bound as runc binds the
        // host's (it has the VM's owner and mode).
        Err(nix::Error::EPERM) if in_user_namespace() => {
            return bind_device(Path::new(&d.path), &path, kind, dev)
        }
        Err(e) => return Err(fail(e)),
    }
    // mknod honours the umask.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &path,
        mode,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(fail)?;
    nix::unistd::chown(
        &path,
        Some(nix::unistd::Uid::from_raw(d.uid.unwrap_or(0))),
        Some(nix::unistd::Gid::from_raw(d.gid.unwrap_or(0))),
    )
    .map_err(fail)
}

/// Whether this process is in a user namespace other than the initial one (whose map is the
/// identity over every id).
fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

/// The file type of spec device `d` (`c`, `u`: character; `b`: block; `p`: FIFO).
fn node_kind(d: &Device) -> Result<nix::sys::stat::SFlag, Error> {
    use nix::sys::stat::SFlag;
    match d.kind.as_str() {
        "c" | "u" => Ok(SFlag::S_IFCHR),
        "b" => Ok(SFlag::S_IFBLK),
        "p" => Ok(SFlag::S_IFIFO),
        _ => Err(Error::BadDevice {
            path: d.path.clone(),
            kind: d.kind.clone(),
        }),
    }
}

/// Where the agent makes, from outside, the node of a spec device that the VM has no node for
/// ([`make_nodes_outside`]).
pub const OUTSIDE_NODES: &str = "/run/ember-agent/devnodes";

fn outside_node_path(kind: nix::sys::stat::SFlag, dev: u64) -> Option<PathBuf> {
    let class = match kind {
        nix::sys::stat::SFlag::S_IFCHR => "c",
        nix::sys::stat::SFlag::S_IFBLK => "b",
        _ => return None,
    };
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    Some(Path::new(OUTSIDE_NODES).join(format!("{class}{major}:{minor}")))
}

/// For a container in a user namespace of its own, which cannot make device nodes: a node in
/// [`OUTSIDE_NODES`] for each spec device the VM has none of (not at its path, not by its
/// numbers), made by the agent (root outside) for the helper to bind, as runc binds the host's
/// nodes (`--privileged --uidmap` lists the host's devices, which a VM need not have; such a
/// node then opens as a missing device would, ENXIO).
pub fn make_nodes_outside(devices: &[Device]) -> Result<(), Error> {
    use nix::sys::stat::Mode;
    for d in devices {
        let kind = node_kind(d)?;
        let dev = nix::sys::stat::makedev(d.major as u64, d.minor as u64);
        // (A FIFO has no numbers: the helper makes it inside.)
        let Some(path) = outside_node_path(kind, dev) else {
            continue;
        };
        if device_node(Path::new(&d.path), kind, dev, false).is_some() || path.exists() {
            continue;
        }
        mkdir_p(Path::new(OUTSIDE_NODES))?;
        let mode = Mode::from_bits_truncate(d.file_mode.unwrap_or(0o666) & 0o777);
        match nix::sys::stat::mknod(&path, kind, mode, dev) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => return Err(Error::Mknod { path, source }),
        }
        // mknod honours the umask.
        let _ = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            mode,
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

/// Binds the agent's node for the device onto `target`: the one at `guest_path` if it is
/// that device, else the one the kernel names for its numbers (`/sys/dev/char/M:m`'s
/// `DEVNAME`, under `/dev`), else the one the agent made outside ([`make_nodes_outside`]).
fn bind_device(
    guest_path: &Path,
    target: &Path,
    kind: nix::sys::stat::SFlag,
    dev: u64,
) -> Result<(), Error> {
    match device_node(guest_path, kind, dev, true) {
        Some(source) => bind_node(&source, target),
        None => Err(Error::NoNodeToBind {
            path: target.to_path_buf(),
            guest_path: guest_path.to_path_buf(),
        }),
    }
}

/// The VM's node of the device (see [`bind_device`]); `outside`: the agent's own too.
fn device_node(
    guest_path: &Path,
    kind: nix::sys::stat::SFlag,
    dev: u64,
    outside: bool,
) -> Option<PathBuf> {
    use nix::sys::stat::SFlag;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let is_it = |p: &Path| {
        fs::metadata(p).is_ok_and(|md| {
            let ft = md.file_type();
            match kind {
                SFlag::S_IFCHR => ft.is_char_device() && md.rdev() == dev,
                SFlag::S_IFBLK => ft.is_block_device() && md.rdev() == dev,
                _ => ft.is_fifo(),
            }
        })
    };
    let by_number = || {
        let class = match kind {
            SFlag::S_IFCHR => "char",
            SFlag::S_IFBLK => "block",
            _ => return None,
        };
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let uevent = fs::read_to_string(format!("/sys/dev/{class}/{major}:{minor}/uevent")).ok()?;
        let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        // A kernel name, under /dev: no way out of it.
        (!name.split('/').any(|c| c.is_empty() || c == "..")).then(|| Path::new("/dev").join(name))
    };
    if is_it(guest_path) {
        return Some(guest_path.to_path_buf());
    }
    by_number().filter(|p| is_it(p)).or_else(|| {
        outside
            .then(|| outside_node_path(kind, dev))
            .flatten()
            .filter(|p| is_it(p))
    })
}

/// After the switch to the container root: remounts `/` read-only (runc's `setReadonly`:
/// with the flags it has where the plain remount is refused).
pub fn readonly_root() -> Result<(), Error> {
    let root = Path::new("/");
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if nix::mount::mount(None::<&str>, root, None::<&str>, flags, None::<&str>).is_ok() {
        return Ok(());
    }
    let locked = statvfs_flags(root);
    nix::mount::mount(
        None::<&str>,
        root,
        None::<&str>,
        flags | locked,
        None::<&str>,
    )
    .map_err(|source| Error::Readonly {
        path: root.to_path_buf(),
        source,
    })
}

/// The mount flags (nosuid, nodev, noexec...) the mount at `path` has, which a bind remount
/// must repeat.
fn statvfs_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| f.contains(*st))
    .fold(MsFlags::empty(), |m, (_, ms)| m | ms)
}

/// After the switch: makes `path` read-only as runc's `readonlyPath` does (a recursive bind
/// onto itself, remounted read-only with its nosuid/nodev/noexec); a missing path is skipped.
pub fn readonly_path(path: &Path) -> Result<(), Error> {
    let fail = |source| Error::Readonly {
        path: path.to_path_buf(),
        source,
    };
    match nix::mount::mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(e) => return Err(fail(e)),
    }
    let keep = statvfs_flags(path) & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    nix::mount::mount(
        Some(path),
        path,
        None::<&str>,
        keep | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(fail)
}

/// After the switch: hides `path` as runc's `maskPath` does: `/dev/null` bound over a file,
/// an empty read-only tmpfs over a directory; a missing path is skipped.
pub fn mask_path(path: &Path) -> Result<(), Error> {
    let fail = |source| Error::Mask {
        path: path.to_path_buf(),
        source,
    };
    match nix::mount::mount(
        Some("/dev/null"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::ENOTDIR) => nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(fail),
        Err(e) => Err(fail(e)),
    }
}

/// How [`enter_root`] switches to the container root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSwitch {
    /// `pivot_root`, falling back to [`RootSwitch::MoveMount`] where the current root is the
    /// initramfs (rootfs cannot be pivoted away: EINVAL), as in an ember guest.
    Pivot,
    /// Move the rootfs mount over `/` and `chroot` into it (runc's `--no-pivot`).
    MoveMount,
    /// Plain `chroot` (no mount namespace of its own).
    Chroot,
}

/// Makes `root` the process's root.
pub fn enter_root(root: &Path, how: RootSwitch) -> Result<(), Error> {
    let fail = |source| Error::PivotRoot {
        path: root.to_path_buf(),
        source,
    };
    nix::unistd::chdir(root).map_err(fail)?;
    let how = match how {
        RootSwitch::Pivot => match nix::unistd::pivot_root(".", ".") {
            Ok(()) => {
                // pivot_root(".", ".") stacks the old root under the new one; detach it.
                nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(fail)?;
                None
            }
            Err(nix::Error::EINVAL) => Some(RootSwitch::MoveMount),
            Err(e) => return Err(fail(e)),
        },
        other => Some(other),
    };
    match how {
        None => {}
        Some(RootSwitch::MoveMount) => {
            nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(fail)?;
            nix::unistd::chroot(".").map_err(fail)?;
        }
        Some(_) => nix::unistd::chroot(".").map_err(fail)?,
    }
    nix::unistd::chdir("/").map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> ParsedOptions {
        parse_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let p = opts(&["ro", "nosuid", "size=64m", "mode=755", "rbind"]);
        assert_eq!(
            p.flags,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
        );
        assert_eq!(p.data, vec!["size=64m", "mode=755"]);
        let p = opts(&["ro", "rw", "defaults"]);
        assert_eq!(p.flags, MsFlags::empty());
        assert!(p.data.is_empty());
        // runc's tmpcopyup is ours to do, never filesystem data (tmpfs refuses it: EINVAL).
        let p = opts(&["rw", "tmpcopyup", "nosuid"]);
        assert!(p.copy_up);
        assert!(p.data.is_empty());
        assert!(!opts(&["size=1m"]).copy_up);
    }

    fn volume_mount(source: &str) -> Mount {
        Mount {
            destination: "/etc/hosts".into(),
            source: source.into(),
            fstype: None,
            options: vec!["bind".into()],
            from_volume: true,
            from_share: false,
        }
    }

    /// A device node bound to a destination that does not exist yet gets a file to mount on
    /// (it used to get a directory: ENOTDIR).
    #[test]
    fn a_device_node_bind_gets_a_file_to_mount_on() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping a_device_node_bind_gets_a_file_to_mount_on: needs root");
            return;
        }
        let root = std::env::temp_dir().join(format!("ember-devbind-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let r = root.clone();
        let seen = std::thread::spawn(move || {
            // A mount namespace of this thread's own: nothing reaches the host's mounts.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(
                "private",
                None,
                Path::new("/"),
                None,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None,
            )
            .unwrap();
            let m = Mount {
                destination: "/dev/ttyS9".into(),
                source: "/dev/null".into(),
                fstype: None,
                options: vec!["bind".into()],
                from_volume: false,
                from_share: false,
            };
            apply_mount(&r, &m).unwrap();
            let target = r.join("dev/ttyS9");
            let is_char = {
                use std::os::unix::fs::FileTypeExt;
                fs::metadata(&target).unwrap().file_type().is_char_device()
            };
            let wrote = fs::write(&target, b"into /dev/null").is_ok();
            (is_char, wrote)
        })
        .join()
        .unwrap();
        assert_eq!(seen, (true, true));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn volume_sources_resolve_inside_the_volume() {
        let vol = std::env::temp_dir().join(format!("ember-vol-{}", std::process::id()));
        fs::create_dir_all(&vol).unwrap();
        // A symlink on the volume to an absolute path resolves against the volume's root.
        let _ = fs::remove_file(vol.join("escape"));
        symlink("/etc", vol.join("escape")).unwrap();
        let mut ms = vec![
            volume_mount("0"),
            volume_mount("../../etc/passwd"),
            volume_mount("escape/passwd"),
        ];
        let mut plain = volume_mount("/etc/hosts");
        plain.from_volume = false;
        ms.push(plain);
        resolve_volume_sources(&mut ms, Some(&vol)).unwrap();
        assert_eq!(Path::new(&ms[0].source), vol.join("0"));
        assert_eq!(Path::new(&ms[1].source), vol.join("etc/passwd"));
        assert_eq!(Path::new(&ms[2].source), vol.join("etc/passwd"));
        assert!(ms[..3].iter().all(|m| !m.from_volume));
        // Mounts not from the volume keep their source.
        assert_eq!(ms[3].source, "/etc/hosts");
        fs::remove_dir_all(&vol).unwrap();
    }

    #[test]
    fn volume_sources_need_a_volume_and_a_relative_path() {
        let vol = Path::new("/nonexistent-volume");
        for bad in ["/etc/hosts", ""] {
            let err = resolve_volume_sources(&mut [volume_mount(bad)], Some(vol)).unwrap_err();
            assert!(
                matches!(err, Error::BadVolumeSource { .. }),
                "{bad:?}: {err}"
            );
        }
        let err = resolve_volume_sources(&mut [volume_mount("0")], None).unwrap_err();
        assert!(matches!(err, Error::NoVolume(_)), "{err}");
    }

    #[test]
    fn propagation_values_as_runc() {
        assert_eq!(
            propagation_flags(None).unwrap(),
            MsFlags::MS_REC | MsFlags::MS_SLAVE
        );
        assert_eq!(
            propagation_flags(Some("")).unwrap(),
            MsFlags::MS_REC | MsFlags::MS_SLAVE
        );
        assert_eq!(
            propagation_flags(Some("shared")).unwrap(),
            MsFlags::MS_SHARED
        );
        assert_eq!(
            propagation_flags(Some("rprivate")).unwrap(),
            MsFlags::MS_REC | MsFlags::MS_PRIVATE
        );
        assert_eq!(
            propagation_flags(Some("runbindable")).unwrap(),
            MsFlags::MS_REC | MsFlags::MS_UNBINDABLE
        );
        for bad in ["rslaves", "r", "master"] {
            assert!(
                matches!(propagation_flags(Some(bad)), Err(Error::BadPropagation(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn destinations_stay_inside_root() {
        let root = Path::new("/nonexistent-ember-root");
        assert_eq!(in_root(root, "/a/b").unwrap(), root.join("a/b"));
        assert_eq!(in_root(root, "/a/./b/").unwrap(), root.join("a/b"));
        assert_eq!(in_root(root, "/a/../../etc").unwrap(), root.join("etc"));
        assert!(in_root(root, "relative").is_err());
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let root = std::env::temp_dir().join(format!("ember-inroot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../..", root.join("real/up")).unwrap();
        symlink("real/sub", root.join("rel")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            in_root(&root, "/abs/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(in_root(&root, "/real/up/x").unwrap(), root.join("x"));
        assert_eq!(in_root(&root, "/rel/y").unwrap(), root.join("real/sub/y"));
        assert!(matches!(
            in_root(&root, "/loop/z"),
            Err(Error::BadDestination(_))
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    /// A device whose path holds what cannot be removed (devpts's ptmx under `--privileged`;
    /// here a directory) is kept, as runc does; a new one is made with its mode.
    #[test]
    fn a_device_that_exists_is_kept() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping a_device_that_exists_is_kept: needs root");
            return;
        }
        let root = std::env::temp_dir().join(format!("ember-devexist-{}", std::process::id()));
        fs::create_dir_all(root.join("dev/pts/ptmx")).unwrap();
        let dev = |path: &str| Device {
            path: path.into(),
            kind: "c".into(),
            major: 1,
            minor: 3,
            file_mode: Some(0o620),
            uid: None,
            gid: None,
        };
        make_device(&root, &dev("/dev/pts/ptmx")).unwrap();
        assert!(root.join("dev/pts/ptmx").is_dir());
        make_device(&root, &dev("/dev/mine")).unwrap();
        let meta = fs::metadata(root.join("dev/mine")).unwrap();
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o620);
        fs::remove_dir_all(&root).unwrap();
    }
}
