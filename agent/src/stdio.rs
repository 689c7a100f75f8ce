//! A process's stdio on the agent side: pipes (or one pty), output buffered until the host
//! attaches, and the copy loops behind [`crate::protocol::Request::AttachStdio`].

use crate::protocol::{StdioStream, STDIO_BUFFER_SIZE};
use nix::fcntl::OFlag;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Errors of stdio handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot create a pipe")]
    Pipe(#[source] nix::Error),
    #[error("Cannot open a pty")]
    Pty(#[source] nix::Error),
    #[error("Cannot open the pty slave {path}")]
    PtySlave {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot open /dev/null")]
    Null(#[source] io::Error),
    #[error("Cannot start the output thread")]
    Thread(#[source] io::Error),
    #[error("{0:?} is already attached or closed")]
    Busy(StdioStream),
    #[error("Process has no terminal")]
    NoTerminal,
    #[error("Cannot resize the terminal")]
    Resize(#[source] nix::Error),
}

/// The three fds the child gets as 0, 1 and 2.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Output collected from one stream of a process.
pub struct OutputBuffer {
    state: Mutex<OutputState>,
    cond: Condvar,
}

#[derive(Default)]
struct OutputState {
    data: VecDeque<u8>,
    eof: bool,
    attached: bool,
}

impl OutputBuffer {
    fn new() -> Arc<Self> {
        Arc::new(OutputBuffer {
            state: Mutex::new(OutputState::default()),
            cond: Condvar::new(),
        })
    }

    fn closed() -> Arc<Self> {
        let b = Self::new();
        b.lock().eof = true;
        b
    }

    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `src` until EOF (or EIO, a pty whose slave closed) into the buffer, blocking
    /// while the buffer is full.
    fn fill_from(self: &Arc<Self>, mut src: File) {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            {
                let mut s = self.lock();
                while s.data.len() >= STDIO_BUFFER_SIZE {
                    s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            }
            match src.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let mut s = self.lock();
                    s.data.extend(&chunk[..n]);
                    self.cond.notify_all();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.lock().eof = true;
        self.cond.notify_all();
    }

    /// Copies buffered and future output to `out` until EOF. Returns `true` at EOF, `false`
    /// when writing failed (the host went away: that chunk is lost with the connection, later
    /// output stays buffered for the next attach).
    fn drain_to<W: Write>(&self, out: &mut W) -> bool {
        loop {
            let chunk: Vec<u8> = {
                let mut s = self.lock();
                while s.data.is_empty() && !s.eof {
                    s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.data.is_empty() {
                    return true;
                }
                let n = s.data.len().min(64 * 1024);
                let chunk = s.data.drain(..n).collect();
                self.cond.notify_all();
                chunk
            };
            if out.write_all(&chunk).and_then(|_| out.flush()).is_err() {
                return false;
            }
        }
    }

    /// Whether EOF was reached and everything was handed out.
    pub fn finished(&self) -> bool {
        let s = self.lock();
        s.eof && s.data.is_empty()
    }
}

/// The agent's end of a process's stdio.
pub struct ProcessStdio {
    stdin: Mutex<Option<File>>,
    stdout: Arc<OutputBuffer>,
    stderr: Arc<OutputBuffer>,
    /// The pty master, for resizing (terminal processes only).
    pty: Option<File>,
}

impl ProcessStdio {
    /// Creates pipes (or a pty when `terminal`) and returns the agent's side plus the child's.
    /// Output threads start at once, so output is buffered even before anyone attaches.
    pub fn new(terminal: bool) -> Result<(ProcessStdio, ChildStdio), Error> {
        if terminal {
            Self::new_pty()
        } else {
            Self::new_pipes()
        }
    }

    fn new_pipes() -> Result<(ProcessStdio, ChildStdio), Error> {
        let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
        let stdout = OutputBuffer::new();
        let stderr = OutputBuffer::new();
        spawn_filler(&stdout, File::from(out_r))?;
        spawn_filler(&stderr, File::from(err_r))?;
        Ok((
            ProcessStdio {
                stdin: Mutex::new(Some(File::from(in_w))),
                stdout,
                stderr,
                pty: None,
            },
            ChildStdio {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
        ))
    }

    /// A pty made here, in the agent's devpts (the container helper makes its own instead,
    /// see [`ProcessStdio::prepare`]).
    fn new_pty() -> Result<(ProcessStdio, ChildStdio), Error> {
        let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(Error::Pty)?;
        nix::pty::grantpt(&master).map_err(Error::Pty)?;
        nix::pty::unlockpt(&master).map_err(Error::Pty)?;
        let path = nix::pty::ptsname_r(&master).map_err(Error::Pty)?;
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .map_err(|source| Error::PtySlave {
                path: path.clone(),
                source,
            })?;
        // SAFETY: into_raw_fd hands over sole ownership of a valid open fd.
        let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
        let slave = OwnedFd::from(slave);
        let slave_out = slave.try_clone().map_err(Error::Thread)?;
        let slave_err = slave.try_clone().map_err(Error::Thread)?;
        Ok((
            Self::from_pty(master)?,
            ChildStdio {
                stdin: slave,
                stdout: slave_out,
                stderr: slave_err,
            },
        ))
    }

    /// The agent's side of a terminal process whose pty `master` exists already: stdout and
    /// stdin go through it; there is no separate stderr.
    pub fn from_pty(master: OwnedFd) -> Result<ProcessStdio, Error> {
        let master = File::from(master);
        let reader = master.try_clone().map_err(Error::Thread)?;
        let writer = master.try_clone().map_err(Error::Thread)?;
        let stdout = OutputBuffer::new();
        spawn_filler(&stdout, reader)?;
        Ok(ProcessStdio {
            stdin: Mutex::new(Some(writer)),
            stdout,
            stderr: OutputBuffer::closed(),
            pty: Some(master),
        })
    }

    /// Stdio for a process about to be spawned. Pipes are made here. A terminal is made by
    /// the container helper inside the container, so that the process sees its own
    /// `/dev/pts/N` (as under runc): until the helper sends the pty master back
    /// ([`crate::spawn::recv_console`]), the child holds /dev/null.
    pub fn prepare(terminal: bool) -> Result<(Option<ProcessStdio>, ChildStdio), Error> {
        if !terminal {
            let (stdio, child) = Self::new_pipes()?;
            return Ok((Some(stdio), child));
        }
        let null = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(Error::Null)
        };
        Ok((
            None,
            ChildStdio {
                stdin: null()?,
                stdout: null()?,
                stderr: null()?,
            },
        ))
    }

    /// Claims `stream` for one attached connection, atomically: a second claim of the same
    /// stream fails with [`Error::Busy`] until the first one ends (output) or for good (stdin).
    pub fn claim(self: &Arc<Self>, stream: StdioStream) -> Result<StdioClaim, Error> {
        let stdin = match stream {
            StdioStream::Stdin => Some(
                self.stdin
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .ok_or(Error::Busy(stream))?,
            ),
            StdioStream::Stdout | StdioStream::Stderr => {
                let mut s = self.output(stream).lock();
                if s.attached {
                    return Err(Error::Busy(stream));
                }
                s.attached = true;
                None
            }
        };
        Ok(StdioClaim {
            stdio: Arc::clone(self),
            stream,
            stdin,
        })
    }

    fn output(&self, stream: StdioStream) -> &Arc<OutputBuffer> {
        match stream {
            StdioStream::Stderr => &self.stderr,
            _ => &self.stdout,
        }
    }

    /// Closes the process's stdin (e.g. when it is destroyed).
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        let pty = self.pty.as_ref().ok_or(Error::NoTerminal)?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(Error::Resize(nix::Error::last()));
        }
        Ok(())
    }
}

/// One stdio stream of a process, claimed for an attached connection. Dropping an unserved
/// claim gives the stream back.
pub struct StdioClaim {
    stdio: Arc<ProcessStdio>,
    stream: StdioStream,
    stdin: Option<File>,
}

impl StdioClaim {
    /// Serves the attached connection `conn` until its end (see the protocol docs).
    pub fn serve<C: Read + Write>(mut self, conn: &mut C) {
        match self.stdin.take() {
            Some(mut stdin) => {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if stdin.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                if self.stdio.pty.is_some() {
                    // A pty has no EOF of its own: send the terminal's EOF character.
                    let _ = stdin.write_all(&[4]);
                }
                // Dropping `stdin` closes the pipe: the process sees EOF.
            }
            None => {
                self.stdio.output(self.stream).drain_to(conn);
            }
        }
    }
}

impl Drop for StdioClaim {
    fn drop(&mut self) {
        match self.stdin.take() {
            // Never served: put stdin back.
            Some(f) => {
                *self.stdio.stdin.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
            }
            None if self.stream != StdioStream::Stdin => {
                self.stdio.output(self.stream).lock().attached = false;
            }
            None => {}
        }
    }
}

fn spawn_filler(buf: &Arc<OutputBuffer>, src: File) -> Result<(), Error> {
    let b = Arc::clone(buf);
    std::thread::Builder::new()
        .name("stdio".into())
        .stack_size(64 * 1024)
        .spawn(move || b.fill_from(src))
        .map(|_| ())
        .map_err(Error::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    struct Sink(Vec<u8>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Read for Sink {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    #[test]
    fn output_buffered_before_attach_then_drained() {
        let (stdio, child) = ProcessStdio::new(false).unwrap();
        let stdio = Arc::new(stdio);
        let mut w = File::from(child.stdout);
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        drop(w);
        drop(child.stderr);
        let claim = stdio.claim(StdioStream::Stdout).unwrap();
        // Claimed: a second claim is refused until the first ends.
        assert!(matches!(
            stdio.claim(StdioStream::Stdout),
            Err(Error::Busy(StdioStream::Stdout))
        ));
        let mut out = Sink(Vec::new());
        claim.serve(&mut out);
        assert_eq!(out.0, b"hello world");
        let mut err = Sink(Vec::new());
        stdio.claim(StdioStream::Stderr).unwrap().serve(&mut err);
        assert!(err.0.is_empty());
        assert!(stdio.stdout.finished());
        // After the end the stream can be attached again (and is at EOF).
        let mut again = Sink(Vec::new());
        stdio.claim(StdioStream::Stdout).unwrap().serve(&mut again);
        assert!(again.0.is_empty());
    }

    #[test]
    fn stdin_copied_then_closed_and_single_use() {
        let (stdio, child) = ProcessStdio::new(false).unwrap();
        let stdio = Arc::new(stdio);
        let mut conn = Cursor::new(b"input data".to_vec());
        struct Rw<'a>(&'a mut Cursor<Vec<u8>>);
        impl Read for Rw<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Rw<'_> {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // An unserved claim gives stdin back.
        drop(stdio.claim(StdioStream::Stdin).unwrap());
        let claim = stdio.claim(StdioStream::Stdin).unwrap();
        assert!(matches!(
            stdio.claim(StdioStream::Stdin),
            Err(Error::Busy(StdioStream::Stdin))
        ));
        claim.serve(&mut Rw(&mut conn));
        let mut got = String::new();
        File::from(child.stdin).read_to_string(&mut got).unwrap();
        assert_eq!(got, "input data");
        assert!(matches!(
            stdio.claim(StdioStream::Stdin),
            Err(Error::Busy(StdioStream::Stdin))
        ));
    }

    #[test]
    fn pty_output_and_resize() {
        let (stdio, child) = ProcessStdio::new(true).unwrap();
        stdio.resize(40, 100).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes into `ws`, which outlives the call.
        let rc = unsafe { libc::ioctl(child.stdout.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (40, 100));
        let mut w = File::from(child.stdout);
        w.write_all(b"tty").unwrap();
        drop(w);
        drop(child.stdin);
        drop(child.stderr);
        let stdio = Arc::new(stdio);
        let mut out = Sink(Vec::new());
        stdio.claim(StdioStream::Stdout).unwrap().serve(&mut out);
        assert!(out.0.starts_with(b"tty"), "got {:?}", out.0);
        assert!(stdio.stderr.finished());
    }
}
