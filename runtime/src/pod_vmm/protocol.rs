//! The pod process's protocol: typed, versioned messages in the frames the agent protocol
//! uses (`u32` big-endian length + JSON, [`agent::protocol::send`]/[`agent::protocol::recv`]),
//! so ember has one wire format at every boundary it owns.
//!
//! - On the control socket (`<pod dir>/control.sock`) a client sends one [`Message`] holding a
//!   [`Request`] per connection and reads one [`Message`] holding a [`Response`].
//! - On the notify socket (a socketpair between the starter and the pod process it spawned)
//!   the starting pod process reports [`Report`]s to its starter: the phases of the VM's start,
//!   then `Ready` or `Failed`. After `Ready` the starter stores the pod's record with the pod
//!   process in it and answers [`Commit::Committed`]; a pod process whose starter closes the
//!   socket (it died, or gave up) before that, or does not answer within the start timeout,
//!   stops its VM and exits: nothing runs that no record owns.
//!
//! - A client that sends [`Request::Events`] keeps its connection: after [`Response::Done`]
//!   it reads one [`Message`] holding an [`EventRecord`] per event of the pod (a container's
//!   process exited, the VM was paused or resumed, its agent stopped answering, the VM ended)
//!   until the pod process ends, which closes it.
//!
//! A message of another [`VERSION`] is refused with a clear error, never guessed at.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Version of this protocol, carried in every message.
pub const VERSION: u32 = 8;

/// One message on the control socket or the notify pipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message<T> {
    pub version: u32,
    pub body: T,
}

impl<T> Message<T> {
    pub fn new(body: T) -> Message<T> {
        Message {
            version: VERSION,
            body,
        }
    }
}

/// What a client asks the pod process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness; answers [`Response::Pong`].
    Ping,
    /// Stop the vCPUs.
    Pause,
    /// Let the vCPUs run again.
    Resume,
    /// Stop the VM as the pod config's `shutdown` says; answers [`Response::Stopped`] once
    /// it stopped, and the process then exits.
    Stop,
    /// Put the image at `path` (absolute) into empty disk slot `slot`.
    InsertDisk {
        slot: usize,
        path: PathBuf,
        read_only: bool,
    },
    /// Empty disk slot `slot`.
    EjectDisk { slot: usize },
    /// Export host `path` (absolute; a directory or a file) as virtio-fs share `name`.
    AddShare {
        name: String,
        path: PathBuf,
        read_only: bool,
    },
    /// Withdraw virtio-fs share `name`.
    RemoveShare { name: String },
    /// Save a snapshot of the VM into the new directory `dir` (absolute); the VM runs on.
    /// Answers [`Response::Snapshotted`].
    Snapshot { dir: PathBuf },
    /// What the VM's devices counted; answers [`Response::Counters`].
    Counters,
    /// Turns this connection into the pod's event stream (see the module documentation).
    Events,
    /// Make `call` on the pod's agent and answer what the agent answered
    /// ([`Response::Agent`], [`Response::AgentRefused`]): the short-lived clients' container
    /// calls (create, start, signal, stats, ...) are the pod process's. `timeout_ms` bounds
    /// the call (a `Wait` to the end of a stop's grace period); absent, the ordinary agent
    /// call timeout. The streams (a process's stdio, a wait without end, the agent's event
    /// stream) are not calls: they have connections of their own.
    Agent {
        call: agent::protocol::Request,
        timeout_ms: Option<u64>,
    },
}

/// Something that happened to a running pod, as its event stream tells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PodEvent {
    /// A container's first process exited (`code`: its exit code, 128 + the signal that
    /// killed it).
    ContainerExited {
        container: String,
        code: i32,
        signal: Option<i32>,
    },
    /// The vCPUs were stopped (`ember pod pause`).
    Paused,
    /// They run again.
    Resumed,
    /// The guest's agent did not answer its health check: the VM is being stopped.
    AgentUnresponsive { reason: String },
    /// The VM ended (the stream ends with it).
    VmEnded { reason: String },
}

/// One event with when the pod process saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    #[serde(flatten)]
    pub event: PodEvent,
}

/// The pod process's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Done,
    /// The process's pid, and whether it hosts the VM on its threads (containerd's shim v2
    /// of the pod) rather than being the VM's own pod process.
    Pong {
        pid: u32,
        #[serde(default)]
        hosted: bool,
    },
    /// The request was refused or failed; the pod goes on.
    Error(String),
    /// The VM stopped. `unsynced` says why the guest's page cache was not flushed to its
    /// disks first, where the pod's `shutdown` asked for that (its agent did not answer).
    Stopped {
        unsynced: Option<String>,
    },
    /// What a snapshot wrote.
    Snapshotted(vmm::SnapshotInfo),
    /// Each device's counters (frames dropped, requests that waited for a rate limiter).
    Counters(Vec<vmm::DeviceCounters>),
    /// The agent's answer to [`Request::Agent`].
    Agent(agent::protocol::Response),
    /// The agent refused it (its kind of error kept).
    AgentRefused(agent::protocol::AgentError),
    /// No answer from the agent within the call's time.
    AgentTimedOut(String),
}

/// What a starting pod process reports to its starter on the notify pipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Report {
    /// A start phase ended `ms` after the process started.
    Phase { name: String, ms: f64 },
    /// The guest agent announced itself: the pod runs.
    Ready,
    /// The start failed (the process exits).
    Failed { message: String },
}

/// What the starter answers a pod process that reported [`Report::Ready`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Commit {
    /// The pod's record names the pod process: it owns the pod from now on.
    Committed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_in_agent_frames() {
        let mut buf = Vec::new();
        let req = Message::new(Request::InsertDisk {
            slot: 2,
            path: "/var/lib/my disks/a.ext4".into(),
            read_only: true,
        });
        agent::protocol::send(&mut buf, &req).unwrap();
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len() - 4
        );
        let back: Message<Request> = agent::protocol::recv(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);
        let report = Message::new(Report::Phase {
            name: "vm_created".into(),
            ms: 12.5,
        });
        let mut buf = Vec::new();
        agent::protocol::send(&mut buf, &report).unwrap();
        let back: Message<Report> = agent::protocol::recv(&mut buf.as_slice()).unwrap();
        assert_eq!(back, report);
        let mut buf = Vec::new();
        agent::protocol::send(&mut buf, &Message::new(Commit::Committed)).unwrap();
        let back: Message<Commit> = agent::protocol::recv(&mut buf.as_slice()).unwrap();
        assert_eq!(back.body, Commit::Committed);
        assert_eq!(back.version, VERSION);
    }
}
