//! virtio-blk: a raw disk image behind [`DiskBackend`], served from the event loop.
//!
//! Supported requests: read (`T_IN`), write (`T_OUT`), flush and get-id; everything else is
//! answered `VIRTIO_BLK_S_UNSUPP`. Read-only disks offer `VIRTIO_BLK_F_RO` and fail writes
//! with `VIRTIO_BLK_S_IOERR`. Malformed chains get `IOERR` when a status byte can be written,
//! and are returned with length 0 when not.

mod device;
mod disk;
mod event_handler;
mod request;

pub use device::Block;
pub use disk::{DiskBackend, NoMedium, RawFile};
pub use request::{RequestError, RequestType};

use std::io;

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the device id returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = 20;

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to open disk image {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to read disk image metadata")]
    Metadata(#[source] io::Error),
    #[error("The disk slot already holds a disk")]
    SlotInUse,
    #[error("The disk slot is empty")]
    SlotEmpty,
    #[error("Failed to flush the disk before ejecting it")]
    Flush(#[source] io::Error),
    #[error(transparent)]
    Virtio(#[from] super::Error),
}

#[cfg(test)]
mod tests;
