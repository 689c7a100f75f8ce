//! The pod's event stream ([`super::protocol::Request::Events`]): the pod process's
//! subscribers and what it tells them.
//!
//! A [`Hub`] holds the connections of the clients that asked for events and writes each
//! [`PodEvent`] to all of them, each write bounded by [`WRITE_TIMEOUT`]: a subscriber that
//! stops reading is dropped, never waited for. The control target the pod process serves
//! ([`super::watchdog::Watched`]) tells pause and resume as they succeed and hands it its
//! subscribers; [`relay_agent`] turns the guest agent's own event stream (its containers'
//! exits) into the pod's.

use super::protocol::{EventRecord, Message, PodEvent, Response};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest a write to one subscriber may take before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most subscribers at once; one more is refused (each holds a descriptor).
pub const MAX_SUBSCRIBERS: usize = 64;

/// The subscribers of one pod process.
#[derive(Default)]
pub struct Hub {
    subscribers: Mutex<Vec<UnixStream>>,
}

impl Hub {
    /// Answers a subscriber's `Events` request on `stream` and keeps it: `Done`, written under
    /// the hub's lock so that no event comes before it; or, when the hub is full, the refusal.
    pub fn add(&self, mut stream: UnixStream) -> Result<(), String> {
        let mut subs = self.lock();
        let refused = if subs.len() >= MAX_SUBSCRIBERS {
            Some(format!("{MAX_SUBSCRIBERS} subscribers already"))
        } else {
            stream
                .set_write_timeout(Some(WRITE_TIMEOUT))
                .and_then(|()| stream.set_read_timeout(None))
                .err()
                .map(|e| e.to_string())
        };
        let answer = match &refused {
            Some(why) => Response::Error(format!("events refused: {why}")),
            None => Response::Done,
        };
        let sent = agent::protocol::send(&mut stream, &Message::new(answer));
        if let Some(why) = refused {
            return Err(why);
        }
        sent.map_err(|e| e.to_string())?;
        subs.push(stream);
        Ok(())
    }

    /// Tells every subscriber of `event`; drops those that cannot take it.
    pub fn publish(&self, event: PodEvent) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        log::debug!("pod event {event:?}");
        let msg = Message::new(EventRecord { unix_ms, event });
        self.lock()
            .retain_mut(|s| agent::protocol::send(s, &msg).is_ok());
    }

    /// Number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<UnixStream>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Follows the guest agent's event stream of the pod at `dir`: each container exit is
/// recorded in the pod's record at once ([`record_exit`]) and published, until the agent's
/// connection ends (the VM went away). An agent without an event stream (an older guest
/// image) is logged once and left alone; `ending` set: the VM is going, nothing more is
/// recorded.
pub fn relay_agent(dir: &Path, hub: &Hub, ending: &AtomicBool) {
    let events = crate::agent_link::connect(dir, None)
        .map_err(|e| crate::error::report(&e))
        .and_then(|c| c.events().map_err(|e| crate::error::report(&e)));
    let events = match events {
        Ok(ev) => ev,
        Err(e) => {
            log::info!("no event stream from the guest agent: {e}");
            return;
        }
    };
    for ev in events {
        match ev {
            Ok(agent::client::AgentEvent::ContainerExited {
                container_id,
                status,
            }) => {
                log::info!("container {container_id} exited: code {}", status.code);
                record_exit(dir, &container_id, status.code, ending);
                hub.publish(PodEvent::ContainerExited {
                    container: container_id,
                    code: status.code,
                    signal: status.signal,
                })
            }
            Err(e) => {
                log::debug!(
                    "the agent's event stream broke: {}",
                    crate::error::report(&e)
                );
                return;
            }
        }
    }
}

/// The pod process keeps its containers' table: container `cid` of the pod at `dir` exited
/// with `code`, so its record says so without a client having to ask the agent
/// ([`super::lock_own_record`]); skipped once the VM is `ending` (a stop records the
/// containers itself).
fn record_exit(dir: &Path, cid: &str, code: i32, ending: &AtomicBool) {
    let what = format!("container {cid} exited ({code})");
    let Some((_lock, mut rec)) = super::lock_own_record(dir, &what) else {
        return;
    };
    if ending.load(Ordering::SeqCst) || !rec.record_exit(cid, code) {
        return;
    }
    if let Err(e) = rec.store(dir) {
        log::warn!("{what}; not recorded: {}", crate::error::report(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_gets_each_event_and_a_gone_one_is_dropped() {
        let hub = Hub::default();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, b_peer) = UnixStream::pair().unwrap();
        hub.add(a).unwrap();
        hub.add(b).unwrap();
        drop(b_peer);
        hub.publish(PodEvent::Paused);
        assert_eq!(hub.subscribers(), 1, "the closed subscriber stays");
        hub.publish(PodEvent::VmEnded {
            reason: "test".into(),
        });
        let answer: Message<Response> = agent::protocol::recv(&mut a_peer).unwrap();
        assert_eq!(answer.body, Response::Done);
        let first: Message<EventRecord> = agent::protocol::recv(&mut a_peer).unwrap();
        assert_eq!(first.body.event, PodEvent::Paused);
        assert!(first.body.unix_ms > 0);
        let second: Message<EventRecord> = agent::protocol::recv(&mut a_peer).unwrap();
        assert_eq!(
            second.body.event,
            PodEvent::VmEnded {
                reason: "test".into()
            }
        );
    }

    #[test]
    fn a_subscriber_that_stops_reading_is_dropped_not_waited_for() {
        let hub = Hub::default();
        let (a, _held) = UnixStream::pair().unwrap();
        hub.add(a).unwrap();
        let reason = "x".repeat(64 * 1024);
        let t = std::time::Instant::now();
        // The socket buffer fills; the write that does not fit times out and drops it.
        while hub.subscribers() == 1 {
            hub.publish(PodEvent::AgentUnresponsive {
                reason: reason.clone(),
            });
            assert!(t.elapsed() < Duration::from_secs(30), "never dropped");
        }
        assert_eq!(hub.subscribers(), 0);
    }

    #[test]
    fn the_wire_form_is_flat_json() {
        let rec = EventRecord {
            unix_ms: 5,
            event: PodEvent::ContainerExited {
                container: "c2".into(),
                code: 7,
                signal: None,
            },
        };
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"unix_ms": 5, "event": "container_exited", "container": "c2",
                               "code": 7, "signal": null})
        );
    }

    #[test]
    fn subscribers_are_bounded() {
        let hub = Hub::default();
        let mut peers = Vec::new();
        for _ in 0..MAX_SUBSCRIBERS {
            let (a, b) = UnixStream::pair().unwrap();
            hub.add(a).unwrap();
            peers.push(b);
        }
        let (a, mut b) = UnixStream::pair().unwrap();
        assert!(hub.add(a).is_err());
        // The refused one is told why.
        let answer: Message<Response> = agent::protocol::recv(&mut b).unwrap();
        assert!(
            matches!(&answer.body, Response::Error(m) if m.contains("subscribers already")),
            "{answer:?}"
        );
    }
}
