//! The pod VMM process's control socket (`<pod dir>/control.sock`): one [`Request`] per
//! connection, one [`Response`], in the pod protocol's frames ([`super::protocol`]). Every
//! socket operation has a timeout, so a stuck VMM never hangs a caller.

use super::protocol::{Message, VERSION};
pub use super::protocol::{Request, Response};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a client waits for an answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = crate::timeouts::POD_CONTROL;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot reach the pod's VMM process at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("No answer from the pod's VMM process at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Bad message from the pod's VMM process at {path}")]
    Frame {
        path: PathBuf,
        #[source]
        source: agent::protocol::FrameError,
    },
    #[error("The pod's VMM process speaks protocol version {0}, this ember {VERSION}")]
    Version(u32),
    #[error("The pod's VMM process refused {request}: {message}")]
    Refused { request: String, message: String },
}

impl Error {
    /// True when nobody listens on the socket (missing file or connection refused): the VMM
    /// process is gone.
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }
}

/// A call on the pod's agent, ready to run ([`ControlTarget::agent`]).
pub type AgentJob = Box<dyn FnOnce() -> Response + Send>;

/// What the control socket drives (the VM handle in production).
pub trait ControlTarget: Send + Sync {
    fn pause(&self) -> Result<(), String>;
    fn resume(&self) -> Result<(), String>;
    /// Stop the VM (the machine); why the guest was not synced first, where it was to be.
    fn stop(&self) -> Option<String>;
    /// Put the image at `path` into the VM's empty disk slot `slot`.
    fn insert_disk(&self, _slot: usize, _path: &Path, _read_only: bool) -> Result<(), String> {
        Err("this pod has no disk slots".into())
    }
    /// Empty disk slot `slot`.
    fn eject_disk(&self, _slot: usize) -> Result<(), String> {
        Err("this pod has no disk slots".into())
    }
    /// Export host `path` as virtio-fs share `name`.
    fn add_share(&self, _name: &str, _path: &Path, _read_only: bool) -> Result<(), String> {
        Err("this pod has no shared filesystem".into())
    }
    /// Withdraw virtio-fs share `name`.
    fn remove_share(&self, _name: &str) -> Result<(), String> {
        Err("this pod has no shared filesystem".into())
    }
    /// Snapshot the VM into the new directory `dir`.
    fn snapshot(&self, _dir: &Path) -> Result<vmm::SnapshotInfo, String> {
        Err("this pod has no VM to snapshot".into())
    }
    /// What the VM's devices counted (none without a VM).
    fn counters(&self) -> Vec<vmm::DeviceCounters> {
        Vec::new()
    }
    /// Whether the VM runs on threads of a process that hosts it (containerd's shim v2).
    fn hosted(&self) -> bool {
        false
    }
    /// What makes `call` on the pod's agent within `timeout` ([`Request::Agent`]). It runs
    /// after the target is let go, so a call that waits on the agent does not keep the VM
    /// (its memory, its devices' files) alive past the pod's end.
    fn agent(&self, _call: agent::protocol::Request, _timeout: Duration) -> AgentJob {
        Box::new(|| Response::Error("this pod process has no agent".into()))
    }
    /// Answer an `Events` request on `stream`: `Done` and keep it as a subscriber of the
    /// pod's events, or the reason it is refused.
    fn subscribe(&self, mut stream: UnixStream) {
        let refused = Response::Error("this pod process has no event stream".into());
        let _ = agent::protocol::send(&mut stream, &Message::new(refused));
    }
}

