//! The virtio-vsock device: rx (0), tx (1) and event (2) queues around a [`VsockBackend`].

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::QueueOwnedT;
use vm_memory::Bytes;

use super::packet::{read_tx, rx_capacity, write_rx};
use super::{Error, UnixMuxer, VsockBackend, EVENT_TRANSPORT_RESET, MAX_PKT_DATA, QUEUE_SIZE};
use crate::virtio::common::VirtioCommon;
use crate::virtio::persist::{check_device, DeviceKindState, DeviceSnapshot, PersistError};
use crate::virtio::{
    add_used, collect_chain, features, pop_chain, quiet, read_config_bytes, signal_used, GuestMem,
    VirtioDevice, VirtioInterrupt, VIRTIO_ID_VSOCK,
};

pub(super) const RXQ: usize = 0;
pub(super) const TXQ: usize = 1;
pub(super) const EVQ: usize = 2;

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    pub(super) backend: Box<dyn VsockBackend>,
    /// Its activate event is also signalled on reset, so the event loop re-syncs its fds.
    pub(super) common: VirtioCommon,
    pub(super) registered: HashMap<RawFd, EventSet>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// A transport reset waits for an event buffer (see [`Vsock::send_transport_reset`]).
    pub(super) reset_pending: bool,
}

impl Vsock {
    /// A device for guest `guest_cid` over `backend`.
    pub fn new(guest_cid: u32, backend: Box<dyn VsockBackend>) -> Result<Self, Error> {
        if guest_cid <= 2 || guest_cid == u32::MAX {
            return Err(Error::ReservedCid(guest_cid));
        }
        Ok(Vsock {
            guest_cid: u64::from(guest_cid),
            backend,
            common: VirtioCommon::new("vsock", 3)?,
            registered: HashMap::new(),
            rx_buf: vec![0; MAX_PKT_DATA],
            tx_buf: Vec::new(),
            reset_pending: false,
        })
    }

