//! virtio-fs: FUSE requests through the real device path — requests in device-readable
//! descriptors, reply buffers in device-writable ones, the queues served by `Fs`, a fresh
//! device over a fresh temporary share per input.
//!
//! An input is a program of up to 24 requests. Each picks a queue, an opcode (mostly a
//! known one), a node id (mostly one the server handed out earlier, learned from its
//! replies), a raw body with optional fix-ups (a known file handle or node id patched in,
//! WRITE's size made to match), uid/gid, how the request is split over readable
//! descriptors and how large and split the reply buffer is, and the chain layout.
//!
//! Invariants: a reply's header length equals the used length and fits the reply buffer,
//! its `unique` is the request's, its error is 0 or a negated errno; nothing is written past
//! the writable descriptors.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Once};

use devices::virtio::fs::Fs;
use devices::virtio::test_utils::{assert_untouched, fill, mem, r, w, GuestQueue, D};
use devices::virtio::{CountingInterrupt, VirtioDevice};
use fuzz::{Input, Target};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use crate::common::{self, Layout, QLEN};

const MEM: usize = 0x20_0000;
/// Request bytes (at most 64 KiB + header).
const REQ: u64 = 0x2_0000;
/// Reply buffers (at most 0x8_0000 bytes).
const RSP: u64 = 0x10_0000;
const GUARD: u8 = 0xee;

// FUSE opcodes (the kernel ABI; the device's `abi` module is private).
pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const GETLK: u32 = 31;
pub const SETLK: u32 = 32;
pub const SETLKW: u32 = 33;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const DESTROY: u32 = 38;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;

pub const OPS: &[u32] = &[
    LOOKUP,
    FORGET,
    GETATTR,
    SETATTR,
    READLINK,
    SYMLINK,
    MKNOD,
    MKDIR,
    UNLINK,
    RMDIR,
    RENAME,
    LINK,
    OPEN,
    READ,
    WRITE,
    STATFS,
    RELEASE,
    FSYNC,
    SETXATTR,
    GETXATTR,
    LISTXATTR,
    REMOVEXATTR,
    FLUSH,
    INIT,
    OPENDIR,
    READDIR,
    RELEASEDIR,
    FSYNCDIR,
    GETLK,
    SETLK,
    SETLKW,
    ACCESS,
    CREATE,
    INTERRUPT,
    DESTROY,
    BATCH_FORGET,
    FALLOCATE,
    READDIRPLUS,
    RENAME2,
    LSEEK,
    COPY_FILE_RANGE,
];

/// Reply buffer sizes worth trying (around the fixed reply sizes: header 16, entry 128,
/// attr 104, open 16, init 64, statfs 80).
const CAPS: &[u32] = &[
    0, 8, 15, 16, 17, 24, 31, 32, 80, 95, 96, 119, 120, 143, 144, 159, 160, 4096, 0x1_0000,
    0x2_0000,
];

pub const TARGET: Target = Target {
    name: "virtio_fs",
    max_len: 16 * 1024,
    dict: &[
        b"vol\0",
        b"f\0",
        b"d\0",
        b"l\0",
        b"esc\0",
        b"..\0",
        b".\0",
        b"/\0",
        b"user.a\0",
        b"trusted.overlay.opaque\0",
        b"security.capability\0",
        &[26, 0, 0, 0], // INIT
        &[7, 0, 0, 0, 38, 0, 0, 0],
        &[1, 0, 0, 0, 0, 0, 0, 0],
    ],
};

/// Builds the share a program runs on: a file, a directory with a file, a symlink to the
/// file and one pointing out of the share, a FIFO.
fn share(dir: &Path) {
    let _ = std::fs::write(dir.join("f"), b"hello, fuzz\n");
    let _ = std::fs::create_dir(dir.join("d"));
    let _ = std::fs::write(dir.join("d/g"), vec![7u8; 5000]);
    let _ = symlink("f", dir.join("l"));
    let _ = symlink("../../../../../../etc/passwd", dir.join("esc"));
    if let Ok(c) = std::ffi::CString::new(dir.join("p").as_os_str().as_encoded_bytes()) {
        // SAFETY: `c` is a valid NUL-terminated path; mkfifo only creates a file there.
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    }
}

/// Caps file sizes so that no request (FALLOCATE of a TiB, WRITE at a huge offset made
/// dense by COPY_FILE_RANGE) can fill the machine's disk: past 64 MiB writes fail `EFBIG`.
fn limit_file_size() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: ignoring SIGXFSZ only changes that signal's disposition, so that exceeding
        // RLIMIT_FSIZE fails the call with EFBIG instead of killing the process.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let lim = libc::rlimit {
            rlim_cur: 64 << 20,
            rlim_max: 64 << 20,
        };
        // SAFETY: `lim` is a valid rlimit that outlives the call.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) };
    });
}

