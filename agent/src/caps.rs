//! Process capabilities, applied as runc applies OCI `process.capabilities`: the bounding set
//! is dropped first, capabilities are kept across the change of user, then the effective,
//! permitted and inheritable sets are set with `capset` and the ambient set is raised.

use crate::protocol::Capabilities;

/// Capability names by number (`linux/capability.h`), without the `CAP_` prefix.
pub const NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Unknown capability {0:?} (want a name like CAP_NET_ADMIN)")]
    Unknown(String),
    #[error("Cannot drop {0} from the bounding set")]
    Bounding(String, #[source] nix::Error),
    #[error("Cannot keep capabilities across the change of user")]
    KeepCaps(#[source] nix::Error),
    #[error("Cannot set the process's capabilities")]
    Capset(#[source] nix::Error),
}

/// The sets as bit masks (bit n: capability n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// The number of capability `name` (`CAP_NET_ADMIN`, case-insensitive).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_")?;
    NAMES.iter().position(|n| *n == bare).map(|n| n as u32)
}

/// Parses the sets; an unknown name is an error.
pub fn parse(c: &Capabilities) -> Result<CapSets, Error> {
    let mask = |names: &[String]| {
        names.iter().try_fold(0u64, |m, n| {
            number(n)
                .map(|b| m | (1 << b))
                .ok_or_else(|| Error::Unknown(n.clone()))
        })
    };
    Ok(CapSets {
        bounding: mask(&c.bounding)?,
        effective: mask(&c.effective)?,
        permitted: mask(&c.permitted)?,
        inheritable: mask(&c.inheritable)?,
        ambient: mask(&c.ambient)?,
    })
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> Result<libc::c_int, nix::Error> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(op, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        Err(nix::Error::last())
    } else {
        Ok(rc)
    }
}

/// The highest capability this kernel knows: capabilities above it are ignored (runc's
/// capability list is the kernel's too).
fn last_cap() -> u32 {
    (0..64u32)
        .take_while(|n| prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(*n)).is_ok())
        .last()
        .unwrap_or(0)
}

/// Step one, before the change of user: drops what the bounding set lacks and keeps the
/// permitted set across `setuid`.
pub fn before_setuid(sets: &CapSets) -> Result<(), Error> {
    for n in 0..=last_cap() {
        if sets.bounding & (1 << n) == 0 {
            prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n))
                .map_err(|e| Error::Bounding(NAMES[n as usize].to_string(), e))?;
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 1).map_err(Error::KeepCaps)?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Step two, after the change of user: sets the effective, permitted and inheritable sets,
/// then raises the ambient ones. As runc, an ambient capability that cannot be raised (not
/// permitted and inheritable) is skipped.
pub fn after_setuid(sets: &CapSets) -> Result<(), Error> {
    prctl(libc::PR_SET_KEEPCAPS, 0).map_err(Error::KeepCaps)?;
    let known = match last_cap() {
        63 => u64::MAX,
        n => (1u64 << (n + 1)) - 1,
    };
    let word = |mask: u64, i: u32| ((mask & known) >> (32 * i)) as u32;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data: [CapData; 2] = std::array::from_fn(|i| CapData {
        effective: word(sets.effective, i as u32),
        permitted: word(sets.permitted, i as u32),
        inheritable: word(sets.inheritable, i as u32),
    });
    // SAFETY: capset reads the header and two data structs (version 3), which live for the
    // call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::Capset(nix::Error::last()));
    }
    let _ = prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    );
    for n in 0..64u32 {
        if sets.ambient & known & (1 << n) != 0 {
            // SAFETY: prctl with integer arguments only.
            let _ = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    libc::c_ulong::from(n),
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_NET_ADMIN"), Some(12));
        assert_eq!(number("cap_sys_admin"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("NET_ADMIN"), None);
        assert_eq!(number("CAP_BOGUS"), None);
    }

    #[test]
    fn sets_parse_and_unknown_names_are_refused() {
        let c = Capabilities {
            bounding: vec!["CAP_KILL".into(), "CAP_NET_ADMIN".into()],
            effective: vec!["CAP_KILL".into()],
            ..Default::default()
        };
        let s = parse(&c).unwrap();
        assert_eq!(s.bounding, (1 << 5) | (1 << 12));
        assert_eq!(s.effective, 1 << 5);
        assert_eq!(s.ambient, 0);
        let bad = Capabilities {
            ambient: vec!["CAP_NOPE".into()],
            ..Default::default()
        };
        assert!(matches!(parse(&bad), Err(Error::Unknown(n)) if n == "CAP_NOPE"));
    }
}
