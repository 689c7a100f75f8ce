//! The FUSE server: turns one descriptor chain into a request, runs it on the
//! [`PassthroughFs`] and writes the reply.
//!
//! A virtio-fs chain is the request (`fuse_in_header` + arguments) in device-readable
//! descriptors followed by device-writable ones for the reply (`fuse_out_header` + body).
//! The request is gathered into a bounded buffer ([`MAX_REQUEST`]); anything malformed is
//! answered with an error reply when the reply buffer can hold one (and logged), never
//! acted upon.

use std::ffi::CStr;
use std::mem::size_of;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::abi::{self, *};
use super::passthrough::{Ctx, Errno, FsResult, PassthroughFs, XattrReply, MAX_XATTR};
use crate::virtio::{ChainError, GuestMem};

/// Largest WRITE payload (and READ size) announced in INIT.
pub const MAX_WRITE: u32 = 1024 * 1024;
/// Most bytes of a request: header and WRITE arguments plus `MAX_WRITE`, with room for the
/// largest other request (SETXATTR: a name and a 64 KiB value).
pub const MAX_REQUEST: usize = MAX_WRITE as usize + 128 * 1024;
/// Largest range one COPY_FILE_RANGE copies (the guest loops over short copies).
pub const MAX_COPY: usize = 8 * MAX_WRITE as usize;
/// `max_background` announced in INIT.
const MAX_BACKGROUND: u16 = 64;

const IN_HEADER: usize = size_of::<InHeader>();
const OUT_HEADER: usize = size_of::<OutHeader>();

/// INIT flags this server asks for (those the guest offers).
const WANTED_FLAGS: u32 =
    ASYNC_READ | ATOMIC_O_TRUNC | BIG_WRITES | DO_READDIRPLUS | READDIRPLUS_AUTO | MAX_PAGES;

/// What a request produced.
enum Outcome {
    /// FORGET, BATCH_FORGET, INTERRUPT: nothing goes back.
    NoReply,
    /// Success; the body is in the reply buffer.
    Reply,
    Error(Errno),
}

/// The FUSE server state: the filesystem plus reusable request/reply buffers.
pub struct Server {
    pub fs: PassthroughFs,
    initialized: bool,
    req: Vec<u8>,
    reply: Vec<u8>,
}

/// The arguments of a request, consumed front to back.
struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    fn obj<T: ByteValued + Default>(&mut self) -> FsResult<T> {
        let n = size_of::<T>();
        if self.0.len() < n {
            return Err(libc::EINVAL);
        }
        let mut v = T::default();
        v.as_mut_slice().copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(v)
    }

    /// A NUL-terminated string; `EINVAL` when the NUL is missing.
    fn cstr(&mut self) -> FsResult<&'a CStr> {
        let s = CStr::from_bytes_until_nul(self.0).map_err(|_| libc::EINVAL)?;
        self.0 = &self.0[s.to_bytes().len() + 1..];
        Ok(s)
    }

    fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// Bytes of a fixed-size reply body, checked before the request runs so that nothing is
/// done whose answer cannot be delivered; 0 for variable-size bodies (bounded by the buffer
/// as they are produced).
fn fixed_reply_size(opcode: u32) -> usize {
    match opcode {
        LOOKUP | MKNOD | MKDIR | SYMLINK | LINK => size_of::<EntryOut>(),
        CREATE => size_of::<EntryOut>() + size_of::<OpenOut>(),
        GETATTR | SETATTR => size_of::<AttrOut>(),
        OPEN | OPENDIR => size_of::<OpenOut>(),
        WRITE | COPY_FILE_RANGE => size_of::<WriteOut>(),
        STATFS => size_of::<Kstatfs>(),
        INIT => size_of::<InitOut>(),
        GETLK => size_of::<LkOut>(),
        LSEEK => size_of::<LseekOut>(),
        _ => 0,
    }
}

fn attr_out(attr: Attr) -> AttrOut {
    AttrOut {
        attr_valid: super::passthrough::ATTR_TIMEOUT_SECS,
        attr_valid_nsec: 0,
        dummy: 0,
        attr,
    }
}

