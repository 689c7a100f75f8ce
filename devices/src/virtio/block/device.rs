//! The virtio-blk device.

use std::path::Path;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};

use super::request::handle;
use super::{DiskBackend, Error, NoMedium, RawFile, QUEUE_SIZE, SECTOR_SIZE};
use crate::rate_limiter::RateLimiter;
use crate::virtio::common::VirtioCommon;
use crate::virtio::persist::{check_device, DeviceKindState, DeviceSnapshot, PersistError};
use crate::virtio::{
    features, read_config_bytes, GuestMem, InterruptKind, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
};

/// Data segments per request offered to the driver (queue size minus header and status).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// A virtio-blk device over one disk, or a slot that holds none yet ([`Block::empty`]).
pub struct Block {
    pub(super) disk: Box<dyn DiskBackend>,
    read_only: bool,
    /// Whether a disk is in the slot (always, for a device made with a disk).
    medium: bool,
    config: [u8; 16],
    /// Bumped at every medium change (see [`VirtioDevice::config_generation`]).
    generation: u32,
    avail: u64,
    pub(super) common: VirtioCommon,
    buf: Vec<u8>,
    /// Requests wait for its tokens ([`Block::set_rate_limiter`]).
    pub(super) limiter: Option<RateLimiter>,
}

impl Block {
    /// A device over `disk`; `read_only` offers `VIRTIO_BLK_F_RO` and refuses writes.
    pub fn new(disk: Box<dyn DiskBackend>, read_only: bool) -> Result<Self, Error> {
        let capacity = disk.size() / SECTOR_SIZE;
        // Config: capacity (u64), size_max (u32, not offered), seg_max (u32).
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        let mut bits = vec![VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX];
        if read_only {
            bits.push(VIRTIO_BLK_F_RO);
        }
        Ok(Block {
            disk,
            read_only,
            medium: true,
            config,
            generation: 0,
            avail: features(&bits),
            common: VirtioCommon::new("virtio-blk", 1)?,
            buf: Vec::new(),
            limiter: None,
        })
    }

    /// A device over the raw image at `path`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        Self::new(Box::new(RawFile::open(path, read_only)?), read_only)
    }

    /// An empty slot: capacity 0 until a disk is inserted. The guest sees the device (and
    /// its `/dev/vdX`) from boot; an insert changes the capacity and raises a config
    /// interrupt, so a running guest can get disks without device hotplug (as Kata does with
    /// Firecracker's placeholder drives). Slots never offer `VIRTIO_BLK_F_RO` (features are
    /// fixed at boot): a disk inserted read-only has its writes refused by the device.
    pub fn empty() -> Result<Self, Error> {
        let mut b = Self::new(Box::new(NoMedium), false)?;
        b.medium = false;
        Ok(b)
    }

    /// Whether a disk is in the slot.
    pub fn has_medium(&self) -> bool {
        self.medium
    }

    /// Put `disk` into this empty slot and tell the driver.
    pub fn insert(&mut self, disk: Box<dyn DiskBackend>, read_only: bool) -> Result<(), Error> {
        if self.medium {
            return Err(Error::SlotInUse);
        }
        self.disk = disk;
        self.read_only = read_only;
        self.medium = true;
        self.media_changed();
        Ok(())
    }

    /// Take the disk out of the slot (the guest must have stopped using it) and tell the
    /// driver. Requests then fail with `IOERR`.
    pub fn eject(&mut self) -> Result<(), Error> {
        if !self.medium {
            return Err(Error::SlotEmpty);
        }
        // Written data must reach the file before it is handed back.
        self.disk.flush().map_err(Error::Flush)?;
        self.disk = Box::new(NoMedium);
        self.read_only = false;
        self.medium = false;
        self.media_changed();
        Ok(())
    }

    fn media_changed(&mut self) {
        let capacity = self.disk.size() / SECTOR_SIZE;
        self.config[..8].copy_from_slice(&capacity.to_le_bytes());
        self.generation = self.generation.wrapping_add(1);
        if let Some(st) = self.common.state.as_ref() {
            if let Err(e) = st.interrupt.trigger(InterruptKind::Config) {
                log::error!("virtio-blk: cannot raise the config interrupt: {e}");
            }
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(c)
    }

    /// Limits the guest's requests: one operation each, and the bytes of its data buffers
    /// (the header and status byte not counted). Set before the VM runs (the event loop
    /// registers the limiter's timer when the device is added to it).
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = Some(limiter);
    }

    /// The rate limiter's timer (readable when a throttled device may go on), if limited.
    pub fn rate_timer_fd(&self) -> Option<std::os::fd::RawFd> {
        self.limiter.as_ref().map(RateLimiter::timer_fd)
    }

    /// The rate limiter's timer fired (its fd is readable): serve what waited. Returns the
    /// number of chains completed.
    pub fn on_rate_timer(&mut self) -> usize {
        if let Some(l) = self.limiter.as_mut() {
            l.on_timer();
        }
        self.process_queue()
    }

    /// How many times a request waited for the rate limiter.
    pub fn throttled(&self) -> u64 {
        self.limiter.as_ref().map_or(0, RateLimiter::throttled)
    }

    /// Service the request queue; returns the number of chains completed. With a rate
    /// limiter, stops at the first request it has no tokens for (its timer resumes).
    pub fn process_queue(&mut self) -> usize {
        let (disk, read_only, buf) = (self.disk.as_mut(), self.read_only, &mut self.buf);
        let limiter = &mut self.limiter;
        if limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            return 0;
        }
        // A malformed chain moves no data but is one request (an `ops` token).
        let admit = |descs: Option<&[Descriptor]>| match limiter.as_mut() {
            None => true,
            Some(l) => l.consume(descs.map_or(0, data_bytes)),
        };
        self.common
            .serve_queue_while(0, admit, |mem, descs| match descs {
                Ok(descs) => handle(&descs, mem, disk, read_only, buf).used_len,
                Err(_) => 0,
            })
    }
}

