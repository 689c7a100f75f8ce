//! virtio-blk: request chains over an in-memory disk. An input is up to 16 steps: a request
//! (type, sector, header/data/status buffers with fuzzed lengths and directions, a chain
//! layout) or raw descriptors with fuzzed flags and next indices.
//!
//! A quarter of the inputs run the device behind a rate limiter of a few requests and bytes
//! per millisecond: requests wait on the ring and are served when its timer fires.
//!
//! Invariants: the disk backend is never asked for bytes past its end (the device checks
//! bounds itself); a used length never exceeds the chain's writable bytes (with a limiter, the
//! largest chain's: a waiting one is served later); a looped chain is never served.

use std::io;
use std::sync::Arc;

use devices::rate_limiter::RateLimiter;
use devices::virtio::block::{Block, DiskBackend, ID_BYTES};
use devices::virtio::test_utils::{mem, r, w, GuestQueue, D};
use devices::virtio::{CountingInterrupt, VirtioDevice};
use fuzz::{Input, Target};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use crate::common::{self, Layout, QLEN};

const MEM: usize = 0x10_0000;
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_0100;
const DISK: usize = 64 * 1024;

pub const TARGET: Target = Target {
    name: "virtio_block",
    max_len: 4096,
    dict: &[&[0, 0, 0, 0], &[1, 0, 0, 0], &[4, 0, 0, 0], &[8, 0, 0, 0]],
};

/// A disk in memory that insists on in-bounds access.
struct MemDisk(Vec<u8>);

impl DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let o = offset as usize;
        assert!(
            o + buf.len() <= self.0.len(),
            "virtio-blk: read past the disk"
        );
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let o = offset as usize;
        assert!(
            o + buf.len() <= self.0.len(),
            "virtio-blk: write past the disk"
        );
        self.0[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn id(&self) -> [u8; ID_BYTES] {
        *b"ember-fuzz-disk\0\0\0\0\0"
    }
}

pub fn one(data: &[u8]) {
    let mut inp = Input::new(data);
    let m = mem(MEM);
    let mut q = GuestQueue::new(&m, 0, QLEN);
    let read_only = inp.one_in(4);
    let disk = MemDisk((0..DISK).map(|i| (i % 251) as u8).collect());
    let mut b = Block::new(Box::new(disk), read_only).unwrap();
    let limited = inp.one_in(4);
    if limited {
        let bucket = |size: u64| devices::rate_limiter::BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 1,
        };
        let limit = devices::rate_limiter::RateLimit {
            ops: Some(bucket(1 + inp.below(3) as u64)),
            bandwidth: inp.bool().then(|| bucket(4096 + u64::from(inp.u16()))),
        };
        b.set_rate_limiter(RateLimiter::new(&limit).unwrap().unwrap());
    }
    // With a limiter, a chain may be served steps after it was posted.
    let mut bound = 0u64;
    b.activate(
        m.clone(),
        vec![q.queue()],
        Arc::new(CountingInterrupt::new()),
    )
    .unwrap();
    for _ in 0..16 {
        if inp.is_empty() {
            break;
        }
        let step = inp.u8();
        if step % 8 == 7 {
            let raw = common::publish_raw(&m, &mut q, &mut inp, MEM as u64);
            bound = if limited { bound.max(raw) } else { raw };
            b.process_queue();
            common::check_used(&mut q, bound, "virtio-blk raw");
            timer_due(&mut b, 0);
            continue;
        }
        let ty = match inp.u8() % 8 {
            0 | 1 => VIRTIO_BLK_T_IN,
            2 | 3 => VIRTIO_BLK_T_OUT,
            4 => VIRTIO_BLK_T_FLUSH,
            5 => VIRTIO_BLK_T_GET_ID,
            _ => inp.u32(),
        };
        let sector = if inp.one_in(8) {
            inp.u64()
        } else {
            u64::from(inp.u8() % 140)
        };
        let _ = m.write_obj(ty, GuestAddress(HDR));
        let _ = m.write_obj(0u32, GuestAddress(HDR + 4));
        let _ = m.write_obj(sector, GuestAddress(HDR + 8));
        let mut descs: Vec<D> = Vec::new();
        let hdr_len = if step & 0x10 != 0 {
            common::len(&mut inp)
        } else {
            16
        };
        descs.push(D {
            addr: if step & 0x20 != 0 {
                common::addr(&mut inp, MEM as u64)
            } else {
                HDR
            },
            len: hdr_len,
            write: step & 0x40 != 0,
        });
        let n = inp.below(5);
        for _ in 0..n {
            let a = common::addr(&mut inp, MEM as u64);
            let l = common::len(&mut inp);
            let write = match inp.u8() % 4 {
                0 => ty == VIRTIO_BLK_T_OUT,
                _ => ty != VIRTIO_BLK_T_OUT,
            };
            descs.push(D {
                addr: a,
                len: l,
                write,
            });
        }
        if step & 0x80 == 0 {
            descs.push(w(STATUS, 1));
        } else if inp.bool() {
            descs.push(r(STATUS, common::len(&mut inp)));
        }
        let layout = Layout::from(&mut inp);
        common::publish(&mut q, &descs, layout);
        let writable = common::writable_total(&descs);
        bound = if limited {
            bound.max(writable)
        } else {
            writable
        };
        assert!(b.process_queue() <= 1);
        let used = common::check_used(&mut q, bound, "virtio-blk");
        if !layout.well_formed() && !limited {
            assert!(
                used.iter().all(|&(_, l)| l == 0),
                "virtio-blk: looped chain served"
            );
        }
        timer_due(&mut b, 0);
    }
    // What waited is served once the limiter's timer fires.
    if limited && timer_due(&mut b, 2) {
        common::check_used(&mut q, bound, "virtio-blk after the limiter's timer");
    }
}

/// Whether the limiter's timer fired within `ms`; then the device serves what waited (as its
/// event loop would).
fn timer_due(b: &mut Block, ms: i32) -> bool {
    let Some(fd) = b.rate_timer_fd() else {
        return false;
    };
    let mut p = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(p.as_mut_ptr(), 1, ms) } == 1 {
        b.on_rate_timer();
        return true;
    }
    false
}

#[test]
fn fuzz_virtio_block() {
    fuzz::run(&TARGET, one);
}
