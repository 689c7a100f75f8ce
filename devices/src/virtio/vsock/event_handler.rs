//! Event-loop side of virtio-vsock: queue events, backend fds, and keeping the epoll set in
//! line with what the backend wants.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{EVQ, RXQ, TXQ};
use super::Vsock;
use crate::virtio::common::DeviceEvent;
use crate::virtio::VirtioDevice;

impl Vsock {
    /// Bring the registered fds in line with the backend's interest.
    fn sync_fds(&mut self, ops: &mut EventOps) {
        for fd in self.backend.take_closed() {
            if self.registered.remove(&fd.as_raw_fd()).is_some() {
                if let Err(e) = ops.remove(Events::empty(&fd)) {
                    log::warn!("vsock: failed to unregister fd: {e}");
                }
            }
        }
        let wanted: HashMap<RawFd, EventSet> = if self.is_activated() {
            self.backend.interest().into_iter().collect()
        } else {
            HashMap::new()
        };
        let stale: Vec<RawFd> = self
            .registered
            .keys()
            .filter(|fd| !wanted.contains_key(fd))
            .copied()
            .collect();
        for fd in stale {
            self.registered.remove(&fd);
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                log::warn!("vsock: failed to unregister fd {fd}: {e}");
            }
        }
        for (fd, set) in wanted {
            match self.registered.get(&fd) {
                None => match ops.add(Events::new_raw(fd, set)) {
                    Ok(()) => {
                        self.registered.insert(fd, set);
                    }
                    Err(e) => log::warn!("vsock: failed to register fd {fd}: {e}"),
                },
                Some(&old) if old != set => match ops.modify(Events::new_raw(fd, set)) {
                    Ok(()) => {
                        self.registered.insert(fd, set);
                    }
                    Err(e) => log::warn!("vsock: failed to update fd {fd}: {e}"),
                },
                Some(_) => {}
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.common.handle_event(fd, ops) {
            Some(DeviceEvent::Activate { .. }) => {
                self.flush_transport_reset();
                self.process_tx();
                self.process_rx();
            }
            Some(DeviceEvent::Queue(RXQ)) => {
                self.process_rx();
            }
            Some(DeviceEvent::Queue(TXQ)) => {
                self.process_tx();
                self.process_rx();
            }
            // EVQ: buffers for events; used when there is one to send.
            Some(DeviceEvent::Queue(EVQ)) => self.flush_transport_reset(),
            Some(DeviceEvent::Queue(_)) => {}
            None if self.is_activated() => {
                self.backend.notify(fd, events.event_set());
                self.process_rx();
            }
            None => {}
        }
        self.sync_fds(ops);
    }
}
