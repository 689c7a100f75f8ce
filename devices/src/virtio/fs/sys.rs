//! Thin safe wrappers over the `*at` system calls the passthrough server uses. Each takes
//! a directory fd plus one already-validated name component (or an `O_PATH` fd alone), so
//! nothing here resolves a multi-component guest path.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The empty path used with `AT_EMPTY_PATH`.
const EMPTY: &CStr = c"";

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `/proc/self/fd/N` for `fd`: the kernel resolves it to exactly the inode the fd holds,
/// without walking any path of the share.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // The formatted number never contains a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by a successful open call and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a host path given by the VMM (trusted; symlinks are followed).
pub fn open_host(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    owned(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `openat(dir, name, flags, mode)` with `O_CLOEXEC`.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is an open fd and `name` a NUL-terminated string, both valid for the call.
    owned(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })
}

/// Opens the inode behind `fd` (an `O_PATH` fd) again with `flags`, through
/// `/proc/self/fd/N`.
pub fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let p = proc_path(fd);
    // SAFETY: `p` is a valid NUL-terminated string for the duration of the call.
    owned(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: the attributes of the inode `fd`
/// holds (also for `O_PATH` fds).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat64> {
    // SAFETY: an all-zero `stat64` is a valid value (plain integers).
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open, `EMPTY` is NUL-terminated and `st` is writable for the call.
    cvt(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `fstatvfs(fd)`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs64> {
    // SAFETY: an all-zero `statvfs64` is a valid value (plain integers).
    let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable for the call.
    cvt(unsafe { libc::fstatvfs64(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `dir` is open and `name` NUL-terminated for the call.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u32) -> io::Result<()> {
    // SAFETY: `dir` is open and `name` NUL-terminated for the call.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::dev_t::from(rdev),
        )
    })
    .map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and `dir` is open for the call.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `dir` is open and `name` NUL-terminated for the call.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both fds are open and both names NUL-terminated for the call.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// A new hard link `dir/name` to the inode `fd` holds (through `/proc/self/fd/N`, which
/// needs no `CAP_DAC_READ_SEARCH`, unlike `AT_EMPTY_PATH`).
pub fn link(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `p` and `name` are NUL-terminated and `dir` is open for the call.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            p.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// The target of the symlink `fd` holds (an `O_PATH | O_NOFOLLOW` fd).
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `fd` is open, `EMPTY` is NUL-terminated and `buf` is writable for its length.
    let n = cvt_long(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`; `u32::MAX` leaves an id unchanged.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `fd` is open and `EMPTY` NUL-terminated for the call.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `chmod` of the inode `fd` holds (not a symlink: the caller checks).
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated for the call.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// `utimensat` on the inode `fd` holds, through `/proc/self/fd/N` (which lands on the inode
/// itself, a symlink included, and works on kernels without `AT_EMPTY_PATH` for utimensat).
pub fn utimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated and `times` two valid timespecs for the call.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: u32, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain integer arguments on an open fd.
    cvt(unsafe { libc::fallocate64(fd.as_raw_fd(), mode as libc::c_int, off, len) }).map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: u32) -> io::Result<u64> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain integer arguments on an open fd.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off, whence as libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// `flock(fd, op)`.
pub fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer arguments on an open fd.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let (Ok(mut oi), Ok(mut oo)) = (i64::try_from(off_in), i64::try_from(off_out)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: both fds are open and the offsets are valid, writable i64s for the call.
    cvt_long(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut oi,
            fd_out.as_raw_fd(),
            &mut oo,
            len,
            0,
        )
    })
}

/// Reads directory entries of `fd` into `buf` (`getdents64`); returns the bytes filled.
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; the kernel writes at most that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Where an xattr call goes: an fd opened for I/O (regular files and directories), or the
/// `/proc/self/fd/N` path of an `O_PATH` fd (other file types, which cannot be opened).
pub enum XattrTarget {
    Fd(RawFd),
    Path(CString),
}

pub fn getxattr(t: &XattrTarget, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let (ptr, len) = (buf.as_mut_ptr().cast(), buf.len());
    // SAFETY: `name` (and the path) are NUL-terminated, the fd is open and `buf` is
    // writable for `len` bytes (a zero length is a size probe that writes nothing).
    cvt_long(unsafe {
        match t {
            XattrTarget::Fd(fd) => libc::fgetxattr(*fd, name.as_ptr(), ptr, len),
            XattrTarget::Path(p) => libc::getxattr(p.as_ptr(), name.as_ptr(), ptr, len),
        }
    })
}

pub fn listxattr(t: &XattrTarget, buf: &mut [u8]) -> io::Result<usize> {
    let (ptr, len) = (buf.as_mut_ptr().cast(), buf.len());
    // SAFETY: as for `getxattr`.
    cvt_long(unsafe {
        match t {
            XattrTarget::Fd(fd) => libc::flistxattr(*fd, ptr, len),
            XattrTarget::Path(p) => libc::listxattr(p.as_ptr(), ptr, len),
        }
    })
}

pub fn setxattr(t: &XattrTarget, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
    let (ptr, len, flags) = (value.as_ptr().cast(), value.len(), flags as libc::c_int);
    // SAFETY: `name` (and the path) are NUL-terminated, the fd is open and `value` is
    // readable for `len` bytes.
    cvt(unsafe {
        match t {
            XattrTarget::Fd(fd) => libc::fsetxattr(*fd, name.as_ptr(), ptr, len, flags),
            XattrTarget::Path(p) => libc::setxattr(p.as_ptr(), name.as_ptr(), ptr, len, flags),
        }
    })
    .map(drop)
}

pub fn removexattr(t: &XattrTarget, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` (and the path) are NUL-terminated and the fd is open.
    cvt(unsafe {
        match t {
            XattrTarget::Fd(fd) => libc::fremovexattr(*fd, name.as_ptr()),
            XattrTarget::Path(p) => libc::removexattr(p.as_ptr(), name.as_ptr()),
        }
    })
    .map(drop)
}
