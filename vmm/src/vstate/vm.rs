//! The KVM VM: memory slots, in-kernel irqchip and PIT, TSS/identity-map addresses,
//! irqfds and ioeventfds.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use serde::{Deserialize, Serialize};
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
    #[error("{0} failed")]
    State(&'static str, #[source] kvm_ioctls::Error),
}

/// The VM-wide KVM state a snapshot saves: PIC, IOAPIC, PIT and kvmclock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmSnapshot")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
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

    /// The irqchips, PIT and clock (VM with an in-kernel irqchip, vCPUs paused).
    pub fn save_state(&self) -> Result<VmSnapshot, Error> {
        let chip = |id| -> Result<kvm_irqchip, Error> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut c)
                .map_err(|e| Error::State("KVM_GET_IRQCHIP", e))?;
            Ok(c)
        };
        let mut clock = self
            .fd
            .get_clock()
            .map_err(|e| Error::State("KVM_GET_CLOCK", e))?;
        // KVM_SET_CLOCK takes only the clock value (and KVM_CLOCK_REALTIME); the flags
        // KVM_GET_CLOCK reports (TSC_STABLE, HOST_TSC) would be refused.
        clock.flags = 0;
        Ok(VmSnapshot {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self
                .fd
                .get_pit2()
                .map_err(|e| Error::State("KVM_GET_PIT2", e))?,
            clock,
        })
    }

    /// Put `s` into this VM (created with an in-kernel irqchip, before its vCPUs run).
    pub fn restore_state(&self, s: &VmSnapshot) -> Result<(), Error> {
        self.fd
            .set_pit2(&s.pit)
            .map_err(|e| Error::State("KVM_SET_PIT2", e))?;
        self.fd
            .set_clock(&s.clock)
            .map_err(|e| Error::State("KVM_SET_CLOCK", e))?;
        for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(|e| Error::State("KVM_SET_IRQCHIP", e))?;
        }
        Ok(())
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
