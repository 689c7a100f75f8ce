//! Event-loop side of virtio-net.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{RXQ, TXQ};
use super::Net;
use crate::virtio::VirtioDevice;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            log::error!("virtio-net: failed to register activate event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            if self.is_activated() && !self.registered {
                let backend = Events::new_raw(
                    self.backend.as_raw_fd(),
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                );
                let all = [
                    Events::new(&self.queue_evts[RXQ], EventSet::IN),
                    Events::new(&self.queue_evts[TXQ], EventSet::IN),
                    backend,
                ];
                for ev in all {
                    if let Err(e) = ops.add(ev) {
                        log::error!("virtio-net: failed to register an event: {e}");
                    }
                }
                self.registered = true;
            }
            self.process_tx();
            self.process_rx();
        } else if fd == self.queue_evts[RXQ].as_raw_fd() {
            let _ = self.queue_evts[RXQ].read();
            self.process_rx();
        } else if fd == self.queue_evts[TXQ].as_raw_fd() {
            let _ = self.queue_evts[TXQ].read();
            self.process_tx();
        } else if fd == self.backend.as_raw_fd() {
            // Edge triggered: read until the backend is empty or the guest has no buffers.
            self.process_rx();
        }
    }
}
