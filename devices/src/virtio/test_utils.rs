//! Test helpers: guest memory and a driver-side view of split queues built on
//! virtio-queue's `MockSplitQueue`.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

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

/// The driver side of one split queue.
pub struct GuestQueue<'a> {
    pub mock: MockSplitQueue<'a, GuestMem>,
    len: u16,
    next_desc: u16,
    used_seen: u16,
}

impl<'a> GuestQueue<'a> {
    /// A queue of `len` entries with its rings at `base`.
    pub fn new(mem: &'a GuestMem, base: u64, len: u16) -> Self {
        GuestQueue {
            mock: MockSplitQueue::create(mem, GuestAddress(base), len),
            len,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// The device-side `Queue` for this ring.
    pub fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().unwrap()
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
        self.mock.add_desc_chains(&raw, start).unwrap();
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
        self.mock.add_desc_chains(&raw, start).unwrap();
        self.next_desc = (start + descs.len() as u16) % self.len;
        start
    }

    /// Number of entries the device has put on the used ring so far.
    pub fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// Used entries not yet returned by this call: `(head, len)`.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let mut out = vec![];
        while self.used_seen != idx {
            let e = self
                .mock
                .used()
                .ring()
                .ref_at((self.used_seen % self.len) as usize)
                .unwrap()
                .load();
            out.push((e.id(), e.len()));
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
