//! Event-loop side of virtio-blk.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        if let Some(l) = &self.limiter {
            if let Err(e) = ops.add(Events::new_raw(l.timer_fd(), EventSet::IN)) {
                log::error!("virtio-blk: failed to register the rate limiter's timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        // Activation and queue notifications both mean: look at the queue; so does the rate
        // limiter's timer (it has tokens again).
        if self.common.handle_event(fd, ops).is_some() {
            self.process_queue();
        } else if self.rate_timer_fd() == Some(fd) {
            self.on_rate_timer();
        }
    }
}
