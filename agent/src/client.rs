//! Host-side client of the agent protocol.
//!
//! ```no_run
//! use agent::client::{connect_vsock_uds, AgentCalls, AgentClient};
//! use agent::protocol::DEFAULT_PORT;
//! # fn main() -> Result<(), agent::client::ClientError> {
//! let stream = connect_vsock_uds("/run/ember/pod1/vsock.sock".as_ref(), DEFAULT_PORT)?;
//! let mut client = AgentClient::new(stream);
//! client.ping()?;
//! # Ok(()) }
//! ```

use crate::protocol::{
    self, AgentError, AgentStats, ContainerSpec, ErrorKind, ExitStatus, FrameError, Hello,
    PingInfo, ProcessInfo, ProcessSpec, Request, RequestFrame, Response, ResponseFrame,
    RestoredInfo, StdioStream, PROTOCOL_VERSION,
};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Errors of the agent client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Cannot connect to {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Vsock handshake for port {port} failed: {reason}")]
    Handshake { port: u32, reason: String },
    #[error("Agent connection failed")]
    Frame(#[source] FrameError),
    #[error("Agent answered request {got} while {expected} was pending")]
    IdMismatch { expected: u64, got: u64 },
    #[error("Agent refused the request")]
    Agent(#[source] AgentError),
    /// The call was relayed (by a pod process, on its own connection) and the relay failed.
    #[error("{0}")]
    Relay(String),
    #[error("Unexpected response to {request}: {response}")]
    Unexpected {
        request: &'static str,
        response: String,
    },
}

impl ClientError {
    /// The agent's error kind, when the agent answered with an error.
    pub fn agent_kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Agent(e) => Some(e.kind),
            _ => None,
        }
    }
}

/// A client over any byte stream (vsock-over-UDS, Unix socket, ...).
///
/// Calls are sequential; use one client per concurrent caller (e.g. one for `wait`).
/// Set read/write timeouts on the stream before handing it over if calls must not block forever.
pub struct AgentClient<S: Read + Write> {
    stream: S,
    next_id: u64,
}

impl<S: Read + Write> AgentClient<S> {
    pub fn new(stream: S) -> Self {
        AgentClient { stream, next_id: 1 }
    }

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends one request and returns the agent's answer.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let frame = RequestFrame {
            version: PROTOCOL_VERSION,
            id,
            request,
        };
        protocol::send(&mut self.stream, &frame).map_err(ClientError::Frame)?;
        let resp: ResponseFrame = protocol::recv(&mut self.stream).map_err(ClientError::Frame)?;
        if resp.id != id {
            // The agent could not read our id (only on malformed input) or the stream is
            // out of step: surface its error if it sent one.
            if let Err(e) = resp.result {
                return Err(ClientError::Agent(e));
            }
            return Err(ClientError::IdMismatch {
                expected: id,
                got: resp.id,
            });
        }
        resp.result.map_err(ClientError::Agent)
    }

    /// Turns this connection into the raw byte stream of one stdio stream of a process and
    /// returns the stream: write to it (then shut down / drop) for stdin, read it to EOF for
    /// stdout/stderr. Use a fresh connection for each stream.
    pub fn attach_stdio(
        mut self,
        container_id: &str,
        exec_id: Option<&str>,
        stream: StdioStream,
    ) -> Result<S, ClientError> {
        self.call_done(
            "AttachStdio",
            Request::AttachStdio {
                container_id: container_id.to_string(),
                exec_id: exec_id.map(str::to_string),
                stream,
            },
        )?;
        Ok(self.stream)
    }
}

/// The agent's event stream ([`AgentClient::events`]): each item is one event, until the
/// connection ends (the agent or its VM went away: `None`) or breaks (an error).
pub struct Events<S: Read + Write> {
    stream: S,
    id: u64,
}

/// One event of the agent's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEvent {
    /// A container's init process exited.
    ContainerExited {
        container_id: String,
        status: ExitStatus,
    },
}

impl<S: Read + Write> Iterator for Events<S> {
    type Item = Result<AgentEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let resp: ResponseFrame = match protocol::recv(&mut self.stream) {
            Ok(r) => r,
            Err(FrameError::Closed) => return None,
            Err(e) => return Some(Err(ClientError::Frame(e))),
        };
        if resp.id != self.id {
            return Some(Err(ClientError::IdMismatch {
                expected: self.id,
                got: resp.id,
            }));
        }
        Some(match resp.result {
            Ok(Response::ContainerExited {
                container_id,
                status,
            }) => Ok(AgentEvent::ContainerExited {
                container_id,
                status,
            }),
            Ok(other) => Err(unexpected("Events", other)),
            Err(e) => Err(ClientError::Agent(e)),
        })
    }
}

