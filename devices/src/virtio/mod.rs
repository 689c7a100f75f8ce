//! Virtio devices on the MMIO transport.
//!
//! Shape (after Firecracker's `devices/virtio/`): the [`VirtioDevice`] trait is what a device
//! implements; [`mmio::MmioTransport`] is the virtio-mmio (version 2) register file the guest
//! programs and that activates the device; each device lives in its own module (`block/`,
//! `fs/`, `net/`, `vsock/`, `rng.rs`) and is an event-manager `MutEventSubscriber` that
//! services its queues from the VMM's event loop.
//!
//! Interrupts go through [`VirtioInterrupt`]: production uses [`IrqFdInterrupt`] (an `EventFd`
//! the VMM registers as a KVM irqfd), tests use [`CountingInterrupt`].
//!
//! See [`mmio`] for the wiring contract with the VMM, and [`persist`] for snapshots
//! ([`VirtioDevice::save`] / [`VirtioDevice::restore`]).

pub mod block;
mod common;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod rng;
pub mod vsock;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
pub use virtio_bindings::virtio_ids::{
    VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_ID_VSOCK,
};
pub use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Guest memory type every device works on.
pub type GuestMem = GuestMemoryMmap;

/// Errors of the virtio core (activation, interrupts, descriptor chains).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Device activated twice")]
    AlreadyActivated,
    #[error("Expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("Failed to signal the device's activate event")]
    ActivateEvent(#[source] io::Error),
    #[error("Failed to create an event fd")]
    EventFd(#[source] io::Error),
    #[error("Failed to trigger the interrupt")]
    Interrupt(#[source] io::Error),
}

/// Which interrupt cause a device raises (bit in the MMIO InterruptStatus register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// A used ring was updated.
    Vring,
    /// The configuration space changed.
    Config,
}

impl InterruptKind {
    /// The InterruptStatus bit for this kind.
    pub fn bit(self) -> u32 {
        match self {
            InterruptKind::Vring => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// How a device interrupts the guest. The status word is shared with the transport: the
/// device sets bits, the guest reads them from InterruptStatus and clears them via
/// InterruptACK.
pub trait VirtioInterrupt: Send + Sync {
    /// Set the status bit for `kind` and inject the interrupt.
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
    /// The InterruptStatus word.
    fn status(&self) -> Arc<AtomicU32>;
}

/// Production interrupt: sets the status bit and writes an `EventFd` that the VMM registers
/// as a KVM irqfd for the device's GSI.
#[derive(Debug)]
pub struct IrqFdInterrupt {
    status: Arc<AtomicU32>,
    evt: EventFd,
}

impl IrqFdInterrupt {
    /// A new interrupt with its own non-blocking `EventFd`.
    pub fn new() -> Result<Self, Error> {
        Ok(IrqFdInterrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
        })
    }

    /// The `EventFd` to register with `KVM_IRQFD`.
    pub fn irq_evt(&self) -> &EventFd {
        &self.evt
    }
}

impl VirtioInterrupt for IrqFdInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.status.fetch_or(kind.bit(), Ordering::SeqCst);
        self.evt.write(1)
    }

    fn status(&self) -> Arc<AtomicU32> {
        self.status.clone()
    }
}

/// Test interrupt: counts triggers per kind.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    status: Arc<AtomicU32>,
    vring: AtomicU64,
    config: AtomicU64,
}

impl CountingInterrupt {
    /// A new counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `kind` was triggered.
    pub fn count(&self, kind: InterruptKind) -> u64 {
        match kind {
            InterruptKind::Vring => self.vring.load(Ordering::SeqCst),
            InterruptKind::Config => self.config.load(Ordering::SeqCst),
        }
    }
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.status.fetch_or(kind.bit(), Ordering::SeqCst);
        match kind {
            InterruptKind::Vring => self.vring.fetch_add(1, Ordering::SeqCst),
            InterruptKind::Config => self.config.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }

    fn status(&self) -> Arc<AtomicU32> {
        self.status.clone()
    }
}

/// The name of virtio device id `id` (`virtio-blk`, ...), as logs and counters say it.
pub fn device_type_name(id: u32) -> &'static str {
    match id {
        VIRTIO_ID_NET => "virtio-net",
        VIRTIO_ID_BLOCK => "virtio-blk",
        VIRTIO_ID_RNG => "virtio-rng",
        VIRTIO_ID_VSOCK => "virtio-vsock",
        VIRTIO_ID_FS => "virtio-fs",
        _ => "virtio",
    }
}

/// A virtio device as the MMIO transport sees it.
///
/// The transport calls `activate` once the driver sets DRIVER_OK with valid queues; the device
/// then signals its activate event so that its event-loop side registers queue and backend fds.
/// `reset` (status 0 written by the driver) returns the device to the inactive state; it may be
/// activated again afterwards.
pub trait VirtioDevice: Send {
    /// Virtio device id (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Features offered to the driver (always includes `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (set by the transport at FEATURES_OK).
    fn acked_features(&self) -> u64;
    /// Record the accepted features.
    fn set_acked_features(&mut self, features: u64);
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One `EventFd` per queue, signalled when the driver notifies that queue. The VMM
    /// registers each as a KVM ioeventfd on QueueNotify with datamatch = queue index.
    fn queue_events(&self) -> &[EventFd];
    /// Read from the device configuration space (offset relative to its start). Bytes past
    /// the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write to the device configuration space; ignored by devices with read-only config.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start the device with the driver-configured queues.
    fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), Error>;
    /// Stop the device and drop its queues. Returns false when the device cannot be reset.
    fn reset(&mut self) -> bool;
    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool;
    /// What the device counted that tells how its guest behaves (frames dropped, requests
    /// that waited for a rate limiter), as `(name, value)` pairs; none by default.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Bumped by the device whenever it changes its own configuration space (a disk
    /// inserted into a block slot); the transport adds it to ConfigGeneration so the driver
    /// sees a consistent snapshot.
    fn config_generation(&self) -> u32 {
        0
    }
    /// The device's state for a snapshot (called with the VM paused and the event loop
    /// quiet). Fails for a device whose state cannot be carried over (a mounted virtio-fs).
    fn save(&self) -> Result<persist::DeviceSnapshot, persist::PersistError>;
    /// Bring a freshly built device (same type, this VM's backends) to `snap`: acked
    /// features, kind state, and when `snap.active_queues` is Some, activate with those queues
    /// on `mem`/`interrupt` (so its event-loop side registers fds as on a normal activation).
    /// Checks everything first: on an error the device is left as it was.
    fn restore(
        &mut self,
        snap: &persist::DeviceSnapshot,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), persist::PersistError>;
}

