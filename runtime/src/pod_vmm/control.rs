//! The pod VMM process's control socket (`<pod dir>/control.sock`): one request line per
//! connection, one answer line. Requests: `ping`, `pause`, `resume`, `stop`,
//! `insert-disk <slot> <ro|rw> <path>`, `eject-disk <slot>`. Answers: `ok` or
//! `error <message>`. Every socket operation has a timeout, so a stuck VMM never hangs a caller.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a client waits for an answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = crate::timeouts::POD_CONTROL;

/// Longest request line the server reads (a disk path included).
const MAX_LINE: u64 = 8192;

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
    /// Put the image at `path` into the VM's empty disk slot `slot`.
    fn insert_disk(&self, _slot: usize, _path: &Path, _read_only: bool) -> Result<(), String> {
        Err("this pod has no disk slots".into())
    }
    /// Empty disk slot `slot`.
    fn eject_disk(&self, _slot: usize) -> Result<(), String> {
        Err("this pod has no disk slots".into())
    }
}

/// The `insert-disk` request line.
pub fn insert_disk_request(slot: usize, path: &Path, read_only: bool) -> String {
    let mode = if read_only { "ro" } else { "rw" };
    format!("insert-disk {slot} {mode} {}", path.display())
}

fn parse_slot(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("bad slot number {s:?}"))
}

/// Runs `insert-disk`/`eject-disk` (the part after the verb) against `target`.
fn disk_request(target: &dyn ControlTarget, verb: &str, args: &str) -> Result<(), String> {
    match verb {
        "insert-disk" => {
            let mut parts = args.splitn(3, ' ');
            let (Some(slot), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err("usage: insert-disk SLOT ro|rw PATH".into());
            };
            let read_only = match mode {
                "ro" => true,
                "rw" => false,
                m => return Err(format!("bad mode {m:?} (ro or rw)")),
            };
            if !Path::new(path).is_absolute() {
                return Err(format!("disk path {path:?} is not absolute"));
            }
            target.insert_disk(parse_slot(slot)?, Path::new(path), read_only)
        }
        _ => target.eject_disk(parse_slot(args)?),
    }
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
    let line = line.trim_end_matches(['\n', '\r']);
    let (answer, stop) = match line {
        "ping" => (Ok(()), false),
        "pause" => (target.pause(), false),
        "resume" => (target.resume(), false),
        "stop" => (Ok(()), true),
        other => match other.split_once(' ') {
            Some((verb @ ("insert-disk" | "eject-disk"), args)) => {
                (disk_request(target, verb, args), false)
            }
            _ => (Err(format!("unknown request {other:?}")), false),
        },
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
        fn stop(&self) {
            self.stopped.fetch_add(1, Ordering::SeqCst);
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
        let server = std::thread::spawn(move || serve(listener, &*t));
        let to = Duration::from_secs(5);
        request(&sock, "ping", to).unwrap();
        let err = request(&sock, "resume", to).unwrap_err();
        assert!(err.to_string().contains("not paused"), "{err}");
        request(&sock, "pause", to).unwrap();
        request(&sock, "resume", to).unwrap();
        let err = request(&sock, "explode", to).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }));
        // Disk requests: the path keeps its spaces; bad ones are refused before the target.
        let spaced = Path::new("/var/lib/my disks/a.ext4");
        request(&sock, &insert_disk_request(1, spaced, true), to).unwrap();
        request(&sock, "eject-disk 1", to).unwrap();
        for bad in [
            "insert-disk x rw /a",
            "insert-disk 1 rx /a",
            "insert-disk 1 rw relative.img",
            "insert-disk 1 rw",
            "eject-disk -1",
        ] {
            let err = request(&sock, bad, to).unwrap_err();
            assert!(matches!(err, Error::Refused { .. }), "{bad}: {err}");
        }
        request(&sock, "stop", to).unwrap();
        server.join().unwrap();
        assert_eq!(target.paused.load(Ordering::SeqCst), 1);
        assert_eq!(target.resumed.load(Ordering::SeqCst), 1);
        assert_eq!(target.stopped.load(Ordering::SeqCst), 1);
        assert_eq!(
            *target.disks.lock().unwrap(),
            ["insert 1 true /var/lib/my disks/a.ext4", "eject 1"]
        );
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