fn put_u64(body: &mut [u8], at: usize, v: u64) {
    if let Some(s) = body.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

/// One decoded request with its buffers.
struct Req {
    queue: usize,
    bytes: Vec<u8>,
    opcode: u32,
    unique: u64,
    descs: Vec<D>,
    layout: Layout,
    /// The writable buffers lie one after another from RSP, apart from everything else.
    clean: bool,
    cap: u32,
}

fn decode(inp: &mut Input, nodes: &[u64], fhs: &[u64], unique: u64) -> Req {
    let tag = inp.u8();
    let queue = usize::from(tag & 1 == 1 && tag & 2 == 2);
    let opcode = if tag & 0x80 != 0 {
        inp.u32()
    } else {
        inp.pick(OPS)
    };
    let sel = inp.u8();
    let nodeid = if sel < 0xf0 {
        nodes[usize::from(sel) % nodes.len()]
    } else {
        inp.u64()
    };
    let body_len = usize::from(inp.u16()) % 8192;
    let mut body = inp.bytes(body_len).to_vec();
    let fix = inp.u8();
    let pick_fh = |k: u8| {
        fhs.get(usize::from(k) % fhs.len().max(1))
            .copied()
            .unwrap_or(0)
    };
    let pick_node = |k: u8| nodes[usize::from(k) % nodes.len()];
    if fix & 1 != 0 {
        put_u64(&mut body, 0, pick_fh(fix >> 4));
    }
    if fix & 2 != 0 {
        put_u64(&mut body, 0, pick_node(fix >> 4));
    }
    if fix & 4 != 0 && opcode == COPY_FILE_RANGE {
        put_u64(&mut body, 16, pick_node(fix >> 5));
        put_u64(&mut body, 24, pick_fh(fix >> 6));
    }
    if fix & 8 != 0 && opcode == WRITE && body.len() >= 40 {
        let n = (body.len() - 40) as u32;
        body[16..20].copy_from_slice(&n.to_le_bytes());
    }
    let ids = inp.u8();
    let uid = match ids % 4 {
        0 => 0,
        1 => inp.u32(),
        _ => 1000,
    };
    let gid = if ids & 4 != 0 { inp.u32() } else { uid };
    let total = 40 + body.len();
    let hdr_len = if ids & 0x80 != 0 {
        inp.u32()
    } else {
        total as u32
    };
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&hdr_len.to_le_bytes());
    bytes.extend_from_slice(&opcode.to_le_bytes());
    bytes.extend_from_slice(&unique.to_le_bytes());
    bytes.extend_from_slice(&nodeid.to_le_bytes());
    bytes.extend_from_slice(&uid.to_le_bytes());
    bytes.extend_from_slice(&gid.to_le_bytes());
    bytes.extend_from_slice(&42u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&body);

    // Readable side: the request split into 1..=3 consecutive pieces, or a bad buffer.
    let shape = inp.u8();
    let mut descs = Vec::new();
    let mut clean = true;
    let pieces = 1 + usize::from(shape % 3);
    let mut off = 0usize;
    for i in 0..pieces {
        let end = if i + 1 == pieces {
            bytes.len()
        } else {
            (off + inp.below(bytes.len() - off + 1)).min(bytes.len())
        };
        descs.push(r(REQ + off as u64, (end - off) as u32));
        off = end;
    }
    if shape & 0x08 != 0 {
        // Guest-chosen buffer anywhere: outside memory, or over the reply buffers.
        let a = common::addr(inp, MEM as u64);
        let l = common::len(inp);
        let write = inp.bool();
        let at = inp.below(descs.len() + 1);
        descs.insert(
            at,
            D {
                addr: a,
                len: l,
                write,
            },
        );
        clean = false;
    }
    // Writable side: the reply buffer split into 0..=3 pieces.
    let cap = if shape & 0x10 != 0 {
        u32::from(inp.u16())
    } else {
        inp.pick(CAPS)
    };
    let wpieces = if cap == 0 {
        0
    } else {
        1 + (usize::from(shape >> 5) % 3)
    };
    let mut woff = 0u32;
    for i in 0..wpieces {
        let end = if i + 1 == wpieces {
            cap
        } else {
            woff + (inp.below((cap - woff) as usize + 1) as u32)
        };
        if end > woff {
            descs.push(w(RSP + u64::from(woff), end - woff));
        }
        woff = end;
    }
    let layout = Layout::from(inp);
    Req {
        queue,
        bytes,
        opcode,
        unique,
        descs,
        layout,
        clean,
        cap,
    }
}

/// `EMBER_FUZZ_TRACE=1` prints each reply (to check what a seed does).
fn trace() -> bool {
    std::env::var_os("EMBER_FUZZ_TRACE").is_some()
}