/// Queues, memory and interrupt of an activated device.
pub(crate) struct ActiveState {
    pub mem: GuestMem,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// `VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_INDIRECT_DESC` (chains are walked by virtio-queue,
/// which follows indirect tables) and `VIRTIO_RING_F_EVENT_IDX` (the transport switches the
/// queues to it; devices use [`pop_chain`]) plus the given feature bits.
pub(crate) fn features(bits: &[u32]) -> u64 {
    let base = (1u64 << VIRTIO_F_VERSION_1)
        | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1u64 << VIRTIO_RING_F_EVENT_IDX);
    bits.iter().fold(base, |acc, b| acc | (1u64 << b))
}

/// Creates `n` non-blocking event fds.
pub(crate) fn new_events(n: usize) -> Result<Vec<EventFd>, Error> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd))
        .collect()
}

/// Common checks for `activate`.
pub(crate) fn check_activation(
    activated: bool,
    expected: usize,
    queues: &[Queue],
) -> Result<(), Error> {
    if activated {
        return Err(Error::AlreadyActivated);
    }
    if queues.len() != expected {
        return Err(Error::QueueCount {
            expected,
            got: queues.len(),
        });
    }
    Ok(())
}

/// Why a descriptor chain was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("Descriptor chain loops or is longer than the queue")]
    Loop,
    #[error("Descriptor points outside guest memory")]
    OutOfMemory,
    #[error("Descriptor chain is empty")]
    Empty,
    #[error("Descriptor chain is malformed")]
    Malformed,
}

/// Walks a chain into a list of descriptors, checking that every buffer lies inside guest
/// memory and that the chain terminates (a loop shows up as a chain that is cut off by the
/// queue-size limit while still claiming a next descriptor).
pub(crate) fn collect_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMem,
) -> Result<Vec<Descriptor>, ChainError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut out = Vec::new();
    let mut last_has_next = false;
    for desc in chain {
        if !vm_memory::GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
            return Err(ChainError::OutOfMemory);
        }
        last_has_next = desc.has_next();
        out.push(desc);
    }
    if last_has_next {
        return Err(ChainError::Loop);
    }
    if out.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(out)
}

/// Pops the next available chain. When the ring is empty, re-enables guest notifications
/// (clears `VRING_USED_F_NO_NOTIFY`, or publishes `avail_event` with `EVENT_IDX`) and looks
/// once more, so a buffer added meanwhile is not missed.
///
/// A ring the device cannot read (its avail index runs more than the queue's size ahead of
/// the device, or lies outside guest memory) is a broken driver: `name`'s warning says so once
/// and the queue is not served again until the driver resets the device (a reset makes new
/// queues), so a guest that keeps notifying cannot flood the log.
pub(crate) fn pop_chain<'a>(
    q: &mut Queue,
    mem: &'a GuestMem,
    name: &str,
) -> Option<DescriptorChain<&'a GuestMem>> {
    if !q.ready() {
        return None;
    }
    for _ in 0..2 {
        match q.iter(mem) {
            Ok(mut it) => {
                if let Some(c) = it.next() {
                    return Some(c);
                }
            }
            Err(e) => {
                log::warn!(
                    "{name}: unusable avail ring ({e}); the queue is stopped until the driver resets the device"
                );
                q.set_ready(false);
                return None;
            }
        }
        if !matches!(q.enable_notification(mem), Ok(true)) {
            return None;
        }
    }
    None
}

/// Tells the driver not to notify while the device is draining the queue (no-op with
/// `EVENT_IDX`, where [`pop_chain`] moves `avail_event` instead).
pub(crate) fn quiet(q: &mut Queue, mem: &GuestMem) {
    if let Err(e) = q.disable_notification(mem) {
        log::warn!("Failed to disable queue notifications: {e}");
    }
}

/// Puts `head` on the used ring with `len` bytes written; returns whether the guest wants an
/// interrupt.
pub(crate) fn add_used(q: &mut Queue, mem: &GuestMem, head: u16, len: u32) -> bool {
    if let Err(e) = q.add_used(mem, head, len) {
        log::error!("Failed to add used descriptor {head}: {e}");
        return false;
    }
    q.needs_notification(mem).unwrap_or(true)
}

/// Raises a vring interrupt, logging failures.
pub(crate) fn signal_used(interrupt: &dyn VirtioInterrupt) {
    if let Err(e) = interrupt.trigger(InterruptKind::Vring) {
        log::error!("Failed to signal used queue: {e}");
    }
}

/// Reads `data.len()` bytes of a config space held as bytes, zero-filling past the end.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
