//! Driver-side helpers the virtio targets share: guest-controlled descriptor addresses and
//! chains decoded from fuzz input, published on a [`GuestQueue`] in one of several layouts
//! (direct, indirect, looped, or raw descriptors with fuzzed flags and next indices).

use devices::virtio::test_utils::{GuestQueue, D};
use devices::virtio::GuestMem;
use fuzz::Input;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

/// Entries of every fuzzed queue.
pub const QLEN: u16 = 16;
/// Where an indirect table goes (past the rings of three queues at 0, 0x4000, 0x8000).
pub const INDIRECT: u64 = 0xc000;
/// Start of the area data buffers live in.
pub const DATA: u64 = 0x1_0000;

/// A guest buffer address: mostly inside `[DATA, mem_size)`, sometimes at the very end of
/// memory (buffers that cross it) or anywhere (outside memory, overflowing).
pub fn addr(inp: &mut Input, mem_size: u64) -> u64 {
    match inp.u8() % 16 {
        0 => inp.u64(),
        1 => mem_size.saturating_sub(u64::from(inp.u8())),
        _ => DATA + (u64::from(inp.u16()) * 8) % (mem_size - DATA),
    }
}

/// A buffer length: mostly small, sometimes interesting.
pub fn len(inp: &mut Input) -> u32 {
    match inp.u8() % 8 {
        0 => inp.u32(),
        1 => 0,
        2 => 512 * (1 + u32::from(inp.u8() % 8)),
        _ => u32::from(inp.u16() % 0x2000),
    }
}

/// How a chain is put on the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Direct,
    Indirect,
    Loop,
    IndirectLoop,
}

impl Layout {
    pub fn from(inp: &mut Input) -> Layout {
        match inp.u8() % 16 {
            0..=10 => Layout::Direct,
            11..=13 => Layout::Indirect,
            14 => Layout::Loop,
            _ => Layout::IndirectLoop,
        }
    }

    /// Whether the device may use the chain (loops must be refused).
    pub fn well_formed(self) -> bool {
        matches!(self, Layout::Direct | Layout::Indirect)
    }
}

/// Publishes `descs` in `layout`; returns the head index.
pub fn publish(q: &mut GuestQueue, descs: &[D], layout: Layout) -> u16 {
    if descs.is_empty() {
        // An empty chain cannot be built from descriptors: a zero-length indirect table.
        return q.add_indirect(INDIRECT, &[], false);
    }
    match layout {
        Layout::Direct => q.add(descs),
        Layout::Indirect => q.add_indirect(INDIRECT, descs, false),
        Layout::Loop => q.add_loop(descs),
        Layout::IndirectLoop => q.add_indirect(INDIRECT, descs, true),
    }
}

/// Bytes a chain lets the device write.
pub fn writable_total(descs: &[D]) -> u64 {
    descs
        .iter()
        .filter(|d| d.write)
        .map(|d| u64::from(d.len))
        .sum()
}

/// Raw descriptors with fuzzed address, length, flags and next index, written into the
/// ring's table at indices 0.. or into the indirect table at [`INDIRECT`], then one head
/// published (sometimes with a wild jump of the available index). Returns an upper bound of
/// what the device may write for any chain: every write-flagged length in both tables
/// (a chain that terminates visits each descriptor at most once).
pub fn publish_raw(mem: &GuestMem, q: &mut GuestQueue, inp: &mut Input, mem_size: u64) -> u64 {
    let (desc_table, avail, _) = q.addrs();
    let n = 1 + inp.below(usize::from(QLEN));
    for i in 0..n {
        let flags = match inp.u8() % 8 {
            0 => inp.u16(),
            1 => VRING_DESC_F_INDIRECT as u16,
            2 | 3 => VRING_DESC_F_NEXT as u16,
            4 | 5 => (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            6 => VRING_DESC_F_WRITE as u16,
            _ => 0,
        };
        // Indirect tables always live at INDIRECT, so that the bound below holds; their
        // length is fuzzed like any other.
        let a = if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            INDIRECT
        } else {
            addr(inp, mem_size)
        };
        let l = len(inp);
        let next = inp.u16() % (QLEN + 2);
        let raw = RawDescriptor::from(SplitDescriptor::new(a, l, flags, next));
        let at = if inp.one_in(4) {
            INDIRECT + 16 * (i as u64 % 16)
        } else {
            desc_table + 16 * (i as u64 % u64::from(QLEN))
        };
        let _ = mem.write_obj(raw, GuestAddress(at));
    }
    let head = inp.u16() % (QLEN + 2);
    let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
    let _ = mem.write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(idx % QLEN)));
    let bump = if inp.one_in(8) { inp.u16() } else { 1 };
    let _ = mem.write_obj(idx.wrapping_add(bump), GuestAddress(avail + 2));
    let table_sum = |start: u64, entries: u64| -> u64 {
        (0..entries)
            .filter_map(|i| mem.read_obj::<[u8; 16]>(GuestAddress(start + 16 * i)).ok())
            .filter(|raw| u16::from_le_bytes([raw[12], raw[13]]) & VRING_DESC_F_WRITE as u16 != 0)
            .map(|raw| u64::from(u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]])))
            .sum()
    };
    table_sum(desc_table, u64::from(QLEN)) + table_sum(INDIRECT, (DATA - INDIRECT) / 16)
}

/// Asserts that every used entry the device returned since the last call is within `bound`
/// bytes, and that it used at most `published` chains.
pub fn check_used(q: &mut GuestQueue, bound: u64, what: &str) -> Vec<(u32, u32)> {
    let used = q.take_used();
    for &(head, len) in &used {
        assert!(
            u64::from(len) <= bound,
            "{what}: used length {len} of head {head} exceeds the {bound} writable bytes"
        );
        assert!(
            head < u32::from(QLEN) + 2,
            "{what}: used head {head} out of range"
        );
    }
    used
}
