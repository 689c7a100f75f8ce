//! Save and restore through the MMIO transport: round trips of virtio-blk and virtio-rng
//! (the other devices have theirs next to their own tests), the serialized form, and
//! snapshots that must be refused without touching the fresh device.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_T_IN};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::block::{Block, RawFile};
use crate::virtio::mmio::{
    MmioTransport, REG_CONFIG_GENERATION, REG_INTERRUPT_STATUS, REG_QUEUE_READY, REG_QUEUE_SEL,
};
use crate::virtio::rng::Rng;
use crate::virtio::test_utils::*;
use crate::virtio::{
    CountingInterrupt, InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_ID_RNG,
};

const MEM: usize = 0x10_0000;
const V1: u64 = 1 << VIRTIO_F_VERSION_1;
const RUNNING: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const DISK: u64 = 64 * 1024;

/// A device behind its transport, with its counting interrupt.
struct Slot<D: VirtioDevice + 'static> {
    t: MmioTransport,
    dev: Arc<Mutex<D>>,
    irq: Arc<CountingInterrupt>,
}

impl<D: VirtioDevice + 'static> Slot<D> {
    fn new(m: &GuestMem, dev: D) -> Self {
        let dev = Arc::new(Mutex::new(dev));
        let irq = Arc::new(CountingInterrupt::new());
        let t = MmioTransport::new(m.clone(), dev.clone(), irq.clone()).unwrap();
        Slot { t, dev, irq }
    }

    /// Asserts the reset state: nothing negotiated, nothing active, no queue set up.
    fn assert_fresh(&mut self) {
        assert_eq!(self.t.status(), 0, "transport status changed");
        assert_eq!(reg_read(&mut self.t, REG_INTERRUPT_STATUS), 0);
        let n = self.dev.lock().unwrap().queue_max_sizes().len();
        for i in 0..n {
            reg_write_pub(&mut self.t, REG_QUEUE_SEL, i as u32);
            assert_eq!(
                reg_read(&mut self.t, REG_QUEUE_READY),
                0,
                "queue {i} set up"
            );
        }
        let d = self.dev.lock().unwrap();
        assert!(!d.is_activated(), "device activated");
        assert_eq!(d.acked_features(), 0, "device features changed");
        assert_eq!(self.irq.count(InterruptKind::Vring), 0);
        assert_eq!(self.irq.count(InterruptKind::Config), 0);
        for (i, e) in d.queue_events().iter().enumerate() {
            assert!(e.read().is_err(), "queue {i} signalled");
        }
    }
}

fn reg_write_pub(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn disk(size: u64) -> TempFile {
    let file = TempFile::new().unwrap();
    let pattern: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    file.as_file().write_all(&pattern).unwrap();
    file
}

fn block_on(file: &TempFile, read_only: bool) -> Block {
    let f = file.as_file().try_clone().unwrap();
    Block::new(Box::new(RawFile::from_file(f).unwrap()), read_only).unwrap()
}

/// Posts a one-sector read of `sector` into `DATA`; returns the head.
fn post_read(m: &GuestMem, q: &mut GuestQueue, sector: u64) -> u16 {
    m.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
    m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    fill(m, DATA, 512, 0xee);
    q.add(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)])
}

