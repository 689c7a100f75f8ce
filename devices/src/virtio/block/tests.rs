use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::{CountingInterrupt, GuestMem, InterruptKind, VirtioDevice};

const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const MEM: usize = 0x10_0000;
const DISK: u64 = 64 * 1024;
const GUARD: u8 = 0xee;

struct Rig {
    m: GuestMem,
    file: TempFile,
}

fn rig() -> Rig {
    let m = mem(MEM);
    fill(&m, 0x1_0000, 0x3_0000, GUARD);
    let file = TempFile::new().unwrap();
    let mut f = file.as_file();
    let pattern: Vec<u8> = (0..DISK).map(|i| (i % 251) as u8).collect();
    f.write_all(&pattern).unwrap();
    Rig { m, file }
}

fn header(m: &GuestMem, ty: u32, sector: u64) {
    m.write_obj(ty, GuestAddress(HDR)).unwrap();
    m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

fn status(m: &GuestMem) -> u8 {
    m.read_obj(GuestAddress(STATUS)).unwrap()
}

fn block(k: &Rig, q: &GuestQueue, read_only: bool) -> (Block, Arc<CountingInterrupt>) {
    let f = k.file.as_file().try_clone().unwrap();
    let mut b = Block::new(Box::new(RawFile::from_file(f).unwrap()), read_only).unwrap();
    let irq = Arc::new(CountingInterrupt::new());
    b.activate(k.m.clone(), vec![q.queue()], irq.clone())
        .unwrap();
    (b, irq)
}

fn disk_bytes(k: &Rig, off: u64, len: usize) -> Vec<u8> {
    let mut f = k.file.as_file();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

#[test]
fn config_and_features() {
    let k = rig();
    let q = GuestQueue::new(&k.m, 0, 16);
    let (b, _) = block(&k, &q, true);
    assert_eq!(b.capacity(), DISK / 512);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK / 512);
    let mut seg_max = [0u8; 4];
    b.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), u32::from(QUEUE_SIZE) - 2);
    let mut past = [0xffu8; 4];
    b.read_config(14, &mut past);
    assert_eq!(past, [0, 0, 0, 0]);
    assert_ne!(b.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(b.avail_features() & (1 << 32), 0);
    assert_ne!(b.avail_features() & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
    assert_ne!(
        b.avail_features() & (1 << crate::virtio::VIRTIO_RING_F_INDIRECT_DESC),
        0
    );
    let (rw, _) = block(&k, &q, false);
    assert_eq!(rw.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn read_two_segments() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    header(&k.m, VIRTIO_BLK_T_IN, 2);
    let h = q.add(&[
        r(HDR, 16),
        w(DATA, 512),
        w(DATA + 0x1000, 1024),
        w(STATUS, 1),
    ]);
    let (mut b, irq) = block(&k, &q, false);
    assert_eq!(b.process_queue(), 1);
    assert_eq!(q.take_used(), vec![(u32::from(h), 512 + 1024 + 1)]);
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(read(&k.m, DATA, 512), disk_bytes(&k, 1024, 512));
    assert_eq!(read(&k.m, DATA + 0x1000, 1024), disk_bytes(&k, 1536, 1024));
    assert_untouched(&k.m, DATA + 512, 0x1000 - 512, GUARD);
    assert_untouched(&k.m, DATA + 0x1000 + 1024, 0x100, GUARD);
    assert_untouched(&k.m, STATUS + 1, 0x100, GUARD);
    assert_eq!(irq.count(InterruptKind::Vring), 1);
}

#[test]
fn write_then_read_back() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    fill(&k.m, DATA, 1024, 0x5a);
    header(&k.m, VIRTIO_BLK_T_OUT, 10);
    let h = q.add(&[r(HDR, 16), r(DATA, 1024), w(STATUS, 1)]);
    let (mut b, _) = block(&k, &q, false);
    b.process_queue();
    assert_eq!(q.take_used(), vec![(u32::from(h), 1)]);
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(disk_bytes(&k, 10 * 512, 1024), vec![0x5a; 1024]);
    assert_ne!(disk_bytes(&k, 9 * 512, 512), vec![0x5a; 512]);
    // Flush then read it back through the device.
    header(&k.m, VIRTIO_BLK_T_FLUSH, 0);
    q.add(&[r(HDR, 16), w(STATUS, 1)]);
    b.process_queue();
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    fill(&k.m, DATA, 1024, 0);
    header(&k.m, VIRTIO_BLK_T_IN, 10);
    q.add(&[r(HDR, 16), w(DATA, 1024), w(STATUS, 1)]);
    b.process_queue();
    assert_eq!(read(&k.m, DATA, 1024), vec![0x5a; 1024]);
}

#[test]
fn get_id_is_20_bytes() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    header(&k.m, VIRTIO_BLK_T_GET_ID, 0);
    let h = q.add(&[r(HDR, 16), w(DATA, 64), w(STATUS, 1)]);
    let (mut b, _) = block(&k, &q, false);
    let id = b.disk.id();
    b.process_queue();
    assert_eq!(q.take_used(), vec![(u32::from(h), 21)]);
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(read(&k.m, DATA, 20), id.to_vec());
    assert!(id.iter().any(|&c| c != 0), "id must not be empty");
    assert_untouched(&k.m, DATA + 20, 44, GUARD);
}

