//! Process limits the devices need.

use std::io;

/// Raises `RLIMIT_NOFILE` so that `wanted` fds fit (for devices whose guest-driven state holds
/// host fds: virtio-fs inodes and handles, vsock connections): the soft limit to the hard one,
/// and, where the process may (root: CAP_SYS_RESOURCE), both to `wanted` bounded by the
/// kernel's `fs.nr_open`. Best effort; returns the soft limit
/// in force afterwards. (A busybox init hands out 1024/4096: 10 000 files would not fit.)
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = wanted.min(nr_open);
    let set = |cur: u64, max: u64| {
        let want = libc::rlimit {
            rlim_cur: cur as libc::rlim_t,
            rlim_max: max as libc::rlim_t,
        };
        // SAFETY: `want` is a valid rlimit for the call.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 }
    };
    #[allow(clippy::unnecessary_cast)] // rlim_t's width differs between libcs.
    let (cur, max) = (rl.rlim_cur as u64, rl.rlim_max as u64);
    if cur >= target {
        return cur;
    }
    if max < target && set(target, target) {
        return target;
    }
    if cur < max && set(max, max) {
        return max;
    }
    log::debug!(
        "cannot raise RLIMIT_NOFILE to {target}: {}",
        io::Error::last_os_error()
    );
    cur
}
