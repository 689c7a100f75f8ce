//! The pod VMM process's control socket (`<pod dir>/control.sock`): one request line per
//! connection, one answer line. Requests: `ping`, `pause`, `resume`, `stop`. Answers: `ok` or
//! `error <message>`. Every socket operation has a timeout, so a stuck VMM never hangs a caller.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a client waits for an answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request line the server reads.
const MAX_LINE: u64 = 256;

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
    #[error("The pod's VMM process refused {request}: {message}")]
    Refused { request: String, message: String },
    #[error("Unexpected answer {0:?} from the pod's VMM process")]
    BadAnswer(String),
}

impl Error {
    /// True when nobody listens on the socket (missing file or connection refused): the VMM
    /// process is gone.
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }
}

/// What the control socket drives (the VM handle in production).
pub trait ControlTarget: Send + Sync {
    fn pause(&self) -> Result<(), String>;
    fn resume(&self) -> Result<(), String>;
    fn stop(&self);
}

/// Send one request and wait for its answer.
pub fn request(socket: &Path, request: &str, timeout: Duration) -> Result<(), Error> {
    let mut stream = UnixStream::connect(socket).map_err(|source| Error::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let io = |source| Error::Io {
        path: socket.to_path_buf(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, 4096))
        .read_line(&mut line)
        .map_err(io)?;
    let line = line.trim_end();
    match line.split_once(' ') {
        _ if line == "ok" => Ok(()),
        Some(("error", msg)) => Err(Error::Refused {
            request: request.to_string(),
            message: msg.to_string(),
        }),
        _ => Err(Error::BadAnswer(line.to_string())),
    }
}

/// Answer one connection. Returns true when the request was `stop`.
pub fn handle_connection(stream: UnixStream, target: &dyn ControlTarget) -> bool {
    let _ = stream.set_read_timeout(Some(DEFAULT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(DEFAULT_TIMEOUT));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return false,
    };
    let mut line = String::new();
    if BufReader::new(std::io::Read::take(stream, MAX_LINE))
        .read_line(&mut line)
        .is_err()
    {
        return false;
    }
    let (answer, stop) = match line.trim() {
        "ping" => (Ok(()), false),
        "pause" => (target.pause(), false),
        "resume" => (target.resume(), false),
        "stop" => (Ok(()), true),
        other => (Err(format!("unknown request {other:?}")), false),
    };
    let text = match answer {
        Ok(()) => "ok\n".to_string(),
        Err(msg) => format!("error {}\n", msg.replace('\n', " ")),
    };
    let _ = writer.write_all(text.as_bytes());
    drop(writer);
    if stop {
        target.stop();
    }
    stop
}

/// Serve `listener` until a `stop` request arrives (then the target was stopped).
pub fn serve(listener: UnixListener, target: &dyn ControlTarget) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if handle_connection(s, target) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
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
        fn stop(&self) {
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn requests_reach_the_target() {
        let dir = test_dir("control");
        let sock = dir.join("control.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let target = Arc::new(Recorder::default());
        let t = target.clone();
        let server = std::thread::spawn(move || serve(listener, &*t));
        let to = Duration::from_secs(5);
        request(&sock, "ping", to).unwrap();
        let err = request(&sock, "resume", to).unwrap_err();
        assert!(err.to_string().contains("not paused"), "{err}");
        request(&sock, "pause", to).unwrap();
        request(&sock, "resume", to).unwrap();
        let err = request(&sock, "explode", to).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }));
        request(&sock, "stop", to).unwrap();
        server.join().unwrap();
        assert_eq!(target.paused.load(Ordering::SeqCst), 1);
        assert_eq!(target.resumed.load(Ordering::SeqCst), 1);
        assert_eq!(target.stopped.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn missing_socket_is_gone_and_silent_server_times_out() {
        let dir = test_dir("control-gone");
        let err = request(&dir.join("none.sock"), "ping", DEFAULT_TIMEOUT).unwrap_err();
        assert!(err.is_gone(), "{err}");
        // A listener that never answers: the client gives up after its timeout.
        let sock = dir.join("mute.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let err = request(&sock, "ping", Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(!err.is_gone());
    }
}