impl Server {
    pub fn new() -> Self {
        Server {
            fs: PassthroughFs::new(),
            initialized: false,
            req: Vec::new(),
            reply: Vec::new(),
        }
    }

    /// Whether the guest has done INIT and no DESTROY (a FUSE session is open).
    pub fn initialized(&self) -> bool {
        self.initialized
    }

    /// Device reset: the next driver starts with INIT and holds nothing.
    pub fn reset(&mut self) {
        self.fs.reset_guest_state();
        self.initialized = false;
    }

    /// Serves one chain; returns the bytes written into its device-writable buffers.
    pub fn handle_chain(
        &mut self,
        mem: &GuestMem,
        descs: Result<Vec<Descriptor>, ChainError>,
    ) -> u32 {
        let Ok(descs) = descs else {
            return 0;
        };
        let split = descs
            .iter()
            .position(|d| d.is_write_only())
            .unwrap_or(descs.len());
        let (readable, writable) = descs.split_at(split);
        if writable.iter().any(|d| !d.is_write_only()) {
            log::warn!("virtio-fs: device-readable descriptor after a device-writable one");
            return 0;
        }
        let cap: usize = writable.iter().map(|d| d.len() as usize).sum();
        let total: usize = readable.iter().map(|d| d.len() as usize).sum();

        if total < IN_HEADER {
            log::warn!("virtio-fs: request of {total} bytes is shorter than its header");
            return self.send_error(mem, writable, cap, 0, libc::EINVAL);
        }
        // Bounded: past MAX_REQUEST only the header is read, for the error reply.
        let take = total.min(MAX_REQUEST);
        self.req.resize(take, 0);
        if gather(mem, readable, &mut self.req).is_err() {
            log::warn!("virtio-fs: cannot read the request from guest memory");
            return 0;
        }
        let mut hdr = InHeader::default();
        hdr.as_mut_slice().copy_from_slice(&self.req[..IN_HEADER]);
        if total > MAX_REQUEST {
            log::warn!("virtio-fs: request of {total} bytes exceeds {MAX_REQUEST}");
            return self.send_error(mem, writable, cap, hdr.unique, libc::EINVAL);
        }
        if hdr.len as usize != total {
            log::warn!(
                "virtio-fs: request header says {} bytes, the chain holds {total}",
                hdr.len
            );
            return self.send_error(mem, writable, cap, hdr.unique, libc::EINVAL);
        }
        let no_reply = matches!(hdr.opcode, FORGET | BATCH_FORGET | INTERRUPT);
        if !no_reply && cap < OUT_HEADER + fixed_reply_size(hdr.opcode) {
            log::warn!(
                "virtio-fs: reply buffer of {cap} bytes too small for opcode {}",
                hdr.opcode
            );
            return self.send_error(mem, writable, cap, hdr.unique, libc::EINVAL);
        }

        self.reply.clear();
        let body_cap = cap.saturating_sub(OUT_HEADER);
        let req = std::mem::take(&mut self.req);
        let outcome = match self.dispatch(&hdr, Args(&req[IN_HEADER..]), body_cap) {
            Ok(o) => o,
            Err(e) => Outcome::Error(e),
        };
        self.req = req;
        match outcome {
            Outcome::NoReply => 0,
            Outcome::Error(e) => self.send_error(mem, writable, cap, hdr.unique, e),
            Outcome::Reply if self.reply.len() > body_cap => {
                log::warn!(
                    "virtio-fs: reply of {} bytes does not fit the {cap}-byte buffer",
                    self.reply.len() + OUT_HEADER
                );
                self.send_error(mem, writable, cap, hdr.unique, libc::EINVAL)
            }
            Outcome::Reply => {
                let out = OutHeader {
                    len: (OUT_HEADER + self.reply.len()) as u32,
                    error: 0,
                    unique: hdr.unique,
                };
                scatter(mem, writable, out.as_slice(), &self.reply)
            }
        }
    }

