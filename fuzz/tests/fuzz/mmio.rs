//! The virtio-mmio transport: a sequence of guest register reads and writes (offset, width,
//! value) on the register file of an rng or block device, with the device serving whatever
//! queues the guest managed to set up (so that guest-programmed ring addresses reach the
//! queue code too).
//!
//! Invariants: the identity registers never change; a read of any width returns; the device
//! is active only while DRIVER_OK is set.

use std::io;
use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, DiskBackend, ID_BYTES};
use devices::virtio::mmio::{MmioTransport, MMIO_MAGIC, MMIO_VERSION};
use devices::virtio::rng::Rng;
use devices::virtio::test_utils::mem;
use devices::virtio::{CountingInterrupt, VirtioDevice, VIRTIO_CONFIG_S_DRIVER_OK};
use fuzz::{Input, Target};

const MEM: usize = 0x10_0000;

pub const TARGET: Target = Target {
    name: "mmio",
    max_len: 4096,
    dict: &[
        &[0x70, 0x00],
        &[0x30, 0x00],
        &[0x38, 0x00],
        &[0x44, 0x00],
        &[0x50, 0x00],
        &[0x80, 0x00],
        &[0x90, 0x00],
        &[0xa0, 0x00],
        &[0x20, 0x00],
        &[0x24, 0x00],
        &[0x00, 0x01],
    ],
};

struct ZeroDisk;

impl DiskBackend for ZeroDisk {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&mut self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn id(&self) -> [u8; ID_BYTES] {
        [b'z'; ID_BYTES]
    }
}

enum Dev {
    Rng(Arc<Mutex<Rng>>),
    Block(Arc<Mutex<Block>>),
}

impl Dev {
    fn serve(&self) {
        match self {
            Dev::Rng(d) => {
                d.lock().unwrap().process_queue();
            }
            Dev::Block(d) => {
                d.lock().unwrap().process_queue();
            }
        }
    }
    fn active(&self) -> bool {
        match self {
            Dev::Rng(d) => d.lock().unwrap().is_activated(),
            Dev::Block(d) => d.lock().unwrap().is_activated(),
        }
    }
}

fn read_u32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn one(data: &[u8]) {
    let mut inp = Input::new(data);
    let m = mem(MEM);
    let irq = Arc::new(CountingInterrupt::new());
    let (dev, mut t) = if inp.bool() {
        let d = Arc::new(Mutex::new(Block::new(Box::new(ZeroDisk), false).unwrap()));
        let t = MmioTransport::new(m.clone(), d.clone(), irq).unwrap();
        (Dev::Block(d), t)
    } else {
        let d = Arc::new(Mutex::new(Rng::new().unwrap()));
        let t = MmioTransport::new(m.clone(), d.clone(), irq).unwrap();
        (Dev::Rng(d), t)
    };
    let id = read_u32(&mut t, 0x08);
    for _ in 0..64 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let offset = if op & 0x40 != 0 {
            inp.u64()
        } else {
            u64::from(inp.u16() % 0x200)
        };
        let width = match op & 0x7 {
            0..=3 => 4,
            4 => 1,
            5 => 2,
            6 => 8,
            _ => usize::from(inp.u8() % 12),
        };
        if op & 0x80 != 0 {
            let mut b = vec![0u8; width];
            t.read(offset, &mut b);
        } else {
            let v = inp.u64().to_le_bytes();
            let mut b = vec![0u8; width];
            for (i, x) in b.iter_mut().enumerate() {
                *x = v[i % 8];
            }
            t.write(offset, &b);
        }
        if op & 0x38 == 0x38 {
            dev.serve();
        }
        assert_eq!(read_u32(&mut t, 0x00), MMIO_MAGIC);
        assert_eq!(read_u32(&mut t, 0x04), MMIO_VERSION);
        assert_eq!(read_u32(&mut t, 0x08), id);
        let driver_ok = t.status() & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        assert!(
            !driver_ok || dev.active(),
            "mmio: DRIVER_OK without an active device"
        );
    }
    dev.serve();
}

#[test]
fn fuzz_mmio() {
    fuzz::run(&TARGET, one);
}
