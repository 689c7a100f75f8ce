//! Where the agent listens and announces: AF_VSOCK in a guest, Unix sockets in host tests.
//!
//! Accepted and connected sockets of either family are handed out as `UnixStream`: its
//! `read`/`write`/`shutdown` are plain stream-socket calls that work for vsock too.

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

/// `VMADDR_CID_ANY`: listen on every CID.
pub const CID_ANY: u32 = u32::MAX;

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid endpoint {0:?} (use unix:PATH, vsock:PORT or vsock:CID:PORT)")]
    Parse(String),
    #[error("Cannot listen on {endpoint}")]
    Listen {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
}

/// A socket address the agent listens on or connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Vsock { cid: u32, port: u32 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Vsock { cid, port } if *cid == CID_ANY => write!(f, "vsock:{port}"),
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Parse(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("vsock:").ok_or_else(bad)?;
        let (cid, port) = match rest.split_once(':') {
            Some((cid, port)) => (cid.parse().map_err(|_| bad())?, port),
            None => (CID_ANY, rest),
        };
        let port = port.parse().map_err(|_| bad())?;
        Ok(Endpoint::Vsock { cid, port })
    }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn vsock_socket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_io)
}

/// A listening socket.
pub enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl Listener {
    pub fn bind(ep: &Endpoint) -> Result<Listener, Error> {
        let fail = |source| Error::Listen {
            endpoint: ep.to_string(),
            source,
        };
        match ep {
            Endpoint::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail.
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(Listener::Unix).map_err(fail)
            }
            Endpoint::Vsock { cid, port } => {
                let fd = vsock_socket().map_err(fail)?;
                socket::bind(fd.as_raw_fd(), &VsockAddr::new(*cid, *port))
                    .map_err(|e| fail(nix_io(e)))?;
                socket::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
                    .map_err(|e| fail(nix_io(e)))?;
                Ok(Listener::Vsock(fd))
            }
        }
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<UnixStream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| s),
            Listener::Vsock(fd) => {
                let raw =
                    socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(nix_io)?;
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(raw) }))
            }
        }
    }
}

/// Connects to `ep` (the announce connection).
pub fn connect(ep: &Endpoint) -> Result<UnixStream, Error> {
    let fail = |source| Error::Connect {
        endpoint: ep.to_string(),
        source,
    };
    match ep {
        Endpoint::Unix(path) => UnixStream::connect(path).map_err(fail),
        Endpoint::Vsock { cid, port } => {
            let fd = vsock_socket().map_err(fail)?;
            socket::connect(fd.as_raw_fd(), &VsockAddr::new(*cid, *port))
                .map_err(|e| fail(nix_io(e)))?;
            Ok(UnixStream::from(fd))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        assert_eq!(
            "unix:/tmp/a.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            "vsock:1024".parse::<Endpoint>().unwrap(),
            Endpoint::Vsock {
                cid: CID_ANY,
                port: 1024
            }
        );
        assert_eq!(
            "vsock:2:1025".parse::<Endpoint>().unwrap(),
            Endpoint::Vsock { cid: 2, port: 1025 }
        );
        for bad in ["", "unix:", "tcp:1", "vsock:x", "vsock:2:x", "vsock:1:2:3"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        for s in ["unix:/x", "vsock:1024", "vsock:2:1025"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn vsock_listener_binds_where_af_vsock_exists() {
        let port = 40_000 + (std::process::id() % 20_000);
        match Listener::bind(&Endpoint::Vsock { cid: CID_ANY, port }) {
            Ok(Listener::Vsock(_)) => {}
            Ok(Listener::Unix(_)) => panic!("vsock endpoint gave a Unix listener"),
            Err(Error::Listen { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EAFNOSUPPORT) | Some(libc::ENODEV) | Some(libc::EADDRNOTAVAIL)
                ) =>
            {
                eprintln!("skipping: no AF_VSOCK here ({source})");
            }
            Err(e) => panic!("vsock bind failed: {e:?}"),
        }
    }

    #[test]
    fn unix_listener_accepts_and_connects() {
        let dir = std::env::temp_dir().join(format!("ember-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ep = Endpoint::Unix(dir.join("s.sock"));
        let l = Listener::bind(&ep).unwrap();
        let c = connect(&ep).unwrap();
        let s = l.accept().unwrap();
        use std::io::{Read, Write};
        (&c).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        (&s).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