    /// Writes an error reply when the buffer holds a header; otherwise logs and drops it.
    fn send_error(
        &self,
        mem: &GuestMem,
        writable: &[Descriptor],
        cap: usize,
        unique: u64,
        e: Errno,
    ) -> u32 {
        if cap < OUT_HEADER {
            log::warn!("virtio-fs: no room for a reply header, request dropped");
            return 0;
        }
        let out = OutHeader {
            len: OUT_HEADER as u32,
            error: -e,
            unique,
        };
        scatter(mem, writable, out.as_slice(), &[])
    }

    fn body<T: ByteValued>(&mut self, v: &T) -> Outcome {
        self.reply.extend_from_slice(v.as_slice());
        Outcome::Reply
    }

    fn dispatch(&mut self, h: &InHeader, mut a: Args<'_>, cap: usize) -> FsResult<Outcome> {
        if h.opcode == INIT {
            return self.init(a.obj()?);
        }
        if !self.initialized {
            log::warn!("virtio-fs: opcode {} before INIT", h.opcode);
            return Err(libc::EIO);
        }
        let ctx = Ctx {
            uid: h.uid,
            gid: h.gid,
        };
        let node = h.nodeid;
        let fs = &mut self.fs;
        let o = match h.opcode {
            DESTROY => {
                self.reset();
                Outcome::Reply
            }
            FORGET => {
                let f: ForgetIn = a.obj()?;
                fs.forget(node, f.nlookup);
                Outcome::NoReply
            }
            BATCH_FORGET => {
                let b: BatchForgetIn = a.obj()?;
                let have = a.rest().len() / size_of::<ForgetOne>();
                if b.count as usize > have {
                    log::warn!(
                        "virtio-fs: BATCH_FORGET of {} entries carries {have}",
                        b.count
                    );
                }
                for _ in 0..(b.count as usize).min(have) {
                    let f: ForgetOne = a.obj()?;
                    fs.forget(f.nodeid, f.nlookup);
                }
                Outcome::NoReply
            }
            INTERRUPT => Outcome::NoReply,
            LOOKUP => {
                let e = fs.lookup(node, a.cstr()?)?;
                self.body(&e)
            }
            GETATTR => {
                let _: GetattrIn = a.obj()?;
                let attr = fs.getattr(node)?;
                self.body(&attr_out(attr))
            }
            SETATTR => {
                let s: SetattrIn = a.obj()?;
                let attr = fs.setattr(node, &s)?;
                self.body(&attr_out(attr))
            }
            READLINK => {
                let t = fs.readlink(node)?;
                self.reply.extend_from_slice(&t);
                Outcome::Reply
            }
            SYMLINK => {
                let name = a.cstr()?;
                let target = a.cstr()?;
                let e = fs.symlink(ctx, node, name, target)?;
                self.body(&e)
            }
            MKNOD => {
                let m: MknodIn = a.obj()?;
                let e = fs.mknod(ctx, node, a.cstr()?, m.mode, m.rdev)?;
                self.body(&e)
            }
            MKDIR => {
                let m: MkdirIn = a.obj()?;
                let e = fs.mkdir(ctx, node, a.cstr()?, m.mode)?;
                self.body(&e)
            }
            UNLINK => {
                fs.unlink(node, a.cstr()?, false)?;
                Outcome::Reply
            }
            RMDIR => {
                fs.unlink(node, a.cstr()?, true)?;
                Outcome::Reply
            }
            RENAME => {
                let r: RenameIn = a.obj()?;
                let (old, new) = (a.cstr()?, a.cstr()?);
                fs.rename(node, old, r.newdir, new, 0)?;
                Outcome::Reply
            }
            RENAME2 => {
                let r: Rename2In = a.obj()?;
                let (old, new) = (a.cstr()?, a.cstr()?);
                fs.rename(node, old, r.newdir, new, r.flags)?;
                Outcome::Reply
            }
            LINK => {
                let l: LinkIn = a.obj()?;
                let e = fs.link(l.oldnodeid, node, a.cstr()?)?;
                self.body(&e)
            }
            OPEN => {
                let o: OpenIn = a.obj()?;
                let fh = fs.open(node, o.flags)?;
                self.body(&OpenOut {
                    fh,
                    ..Default::default()
                })
            }
            OPENDIR => {
                let _: OpenIn = a.obj()?;
                let fh = fs.opendir(node)?;
                self.body(&OpenOut {
                    fh,
                    ..Default::default()
                })
            }
            CREATE => {
                let c: CreateIn = a.obj()?;
                let (e, fh) = fs.create(ctx, node, a.cstr()?, c.flags, c.mode)?;
                self.reply.extend_from_slice(e.as_slice());
                self.body(&OpenOut {
                    fh,
                    ..Default::default()
                })
            }
            READ => {
                let r: ReadIn = a.obj()?;
                let size = (r.size as usize).min(MAX_WRITE as usize).min(cap);
                fs.read(r.fh, r.offset, size, &mut self.reply)?;
                Outcome::Reply
            }
            WRITE => {
                let w: WriteIn = a.obj()?;
                let data = a.rest();
                if data.len() != w.size as usize {
                    log::warn!(
                        "virtio-fs: WRITE of {} bytes carries {}",
                        w.size,
                        data.len()
                    );
                    return Err(libc::EINVAL);
                }
                let n = fs.write(w.fh, w.offset, data)?;
                self.body(&WriteOut {
                    size: n,
                    padding: 0,
                })
            }
            STATFS => {
                let s = fs.statfs(node)?;
                self.body(&s)
            }
            RELEASE | RELEASEDIR => {
                let r: ReleaseIn = a.obj()?;
                fs.release(r.fh, h.opcode == RELEASEDIR)?;
                Outcome::Reply
            }
            FSYNC | FSYNCDIR => {
                let f: FsyncIn = a.obj()?;
                let datasync = f.fsync_flags & FSYNC_FDATASYNC != 0;
                fs.fsync(f.fh, datasync, h.opcode == FSYNCDIR)?;
                Outcome::Reply
            }
            FLUSH => {
                let f: FlushIn = a.obj()?;
                fs.flush(f.fh)?;
                Outcome::Reply
            }
            SETXATTR => {
                let s: SetxattrIn = a.obj()?;
                let name = xattr_name(a.cstr()?)?;
                let value = a.rest();
                if value.len() != s.size as usize || value.len() > MAX_XATTR {
                    return Err(libc::EINVAL);
                }
                fs.setxattr(node, name, value, s.flags)?;
                Outcome::Reply
            }
            GETXATTR => {
                let g: GetxattrIn = a.obj()?;
                let name = xattr_name(a.cstr()?)?;
                let r = fs.getxattr(node, name, g.size)?;
                self.xattr_reply(r)
            }
            LISTXATTR => {
                let g: GetxattrIn = a.obj()?;
                let r = fs.listxattr(node, g.size)?;
                self.xattr_reply(r)
            }
            REMOVEXATTR => {
                let name = xattr_name(a.cstr()?)?;
                fs.removexattr(node, name)?;
                Outcome::Reply
            }
            READDIR | READDIRPLUS => {
                let r: ReadIn = a.obj()?;
                let max = (r.size as usize).min(MAX_WRITE as usize).min(cap);
                let plus = h.opcode == READDIRPLUS;
                fs.readdir(node, r.fh, r.offset, max, plus, &mut self.reply)?;
                Outcome::Reply
            }
            ACCESS => {
                let x: AccessIn = a.obj()?;
                fs.access(ctx, node, x.mask)?;
                Outcome::Reply
            }
            FALLOCATE => {
                let f: FallocateIn = a.obj()?;
                fs.fallocate(f.fh, f.mode, f.offset, f.length)?;
                Outcome::Reply
            }
            LSEEK => {
                let l: LseekIn = a.obj()?;
                let offset = fs.lseek(l.fh, l.offset, l.whence)?;
                self.body(&LseekOut { offset })
            }
            COPY_FILE_RANGE => {
                let c: CopyFileRangeIn = a.obj()?;
                let len = usize::try_from(c.len).unwrap_or(MAX_COPY).min(MAX_COPY);
                let n =
                    fs.copy_file_range(c.fh_in, c.off_in, c.nodeid_out, c.fh_out, c.off_out, len)?;
                self.body(&WriteOut {
                    size: n as u32,
                    padding: 0,
                })
            }
            GETLK => {
                let l: LkIn = a.obj()?;
                fs.getlk(l.fh, l.lk_flags & LK_FLOCK != 0)?;
                self.body(&LkOut {
                    lk: FileLock {
                        typ: libc::F_UNLCK as u32,
                        ..l.lk
                    },
                })
            }
            SETLK | SETLKW => {
                let l: LkIn = a.obj()?;
                fs.setlk(l.fh, l.lk.typ, l.lk_flags & LK_FLOCK != 0)?;
                Outcome::Reply
            }
            op => {
                log::debug!("virtio-fs: unsupported opcode {op}");
                Outcome::Error(libc::ENOSYS)
            }
        };
        Ok(o)
    }

