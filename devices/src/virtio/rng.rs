//! virtio-rng (entropy device): fills device-writable buffers with bytes from the host's
//! `getrandom(2)`.

use std::io;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_memory::Bytes;

use std::sync::Arc;

use super::common::VirtioCommon;
use super::persist::{check_device, DeviceKindState, DeviceSnapshot, PersistError};
use super::{features, Error, GuestMem, VirtioDevice, VirtioInterrupt, VIRTIO_ID_RNG};

/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per request.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Fills `buf` from the host's `getrandom(2)`.
pub fn host_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that outlives the
        // call; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The virtio-rng device.
pub struct Rng {
    common: VirtioCommon,
    buf: Vec<u8>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Result<Self, Error> {
        Ok(Rng {
            common: VirtioCommon::new("virtio-rng", 1)?,
            buf: Vec::new(),
        })
    }

    /// Service the request queue; returns the number of chains completed.
    pub fn process_queue(&mut self) -> usize {
        let buf = &mut self.buf;
        self.common.serve_queue(0, |mem, descs| match descs {
            Ok(descs) if descs.iter().all(|d| d.is_write_only()) => fill_chain(mem, &descs, buf),
            Ok(_) => {
                log::warn!("virtio-rng: device-readable descriptor in request");
                0
            }
            Err(_) => 0,
        })
    }
}

/// Writes random bytes into the writable buffers of a chain; returns the bytes written.
fn fill_chain(
    mem: &GuestMem,
    descs: &[virtio_queue::desc::split::Descriptor],
    buf: &mut Vec<u8>,
) -> u32 {
    let mut total = 0usize;
    for d in descs {
        let n = (d.len() as usize).min(MAX_REQUEST - total);
        if n == 0 {
            continue;
        }
        buf.resize(n, 0);
        if let Err(e) = host_random(buf) {
            log::error!("virtio-rng: getrandom failed: {e}");
            break;
        }
        if let Err(e) = mem.write_slice(buf, d.addr()) {
            log::warn!("virtio-rng: write to guest failed: {e}");
            break;
        }
        total += n;
    }
    total as u32
}

