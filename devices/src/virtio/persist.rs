//! Snapshot state of virtio devices and their MMIO transport (after Firecracker's `persist`).
//!
//! A snapshot is taken with the VM paused and the event loop quiet: every chain a device
//! popped is then on the used ring, so a device's state is its acked features, the positions
//! of its own queue copies (`next_avail`/`next_used`) and what is specific to its type
//! ([`DeviceKindState`]). Backends (disk files, TAP devices, host sockets, shared
//! directories) are not part of it: a restored VM gets devices built from its own
//! configuration, and [`crate::virtio::VirtioDevice::restore`] brings each one to the saved
//! state. [`crate::virtio::mmio::MmioTransport::restore`] does the same for the register file
//! and restores its device.
//!
//! Restores validate everything before they change anything: a snapshot that does not fit
//! the device leaves it in its reset state.

use virtio_queue::{Queue, QueueState, QueueT};

use super::{GuestMem, VirtioDevice};

/// virtio-queue's `QueueState`, serializable (same fields).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// The maximum size in elements offered by the device.
    pub max_size: u16,
    /// Tail position of the available ring (next entry the device reads).
    pub next_avail: u16,
    /// Head position of the used ring (next entry the device writes).
    pub next_used: u16,
    /// `VIRTIO_F_RING_EVENT_IDX` negotiated.
    pub event_idx_enabled: bool,
    /// The queue size the driver selected.
    pub size: u16,
    /// Whether the driver finished configuring the queue.
    pub ready: bool,
    /// Guest physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest physical address of the available ring.
    pub avail_ring: u64,
    /// Guest physical address of the used ring.
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        QueueSnapshot {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        q.state().into()
    }
}

impl QueueSnapshot {
    /// The virtio-queue state with these fields.
    pub fn state(&self) -> QueueState {
        QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        }
    }

    /// A queue in this state, validated by virtio-queue (maximum size, size a power of two
    /// not above it, ring alignment).
    pub fn to_queue(&self) -> Result<Queue, PersistError> {
        Queue::try_from(self.state()).map_err(PersistError::QueueState)
    }
}

/// What is specific to one device type.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceKindState {
    /// virtio-blk: what the guest last saw of the disk.
    Block {
        /// Whether a disk was in the slot.
        medium: bool,
        /// Capacity in 512-byte sectors in the config space.
        capacity_sectors: u64,
        /// Whether writes were refused.
        read_only: bool,
        /// The device's config generation (bumped at every medium change).
        generation: u32,
    },
    /// virtio-net: the MAC in the config space.
    Net { mac: [u8; 6] },
    /// virtio-vsock: the guest's CID (informational: a restored device keeps its own and
    /// tells the guest with a transport reset).
    Vsock { guest_cid: u64 },
    /// virtio-rng: nothing.
    Rng,
    /// virtio-fs: the mount tag.
    Fs { tag: String },
}

impl DeviceKindState {
    /// The name of the kind, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            DeviceKindState::Block { .. } => "virtio-blk",
            DeviceKindState::Net { .. } => "virtio-net",
            DeviceKindState::Vsock { .. } => "virtio-vsock",
            DeviceKindState::Rng => "virtio-rng",
            DeviceKindState::Fs { .. } => "virtio-fs",
        }
    }
}

/// The state of one virtio device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceSnapshot {
    /// `VIRTIO_ID_*`.
    pub device_type: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The device's own queue copies (their next_avail/next_used) when activated; None when
    /// inactive.
    pub active_queues: Option<Vec<QueueSnapshot>>,
    /// What is specific to the device type.
    pub kind: DeviceKindState,
}