    fn init(&mut self, i: InitIn) -> FsResult<Outcome> {
        if i.major != abi::KERNEL_VERSION || i.minor < abi::MIN_KERNEL_MINOR_VERSION {
            log::warn!(
                "virtio-fs: unsupported FUSE protocol {}.{} (need 7.{}+)",
                i.major,
                i.minor,
                abi::MIN_KERNEL_MINOR_VERSION
            );
            return Err(libc::EPROTO);
        }
        self.initialized = true;
        let out = InitOut {
            major: abi::KERNEL_VERSION,
            minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
            max_readahead: i.max_readahead,
            flags: i.flags & WANTED_FLAGS,
            max_background: MAX_BACKGROUND,
            congestion_threshold: MAX_BACKGROUND * 3 / 4,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: (MAX_WRITE / 4096) as u16,
            map_alignment: 0,
            flags2: 0,
            unused: [0; 7],
        };
        Ok(self.body(&out))
    }

    fn xattr_reply(&mut self, r: XattrReply) -> Outcome {
        match r {
            XattrReply::Size(size) => self.body(&GetxattrOut { size, padding: 0 }),
            XattrReply::Data(d) => {
                self.reply.extend_from_slice(&d);
                Outcome::Reply
            }
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

/// An xattr name: at most 255 bytes (`XATTR_NAME_MAX`), not empty.
fn xattr_name(name: &CStr) -> FsResult<&CStr> {
    match name.to_bytes().len() {
        0 => Err(libc::EINVAL),
        n if n > 255 => Err(libc::ERANGE),
        _ => Ok(name),
    }
}

/// Copies the readable descriptors into `buf` (whose length bounds what is read).
fn gather(mem: &GuestMem, descs: &[Descriptor], buf: &mut [u8]) -> Result<(), ()> {
    let mut off = 0;
    for d in descs {
        if off == buf.len() {
            break;
        }
        let n = (d.len() as usize).min(buf.len() - off);
        mem.read_slice(&mut buf[off..off + n], d.addr())
            .map_err(drop)?;
        off += n;
    }
    Ok(())
}

/// Writes `head` then `body` across the writable descriptors; returns the bytes written.
/// The caller made sure they fit.
fn scatter(mem: &GuestMem, descs: &[Descriptor], head: &[u8], body: &[u8]) -> u32 {
    let mut written = 0usize;
    let mut src = [head, body].into_iter().filter(|s| !s.is_empty());
    let mut cur: &[u8] = src.next().unwrap_or(&[]);
    for d in descs {
        let mut pos = 0usize;
        while pos < d.len() as usize && !cur.is_empty() {
            let n = cur.len().min(d.len() as usize - pos);
            let addr = GuestAddress(d.addr().0 + pos as u64);
            if let Err(e) = mem.write_slice(&cur[..n], addr) {
                log::warn!("virtio-fs: cannot write the reply to guest memory: {e}");
                return written as u32;
            }
            pos += n;
            written += n;
            cur = &cur[n..];
            if cur.is_empty() {
                cur = src.next().unwrap_or(&[]);
            }
        }
    }
    written as u32
}