impl<S: Read + Write> AgentClient<S> {
    /// Turns this connection into the agent's event stream (protocol `Events`). Reads on it
    /// wait as long as the stream's read timeout allows: set none to wait for events.
    pub fn events(mut self) -> Result<Events<S>, ClientError> {
        let id = self.next_id;
        self.call_done("Events", Request::Events)?;
        Ok(Events {
            stream: self.stream,
            id,
        })
    }
}

/// The agent's requests, over whatever carries them: [`AgentClient`] on a connection of its
/// own, or the pod process relaying them on its agent connection (the runtime's pod-process
/// client). Implement [`AgentCalls::call`]; the rest build the requests and read the answers.
pub trait AgentCalls {
    /// Sends one request and returns the agent's answer.
    fn call(&mut self, request: Request) -> Result<Response, ClientError>;

    fn call_done(&mut self, name: &'static str, request: Request) -> Result<(), ClientError> {
        match self.call(request)? {
            Response::Done => Ok(()),
            other => Err(unexpected(name, other)),
        }
    }

    fn call_pid(&mut self, name: &'static str, request: Request) -> Result<i32, ClientError> {
        match self.call(request)? {
            Response::Pid(pid) => Ok(pid),
            other => Err(unexpected(name, other)),
        }
    }

    fn ping(&mut self) -> Result<PingInfo, ClientError> {
        match self.call(Request::Ping)? {
            Response::Pong(info) => Ok(info),
            other => Err(unexpected("Ping", other)),
        }
    }

    fn create_container(&mut self, id: &str, spec: ContainerSpec) -> Result<(), ClientError> {
        self.call_done(
            "CreateContainer",
            Request::CreateContainer {
                id: id.to_string(),
                spec: Box::new(spec),
            },
        )
    }

    /// Starts the created container; returns its init's pid (agent's pid namespace).
    fn start_container(&mut self, id: &str) -> Result<i32, ClientError> {
        self.call_pid(
            "StartContainer",
            Request::StartContainer { id: id.to_string() },
        )
    }

    /// Runs `process` in the running container; returns its pid.
    fn exec(
        &mut self,
        container_id: &str,
        exec_id: &str,
        process: ProcessSpec,
    ) -> Result<i32, ClientError> {
        self.call_pid(
            "Exec",
            Request::Exec {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
                process,
            },
        )
    }

    fn signal(
        &mut self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), ClientError> {
        self.call_done(
            "Signal",
            Request::Signal {
                container_id: container_id.to_string(),
                exec_id: exec_id.map(str::to_string),
                signal,
                all,
            },
        )
    }

