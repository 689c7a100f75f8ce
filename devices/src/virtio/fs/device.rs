//! The virtio-fs device: config space, queues and the event-loop side.

use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::server::Server;
use super::{FsError, QUEUE_SIZE, TAG_LEN};
use crate::virtio::common::{DeviceEvent, VirtioCommon};
use crate::virtio::persist::{check_device, DeviceKindState, DeviceSnapshot, PersistError};
use crate::virtio::{
    features, read_config_bytes, GuestMem, VirtioDevice, VirtioInterrupt, VIRTIO_ID_FS,
};

/// Queue index of the high-priority queue (FORGET, BATCH_FORGET, INTERRUPT).
pub const HIPRIO_QUEUE: usize = 0;
/// Queue index of the one request queue.
pub const REQUEST_QUEUE: usize = 1;
const NUM_QUEUES: usize = 2;
/// Config space: `tag[36]` (NUL-padded) and `num_request_queues` (le32).
const CONFIG_LEN: usize = TAG_LEN + 4;

/// A virtio-fs device with its FUSE server in the VMM process (see the module docs).
pub struct Fs {
    pub(super) common: VirtioCommon,
    config: [u8; CONFIG_LEN],
    pub(super) server: Server,
}

impl Fs {
    /// A virtio-fs device whose guest mount tag is `tag` (1..=36 bytes, no NUL) and whose
    /// root directory is synthetic: its entries are the shares added with
    /// [`Fs::add_share`]. Raises `RLIMIT_NOFILE` to fit [`super::MAX_INODES`] +
    /// [`super::MAX_HANDLES`] fds and some for the rest of the VMM (best effort): every inode
    /// and open file the guest holds is a host fd.
    pub fn new(tag: &str) -> Result<Fs, FsError> {
        let t = tag.as_bytes();
        if t.is_empty() || t.len() > TAG_LEN || t.contains(&0) {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..t.len()].copy_from_slice(t);
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        crate::limits::raise_nofile_limit((super::MAX_INODES + super::MAX_HANDLES + 1024) as u64);
        Ok(Fs {
            common: VirtioCommon::new("virtio-fs", NUM_QUEUES)?,
            config,
            server: Server::new(),
        })
    }

    /// Exports host `path` (a directory, or a single regular file, for file bind mounts
    /// such as `/etc/hosts`) as the root entry `name` (one path component of
    /// `[A-Za-z0-9._-]`, at most 255 bytes, not `.` or `..`). `path` comes from the VMM and
    /// is trusted: symlinks in it are followed, once, here; below it nothing is followed.
    /// May be called before or after activation.
    pub fn add_share(&mut self, name: &str, path: &Path, read_only: bool) -> Result<(), FsError> {
        self.server.fs.add_share(name, path, read_only)
    }

    /// Removes share `name`: it leaves the root, and the inodes and handles the guest still
    /// holds of it are closed (requests on them get `ESTALE`).
    pub fn remove_share(&mut self, name: &str) -> Result<(), FsError> {
        self.server.fs.remove_share(name)
    }

    /// The guest mount tag.
    pub fn tag(&self) -> String {
        let t = &self.config[..TAG_LEN];
        let end = t.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
        String::from_utf8_lossy(&t[..end]).into_owned()
    }

    /// Names of the current shares, sorted.
    pub fn shares(&self) -> Vec<String> {
        self.server.fs.shares()
    }

    /// Serves queue `q` (0: hiprio, 1: requests); returns the number of chains completed.
    pub fn process_queue(&mut self, q: usize) -> usize {
        let server = &mut self.server;
        self.common
            .serve_queue(q, |mem, descs| server.handle_chain(mem, descs))
    }
}

impl VirtioDevice for Fs {
    crate::virtio::common::forward_to_common!();
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }
    fn avail_features(&self) -> u64 {
        features(&[])
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.common.warn_config_write();
    }
    fn reset(&mut self) -> bool {
        self.common.reset();
        self.server.reset();
        true
    }
    /// Refused while the guest uses the filesystem: the FUSE session (node ids, handles,
    /// open host files) cannot be carried into another VMM. An inactive device, or one whose
    /// driver has not mounted it (no INIT, or DESTROY since), saves fine.
    fn save(&self) -> Result<DeviceSnapshot, PersistError> {
        let (inodes, handles) = self.server.fs.guest_held();
        if self.server.initialized() || inodes > 0 || handles > 0 {
            return Err(PersistError::NotSaveable {
                device: "virtio-fs",
                reason: format!(
                    "virtio-fs is mounted in the guest ({inodes} inodes, {handles} open handles); \
                     snapshot a VM whose shared filesystem is not mounted"
                ),
            });
        }
        Ok(self
            .common
            .snapshot(VIRTIO_ID_FS, DeviceKindState::Fs { tag: self.tag() }))
    }
    /// The tag must be this device's; the shares stay as configured here.
    fn restore(
        &mut self,
        snap: &DeviceSnapshot,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), PersistError> {
        let queues = check_device(self, snap, &mem)?;
        let DeviceKindState::Fs { tag } = &snap.kind else {
            return Err(PersistError::KindMismatch {
                saved: snap.kind.name(),
                this: "virtio-fs",
            });
        };
        if *tag != self.tag() {
            return Err(PersistError::FsTag {
                saved: tag.clone(),
                this: self.tag(),
            });
        }
        self.common
            .restore(snap.acked_features, queues, mem, interrupt)
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.handle_event(events.fd(), ops) {
            Some(DeviceEvent::Activate { .. }) => {
                self.process_queue(HIPRIO_QUEUE);
                self.process_queue(REQUEST_QUEUE);
            }
            Some(DeviceEvent::Queue(q)) => {
                self.process_queue(q);
            }
            None => {}
        }
    }
}