/// Reads back what the device wrote into the writable buffers, in order.
fn reply(m: &devices::virtio::GuestMem, descs: &[D], used: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for d in descs.iter().filter(|d| d.write) {
        let left = used as usize - out.len();
        if left == 0 {
            break;
        }
        let n = left.min(d.len as usize);
        let mut b = vec![0u8; n];
        m.read_slice(&mut b, GuestAddress(d.addr)).unwrap();
        out.extend_from_slice(&b);
    }
    out
}

pub fn one(data: &[u8]) {
    limit_file_size();
    let mut inp = Input::new(data);
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("ember-fuzz-fs-")).unwrap();
    share(dir.as_path());
    let m = mem(MEM);
    let mut queues = [
        GuestQueue::new(&m, 0, QLEN),
        GuestQueue::new(&m, 0x4000, QLEN),
    ];
    let mut fs = Fs::new("ember").unwrap();
    fs.add_share("vol", dir.as_path(), inp.one_in(8)).unwrap();
    let irq = Arc::new(CountingInterrupt::new());
    fs.activate(m.clone(), vec![queues[0].queue(), queues[1].queue()], irq)
        .unwrap();

    let mut nodes = vec![1u64];
    let mut fhs: Vec<u64> = Vec::new();
    let mut unique = 0u64;
    for _ in 0..24 {
        if inp.is_empty() {
            break;
        }
        unique += 1;
        let req = decode(&mut inp, &nodes, &fhs, unique);
        m.write_slice(&req.bytes, GuestAddress(REQ)).unwrap();
        fill(&m, RSP, req.cap as usize + 64, GUARD);
        let q = &mut queues[req.queue];
        common::publish(q, &req.descs, req.layout);
        assert!(fs.process_queue(req.queue) <= 1);
        let bound = common::writable_total(&req.descs);
        let used = common::check_used(q, bound, "virtio-fs");
        let Some(&(_, used)) = used.first() else {
            continue;
        };
        if !req.layout.well_formed() {
            assert_eq!(used, 0, "virtio-fs: a looped chain was served");
            continue;
        }
        if !req.clean || used == 0 {
            continue;
        }
        assert_untouched(&m, RSP + u64::from(req.cap), 64, GUARD);
        assert!(
            used >= 16,
            "virtio-fs: {used}-byte reply has no full header"
        );
        let raw = reply(&m, &req.descs, used);
        let len = u32::from_le_bytes(raw[0..4].try_into().unwrap());
        let error = i32::from_le_bytes(raw[4..8].try_into().unwrap());
        let uniq = u64_at(&raw, 8).unwrap();
        assert_eq!(
            len, used,
            "virtio-fs: reply header length and used length differ"
        );
        assert!(used <= req.cap, "virtio-fs: reply longer than its buffer");
        assert_eq!(uniq, req.unique, "virtio-fs: reply for another request");
        assert!(
            (-4095..=0).contains(&error),
            "virtio-fs: error {error} is not a negated errno"
        );
        if error != 0 {
            if trace() {
                eprintln!("virtio-fs: opcode {}: errno {}", req.opcode, -error);
            }
            assert_eq!(used, 16, "virtio-fs: error reply with a body");
            continue;
        }
        let body = &raw[16..];
        if trace() {
            eprintln!(
                "virtio-fs: opcode {} node {:?}: {used}-byte reply",
                req.opcode, nodes
            );
        }
        match req.opcode {
            LOOKUP | MKNOD | MKDIR | SYMLINK | LINK | CREATE => {
                if let Some(n) = u64_at(body, 0) {
                    nodes.push(n);
                }
                if req.opcode == CREATE {
                    if let Some(fh) = u64_at(body, 128) {
                        fhs.push(fh);
                    }
                }
            }
            OPEN | OPENDIR => {
                if let Some(fh) = u64_at(body, 0) {
                    fhs.push(fh);
                }
            }
            _ => {}
        }
    }
    drop(fs);
    drop(dir);
}

/// The requests of a well-formed session, for the seed corpus: each is
/// (tag, opcode, node selector, body, fix) with a plain layout and a 4 KiB reply buffer.
pub fn seed(program: &[(u32, u8, Vec<u8>, u8)]) -> Vec<u8> {
    let mut v = vec![1u8]; // read-write share
    for (opcode, node, body, fix) in program {
        let idx = OPS.iter().position(|o| o == opcode).unwrap() as u8;
        v.push(if matches!(*opcode, FORGET | BATCH_FORGET) {
            3
        } else {
            0
        });
        v.push(idx);
        v.push(*node);
        v.extend_from_slice(&(body.len() as u16).to_le_bytes());
        v.extend_from_slice(body);
        v.push(*fix);
        v.push(2); // uid/gid 1000
        v.push(0); // one readable piece, a clean reply buffer of CAPS[k]
        v.push(CAPS.iter().position(|c| *c == 4096).unwrap() as u8);
        v.push(0); // direct layout
    }
    v
}

#[test]
fn fuzz_virtio_fs() {
    fuzz::run(&TARGET, one);
}
