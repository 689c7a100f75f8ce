//! A guest restored from a snapshot (a template) is a clone of it: same kernel CRNG state,
//! same stale wall clock, same hostname. [`make_guest_own`] answers
//! [`Request::Restored`](crate::protocol::Request::Restored): it credits fresh host entropy to
//! the kernel and reseeds its CRNG, sets the clock, takes the pod's hostname, and only then
//! reads the boot id, which the kernel makes from the CRNG at its first read (the agent never
//! reads it before), so every restored guest gets its own.

use crate::protocol::{ErrorKind, RestoredInfo};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// Fewest entropy bytes accepted: 256 bits, a full seed of the kernel's CRNG.
pub const MIN_ENTROPY: usize = 32;
/// Most entropy bytes accepted.
pub const MAX_ENTROPY: usize = 4096;
/// Longest hostname accepted (the kernel's `__NEW_UTS_LEN`).
pub const MAX_HOSTNAME: usize = 64;
/// Where the kernel shows its boot id (made at the first read).
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Errors of making a restored guest its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Entropy of {len} bytes refused (give {} to {} bytes)",
        MIN_ENTROPY,
        MAX_ENTROPY
    )]
    EntropyLength { len: usize },
    #[error("Invalid hostname {0:?} (use 1-64 of [A-Za-z0-9.-], not starting with '-' or '.')")]
    InvalidHostname(String),
    #[error("Realtime of {0} ns is beyond the kernel's clock (at most i64::MAX ns)")]
    InvalidTime(u64),
    #[error("Cannot open /dev/random")]
    OpenRandom(#[source] io::Error),
    #[error("Cannot credit entropy to the kernel (RNDADDENTROPY)")]
    AddEntropy(#[source] nix::Error),
    #[error("Cannot reseed the kernel's CRNG (RNDRESEEDCRNG)")]
    Reseed(#[source] nix::Error),
    #[error("Cannot read the clock")]
    GetTime(#[source] io::Error),
    #[error("Cannot set the clock to {0} ns")]
    SetTime(u64, #[source] io::Error),
    #[error("Cannot set hostname {0:?}")]
    Hostname(String, #[source] nix::Error),
    #[error("Cannot read the boot id from {BOOT_ID_PATH}")]
    BootId(#[source] io::Error),
}

impl Error {
    /// The protocol error kind for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::EntropyLength { .. } | Error::InvalidHostname(_) | Error::InvalidTime(_) => {
                ErrorKind::BadRequest
            }
            _ => ErrorKind::Failed,
        }
    }
}

/// Checks that `entropy` has [`MIN_ENTROPY`] to [`MAX_ENTROPY`] bytes.
pub fn validate_entropy(entropy: &[u8]) -> Result<(), Error> {
    if (MIN_ENTROPY..=MAX_ENTROPY).contains(&entropy.len()) {
        Ok(())
    } else {
        Err(Error::EntropyLength { len: entropy.len() })
    }
}

/// Checks a hostname: 1 to [`MAX_HOSTNAME`] bytes of `[A-Za-z0-9.-]`, not starting with `-`
/// or `.`.
pub fn validate_hostname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HOSTNAME
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidHostname(name.to_string()))
    }
}

/// Checks that `realtime_ns` fits the kernel's clock (a signed 64-bit count of ns).
pub fn validate_realtime(realtime_ns: u64) -> Result<(), Error> {
    if i64::try_from(realtime_ns).is_ok() {
        Ok(())
    } else {
        Err(Error::InvalidTime(realtime_ns))
    }
}

