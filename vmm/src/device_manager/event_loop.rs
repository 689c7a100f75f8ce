//! The device event loop: one thread running an event-manager `EventManager` over the
//! virtio devices (queue notifications, backend sockets and files). vCPU threads never
//! touch it; they only write ioeventfds and bus registers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use event_manager::{EventManager, SubscriberOps};
use thiserror::Error;

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
}

/// A running event loop; stops when dropped.
pub struct EventLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Start a thread servicing `subscribers` (their `init` runs on that thread).
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
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
                let _ = ready_tx.send(Ok(()));
                while !flag.load(Ordering::Acquire) {
                    // EINTR (a stray signal) and other wait errors: look at the flag, retry.
                    let _ = em.run_with_timeout(POLL_TIMEOUT_MS);
                }
            })
            .map_err(Error::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(EventLoop {
                stop,
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

    /// Stop the loop and wait for its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
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
    use event_manager::{EventOps, Events, MutEventSubscriber};
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    use vmm_sys_util::epoll::EventSet;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
        let mut el = EventLoop::start(vec![sub]).unwrap();
        trigger.write(3).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while *seen.lock().unwrap() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*seen.lock().unwrap(), 3);
        el.stop();
        trigger.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(*seen.lock().unwrap(), 3, "nothing serviced after stop");
    }
}