    /// Blocks until the process exits.
    fn wait(
        &mut self,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Result<ExitStatus, ClientError> {
        match self.call(Request::Wait {
            container_id: container_id.to_string(),
            exec_id: exec_id.map(str::to_string),
        })? {
            Response::Exit(status) => Ok(status),
            other => Err(unexpected("Wait", other)),
        }
    }

    fn process_list(&mut self, container_id: &str) -> Result<Vec<ProcessInfo>, ClientError> {
        match self.call(Request::ProcessList {
            container_id: container_id.to_string(),
        })? {
            Response::Processes(list) => Ok(list),
            other => Err(unexpected("ProcessList", other)),
        }
    }

    fn pause(&mut self, id: &str) -> Result<(), ClientError> {
        self.call_done("Pause", Request::Pause { id: id.to_string() })
    }

    fn resume(&mut self, id: &str) -> Result<(), ClientError> {
        self.call_done("Resume", Request::Resume { id: id.to_string() })
    }

    /// New cgroup limits for container `id` ([`Request::UpdateContainer`]).
    fn update_container(
        &mut self,
        id: &str,
        limits: crate::protocol::CgroupLimits,
    ) -> Result<(), ClientError> {
        self.call_done(
            "UpdateContainer",
            Request::UpdateContainer {
                id: id.to_string(),
                limits,
            },
        )
    }

    fn destroy_container(&mut self, id: &str) -> Result<(), ClientError> {
        self.call_done(
            "DestroyContainer",
            Request::DestroyContainer { id: id.to_string() },
        )
    }

    fn stats(&mut self) -> Result<AgentStats, ClientError> {
        match self.call(Request::Stats)? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected("Stats", other)),
        }
    }

    fn resize_terminal(
        &mut self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), ClientError> {
        self.call_done(
            "ResizeTerminal",
            Request::ResizeTerminal {
                container_id: container_id.to_string(),
                exec_id: exec_id.map(str::to_string),
                rows,
                cols,
            },
        )
    }

    /// Configures the guest's interfaces (found by MAC: renamed, MTU, addresses, up), then
    /// adds the routes. Safe to repeat.
    fn configure_network(
        &mut self,
        interfaces: Vec<protocol::NetInterface>,
        routes: Vec<protocol::NetRoute>,
    ) -> Result<(), ClientError> {
        self.call_done(
            "ConfigureNetwork",
            Request::ConfigureNetwork { interfaces, routes },
        )
    }

    /// Tells the agent its guest was restored from a snapshot: it credits `entropy` (32 to
    /// 4096 bytes) to the kernel and reseeds its CRNG, sets the wall clock to `realtime_ns`
    /// (ns since the Unix epoch) and the hostname, then reads the guest's (new) boot id. A
    /// host-run agent only checks the arguments (boot id: the host's; step: 0).
    fn restored(
        &mut self,
        realtime_ns: u64,
        entropy: Vec<u8>,
        hostname: String,
    ) -> Result<RestoredInfo, ClientError> {
        match self.call(Request::Restored {
            realtime_ns,
            entropy,
            hostname,
        })? {
            Response::Restored(info) => Ok(info),
            other => Err(unexpected("Restored", other)),
        }
    }

    /// Flush the guest's page cache to its disks.
    fn sync(&mut self) -> Result<(), ClientError> {
        self.call_done("Sync", Request::Sync)
    }

    /// Asks the agent to kill everything and reboot the guest. The agent answers before it
    /// goes down; the connection then closes.
    fn shutdown(&mut self) -> Result<(), ClientError> {
        self.call_done("Shutdown", Request::Shutdown)
    }
}

impl<S: Read + Write> AgentCalls for AgentClient<S> {
    fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        AgentClient::call(self, request)
    }
}

fn unexpected(request: &'static str, response: Response) -> ClientError {
    ClientError::Unexpected {
        request,
        response: format!("{response:?}"),
    }
}

/// Connects to a plain Unix socket the agent listens on (host tests: `--listen unix:PATH`).
pub fn connect_unix(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    })
}

/// Connects to guest vsock `port` through the VMM's hybrid vsock Unix socket (Firecracker
/// style): writes `CONNECT <port>\n` and expects `OK <hostport>\n`.
pub fn connect_vsock_uds(uds: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let mut stream = connect_unix(uds)?;
    vsock_handshake(&mut stream, port)?;
    Ok(stream)
}