fn sector_bytes(sector: u64) -> Vec<u8> {
    (sector * 512..(sector + 1) * 512)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// A block device that served two reads, saved.
fn running_block(m: &GuestMem, file: &TempFile, q: &mut GuestQueue) -> TransportSnapshot {
    let mut s = Slot::new(m, block_on(file, false));
    bring_up(&mut s.t, V1 | (1 << VIRTIO_BLK_F_FLUSH), &[q]);
    for sector in [1, 2] {
        let h = post_read(m, q, sector);
        assert_eq!(s.dev.lock().unwrap().process_queue(), 1);
        assert_eq!(q.take_used(), vec![(u32::from(h), 513)]);
        assert_eq!(read(m, DATA, 512), sector_bytes(sector));
    }
    s.t.save().unwrap()
}

#[test]
fn block_round_trip_continues_the_queue() {
    let m = mem(MEM);
    let file = disk(DISK);
    let mut q = GuestQueue::new(&m, 0, 16);
    let snap = running_block(&m, &file, &mut q);
    assert_eq!(snap.status, RUNNING);
    let active = snap.device.active_queues.as_ref().unwrap();
    assert_eq!((active[0].next_avail, active[0].next_used), (2, 2));
    assert_eq!(
        snap.device.kind,
        DeviceKindState::Block {
            medium: true,
            capacity_sectors: DISK / 512,
            read_only: false,
            generation: 0
        }
    );

    let mut s = Slot::new(&m, block_on(&file, false));
    let gen_before = reg_read(&mut s.t, REG_CONFIG_GENERATION);
    s.t.restore(&snap).unwrap();
    assert_eq!(s.t.status(), RUNNING);
    assert_eq!(
        s.t.save().unwrap(),
        snap,
        "restored state differs from the saved one"
    );
    assert_eq!(reg_read(&mut s.t, REG_CONFIG_GENERATION), gen_before);
    assert_eq!(
        s.irq.count(InterruptKind::Config),
        0,
        "same disk: no config change"
    );
    assert_eq!(
        s.irq.count(InterruptKind::Vring),
        1,
        "the unacknowledged interrupt is raised again"
    );
    {
        let d = s.dev.lock().unwrap();
        assert!(d.is_activated());
        assert_eq!(d.acked_features(), V1 | (1 << VIRTIO_BLK_F_FLUSH));
        assert_eq!(
            d.queue_events()[0].read().unwrap(),
            1,
            "queue event signalled once"
        );
    }
    // Nothing replayed: the two old requests are not served again.
    assert_eq!(s.dev.lock().unwrap().process_queue(), 0);
    let h = post_read(&m, &mut q, 5);
    assert_eq!(s.dev.lock().unwrap().process_queue(), 1);
    assert_eq!(q.take_used(), vec![(u32::from(h), 513)]);
    assert_eq!(q.used_idx(), 3, "used ring continues at 2");
    assert_eq!(read(&m, DATA, 512), sector_bytes(5));
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(s.irq.count(InterruptKind::Vring), 2);
}

#[test]
fn block_restored_with_another_disk_tells_the_guest() {
    let m = mem(MEM);
    let file = disk(DISK);
    let mut q = GuestQueue::new(&m, 0, 16);
    let snap = running_block(&m, &file, &mut q);
    let bigger = disk(2 * DISK);
    let mut s = Slot::new(&m, block_on(&bigger, false));
    let gen_before = reg_read(&mut s.t, REG_CONFIG_GENERATION);
    s.t.restore(&snap).unwrap();
    assert_eq!(s.dev.lock().unwrap().capacity(), 2 * DISK / 512);
    assert_ne!(reg_read(&mut s.t, REG_CONFIG_GENERATION), gen_before);
    assert_eq!(s.irq.count(InterruptKind::Config), 1);
    assert_eq!(
        reg_read(&mut s.t, REG_INTERRUPT_STATUS) & InterruptKind::Config.bit(),
        InterruptKind::Config.bit()
    );
    // The disk is this device's: a sector past the old end reads.
    let h = post_read(&m, &mut q, DISK / 512 + 3);
    assert_eq!(s.dev.lock().unwrap().process_queue(), 1);
    assert_eq!(q.take_used(), vec![(u32::from(h), 513)]);
    assert_eq!(read(&m, DATA, 512), sector_bytes(DISK / 512 + 3));

    // An empty slot restored where the guest had a disk: capacity 0, guest told.
    let mut e = Slot::new(&m, Block::empty().unwrap());
    e.t.restore(&snap).unwrap();
    assert_eq!(e.dev.lock().unwrap().capacity(), 0);
    assert_eq!(e.irq.count(InterruptKind::Config), 1);
}

#[test]
fn block_read_only_mismatch_is_refused() {
    let m = mem(MEM);
    let file = disk(DISK);
    let mut q = GuestQueue::new(&m, 0, 16);
    // Negotiated writable, restored onto a read-only disk.
    let snap = running_block(&m, &file, &mut q);
    let mut s = Slot::new(&m, block_on(&file, true));
    assert!(matches!(
        s.t.restore(&snap),
        Err(PersistError::Incompatible { .. })
    ));
    s.assert_fresh();

    // Negotiated read-only, restored onto a writable disk: RO is not offered there.
    let m = mem(MEM);
    let q = GuestQueue::new(&m, 0, 16);
    let mut ro = Slot::new(&m, block_on(&file, true));
    bring_up(&mut ro.t, V1 | (1 << VIRTIO_BLK_F_RO), &[&q]);
    let snap = ro.t.save().unwrap();
    let mut s = Slot::new(&m, block_on(&file, false));
    let e = s.t.restore(&snap).unwrap_err();
    assert!(matches!(e, PersistError::Features { .. }), "{e}");
    s.assert_fresh();
}

#[test]
fn rng_round_trip_delivers_bytes() {
    let m = mem(MEM);
    let mut q = GuestQueue::new(&m, 0, 16);
    let mut s = Slot::new(&m, Rng::new().unwrap());
    bring_up(&mut s.t, V1, &[&q]);
    for i in 0..3 {
        let h = q.add(&[w(0x1_0000 + i * 0x100, 32)]);
        assert_eq!(s.dev.lock().unwrap().process_queue(), 1);
        assert_eq!(q.take_used(), vec![(u32::from(h), 32)]);
    }
    let snap = s.t.save().unwrap();
    drop(s);

    let mut s = Slot::new(&m, Rng::new().unwrap());
    s.t.restore(&snap).unwrap();
    assert_eq!(s.dev.lock().unwrap().process_queue(), 0, "nothing replayed");
    fill(&m, 0x2_0000, 0x100, 0xee);
    let h = q.add(&[w(0x2_0000, 64)]);
    assert_eq!(s.dev.lock().unwrap().process_queue(), 1);
    assert_eq!(q.take_used(), vec![(u32::from(h), 64)]);
    assert_eq!(q.used_idx(), 4);
    assert_ne!(read(&m, 0x2_0000, 64), vec![0xee; 64], "no random bytes");
    assert_untouched(&m, 0x2_0040, 0xc0, 0xee);
}

#[test]
fn inactive_device_round_trip() {
    let m = mem(MEM);
    let mut s = Slot::new(&m, Rng::new().unwrap());
    reg_write_pub(&mut s.t, crate::virtio::mmio::REG_STATUS, 1);
    reg_write_pub(&mut s.t, crate::virtio::mmio::REG_STATUS, 3);
    let snap = s.t.save().unwrap();
    assert_eq!(snap.status, 3);
    assert_eq!(snap.device.active_queues, None);
    let mut s = Slot::new(&m, Rng::new().unwrap());
    s.t.restore(&snap).unwrap();
    assert_eq!(s.t.status(), 3);
    assert!(!s.dev.lock().unwrap().is_activated());
    assert!(s.dev.lock().unwrap().queue_events()[0].read().is_err());
    // The driver goes on from there.
    let q = GuestQueue::new(&m, 0, 16);
    reg_write_pub(&mut s.t, crate::virtio::mmio::REG_STATUS, 0);
    bring_up(&mut s.t, V1, &[&q]);
}

#[test]
fn unacknowledged_interrupts_are_raised_again() {
    let m = mem(MEM);
    let q = GuestQueue::new(&m, 0, 16);
    let mut s = Slot::new(&m, Rng::new().unwrap());
    bring_up(&mut s.t, V1, &[&q]);
    s.irq.trigger(InterruptKind::Vring).unwrap();
    let snap = s.t.save().unwrap();
    assert_eq!(snap.interrupt_status, InterruptKind::Vring.bit());
    let mut s = Slot::new(&m, Rng::new().unwrap());
    s.t.restore(&snap).unwrap();
    assert_eq!(s.irq.count(InterruptKind::Vring), 1);
    assert_eq!(s.irq.count(InterruptKind::Config), 0);
    assert_eq!(reg_read(&mut s.t, REG_INTERRUPT_STATUS), 1);
}

#[test]
fn snapshot_survives_serde() {
    let m = mem(MEM);
    let file = disk(DISK);
    let mut q = GuestQueue::new(&m, 0, 16);
    let snap = running_block(&m, &file, &mut q);
    let json = serde_json::to_string(&snap).unwrap();
    let back: TransportSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    // Every kind, active or not.
    for kind in [
        DeviceKindState::Net {
            mac: [2, 0, 0, 0, 0, 9],
        },
        DeviceKindState::Vsock { guest_cid: 77 },
        DeviceKindState::Rng,
        DeviceKindState::Fs {
            tag: "ember".into(),
        },
    ] {
        let d = DeviceSnapshot {
            device_type: 1,
            acked_features: V1,
            active_queues: None,
            kind,
        };
        let back: DeviceSnapshot =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }
    // The restored one is usable.
    let mut s = Slot::new(&m, block_on(&file, false));
    s.t.restore(&back).unwrap();
    assert_eq!(s.t.save().unwrap(), snap);
}

#[test]
fn queue_snapshot_converts_both_ways() {
    let m = mem(MEM);
    let mut q = GuestQueue::new(&m, 0x4000, 64).queue();
    virtio_queue::QueueT::set_next_avail(&mut q, 7);
    virtio_queue::QueueT::set_next_used(&mut q, 5);
    let s = QueueSnapshot::from(q.state());
    assert_eq!(
        (s.size, s.next_avail, s.next_used, s.ready),
        (64, 7, 5, true)
    );
    assert_eq!(s.to_queue().unwrap().state(), q.state());
    let bad = QueueSnapshot {
        size: 48,
        ..s.clone()
    };
    assert!(matches!(bad.to_queue(), Err(PersistError::QueueState(_))));
    let unaligned = QueueSnapshot {
        desc_table: 0x4008,
        ..s
    };
    assert!(unaligned.to_queue().is_err());
}

/// A saved running Rng, then `spoil` applied, restored onto a fresh one: refused, nothing
/// changed.
fn refused(spoil: impl FnOnce(&mut TransportSnapshot)) -> PersistError {
    let m = mem(MEM);
    let mut q = GuestQueue::new(&m, 0, 16);
    let mut s = Slot::new(&m, Rng::new().unwrap());
    bring_up(&mut s.t, V1, &[&q]);
    q.add(&[w(0x1_0000, 8)]);
    assert_eq!(s.dev.lock().unwrap().process_queue(), 1);
    let good = s.t.save().unwrap();
    let mut snap = good.clone();
    spoil(&mut snap);
    let mut fresh = Slot::new(&m, Rng::new().unwrap());
    let e = fresh.t.restore(&snap).unwrap_err();
    fresh.assert_fresh();
    // The very same fresh device still takes the good snapshot afterwards.
    fresh.t.restore(&good).unwrap();
    assert_eq!(fresh.t.save().unwrap(), good);
    e
}

fn device_queue(snap: &mut TransportSnapshot) -> &mut QueueSnapshot {
    &mut snap.device.active_queues.as_mut().unwrap()[0]
}

#[test]
fn bad_snapshots_are_refused_and_change_nothing() {
    let e = refused(|s| s.device.device_type = VIRTIO_ID_BLOCK);
    assert!(
        matches!(
            e,
            PersistError::DeviceType {
                saved: VIRTIO_ID_BLOCK,
                this: VIRTIO_ID_RNG
            }
        ),
        "{e}"
    );
    let e = refused(|s| {
        let q = s.queues[0].clone();
        s.queues.push(q);
    });
    assert!(
        matches!(e, PersistError::QueueCount { saved: 2, this: 1 }),
        "{e}"
    );
    let e = refused(|s| {
        let q = device_queue(s).clone();
        s.device.active_queues.as_mut().unwrap().push(q);
    });
    assert!(matches!(e, PersistError::QueueCount { .. }), "{e}");
    let e = refused(|s| s.queues[0].max_size = 128);
    assert!(
        matches!(e, PersistError::QueueMaxSize { index: 0, .. }),
        "{e}"
    );
    let e = refused(|s| device_queue(s).max_size = 512);
    assert!(matches!(e, PersistError::QueueMaxSize { .. }), "{e}");
    // Size not a power of two, or above the maximum: in the register view or the device's.
    let e = refused(|s| s.queues[0].size = 12);
    assert!(
        matches!(e, PersistError::InvalidQueue { index: 0, .. }),
        "{e}"
    );
    let e = refused(|s| device_queue(s).size = 12);
    assert!(matches!(e, PersistError::InvalidQueue { .. }), "{e}");
    let e = refused(|s| device_queue(s).size = 512);
    assert!(matches!(e, PersistError::InvalidQueue { .. }), "{e}");
    // More chains in flight than the queue holds.
    let e = refused(|s| device_queue(s).next_avail = 1 + 17);
    assert!(matches!(e, PersistError::InvalidQueue { .. }), "{e}");
    // A ready queue outside guest memory.
    let e = refused(|s| s.queues[0].used_ring = 0xff_ff00);
    assert!(
        matches!(e, PersistError::QueueOutsideMemory { index: 0 }),
        "{e}"
    );
    let e = refused(|s| device_queue(s).desc_table = 0x1000_0000);
    assert!(matches!(e, PersistError::QueueOutsideMemory { .. }), "{e}");
    let e = refused(|s| device_queue(s).ready = false);
    assert!(matches!(e, PersistError::QueueOutsideMemory { .. }), "{e}");
    // Features this device does not offer.
    let e = refused(|s| {
        s.driver_features |= 1 << 20;
        s.device.acked_features |= 1 << 20;
    });
    assert!(matches!(e, PersistError::Features { .. }), "{e}");
    // Transport state the driver cannot reach.
    let e = refused(|s| s.status = VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(matches!(e, PersistError::InvalidTransport(_)), "{e}");
    let e = refused(|s| s.device.active_queues = None);
    assert!(matches!(e, PersistError::InvalidTransport(_)), "{e}");
    let e = refused(|s| s.device.acked_features = 0);
    assert!(matches!(e, PersistError::InvalidTransport(_)), "{e}");
    let e = refused(|s| s.interrupt_status = 0x10);
    assert!(matches!(e, PersistError::InvalidTransport(_)), "{e}");
    // Another kind's state under the right device type.
    let e = refused(|s| s.device.kind = DeviceKindState::Vsock { guest_cid: 3 });
    assert!(matches!(e, PersistError::KindMismatch { .. }), "{e}");
}

#[test]
fn device_restore_checks_on_its_own() {
    let m = mem(MEM);
    let q = GuestQueue::new(&m, 0, 16);
    let mut s = Slot::new(&m, Rng::new().unwrap());
    bring_up(&mut s.t, V1, &[&q]);
    let snap = s.dev.lock().unwrap().save().unwrap();
    let irq: Arc<dyn VirtioInterrupt> = Arc::new(CountingInterrupt::new());
    // Onto a device of another type.
    let file = disk(DISK);
    let mut b = block_on(&file, false);
    let e = b.restore(&snap, m.clone(), irq.clone()).unwrap_err();
    assert!(matches!(e, PersistError::DeviceType { .. }), "{e}");
    assert!(!b.is_activated());
    // Onto an active device.
    let mut active = Rng::new().unwrap();
    active
        .activate(m.clone(), vec![q.queue()], irq.clone())
        .unwrap();
    let e = active.restore(&snap, m.clone(), irq.clone()).unwrap_err();
    assert!(matches!(e, PersistError::NotFresh(_)), "{e}");
    // Good.
    let mut fresh = Rng::new().unwrap();
    fresh.restore(&snap, m.clone(), irq).unwrap();
    assert!(fresh.is_activated());
    assert_eq!(fresh.save().unwrap(), snap);
}

#[test]
fn restore_onto_a_used_transport_is_refused() {
    let m = mem(MEM);
    let q = GuestQueue::new(&m, 0, 16);
    let mut s = Slot::new(&m, Rng::new().unwrap());
    bring_up(&mut s.t, V1, &[&q]);
    let snap = s.t.save().unwrap();
    let e = s.t.restore(&snap).unwrap_err();
    assert!(matches!(e, PersistError::NotFresh(_)), "{e}");
    assert_eq!(s.t.status(), RUNNING);
}
