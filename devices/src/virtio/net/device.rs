//! The virtio-net device: rx (0) and tx (1) queues around a [`NetBackend`].

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use virtio_queue::QueueOwnedT;

use super::{Error, NetBackend, Tap, MAX_FRAME, QUEUE_SIZE, VNET_HDR_LEN};
use crate::rate_limiter::RateLimiter;
use crate::virtio::common::VirtioCommon;
use crate::virtio::persist::{check_device, DeviceKindState, DeviceSnapshot, PersistError};
use crate::virtio::{
    add_used, collect_chain, features, pop_chain, quiet, read_config_bytes, signal_used, GuestMem,
    VirtioDevice, VirtioInterrupt, VIRTIO_ID_NET,
};

pub(super) const RXQ: usize = 0;
pub(super) const TXQ: usize = 1;

/// Counters of frames the device did not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// The virtio-net device.
pub struct Net {
    /// `None`: detached ([`Net::detached`]), a NIC without a cable.
    pub(super) backend: Option<Box<dyn NetBackend>>,
    config: [u8; 8],
    avail: u64,
    pub(super) common: VirtioCommon,
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    tx_frame: Vec<u8>,
    stats: NetStats,
    /// Frames to the guest wait for its tokens ([`Net::set_rate_limiters`]).
    pub(super) rx_limiter: Option<RateLimiter>,
    /// Frames from the guest wait for its tokens.
    pub(super) tx_limiter: Option<RateLimiter>,
}

impl Net {
    /// A device over `backend`; `mac` is offered to the guest with `VIRTIO_NET_F_MAC`.
    pub fn new(backend: Box<dyn NetBackend>, mac: Option<[u8; 6]>) -> Result<Self, Error> {
        Self::with_backend(Some(backend), mac)
    }

    /// A device without a backend, like a NIC without a cable: the guest sees a working
    /// device that never receives a frame, and every frame it sends is consumed and dropped
    /// (counted in [`NetStats::tx_dropped`]). A VM template's placeholder: a VM restored
    /// from its snapshot builds its own device (on a TAP) and restores the saved state onto
    /// it.
    pub fn detached(mac: Option<[u8; 6]>) -> Result<Self, Error> {
        Self::with_backend(None, mac)
    }

    fn with_backend(
        backend: Option<Box<dyn NetBackend>>,
        mac: Option<[u8; 6]>,
    ) -> Result<Self, Error> {
        let mut config = [0u8; 8];
        let mut bits = vec![];
        if let Some(m) = mac {
            config[..6].copy_from_slice(&m);
            bits.push(VIRTIO_NET_F_MAC);
        }
        Ok(Net {
            backend,
            config,
            avail: features(&bits),
            common: VirtioCommon::new("virtio-net", 2)?,
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: None,
            tx_frame: Vec::with_capacity(MAX_FRAME),
            stats: NetStats::default(),
            rx_limiter: None,
            tx_limiter: None,
        })
    }

    /// A device on the TAP interface `tap`.
    pub fn tap(tap: &str, mac: Option<[u8; 6]>) -> Result<Self, Error> {
        Self::new(Box::new(Tap::open(tap)?), mac)
    }

    /// Whether the device has no backend ([`Net::detached`]).
    pub fn is_detached(&self) -> bool {
        self.backend.is_none()
    }

    /// Frame counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Limits the frames received by the guest (`rx`) and sent by it (`tx`): one operation
    /// per frame, its bytes without the vnet header. A frame that has to wait stays where it
    /// is (in the TAP's queue, or on the guest's tx ring) until the limiter's timer fires; the
    /// TAP drops what overflows its queue, as a congested link does. Set before the VM runs.
    pub fn set_rate_limiters(&mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
    }

    /// How many times a frame waited for a rate limiter: (rx, tx).
    pub fn throttled(&self) -> (u64, u64) {
        let t = |l: &Option<RateLimiter>| l.as_ref().map_or(0, RateLimiter::throttled);
        (t(&self.rx_limiter), t(&self.tx_limiter))
    }

