//! virtio-mmio devices: 4 KiB windows from 0xd000_1000, one GSI each from 5. For each
//! device: an irqfd on its GSI, an ioeventfd per queue on QueueNotify (datamatch = queue
//! index), the transport on the MMIO bus, the device on the event loop, and a
//! `virtio_mmio.device=` entry on the kernel command line.

use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{cmdline_entry, MmioTransport, NOTIFY_REG_OFFSET};
use devices::virtio::{IrqFdInterrupt, VirtioDevice};
use event_manager::MutEventSubscriber;
use thiserror::Error;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Bus, BusDevice};
use crate::arch::x86_64::layout::{
    MMIO_DEVICES_START, MMIO_FIRST_GSI, MMIO_LAST_GSI, MMIO_SLOT_SIZE,
};
use crate::vstate::vm::Vm;

/// Errors attaching virtio-mmio devices.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Out of interrupt lines for virtio devices (at most {0})")]
    NoIrq(u32),
    #[error("Failed to create the device interrupt")]
    Interrupt(#[source] devices::virtio::Error),
    #[error("Failed to create the virtio-mmio transport")]
    Transport(#[source] devices::virtio::mmio::Error),
    #[error("Failed to register the device with KVM")]
    Kvm(#[source] crate::vstate::vm::Error),
    #[error("Failed to place the device on the MMIO bus")]
    Bus(#[source] super::Error),
}

/// A device the event loop services.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A transport on the MMIO bus. vCPUs lock only the transport, which locks the device
/// briefly for config access, activation and reset.
pub struct VirtioMmio(pub MmioTransport);

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// Attached virtio devices: what the event loop must service and what the guest must be
/// told on its command line.
#[derive(Default)]
pub struct MmioDeviceManager {
    alloc: MmioAllocator,
    slots: Vec<MmioSlot>,
    subscribers: Vec<Subscriber>,
    /// Each slot's transport, for snapshots.
    transports: Vec<(MmioSlot, Arc<Mutex<VirtioMmio>>)>,
    /// Clones of the ioeventfds, kept for the VM's lifetime.
    ioevents: Vec<EventFd>,
}

impl MmioDeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach `device` to the VM: slot, irqfd, ioeventfds, bus entry and event loop.
    pub fn attach<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        bus: &mut Bus,
        device: D,
    ) -> Result<MmioSlot, Error>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        self.attach_shared(vm, mem, bus, Arc::new(Mutex::new(device)))
    }

    /// [`MmioDeviceManager::attach`] for a device the caller keeps a handle to (to act on it
    /// while the VM runs, like inserting a disk into a block slot).
    pub fn attach_shared<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        bus: &mut Bus,
        device: Arc<Mutex<D>>,
    ) -> Result<MmioSlot, Error>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let slot = self.alloc.allocate()?;
        let irq = Arc::new(IrqFdInterrupt::new().map_err(Error::Interrupt)?);
        vm.register_irqfd(irq.irq_evt(), slot.gsi)
            .map_err(Error::Kvm)?;
        let transport =
            MmioTransport::new(mem.clone(), device.clone(), irq).map_err(Error::Transport)?;
        for (evt, queue) in transport.ioeventfds().map_err(Error::Transport)? {
            vm.register_mmio_ioevent(&evt, slot.base + NOTIFY_REG_OFFSET, queue)
                .map_err(Error::Kvm)?;
            self.ioevents.push(evt);
        }
        let transport = Arc::new(Mutex::new(VirtioMmio(transport)));
        bus.insert(slot.base, slot.size, transport.clone())
            .map_err(Error::Bus)?;
        self.transports.push((slot, transport));
        self.subscribers.push(device);
        self.slots.push(slot);
        Ok(slot)
    }

    /// The `virtio_mmio.device=` parameters for the attached devices.
    pub fn cmdline_params(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| cmdline_entry(s.base, s.gsi))
            .collect()
    }

    /// Each slot and its transport, in attach order.
    pub fn transports(&self) -> Vec<(MmioSlot, Arc<Mutex<VirtioMmio>>)> {
        self.transports.clone()
    }

    /// The devices, for the event loop.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        self.subscribers.clone()
    }
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

/// GSIs in the device range that legacy devices the guest probes already own: 8 is the
/// CMOS RTC (rtc_cmos requests it; a virtio device there fails to probe with -EBUSY), 12 the
/// PS/2 aux port.
const LEGACY_GSIS: [u32; 2] = [8, 12];

/// Hands out consecutive windows, each with the next GSI no legacy device owns.
#[derive(Debug, Default)]
pub struct MmioAllocator {
    next: u32,
    last_gsi: Option<u32>,
}

impl MmioAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allocate(&mut self) -> Result<MmioSlot, Error> {
        let mut gsi = self.last_gsi.map_or(MMIO_FIRST_GSI, |g| g + 1);
        while LEGACY_GSIS.contains(&gsi) {
            gsi += 1;
        }
        if gsi > MMIO_LAST_GSI {
            return Err(Error::NoIrq(self.next));
        }
        let slot = MmioSlot {
            base: MMIO_DEVICES_START + u64::from(self.next) * MMIO_SLOT_SIZE,
            size: MMIO_SLOT_SIZE,
            gsi,
        };
        self.next += 1;
        self.last_gsi = Some(gsi);
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
        let mut gsis = vec![first.gsi, second.gsi];
        while let Ok(slot) = a.allocate() {
            assert_eq!(slot.base, 0xd000_1000 + 0x1000 * gsis.len() as u64);
            gsis.push(slot.gsi);
        }
        // 5..=23 without the RTC's 8 and the PS/2 aux port's 12.
        assert_eq!(gsis.len(), 17);
        assert!(!gsis.contains(&8) && !gsis.contains(&12));
        assert_eq!(gsis[3], 9);
    }

    #[test]
    fn cmdline_matches_the_transport_format() {
        let slot = MmioAllocator::new().allocate().unwrap();
        assert_eq!(slot.cmdline_param(), cmdline_entry(slot.base, slot.gsi));
    }
}
