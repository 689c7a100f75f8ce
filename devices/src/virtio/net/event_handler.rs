//! Event-loop side of virtio-net.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{RXQ, TXQ};
use super::Net;
use crate::virtio::common::DeviceEvent;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
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
            None => {}
        }
    }
}
