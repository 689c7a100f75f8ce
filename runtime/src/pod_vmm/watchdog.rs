//! The agent's health check: while the VM runs, the pod process pings the guest's agent every
//! [`crate::timeouts::AGENT_HEALTH_INTERVAL`]. A guest that stops answering (its agent starved
//! by a real-time busy loop, wedged, or gone while the kernel runs on) is logged at the first
//! missed answer; once it has been silent for the pod's `agent_timeout_secs`, the VM is stopped
//! and the pod recorded as stopped for that reason (Kata's agent check does the same for its
//! sandboxes). A paused VM does not answer by design: pause, resume and snapshot go through
//! [`Watched`], which restarts the silence clock.

use super::control::ControlTarget;
use super::protocol::PodEvent;
use super::Event;
use agent::client::AgentCalls;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What the control thread tells the health check: the VM is paused (or being snapshotted),
/// and a counter of such changes, so that a ping that overlapped one does not count.
#[derive(Default)]
pub struct Watch {
    paused: AtomicBool,
    changes: AtomicU64,
}

impl Watch {
    fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.changes.fetch_add(1, Ordering::SeqCst);
    }
}

/// A [`ControlTarget`] whose pauses the health check knows of, and whose pauses and resumes
/// the pod's event stream tells ([`super::events`]; its subscribers are taken here too).
pub struct Watched {
    pub inner: Arc<dyn ControlTarget>,
    pub watch: Arc<Watch>,
    pub hub: Arc<super::events::Hub>,
    /// The VM runs on threads of a process that hosts it (containerd's shim v2).
    pub hosted: bool,
    /// The pod's directory (its agent's socket).
    pub dir: std::path::PathBuf,
}

impl Watched {
    /// Run `f` with the VM counted as paused; it stays so if `f` paused it for good.
    fn quiet<T>(&self, keep: impl Fn(&T) -> bool, f: impl FnOnce() -> T) -> T {
        let was = self.watch.paused.load(Ordering::SeqCst);
        self.watch.set_paused(true);
        let r = f();
        self.watch.set_paused(was || keep(&r));
        r
    }
}

impl ControlTarget for Watched {
    fn pause(&self) -> Result<(), String> {
        self.quiet(Result::is_ok, || self.inner.pause())?;
        self.hub.publish(PodEvent::Paused);
        Ok(())
    }
    fn resume(&self) -> Result<(), String> {
        self.inner.resume()?;
        self.watch.set_paused(false);
        self.hub.publish(PodEvent::Resumed);
        Ok(())
    }
    fn hosted(&self) -> bool {
        self.hosted
    }
    fn subscribe(&self, stream: std::os::unix::net::UnixStream) {
        if let Err(e) = self.hub.add(stream) {
            log::warn!("Event subscriber refused: {e}");
        }
    }
    fn stop(&self) -> Option<String> {
        self.inner.stop()
    }
    fn insert_disk(&self, slot: usize, path: &Path, read_only: bool) -> Result<(), String> {
        self.inner.insert_disk(slot, path, read_only)
    }
    fn eject_disk(&self, slot: usize) -> Result<(), String> {
        self.inner.eject_disk(slot)
    }
    fn add_share(&self, name: &str, path: &Path, read_only: bool) -> Result<(), String> {
        self.inner.add_share(name, path, read_only)
    }
    fn remove_share(&self, name: &str) -> Result<(), String> {
        self.inner.remove_share(name)
    }
    fn snapshot(&self, dir: &Path) -> Result<vmm::SnapshotInfo, String> {
        self.quiet(|_| false, || self.inner.snapshot(dir))
    }
    fn counters(&self) -> Vec<vmm::DeviceCounters> {
        self.inner.counters()
    }
    fn agent(
        &self,
        call: agent::protocol::Request,
        timeout: std::time::Duration,
    ) -> super::control::AgentJob {
        let dir = self.dir.clone();
        Box::new(move || super::control::relay_to_agent(&dir, call, timeout))
    }
}

/// Why a pod whose agent went silent for `silent` (its limit `limit`) was stopped.
pub fn reason(silent: Duration, limit: Duration) -> String {
    format!(
        "the guest agent did not answer for {} s (agent_timeout_secs {}): the VM was stopped",
        silent.as_secs(),
        limit.as_secs()
    )
}

/// The health check's loop (the `agent-watch` thread): returns when a stop was `requested`,
/// the VM is `ending`, or after it sent [`Event::Unresponsive`]. `limit` zero only logs.
pub fn run(
    dir: PathBuf,
    limit: Duration,
    watch: Arc<Watch>,
    requested: Arc<AtomicBool>,
    ending: Arc<AtomicBool>,
    events: mpsc::Sender<Event>,
) {
    let done = || requested.load(Ordering::SeqCst) || ending.load(Ordering::SeqCst);
    let interval = crate::timeouts::AGENT_HEALTH_INTERVAL;
    let mut answered = Instant::now();
    let mut silent_logged = false;
    loop {
        std::thread::sleep(interval);
        let changes = watch.changes.load(Ordering::SeqCst);
        if done() {
            return;
        }
        if watch.paused.load(Ordering::SeqCst) {
            answered = Instant::now();
            continue;
        }
        let ping = crate::agent_link::connect(&dir, Some(crate::timeouts::AGENT_SHORT_CALL))
            .map_err(|e| crate::error::report(&e))
            .and_then(|mut c| c.ping().map_err(|e| crate::error::report(&e)));
        if done() {
            return;
        }
        if watch.changes.load(Ordering::SeqCst) != changes {
            answered = Instant::now();
            continue;
        }
        match ping {
            Ok(_) => {
                if silent_logged {
                    log::info!(
                        "the guest agent answers again, after {} s",
                        answered.elapsed().as_secs()
                    );
                    silent_logged = false;
                }
                answered = Instant::now();
            }
            Err(e) => {
                let silent = answered.elapsed();
                if !silent_logged {
                    log::warn!("the guest agent did not answer its health check: {e}");
                    silent_logged = true;
                }
                if !limit.is_zero() && silent >= limit {
                    let why = reason(silent, limit);
                    log::error!("{why}");
                    let _ = events.send(Event::Unresponsive(why));
                    return;
                }
            }
        }
    }
}