/// The hybrid-vsock `CONNECT` handshake on an already connected stream. Reads the reply one
/// byte at a time so nothing after the line is consumed.
pub fn vsock_handshake<S: Read + Write>(stream: &mut S, port: u32) -> Result<u32, ClientError> {
    let fail = |reason: String| ClientError::Handshake { port, reason };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| fail(format!("write: {e}")))?;
    let mut line = Vec::with_capacity(32);
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b) {
            Ok(0) => return Err(fail("connection closed (is the guest listening?)".into())),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > 64 {
                    return Err(fail("reply line too long".into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout (EAGAIN on a socket with SO_RCVTIMEO).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(fail(
                    "no answer from the guest within the call's timeout".into(),
                ))
            }
            Err(e) => return Err(fail(format!("read: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&line);
    text.strip_prefix("OK ")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .ok_or_else(|| fail(format!("unexpected reply {text:?}")))
}

/// Accepts one announce connection on `listener` (the host's `<vsock-uds>_1025` listener, or
/// the `--announce unix:PATH` socket in host tests) and reads the agent's [`Hello`].
pub fn accept_hello(listener: &UnixListener) -> Result<Hello, ClientError> {
    let (mut stream, _) = listener.accept().map_err(|source| ClientError::Connect {
        path: "announce listener".into(),
        source,
    })?;
    read_hello(&mut stream)
}

/// Reads a [`Hello`] frame from an announce connection and checks its version.
pub fn read_hello<R: Read>(stream: &mut R) -> Result<Hello, ClientError> {
    let hello: Hello = protocol::recv(stream).map_err(ClientError::Frame)?;
    if hello.version != PROTOCOL_VERSION {
        return Err(ClientError::Agent(AgentError::new(
            ErrorKind::VersionMismatch,
            format!(
                "Agent speaks protocol {}, host {}",
                hello.version, PROTOCOL_VERSION
            ),
        )));
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream whose reads come from a prepared buffer and whose writes are recorded.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn with_responses(frames: &[ResponseFrame]) -> Duplex {
        let mut input = Vec::new();
        for f in frames {
            protocol::send(&mut input, f).unwrap();
        }
        Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }

    #[test]
    fn call_sends_versioned_frame_and_matches_id() {
        let s = with_responses(&[ResponseFrame {
            id: 1,
            result: Ok(Response::Pid(42)),
        }]);
        let mut c = AgentClient::new(s);
        assert_eq!(c.start_container("c1").unwrap(), 42);
        let s = c.into_inner();
        let sent: RequestFrame = protocol::recv(&mut Cursor::new(s.output)).unwrap();
        assert_eq!(sent.version, PROTOCOL_VERSION);
        assert_eq!(sent.id, 1);
        assert_eq!(sent.request, Request::StartContainer { id: "c1".into() });
    }

    #[test]
    fn agent_error_is_typed() {
        let s = with_responses(&[ResponseFrame {
            id: 1,
            result: Err(AgentError::new(ErrorKind::InvalidState, "Not created")),
        }]);
        let mut c = AgentClient::new(s);
        let err = c.start_container("c1").unwrap_err();
        assert_eq!(err.agent_kind(), Some(ErrorKind::InvalidState));
    }

    #[test]
    fn mismatched_id_and_wrong_variant_are_errors() {
        let s = with_responses(&[
            ResponseFrame {
                id: 5,
                result: Ok(Response::Done),
            },
            ResponseFrame {
                id: 2,
                result: Ok(Response::Done),
            },
        ]);
        let mut c = AgentClient::new(s);
        assert!(matches!(
            c.ping(),
            Err(ClientError::IdMismatch {
                expected: 1,
                got: 5
            })
        ));
        assert!(matches!(
            c.ping(),
            Err(ClientError::Unexpected {
                request: "Ping",
                ..
            })
        ));
    }

    #[test]
    fn restored_sends_its_arguments_and_returns_the_info() {
        let info = RestoredInfo {
            boot_id: "b0".into(),
            clock_step_ms: 42,
        };
        let s = with_responses(&[
            ResponseFrame {
                id: 1,
                result: Ok(Response::Restored(info.clone())),
            },
            ResponseFrame {
                id: 2,
                result: Ok(Response::Done),
            },
        ]);
        let mut c = AgentClient::new(s);
        assert_eq!(c.restored(7, vec![1; 32], "pod".into()).unwrap(), info);
        assert!(matches!(
            c.restored(7, vec![1; 32], "pod".into()),
            Err(ClientError::Unexpected {
                request: "Restored",
                ..
            })
        ));
        let s = c.into_inner();
        let sent: RequestFrame = protocol::recv(&mut Cursor::new(s.output)).unwrap();
        assert_eq!(
            sent.request,
            Request::Restored {
                realtime_ns: 7,
                entropy: vec![1; 32],
                hostname: "pod".into()
            }
        );
    }

    #[test]
    fn handshake_parses_ok_line_without_overreading() {
        let mut s = Duplex {
            input: Cursor::new(b"OK 1073741824\nREST".to_vec()),
            output: Vec::new(),
        };
        assert_eq!(vsock_handshake(&mut s, 1024).unwrap(), 1073741824);
        assert_eq!(s.output, b"CONNECT 1024\n");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"REST");
    }

    #[test]
    fn handshake_rejects_bad_replies() {
        for reply in [&b""[..], b"NO\n", b"OK x\n", &[b'A'; 100][..]] {
            let mut s = Duplex {
                input: Cursor::new(reply.to_vec()),
                output: Vec::new(),
            };
            assert!(matches!(
                vsock_handshake(&mut s, 1024),
                Err(ClientError::Handshake { port: 1024, .. })
            ));
        }
    }

    #[test]
    fn hello_version_checked() {
        let mut buf = Vec::new();
        let mut hello = Hello {
            version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            pid: 1,
            listen: "vsock:1024".into(),
            uptime_ms: 1234,
        };
        protocol::send(&mut buf, &hello).unwrap();
        assert_eq!(read_hello(&mut Cursor::new(buf)).unwrap(), hello);
        hello.version += 1;
        let mut buf = Vec::new();
        protocol::send(&mut buf, &hello).unwrap();
        let err = read_hello(&mut Cursor::new(buf)).unwrap_err();
        assert_eq!(err.agent_kind(), Some(ErrorKind::VersionMismatch));
    }
}