/// The state of a virtio-mmio transport and its device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportSnapshot {
    /// The device status register.
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    /// Features the driver wrote (acked at FEATURES_OK).
    pub driver_features: u64,
    pub queue_sel: u32,
    /// The transport's part of ConfigGeneration (the device adds its own).
    pub config_generation: u32,
    /// The InterruptStatus word: interrupts raised that the guest has not acknowledged.
    pub interrupt_status: u32,
    /// The transport's register view of each queue.
    pub queues: Vec<QueueSnapshot>,
    /// The device behind the transport.
    pub device: DeviceSnapshot,
}

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(
        "Device type mismatch: the snapshot is of device type {saved}, this device is type {this}"
    )]
    DeviceType { saved: u32, this: u32 },
    #[error("Queue count mismatch: the snapshot has {saved} queues, this device has {this}")]
    QueueCount { saved: usize, this: usize },
    #[error("Queue {index} max size mismatch: the snapshot has {saved}, this device has {this}")]
    QueueMaxSize { index: usize, saved: u16, this: u16 },
    #[error("Invalid queue state")]
    QueueState(#[source] virtio_queue::Error),
    #[error("Invalid state of queue {index}: {reason}")]
    InvalidQueue { index: usize, reason: String },
    #[error("Queue {index} is not ready or lies outside guest memory")]
    QueueOutsideMemory { index: usize },
    #[error(
        "The driver accepted features {acked:#x} that this device does not offer (it offers {avail:#x})"
    )]
    Features { acked: u64, avail: u64 },
    #[error("The snapshot holds {saved} state for a {this} device")]
    KindMismatch {
        saved: &'static str,
        this: &'static str,
    },
    #[error("Cannot save {device} in its current state: {reason}")]
    NotSaveable {
        device: &'static str,
        reason: String,
    },
    #[error("{device}: {reason}")]
    Incompatible {
        device: &'static str,
        reason: String,
    },
    #[error("virtio-fs tag mismatch: the snapshot has {saved:?}, this device has {this:?}")]
    FsTag { saved: String, this: String },
    #[error("Invalid transport state: {0}")]
    InvalidTransport(String),
    #[error("Restore needs a device in its reset state; this one is {0}")]
    NotFresh(&'static str),
    #[error("Failed to activate the restored device")]
    Activate(#[source] super::Error),
}

/// Checks that `queues` fit a device with queue maximum sizes `max_sizes` and each converts
/// into a valid `Queue`; returns the queues.
pub(crate) fn check_queues(
    queues: &[QueueSnapshot],
    max_sizes: &[u16],
) -> Result<Vec<Queue>, PersistError> {
    if queues.len() != max_sizes.len() {
        return Err(PersistError::QueueCount {
            saved: queues.len(),
            this: max_sizes.len(),
        });
    }
    queues
        .iter()
        .zip(max_sizes)
        .enumerate()
        .map(|(index, (q, &max))| {
            if q.max_size != max {
                return Err(PersistError::QueueMaxSize {
                    index,
                    saved: q.max_size,
                    this: max,
                });
            }
            Queue::try_from(q.state()).map_err(|e| PersistError::InvalidQueue {
                index,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// The generic checks of [`VirtioDevice::restore`]: device type, acked features offered by
/// `dev`, and, for an active snapshot, queues that fit `dev`, lie in `mem` and hold no more
/// chains in flight than their size. Returns the queues to activate with. Changes nothing.
pub(crate) fn check_device<D: VirtioDevice + ?Sized>(
    dev: &D,
    snap: &DeviceSnapshot,
    mem: &GuestMem,
) -> Result<Option<Vec<Queue>>, PersistError> {
    if snap.device_type != dev.device_type() {
        return Err(PersistError::DeviceType {
            saved: snap.device_type,
            this: dev.device_type(),
        });
    }
    if dev.is_activated() {
        return Err(PersistError::NotFresh("activated"));
    }
    let avail = dev.avail_features();
    if snap.acked_features & !avail != 0 {
        return Err(PersistError::Features {
            acked: snap.acked_features,
            avail,
        });
    }
    let Some(saved) = &snap.active_queues else {
        return Ok(None);
    };
    let queues = check_queues(saved, dev.queue_max_sizes())?;
    for (index, q) in queues.iter().enumerate() {
        if !q.is_valid(mem) {
            return Err(PersistError::QueueOutsideMemory { index });
        }
        // Chains popped but not yet used; never more than the queue holds.
        let in_flight = q.next_avail().wrapping_sub(q.next_used());
        if in_flight > q.size() {
            return Err(PersistError::InvalidQueue {
                index,
                reason: format!(
                    "next_avail {} is {in_flight} entries past next_used {}, more than the queue size {}",
                    q.next_avail(),
                    q.next_used(),
                    q.size()
                ),
            });
        }
    }
    Ok(Some(queues))
}

#[cfg(test)]
mod tests;