#[test]
fn read_only_refuses_writes() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    let before = disk_bytes(&k, 0, 512);
    fill(&k.m, DATA, 512, 0x11);
    header(&k.m, VIRTIO_BLK_T_OUT, 0);
    q.add(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]);
    let (mut b, _) = block(&k, &q, true);
    b.process_queue();
    assert_eq!(status(&k.m), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(disk_bytes(&k, 0, 512), before);
    // Reads still work.
    header(&k.m, VIRTIO_BLK_T_IN, 0);
    q.add(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    b.process_queue();
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(read(&k.m, DATA, 512), before);
}

fn run_one(k: &Rig, descs: &[D], ty: u32, sector: u64) -> (u32, u8) {
    let mut q = GuestQueue::new(&k.m, 0, 16);
    header(&k.m, ty, sector);
    k.m.write_obj(0x77u8, GuestAddress(STATUS)).unwrap();
    q.add(descs);
    let (mut b, _) = block(k, &q, false);
    assert_eq!(b.process_queue(), 1);
    let used = q.take_used();
    assert_eq!(used.len(), 1);
    (used[0].1, status(&k.m))
}

#[test]
fn bounds_and_alignment_give_ioerr() {
    let k = rig();
    let last = DISK / 512;
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    // Past the end.
    let d = [r(HDR, 16), w(DATA, 1024), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, last - 1), (1, ioerr));
    // Sector overflow.
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, u64::MAX / 256), (1, ioerr));
    // Not a multiple of the sector size.
    let d = [r(HDR, 16), w(DATA, 100), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (1, ioerr));
    // Oversize: a 512 KiB descriptor on a 64 KiB disk.
    let d = [r(HDR, 16), w(DATA, 512 * 1024), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (1, ioerr));
    assert_untouched(&k.m, DATA, 0x1_0000, GUARD);
    // The very last sector is fine.
    let d = [r(HDR, 16), w(DATA, 512), w(STATUS, 1)];
    assert_eq!(
        run_one(&k, &d, VIRTIO_BLK_T_IN, last - 1),
        (513, VIRTIO_BLK_S_OK as u8)
    );
}

