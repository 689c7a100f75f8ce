//! Test equipment (tests, and benchmarks through the `test-utils` feature): guest memory and
//! a driver-side view of split queues built on virtio-queue's `MockSplitQueue`. Panics on
//! misuse; never part of a VMM.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::GuestMem;

/// Guest memory of `size` bytes at address 0.
pub fn mem(size: usize) -> GuestMem {
    GuestMem::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// One descriptor of a chain under construction.
#[derive(Clone, Copy, Debug)]
pub struct D {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A device-readable buffer.
pub fn r(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: false,
    }
}

/// A device-writable buffer.
pub fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: true,
    }
}

/// The driver side of one split queue: descriptor table and available ring from
/// `MockSplitQueue`, used ring placed `USED_OFFSET` past `base` (the mock packs its used ring
/// too close to the available ring for queues longer than a few entries), and the available
/// ring written here so that it wraps like a real driver's.
pub struct GuestQueue<'a> {
    pub mock: MockSplitQueue<'a, GuestMem>,
    mem: &'a GuestMem,
    len: u16,
    next_desc: u16,
    used_seen: u16,
    used_addr: GuestAddress,
}

/// Where the used ring goes relative to the queue base; queues need 0x4000 bytes each.
const USED_OFFSET: u64 = 0x2000;

