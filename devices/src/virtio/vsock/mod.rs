//! virtio-vsock with an in-process Unix-socket backend (no `/dev/vhost-vsock` needed).
//!
//! Built like Firecracker's: the device ([`Vsock`]) moves packets between the virtqueues and a
//! [`VsockBackend`]; the production backend is [`UnixMuxer`], which maps each guest stream
//! connection to a host Unix stream with a per-connection state machine and credit-based flow
//! control. See [`muxer`] for the host-side convention (`CONNECT <port>\n` / `<uds>_<port>`).

mod connection;
mod device;
mod event_handler;
pub mod muxer;
pub mod packet;

pub use device::Vsock;
pub use muxer::UnixMuxer;
pub use packet::PacketHeader;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use event_manager::EventSet;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Default guest CID.
pub const DEFAULT_GUEST_CID: u32 = 3;
/// Queue size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload of one packet.
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// Receive buffer each connection advertises to the guest (`buf_alloc`).
pub const CONN_BUF: u32 = 256 * 1024;
/// Event id of a transport reset on the event queue.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Errors of the vsock device and its backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{0} is in use by another listener")]
    InUse(PathBuf),
    #[error("Guest CID {0} is reserved")]
    ReservedCid(u32),
    #[error(transparent)]
    Virtio(#[from] super::Error),
}

/// Where guest packets go and host packets come from.
///
/// The device calls `send_pkt` for each guest packet, `recv_pkt` while it has rx buffers and
/// `has_pending_rx` says so, `notify` for epoll events on the fds listed by `interest`, and
/// closes the fds returned by `take_closed` after removing them from epoll.
pub trait VsockBackend: Send {
    /// A packet from the guest with its payload.
    fn send_pkt(&mut self, hdr: &PacketHeader, data: &[u8]);
    /// The next packet for the guest; its payload (`hdr.len` bytes) is put in `buf`, which is
    /// never empty.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<PacketHeader>;
    /// Whether `recv_pkt` may have something.
    fn has_pending_rx(&self) -> bool;
    /// Epoll `events` fired on `fd`.
    fn notify(&mut self, fd: RawFd, events: EventSet);
    /// The fds to watch and for what.
    fn interest(&self) -> Vec<(RawFd, EventSet)>;
    /// Fds of finished connections, to be removed from epoll and closed.
    fn take_closed(&mut self) -> Vec<OwnedFd>;
    /// Drop all connections (device reset).
    fn reset(&mut self);
    /// Number of live connections.
    fn connections(&self) -> usize;
    /// What the backend counts (connections, refusals), for the device's counters.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
