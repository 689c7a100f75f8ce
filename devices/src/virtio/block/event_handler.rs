//! Event-loop side of virtio-blk.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::Block;

impl MutEventSubscriber for Block {
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