#[test]
fn unsupported_type() {
    let k = rig();
    let d = [r(HDR, 16), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, 11, 0), (1, VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn malformed_chains_with_status_get_ioerr() {
    let k = rig();
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    // Header device-writable.
    let d = [w(HDR, 16), w(DATA, 512), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (1, ioerr));
    // Header too short.
    let d = [r(HDR, 8), w(DATA, 512), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (1, ioerr));
    // Read into a device-readable buffer (wrong direction).
    let d = [r(HDR, 16), r(DATA, 512), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (1, ioerr));
    // Write from a device-writable buffer (wrong direction).
    let d = [r(HDR, 16), w(DATA, 512), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_OUT, 0), (1, ioerr));
    // Zero-length data descriptor.
    let d = [r(HDR, 16), w(DATA, 0), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (1, ioerr));
    assert_untouched(&k.m, DATA, 0x1_0000, GUARD);
}

#[test]
fn malformed_chains_without_status_are_returned_empty() {
    let k = rig();
    // Status descriptor device-readable.
    let d = [r(HDR, 16), w(DATA, 512), r(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (0, 0x77));
    // Status descriptor of zero length.
    let d = [r(HDR, 16), w(DATA, 512), w(STATUS, 0)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (0, 0x77));
    // A lone descriptor.
    let d = [w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (0, 0x77));
    // Data outside guest memory.
    let d = [r(HDR, 16), w(MEM as u64 - 256, 512), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (0, 0x77));
    let d = [r(HDR, 16), w(0xffff_ffff_ffff_fe00, 512), w(STATUS, 1)];
    assert_eq!(run_one(&k, &d, VIRTIO_BLK_T_IN, 0), (0, 0x77));
    assert_untouched(&k.m, DATA, 0x1_0000, GUARD);
    assert_untouched(&k.m, MEM as u64 - 0x1000, 0x1000, 0);
}

#[test]
fn descriptor_loop_is_dropped() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    header(&k.m, VIRTIO_BLK_T_IN, 0);
    k.m.write_obj(0x77u8, GuestAddress(STATUS)).unwrap();
    let h = q.add_loop(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    let (mut b, _) = block(&k, &q, false);
    b.process_queue();
    assert_eq!(q.take_used(), vec![(u32::from(h), 0)]);
    assert_eq!(status(&k.m), 0x77);
    assert_untouched(&k.m, DATA, 0x1_0000, GUARD);
}

/// A writable block device on `q` limited by `limit`.
fn limited(k: &Rig, q: &GuestQueue, limit: &crate::rate_limiter::RateLimit) -> Block {
    let (mut b, _) = block(k, q, false);
    b.set_rate_limiter(
        crate::rate_limiter::RateLimiter::new(limit)
            .unwrap()
            .unwrap(),
    );
    b
}

/// Malformed requests are requests for the limiter's `ops` bucket: breaking its chains does
/// not get a guest past its limit.
#[test]
fn malformed_chains_pay_the_rate_limiter() {
    use crate::rate_limiter::{BucketConfig, RateLimit};
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    let limit = RateLimit {
        bandwidth: None,
        ops: Some(BucketConfig {
            size: 2,
            one_time_burst: 0,
            refill_time_ms: 60_000,
        }),
    };
    let heads: Vec<u16> = (0..4)
        .map(|_| q.add_loop(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]))
        .collect();
    let mut b = limited(&k, &q, &limit);
    assert_eq!(b.process_queue(), 2);
    assert_eq!(
        q.take_used(),
        vec![(u32::from(heads[0]), 0), (u32::from(heads[1]), 0)]
    );
    assert_eq!(b.throttled(), 1);
    assert_eq!(b.process_queue(), 0);
}

struct FailingDisk;

impl DiskBackend for FailingDisk {
    fn size(&self) -> u64 {
        DISK
    }
    fn read_at(&mut self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("media error"))
    }
    fn write_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("media error"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("media error"))
    }
    fn id(&self) -> [u8; ID_BYTES] {
        [0; ID_BYTES]
    }
}

#[test]
fn backend_errors_give_ioerr() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    let mut b = Block::new(Box::new(FailingDisk), false).unwrap();
    let irq = Arc::new(CountingInterrupt::new());
    b.activate(k.m.clone(), vec![q.queue()], irq).unwrap();
    for ty in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH] {
        header(&k.m, ty, 0);
        if ty == VIRTIO_BLK_T_IN {
            q.add(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
        } else if ty == VIRTIO_BLK_T_OUT {
            q.add(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]);
        } else {
            q.add(&[r(HDR, 16), w(STATUS, 1)]);
        }
        b.process_queue();
        assert_eq!(status(&k.m), VIRTIO_BLK_S_IOERR as u8, "type {ty}");
    }
    assert_untouched(&k.m, DATA, 0x1_0000, GUARD);
}

