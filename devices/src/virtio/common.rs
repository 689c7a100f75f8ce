//! State and event-loop plumbing that every virtio device shares: acked features, the queue
//! and activate event fds, and the queues/memory/interrupt of an activated device.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueOwnedT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use virtio_queue::desc::split::Descriptor;

use super::persist::{DeviceKindState, DeviceSnapshot, PersistError, QueueSnapshot};
use super::{
    add_used, check_activation, collect_chain, new_events, pop_chain, quiet, signal_used,
    ActiveState, ChainError, Error, GuestMem, VirtioInterrupt,
};

/// Chains one queue serves per event of the event loop. With more waiting, the queue kicks
/// itself and the loop turns first: a guest that floods one queue (FUSE requests, block
/// writes) delays the other devices on the loop (the agent's vsock among them) by one turn,
/// not until it stops.
pub(crate) const CHAINS_PER_TURN: usize = 64;

/// The part of a device that does not depend on its type.
pub(crate) struct VirtioCommon {
    /// Prefix of log messages (`virtio-blk`, ...).
    name: &'static str,
    pub acked: u64,
    /// One per queue; their number is the number of queues `activate` expects.
    pub queue_evts: Vec<EventFd>,
    pub activate_evt: EventFd,
    pub state: Option<ActiveState>,
    queues_registered: bool,
}

impl VirtioCommon {
    /// An inactive device with `n_queues` queues.
    pub fn new(name: &'static str, n_queues: usize) -> Result<Self, Error> {
        Ok(VirtioCommon {
            name,
            acked: 0,
            queue_evts: new_events(n_queues)?,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            state: None,
            queues_registered: false,
        })
    }