/// Makes a restored guest its own, in this order: credits `entropy` to the kernel's pool and
/// reseeds the CRNG, sets CLOCK_REALTIME to `realtime_ns` (ns since the Unix epoch), sets the
/// hostname, then reads the boot id. Every argument is checked before anything changes.
///
/// With `guest` false (an agent that is not the guest's real PID 1: a host-run agent in
/// tests, or a PID 1 in a pid namespace on a host) nothing is touched: the arguments are
/// checked the same way and the answer has the host's boot id and a clock step of 0.
pub fn make_guest_own(
    realtime_ns: u64,
    entropy: &[u8],
    hostname: &str,
    guest: bool,
) -> Result<RestoredInfo, Error> {
    validate_entropy(entropy)?;
    validate_realtime(realtime_ns)?;
    validate_hostname(hostname)?;
    if !guest {
        return Ok(RestoredInfo {
            boot_id: read_boot_id()?,
            clock_step_ms: 0,
        });
    }
    reseed(entropy)?;
    let clock_step_ms = set_realtime(realtime_ns)?;
    nix::unistd::sethostname(hostname).map_err(|e| Error::Hostname(hostname.to_string(), e))?;
    Ok(RestoredInfo {
        boot_id: read_boot_id()?,
        clock_step_ms,
    })
}

/// The kernel's entropy ioctls (on /dev/random; both need CAP_SYS_ADMIN).
mod ioctl {
    // linux/random.h: #define RNDADDENTROPY _IOW('R', 0x03, int [2])
    // The argument is a `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }`.
    nix::ioctl_write_ptr!(rnd_add_entropy, b'R', 0x03, [libc::c_int; 2]);
    // linux/random.h: #define RNDRESEEDCRNG _IO('R', 0x07)
    nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);
}

/// `struct rand_pool_info` for `entropy`, as `u32` words: `entropy_count` (bits credited),
/// `buf_size` (bytes), then the bytes in memory order (the last word zero-padded).
fn rand_pool_info(entropy: &[u8]) -> Vec<u32> {
    let mut info = Vec::with_capacity(2 + entropy.len().div_ceil(4));
    // Cannot truncate: callers pass at most MAX_ENTROPY bytes.
    info.push((entropy.len() * 8) as u32);
    info.push(entropy.len() as u32);
    for chunk in entropy.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info.push(u32::from_ne_bytes(word));
    }
    info
}

/// Credits `entropy` (checked by [`validate_entropy`]) to the input pool and reseeds the CRNG
/// from it.
fn reseed(entropy: &[u8]) -> Result<(), Error> {
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(Error::OpenRandom)?;
    let info = rand_pool_info(entropy);
    // SAFETY: `info` is a complete rand_pool_info (header plus `buf_size` bytes), alive for
    // the call; the kernel only reads it.
    unsafe { ioctl::rnd_add_entropy(random.as_raw_fd(), info.as_ptr().cast()) }
        .map_err(Error::AddEntropy)?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    unsafe { ioctl::rnd_reseed_crng(random.as_raw_fd()) }.map_err(Error::Reseed)?;
    Ok(())
}