#[test]
fn open_missing_image_fails() {
    let e = Block::open(std::path::Path::new("/nonexistent/ember.img"), true);
    assert!(matches!(e, Err(Error::Open { .. })));
}

#[test]
fn indirect_chains_work_and_indirect_loops_are_dropped() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    header(&k.m, VIRTIO_BLK_T_IN, 4);
    let table = 0x8_0000;
    let h = q.add_indirect(
        table,
        &[
            r(HDR, 16),
            w(DATA, 512),
            w(DATA + 0x1000, 512),
            w(STATUS, 1),
        ],
        false,
    );
    let (mut b, _) = block(&k, &q, false);
    b.process_queue();
    assert_eq!(q.take_used(), vec![(u32::from(h), 1025)]);
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(read(&k.m, DATA, 512), disk_bytes(&k, 4 * 512, 512));
    assert_eq!(read(&k.m, DATA + 0x1000, 512), disk_bytes(&k, 5 * 512, 512));

    k.m.write_obj(0x77u8, GuestAddress(STATUS)).unwrap();
    fill(&k.m, DATA, 0x2000, GUARD);
    let h = q.add_indirect(table, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], true);
    b.process_queue();
    assert_eq!(q.take_used(), vec![(u32::from(h), 0)]);
    assert_eq!(status(&k.m), 0x77);
    assert_untouched(&k.m, DATA, 0x2000, GUARD);
}

#[test]
fn event_idx_suppresses_interrupts_and_publishes_avail_event() {
    use virtio_queue::QueueT;
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    let (_, avail, used) = q.addrs();
    let used_event = GuestAddress(avail + 4 + 2 * 16);
    let avail_event = GuestAddress(used + 4 + 8 * 16);
    let mut queue = q.queue();
    queue.set_event_idx(true);
    let f = k.file.as_file().try_clone().unwrap();
    let mut b = Block::new(Box::new(RawFile::from_file(f).unwrap()), false).unwrap();
    let irq = Arc::new(CountingInterrupt::new());
    b.activate(k.m.clone(), vec![queue], irq.clone()).unwrap();
    header(&k.m, VIRTIO_BLK_T_IN, 0);
    let read_req = [r(HDR, 16), w(DATA, 512), w(STATUS, 1)];

    // The driver wants an interrupt for used entry 0.
    k.m.write_obj(0u16, used_event).unwrap();
    q.add(&read_req);
    b.process_queue();
    assert_eq!(irq.count(InterruptKind::Vring), 1);
    assert_eq!(
        k.m.read_obj::<u16>(avail_event).unwrap(),
        1,
        "kick me at the next buffer"
    );

    // Now only when entry 3 is used: entries 1 and 2 complete silently.
    k.m.write_obj(3u16, used_event).unwrap();
    q.add(&read_req);
    b.process_queue();
    q.add(&read_req);
    b.process_queue();
    assert_eq!(irq.count(InterruptKind::Vring), 1);
    q.add(&read_req);
    b.process_queue();
    assert_eq!(irq.count(InterruptKind::Vring), 2);
    assert_eq!(q.take_used().len(), 4);
    assert_eq!(k.m.read_obj::<u16>(avail_event).unwrap(), 4);
}

