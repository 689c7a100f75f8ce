//! Capabilities per thread: Linux keeps them per thread, so each confined VMM thread drops
//! what it does not need before its seccomp filter goes on ([`crate::seccomp`]). A vCPU needs
//! none (KVM_RUN checks no capability); the device event loop keeps the file capabilities
//! virtio-fs needs to act for the guest's root on the shares (owners, modes, device nodes, file
//! capabilities), and loses the rest (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_SYS_PTRACE`, …).

use std::io;

/// What the device event loop keeps.
pub const EVENT_LOOP_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    2,  // CAP_DAC_READ_SEARCH
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    27, // CAP_MKNOD
    31, // CAP_SETFCAP
];

/// The highest capability number tried when the bounding set is emptied (the kernel answers
/// EINVAL past its own last one, which ends the walk).
const CAP_MAX: u32 = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

fn mask(keep: &[u32]) -> u64 {
    keep.iter().fold(0u64, |m, &c| m | (1u64 << c))
}

/// The calling thread's capability sets, as 64-bit masks (effective, permitted, inheritable).
pub fn current() -> io::Result<(u64, u64, u64)> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData words for version 3, into the array given.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// Keep only `keep` (capability numbers) in the calling thread's bounding, permitted and
/// effective sets; inheritable and ambient empty. Other threads are not touched.
pub fn restrict_thread(keep: &[u32]) -> io::Result<()> {
    let keep_mask = mask(keep);
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for cap in 0..=CAP_MAX {
        if keep_mask & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Past the kernel's last capability.
                Some(libc::EINVAL) => break,
                // Not allowed to change the bounding set (no CAP_SETPCAP): the sets below
                // still shrink.
                Some(libc::EPERM) => break,
                _ => return Err(e),
            }
        }
    }
    let (_, permitted, _) = current()?;
    let kept = permitted & keep_mask;
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let word = |m: u64, i: usize| (m >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(kept, i),
        permitted: word(kept, i),
        inheritable: 0,
    });
    // SAFETY: capset reads two CapData words for version 3 from the array given.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CAP_SETGID, CAP_SETUID: what [`become_user`] needs.
const SET_IDS: &[u32] = &[6, 7];

/// A vCPU thread's credentials before its filter goes on: with `user`, it becomes that user
/// (uid and gid) with nothing else left in its bounding set; then it drops every capability.
pub fn confine_vcpu_thread(user: Option<u32>) -> io::Result<()> {
    if let Some(id) = user {
        restrict_thread(SET_IDS)?;
        become_user(id, id)?;
    }
    restrict_thread(&[])
}

/// Makes the calling thread (only it: raw system calls, not libc's process-wide `setuid`,
/// which signals every thread to follow) run as `uid`:`gid` with no supplementary groups.
/// From root this also empties its permitted and effective capabilities (the kernel's rule for
/// a thread whose user ids all leave 0). The process becomes non-dumpable, so its `/proc`
/// files are root's from then on (threads of the process keep their access to each other's).
pub fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    let check = |r: libc::c_long| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: setgroups with an empty list, setresgid and setresuid with integer arguments;
    // they change the calling thread's credentials only.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's real, effective, saved uid and gid, from `/proc/thread-self/status`
    /// (libc's getters would do, but this reads what the kernel reports per thread).
    fn thread_ids() -> io::Result<([u32; 3], [u32; 3])> {
        let status = std::fs::read_to_string("/proc/thread-self/status")?;
        let ids = |key: &str| -> io::Result<[u32; 3]> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .ok_or_else(|| io::Error::other(format!("no {key} in /proc/thread-self/status")))?;
            let v: Vec<u32> = line
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            match v[..] {
                [r, e, s, ..] => Ok([r, e, s]),
                _ => Err(io::Error::other(format!("bad {key} line: {line}"))),
            }
        };
        Ok((ids("Uid:")?, ids("Gid:")?))
    }

    #[test]
    fn a_thread_becomes_another_user_and_the_process_stays_root() {
        if !nix_is_root() {
            eprintln!("skipping a_thread_becomes_another_user: needs root");
            return;
        }
        let (uid, gid) = (0x6000_0000 + 7, 0x6000_0000 + 7);
        let (ids, caps) = std::thread::spawn(move || {
            become_user(uid, gid).unwrap();
            (thread_ids().unwrap(), current().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(ids, ([uid; 3], [gid; 3]));
        // No capability is left to that thread...
        assert_eq!((caps.0, caps.1), (0, 0));
        // ...and this one is still root, with its own.
        assert_eq!(thread_ids().unwrap(), ([0; 3], [0; 3]));
        assert_ne!(current().unwrap().1, 0);
        // Making the process non-dumpable is what the change costs; it is made dumpable again
        // for the other tests of this binary.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_thread_drops_what_it_does_not_keep_and_others_keep_theirs() {
        let (_, before, _) = current().unwrap();
        let (eff, perm) = std::thread::spawn(|| {
            restrict_thread(EVENT_LOOP_CAPS).unwrap();
            let (e, p, _) = current().unwrap();
            (e, p)
        })
        .join()
        .unwrap();
        let keep = mask(EVENT_LOOP_CAPS);
        assert_eq!(perm, before & keep);
        assert_eq!(eff, perm);
        // CAP_SYS_ADMIN (21) is gone from that thread, not from this one.
        assert_eq!(perm & (1 << 21), 0);
        assert_eq!(current().unwrap().1, before);
        let nothing = std::thread::spawn(|| {
            restrict_thread(&[]).unwrap();
            current().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(nothing, (0, 0, 0));
    }
}
