//! Event-loop side of virtio-net.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{RXQ, TXQ};
use super::Net;
use crate::virtio::common::DeviceEvent;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        for l in [&self.rx_limiter, &self.tx_limiter].into_iter().flatten() {
            if let Err(e) = ops.add(Events::new_raw(l.timer_fd(), EventSet::IN)) {
                log::error!("virtio-net: failed to register a rate limiter's timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.common.handle_event(fd, ops) {
            Some(DeviceEvent::Activate { registered }) => {
                // A detached device has no backend fd to poll.
                if let (true, Some(backend)) = (registered, self.backend.as_ref()) {
                    let backend = Events::new_raw(
                        backend.as_raw_fd(),
                        EventSet::IN | EventSet::EDGE_TRIGGERED,
                    );
                    if let Err(e) = ops.add(backend) {
                        log::error!("virtio-net: failed to register the backend: {e}");
                    }
                }
                self.process_tx();
                self.process_rx();
            }
            Some(DeviceEvent::Queue(RXQ)) => self.process_rx(),
            Some(DeviceEvent::Queue(TXQ)) => self.process_tx(),
            Some(DeviceEvent::Queue(_)) => {}
            // Edge triggered: read until the backend is empty or the guest has no buffers.
            None if self.backend.as_ref().map(|b| b.as_raw_fd()) == Some(fd) => self.process_rx(),
            // A rate limiter has tokens again.
            None => {
                if let Some(l) = self.rx_limiter.as_mut().filter(|l| l.timer_fd() == fd) {
                    l.on_timer();
                    self.process_rx();
                } else if let Some(l) = self.tx_limiter.as_mut().filter(|l| l.timer_fd() == fd) {
                    l.on_timer();
                    self.process_tx();
                }
            }
        }
    }
}
