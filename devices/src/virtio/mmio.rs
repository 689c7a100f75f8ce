//! The virtio-mmio transport, version 2 ("modern" devices only).
//!
//! [`MmioTransport`] is the register file of one device window (`MMIO_MEM_SIZE` bytes). The
//! guest programs it; on DRIVER_OK with valid queues it activates the device.
//!
//! # Wiring contract with the VMM
//! 1. Build the device (e.g. `Block::new(..)`), wrap it: `let dev = Arc::new(Mutex::new(dev))`.
//! 2. Make an interrupt: `let irq = Arc::new(IrqFdInterrupt::new()?)`; register
//!    `irq.irq_evt()` with `KVM_IRQFD` for the device's GSI.
//! 3. `let transport = MmioTransport::new(mem.clone(), dev.clone(), irq)?`.
//! 4. For each `(evt, index)` in `transport.ioeventfds()?`, register `evt` with
//!    `KVM_IOEVENTFD` at guest address `base + NOTIFY_REG_OFFSET`, 4 bytes, datamatch =
//!    `index`. Without ioeventfds the transport still works: a QueueNotify write on an MMIO
//!    exit signals the same `EventFd`.
//! 5. Add `dev` (the same `Arc<Mutex<_>>`) to the event manager as a `MutEventSubscriber`: it
//!    registers its activate event at `init` and its queue/backend fds when activated.
//! 6. Route vCPU MMIO exits in `[base, base + MMIO_MEM_SIZE)` to `transport.read(offset, data)`
//!    / `transport.write(offset, data)` (keep the transport in its own `Mutex`). Identity,
//!    feature, queue, interrupt and notify registers never touch the device lock; only config
//!    space access, FEATURES_OK, activation and reset take it, briefly.
//! 7. Add [`cmdline_entry`]`(base, irq)` to the guest kernel command line.
//!
//! Snapshots: with the vCPUs paused and the event loop quiet, [`MmioTransport::save`] gives
//! the transport's and its device's state. To restore, wire a freshly built device as above
//! (same type, this VM's backends) and call [`MmioTransport::restore`] before the vCPUs run;
//! it activates the device when it was active, so the event loop registers its fds as after
//! a normal activation. See [`super::persist`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::persist::{check_device, check_queues, PersistError, QueueSnapshot, TransportSnapshot};
use super::{
    Error as VirtioError, GuestMem, InterruptKind, VirtioDevice, VirtioInterrupt,
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of one device's MMIO window.
pub const MMIO_MEM_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where the VMM registers ioeventfds).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Transport version implemented.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("EMBR").
pub const VENDOR_ID: u32 = 0x5242_4d45;

pub(crate) const REG_MAGIC: u64 = 0x00;
pub(crate) const REG_VERSION: u64 = 0x04;
pub(crate) const REG_DEVICE_ID: u64 = 0x08;
pub(crate) const REG_VENDOR_ID: u64 = 0x0c;
pub(crate) const REG_DEVICE_FEATURES: u64 = 0x10;
pub(crate) const REG_DEVICE_FEATURES_SEL: u64 = 0x14;
pub(crate) const REG_DRIVER_FEATURES: u64 = 0x20;
pub(crate) const REG_DRIVER_FEATURES_SEL: u64 = 0x24;
pub(crate) const REG_QUEUE_SEL: u64 = 0x30;
pub(crate) const REG_QUEUE_NUM_MAX: u64 = 0x34;
pub(crate) const REG_QUEUE_NUM: u64 = 0x38;
pub(crate) const REG_QUEUE_READY: u64 = 0x44;
pub(crate) const REG_QUEUE_NOTIFY: u64 = NOTIFY_REG_OFFSET;
pub(crate) const REG_INTERRUPT_STATUS: u64 = 0x60;
pub(crate) const REG_INTERRUPT_ACK: u64 = 0x64;
pub(crate) const REG_STATUS: u64 = 0x70;
pub(crate) const REG_QUEUE_DESC_LOW: u64 = 0x80;
pub(crate) const REG_QUEUE_DESC_HIGH: u64 = 0x84;
pub(crate) const REG_QUEUE_AVAIL_LOW: u64 = 0x90;
pub(crate) const REG_QUEUE_AVAIL_HIGH: u64 = 0x94;
pub(crate) const REG_QUEUE_USED_LOW: u64 = 0xa0;
pub(crate) const REG_QUEUE_USED_HIGH: u64 = 0xa4;
pub(crate) const REG_CONFIG_GENERATION: u64 = 0xfc;
pub(crate) const CONFIG_SPACE: u64 = 0x100;

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid maximum queue size {0}")]
    QueueSize(u16),
    #[error("Failed to clone a queue event fd")]
    CloneEvent(#[source] std::io::Error),
}

