//! virtio-net over a TAP device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
//!
//! No offloads are negotiated, so every frame carries a 12-byte `virtio_net_hdr_v1` that is
//! passed between the guest and the TAP device unchanged (the TAP device is configured with the
//! same header size); the device sets `num_buffers = 1` on received frames. Frames the guest
//! cannot take wait in the device until it posts rx buffers; a frame larger than the rx buffer
//! is dropped, as a NIC would.
//!
//! A device can also have no backend at all ([`Net::detached`]): a NIC without a cable, which
//! receives nothing and drops what the guest sends (a VM template's placeholder, whose
//! restored VMs attach their own TAP).

mod device;
mod event_handler;
mod tap;

pub use device::Net;
pub use tap::Tap;

use std::io;
use std::os::fd::AsRawFd;

/// Size of the virtio-net header with `VIRTIO_F_VERSION_1`.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame including the header (64 KiB of payload, Ethernet header, vnet header).
pub const MAX_FRAME: usize = 65562;
/// Queue size of rx and tx.
pub const QUEUE_SIZE: u16 = 256;

/// Errors of the net device and its TAP backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    TapName(String),
    #[error("Failed to create TAP device {name}")]
    CreateTap {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("Failed to configure TAP device {name}")]
    ConfigureTap {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Virtio(#[from] super::Error),
}

/// Frame I/O of the host side; the fd must be non-blocking and is polled for readability
/// (edge triggered: the device reads until `WouldBlock`).
pub trait NetBackend: AsRawFd + Send {
    /// Read one frame (vnet header included) into `buf`.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame (vnet header included).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
}

#[cfg(test)]
mod tests;
