//! Guest memory: anonymous mmap regions around the 32-bit MMIO gap.

use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::arch_memory_regions;

/// Errors creating guest memory.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
}

/// Allocate `mem_mib` MiB of guest RAM.
pub fn create_guest_memory(mem_mib: u32) -> Result<GuestMemoryMmap, Error> {
    let size = u64::from(mem_mib) << 20;
    GuestMemoryMmap::from_ranges(&arch_memory_regions(size))
        .map_err(|e| Error::Allocate(u64::from(mem_mib), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    #[test]
    fn sizes_add_up() {
        let m = create_guest_memory(64).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert!(m.address_in_range(GuestAddress((64 << 20) - 1)));
        assert!(!m.address_in_range(GuestAddress(64 << 20)));
    }
}
