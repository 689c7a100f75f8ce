//! Creating the persistent TAP the VMM's virtio-net attaches to by name.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::Error;

/// The flags `devices::virtio::net::Tap::open` attaches with; a persistent TAP must have been
/// made with the same ones.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// TUNSETIFF fails with EBUSY instead of attaching to an existing device.
const IFF_TUN_EXCL: libc::c_int = 0x8000;

/// `struct ifreq` as far as TUNSETIFF uses it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub use agent::netlink::valid_ifname as valid_name;

/// The index of the interface `name` in this namespace, if there is one.
pub fn index_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads the NUL-terminated string, which outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Creates the persistent TAP `name`, owned by root, with [`TAP_FLAGS`]. Fails with
/// [`Error::TapExists`] if any interface of that name exists. Returns its index.
pub fn create_persistent(name: &str) -> Result<u32, Error> {
    if !valid_name(name) {
        return Err(Error::TapName(name.to_string()));
    }
    if index_of(name).is_some() {
        return Err(Error::TapExists(name.to_string()));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(Error::OpenTun)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (TAP_FLAGS | IFF_TUN_EXCL) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let fail = |source: io::Error| Error::CreateTap {
        name: name.to_string(),
        source,
    };
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a properly sized and
    // initialised one that lives across the call, and the fd is ours.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EBUSY) {
            Error::TapExists(name.to_string())
        } else {
            fail(e)
        });
    }
    // SAFETY: TUNSETOWNER takes the uid by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOWNER, 0 as libc::c_ulong) } < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes its flag by value; the device outlives our fd.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    drop(tun);
    index_of(name).ok_or_else(|| fail(io::Error::from_raw_os_error(libc::ENODEV)))
}