impl<'a> GuestQueue<'a> {
    /// A queue of `len` (at most 256) entries with its rings at `base`.
    pub fn new(mem: &'a GuestMem, base: u64, len: u16) -> Self {
        assert!(len <= 256);
        GuestQueue {
            mock: MockSplitQueue::create(mem, GuestAddress(base), len),
            mem,
            len,
            next_desc: 0,
            used_seen: 0,
            used_addr: GuestAddress(base + USED_OFFSET),
        }
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub fn addrs(&self) -> (u64, u64, u64) {
        (
            self.mock.desc_table_addr().0,
            self.mock.avail_addr().0,
            self.used_addr.0,
        )
    }

    /// The device-side `Queue` for this ring.
    pub fn queue(&self) -> Queue {
        self.queue_for(self.len)
    }

    /// The device-side `Queue` for this ring, for a device whose queue maximum is `max_size`
    /// (what the transport gives a device; a snapshot restore checks it).
    pub fn queue_for(&self, max_size: u16) -> Queue {
        let mut q = Queue::new(max_size).unwrap();
        q.set_size(self.len);
        q.set_ready(true);
        let d = self.mock.desc_table_addr().0;
        let a = self.mock.avail_addr().0;
        let u = self.used_addr.0;
        q.set_desc_table_address(Some(d as u32), Some((d >> 32) as u32));
        q.set_avail_ring_address(Some(a as u32), Some((a >> 32) as u32));
        q.set_used_ring_address(Some(u as u32), Some((u >> 32) as u32));
        q
    }

    /// Store descriptors and publish `head` on the available ring.
    fn publish(&mut self, start: u16, raw: &[RawDescriptor]) {
        for (i, d) in raw.iter().enumerate() {
            self.mock
                .desc_table()
                .store((start + i as u16) % self.len, *d)
                .unwrap();
        }
        let avail = self.mock.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = avail.unchecked_add(4 + 2 * u64::from(idx % self.len));
        self.mem.write_obj(start, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.len
    }

    /// Index the next published chain will start at.
    pub fn next_desc(&self) -> u16 {
        self.next_desc
    }

    /// Publish a well-formed chain; returns its head index.
    pub fn add(&mut self, descs: &[D]) -> u16 {
        let start = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let idx = (start + i as u16) % self.len;
                let last = i + 1 == descs.len();
                let mut flags = if d.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { (idx + 1) % self.len };
                RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, next))
            })
            .collect();
        self.publish(start, &raw);
        self.next_desc = (start + descs.len() as u16) % self.len;
        start
    }

    /// Publish a chain whose last descriptor points back to its first one.
    pub fn add_loop(&mut self, descs: &[D]) -> u16 {
        let start = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let idx = start + i as u16;
                let last = i + 1 == descs.len();
                let flags = if d.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                } | VRING_DESC_F_NEXT as u16;
                let next = if last { start } else { idx + 1 };
                RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, next))
            })
            .collect();
        self.publish(start, &raw);
        self.next_desc = (start + descs.len() as u16) % self.len;
        start
    }

    /// Publish a chain through an indirect table written at `table`; with `looped` the last
    /// entry points back to the first.
    pub fn add_indirect(&mut self, table: u64, descs: &[D], looped: bool) -> u16 {
        for (i, d) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if !last || looped {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { i as u16 + 1 };
            let raw = RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, next));
            self.mem
                .write_obj(raw, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let start = self.next_desc;
        let head = RawDescriptor::from(SplitDescriptor::new(
            table,
            16 * descs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ));
        self.publish(start, &[head]);
        self.next_desc = (start + 1) % self.len;
        start
    }

    /// Number of entries the device has put on the used ring so far.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used_addr.unchecked_add(2)).unwrap()
    }

    /// Used entries not yet returned by this call: `(head, len)`.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let mut out = vec![];
        while self.used_seen != idx {
            let elem = self
                .used_addr
                .unchecked_add(4 + 8 * u64::from(self.used_seen % self.len));
            let id: u32 = self.mem.read_obj(elem).unwrap();
            let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Fill `len` bytes at `addr` with `byte`.
pub fn fill(mem: &GuestMem, addr: u64, len: usize, byte: u8) {
    mem.write_slice(&vec![byte; len], GuestAddress(addr))
        .unwrap();
}

/// Read `len` bytes at `addr`.
pub fn read(mem: &GuestMem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// Assert that `len` bytes at `addr` all equal `byte` (guard zones around buffers).
pub fn assert_untouched(mem: &GuestMem, addr: u64, len: usize, byte: u8) {
    let v = read(mem, addr, len);
    assert!(
        v.iter().all(|&b| b == byte),
        "guest memory at {addr:#x}..+{len:#x} was modified"
    );
}

fn reg_write(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// A 32-bit register of `t`, as the guest reads it.
pub fn reg_read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Drives `t` as a guest driver does up to DRIVER_OK: accepts `features` and sets up one
/// queue per entry of `queues` (index order). Panics when the device does not come up.
pub fn bring_up(t: &mut MmioTransport, features: u64, queues: &[&GuestQueue]) {
    use super::mmio::*;
    use super::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRV,
        VIRTIO_CONFIG_S_DRIVER_OK as DOK, VIRTIO_CONFIG_S_FEATURES_OK as FOK,
    };
    reg_write(t, REG_STATUS, ACK);
    reg_write(t, REG_STATUS, ACK | DRV);
    reg_write(t, REG_DRIVER_FEATURES_SEL, 0);
    reg_write(t, REG_DRIVER_FEATURES, features as u32);
    reg_write(t, REG_DRIVER_FEATURES_SEL, 1);
    reg_write(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    reg_write(t, REG_STATUS, ACK | DRV | FOK);
    assert_eq!(
        t.status(),
        ACK | DRV | FOK,
        "features {features:#x} refused"
    );
    for (i, q) in queues.iter().enumerate() {
        let (d, a, u) = q.addrs();
        reg_write(t, REG_QUEUE_SEL, i as u32);
        reg_write(t, REG_QUEUE_NUM, u32::from(q.size()));
        reg_write(t, REG_QUEUE_DESC_LOW, d as u32);
        reg_write(t, REG_QUEUE_DESC_HIGH, (d >> 32) as u32);
        reg_write(t, REG_QUEUE_AVAIL_LOW, a as u32);
        reg_write(t, REG_QUEUE_AVAIL_HIGH, (a >> 32) as u32);
        reg_write(t, REG_QUEUE_USED_LOW, u as u32);
        reg_write(t, REG_QUEUE_USED_HIGH, (u >> 32) as u32);
        reg_write(t, REG_QUEUE_READY, 1);
    }
    reg_write(t, REG_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(t.status(), ACK | DRV | FOK | DOK, "device not activated");
}
