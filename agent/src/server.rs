//! Serving requests: one thread per connection, requests answered in order.

use crate::container::Agent;
use crate::protocol::{
    self, AgentError, ErrorKind, FrameError, PingInfo, Request, RequestFrame, Response,
    ResponseFrame, PROTOCOL_VERSION,
};
use crate::transport::Listener;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// What the server calls on a `Shutdown` request, after answering it. Never returns.
pub type ShutdownFn = dyn Fn(&Agent) + Send + Sync;

/// Accepts connections forever, one thread each.
pub fn serve(listener: Listener, agent: Arc<Agent>, on_shutdown: Arc<ShutdownFn>) {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let agent = Arc::clone(&agent);
                let on_shutdown = Arc::clone(&on_shutdown);
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || handle_connection(conn, &agent, &*on_shutdown));
                if let Err(e) = spawned {
                    crate::log_error(&format!("Cannot start a connection thread: {e}"));
                }
            }
            Err(e) => {
                crate::log_error(&format!("accept failed: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Parses one request frame body. On failure returns the id (0 when unknown) and the error
/// to answer with.
pub fn parse_request(body: &[u8]) -> Result<(u64, Request), (u64, AgentError)> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        (
            0,
            AgentError::new(ErrorKind::BadRequest, format!("Invalid JSON: {e}")),
        )
    })?;
    let id = value.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
    match value.get("version").and_then(|v| v.as_u64()) {
        None => {
            return Err((
                id,
                AgentError::new(ErrorKind::BadRequest, "Missing protocol version"),
            ))
        }
        Some(v) if v != u64::from(PROTOCOL_VERSION) => {
            return Err((
                id,
                AgentError::new(
                    ErrorKind::VersionMismatch,
                    format!("Agent speaks protocol {PROTOCOL_VERSION}, request has {v}"),
                ),
            ))
        }
        Some(_) => {}
    }
    let frame: RequestFrame = serde_json::from_value(value).map_err(|e| {
        (
            id,
            AgentError::new(ErrorKind::BadRequest, format!("Invalid request: {e}")),
        )
    })?;
    Ok((frame.id, frame.request))
}

fn respond<W: Write>(conn: &mut W, id: u64, result: Result<Response, AgentError>) -> bool {
    protocol::send(conn, &ResponseFrame { id, result }).is_ok()
}

fn to_agent_error(e: &crate::container::Error) -> AgentError {
    AgentError::new(e.kind(), crate::error_chain(e))
}

/// Serves one connection until it closes, turns into a stdio stream, or breaks.
pub fn handle_connection(mut conn: UnixStream, agent: &Agent, on_shutdown: &ShutdownFn) {
    loop {
        let body = match protocol::read_frame(&mut conn) {
            Ok(b) => b,
            Err(FrameError::Closed) => return,
            Err(FrameError::TooLarge { len, max }) => {
                // The stream cannot be resynchronised: answer, then close.
                respond(
                    &mut conn,
                    0,
                    Err(AgentError::new(
                        ErrorKind::FrameTooLarge,
                        format!("Frame of {len} bytes exceeds the maximum of {max}"),
                    )),
                );
                return;
            }
            Err(e) => {
                crate::log_debug(&format!("connection dropped: {}", crate::error_chain(&e)));
                return;
            }
        };
        let (id, request) = match parse_request(&body) {
            Ok(r) => r,
            Err((id, err)) => {
                if !respond(&mut conn, id, Err(err)) {
                    return;
                }
                continue;
            }
        };
        crate::log_debug(&format!("request {id}: {request:?}"));
        match request {
            Request::AttachStdio {
                container_id,
                exec_id,
                stream,
            } => {
                // Claim first, answer second: the stream is ours before the host hears "Done".
                let claim = match agent.claim_stdio(&container_id, exec_id.as_deref(), stream) {
                    Ok(c) => c,
                    Err(e) => {
                        if !respond(&mut conn, id, Err(to_agent_error(&e))) {
                            return;
                        }
                        continue;
                    }
                };
                if !respond(&mut conn, id, Ok(Response::Done)) {
                    return;
                }
                claim.serve(&mut conn);
                let _ = conn.shutdown(std::net::Shutdown::Both);
                return;
            }
            Request::Events => {
                // Subscribed before the answer: no exit after "Done" is missed.
                let exits = agent.exits();
                if !respond(&mut conn, id, Ok(Response::Done)) {
                    return;
                }
                for (pid, status) in exits {
                    let Some(container_id) = agent.container_of_init(pid) else {
                        continue;
                    };
                    let event = Response::ContainerExited {
                        container_id,
                        status,
                    };
                    if !respond(&mut conn, id, Ok(event)) {
                        return;
                    }
                }
                return;
            }
            Request::Shutdown => {
                respond(&mut conn, id, Ok(Response::Done));
                // Give the host a moment to read the answer before everything goes.
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(500)));
                let mut sink = [0u8; 64];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                on_shutdown(agent);
                return;
            }
            other => {
                let result = dispatch(agent, other);
                if !respond(&mut conn, id, result) {
                    return;
                }
            }
        }
    }
}