#[test]
fn empty_slot_takes_a_disk_and_gives_it_back() {
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    let mut b = Block::empty().unwrap();
    let irq = Arc::new(CountingInterrupt::new());
    b.activate(k.m.clone(), vec![q.queue()], irq.clone())
        .unwrap();
    assert!(!b.has_medium());
    assert_eq!(b.capacity(), 0);
    // Slots offer no read-only feature: it cannot change after the driver negotiated.
    assert_eq!(b.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let g0 = b.config_generation();
    // No medium: reads fail, guest memory stays as it was.
    header(&k.m, VIRTIO_BLK_T_IN, 0);
    q.add(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    b.process_queue();
    assert_eq!(status(&k.m), VIRTIO_BLK_S_IOERR as u8);
    assert_untouched(&k.m, DATA, 512, GUARD);
    assert!(matches!(b.eject(), Err(Error::SlotEmpty)));

    // Insert read-only: capacity, generation and a config interrupt; reads work, writes not.
    let f = k.file.as_file().try_clone().unwrap();
    b.insert(Box::new(RawFile::from_file(f).unwrap()), true)
        .unwrap();
    assert!(b.has_medium());
    assert_eq!(b.capacity(), DISK / 512);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK / 512);
    assert_ne!(b.config_generation(), g0);
    assert_eq!(irq.count(InterruptKind::Config), 1);
    header(&k.m, VIRTIO_BLK_T_IN, 1);
    q.add(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    b.process_queue();
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(read(&k.m, DATA, 512), disk_bytes(&k, 512, 512));
    let before = disk_bytes(&k, 0, 512);
    header(&k.m, VIRTIO_BLK_T_OUT, 0);
    q.add(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]);
    b.process_queue();
    assert_eq!(status(&k.m), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(disk_bytes(&k, 0, 512), before);
    // A second disk does not fit.
    let f = k.file.as_file().try_clone().unwrap();
    assert!(matches!(
        b.insert(Box::new(RawFile::from_file(f).unwrap()), false),
        Err(Error::SlotInUse)
    ));

    // Eject: empty again, the driver told once more; then a writable insert.
    b.eject().unwrap();
    assert_eq!(b.capacity(), 0);
    assert_eq!(irq.count(InterruptKind::Config), 2);
    let f = k.file.as_file().try_clone().unwrap();
    b.insert(Box::new(RawFile::from_file(f).unwrap()), false)
        .unwrap();
    fill(&k.m, DATA, 512, 0x3c);
    header(&k.m, VIRTIO_BLK_T_OUT, 3);
    q.add(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]);
    b.process_queue();
    assert_eq!(status(&k.m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(disk_bytes(&k, 3 * 512, 512), vec![0x3c; 512]);
}

#[test]
fn rate_limited_requests_wait_for_tokens_and_complete_in_order() {
    use crate::rate_limiter::{BucketConfig, RateLimit};
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    let k = rig();
    let mut q = GuestQueue::new(&k.m, 0, 16);
    header(&k.m, VIRTIO_BLK_T_IN, 0);
    // 1 KiB per 100 ms: two 512-byte reads at once, then one per 50 ms.
    let limit = RateLimit {
        bandwidth: Some(BucketConfig {
            size: 1024,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
        ops: None,
    };
    let heads: Vec<u16> = (0..4)
        .map(|i| q.add(&[r(HDR, 16), w(DATA + i * 0x1000, 512), w(STATUS, 1)]))
        .collect();
    let mut b = limited(&k, &q, &limit);
    assert_eq!(b.process_queue(), 2);
    assert_eq!(
        q.take_used(),
        vec![(u32::from(heads[0]), 513), (u32::from(heads[1]), 513)]
    );
    // Blocked: a notification changes nothing until the timer fires.
    assert_eq!(b.process_queue(), 0);
    let dev = Arc::new(Mutex::new(b));
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let end = Instant::now() + Duration::from_secs(5);
    let mut used = Vec::new();
    while used.len() < 2 && Instant::now() < end {
        em.run_with_timeout(20).unwrap();
        used.extend(q.take_used());
    }
    assert_eq!(
        used,
        vec![(u32::from(heads[2]), 513), (u32::from(heads[3]), 513)]
    );
    for i in 0..4 {
        assert_eq!(read(&k.m, DATA + i * 0x1000, 512), disk_bytes(&k, 0, 512));
    }
    let waited = dev.lock().unwrap().throttled();
    assert!(waited >= 1);
    assert_eq!(
        dev.lock().unwrap().counters(),
        vec![("requests_throttled", waited)]
    );
}