/// Send one request and wait for its answer; a [`Response::Error`] becomes
/// [`Error::Refused`].
pub fn request(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, Error> {
    exchange(socket, request, timeout).map(|(_, answer)| answer)
}

/// Connects to `socket`, sends `request` and reads its answer, all within `timeout`; the
/// connection comes back too (an event stream goes on on it).
fn exchange(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(UnixStream, Response), Error> {
    let mut stream = UnixStream::connect(socket).map_err(|source| Error::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let io = |source| Error::Io {
        path: socket.to_path_buf(),
        source,
    };
    let frame = |source| Error::Frame {
        path: socket.to_path_buf(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    agent::protocol::send(&mut stream, &Message::new(request.clone())).map_err(frame)?;
    let answer: Message<Response> = agent::protocol::recv(&mut stream).map_err(frame)?;
    if answer.version != VERSION {
        return Err(Error::Version(answer.version));
    }
    match answer.body {
        Response::Error(message) => Err(Error::Refused {
            request: format!("{request:?}"),
            message,
        }),
        other => Ok((stream, other)),
    }
}

/// A client's end of the pod's event stream ([`subscribe`]).
pub struct EventStream {
    stream: UnixStream,
    path: PathBuf,
}

impl EventStream {
    /// The next event; `None` once the pod process closed the stream (its VM ended).
    pub fn next_event(&mut self) -> Result<Option<super::protocol::EventRecord>, Error> {
        match agent::protocol::recv::<_, Message<super::protocol::EventRecord>>(&mut self.stream) {
            Ok(m) if m.version != VERSION => Err(Error::Version(m.version)),
            Ok(m) => Ok(Some(m.body)),
            Err(agent::protocol::FrameError::Closed) => Ok(None),
            Err(source) => Err(Error::Frame {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// Subscribes to the pod's events at `socket`: the stream, once the pod process took it.
pub fn subscribe(socket: &Path) -> Result<EventStream, Error> {
    let (stream, answer) = exchange(socket, &Request::Events, DEFAULT_TIMEOUT)?;
    if answer != Response::Done {
        return Err(Error::Refused {
            request: "Events".into(),
            message: format!("unexpected answer {answer:?}"),
        });
    }
    // Events come when they happen.
    stream.set_read_timeout(None).map_err(|source| Error::Io {
        path: socket.to_path_buf(),
        source,
    })?;
    Ok(EventStream {
        stream,
        path: socket.to_path_buf(),
    })
}

/// What `target` answers to `req`.
fn answer(req: &Request, target: &dyn ControlTarget) -> Response {
    let done = |r: Result<(), String>| r.map_or_else(Response::Error, |()| Response::Done);
    match req {
        Request::Ping => Response::Pong {
            pid: std::process::id(),
            hosted: target.hosted(),
        },
        Request::Pause => done(target.pause()),
        Request::Resume => done(target.resume()),
        // Answered by [`handle_connection`], after the stop.
        Request::Stop => Response::Error("stop is answered once stopped".into()),
        // Answered by [`handle_connection`], which hands the connection over.
        Request::Events => Response::Error("events need their own connection".into()),
        Request::Counters => Response::Counters(target.counters()),
        Request::InsertDisk { path, .. } if !path.is_absolute() => {
            Response::Error(format!("disk path {} is not absolute", path.display()))
        }
        Request::InsertDisk {
            slot,
            path,
            read_only,
        } => done(target.insert_disk(*slot, path, *read_only)),
        Request::EjectDisk { slot } => done(target.eject_disk(*slot)),
        Request::AddShare { path, .. } if !path.is_absolute() => {
            Response::Error(format!("share path {} is not absolute", path.display()))
        }
        Request::AddShare {
            name,
            path,
            read_only,
        } => done(target.add_share(name, path, *read_only)),
        Request::RemoveShare { name } => done(target.remove_share(name)),
        Request::Snapshot { dir } if !dir.is_absolute() => {
            Response::Error(format!("snapshot path {} is not absolute", dir.display()))
        }
        Request::Snapshot { dir } => target
            .snapshot(dir)
            .map_or_else(Response::Error, Response::Snapshotted),
        Request::Agent { call, timeout_ms } => agent_job(call, *timeout_ms, target)(),
    }
}

/// The job that makes agent `call` for a [`Request::Agent`] (the streams refused here).
fn agent_job(
    call: &agent::protocol::Request,
    timeout_ms: Option<u64>,
    target: &dyn ControlTarget,
) -> AgentJob {
    match call {
        agent::protocol::Request::AttachStdio { .. } | agent::protocol::Request::Events => {
            Box::new(|| {
                Response::Error("a stream needs a connection of its own to the agent".into())
            })
        }
        call => target.agent(
            call.clone(),
            timeout_ms.map_or(crate::agent_link::CALL_TIMEOUT, Duration::from_millis),
        ),
    }
}

/// Makes `call` on the agent of the pod at `dir` (a connection of its own, bounded by
/// `timeout`) for a client of the control socket: what a [`ControlTarget::agent`] of a pod
/// process does.
pub fn relay_to_agent(dir: &Path, call: agent::protocol::Request, timeout: Duration) -> Response {
    use agent::client::ClientError;
    let mut client = match crate::agent_link::connect(dir, Some(timeout)) {
        Ok(c) => c,
        Err(e) => return Response::Error(crate::error::report(&e)),
    };
    match client.call(call) {
        Ok(answer) => Response::Agent(answer),
        Err(ClientError::Agent(e)) => Response::AgentRefused(e),
        Err(ClientError::Frame(agent::protocol::FrameError::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Response::AgentTimedOut(format!("no answer from the agent within {timeout:?}"))
        }
        Err(e) => Response::Error(crate::error::report(&e)),
    }
}

/// The agent of a running pod, reached through its pod process ([`Request::Agent`]): what the
/// short-lived clients use for their container calls.
pub struct PodAgent {
    socket: PathBuf,
    timeout: Duration,
}

impl PodAgent {
    /// The agent of the pod at `pod_dir`; each call bounded by `timeout`.
    pub fn new(pod_dir: &Path, timeout: Duration) -> PodAgent {
        PodAgent {
            socket: pod_dir.join(super::CONTROL_SOCKET),
            timeout,
        }
    }
}

impl agent::client::AgentCalls for PodAgent {
    fn call(
        &mut self,
        call: agent::protocol::Request,
    ) -> Result<agent::protocol::Response, agent::client::ClientError> {
        use agent::client::ClientError;
        let req = Request::Agent {
            call,
            timeout_ms: Some(u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)),
        };
        // The pod process's bound on the call, and time for it to answer.
        match exchange(&self.socket, &req, self.timeout + DEFAULT_TIMEOUT) {
            Ok((_, Response::Agent(answer))) => Ok(answer),
            Ok((_, Response::AgentRefused(e))) => Err(ClientError::Agent(e)),
            Ok((_, Response::AgentTimedOut(why))) => {
                Err(ClientError::Frame(agent::protocol::FrameError::Io(
                    std::io::Error::new(std::io::ErrorKind::TimedOut, why),
                )))
            }
            Ok((_, other)) => Err(ClientError::Unexpected {
                request: "Agent",
                response: format!("{other:?}"),
            }),
            Err(Error::Refused { message, .. }) => Err(ClientError::Relay(message)),
            Err(e) => Err(ClientError::Relay(crate::error::report(&e))),
        }
    }
}

/// Answer one connection. Returns true when the request was `Stop` (the target stopped, then
/// answered). The target is held only while a request is answered; a pod whose target is gone
/// answers that its VM is gone.
fn handle_connection<T: ControlTarget>(
    mut stream: UnixStream,
    target: &Weak<T>,
    answering: &AtomicUsize,
) -> bool {
    let _ = stream.set_read_timeout(Some(DEFAULT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(DEFAULT_TIMEOUT));
    let (resp, stop) = match agent::protocol::recv::<_, Message<Request>>(&mut stream) {
        Ok(m) if m.version != VERSION => (
            Response::Error(format!(
                "protocol version {} is not this VMM's {VERSION}",
                m.version
            )),
            false,
        ),
        Ok(m) => {
            log::debug!("control request {:?}", m.body);
            match Held::new(target, answering) {
                None => (Response::Error("the pod's VM is gone".into()), false),
                Some(t) => match &m.body {
                    Request::Events => {
                        t.0.subscribe(stream);
                        return false;
                    }
                    Request::Stop => {
                        let unsynced = t.0.stop();
                        (Response::Stopped { unsynced }, true)
                    }
                    Request::Agent { call, timeout_ms } => {
                        let job = agent_job(call, *timeout_ms, &*t.0);
                        drop(t);
                        (job(), false)
                    }
                    other => (answer(other, &*t.0), false),
                },
            }
        }
        Err(e) => {
            log::warn!("Bad control request: {e}");
            (Response::Error(format!("bad request: {e}")), false)
        }
    };
    let _ = agent::protocol::send(&mut stream, &Message::new(resp));
    stop
}

/// The target, held while a request is answered, counted in `answering`.
struct Held<'a, T>(Arc<T>, &'a AtomicUsize);

impl<'a, T> Held<'a, T> {
    fn new(target: &Weak<T>, answering: &'a AtomicUsize) -> Option<Held<'a, T>> {
        answering.fetch_add(1, Ordering::SeqCst);
        match target.upgrade() {
            Some(t) => Some(Held(t, answering)),
            None => {
                answering.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connections answered at the same time; more are refused with an error at once, so a flood
/// of clients cannot pile up threads.
const MAX_IN_FLIGHT: usize = 64;

/// Serve `listener` until a `Stop` request arrives (then the target was stopped).
pub fn serve<T: ControlTarget + 'static>(listener: UnixListener, target: Arc<T>) {
    serve_until(listener, target, &AtomicBool::new(false));
}

/// [`serve`], also ending at the first connection after `ending` was set (whoever sets it
/// connects once, to wake the accept).
///
/// Each connection is answered on a thread of its own (`control-req`), so a slow request (a
/// snapshot, a stop) or a client that connects and says nothing holds up no other: a `Ping`
/// is answered while a `Snapshot` runs. Once a `Stop` was answered, serving ends.
pub fn serve_until<T: ControlTarget + 'static>(
    listener: UnixListener,
    target: Arc<T>,
    ending: &AtomicBool,
) {
    let stopped = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let answering = Arc::new(AtomicUsize::new(0));
    // Where a handler that answered `Stop` connects, to wake the accept below.
    let wake: Option<PathBuf> = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    for stream in listener.incoming() {
        if ending.load(Ordering::SeqCst) || stopped.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            log::warn!("Control request refused: {MAX_IN_FLIGHT} requests in flight");
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let busy = Response::Error(format!("busy: {MAX_IN_FLIGHT} requests in flight"));
            let _ = agent::protocol::send(&mut stream, &Message::new(busy));
            continue;
        }
        let (t, done, count, wake, busy) = (
            Arc::downgrade(&target),
            stopped.clone(),
            in_flight.clone(),
            wake.clone(),
            answering.clone(),
        );
        let spawned = crate::logging::spawn("control-req", move || {
            if handle_connection(stream, &t, &busy) {
                done.store(true, Ordering::SeqCst);
                if let Some(path) = wake {
                    let _ = UnixStream::connect(path);
                }
            }
            count.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            // The connection went with the closure: its client sees it closed.
            log::error!("Cannot start a thread for a control request: {e}");
            in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
    // Requests being answered hold the target; serving ends once they are done, so that
    // the VM's handle goes with it, as the pod process relies on (an agent call runs after
    // its request let the target go).
    drop(target);
    let deadline = std::time::Instant::now() + DEFAULT_TIMEOUT;
    while answering.load(Ordering::SeqCst) > 0 {
        if std::time::Instant::now() >= deadline {
            log::warn!("control requests still being answered after {DEFAULT_TIMEOUT:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_dir;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[derive(Default)]
    struct Recorder {
        paused: AtomicU32,
        resumed: AtomicU32,
        stopped: AtomicU32,
        disks: std::sync::Mutex<Vec<String>>,
    }

    impl ControlTarget for Recorder {
        fn pause(&self) -> Result<(), String> {
            self.paused.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            if self.paused.load(Ordering::SeqCst) == 0 {
                return Err("not paused".into());
            }
            self.resumed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn stop(&self) -> Option<String> {
            self.stopped.fetch_add(1, Ordering::SeqCst);
            Some("the test agent is silent".into())
        }
        fn insert_disk(&self, slot: usize, path: &Path, read_only: bool) -> Result<(), String> {
            let d = format!("insert {slot} {read_only} {}", path.display());
            self.disks.lock().unwrap().push(d);
            Ok(())
        }
        fn eject_disk(&self, slot: usize) -> Result<(), String> {
            self.disks.lock().unwrap().push(format!("eject {slot}"));
            Ok(())
        }
    }

    #[test]
    fn requests_reach_the_target() {
        let dir = test_dir("control");
        let sock = dir.join("control.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let target = Arc::new(Recorder::default());
        let t = target.clone();
        let server = std::thread::spawn(move || serve(listener, t));
        let to = Duration::from_secs(5);
        assert!(matches!(
            request(&sock, &Request::Ping, to).unwrap(),
            Response::Pong { .. }
        ));
        let err = request(&sock, &Request::Resume, to).unwrap_err();
        assert!(err.to_string().contains("not paused"), "{err}");
        request(&sock, &Request::Pause, to).unwrap();
        request(&sock, &Request::Resume, to).unwrap();
        // Disk requests: the path keeps its spaces; a relative one is refused before the
        // target.
        let insert = |path: &str| Request::InsertDisk {
            slot: 1,
            path: path.into(),
            read_only: true,
        };
        request(&sock, &insert("/var/lib/my disks/a.ext4"), to).unwrap();
        request(&sock, &Request::EjectDisk { slot: 1 }, to).unwrap();
        let err = request(&sock, &insert("relative.img"), to).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err}");
        // Garbage, an oversized frame and another protocol version: refused, the server goes
        // on.
        for bad in [
            b"\x00\x00\x00\x05hello".to_vec(),
            b"\xff\xff\xff\xff".to_vec(),
            br#"{"version":99,"body":"Ping"}"#.to_vec(),
        ] {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(to)).unwrap();
            if bad[0] == b'{' {
                agent::protocol::write_frame(&mut s, &bad).unwrap();
            } else {
                std::io::Write::write_all(&mut s, &bad).unwrap();
            }
            let resp: Message<Response> = agent::protocol::recv(&mut s).unwrap();
            assert!(matches!(resp.body, Response::Error(_)), "{resp:?}");
        }
        let stopped = request(&sock, &Request::Stop, to).unwrap();
        assert_eq!(
            stopped,
            Response::Stopped {
                unsynced: Some("the test agent is silent".into())
            }
        );
        server.join().unwrap();
        assert_eq!(target.paused.load(Ordering::SeqCst), 1);
        assert_eq!(target.resumed.load(Ordering::SeqCst), 1);
        assert_eq!(target.stopped.load(Ordering::SeqCst), 1);
        assert_eq!(
            *target.disks.lock().unwrap(),
            ["insert 1 true /var/lib/my disks/a.ext4", "eject 1"]
        );
    }

    /// A pod process whose snapshot takes until it is let go, and whose agent answers a
    /// start of c1 with pid 42, refuses a signal as not found and never answers a wait.
    #[derive(Default)]
    struct Scripted {
        go: std::sync::Mutex<bool>,
        changed: std::sync::Condvar,
    }

    impl ControlTarget for Scripted {
        fn pause(&self) -> Result<(), String> {
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            Ok(())
        }
        fn stop(&self) -> Option<String> {
            None
        }
        fn snapshot(&self, _dir: &Path) -> Result<vmm::SnapshotInfo, String> {
            let mut go = self.go.lock().unwrap();
            while !*go {
                go = self.changed.wait(go).unwrap();
            }
            Err("let go".into())
        }
        fn agent(&self, call: agent::protocol::Request, timeout: Duration) -> AgentJob {
            use agent::protocol::{AgentError, ErrorKind, Request as A, Response as R};
            let answer = match call {
                A::StartContainer { id } if id == "c1" => Response::Agent(R::Pid(42)),
                A::Signal { .. } => {
                    Response::AgentRefused(AgentError::new(ErrorKind::NotFound, "no container c9"))
                }
                A::Wait { .. } => Response::AgentTimedOut(format!("waited {timeout:?}")),
                // An agent that takes its time (the job holds nothing of the target).
                A::ProcessList { .. } => {
                    return Box::new(|| {
                        std::thread::sleep(Duration::from_secs(3));
                        Response::Agent(R::Processes(Vec::new()))
                    })
                }
                other => Response::Error(format!("unexpected {other:?}")),
            };
            Box::new(move || answer)
        }
    }

    #[test]
    fn a_slow_request_or_a_mute_client_holds_up_no_other() {
        let dir = test_dir("control-concurrent");
        let sock = dir.join("control.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let target = Arc::new(Scripted::default());
        let t = target.clone();
        let server = std::thread::spawn(move || serve(listener, t));
        let to = Duration::from_secs(5);
        // A client that connects and says nothing, and a snapshot that does not end.
        let _mute = UnixStream::connect(&sock).unwrap();
        let snap_sock = sock.clone();
        let snapshot = std::thread::spawn(move || {
            request(
                &snap_sock,
                &Request::Snapshot {
                    dir: "/nonexistent/snap".into(),
                },
                to,
            )
        });
        std::thread::sleep(Duration::from_millis(100));
        // Both in flight, a ping is answered at once.
        let start = std::time::Instant::now();
        assert!(matches!(
            request(&sock, &Request::Ping, to).unwrap(),
            Response::Pong { .. }
        ));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(!snapshot.is_finished(), "the snapshot did not wait");
        *target.go.lock().unwrap() = true;
        target.changed.notify_all();
        let err = snapshot.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("let go"), "{err}");
        // A stop still ends serving, with the mute client still connected.
        let stopped = request(&sock, &Request::Stop, to).unwrap();
        assert_eq!(stopped, Response::Stopped { unsynced: None });
        server.join().unwrap();
    }

    #[test]
    fn container_calls_are_made_by_the_pod_process() {
        use agent::client::{AgentCalls, ClientError};
        let dir = test_dir("control-agent");
        let listener = UnixListener::bind(dir.join(crate::pod_vmm::CONTROL_SOCKET)).unwrap();
        let server = std::thread::spawn(move || serve(listener, Arc::new(Scripted::default())));
        let mut agent = PodAgent::new(&dir, Duration::from_millis(1500));
        assert_eq!(agent.start_container("c1").unwrap(), 42);
        // The agent's refusal keeps its kind.
        let err = agent.signal("c9", None, 15, false).unwrap_err();
        assert_eq!(
            err.agent_kind(),
            Some(agent::protocol::ErrorKind::NotFound),
            "{err}"
        );
        // The call's bound travels with it; running out of it reads as a timeout.
        match agent.wait("c1", None).unwrap_err() {
            ClientError::Frame(agent::protocol::FrameError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
                assert!(e.to_string().contains("1.5s"), "{e}");
            }
            other => panic!("{other}"),
        }
        // What the pod process could not do is one line.
        let err = agent.stats().unwrap_err();
        assert!(matches!(err, ClientError::Relay(_)), "{err}");
        // Streams are not relayed.
        let stream = Request::Agent {
            call: agent::protocol::Request::Events,
            timeout_ms: None,
        };
        let sock = dir.join(crate::pod_vmm::CONTROL_SOCKET);
        let err = request(&sock, &stream, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("connection of its own"), "{err}");
        request(&sock, &Request::Stop, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_slow_agent_call_does_not_keep_the_target() {
        use agent::client::AgentCalls;
        let dir = test_dir("control-agent-slow");
        let listener = UnixListener::bind(dir.join(crate::pod_vmm::CONTROL_SOCKET)).unwrap();
        let target = Arc::new(Scripted::default());
        let held = Arc::downgrade(&target);
        let server = std::thread::spawn(move || serve(listener, target));
        let call_dir = dir.clone();
        let slow = std::thread::spawn(move || {
            PodAgent::new(&call_dir, Duration::from_secs(10)).process_list("c1")
        });
        std::thread::sleep(Duration::from_millis(200));
        let start = std::time::Instant::now();
        let sock = dir.join(crate::pod_vmm::CONTROL_SOCKET);
        request(&sock, &Request::Stop, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        // Serving ended, and the target with it, while the agent call still ran.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(held.strong_count(), 0, "the target outlived serving");
        assert!(!slow.is_finished());
        assert_eq!(slow.join().unwrap().unwrap(), Vec::new());
    }

    #[test]
    fn missing_socket_is_gone_and_silent_server_times_out() {
        let dir = test_dir("control-gone");
        let err = request(&dir.join("none.sock"), &Request::Ping, DEFAULT_TIMEOUT).unwrap_err();
        assert!(err.is_gone(), "{err}");
        // A listener that never answers: the client gives up after its timeout.
        let sock = dir.join("mute.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let err = request(&sock, &Request::Ping, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, Error::Frame { .. }), "{err}");
        assert!(!err.is_gone());
    }
}
