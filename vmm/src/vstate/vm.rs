//! The KVM VM: memory slots, in-kernel irqchip and PIT, TSS/identity-map addresses,
//! irqfds and ioeventfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, VmFd};
use thiserror::Error;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors of the VM.
#[derive(Debug, Error)]
pub enum Error {
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {0}")]
    SetMemory(u32, #[source] kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed")]
    SetTss(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed")]
    SetIdentityMap(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed")]
    CreatePit(#[source] kvm_ioctls::Error),
    #[error("KVM_IRQFD failed for GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("KVM_IOEVENTFD failed at {0:#x}")]
    Ioeventfd(u64, #[source] kvm_ioctls::Error),
}

/// Interrupt controller setup of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqChip {
    /// In-kernel PIC, IOAPIC and LAPICs, plus the in-kernel PIT (a real guest).
    InKernel,
    /// None: HLT exits to user space (test payloads).
    None,
}

/// A KVM VM.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Create a VM and set up its interrupt controllers.
    pub fn new(kvm: &KvmContext, irqchip: IrqChip) -> Result<Self, Error> {
        let fd = kvm.kvm.create_vm().map_err(Error::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(Error::SetTss)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(Error::SetIdentityMap)?;
        if irqchip == IrqChip::InKernel {
            fd.create_irq_chip().map_err(Error::CreateIrqchip)?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(Error::CreatePit)?;
        }
        Ok(Vm { fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Register every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), Error> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let region_desc = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the VMM keeps alive
            // (in an Arc shared with the vCPUs) for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(|e| Error::SetMemory(slot, e))?;
        }
        Ok(())
    }

    /// Route `evt` to `gsi` (KVM_IRQFD).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| Error::Irqfd(gsi, e))
    }

    /// Signal `evt` on a 4-byte MMIO write of `datamatch` at `addr` (KVM_IOEVENTFD).
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), Error> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|e| Error::Ioeventfd(addr, e))
    }
}
