//! The shim's control socket (`<root>/<id>/shim.sock`): one JSON request per connection, one
//! or more JSON answers, each on its own line. `exec` passes the caller's stdin, stdout and
//! stderr along with the request (`SCM_RIGHTS`), so the exec'd process's I/O is the caller's.

use super::bundle::ProcessConfig;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the control socket in a container's state directory.
pub const SOCKET: &str = "shim.sock";
/// Limit for one request/answer other than exec (a shutdown stops a VM: allow for it).
pub const CALL_TIMEOUT: std::time::Duration = crate::timeouts::SHIM_CALL;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("Cannot reach the container's shim at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Shim connection failed")]
    Io(#[source] io::Error),
    #[error("Bad message on the shim connection")]
    Json(#[source] serde_json::Error),
    #[error("Cannot pass file descriptors to the shim")]
    Fds(#[source] nix::Error),
    #[error("The shim closed the connection")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    Ps,
    Pause,
    Resume,
    /// New cgroup limits for the container (`runc update`).
    Update {
        limits: agent::protocol::CgroupLimits,
    },
    /// Run a process; the caller's stdin, stdout, stderr come with the request.
    Exec {
        exec_id: String,
        process: ProcessConfig,
    },
    /// Stop the container and the VM now and exit.
    Shutdown,
    /// Set the window size of a terminal process's pty: the container's (`exec_id` `None`)
    /// or an exec'd one.
    Resize {
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Done,
    Pid(i32),
    Processes(Vec<(i32, String)>),
    /// The exec'd process ended with this code (sent after `Pid`).
    Exit(i32),
    Error(String),
}

/// A connection to one container's shim.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(dir: &Path) -> Result<Client, ControlError> {
        let path = dir.join(SOCKET);
        let stream =
            UnixStream::connect(&path).map_err(|source| ControlError::Connect { path, source })?;
        let reader = BufReader::new(stream.try_clone().map_err(ControlError::Io)?);
        Ok(Client { stream, reader })
    }

    /// Send a request, passing `fds` with it.
    pub fn send(&mut self, req: &Request, fds: &[RawFd]) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(req).map_err(ControlError::Json)?;
        line.push(b'\n');
        if fds.is_empty() {
            return self.stream.write_all(&line).map_err(ControlError::Io);
        }
        let iov = [IoSlice::new(&line)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let n = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(ControlError::Fds)?;
        self.stream.write_all(&line[n..]).map_err(ControlError::Io)
    }

    /// Read the next answer; `Response::Error` becomes `ControlError::Refused`.
    pub fn recv(&mut self) -> Result<Response, ControlError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(ControlError::Io)?;
        if n == 0 {
            return Err(ControlError::Closed);
        }
        match serde_json::from_str(&line).map_err(ControlError::Json)? {
            Response::Error(msg) => Err(ControlError::Refused(msg)),
            r => Ok(r),
        }
    }

    /// One request, one answer, within [`CALL_TIMEOUT`].
    pub fn call(dir: &Path, req: &Request) -> Result<Response, ControlError> {
        let mut c = Client::connect(dir)?;
        c.stream
            .set_write_timeout(Some(CALL_TIMEOUT))
            .map_err(ControlError::Io)?;
        c.reader
            .get_ref()
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(ControlError::Io)?;
        c.send(req, &[])?;
        c.recv()
    }
}

/// The shim's side of one connection.
pub struct Conn {
    stream: UnixStream,
}

impl Conn {
    pub fn new(stream: UnixStream) -> Conn {
        Conn { stream }
    }

    /// Read the request line and any descriptors passed with it (at most 3).
    pub fn recv(&mut self) -> Result<(Request, Vec<OwnedFd>), ControlError> {
        let mut data = Vec::new();
        let mut fds = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 3]);
            let (n, got) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(ControlError::Fds)?;
                let mut got = Vec::new();
                for c in msg.cmsgs().map_err(ControlError::Fds)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        got.extend(raw);
                    }
                }
                (msg.bytes, got)
            };
            for fd in got {
                // SAFETY: the kernel just installed this descriptor in our table for us; no
                // one else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if n == 0 {
                return Err(ControlError::Closed);
            }
            data.extend_from_slice(&buf[..n]);
            if data.contains(&b'\n') || data.len() > 1 << 20 {
                break;
            }
        }
        let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
        let req = serde_json::from_slice(line).map_err(ControlError::Json)?;
        Ok((req, fds))
    }

    pub fn send(&mut self, resp: &Response) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(resp).map_err(ControlError::Json)?;
        line.push(b'\n');
        self.stream.write_all(&line).map_err(ControlError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn request_with_descriptors_round_trips() {
        let (a, b) = UnixStream::pair().unwrap();
        let reader = BufReader::new(a.try_clone().unwrap());
        let mut client = Client { stream: a, reader };
        let mut conn = Conn::new(b);
        let (mut r, w) = UnixStream::pair().unwrap();
        let req = Request::Exec {
            exec_id: "e1".into(),
            process: ProcessConfig {
                args: vec!["true".into()],
                ..Default::default()
            },
        };
        client.send(&req, &[w.as_raw_fd()]).unwrap();
        drop(w);
        let (got, fds) = conn.recv().unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 1);
        // The passed descriptor is the same socket: what we write through it arrives at r.
        let mut passed = UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"via fd").unwrap();
        drop(passed);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "via fd");
        conn.send(&Response::Pid(7)).unwrap();
        conn.send(&Response::Error("Nope".into())).unwrap();
        assert_eq!(client.recv().unwrap(), Response::Pid(7));
        assert!(matches!(client.recv(), Err(ControlError::Refused(m)) if m == "Nope"));
        drop(conn);
        assert!(matches!(client.recv(), Err(ControlError::Closed)));
    }
}
