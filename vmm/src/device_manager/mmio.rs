//! virtio-mmio device slots: 4 KiB windows from 0xd000_1000, one GSI each from 5.

use crate::arch::x86_64::layout::{
    MMIO_DEVICES_START, MMIO_FIRST_GSI, MMIO_LAST_GSI, MMIO_SLOT_SIZE,
};
use thiserror::Error;

/// Errors allocating MMIO slots.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Out of interrupt lines for virtio devices (at most {0})")]
    NoIrq(u32),
}

/// One device's window and interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

impl MmioSlot {
    /// The `virtio_mmio.device=` kernel parameter that tells the guest about this slot.
    pub fn cmdline_param(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size / 1024,
            self.base,
            self.gsi
        )
    }
}

/// Hands out consecutive slots.
#[derive(Debug, Default)]
pub struct MmioAllocator {
    next: u32,
}

impl MmioAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allocate(&mut self) -> Result<MmioSlot, Error> {
        let gsi = MMIO_FIRST_GSI + self.next;
        if gsi > MMIO_LAST_GSI {
            return Err(Error::NoIrq(MMIO_LAST_GSI - MMIO_FIRST_GSI + 1));
        }
        let slot = MmioSlot {
            base: MMIO_DEVICES_START + u64::from(self.next) * MMIO_SLOT_SIZE,
            size: MMIO_SLOT_SIZE,
            gsi,
        };
        self.next += 1;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_consecutive_and_limited() {
        let mut a = MmioAllocator::new();
        let first = a.allocate().unwrap();
        assert_eq!(first.base, 0xd000_1000);
        assert_eq!(first.gsi, 5);
        assert_eq!(first.cmdline_param(), "virtio_mmio.device=4K@0xd0001000:5");
        let second = a.allocate().unwrap();
        assert_eq!(second.base, 0xd000_2000);
        assert_eq!(second.gsi, 6);
        let mut n = 2;
        while a.allocate().is_ok() {
            n += 1;
        }
        assert_eq!(n, 19);
    }
}
