//! Reaching a pod's agent: connect to the pod's hybrid vsock UDS, `CONNECT 1024`, and talk the
//! agent protocol with [`agent::client::AgentClient`]. Every connection has read and write
//! timeouts, so a dead or wedged guest turns into an error instead of a hang.

use agent::client::{vsock_handshake, AgentClient, ClientError};
use agent::protocol::{StdioStream, DEFAULT_PORT};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the hybrid vsock socket in a pod directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// Default limit for one request/answer with the agent.
pub const CALL_TIMEOUT: Duration = crate::timeouts::AGENT_CALL;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot connect to the pod's agent at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot talk to the pod's agent")]
    Client(#[source] ClientError),
}

/// A connected client with `timeout` on every read and write (`None`: wait forever, for `Wait`).
pub fn connect(
    pod_dir: &Path,
    timeout: Option<Duration>,
) -> Result<AgentClient<UnixStream>, Error> {
    Ok(AgentClient::new(connect_stream(pod_dir, timeout)?))
}

fn connect_stream(pod_dir: &Path, timeout: Option<Duration>) -> Result<UnixStream, Error> {
    let path = pod_dir.join(VSOCK_SOCKET);
    let cerr = |source| Error::Connect {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(&path).map_err(cerr)?;
    // The handshake itself is always bounded.
    let hs = Some(timeout.unwrap_or(CALL_TIMEOUT));
    stream.set_read_timeout(hs).map_err(cerr)?;
    stream.set_write_timeout(hs).map_err(cerr)?;
    vsock_handshake(&mut stream, DEFAULT_PORT).map_err(Error::Client)?;
    stream.set_read_timeout(timeout).map_err(cerr)?;
    stream.set_write_timeout(timeout).map_err(cerr)?;
    Ok(stream)
}

/// A raw stdio stream of a process (see the protocol's `AttachStdio`). Reads wait without limit:
/// output comes when the process writes it.
pub fn attach(
    pod_dir: &Path,
    container_id: &str,
    exec_id: Option<&str>,
    stream: StdioStream,
) -> Result<UnixStream, Error> {
    let client = AgentClient::new(connect_stream(pod_dir, Some(CALL_TIMEOUT))?);
    let s = client
        .attach_stdio(container_id, exec_id, stream)
        .map_err(Error::Client)?;
    let _ = s.set_read_timeout(None);
    Ok(s)
}