impl VirtioDevice for Rng {
    crate::virtio::common::forward_to_common!();
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn avail_features(&self) -> u64 {
        features(&[])
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn reset(&mut self) -> bool {
        self.common.reset();
        true
    }
    fn save(&self) -> Result<DeviceSnapshot, PersistError> {
        Ok(self.common.snapshot(VIRTIO_ID_RNG, DeviceKindState::Rng))
    }
    fn restore(
        &mut self,
        snap: &DeviceSnapshot,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), PersistError> {
        let queues = check_device(self, snap, &mem)?;
        if snap.kind != DeviceKindState::Rng {
            return Err(PersistError::KindMismatch {
                saved: snap.kind.name(),
                this: "virtio-rng",
            });
        }
        self.common
            .restore(snap.acked_features, queues, mem, interrupt)
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // Activation and queue notifications both mean: look at the queue.
        if self.common.handle_event(events.fd(), ops).is_some() {
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::*;
    use crate::virtio::{CountingInterrupt, InterruptKind};
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    use virtio_queue::QueueT;
    use vm_memory::Address;

    fn active(mem: &GuestMem, q: &GuestQueue) -> (Rng, Arc<CountingInterrupt>) {
        let mut rng = Rng::new().unwrap();
        let irq = Arc::new(CountingInterrupt::new());
        rng.activate(mem.clone(), vec![q.queue()], irq.clone())
            .unwrap();
        (rng, irq)
    }

    #[test]
    fn fills_writable_buffers() {
        let m = mem(0x10_0000);
        let mut q = GuestQueue::new(&m, 0, 16);
        fill(&m, 0x1_0000, 0x300, 0xee);
        let head = q.add(&[w(0x1_0100, 64), w(0x1_0200, 32)]);
        let (mut rng, irq) = active(&m, &q);
        assert_eq!(rng.process_queue(), 1);
        assert_eq!(q.take_used(), vec![(u32::from(head), 96)]);
        assert_ne!(read(&m, 0x1_0100, 64), vec![0xee; 64], "buffer not filled");
        assert_untouched(&m, 0x1_0000, 0x100, 0xee);
        assert_untouched(&m, 0x1_0140, 0xc0, 0xee);
        assert_untouched(&m, 0x1_0220, 0xe0, 0xee);
        assert_eq!(irq.count(InterruptKind::Vring), 1);
    }

    #[test]
    fn a_full_queue_is_served_a_turn_at_a_time() {
        let m = mem(0x10_0000);
        let mut q = GuestQueue::new(&m, 0, 128);
        for i in 0..100u64 {
            q.add(&[w(0x1_0000 + i * 16, 16)]);
        }
        let (mut rng, _irq) = active(&m, &q);
        let turn = crate::virtio::common::CHAINS_PER_TURN;
        assert_eq!(rng.process_queue(), turn);
        // The queue raised its own event, for the rest after the loop's other events.
        assert_eq!(rng.common.queue_evts[0].read().unwrap(), 1);
        assert_eq!(rng.process_queue(), 100 - turn);
        assert!(
            rng.common.queue_evts[0].read().is_err(),
            "raised with nothing left"
        );
        assert_eq!(q.take_used().len(), 100);
    }

    #[test]
    fn malformed_chains_are_returned_empty() {
        let m = mem(0x10_0000);
        let mut q = GuestQueue::new(&m, 0, 16);
        fill(&m, 0x1_0000, 0x1000, 0xee);
        let h_read = q.add(&[r(0x1_0000, 64)]);
        let h_oob = q.add(&[w(0x20_0000, 64)]);
        let h_zero = q.add(&[w(0x1_0000, 0)]);
        let h_loop = q.add_loop(&[w(0x1_0000, 16), w(0x1_0100, 16)]);
        let h_straddle = q.add(&[w(0x0f_fff0, 0x100)]);
        let (mut rng, _irq) = active(&m, &q);
        assert_eq!(rng.process_queue(), 5);
        let used = q.take_used();
        assert_eq!(
            used,
            vec![
                (u32::from(h_read), 0),
                (u32::from(h_oob), 0),
                (u32::from(h_zero), 0),
                (u32::from(h_loop), 0),
                (u32::from(h_straddle), 0)
            ]
        );
        assert_untouched(&m, 0x1_0000, 0x1000, 0xee);
    }

    #[test]
    fn an_avail_index_beyond_the_ring_stops_the_queue_until_reset() {
        let m = mem(0x10_0000);
        let mut q = GuestQueue::new(&m, 0, 16);
        let (mut rng, _irq) = active(&m, &q);
        // The driver claims 100 new buffers in a ring of 16: the device refuses the ring, once.
        let idx = q.mock.avail_addr().unchecked_add(2);
        m.write_obj(100u16, idx).unwrap();
        assert_eq!(rng.process_queue(), 0);
        assert!(!rng.common.state.as_ref().unwrap().queues[0].ready());
        // A good chain afterwards is not served either (the driver must reset first).
        m.write_obj(0u16, idx).unwrap();
        q.add(&[w(0x1_0000, 16)]);
        assert_eq!(rng.process_queue(), 0);
        assert_eq!(q.take_used(), vec![]);
        // After a reset and a new activation the device serves again.
        assert!(rng.reset());
        let mut q = GuestQueue::new(&m, 0x8_0000, 16);
        let head = q.add(&[w(0x1_0000, 16)]);
        rng.activate(
            m.clone(),
            vec![q.queue()],
            Arc::new(CountingInterrupt::new()),
        )
        .unwrap();
        assert_eq!(rng.process_queue(), 1);
        assert_eq!(q.take_used(), vec![(u32::from(head), 16)]);
    }

    #[test]
    fn oversize_request_is_capped() {
        let m = mem(0x40_0000);
        let mut q = GuestQueue::new(&m, 0, 16);
        fill(&m, 0x10_0000, 0x2_0000, 0xee);
        let h = q.add(&[w(0x10_0000, 0x1_8000)]);
        let (mut rng, _irq) = active(&m, &q);
        rng.process_queue();
        assert_eq!(q.take_used(), vec![(u32::from(h), MAX_REQUEST as u32)]);
        assert_untouched(&m, 0x10_0000 + MAX_REQUEST as u64, 0x8000, 0xee);
    }

    #[test]
    fn inactive_device_does_nothing_and_reset_allows_reactivation() {
        let m = mem(0x10_0000);
        let mut q = GuestQueue::new(&m, 0, 16);
        q.add(&[w(0x1_0000, 8)]);
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.process_queue(), 0);
        let irq = Arc::new(CountingInterrupt::new());
        rng.activate(m.clone(), vec![q.queue()], irq.clone())
            .unwrap();
        assert!(matches!(
            rng.activate(m.clone(), vec![q.queue()], irq.clone()),
            Err(Error::AlreadyActivated)
        ));
        assert!(rng.reset());
        assert!(!rng.is_activated());
        rng.activate(m.clone(), vec![q.queue()], irq).unwrap();
        assert_eq!(rng.process_queue(), 1);
    }

    #[test]
    fn serviced_through_event_manager() {
        let m = mem(0x10_0000);
        let mut q = GuestQueue::new(&m, 0, 16);
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(rng.clone());
        let irq = Arc::new(CountingInterrupt::new());
        rng.lock()
            .unwrap()
            .activate(m.clone(), vec![q.queue()], irq.clone())
            .unwrap();
        em.run_with_timeout(100).unwrap();
        q.add(&[w(0x1_0000, 8)]);
        rng.lock().unwrap().queue_events()[0].write(1).unwrap();
        em.run_with_timeout(100).unwrap();
        assert_eq!(q.take_used().len(), 1);
        assert_eq!(irq.count(InterruptKind::Vring), 1);
    }
}