/// The line to append to the guest kernel command line for a device at `base` with `irq`.
pub fn cmdline_entry(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@0x{base:x}:{irq}")
}

/// The virtio-mmio register file of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    // Fixed for the device's life: kept here so that register reads and queue notifies on a
    // vCPU thread do not wait for the device lock held by the event loop.
    device_type: u32,
    avail_features: u64,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<dyn VirtioInterrupt>,
    mem: GuestMem,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
}

fn lock<'a>(
    dev: &'a Mutex<dyn VirtioDevice + 'static>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

impl MmioTransport {
    /// A transport in the reset state for `device`.
    pub fn new(
        mem: GuestMem,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<Self, Error> {
        let dev = lock(&device);
        let sizes = dev.queue_max_sizes().to_vec();
        let device_type = dev.device_type();
        let avail_features = dev.avail_features();
        let queue_evts = dev
            .queue_events()
            .iter()
            .map(|e| e.try_clone().map_err(Error::CloneEvent))
            .collect::<Result<Vec<_>, _>>()?;
        drop(dev);
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|_| Error::QueueSize(s)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            device_type,
            avail_features,
            queue_evts,
            interrupt,
            mem,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
        })
    }

    /// The device behind this transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// Clones of the queue-notify event fds with their datamatch (queue index), for
    /// `KVM_IOEVENTFD` at `base + NOTIFY_REG_OFFSET`.
    pub fn ioeventfds(&self) -> Result<Vec<(EventFd, u32)>, Error> {
        self.queue_evts
            .iter()
            .enumerate()
            .map(|(i, e)| Ok((e.try_clone().map_err(Error::CloneEvent)?, i as u32)))
            .collect()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Bump the config generation (call after the device changed its config space) and raise
    /// a config interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Err(e) = self.interrupt.trigger(InterruptKind::Config) {
            log::error!("Failed to raise config interrupt: {e}");
        }
    }

    /// The transport's and its device's state for a snapshot (VM paused, event loop
    /// quiet). Locks the device briefly.
    pub fn save(&self) -> Result<TransportSnapshot, PersistError> {
        let device = lock(&self.device).save()?;
        Ok(TransportSnapshot {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status().load(Ordering::SeqCst),
            queues: self.queues.iter().map(QueueSnapshot::from).collect(),
            device,
        })
    }

    /// Restore a freshly built transport (reset state) and its device. Everything is
    /// validated first (device type, queue count, max sizes, each queue state converts,
    /// ready queues lie in guest memory, the device accepts its snapshot), and nothing
    /// changes if anything is wrong. Then the registers and queue register view are set, the
    /// device restored (and activated when it was), every queue event of an active device
    /// signalled once (a spurious notify is harmless and covers one that was in flight), and
    /// interrupts the guest had not taken yet raised again.
    pub fn restore(&mut self, snap: &TransportSnapshot) -> Result<(), PersistError> {
        if self.status != 0 {
            return Err(PersistError::NotFresh("not in the reset state"));
        }
        if snap.device.device_type != self.device_type {
            return Err(PersistError::DeviceType {
                saved: snap.device.device_type,
                this: self.device_type,
            });
        }
        let max_sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size()).collect();
        let queues = check_queues(&snap.queues, &max_sizes)?;
        if let Some(index) = queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            return Err(PersistError::QueueOutsideMemory { index });
        }
        check_status(snap)?;
        let mut dev = lock(&self.device);
        // The device checks its part (and the rest of its restore) before changing anything.
        check_device(&*dev, &snap.device, &self.mem)?;
        dev.restore(&snap.device, self.mem.clone(), self.interrupt.clone())?;
        let active = dev.is_activated();
        drop(dev);

        self.queues = queues;
        self.status = snap.status;
        self.device_features_sel = snap.device_features_sel;
        self.driver_features_sel = snap.driver_features_sel;
        self.driver_features = snap.driver_features;
        self.queue_sel = snap.queue_sel;
        self.config_generation = snap.config_generation;
        // OR, not store: the device may have raised a config interrupt while restoring.
        self.interrupt
            .status()
            .fetch_or(snap.interrupt_status, Ordering::SeqCst);
        if active {
            for (i, evt) in self.queue_evts.iter().enumerate() {
                if let Err(e) = evt.write(1) {
                    log::warn!("Failed to signal queue {i} after restore: {e}");
                }
            }
        }
        for kind in [InterruptKind::Vring, InterruptKind::Config] {
            if snap.interrupt_status & kind.bit() != 0 {
                if let Err(e) = self.interrupt.trigger(kind) {
                    log::error!("Failed to raise the interrupt after restore: {e}");
                }
            }
        }
        Ok(())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Whether queue registers may be written now (between FEATURES_OK and DRIVER_OK).
    fn queue_config_allowed(&self) -> bool {
        self.status
            & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED)
            == VIRTIO_CONFIG_S_FEATURES_OK
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "Bad virtio-mmio read: offset {offset:#x} size {}",
                data.len()
            );
            return;
        }
        let v: u32 = match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let f = self.avail_features;
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status().load(Ordering::SeqCst),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self
                .config_generation
                .wrapping_add(lock(&self.device).config_generation()),
            _ => {
                log::warn!("Read of write-only or unknown virtio-mmio register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & VIRTIO_CONFIG_S_DRIVER != 0
                && self.status & VIRTIO_CONFIG_S_FAILED == 0
            {
                lock(&self.device).write_config(offset - CONFIG_SPACE, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            } else {
                log::warn!("Config write before DRIVER status ignored");
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!(
                "Bad virtio-mmio write: offset {offset:#x} size {}",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            log::warn!("Unaligned virtio-mmio write at {offset:#x}");
            return;
        }
        let v = u32::from_le_bytes(bytes);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
                    != VIRTIO_CONFIG_S_DRIVER
                {
                    log::warn!("Driver features written in status {:#x}", self.status);
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => log::warn!(
                        "Driver features select {} ignored",
                        self.driver_features_sel
                    ),
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => self.write_queue_reg(offset, v),
            REG_QUEUE_NOTIFY => self.notify(v),
            REG_INTERRUPT_ACK => {
                self.interrupt.status().fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            _ => log::warn!("Write to read-only or unknown virtio-mmio register {offset:#x}"),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_config_allowed() {
            log::warn!(
                "Queue register {offset:#x} written in status {:#x}",
                self.status
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            log::warn!("Queue register written for missing queue");
            return;
        };
        match offset {
            REG_QUEUE_NUM => q.set_size(v as u16),
            REG_QUEUE_READY => q.set_ready(v == 1),
            REG_QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            REG_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            REG_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
            REG_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
            REG_QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
            REG_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    fn notify(&mut self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::error!("Failed to signal queue {index}: {e}");
                }
            }
            None => log::warn!("Notify for missing queue {index}"),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // The driver only ever adds one bit to what it wrote before.
        if v & self.status != self.status {
            log::warn!("Status {v:#x} clears bits of {:#x}; ignored", self.status);
            return;
        }
        let added = v & !self.status;
        let s = self.status;
        match added {
            VIRTIO_CONFIG_S_ACKNOWLEDGE if s == 0 => self.status = v,
            VIRTIO_CONFIG_S_DRIVER if s == VIRTIO_CONFIG_S_ACKNOWLEDGE => self.status = v,
            VIRTIO_CONFIG_S_FEATURES_OK
                if s == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER =>
            {
                let avail = self.avail_features;
                let version_1 = 1u64 << VIRTIO_F_VERSION_1;
                if self.driver_features & !avail != 0 || self.driver_features & version_1 == 0 {
                    log::warn!(
                        "Driver features {:#x} not acceptable (offered {avail:#x})",
                        self.driver_features
                    );
                    return;
                }
                lock(&self.device).set_acked_features(self.driver_features);
                self.status = v;
            }
            VIRTIO_CONFIG_S_DRIVER_OK
                if s == VIRTIO_CONFIG_S_ACKNOWLEDGE
                    | VIRTIO_CONFIG_S_DRIVER
                    | VIRTIO_CONFIG_S_FEATURES_OK =>
            {
                match self.activate() {
                    Ok(()) => self.status = v,
                    Err(e) => {
                        log::error!("Failed to activate virtio device: {e}");
                        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                        if let Err(e) = self.interrupt.trigger(InterruptKind::Config) {
                            log::error!("Failed to raise config interrupt: {e}");
                        }
                    }
                }
            }
            _ => log::warn!("Invalid status transition {s:#x} -> {v:#x}"),
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        // The device gets its own copies; the transport keeps the register view.
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()).map_err(|_| ActivateError::CopyQueue))
            .collect::<Result<Vec<_>, _>>()?;
        let mut queues = queues;
        let event_idx = self.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        lock(&self.device)
            .activate(self.mem.clone(), queues, self.interrupt.clone())
            .map_err(ActivateError::Device)
    }

    fn reset(&mut self) {
        let mut dev = lock(&self.device);
        if dev.is_activated() && !dev.reset() {
            log::error!("Device does not support reset");
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        dev.set_acked_features(0);
        drop(dev);
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.status().store(0, Ordering::SeqCst);
    }
}

/// Checks that the saved status is one the driver can reach and agrees with the device's
/// state: DRIVER_OK exactly when the device is active, acked features those written at
/// FEATURES_OK; and that InterruptStatus holds only known bits.
fn check_status(snap: &TransportSnapshot) -> Result<(), PersistError> {
    const STEPS: [u32; 5] = [
        0,
        VIRTIO_CONFIG_S_ACKNOWLEDGE,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK,
    ];
    let bad = |reason: String| Err(PersistError::InvalidTransport(reason));
    let s = snap.status;
    if !STEPS.contains(&(s & !(VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET))) {
        return bad(format!("status {s:#x} is not one the driver can set"));
    }
    let driver_ok = s & VIRTIO_CONFIG_S_DRIVER_OK != 0;
    if driver_ok != snap.device.active_queues.is_some() {
        return bad(format!(
            "status {s:#x} but the device is {}",
            if driver_ok { "not active" } else { "active" }
        ));
    }
    let acked = if s & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
        snap.driver_features
    } else {
        0
    };
    if snap.device.acked_features != acked {
        return bad(format!(
            "status {s:#x} and driver features {:#x}, but the device acked {:#x}",
            snap.driver_features, snap.device.acked_features
        ));
    }
    let known = InterruptKind::Vring.bit() | InterruptKind::Config.bit();
    if snap.interrupt_status & !known != 0 {
        return bad(format!(
            "interrupt status {:#x} has unknown bits",
            snap.interrupt_status
        ));
    }
    Ok(())
}

/// Why DRIVER_OK did not activate the device.
#[derive(Debug, thiserror::Error)]
enum ActivateError {
    #[error("Queue {0} is not ready or lies outside guest memory")]
    InvalidQueue(usize),
    #[error("Queue state could not be copied")]
    CopyQueue,
    #[error("Device refused activation")]
    Device(#[source] VirtioError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::persist::{DeviceKindState, DeviceSnapshot};
    use crate::virtio::{features, new_events, CountingInterrupt, VIRTIO_ID_RNG};
    use vm_memory::GuestAddress;

    struct Dummy {
        acked: u64,
        config: [u8; 8],
        evts: Vec<EventFd>,
        activations: u32,
        resets: u32,
        active: bool,
        queues_seen: Vec<(u16, u64, bool)>,
        queues: Vec<QueueSnapshot>,
    }

    impl Dummy {
        fn new() -> Self {
            Dummy {
                acked: 0,
                config: [1, 2, 3, 4, 5, 6, 7, 8],
                evts: new_events(2).unwrap(),
                activations: 0,
                resets: 0,
                active: false,
                queues_seen: vec![],
                queues: vec![],
            }
        }
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            VIRTIO_ID_RNG
        }
        fn avail_features(&self) -> u64 {
            features(&[3])
        }
        fn acked_features(&self) -> u64 {
            self.acked
        }
        fn set_acked_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&self.config, offset, data)
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = self.config.get_mut(offset as usize + i) {
                    *c = *b;
                }
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMem,
            queues: Vec<Queue>,
            _i: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), VirtioError> {
            crate::virtio::check_activation(self.active, 2, &queues)?;
            self.queues_seen = queues
                .iter()
                .map(|q| (q.size(), q.desc_table(), q.event_idx_enabled()))
                .collect();
            self.queues = queues.iter().map(QueueSnapshot::from).collect();
            self.activations += 1;
            self.active = true;
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.resets += 1;
            self.active = false;
            true
        }
        fn is_activated(&self) -> bool {
            self.active
        }
        fn save(&self) -> Result<DeviceSnapshot, PersistError> {
            Ok(DeviceSnapshot {
                device_type: VIRTIO_ID_RNG,
                acked_features: self.acked,
                active_queues: self.active.then(|| self.queues.clone()),
                kind: DeviceKindState::Rng,
            })
        }
        fn restore(
            &mut self,
            snap: &DeviceSnapshot,
            mem: GuestMem,
            i: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), PersistError> {
            let queues = check_device(self, snap, &mem)?;
            self.acked = snap.acked_features;
            if let Some(q) = queues {
                self.activate(mem, q, i).map_err(PersistError::Activate)?;
            }
            Ok(())
        }
    }

    struct Rig {
        t: MmioTransport,
        dev: Arc<Mutex<Dummy>>,
        irq: Arc<CountingInterrupt>,
    }

    fn rig() -> Rig {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::new()));
        let irq = Arc::new(CountingInterrupt::new());
        let t = MmioTransport::new(mem, dev.clone(), irq.clone()).unwrap();
        Rig { t, dev, irq }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    const DRV: u32 = VIRTIO_CONFIG_S_DRIVER;
    const FOK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
    const DOK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;

    fn negotiate(t: &mut MmioTransport) {
        wr(t, REG_STATUS, ACK);
        wr(t, REG_STATUS, ACK | DRV);
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, 1 << 3);
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, 1);
        wr(t, REG_STATUS, ACK | DRV | FOK);
    }

    fn setup_queues(t: &mut MmioTransport) {
        for (i, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            wr(t, REG_QUEUE_SEL, i);
            wr(t, REG_QUEUE_NUM, 8);
            wr(t, REG_QUEUE_DESC_LOW, base);
            wr(t, REG_QUEUE_DESC_HIGH, 0);
            wr(t, REG_QUEUE_AVAIL_LOW, base + 0x800);
            wr(t, REG_QUEUE_AVAIL_HIGH, 0);
            wr(t, REG_QUEUE_USED_LOW, base + 0x1000);
            wr(t, REG_QUEUE_USED_HIGH, 0);
            wr(t, REG_QUEUE_READY, 1);
        }
    }

    #[test]
    fn identity_registers() {
        let mut r = rig();
        assert_eq!(rd(&mut r.t, REG_MAGIC), MMIO_MAGIC);
        assert_eq!(rd(&mut r.t, REG_VERSION), 2);
        assert_eq!(rd(&mut r.t, REG_DEVICE_ID), VIRTIO_ID_RNG);
        assert_eq!(rd(&mut r.t, REG_VENDOR_ID), VENDOR_ID);
        wr(&mut r.t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            rd(&mut r.t, REG_DEVICE_FEATURES),
            (1 << 3)
                | (1 << crate::virtio::VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << VIRTIO_RING_F_EVENT_IDX)
        );
        wr(&mut r.t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut r.t, REG_DEVICE_FEATURES), 1);
        wr(&mut r.t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut r.t, REG_DEVICE_FEATURES), 0);
        wr(&mut r.t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut r.t, REG_QUEUE_NUM_MAX), 8);
        wr(&mut r.t, REG_QUEUE_SEL, 5);
        assert_eq!(rd(&mut r.t, REG_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn full_negotiation_activates() {
        let mut r = rig();
        negotiate(&mut r.t);
        assert_eq!(rd(&mut r.t, REG_STATUS), ACK | DRV | FOK);
        assert_eq!(r.dev.lock().unwrap().acked, (1 << 32) | (1 << 3));
        setup_queues(&mut r.t);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK | DOK);
        assert_eq!(rd(&mut r.t, REG_STATUS), ACK | DRV | FOK | DOK);
        let d = r.dev.lock().unwrap();
        assert_eq!(d.activations, 1);
        assert_eq!(d.queues_seen, vec![(8, 0x1000, false), (8, 0x4000, false)]);
    }

    #[test]
    fn event_idx_negotiated_reaches_the_queues() {
        let mut r = rig();
        wr(&mut r.t, REG_STATUS, ACK);
        wr(&mut r.t, REG_STATUS, ACK | DRV);
        wr(&mut r.t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut r.t, REG_DRIVER_FEATURES, 1 << VIRTIO_RING_F_EVENT_IDX);
        wr(&mut r.t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut r.t, REG_DRIVER_FEATURES, 1);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK);
        setup_queues(&mut r.t);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK | DOK);
        let d = r.dev.lock().unwrap();
        assert_eq!(d.queues_seen, vec![(8, 0x1000, true), (8, 0x4000, true)]);
    }

    #[test]
    fn hot_registers_do_not_wait_for_the_device_lock() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::mpsc;
        let mut r = rig();
        let released = Arc::new(AtomicBool::new(false));
        let (locked_tx, locked_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let dev = r.dev.clone();
        let rel = released.clone();
        // The "event loop" holds the device lock until the vCPU side is done (or 30 s).
        let holder = std::thread::spawn(move || {
            let _g = dev.lock().unwrap();
            locked_tx.send(()).unwrap();
            let _ = done_rx.recv_timeout(std::time::Duration::from_secs(30));
            rel.store(true, Ordering::SeqCst);
        });
        locked_rx.recv().unwrap();
        assert_eq!(rd(&mut r.t, REG_DEVICE_ID), VIRTIO_ID_RNG);
        assert_ne!(rd(&mut r.t, REG_DEVICE_FEATURES), 0);
        assert_eq!(rd(&mut r.t, REG_INTERRUPT_STATUS), 0);
        wr(&mut r.t, REG_QUEUE_NOTIFY, 0);
        wr(&mut r.t, REG_INTERRUPT_ACK, 1);
        assert!(
            !released.load(Ordering::SeqCst),
            "a register access waited for the lock"
        );
        done_tx.send(()).unwrap();
        holder.join().unwrap();
    }

    #[test]
    fn rejects_unoffered_or_legacy_features() {
        let mut r = rig();
        wr(&mut r.t, REG_STATUS, ACK);
        wr(&mut r.t, REG_STATUS, ACK | DRV);
        wr(&mut r.t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut r.t, REG_DRIVER_FEATURES, 1 << 4); // not offered
        wr(&mut r.t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut r.t, REG_DRIVER_FEATURES, 1);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK);
        assert_eq!(
            rd(&mut r.t, REG_STATUS),
            ACK | DRV,
            "FEATURES_OK must not stick"
        );
        // Without VERSION_1.
        wr(&mut r.t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut r.t, REG_DRIVER_FEATURES, 1 << 3);
        wr(&mut r.t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut r.t, REG_DRIVER_FEATURES, 0);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK);
        assert_eq!(rd(&mut r.t, REG_STATUS), ACK | DRV);
    }

    #[test]
    fn status_machine_refuses_skips_and_clears() {
        let mut r = rig();
        wr(&mut r.t, REG_STATUS, ACK | DRV); // skips ACK
        assert_eq!(rd(&mut r.t, REG_STATUS), 0);
        wr(&mut r.t, REG_STATUS, ACK);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK | DOK); // skips two steps
        assert_eq!(rd(&mut r.t, REG_STATUS), ACK);
        wr(&mut r.t, REG_STATUS, DRV); // clears ACK
        assert_eq!(rd(&mut r.t, REG_STATUS), ACK);
        wr(&mut r.t, REG_STATUS, VIRTIO_CONFIG_S_FAILED);
        assert_eq!(rd(&mut r.t, REG_STATUS), ACK | VIRTIO_CONFIG_S_FAILED);
        // Features after FAILED are not accepted.
        wr(&mut r.t, REG_STATUS, ACK | DRV | VIRTIO_CONFIG_S_FAILED);
        assert_eq!(rd(&mut r.t, REG_STATUS) & DRV, 0);
    }

    #[test]
    fn queue_config_only_between_features_ok_and_driver_ok() {
        let mut r = rig();
        wr(&mut r.t, REG_QUEUE_SEL, 0);
        wr(&mut r.t, REG_QUEUE_READY, 1);
        assert_eq!(
            rd(&mut r.t, REG_QUEUE_READY),
            0,
            "queue config before FEATURES_OK"
        );
        negotiate(&mut r.t);
        setup_queues(&mut r.t);
        assert_eq!(rd(&mut r.t, REG_QUEUE_READY), 1);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK | DOK);
        wr(&mut r.t, REG_QUEUE_SEL, 0);
        wr(&mut r.t, REG_QUEUE_READY, 0);
        assert_eq!(
            rd(&mut r.t, REG_QUEUE_READY),
            1,
            "queue config after DRIVER_OK"
        );
    }

    #[test]
    fn invalid_queue_sets_needs_reset() {
        let mut r = rig();
        negotiate(&mut r.t);
        setup_queues(&mut r.t);
        wr(&mut r.t, REG_QUEUE_SEL, 1);
        wr(&mut r.t, REG_QUEUE_DESC_LOW, 0xfff0_0000); // outside 1 MiB of guest memory
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK | DOK);
        let s = rd(&mut r.t, REG_STATUS);
        assert_eq!(s & DOK, 0);
        assert_ne!(s & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(r.dev.lock().unwrap().activations, 0);
        assert_eq!(r.irq.count(InterruptKind::Config), 1);
    }

    #[test]
    fn reset_and_reactivate() {
        let mut r = rig();
        negotiate(&mut r.t);
        setup_queues(&mut r.t);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK | DOK);
        r.irq.trigger(InterruptKind::Vring).unwrap();
        assert_eq!(rd(&mut r.t, REG_INTERRUPT_STATUS), 1);
        wr(&mut r.t, REG_STATUS, 0);
        assert_eq!(rd(&mut r.t, REG_STATUS), 0);
        assert_eq!(rd(&mut r.t, REG_INTERRUPT_STATUS), 0);
        wr(&mut r.t, REG_QUEUE_SEL, 0);
        assert_eq!(rd(&mut r.t, REG_QUEUE_READY), 0);
        {
            let d = r.dev.lock().unwrap();
            assert_eq!(d.resets, 1);
            assert!(!d.active);
            assert_eq!(d.acked, 0);
        }
        negotiate(&mut r.t);
        setup_queues(&mut r.t);
        wr(&mut r.t, REG_STATUS, ACK | DRV | FOK | DOK);
        assert_eq!(rd(&mut r.t, REG_STATUS), ACK | DRV | FOK | DOK);
        assert_eq!(r.dev.lock().unwrap().activations, 2);
    }

    #[test]
    fn interrupt_ack_clears_bits() {
        let mut r = rig();
        r.irq.trigger(InterruptKind::Vring).unwrap();
        r.irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(rd(&mut r.t, REG_INTERRUPT_STATUS), 3);
        wr(&mut r.t, REG_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut r.t, REG_INTERRUPT_STATUS), 2);
    }

    #[test]
    fn notify_signals_queue_event() {
        let mut r = rig();
        wr(&mut r.t, REG_QUEUE_NOTIFY, 1);
        wr(&mut r.t, REG_QUEUE_NOTIFY, 9); // no such queue: ignored
        let d = r.dev.lock().unwrap();
        assert_eq!(d.evts[1].read().unwrap(), 1);
        assert!(d.evts[0].read().is_err(), "queue 0 must not be signalled");
        drop(d);
        let fds = r.t.ioeventfds().unwrap();
        assert_eq!(fds.iter().map(|f| f.1).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn config_space_and_generation() {
        let mut r = rig();
        let mut b = [0u8; 2];
        r.t.read(CONFIG_SPACE + 2, &mut b);
        assert_eq!(b, [3, 4]);
        let mut past = [0xffu8; 4];
        r.t.read(CONFIG_SPACE + 6, &mut past);
        assert_eq!(past, [7, 8, 0, 0]);
        r.t.write(CONFIG_SPACE, &[9]); // before DRIVER: ignored
        assert_eq!(r.dev.lock().unwrap().config[0], 1);
        wr(&mut r.t, REG_STATUS, ACK);
        wr(&mut r.t, REG_STATUS, ACK | DRV);
        let g0 = rd(&mut r.t, REG_CONFIG_GENERATION);
        r.t.write(CONFIG_SPACE, &[9]);
        assert_eq!(r.dev.lock().unwrap().config[0], 9);
        assert_ne!(rd(&mut r.t, REG_CONFIG_GENERATION), g0);
    }

    #[test]
    fn bad_offsets_and_sizes() {
        let mut r = rig();
        let mut b = [0xaau8; 2];
        r.t.read(REG_MAGIC, &mut b); // 2-byte register read
        assert_eq!(b, [0, 0]);
        let mut b = [0xaau8; 4];
        r.t.read(REG_MAGIC + 1, &mut b); // unaligned
        assert_eq!(b, [0; 4]);
        r.t.read(0xe0, &mut b); // hole
        assert_eq!(b, [0; 4]);
        r.t.write(REG_STATUS, &[1, 0]); // short write ignored
        assert_eq!(rd(&mut r.t, REG_STATUS), 0);
        r.t.write(REG_STATUS + 2, &[1, 0, 0, 0]);
        assert_eq!(rd(&mut r.t, REG_STATUS), 0);
        wr(&mut r.t, REG_MAGIC, 5); // read-only
        assert_eq!(rd(&mut r.t, REG_MAGIC), MMIO_MAGIC);
        let mut big = [0u8; 8];
        r.t.read(REG_STATUS, &mut big);
        assert_eq!(big, [0; 8]);
    }

    #[test]
    fn cmdline_entry_format() {
        assert_eq!(
            cmdline_entry(0xd000_1000, 5),
            "virtio_mmio.device=4K@0xd0001000:5"
        );
    }

    /// The whole wiring contract with a real device: registers, queue-notify event, event
    /// loop, irqfd-style interrupt, reset and re-activation.
    #[test]
    fn drives_a_real_block_device_through_the_event_loop() {
        use crate::virtio::block::{Block, RawFile};
        use crate::virtio::test_utils::{mem, r, read, w, GuestQueue};
        use crate::virtio::IrqFdInterrupt;
        use event_manager::{EventManager, SubscriberOps};
        use std::io::Write;
        use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_IN};
        use vm_memory::Bytes;

        let file = vmm_sys_util::tempfile::TempFile::new().unwrap();
        file.as_file().write_all(&[0x42; 4096]).unwrap();
        let m = mem(0x10_0000);
        let disk = RawFile::from_file(file.as_file().try_clone().unwrap()).unwrap();
        let dev = Arc::new(Mutex::new(Block::new(Box::new(disk), false).unwrap()));
        let irq = Arc::new(IrqFdInterrupt::new().unwrap());
        let mut t = MmioTransport::new(m.clone(), dev.clone(), irq.clone()).unwrap();
        let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
        em.add_subscriber(dev.clone());

        for (round, base) in [(0u8, 0u64), (1, 0x4000)] {
            let mut q = GuestQueue::new(&m, base, 16);
            wr(&mut t, REG_STATUS, ACK);
            wr(&mut t, REG_STATUS, ACK | DRV);
            wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
            wr(&mut t, REG_DRIVER_FEATURES, 1 << VIRTIO_BLK_F_FLUSH);
            wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
            wr(&mut t, REG_DRIVER_FEATURES, 1);
            wr(&mut t, REG_STATUS, ACK | DRV | FOK);
            assert_eq!(rd(&mut t, REG_STATUS), ACK | DRV | FOK, "round {round}");
            let (d, a, u) = q.addrs();
            wr(&mut t, REG_QUEUE_SEL, 0);
            wr(&mut t, REG_QUEUE_NUM, 16);
            wr(&mut t, REG_QUEUE_DESC_LOW, d as u32);
            wr(&mut t, REG_QUEUE_DESC_HIGH, 0);
            wr(&mut t, REG_QUEUE_AVAIL_LOW, a as u32);
            wr(&mut t, REG_QUEUE_AVAIL_HIGH, 0);
            wr(&mut t, REG_QUEUE_USED_LOW, u as u32);
            wr(&mut t, REG_QUEUE_USED_HIGH, 0);
            wr(&mut t, REG_QUEUE_READY, 1);
            wr(&mut t, REG_STATUS, ACK | DRV | FOK | DOK);
            assert_eq!(
                rd(&mut t, REG_STATUS),
                ACK | DRV | FOK | DOK,
                "round {round}"
            );
            em.run_with_timeout(100).unwrap();

            m.write_obj(VIRTIO_BLK_T_IN, vm_memory::GuestAddress(0x1_0000))
                .unwrap();
            m.write_obj(0u64, vm_memory::GuestAddress(0x1_0008))
                .unwrap();
            let h = q.add(&[r(0x1_0000, 16), w(0x2_0000, 512), w(0x3_0000, 1)]);
            wr(&mut t, REG_QUEUE_NOTIFY, 0);
            em.run_with_timeout(100).unwrap();
            assert_eq!(q.take_used(), vec![(u32::from(h), 513)], "round {round}");
            assert_eq!(read(&m, 0x2_0000, 512), vec![0x42; 512]);
            assert_eq!(read(&m, 0x3_0000, 1), vec![0]);
            assert_eq!(irq.irq_evt().read().unwrap(), 1, "irqfd signalled");
            assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 1);
            wr(&mut t, REG_INTERRUPT_ACK, 1);
            assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
            m.write_slice(&[0u8; 512], vm_memory::GuestAddress(0x2_0000))
                .unwrap();

            // Driver reset: the device goes inactive and can be set up again.
            wr(&mut t, REG_STATUS, 0);
            assert!(!dev.lock().unwrap().is_activated());
        }
    }
}
