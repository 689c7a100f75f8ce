//! The passthrough filesystem behind the FUSE server: a synthetic root whose entries are the
//! shares, and below each share the host files themselves.
//!
//! Escape model: every inode the guest knows is an `O_PATH | O_NOFOLLOW` fd; the guest names
//! inodes by opaque node ids (and open files by opaque handles) that are looked up in tables
//! here, so a forged id finds nothing. New inodes are reached only by `openat(parent_fd,
//! name, O_PATH | O_NOFOLLOW)` with `name` checked to be one path component, and every other
//! call is an `*at` call on a parent fd plus such a name, or on the inode's own fd. So no
//! guest-supplied path is ever walked by the host kernel, `..` is never looked up, and a
//! symlink is never followed on the host (its target only goes back to the guest through
//! READLINK). File I/O reopens an inode's own fd through `/proc/self/fd/N`, and only for
//! regular files and directories: a device node the guest created is never opened here.
//!
//! Bounds: at most [`MAX_INODES`] inodes and [`MAX_HANDLES`] open handles (each is one host
//! fd); past them requests fail with `ENFILE`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::abi::{self, Attr, EntryOut, Kstatfs, SetattrIn};
use super::sys::{self, XattrTarget};
use super::FsError;

/// A positive errno value; replies carry its negation.
pub type Errno = i32;
/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, Errno>;

/// Most inodes the guest may hold at once (each is an open `O_PATH` fd).
pub const MAX_INODES: usize = 64 * 1024;
/// Most files and directories the guest may hold open at once.
pub const MAX_HANDLES: usize = 4096;
/// How long the guest may cache a name lookup (seconds). Short: the host may change volume
/// files behind the guest's back.
pub const ENTRY_TIMEOUT_SECS: u64 = 1;
/// How long the guest may cache attributes (seconds).
pub const ATTR_TIMEOUT_SECS: u64 = 1;
/// Largest xattr value or list passed in either direction (`XATTR_SIZE_MAX`).
pub const MAX_XATTR: usize = 64 * 1024;
/// Longest name component (`NAME_MAX`).
pub const MAX_NAME: usize = 255;

const S_IFMT: u32 = libc::S_IFMT;
const S_IFDIR: u32 = libc::S_IFDIR;
const S_IFREG: u32 = libc::S_IFREG;
const S_IFLNK: u32 = libc::S_IFLNK;

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Who asks (from the request header).
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
}

/// Checks that `name` is exactly one path component: not empty, no `/`, not `.` or `..`,
/// at most [`MAX_NAME`] bytes (it has no NUL: it was cut at the first one).
pub fn check_name(name: &CStr) -> FsResult<()> {
    let b = name.to_bytes();
    if b.len() > MAX_NAME {
        return Err(libc::ENAMETOOLONG);
    }
    if b.is_empty() || b.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    if b == b"." || b == b".." {
        return Err(libc::ENOENT);
    }
    Ok(())
}

/// Checks a share name: one component of `[A-Za-z0-9._-]`, at most 255 bytes, not `.`/`..`.
pub fn valid_share_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

struct Share {
    id: u64,
    /// Node id of the share's root inode (pinned while the share exists).
    node: u64,
}

struct Inode {
    /// The `O_PATH | O_NOFOLLOW` fd; `None` once the share was removed (requests get
    /// `ESTALE` until the guest forgets the node).
    fd: Option<OwnedFd>,
    share: u64,
    read_only: bool,
    /// `st_mode & S_IFMT`.
    kind: u32,
    dev: u64,
    ino: u64,
    /// Lookups the guest has not forgotten yet.
    lookups: u64,
    /// A share root, kept while the share exists whatever the lookup count.
    pinned: bool,
}

enum HandleData {
    File(File),
    Dir(File),
    /// A directory handle on the synthetic root.
    Root,
    /// Its share was removed; the fd is closed.
    Stale,
}

struct Handle {
    node: u64,
    /// Share id (0 for the synthetic root).
    share: u64,
    read_only: bool,
    data: HandleData,
    /// Where a directory handle's reading stands (see [`DirCursor`]).
    cursor: DirCursor,
}

/// A directory handle's reading position: the `getdents` records read from the host but
/// not yet given to the guest, and the offset the guest will ask for next. A READDIR that
/// continues from there goes on without seeking: on filesystems whose offsets count
/// entries (tmpfs before Linux 6.6) a seek after the guest unlinked what it read would skip
/// as many entries (`rm -rf` then leaves files behind).
#[derive(Default)]
struct DirCursor {
    /// `Some(off)`: the fd stands right after the records in `pending`, and `off` is the
    /// offset of the last record given to the guest.
    next_off: Option<u64>,
    pending: Vec<u8>,
}

/// What [`PassthroughFs::getxattr`] and [`PassthroughFs::listxattr`] answer.
pub enum XattrReply {
    /// The size a buffer would need (the request asked with size 0).
    Size(u32),
    Data(Vec<u8>),
}

/// The filesystem state: shares, inodes and handles.
pub struct PassthroughFs {
    shares: BTreeMap<String, Share>,
    inodes: HashMap<u64, Inode>,
    by_key: HashMap<(u64, u64, u64), u64>,
    handles: HashMap<u64, Handle>,
    next_node: u64,
    next_handle: u64,
    next_share: u64,
    /// Root mtime/ctime: when the share set last changed.
    root_time: (u64, u32),
    max_inodes: usize,
    max_handles: usize,
    warned_inodes: bool,
    warned_handles: bool,
}