/// Runs one request (all but `AttachStdio`, `Shutdown` and `Events`, which own the
/// connection).
pub fn dispatch(agent: &Agent, request: Request) -> Result<Response, AgentError> {
    let e = |e: crate::container::Error| to_agent_error(&e);
    match request {
        Request::Ping => Ok(Response::Pong(PingInfo {
            version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: agent.uptime().as_millis() as u64,
        })),
        Request::CreateContainer { id, spec } => {
            agent.create(&id, *spec).map(|_| Response::Done).map_err(e)
        }
        Request::StartContainer { id } => agent.start(&id).map(Response::Pid).map_err(e),
        Request::Exec {
            container_id,
            exec_id,
            process,
        } => agent
            .exec(&container_id, &exec_id, process)
            .map(Response::Pid)
            .map_err(e),
        Request::Signal {
            container_id,
            exec_id,
            signal,
            all,
        } => {
            if !(1..=64).contains(&signal) {
                return Err(AgentError::new(
                    ErrorKind::BadRequest,
                    format!("Invalid signal {signal}"),
                ));
            }
            agent
                .signal(&container_id, exec_id.as_deref(), signal, all)
                .map(|_| Response::Done)
                .map_err(e)
        }
        Request::Wait {
            container_id,
            exec_id,
        } => agent
            .wait(&container_id, exec_id.as_deref())
            .map(Response::Exit)
            .map_err(e),
        Request::ProcessList { container_id } => agent
            .process_list(&container_id)
            .map(Response::Processes)
            .map_err(e),
        Request::Pause { id } => agent.pause(&id).map(|_| Response::Done).map_err(e),
        Request::Resume { id } => agent.resume(&id).map(|_| Response::Done).map_err(e),
        Request::UpdateContainer { id, limits } => agent
            .update(&id, &limits)
            .map(|_| Response::Done)
            .map_err(e),
        Request::DestroyContainer { id } => agent.destroy(&id).map(|_| Response::Done).map_err(e),
        Request::Stats => Ok(Response::Stats(agent.stats())),
        Request::Sync => {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            Ok(Response::Done)
        }
        Request::ResizeTerminal {
            container_id,
            exec_id,
            rows,
            cols,
        } => agent
            .resize(&container_id, exec_id.as_deref(), rows, cols)
            .map(|_| Response::Done)
            .map_err(e),
        Request::ConfigureNetwork { interfaces, routes } => {
            crate::netconf::configure(&interfaces, &routes)
                .map(|_| Response::Done)
                .map_err(|e| AgentError::new(e.kind(), crate::error_chain(&e)))
        }
        Request::Restored {
            realtime_ns,
            entropy,
            hostname,
        } => crate::restore::make_guest_own(realtime_ns, &entropy, &hostname, agent.is_guest())
            .map(Response::Restored)
            .map_err(|e| AgentError::new(e.kind(), crate::error_chain(&e))),
        Request::AttachStdio { .. } | Request::Shutdown | Request::Events => Err(AgentError::new(
            ErrorKind::BadRequest,
            "Request needs its own connection",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_request_errors_carry_kind_and_id() {
        let (id, e) = parse_request(b"{nope").unwrap_err();
        assert_eq!((id, e.kind), (0, ErrorKind::BadRequest));
        let (id, e) = parse_request(br#"{"version":99,"id":7,"request":"Ping"}"#).unwrap_err();
        assert_eq!((id, e.kind), (7, ErrorKind::VersionMismatch));
        let (id, e) = parse_request(br#"{"id":8,"request":"Ping"}"#).unwrap_err();
        assert_eq!((id, e.kind), (8, ErrorKind::BadRequest));
        let (id, e) = parse_request(br#"{"version":1,"id":9,"request":"Fly"}"#).unwrap_err();
        assert_eq!((id, e.kind), (9, ErrorKind::BadRequest));
        let (id, e) = parse_request(b"[1,2]").unwrap_err();
        assert_eq!((id, e.kind), (0, ErrorKind::BadRequest));
        let (id, r) = parse_request(br#"{"version":1,"id":10,"request":"Ping"}"#).unwrap();
        assert_eq!((id, r), (10, Request::Ping));
    }
}
