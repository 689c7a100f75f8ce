//! The device event loop: one thread running an event-manager `EventManager` over the
//! virtio devices (queue notifications, backend sockets and files). vCPU threads never
//! touch it; they only write ioeventfds and bus registers.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::Subscriber;

/// How long one epoll wait lasts before the stop flag is looked at again.
const POLL_TIMEOUT_MS: i32 = 100;

/// Errors of the event loop.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to create the event manager")]
    Create(#[source] event_manager::Error),
    #[error("Failed to start the event loop thread")]
    Spawn(#[source] std::io::Error),
    #[error("The event loop thread ended during setup")]
    Setup,
    #[error("Failed to create the event loop's wake-up event")]
    Wake(#[source] std::io::Error),
    #[error("Cannot confine the event loop thread")]
    Seccomp(#[source] crate::seccomp::Error),
    #[error("Cannot drop the event loop thread's capabilities")]
    Capabilities(#[source] std::io::Error),
}

#[derive(Default)]
struct GateState {
    paused: bool,
    parked: bool,
    ended: bool,
}

/// Holds the event loop between two dispatches, so that nothing touches guest memory or
/// device state while a snapshot is taken.
pub struct LoopGate {
    state: Mutex<GateState>,
    cond: Condvar,
    wake: EventFd,
}

impl LoopGate {
    fn new() -> Result<Self, Error> {
        Ok(LoopGate {
            state: Mutex::default(),
            cond: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK).map_err(Error::Wake)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Park the loop's thread; returns once it is parked (or has ended).
    pub fn pause(&self) {
        let mut s = self.lock();
        s.paused = true;
        if let Err(e) = self.wake.write(1) {
            log::error!("event loop: cannot wake the loop to pause it: {e}");
        }
        while !s.parked && !s.ended {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Let the loop run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.cond.notify_all();
    }

    fn park_while_paused(&self) {
        let mut s = self.lock();
        while s.paused {
            s.parked = true;
            self.cond.notify_all();
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked = false;
    }

    fn ended(&self) {
        self.lock().ended = true;
        self.cond.notify_all();
    }
}

/// The gate's side in the event manager: its wake-up event parks the loop.
struct GateSubscriber(Arc<LoopGate>);

impl MutEventSubscriber for GateSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.wake, EventSet::IN)) {
            log::error!("event loop: cannot register the pause event: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.0.wake.as_raw_fd() {
            let _ = self.0.wake.read();
            self.0.park_while_paused();
        }
    }
}

/// A running event loop; stops when dropped.
pub struct EventLoop {
    stop: Arc<AtomicBool>,
    gate: Arc<LoopGate>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Start a thread servicing `subscribers` (their `init` runs on that thread), confined to
    /// the event-loop filter of `seccomp` before it serves the first event.
    pub fn start(
        subscribers: Vec<Subscriber>,
        seccomp: Option<Arc<crate::seccomp::Filters>>,
    ) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let gate = Arc::new(LoopGate::new()?);
        let loop_gate = gate.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("event-loop".into())
            .spawn(move || {
                let mut em = match EventManager::<Subscriber>::new() {
                    Ok(em) => em,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Create(e)));
                        return;
                    }
                };
                for s in subscribers {
                    em.add_subscriber(s);
                }
                let gate_sub: Subscriber = Arc::new(Mutex::new(GateSubscriber(loop_gate.clone())));
                em.add_subscriber(gate_sub);
                if let Some(filters) = &seccomp {
                    if let Err(e) = crate::caps::restrict_thread(crate::caps::EVENT_LOOP_CAPS) {
                        let _ = ready_tx.send(Err(Error::Capabilities(e)));
                        return;
                    }
                    if let Err(e) = filters.install(crate::seccomp::ThreadKind::EventLoop) {
                        let _ = ready_tx.send(Err(Error::Seccomp(e)));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                while !flag.load(Ordering::Acquire) {
                    // EINTR (a stray signal) and other wait errors: look at the flag, retry.
                    let _ = em.run_with_timeout(POLL_TIMEOUT_MS);
                }
                loop_gate.ended();
            })
            .map_err(Error::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(EventLoop {
                stop,
                gate,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Setup)
            }
        }
    }

    /// The gate that pauses this loop.
    pub fn gate(&self) -> Arc<LoopGate> {
        self.gate.clone()
    }

    /// Stop the loop and wait for its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.gate.resume();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    struct Counter {
        evt: EventFd,
        seen: Arc<Mutex<u64>>,
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, events: Events, _ops: &mut EventOps) {
            if events.fd() == self.evt.as_raw_fd() {
                if let Ok(n) = self.evt.read() {
                    *self.seen.lock().unwrap() += n;
                }
            }
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn services_subscribers_until_stopped() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let trigger = evt.try_clone().unwrap();
        let seen = Arc::new(Mutex::new(0));
        let sub: Subscriber = Arc::new(Mutex::new(Counter {
            evt,
            seen: seen.clone(),
        }));
        let mut el = EventLoop::start(vec![sub], None).unwrap();
        trigger.write(3).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while *seen.lock().unwrap() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*seen.lock().unwrap(), 3);
        // Paused: events wait; resumed: they are served.
        el.gate().pause();
        trigger.write(2).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*seen.lock().unwrap(), 3, "nothing serviced while paused");
        el.gate().resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        while *seen.lock().unwrap() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*seen.lock().unwrap(), 5);
        el.stop();
        // A stopped loop does not hold up a pause.
        el.gate().pause();
        trigger.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(*seen.lock().unwrap(), 5, "nothing serviced after stop");
    }
}