    /// A device whose host side is a Unix socket at `uds_path` (see [`UnixMuxer`]).
    /// Makes room under `RLIMIT_NOFILE` for the muxer's descriptors beside the rest of the
    /// process (a busybox init hands out 1024: a guest's full set of connections would not fit).
    pub fn unix(guest_cid: u32, uds_path: &Path) -> Result<Self, Error> {
        crate::limits::raise_nofile_limit((super::muxer::MAX_FDS + 1024) as u64);
        Self::new(guest_cid, Box::new(UnixMuxer::new(guest_cid, uds_path)?))
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Move backend packets into guest rx buffers; returns whether any buffer was used.
    pub fn process_rx(&mut self) -> bool {
        let Some(st) = self.common.state.as_mut() else {
            return false;
        };
        let mem = st.mem.clone();
        let mut used = false;
        let mut notify = false;
        while self.backend.has_pending_rx() {
            let Some(chain) = pop_chain(&mut st.queues[RXQ], &mem, "vsock") else {
                break;
            };
            let head = chain.head_index();
            let descs = match collect_chain(chain, &mem) {
                Ok(d) => d,
                Err(e) => {
                    log::warn!("vsock: rx chain dropped: {e}");
                    notify |= add_used(&mut st.queues[RXQ], &mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let cap = match rx_capacity(&descs) {
                Ok(c) if c > 0 => c,
                Ok(_) | Err(_) => {
                    log::warn!("vsock: unusable rx buffer dropped");
                    notify |= add_used(&mut st.queues[RXQ], &mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let Some(hdr) = self.backend.recv_pkt(&mut self.rx_buf[..cap]) else {
                st.queues[RXQ].go_to_previous_position();
                break;
            };
            let data = &self.rx_buf[..(hdr.len as usize).min(cap)];
            let len = match write_rx(&descs, &mem, &hdr, data) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("vsock: packet to guest lost: {e}");
                    0
                }
            };
            notify |= add_used(&mut st.queues[RXQ], &mem, head, len);
            used = true;
        }
        if notify {
            signal_used(st.interrupt.as_ref());
        }
        used
    }

    /// Hand guest tx packets to the backend; returns whether any chain was consumed.
    pub fn process_tx(&mut self) -> bool {
        let Some(st) = self.common.state.as_mut() else {
            return false;
        };
        let mem = st.mem.clone();
        let mut used = false;
        let mut notify = false;
        quiet(&mut st.queues[TXQ], &mem);
        while let Some(chain) = pop_chain(&mut st.queues[TXQ], &mem, "vsock") {
            let head = chain.head_index();
            match collect_chain(chain, &mem) {
                Ok(descs) => match read_tx(&descs, &mem, &mut self.tx_buf) {
                    Ok(hdr) => self.backend.send_pkt(&hdr, &self.tx_buf),
                    Err(e) => log::warn!("vsock: tx packet dropped: {e}"),
                },
                Err(e) => log::warn!("vsock: tx chain dropped: {e}"),
            }
            notify |= add_used(&mut st.queues[TXQ], &mem, head, 0);
            used = true;
        }
        if notify {
            signal_used(st.interrupt.as_ref());
        }
        used
    }

    /// Tell the guest its connections are gone (e.g. after the host side was restarted, or
    /// the VM was restored) with a `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event; returns whether
    /// an event buffer took it. Buffers too small for the event are returned empty. When none
    /// is available, guest notifications of the event queue are enabled, so that the guest
    /// kicks it when it posts one.
    pub fn send_transport_reset(&mut self) -> bool {
        let Some(st) = self.common.state.as_mut() else {
            return false;
        };
        let mem = st.mem.clone();
        let mut notify = false;
        let mut sent = false;
        while let Some(chain) = pop_chain(&mut st.queues[EVQ], &mem, "vsock") {
            let head = chain.head_index();
            let len = match collect_chain(chain, &mem) {
                Ok(d) if d[0].is_write_only() && d[0].len() >= 4 => {
                    match mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d[0].addr()) {
                        Ok(()) => 4,
                        Err(_) => 0,
                    }
                }
                _ => {
                    log::warn!("vsock: unusable event buffer returned empty");
                    0
                }
            };
            notify |= add_used(&mut st.queues[EVQ], &mem, head, len);
            if len == 4 {
                sent = true;
                break;
            }
        }
        if notify {
            signal_used(st.interrupt.as_ref());
        }
        sent
    }

    /// Whether a transport reset waits for the guest to post an event buffer.
    pub fn transport_reset_pending(&self) -> bool {
        self.reset_pending
    }

    /// Sends the pending transport reset, if any and a buffer is there.
    pub(super) fn flush_transport_reset(&mut self) {
        if self.reset_pending && self.send_transport_reset() {
            self.reset_pending = false;
        }
    }
}

impl VirtioDevice for Vsock {
    crate::virtio::common::forward_to_common!();
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn avail_features(&self) -> u64 {
        features(&[])
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.common.warn_config_write();
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.backend.counters()
    }
    fn reset(&mut self) -> bool {
        self.common.reset();
        self.reset_pending = false;
        self.backend.reset();
        // Let the event loop drop the backend's fds.
        if let Err(e) = self.common.activate_evt.write(1) {
            log::error!("vsock: failed to signal reset: {e}");
        }
        true
    }
    /// Host connections are not part of the state: a restored device starts without any.
    fn save(&self) -> Result<DeviceSnapshot, PersistError> {
        Ok(self.common.snapshot(
            VIRTIO_ID_VSOCK,
            DeviceKindState::Vsock {
                guest_cid: self.guest_cid,
            },
        ))
    }
    /// Restores onto this device (its CID, a backend without connections). The guest still
    /// believes in its old connections: an active device tells it with a transport reset
    /// (the guest driver then drops them and reads the CID again), sent now or, when the
    /// guest has no event buffer posted, at its next notify of the event queue.
    fn restore(
        &mut self,
        snap: &DeviceSnapshot,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), PersistError> {
        let queues = check_device(self, snap, &mem)?;
        let DeviceKindState::Vsock { guest_cid } = snap.kind else {
            return Err(PersistError::KindMismatch {
                saved: snap.kind.name(),
                this: "virtio-vsock",
            });
        };
        if guest_cid != self.guest_cid {
            log::info!(
                "vsock: snapshot of guest CID {guest_cid} restored with CID {}",
                self.guest_cid
            );
        }
        self.common
            .restore(snap.acked_features, queues, mem, interrupt)?;
        if self.is_activated() {
            self.reset_pending = true;
            self.flush_transport_reset();
            if self.reset_pending {
                log::info!("vsock: transport reset waits for an event buffer");
            }
        }
        Ok(())
    }
}
