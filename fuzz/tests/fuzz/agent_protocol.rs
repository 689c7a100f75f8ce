//! The agent protocol, both sides.
//!
//! - Agent side (`agent_request`): the bytes a host sends, read as frames
//!   (`read_frame`) through a reader that returns short reads and `EINTR`, each body parsed as
//!   the agent does (`server::parse_request`). A request that parses must survive a round
//!   trip through `send`/`recv`; an error answer must serialise.
//! - Host side (`agent_response`): the bytes an agent (a guest) sends, read by
//!   `AgentClient` calls, `read_hello` and the vsock `CONNECT` handshake.
//!
//! Invariant beyond "no panic": errors are errors — a frame over `MAX_FRAME_SIZE` is refused
//! as `TooLarge` before its body is read. A container's device rules that the agent accepts
//! make a device filter program whose jumps stay inside it.

use std::io::{self, Read, Write};

use agent::client::{read_hello, vsock_handshake, AgentCalls, AgentClient};
use agent::protocol::{
    self, FrameError, ProcessSpec, RequestFrame, ResponseFrame, StdioStream, MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
};
use agent::server::parse_request;
use fuzz::{Input, Target};

const DICT: &[&[u8]] = &[
    b"{\"version\":1,\"id\":1,\"request\":",
    b"\"Ping\"",
    b"{\"Wait\":{\"container_id\":\"c\"}}",
    b"{\"id\":1,\"result\":{\"Ok\":\"Done\"}}",
    b"{\"Err\":{\"kind\":\"NotFound\",\"message\":\"m\"}}",
    b"\"Ok\"",
    b"\"devices\":[{\"allow\":false,\"type\":\"c\",\"major\":1,\"minor\":3,\"access\":\"rw\"}]",
    b"\"limits\":{",
    b"\"Err\"",
    b"null",
    b"true",
    b"-1",
    b"18446744073709551616",
    b"1e999",
    b"\"\\ud800\"",
    b"[",
    b"{",
    b"}",
    b"]",
    b",",
    b":",
    &[0, 0, 0, 2],
    &[0, 0x10, 0, 1],
    &[0xff, 0xff, 0xff, 0xff],
];

pub const REQUEST: Target = Target {
    name: "agent_request",
    max_len: 8192,
    dict: DICT,
};

pub const RESPONSE: Target = Target {
    name: "agent_response",
    max_len: 8192,
    dict: DICT,
};

/// A reader over fuzz bytes that returns at most `chunk` bytes per call and an `EINTR`
/// every `intr` calls.
struct Choppy<'a> {
    data: &'a [u8],
    chunk: usize,
    intr: usize,
    calls: usize,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.intr > 0 && self.calls.is_multiple_of(self.intr) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Choppy<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn choppy(data: &[u8]) -> Choppy<'_> {
    let mut inp = Input::new(data);
    let chunk = 1 + usize::from(inp.u8() % 8) * 512;
    // Every `intr`-th read is EINTR (never every read: that never ends, as for a real fd).
    let intr = match inp.u8() % 8 {
        0 | 1 => 0,
        k => usize::from(k),
    };
    Choppy {
        data: &data[2.min(data.len())..],
        chunk,
        intr,
        calls: 0,
    }
}

/// The declared length of the next frame, if 4 bytes are there.
fn declared(rest: &[u8]) -> Option<usize> {
    rest.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

pub fn request(data: &[u8]) {
    let mut r = choppy(data);
    for _ in 0..16 {
        let next = declared(r.data);
        match protocol::read_frame(&mut r) {
            Ok(body) => match parse_request(&body) {
                Ok((id, request)) => {
                    if let protocol::Request::CreateContainer { spec, .. } = &request {
                        if let Some(rules) = &spec.limits.devices {
                            if let Ok(filter) = agent::devcgroup::Filter::from_rules(rules) {
                                agent::devcgroup::check(&filter.program()).unwrap();
                            }
                        }
                    }
                    let frame = RequestFrame {
                        version: PROTOCOL_VERSION,
                        id,
                        request,
                    };
                    let mut wire = Vec::new();
                    protocol::send(&mut wire, &frame).unwrap();
                    let back: RequestFrame = protocol::recv(&mut wire.as_slice()).unwrap();
                    assert_eq!(back, frame, "agent request does not round-trip");
                }
                Err((id, err)) => {
                    let answer = ResponseFrame {
                        id,
                        result: Err(err),
                    };
                    protocol::send(&mut Vec::new(), &answer).unwrap();
                }
            },
            Err(FrameError::TooLarge { len, .. }) => {
                assert!(len > MAX_FRAME_SIZE);
                assert_eq!(next, Some(len));
                return;
            }
            Err(FrameError::Closed) | Err(FrameError::Io(_)) => return,
            Err(e @ FrameError::Json(_)) => panic!("read_frame gave {e}"),
        }
    }
}

pub fn response(data: &[u8]) {
    let mut inp = Input::new(data);
    let calls = inp.bytes(4).to_vec();
    let rest = inp.rest();
    match calls.first().map(|c| c % 8) {
        Some(0) => {
            let _ = read_hello(&mut choppy(rest));
            return;
        }
        Some(1) => {
            let _ = vsock_handshake(&mut choppy(rest), 1024);
            return;
        }
        _ => {}
    }
    let mut client = AgentClient::new(choppy(rest));
    for c in calls.iter().skip(1) {
        let _ = match c % 12 {
            0 => client.ping().map(drop),
            1 => client.start_container("c").map(drop),
            2 => client.wait("c", None).map(drop),
            3 => client.process_list("c").map(drop),
            4 => client.stats().map(drop),
            5 => client.exec("c", "e", ProcessSpec::new(["sh"])).map(drop),
            6 => client.signal("c", Some("e"), 9, false).map(drop),
            7 => {
                let _ = client.attach_stdio("c", None, StdioStream::Stdout);
                return;
            }
            8 => client.destroy_container("c"),
            9 => client.sync(),
            10 => client.pause("c"),
            _ => client.call(agent::protocol::Request::Ping).map(drop),
        };
    }
}

#[test]
fn fuzz_agent_request() {
    fuzz::run(&REQUEST, request);
}

#[test]
fn fuzz_agent_response() {
    fuzz::run(&RESPONSE, response);
}