fn realtime_now_ns() -> Result<i128, Error> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`, which outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return Err(Error::GetTime(io::Error::last_os_error()));
    }
    Ok(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// Sets CLOCK_REALTIME to `realtime_ns` (checked by [`validate_realtime`]); returns how far
/// it moved, in ms (new - old).
fn set_realtime(realtime_ns: u64) -> Result<i64, Error> {
    let ts = libc::timespec {
        // Cannot truncate: realtime_ns <= i64::MAX, so the seconds fit a 64-bit time_t.
        tv_sec: (realtime_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (realtime_ns % 1_000_000_000) as libc::c_long,
    };
    let old = realtime_now_ns()?;
    // SAFETY: clock_settime reads `ts`, which outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(Error::SetTime(realtime_ns, io::Error::last_os_error()));
    }
    Ok(step_ms(old, i128::from(realtime_ns)))
}

/// `new - old` (ns) in whole ms, saturated to `i64`.
fn step_ms(old_ns: i128, new_ns: i128) -> i64 {
    let ms = (new_ns - old_ns) / 1_000_000;
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

fn read_boot_id() -> Result<String, Error> {
    let id = std::fs::read_to_string(BOOT_ID_PATH).map_err(Error::BootId)?;
    let id = id.trim();
    if id.is_empty() {
        return Err(Error::BootId(io::Error::new(
            io::ErrorKind::InvalidData,
            "empty boot id",
        )));
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_rules() {
        let max = "a".repeat(MAX_HOSTNAME);
        for ok in [
            "a",
            "pod-1",
            "pod1.example.com",
            "A9",
            "x-",
            "x.",
            max.as_str(),
        ] {
            validate_hostname(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
        let long = "a".repeat(MAX_HOSTNAME + 1);
        for bad in [
            "",
            "-pod",
            ".pod",
            "pod_1",
            "pod 1",
            "pod/1",
            "pöd",
            "pod\n",
            "pod\0",
            long.as_str(),
        ] {
            let e = validate_hostname(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidHostname(_)), "{bad:?}: {e:?}");
            assert_eq!(e.kind(), ErrorKind::BadRequest);
        }
    }

    #[test]
    fn entropy_length_bounds() {
        for len in [MIN_ENTROPY, 33, 64, MAX_ENTROPY] {
            validate_entropy(&vec![0xa5; len]).unwrap();
        }
        for len in [0, 1, MIN_ENTROPY - 1, MAX_ENTROPY + 1, 1 << 20] {
            let e = validate_entropy(&vec![0xa5; len]).unwrap_err();
            assert!(matches!(e, Error::EntropyLength { len: l } if l == len));
            assert_eq!(e.kind(), ErrorKind::BadRequest);
            assert!(e.to_string().contains(&format!("{len} bytes")), "{e}");
        }
    }

    #[test]
    fn realtime_bound() {
        validate_realtime(0).unwrap();
        validate_realtime(i64::MAX as u64).unwrap();
        let e = validate_realtime(i64::MAX as u64 + 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest);
    }

    #[test]
    fn ioctl_numbers_are_linux_randoms() {
        // The values of RNDADDENTROPY and RNDRESEEDCRNG on x86-64 and arm64.
        let add = nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());
        assert_eq!(add, 0x4008_5203);
        assert_eq!(nix::request_code_none!(b'R', 0x07), 0x5207);
    }

    #[test]
    fn rand_pool_info_layout() {
        let bytes: Vec<u8> = (1..=35).collect();
        let info = rand_pool_info(&bytes);
        assert_eq!(info.len(), 2 + 9);
        assert_eq!(info[0], 35 * 8);
        assert_eq!(info[1], 35);
        let body: Vec<u8> = info[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&body[..35], &bytes[..]);
        assert_eq!(&body[35..], &[0]);
    }

    #[test]
    fn step_is_new_minus_old_in_ms() {
        assert_eq!(step_ms(1_000_000_000, 3_500_000_000), 2500);
        assert_eq!(step_ms(3_500_000_000, 1_000_000_000), -2500);
        assert_eq!(step_ms(0, 999_999), 0);
        assert_eq!(step_ms(0, i128::MAX), i64::MAX);
        assert_eq!(step_ms(i128::MAX, 0), i64::MIN);
    }

    #[test]
    fn host_mode_checks_arguments_and_touches_nothing() {
        let before = nix::unistd::gethostname().unwrap();
        let info = make_guest_own(1, &[7; 64], "restored-test", false).unwrap();
        assert_eq!(info.clock_step_ms, 0);
        assert_eq!(
            info.boot_id,
            std::fs::read_to_string(BOOT_ID_PATH).unwrap().trim()
        );
        assert_eq!(nix::unistd::gethostname().unwrap(), before);
        // Refused the same way as in a guest, before anything would change.
        assert!(matches!(
            make_guest_own(1, &[7; 31], "ok", false),
            Err(Error::EntropyLength { len: 31 })
        ));
        assert!(matches!(
            make_guest_own(1, &[7; 64], "-bad", false),
            Err(Error::InvalidHostname(_))
        ));
        assert!(matches!(
            make_guest_own(u64::MAX, &[7; 64], "ok", false),
            Err(Error::InvalidTime(u64::MAX))
        ));
    }
}
