//! Event-loop side of virtio-blk.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            log::error!("virtio-blk: failed to register activate event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            if !self.registered {
                match ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
                    Ok(()) => self.registered = true,
                    Err(e) => log::error!("virtio-blk: failed to register queue event: {e}"),
                }
            }
            self.process_queue();
        } else if fd == self.queue_evts[0].as_raw_fd() {
            let _ = self.queue_evts[0].read();
            self.process_queue();
        }
    }
}