/// The bytes a request moves: its descriptors but the first (header) and last (status).
fn data_bytes(descs: &[Descriptor]) -> u64 {
    match descs {
        [_, data @ .., _] => data.iter().map(|d| u64::from(d.len())).sum(),
        _ => 0,
    }
}

impl VirtioDevice for Block {
    crate::virtio::common::forward_to_common!();
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn avail_features(&self) -> u64 {
        self.avail
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.common.warn_config_write();
    }
    fn reset(&mut self) -> bool {
        self.common.reset();
        true
    }
    fn config_generation(&self) -> u32 {
        self.generation
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("requests_throttled", self.throttled())]
    }
    fn save(&self) -> Result<DeviceSnapshot, PersistError> {
        Ok(self.common.snapshot(
            VIRTIO_ID_BLOCK,
            DeviceKindState::Block {
                medium: self.medium,
                capacity_sectors: self.capacity(),
                read_only: self.read_only,
                generation: self.generation,
            },
        ))
    }
    /// Keeps this device's disk. When it is not what the guest saw (a slot filled or emptied
    /// differently, another capacity), the guest is told as on a medium change: the
    /// generation moves on and, on an active device, a config interrupt is raised.
    fn restore(
        &mut self,
        snap: &DeviceSnapshot,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), PersistError> {
        let queues = check_device(self, snap, &mem)?;
        let DeviceKindState::Block {
            medium,
            capacity_sectors,
            generation,
            ..
        } = snap.kind
        else {
            return Err(PersistError::KindMismatch {
                saved: snap.kind.name(),
                this: "virtio-blk",
            });
        };
        // A negotiated driver that did not get VIRTIO_BLK_F_RO believes the disk writable.
        // (The other way round, RO acked but not offered, fails the generic feature check.)
        let ro = 1u64 << VIRTIO_BLK_F_RO;
        let negotiated = snap.acked_features & (1u64 << VIRTIO_F_VERSION_1) != 0;
        if negotiated && self.avail & ro != 0 && snap.acked_features & ro == 0 {
            return Err(PersistError::Incompatible {
                device: "virtio-blk",
                reason: "this disk is read-only, but the guest negotiated a writable one"
                    .to_string(),
            });
        }
        self.common
            .restore(snap.acked_features, queues, mem, interrupt)?;
        self.generation = generation;
        if medium != self.medium || capacity_sectors != self.capacity() {
            log::info!(
                "virtio-blk: restored with another disk ({} sectors, was {capacity_sectors}); telling the guest",
                self.capacity()
            );
            self.media_changed();
        }
        Ok(())
    }
}
