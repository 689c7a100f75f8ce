//! PID 1 duties: the guest's early mounts, console, hostname, boot timer and reboot.

use nix::mount::MsFlags;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Guest physical address of the boot timer device (see the cross-team contracts).
pub const BOOT_TIMER_ADDR: i64 = 0xd000_0000;
/// Boot timer byte written when the agent starts.
pub const BOOT_TIMER_INIT_START: u8 = 1;
/// Boot timer byte written when the agent is ready.
pub const BOOT_TIMER_READY: u8 = 123;

/// Errors of PID 1 setup (logged, never fatal on their own).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot create {path}")]
    Mkdir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot mount {fstype} on {target}")]
    Mount {
        fstype: String,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot open /dev/mem")]
    DevMem(#[source] std::io::Error),
    #[error("Cannot map the boot timer")]
    Mmap(#[source] nix::Error),
    #[error("Cannot set hostname {0:?}")]
    Hostname(String, #[source] nix::Error),
}

fn mount_fs(fstype: &str, target: &str, flags: MsFlags, data: Option<&str>) -> Result<(), Error> {
    std::fs::create_dir_all(target).map_err(|source| Error::Mkdir {
        path: target.to_string(),
        source,
    })?;
    match nix::mount::mount(Some(fstype), target, Some(fstype), flags, data) {
        // Already mounted (e.g. devtmpfs by the kernel).
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(source) => Err(Error::Mount {
            fstype: fstype.to_string(),
            target: target.to_string(),
            source,
        }),
    }
}

/// Mounts /dev first (the boot timer needs /dev/mem), so it can be timed as early as possible.
pub fn mount_dev() -> Result<(), Error> {
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))
}

/// The rest of the early mounts. Each failure is logged and skipped.
pub fn mount_early() {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", common, None),
        ("sysfs", "/sys", common, None),
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        ("tmpfs", "/dev/shm", common, Some("mode=1777")),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("cgroup2", "/sys/fs/cgroup", common, None),
    ];
    for (fstype, target, flags, data) in mounts {
        if let Err(e) = mount_fs(fstype, target, flags, data) {
            crate::log_error(&crate::error_chain(&e));
        }
    }
}

/// Makes sure fds 0, 1 and 2 are open (on /dev/console), so output reaches the console and
/// fresh fds never land on 0-2.
pub fn ensure_console() {
    // SAFETY: F_GETFD on fd 0 has no memory effects.
    let closed = unsafe { libc::fcntl(0, libc::F_GETFD) } < 0;
    if !closed {
        return;
    }
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .or_else(|_| OpenOptions::new().read(true).write(true).open("/dev/null"));
    if let Ok(f) = console {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds of our own process.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

pub fn set_hostname(name: &str) -> Result<(), Error> {
    nix::unistd::sethostname(name).map_err(|e| Error::Hostname(name.to_string(), e))
}

/// Inode of the initial pid namespace (`PROC_PID_INIT_INO`).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// Whether we run in the machine's initial pid namespace: true for a guest's real PID 1,
/// false for a PID 1 inside a container or `unshare --pid` on a host, where the boot timer
/// (a raw physical-memory write) must never be touched. Needs /proc.
pub fn in_initial_pid_ns() -> bool {
    nix::sys::stat::stat("/proc/self/ns/pid")
        .map(|st| st.st_ino == PROC_PID_INIT_INO)
        .unwrap_or(false)
}

/// Writes one byte to the boot timer device through /dev/mem. Only call it in a guest
/// (see [`in_initial_pid_ns`]).
pub fn boot_timer(value: u8) -> Result<(), Error> {
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
        .map_err(Error::DevMem)?;
    // SAFETY: maps one page of the boot timer's MMIO range; we only write one byte into it
    // and unmap it before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            BOOT_TIMER_ADDR,
        );
        if p == libc::MAP_FAILED {
            return Err(Error::Mmap(nix::Error::last()));
        }
        std::ptr::write_volatile(p.cast::<u8>(), value);
        libc::munmap(p, 4096);
    }
    Ok(())
}

/// Enables cgroup controllers at the root of the guest's cgroup tree.
pub fn setup_cgroups(root: &Path) {
    crate::cgroup::enable_controllers(root);
}

/// Kills every process, syncs and reboots (the VMM sees the reset as a clean exit).
pub fn kill_all_and_reboot() -> ! {
    // SAFETY: kill(-1) signals every process but us; sync and reboot take no pointers.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot(2) only returns on failure; PID 1 must not exit (kernel panic), so wait.
    crate::log_error("reboot failed");
    loop {
        std::thread::park();
    }
}