    /// Stores the active state and signals the activate event.
    pub fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), Error> {
        check_activation(self.is_activated(), self.queue_evts.len(), &queues)?;
        self.state = Some(ActiveState {
            mem,
            queues,
            interrupt,
        });
        self.activate_evt.write(1).map_err(Error::ActivateEvent)
    }

    /// Serves the available chains of queue `q`, up to [`CHAINS_PER_TURN`] (then the queue's
    /// event is raised again, for the rest after the loop's other events); nothing before
    /// activation. `serve` gets each chain's descriptors, or why they are unusable (logged
    /// here), and returns the bytes it wrote for the used ring. The driver is interrupted
    /// once at the end, if it wants to be. Returns the number of chains completed.
    pub fn serve_queue(
        &mut self,
        q: usize,
        serve: impl FnMut(&GuestMem, Result<Vec<Descriptor>, ChainError>) -> u32,
    ) -> usize {
        self.serve_queue_while(q, |_| true, serve)
    }

    /// [`VirtioCommon::serve_queue`], asking `admit` about each chain first (`None` for a
    /// malformed one: it is still a request the guest made, so a rate limiter counts it): a
    /// chain it refuses (a rate limiter out of tokens) goes back on the avail ring, to be the
    /// first served next time, and the queue is left until then.
    pub fn serve_queue_while(
        &mut self,
        q: usize,
        mut admit: impl FnMut(Option<&[Descriptor]>) -> bool,
        mut serve: impl FnMut(&GuestMem, Result<Vec<Descriptor>, ChainError>) -> u32,
    ) -> usize {
        let Some(st) = self.state.as_mut() else {
            return 0;
        };
        let mem = st.mem.clone();
        let mut done = 0;
        let mut notify = false;
        quiet(&mut st.queues[q], &mem);
        while done < CHAINS_PER_TURN {
            let Some(chain) = pop_chain(&mut st.queues[q], &mem, self.name) else {
                break;
            };
            let head = chain.head_index();
            let descs = collect_chain(chain, &mem);
            if !admit(descs.as_deref().ok()) {
                st.queues[q].go_to_previous_position();
                break;
            }
            if let Err(e) = &descs {
                log::warn!("{}: {e}", self.name);
            }
            let len = serve(&mem, descs);
            notify |= add_used(&mut st.queues[q], &mem, head, len);
            done += 1;
        }
        if notify {
            signal_used(st.interrupt.as_ref());
        }
        if done == CHAINS_PER_TURN {
            // Maybe more: the next turn of the loop serves them (the guest's notifications
            // stay off meanwhile).
            if let Err(e) = self.queue_evts[q].write(1) {
                log::error!("{}: cannot raise queue {q}'s event again: {e}", self.name);
            }
        }
        done
    }

    /// The generic part of `save`: acked features and, when activated, the device's queues.
    pub fn snapshot(&self, device_type: u32, kind: DeviceKindState) -> DeviceSnapshot {
        DeviceSnapshot {
            device_type,
            acked_features: self.acked,
            active_queues: self
                .state
                .as_ref()
                .map(|st| st.queues.iter().map(QueueSnapshot::from).collect()),
            kind,
        }
    }

    /// The generic part of `restore`, once the snapshot was checked
    /// ([`super::persist::check_device`] gave `queues`): sets the acked features and, for an
    /// active snapshot, activates (so the event loop registers the queue fds). A failed
    /// activation leaves the device in its reset state.
    pub fn restore(
        &mut self,
        acked: u64,
        queues: Option<Vec<Queue>>,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), PersistError> {
        self.acked = acked;
        if let Some(queues) = queues {
            if let Err(e) = self.activate(mem, queues, interrupt) {
                self.state = None;
                self.acked = 0;
                return Err(PersistError::Activate(e));
            }
        }
        Ok(())
    }

    /// Drops the active state.
    pub fn reset(&mut self) {
        self.state = None;
    }

    pub fn is_activated(&self) -> bool {
        self.state.is_some()
    }

    /// `write_config` of a device whose config space is read-only.
    pub fn warn_config_write(&self) {
        log::warn!("{}: config space is read-only", self.name);
    }

    /// Registers the activate event (`MutEventSubscriber::init`).
    pub fn init(&self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            log::error!("{}: failed to register activate event: {e}", self.name);
        }
    }

    /// Consumes `fd` when it is the activate event or a queue event and says which it was.
    /// On the first activate event while activated, the queue events are registered with
    /// `ops` (retried on the next one if that fails).
    pub fn handle_event(&mut self, fd: RawFd, ops: &mut EventOps) -> Option<DeviceEvent> {
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            let mut registered = false;
            if self.is_activated() && !self.queues_registered {
                registered = self.register_queues(ops);
                self.queues_registered = registered;
            }
            return Some(DeviceEvent::Activate { registered });
        }
        let i = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd)?;
        let _ = self.queue_evts[i].read();
        Some(DeviceEvent::Queue(i))
    }

    /// Adds every queue event to `ops`; returns whether all were added.
    fn register_queues(&self, ops: &mut EventOps) -> bool {
        let mut ok = true;
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("{}: failed to register queue event: {e}", self.name);
                ok = false;
            }
        }
        ok
    }
}

/// A device event consumed by [`VirtioCommon::handle_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceEvent {
    /// The activate event; `registered` when this one registered the queue events.
    Activate { registered: bool },
    /// The notify event of the queue with this index.
    Queue(usize),
}

/// The [`super::VirtioDevice`] methods every device forwards to its `common: VirtioCommon`
/// field (acked features, queue events, activation). Used inside `impl VirtioDevice for ...`.
macro_rules! forward_to_common {
    () => {
        fn acked_features(&self) -> u64 {
            self.common.acked
        }
        fn set_acked_features(&mut self, features: u64) {
            self.common.acked = features;
        }
        fn queue_events(&self) -> &[vmm_sys_util::eventfd::EventFd] {
            &self.common.queue_evts
        }
        fn activate(
            &mut self,
            mem: $crate::virtio::GuestMem,
            queues: Vec<virtio_queue::Queue>,
            interrupt: std::sync::Arc<dyn $crate::virtio::VirtioInterrupt>,
        ) -> Result<(), $crate::virtio::Error> {
            self.common.activate(mem, queues, interrupt)
        }
        fn is_activated(&self) -> bool {
            self.common.is_activated()
        }
    };
}
pub(crate) use forward_to_common;
