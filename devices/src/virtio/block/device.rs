//! The virtio-blk device.

use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::request::{handle, Outcome};
use super::{DiskBackend, Error, RawFile, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::common::VirtioCommon;
use crate::virtio::{
    add_used, collect_chain, features, pop_chain, quiet, read_config_bytes, signal_used,
    Error as VirtioError, GuestMem, VirtioDevice, VirtioInterrupt, VIRTIO_ID_BLOCK,
};

/// Data segments per request offered to the driver (queue size minus header and status).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// A virtio-blk device over one disk.
pub struct Block {
    pub(super) disk: Box<dyn DiskBackend>,
    read_only: bool,
    config: [u8; 16],
    avail: u64,
    pub(super) common: VirtioCommon,
    buf: Vec<u8>,
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
            config,
            avail: features(&bits),
            common: VirtioCommon::new("virtio-blk", 1)?,
            buf: Vec::new(),
        })
    }

    /// A device over the raw image at `path`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        Self::new(Box::new(RawFile::open(path, read_only)?), read_only)
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(c)
    }

    /// Service the request queue; returns the number of chains completed.
    pub fn process_queue(&mut self) -> usize {
        let Some(st) = self.common.state.as_mut() else {
            return 0;
        };
        let mem = st.mem.clone();
        let mut done = 0;
        let mut notify = false;
        quiet(&mut st.queues[0], &mem);
        while let Some(chain) = pop_chain(&mut st.queues[0], &mem) {
            let head = chain.head_index();
            let out = match collect_chain(chain, &mem) {
                Ok(descs) => handle(
                    &descs,
                    &mem,
                    self.disk.as_mut(),
                    self.read_only,
                    &mut self.buf,
                ),
                Err(e) => {
                    log::warn!("virtio-blk: {e}");
                    Outcome {
                        status: None,
                        used_len: 0,
                    }
                }
            };
            notify |= add_used(&mut st.queues[0], &mem, head, out.used_len);
            done += 1;
        }
        if notify {
            signal_used(st.interrupt.as_ref());
        }
        done
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn avail_features(&self) -> u64 {
        self.avail
    }
    fn acked_features(&self) -> u64 {
        self.common.acked
    }
    fn set_acked_features(&mut self, features: u64) {
        self.common.acked = features;
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.common.queue_evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.common.warn_config_write();
    }
    fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), VirtioError> {
        self.common.activate(mem, queues, interrupt)
    }
    fn reset(&mut self) -> bool {
        self.common.reset();
        true
    }
    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }
}