    /// Move frames from the backend into guest rx buffers until either runs out.
    pub fn process_rx(&mut self) {
        let Some(st) = self.common.state.as_mut() else {
            return;
        };
        // Detached: nothing ever arrives.
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        if self
            .rx_limiter
            .as_ref()
            .is_some_and(RateLimiter::is_blocked)
        {
            return;
        }
        let mem = st.mem.clone();
        let mut notify = false;
        loop {
            let len = match self.rx_pending {
                Some(n) => n,
                None => match backend.read_frame(&mut self.rx_frame) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("virtio-net: backend read failed: {e}");
                        break;
                    }
                },
            };
            if len < VNET_HDR_LEN {
                self.rx_pending = None;
                self.stats.rx_dropped += 1;
                continue;
            }
            self.rx_pending = Some(len);
            let Some(chain) = pop_chain(&mut st.queues[RXQ], &mem, "virtio-net") else {
                break;
            };
            let bytes = (len - VNET_HDR_LEN) as u64;
            if let Some(l) = self.rx_limiter.as_mut() {
                if !l.consume(bytes) {
                    // The buffer goes back; the frame waits for the timer.
                    st.queues[RXQ].go_to_previous_position();
                    break;
                }
            }
            let head = chain.head_index();
            let descs = match collect_chain(chain, &mem) {
                Ok(d) if d.iter().all(|d| d.is_write_only()) => d,
                Ok(_) | Err(_) => {
                    // A bad buffer is returned empty; the frame waits for the next one.
                    log::warn!("virtio-net: malformed rx buffer");
                    notify |= add_used(&mut st.queues[RXQ], &mem, head, 0);
                    continue;
                }
            };
            // num_buffers = 1: the last two bytes of the v1 header.
            self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let used = match scatter(&mem, &descs, &self.rx_frame[..len]) {
                Some(()) => {
                    self.stats.rx_frames += 1;
                    len as u32
                }
                None => {
                    self.stats.rx_dropped += 1;
                    0
                }
            };
            self.rx_pending = None;
            notify |= add_used(&mut st.queues[RXQ], &mem, head, used);
        }
        if notify {
            signal_used(st.interrupt.as_ref());
        }
    }

    /// Send the guest's tx frames to the backend.
    pub fn process_tx(&mut self) {
        let Some(st) = self.common.state.as_mut() else {
            return;
        };
        if self
            .tx_limiter
            .as_ref()
            .is_some_and(RateLimiter::is_blocked)
        {
            return;
        }
        let mem = st.mem.clone();
        let mut notify = false;
        quiet(&mut st.queues[TXQ], &mem);
        while let Some(chain) = pop_chain(&mut st.queues[TXQ], &mem, "virtio-net") {
            let head = chain.head_index();
            let descs = collect_chain(chain, &mem);
            if let Some(l) = self.tx_limiter.as_mut() {
                // A malformed chain sends nothing but is one frame (an `ops` token), so a
                // guest cannot get past the limit by breaking its chains.
                let bytes: u64 = descs
                    .as_ref()
                    .map_or(0, |d| d.iter().map(|d| u64::from(d.len())).sum());
                if !l.consume(bytes.saturating_sub(VNET_HDR_LEN as u64)) {
                    // Back on the ring: sent when the timer fires.
                    st.queues[TXQ].go_to_previous_position();
                    break;
                }
            }
            match descs {
                Ok(descs) => match gather(&mem, &descs, &mut self.tx_frame) {
                    Some(()) => match self.backend.as_mut() {
                        Some(backend) => match backend.write_frame(&self.tx_frame) {
                            Ok(_) => self.stats.tx_frames += 1,
                            Err(e) => {
                                log::debug!("virtio-net: frame dropped by backend: {e}");
                                self.stats.tx_dropped += 1;
                            }
                        },
                        // Detached: no cable, the frame is gone.
                        None => self.stats.tx_dropped += 1,
                    },
                    None => self.stats.tx_dropped += 1,
                },
                Err(e) => {
                    log::warn!("virtio-net: tx chain dropped: {e}");
                    self.stats.tx_dropped += 1;
                }
            }
            notify |= add_used(&mut st.queues[TXQ], &mem, head, 0);
        }
        if notify {
            signal_used(st.interrupt.as_ref());
        }
    }
}

/// Copies a frame into device-writable buffers; `None` when it does not fit.
fn scatter(mem: &GuestMem, descs: &[Descriptor], frame: &[u8]) -> Option<()> {
    let cap: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if cap < frame.len() as u64 {
        return None;
    }
    let mut rest = frame;
    for d in descs {
        if rest.is_empty() {
            break;
        }
        let n = (d.len() as usize).min(rest.len());
        mem.write_slice(&rest[..n], d.addr()).ok()?;
        rest = &rest[n..];
    }
    Some(())
}

/// Collects a frame from device-readable buffers; `None` when malformed or too big.
fn gather(mem: &GuestMem, descs: &[Descriptor], out: &mut Vec<u8>) -> Option<()> {
    if descs.iter().any(|d| d.is_write_only()) {
        log::warn!("virtio-net: device-writable descriptor in tx chain");
        return None;
    }
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total > MAX_FRAME as u64 || total < VNET_HDR_LEN as u64 {
        log::warn!("virtio-net: tx frame of {total} bytes dropped");
        return None;
    }
    out.clear();
    for d in descs {
        let start = out.len();
        out.resize(start + d.len() as usize, 0);
        mem.read_slice(&mut out[start..], GuestAddress(d.addr().0))
            .ok()?;
    }
    Some(())
}

impl VirtioDevice for Net {
    crate::virtio::common::forward_to_common!();
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn avail_features(&self) -> u64 {
        self.avail
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.common.warn_config_write();
    }
    fn reset(&mut self) -> bool {
        self.common.reset();
        self.rx_pending = None;
        true
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        let (rx_throttled, tx_throttled) = self.throttled();
        vec![
            ("rx_frames", s.rx_frames),
            ("tx_frames", s.tx_frames),
            ("rx_dropped", s.rx_dropped),
            ("tx_dropped", s.tx_dropped),
            ("rx_throttled", rx_throttled),
            ("tx_throttled", tx_throttled),
        ]
    }
    /// A frame read from the backend that was waiting for an rx buffer is not saved: the
    /// restored VM has lost it, as a NIC drops a frame.
    fn save(&self) -> Result<DeviceSnapshot, PersistError> {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        Ok(self
            .common
            .snapshot(VIRTIO_ID_NET, DeviceKindState::Net { mac }))
    }
    /// Keeps this device's backend, whichever the saved device had (a detached device's
    /// state restores onto one with a TAP and the other way round); the config space gets
    /// the saved MAC (the guest already uses it).
    fn restore(
        &mut self,
        snap: &DeviceSnapshot,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), PersistError> {
        let queues = check_device(self, snap, &mem)?;
        let DeviceKindState::Net { mac } = snap.kind else {
            return Err(PersistError::KindMismatch {
                saved: snap.kind.name(),
                this: "virtio-net",
            });
        };
        self.common
            .restore(snap.acked_features, queues, mem, interrupt)?;
        if self.config[..6] != mac {
            log::info!("virtio-net: restored with the saved MAC {mac:02x?}");
        }
        self.config[..6].copy_from_slice(&mac);
        Ok(())
    }
}