fn now() -> (u64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// The guest's 32-bit `new_encode_dev` form of a host `dev_t`.
fn encode_dev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn attr_of(st: &libc::stat64) -> Attr {
    Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn entry_of(node: u64, attr: Attr) -> EntryOut {
    EntryOut {
        nodeid: node,
        generation: 0,
        entry_valid: ENTRY_TIMEOUT_SECS,
        attr_valid: ATTR_TIMEOUT_SECS,
        entry_valid_nsec: 0,
        attr_valid_nsec: 0,
        attr,
    }
}

/// Flags for reopening a file for I/O: the guest's, without those that make no sense on a
/// reopen (`O_CREAT`, `O_EXCL`, `O_NOCTTY`), `O_NOFOLLOW` (the magic link is a symlink),
/// `O_DIRECT` (I/O goes through unaligned bounce buffers), `O_PATH` and `O_TMPFILE`.
fn io_flags(flags: u32) -> libc::c_int {
    let strip = libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_NOFOLLOW
        | libc::O_DIRECT
        | libc::O_PATH
        | (libc::O_TMPFILE & !libc::O_DIRECTORY);
    (flags as libc::c_int) & !strip
}

fn wants_write(flags: u32) -> bool {
    let f = flags as libc::c_int;
    (f & libc::O_ACCMODE) != libc::O_RDONLY || (f & libc::O_TRUNC) != 0
}

/// A parent directory's fd and what a child created in it inherits.
struct Parent<'a> {
    fd: BorrowedFd<'a>,
    share: u64,
    read_only: bool,
}

impl PassthroughFs {
    /// An empty filesystem (a root without entries).
    pub fn new() -> Self {
        PassthroughFs {
            shares: BTreeMap::new(),
            inodes: HashMap::new(),
            by_key: HashMap::new(),
            handles: HashMap::new(),
            next_node: abi::ROOT_ID + 1,
            next_handle: 1,
            next_share: 1,
            root_time: now(),
            max_inodes: MAX_INODES,
            max_handles: MAX_HANDLES,
            warned_inodes: false,
            warned_handles: false,
        }
    }

    /// Lowers the limits (tests).
    #[cfg(test)]
    pub fn set_limits(&mut self, inodes: usize, handles: usize) {
        self.max_inodes = inodes;
        self.max_handles = handles;
    }

    /// Number of inodes and handles held (tests).
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.inodes.len(), self.handles.len())
    }

    // ---- Shares (called by the VMM) ----

    pub fn add_share(&mut self, name: &str, path: &Path, read_only: bool) -> Result<(), FsError> {
        if !valid_share_name(name) {
            return Err(FsError::ShareName(name.to_string()));
        }
        if self.shares.contains_key(name) {
            return Err(FsError::ShareExists(name.to_string()));
        }
        let open_err = |source| FsError::Open {
            path: path.to_path_buf(),
            source,
        };
        // The VMM's path is trusted: symlinks in it are followed, once, here.
        let fd = sys::open_host(path, libc::O_PATH).map_err(open_err)?;
        let st = sys::fstat(fd.as_fd()).map_err(open_err)?;
        let kind = st.st_mode & S_IFMT;
        if kind != S_IFDIR && kind != S_IFREG {
            return Err(FsError::NotDirOrFile(path.to_path_buf()));
        }
        if self.inodes.len() >= self.max_inodes {
            return Err(FsError::TooManyInodes);
        }
        let id = self.next_share;
        self.next_share += 1;
        let node = self.alloc_node();
        self.inodes.insert(
            node,
            Inode {
                fd: Some(fd),
                share: id,
                read_only,
                kind,
                dev: st.st_dev,
                ino: st.st_ino,
                lookups: 0,
                pinned: true,
            },
        );
        self.by_key.insert((id, st.st_dev, st.st_ino), node);
        self.shares.insert(name.to_string(), Share { id, node });
        self.root_time = now();
        Ok(())
    }

    pub fn remove_share(&mut self, name: &str) -> Result<(), FsError> {
        let share = self
            .shares
            .remove(name)
            .ok_or_else(|| FsError::UnknownShare(name.to_string()))?;
        self.by_key.retain(|k, _| k.0 != share.id);
        let mut gone = Vec::new();
        for (&node, inode) in self.inodes.iter_mut() {
            if inode.share == share.id {
                inode.fd = None;
                inode.pinned = false;
                if inode.lookups == 0 {
                    gone.push(node);
                }
            }
        }
        for node in gone {
            self.inodes.remove(&node);
        }
        for h in self.handles.values_mut() {
            if h.share == share.id {
                h.data = HandleData::Stale;
            }
        }
        self.root_time = now();
        Ok(())
    }

    pub fn shares(&self) -> Vec<String> {
        self.shares.keys().cloned().collect()
    }

    /// What the guest holds: inodes it looked up and has not forgotten (share roots only
    /// count while looked up), and open handles.
    pub fn guest_held(&self) -> (usize, usize) {
        let inodes = self.inodes.values().filter(|i| i.lookups > 0).count();
        (inodes, self.handles.len())
    }

    /// Forgets everything the guest held (DESTROY, device reset): handles closed, lookup
    /// counts dropped; the shares stay.
    pub fn reset_guest_state(&mut self) {
        self.handles.clear();
        self.inodes.retain(|_, i| i.pinned);
        for i in self.inodes.values_mut() {
            i.lookups = 0;
        }
        let inodes = &self.inodes;
        self.by_key.retain(|_, n| inodes.contains_key(n));
    }

    // ---- Tables ----

    fn alloc_node(&mut self) -> u64 {
        let n = self.next_node;
        self.next_node += 1;
        n
    }

    fn inode(&self, node: u64) -> FsResult<&Inode> {
        match self.inodes.get(&node) {
            Some(i) if i.fd.is_some() => Ok(i),
            _ => Err(libc::ESTALE),
        }
    }

    fn fd(&self, node: u64) -> FsResult<BorrowedFd<'_>> {
        self.inode(node)?
            .fd
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or(libc::ESTALE)
    }

    fn handle(&self, fh: u64) -> FsResult<&Handle> {
        match self.handles.get(&fh) {
            Some(h) if matches!(h.data, HandleData::Stale) => Err(libc::ESTALE),
            Some(h) => Ok(h),
            None => Err(libc::EBADF),
        }
    }

    fn file(&self, fh: u64) -> FsResult<(&File, &Handle)> {
        let h = self.handle(fh)?;
        match &h.data {
            HandleData::File(f) => Ok((f, h)),
            HandleData::Dir(_) | HandleData::Root => Err(libc::EISDIR),
            HandleData::Stale => Err(libc::ESTALE),
        }
    }

    /// A directory the guest wants to create in, remove from or rename within.
    fn parent_for_write(&self, node: u64) -> FsResult<Parent<'_>> {
        if node == abi::ROOT_ID {
            return Err(libc::EPERM);
        }
        let i = self.inode(node)?;
        if i.kind != S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        if i.read_only {
            return Err(libc::EROFS);
        }
        Ok(Parent {
            fd: self.fd(node)?,
            share: i.share,
            read_only: i.read_only,
        })
    }

    /// Registers a looked-up fd as an inode of `share` (one more lookup of an existing one,
    /// which closes `fd`) and returns its node id.
    fn register(
        &mut self,
        share: u64,
        read_only: bool,
        fd: OwnedFd,
        st: &libc::stat64,
    ) -> FsResult<u64> {
        let key = (share, st.st_dev, st.st_ino);
        if let Some(&node) = self.by_key.get(&key) {
            if let Some(i) = self.inodes.get_mut(&node) {
                i.lookups += 1;
                return Ok(node);
            }
        }
        if self.inodes.len() >= self.max_inodes {
            if !self.warned_inodes {
                log::warn!(
                    "virtio-fs: {} inodes in use, refusing more",
                    self.max_inodes
                );
                self.warned_inodes = true;
            }
            return Err(libc::ENFILE);
        }
        let node = self.alloc_node();
        self.inodes.insert(
            node,
            Inode {
                fd: Some(fd),
                share,
                read_only,
                kind: st.st_mode & S_IFMT,
                dev: st.st_dev,
                ino: st.st_ino,
                lookups: 1,
                pinned: false,
            },
        );
        self.by_key.insert(key, node);
        Ok(node)
    }

    /// `ENFILE` (logged once) when no handle may be opened.
    fn handle_room(&mut self) -> FsResult<()> {
        if self.handles.len() < self.max_handles {
            return Ok(());
        }
        if !self.warned_handles {
            log::warn!(
                "virtio-fs: {} open handles in use, refusing more",
                self.max_handles
            );
            self.warned_handles = true;
        }
        Err(libc::ENFILE)
    }

    fn add_handle(&mut self, node: u64, read_only: bool, data: HandleData) -> FsResult<u64> {
        self.handle_room()?;
        let share = self.inodes.get(&node).map_or(0, |i| i.share);
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(
            fh,
            Handle {
                node,
                share,
                read_only,
                data,
                cursor: DirCursor::default(),
            },
        );
        Ok(fh)
    }

    fn root_attr(&self) -> Attr {
        let (s, ns) = self.root_time;
        Attr {
            ino: abi::ROOT_ID,
            size: 0,
            blocks: 0,
            atime: s,
            mtime: s,
            ctime: s,
            atimensec: ns,
            mtimensec: ns,
            ctimensec: ns,
            mode: S_IFDIR | 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    // ---- Operations ----

    pub fn lookup(&mut self, parent: u64, name: &CStr) -> FsResult<EntryOut> {
        check_name(name)?;
        if parent == abi::ROOT_ID {
            let name = name.to_str().map_err(|_| libc::ENOENT)?;
            let node = self.shares.get(name).ok_or(libc::ENOENT)?.node;
            let st = sys::fstat(self.fd(node)?).map_err(errno)?;
            if let Some(i) = self.inodes.get_mut(&node) {
                i.lookups += 1;
            }
            return Ok(entry_of(node, attr_of(&st)));
        }
        let p = self.inode(parent)?;
        if p.kind != S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        let (share, ro) = (p.share, p.read_only);
        let fd = sys::openat(self.fd(parent)?, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(errno)?;
        let st = sys::fstat(fd.as_fd()).map_err(errno)?;
        let node = self.register(share, ro, fd, &st)?;
        Ok(entry_of(node, attr_of(&st)))
    }

    pub fn forget(&mut self, node: u64, n: u64) {
        let Some(i) = self.inodes.get_mut(&node) else {
            return;
        };
        i.lookups = i.lookups.saturating_sub(n);
        if i.lookups == 0 && !i.pinned {
            let key = (i.share, i.dev, i.ino);
            self.inodes.remove(&node);
            if self.by_key.get(&key) == Some(&node) {
                self.by_key.remove(&key);
            }
        }
    }

    pub fn getattr(&self, node: u64) -> FsResult<Attr> {
        if node == abi::ROOT_ID {
            return Ok(self.root_attr());
        }
        let st = sys::fstat(self.fd(node)?).map_err(errno)?;
        Ok(attr_of(&st))
    }

    pub fn setattr(&mut self, node: u64, a: &SetattrIn) -> FsResult<Attr> {
        use abi::*;
        if node == abi::ROOT_ID {
            return Err(libc::EPERM);
        }
        let changes = FATTR_MODE
            | FATTR_UID
            | FATTR_GID
            | FATTR_SIZE
            | FATTR_ATIME
            | FATTR_MTIME
            | FATTR_ATIME_NOW
            | FATTR_MTIME_NOW;
        let v = a.valid;
        let inode = self.inode(node)?;
        if v & changes != 0 && inode.read_only {
            return Err(libc::EROFS);
        }
        let kind = inode.kind;
        let fd = self.fd(node)?;
        let file = if v & FATTR_FH != 0 {
            let (f, h) = self.file(a.fh)?;
            if h.node != node {
                return Err(libc::EBADF);
            }
            Some(f)
        } else {
            None
        };
        if v & FATTR_SIZE != 0 {
            match kind {
                S_IFREG => {}
                S_IFDIR => return Err(libc::EISDIR),
                _ => return Err(libc::EINVAL),
            }
            match file {
                Some(f) => f.set_len(a.size).map_err(errno)?,
                None => {
                    let f = File::from(sys::reopen(fd, libc::O_WRONLY).map_err(errno)?);
                    f.set_len(a.size).map_err(errno)?;
                }
            }
        }
        if v & (FATTR_UID | FATTR_GID) != 0 {
            let uid = if v & FATTR_UID != 0 { a.uid } else { u32::MAX };
            let gid = if v & FATTR_GID != 0 { a.gid } else { u32::MAX };
            sys::fchown(fd, uid, gid).map_err(errno)?;
        }
        if v & FATTR_MODE != 0 {
            if kind == S_IFLNK {
                return Err(libc::EOPNOTSUPP);
            }
            sys::chmod(fd, a.mode & 0o7777).map_err(errno)?;
        }
        if v & (FATTR_ATIME | FATTR_MTIME) != 0 {
            let ts = |set: bool, now: bool, s: u64, ns: u32| -> FsResult<libc::timespec> {
                Ok(match (set, now) {
                    (false, _) => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                    (true, true) => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    },
                    (true, false) => libc::timespec {
                        tv_sec: i64::try_from(s).map_err(|_| libc::EINVAL)?,
                        tv_nsec: i64::from(ns.min(999_999_999)),
                    },
                })
            };
            let times = [
                ts(
                    v & FATTR_ATIME != 0,
                    v & FATTR_ATIME_NOW != 0,
                    a.atime,
                    a.atimensec,
                )?,
                ts(
                    v & FATTR_MTIME != 0,
                    v & FATTR_MTIME_NOW != 0,
                    a.mtime,
                    a.mtimensec,
                )?,
            ];
            sys::utimens(fd, &times).map_err(errno)?;
        }
        self.getattr(node)
    }

    pub fn readlink(&self, node: u64) -> FsResult<Vec<u8>> {
        if node == abi::ROOT_ID || self.inode(node)?.kind != S_IFLNK {
            return Err(libc::EINVAL);
        }
        sys::readlink(self.fd(node)?).map_err(errno)
    }

    /// Gives a just-created child the caller's ownership (the group of a set-group-id
    /// parent directory stays, as the host kernel chose it) and the requested permission
    /// bits (the VMM's umask must not apply), then registers it.
    fn finish_create(
        &mut self,
        ctx: Ctx,
        p: (u64, bool),
        parent_st: &libc::stat64,
        fd: OwnedFd,
        perm: Option<u32>,
    ) -> FsResult<EntryOut> {
        let st = sys::fstat(fd.as_fd()).map_err(errno)?;
        let gid = if parent_st.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            ctx.gid
        };
        if st.st_uid != ctx.uid || (gid != u32::MAX && st.st_gid != gid) {
            if let Err(e) = sys::fchown(fd.as_fd(), ctx.uid, gid) {
                // Not root: the file stays the VMM user's.
                log::debug!("virtio-fs: cannot give a new file to {}: {e}", ctx.uid);
            }
        }
        let kind = st.st_mode & S_IFMT;
        if let (Some(perm), false) = (perm, kind == S_IFLNK) {
            let st = sys::fstat(fd.as_fd()).map_err(errno)?;
            let keep = if kind == S_IFDIR {
                st.st_mode & libc::S_ISGID
            } else {
                0
            };
            let want = (perm & 0o7777) | keep;
            if st.st_mode & 0o7777 != want {
                sys::chmod(fd.as_fd(), want).map_err(errno)?;
            }
        }
        let st = sys::fstat(fd.as_fd()).map_err(errno)?;
        let node = self.register(p.0, p.1, fd, &st)?;
        Ok(entry_of(node, attr_of(&st)))
    }

    fn parent_info(&self, parent: u64) -> FsResult<((u64, bool), libc::stat64)> {
        let p = self.parent_for_write(parent)?;
        let st = sys::fstat(p.fd).map_err(errno)?;
        Ok(((p.share, p.read_only), st))
    }

    pub fn mkdir(&mut self, ctx: Ctx, parent: u64, name: &CStr, mode: u32) -> FsResult<EntryOut> {
        check_name(name)?;
        let (p, pst) = self.parent_info(parent)?;
        let pfd = self.fd(parent)?;
        sys::mkdirat(pfd, name, mode & 0o7777).map_err(errno)?;
        let fd = sys::openat(pfd, name, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(errno)?;
        self.finish_create(ctx, p, &pst, fd, Some(mode))
    }

    pub fn mknod(
        &mut self,
        ctx: Ctx,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<EntryOut> {
        check_name(name)?;
        let kind = mode & S_IFMT;
        let allowed = [
            S_IFREG,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
        ];
        if !allowed.contains(&kind) {
            return Err(libc::EINVAL);
        }
        let (p, pst) = self.parent_info(parent)?;
        let pfd = self.fd(parent)?;
        sys::mknodat(pfd, name, mode, rdev).map_err(errno)?;
        let fd = sys::openat(pfd, name, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(errno)?;
        self.finish_create(ctx, p, &pst, fd, Some(mode))
    }

    pub fn symlink(
        &mut self,
        ctx: Ctx,
        parent: u64,
        name: &CStr,
        target: &CStr,
    ) -> FsResult<EntryOut> {
        check_name(name)?;
        if target.to_bytes().is_empty() {
            return Err(libc::ENOENT);
        }
        let (p, pst) = self.parent_info(parent)?;
        let pfd = self.fd(parent)?;
        sys::symlinkat(target, pfd, name).map_err(errno)?;
        let fd = sys::openat(pfd, name, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(errno)?;
        self.finish_create(ctx, p, &pst, fd, None)
    }

    /// CREATE: a new regular file, opened. Returns its entry and handle.
    pub fn create(
        &mut self,
        ctx: Ctx,
        parent: u64,
        name: &CStr,
        flags: u32,
        mode: u32,
    ) -> FsResult<(EntryOut, u64)> {
        check_name(name)?;
        self.handle_room()?;
        let (p, pst) = self.parent_info(parent)?;
        let pfd = self.fd(parent)?;
        let base = io_flags(flags) | libc::O_NOFOLLOW;
        // O_EXCL first, so that only a file made here is given to the caller.
        let perm = mode & 0o7777;
        let (file, created) =
            match sys::openat(pfd, name, base | libc::O_CREAT | libc::O_EXCL, perm) {
                Ok(f) => (f, true),
                Err(e)
                    if e.raw_os_error() == Some(libc::EEXIST)
                        && (flags as libc::c_int) & libc::O_EXCL == 0 =>
                {
                    (sys::openat(pfd, name, base, 0).map_err(errno)?, false)
                }
                Err(e) => return Err(errno(e)),
            };
        let st = sys::fstat(file.as_fd()).map_err(errno)?;
        if st.st_mode & S_IFMT != S_IFREG {
            return Err(libc::EISDIR);
        }
        let path_fd = sys::reopen(file.as_fd(), libc::O_PATH).map_err(errno)?;
        let entry = if created {
            self.finish_create(ctx, p, &pst, path_fd, Some(perm))?
        } else {
            let node = self.register(p.0, p.1, path_fd, &st)?;
            entry_of(node, attr_of(&st))
        };
        match self.add_handle(entry.nodeid, p.1, HandleData::File(File::from(file))) {
            Ok(fh) => Ok((entry, fh)),
            Err(e) => {
                self.forget(entry.nodeid, 1);
                Err(e)
            }
        }
    }

    pub fn unlink(&mut self, parent: u64, name: &CStr, dir: bool) -> FsResult<()> {
        check_name(name)?;
        let p = self.parent_for_write(parent)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        sys::unlinkat(p.fd, name, flags).map_err(errno)
    }

    pub fn rename(
        &mut self,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> FsResult<()> {
        check_name(oldname)?;
        check_name(newname)?;
        let allowed = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !allowed != 0 {
            return Err(libc::EINVAL);
        }
        let o = self.parent_for_write(olddir)?;
        let n = self.parent_for_write(newdir)?;
        if o.share != n.share {
            return Err(libc::EXDEV);
        }
        sys::renameat2(o.fd, oldname, n.fd, newname, flags).map_err(errno)
    }

    pub fn link(&mut self, old: u64, newparent: u64, newname: &CStr) -> FsResult<EntryOut> {
        check_name(newname)?;
        if old == abi::ROOT_ID {
            return Err(libc::EPERM);
        }
        let i = self.inode(old)?;
        if i.kind == S_IFDIR {
            return Err(libc::EPERM);
        }
        let share = i.share;
        let p = self.parent_for_write(newparent)?;
        if p.share != share {
            return Err(libc::EXDEV);
        }
        let ofd = self.fd(old)?;
        sys::link(ofd, p.fd, newname).map_err(errno)?;
        let st = sys::fstat(ofd).map_err(errno)?;
        if let Some(i) = self.inodes.get_mut(&old) {
            i.lookups += 1;
        }
        Ok(entry_of(old, attr_of(&st)))
    }

    pub fn open(&mut self, node: u64, flags: u32) -> FsResult<u64> {
        if node == abi::ROOT_ID {
            return Err(libc::EISDIR);
        }
        self.handle_room()?;
        let i = self.inode(node)?;
        match i.kind {
            S_IFREG => {}
            S_IFDIR => return Err(libc::EISDIR),
            S_IFLNK => return Err(libc::ELOOP),
            _ => return Err(libc::EINVAL),
        }
        let ro = i.read_only;
        if ro && wants_write(flags) {
            return Err(libc::EROFS);
        }
        let f = sys::reopen(self.fd(node)?, io_flags(flags)).map_err(errno)?;
        self.add_handle(node, ro, HandleData::File(File::from(f)))
    }

    pub fn opendir(&mut self, node: u64) -> FsResult<u64> {
        if node == abi::ROOT_ID {
            return self.add_handle(node, true, HandleData::Root);
        }
        let i = self.inode(node)?;
        if i.kind != S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        let ro = i.read_only;
        self.handle_room()?;
        let f = sys::reopen(self.fd(node)?, libc::O_RDONLY | libc::O_DIRECTORY).map_err(errno)?;
        self.add_handle(node, ro, HandleData::Dir(File::from(f)))
    }

    /// Releases a file (`dir` false) or directory handle. A stale one is just dropped.
    pub fn release(&mut self, fh: u64, dir: bool) -> FsResult<()> {
        let h = self.handles.get(&fh).ok_or(libc::EBADF)?;
        let ok = match h.data {
            HandleData::File(_) => !dir,
            HandleData::Dir(_) | HandleData::Root => dir,
            HandleData::Stale => true,
        };
        if !ok {
            return Err(libc::EBADF);
        }
        self.handles.remove(&fh);
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`, appended to `out`.
    pub fn read(&self, fh: u64, offset: u64, size: usize, out: &mut Vec<u8>) -> FsResult<()> {
        let (f, _) = self.file(fh)?;
        let start = out.len();
        out.resize(start + size, 0);
        let mut done = 0;
        while done < size {
            let Some(off) = offset.checked_add(done as u64) else {
                break;
            };
            match f.read_at(&mut out[start + done..], off) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if done > 0 => {
                    log::debug!("virtio-fs: short read: {e}");
                    break;
                }
                Err(e) => {
                    out.truncate(start);
                    return Err(errno(e));
                }
            }
        }
        out.truncate(start + done);
        Ok(())
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (f, h) = self.file(fh)?;
        if h.read_only {
            return Err(libc::EROFS);
        }
        offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        f.write_all_at(data, offset).map_err(errno)?;
        Ok(data.len() as u32)
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        self.file(fh).map(drop)
    }

    pub fn fsync(&self, fh: u64, datasync: bool, dir: bool) -> FsResult<()> {
        let h = self.handle(fh)?;
        let f = match (&h.data, dir) {
            (HandleData::File(f), false) | (HandleData::Dir(f), true) => f,
            (HandleData::Root, true) => return Ok(()),
            _ => return Err(libc::EBADF),
        };
        if datasync {
            f.sync_data().map_err(errno)
        } else {
            f.sync_all().map_err(errno)
        }
    }

    pub fn statfs(&self, node: u64) -> FsResult<Kstatfs> {
        if node == abi::ROOT_ID {
            return Ok(Kstatfs {
                bsize: 4096,
                frsize: 4096,
                namelen: MAX_NAME as u32,
                ..Default::default()
            });
        }
        let s = sys::fstatvfs(self.fd(node)?).map_err(errno)?;
        Ok(Kstatfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
            padding: 0,
            spare: [0; 6],
        })
    }

    /// ACCESS: the permission bits against the caller's uid and primary gid (supplementary
    /// groups are not known; the guest mounts with `default_permissions`, so its kernel
    /// checks permissions itself and this is rarely asked).
    pub fn access(&self, ctx: Ctx, node: u64, mask: u32) -> FsResult<()> {
        let (attr, ro) = if node == abi::ROOT_ID {
            (self.root_attr(), true)
        } else {
            (self.getattr(node)?, self.inode(node)?.read_only)
        };
        let mask = mask & 0o7;
        if mask & libc::W_OK as u32 != 0 && ro {
            return Err(libc::EROFS);
        }
        let mode = attr.mode;
        if ctx.uid == 0 {
            let exec_ok = mode & 0o111 != 0 || mode & S_IFMT == S_IFDIR;
            if mask & libc::X_OK as u32 != 0 && !exec_ok {
                return Err(libc::EACCES);
            }
            return Ok(());
        }
        let bits = if ctx.uid == attr.uid {
            (mode >> 6) & 7
        } else if ctx.gid == attr.gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if mask & !bits != 0 {
            return Err(libc::EACCES);
        }
        Ok(())
    }

    fn xattr_target(&self, node: u64) -> FsResult<(XattrTarget, Option<OwnedFd>)> {
        let i = self.inode(node)?;
        let fd = self.fd(node)?;
        match i.kind {
            S_IFREG | S_IFDIR => {
                let f = sys::reopen(fd, libc::O_RDONLY | libc::O_NONBLOCK).map_err(errno)?;
                Ok((XattrTarget::Fd(f.as_raw_fd()), Some(f)))
            }
            // Other types cannot be opened; the magic link lands on the inode itself (a
            // symlink is not followed), so the path-based calls act on it.
            _ => Ok((XattrTarget::Path(sys::proc_path(fd)), None)),
        }
    }

    pub fn getxattr(&self, node: u64, name: &CStr, size: u32) -> FsResult<XattrReply> {
        if node == abi::ROOT_ID {
            return Err(libc::ENODATA);
        }
        let (t, _keep) = self.xattr_target(node)?;
        if size == 0 {
            let n = sys::getxattr(&t, name, &mut []).map_err(errno)?;
            return Ok(XattrReply::Size(n as u32));
        }
        let mut buf = vec![0u8; (size as usize).min(MAX_XATTR)];
        let n = sys::getxattr(&t, name, &mut buf).map_err(errno)?;
        buf.truncate(n);
        Ok(XattrReply::Data(buf))
    }

    pub fn listxattr(&self, node: u64, size: u32) -> FsResult<XattrReply> {
        if node == abi::ROOT_ID {
            return Ok(if size == 0 {
                XattrReply::Size(0)
            } else {
                XattrReply::Data(Vec::new())
            });
        }
        let (t, _keep) = self.xattr_target(node)?;
        if size == 0 {
            let n = sys::listxattr(&t, &mut []).map_err(errno)?;
            return Ok(XattrReply::Size(n as u32));
        }
        let mut buf = vec![0u8; (size as usize).min(MAX_XATTR)];
        let n = sys::listxattr(&t, &mut buf).map_err(errno)?;
        buf.truncate(n);
        Ok(XattrReply::Data(buf))
    }

    pub fn setxattr(&self, node: u64, name: &CStr, value: &[u8], flags: u32) -> FsResult<()> {
        if node == abi::ROOT_ID {
            return Err(libc::EPERM);
        }
        if self.inode(node)?.read_only {
            return Err(libc::EROFS);
        }
        let (t, _keep) = self.xattr_target(node)?;
        sys::setxattr(&t, name, value, flags).map_err(errno)
    }

    pub fn removexattr(&self, node: u64, name: &CStr) -> FsResult<()> {
        if node == abi::ROOT_ID {
            return Err(libc::EPERM);
        }
        if self.inode(node)?.read_only {
            return Err(libc::EROFS);
        }
        let (t, _keep) = self.xattr_target(node)?;
        sys::removexattr(&t, name).map_err(errno)
    }

    pub fn fallocate(&self, fh: u64, mode: u32, offset: u64, len: u64) -> FsResult<()> {
        let (f, h) = self.file(fh)?;
        if h.read_only {
            return Err(libc::EROFS);
        }
        sys::fallocate(f.as_fd(), mode, offset, len).map_err(errno)
    }

    pub fn lseek(&self, fh: u64, offset: u64, whence: u32) -> FsResult<u64> {
        let (f, _) = self.file(fh)?;
        match whence as libc::c_int {
            libc::SEEK_SET
            | libc::SEEK_CUR
            | libc::SEEK_END
            | libc::SEEK_DATA
            | libc::SEEK_HOLE => {}
            _ => return Err(libc::EINVAL),
        }
        sys::lseek(f.as_fd(), offset, whence).map_err(errno)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        node_out: u64,
        fh_out: u64,
        off_out: u64,
        len: usize,
    ) -> FsResult<usize> {
        let (fi, _) = self.file(fh_in)?;
        let (fo, ho) = self.file(fh_out)?;
        if ho.node != node_out {
            return Err(libc::EBADF);
        }
        if ho.read_only {
            return Err(libc::EROFS);
        }
        sys::copy_file_range(fi.as_fd(), off_in, fo.as_fd(), off_out, len).map_err(errno)
    }

    /// GETLK/SETLK/SETLKW of a BSD lock (`FUSE_LK_FLOCK`) as a host `flock` on the handle.
    /// Always non-blocking: SETLKW on a held lock answers `EWOULDBLOCK` instead of stalling
    /// the event loop. POSIX locks are not implemented (`ENOSYS`; not advertised).
    pub fn setlk(&self, fh: u64, typ: u32, flock_flag: bool) -> FsResult<()> {
        if !flock_flag {
            return Err(libc::ENOSYS);
        }
        let (f, _) = self.file(fh)?;
        let op = match typ as libc::c_int {
            libc::F_RDLCK => libc::LOCK_SH,
            libc::F_WRLCK => libc::LOCK_EX,
            libc::F_UNLCK => libc::LOCK_UN,
            _ => return Err(libc::EINVAL),
        };
        sys::flock(f.as_fd(), op | libc::LOCK_NB).map_err(errno)
    }

    /// Checks that `fh` is an open file for GETLK; the answer is always "unlocked".
    pub fn getlk(&self, fh: u64, flock_flag: bool) -> FsResult<()> {
        if !flock_flag {
            return Err(libc::ENOSYS);
        }
        self.file(fh).map(drop)
    }

    /// READDIR / READDIRPLUS of handle `fh` from `offset`, appending records to `out`
    /// until `max` bytes; with `plus`, each entry returned (but `.` and `..`) is a lookup.
    pub fn readdir(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        max: usize,
        plus: bool,
        out: &mut Vec<u8>,
    ) -> FsResult<()> {
        let h = self.handle(fh)?;
        if h.node != node {
            return Err(libc::EBADF);
        }
        match &h.data {
            HandleData::Root => self.readdir_root(offset, max, plus, out),
            HandleData::Dir(f) => {
                let dir = f.try_clone().map_err(errno)?;
                let mut cursor = self
                    .handles
                    .get_mut(&fh)
                    .map(|h| std::mem::take(&mut h.cursor))
                    .unwrap_or_default();
                let r = self.readdir_host(node, &dir, &mut cursor, offset, max, plus, out);
                if let Some(h) = self.handles.get_mut(&fh) {
                    h.cursor = cursor;
                }
                r
            }
            HandleData::File(_) => Err(libc::ENOTDIR),
            HandleData::Stale => Err(libc::ESTALE),
        }
    }

    fn readdir_root(
        &mut self,
        offset: u64,
        max: usize,
        plus: bool,
        out: &mut Vec<u8>,
    ) -> FsResult<()> {
        let mut names: Vec<(Vec<u8>, Option<u64>)> =
            vec![(b".".to_vec(), None), (b"..".to_vec(), None)];
        names.extend(
            self.shares
                .iter()
                .map(|(n, s)| (n.as_bytes().to_vec(), Some(s.node))),
        );
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (idx, (name, node)) in names.iter().enumerate().skip(start) {
            let fixed = if plus {
                std::mem::size_of::<EntryOut>() + std::mem::size_of::<abi::Dirent>()
            } else {
                std::mem::size_of::<abi::Dirent>()
            };
            if out.len() + abi::dirent_size(fixed, name.len()) > max {
                break;
            }
            let (entry, ino, typ) = match node {
                None => (EntryOut::default(), abi::ROOT_ID, libc::DT_DIR as u32),
                Some(n) => {
                    let st = sys::fstat(self.fd(*n)?).map_err(errno)?;
                    let typ = (st.st_mode & S_IFMT) >> 12;
                    (entry_of(*n, attr_of(&st)), st.st_ino, typ)
                }
            };
            if plus {
                if let Some(n) = node {
                    if let Some(i) = self.inodes.get_mut(n) {
                        i.lookups += 1;
                    }
                }
                out.extend_from_slice(vm_memory::ByteValued::as_slice(&entry));
            }
            push_dirent(out, ino, idx as u64 + 1, typ, name);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn readdir_host(
        &mut self,
        node: u64,
        dir: &File,
        cursor: &mut DirCursor,
        offset: u64,
        max: usize,
        plus: bool,
        out: &mut Vec<u8>,
    ) -> FsResult<()> {
        let (share, ro) = {
            let i = self.inode(node)?;
            (i.share, i.read_only)
        };
        if cursor.next_off != Some(offset) {
            // Not where the last READDIR left off (a first read, a rewind, a seekdir).
            cursor.next_off = None;
            cursor.pending.clear();
            sys::lseek(dir.as_fd(), offset, libc::SEEK_SET as u32).map_err(errno)?;
            cursor.next_off = Some(offset);
        }
        let mut buf = vec![0u8; 16 * 1024];
        let fixed = if plus {
            std::mem::size_of::<EntryOut>() + std::mem::size_of::<abi::Dirent>()
        } else {
            std::mem::size_of::<abi::Dirent>()
        };
        loop {
            if cursor.pending.is_empty() {
                let n = sys::getdents(dir.as_fd(), &mut buf).map_err(|e| {
                    cursor.next_off = None;
                    errno(e)
                })?;
                if n == 0 {
                    return Ok(());
                }
                cursor.pending.extend_from_slice(&buf[..n]);
            }
            let rec = &cursor.pending[..];
            if rec.len() < 19 {
                cursor.next_off = None;
                return Err(libc::EIO);
            }
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or_default());
            let off = u64::from_ne_bytes(rec[8..16].try_into().unwrap_or_default());
            let reclen = usize::from(u16::from_ne_bytes([rec[16], rec[17]]));
            let typ = u32::from(rec[18]);
            if reclen < 19 || reclen > rec.len() {
                cursor.next_off = None;
                return Err(libc::EIO);
            }
            let raw = &rec[19..reclen];
            let name = raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())].to_vec();
            if out.len() + abi::dirent_size(fixed, name.len()) > max {
                // Kept for the next READDIR, which continues from `next_off`.
                return Ok(());
            }
            cursor.pending.drain(..reclen);
            cursor.next_off = Some(off);
            if !plus {
                push_dirent(out, ino, off, typ, &name);
                continue;
            }
            let entry = if name == b"." || name == b".." {
                EntryOut::default()
            } else {
                let Ok(cname) = CString::new(name.clone()) else {
                    continue;
                };
                let fd = sys::openat(self.fd(node)?, &cname, libc::O_PATH | libc::O_NOFOLLOW, 0);
                let looked = fd.and_then(|fd| sys::fstat(fd.as_fd()).map(|st| (fd, st)));
                match looked {
                    Ok((fd, st)) => match self.register(share, ro, fd, &st) {
                        Ok(n) => entry_of(n, attr_of(&st)),
                        Err(e) => {
                            // Not given: the guest asks again from the previous offset.
                            cursor.next_off = None;
                            if out.is_empty() {
                                return Err(e);
                            }
                            return Ok(());
                        }
                    },
                    // Removed meanwhile: skip it.
                    Err(_) => continue,
                }
            };
            out.extend_from_slice(vm_memory::ByteValued::as_slice(&entry));
            push_dirent(out, ino, off, typ, &name);
        }
    }
}

impl Default for PassthroughFs {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends one `fuse_dirent` with its name, padded to 8 bytes.
fn push_dirent(out: &mut Vec<u8>, ino: u64, off: u64, typ: u32, name: &[u8]) {
    let d = abi::Dirent {
        ino,
        off,
        namelen: name.len() as u32,
        typ,
    };
    let start = out.len();
    out.extend_from_slice(vm_memory::ByteValued::as_slice(&d));
    out.extend_from_slice(name);
    let total = abi::dirent_size(std::mem::size_of::<abi::Dirent>(), name.len());
    out.resize(start + total, 0);
}
