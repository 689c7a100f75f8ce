//! Terminal containers the runc way: ember makes a pty pair on the host, sends the master to
//! the engine's `--console-socket` (`SCM_RIGHTS`, as conmon and containerd's shim expect) and
//! relays the slave to the container's pty in the guest. The host slave is raw: line discipline
//! and echo happen once, in the guest's pty.
//!
//! The window size follows the engine's: the shim makes the slave its controlling terminal
//! ([`WindowSize::follow`]), so the kernel signals it (`SIGWINCH`) whenever the engine sets a
//! size on the master, and [`WindowSize::watch`] passes each size on to the guest's pty.

use nix::pty::openpty;
use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TtyError {
    #[error("Cannot make a pty")]
    Pty(#[source] nix::Error),
    #[error("Cannot connect to the console socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot send the pty to the console socket")]
    Send(#[source] nix::Error),
    #[error("Cannot follow the terminal's window size")]
    Follow(#[source] nix::Error),
}

/// The window size of a terminal container's host pty, as the engine sets it.
pub struct WindowSize {
    tty: OwnedFd,
    signals: SigSet,
}

impl WindowSize {
    /// Make `tty` (a pty slave) the controlling terminal of this process, which must lead a
    /// session of its own and have no threads yet: `SIGWINCH` is blocked here, and threads
    /// started later inherit that, so only [`WindowSize::watch`]'s thread takes it. `SIGHUP`
    /// is ignored: the engine closing its master ends the terminal, not the shim, which ends
    /// with its container.
    pub fn follow(tty: OwnedFd) -> Result<WindowSize, TtyError> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGWINCH);
        signals.thread_block().map_err(TtyError::Follow)?;
        // SAFETY: installing SIG_IGN runs no code of ours in a signal context.
        unsafe { signal(Signal::SIGHUP, SigHandler::SigIgn) }.map_err(TtyError::Follow)?;
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal another session's tty).
        if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
            return Err(TtyError::Follow(nix::Error::last()));
        }
        Ok(WindowSize { tty, signals })
    }

    /// The size now, `(rows, cols)`; `None` while the engine has set none.
    pub fn current(&self) -> Option<(u16, u16)> {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes into `ws`, which outlives the call.
        let rc = unsafe { libc::ioctl(self.tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    }

    /// Pass the size on to `resize` now (where one is set) and after each change, from a
    /// thread of its own, for the rest of the process's life.
    pub fn watch(self, resize: impl Fn(u16, u16) + Send + 'static) {
        crate::logging::thread("tty-size", move || {
            let mut last = None;
            loop {
                let now = self.current();
                if now.is_some() && now != last {
                    if let Some((rows, cols)) = now {
                        resize(rows, cols);
                    }
                    last = now;
                }
                if self.signals.wait().is_err() {
                    return;
                }
            }
        });
    }
}

/// Make a pty, hand its master to `console_socket`, return the (raw) slave.
pub fn pty_to_console_socket(console_socket: &Path) -> Result<OwnedFd, TtyError> {
    let pty = openpty(None, None).map_err(TtyError::Pty)?;
    let mut t = tcgetattr(&pty.slave).map_err(TtyError::Pty)?;
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(TtyError::Pty)?;
    let sock = UnixStream::connect(console_socket).map_err(|source| TtyError::Connect {
        path: console_socket.to_path_buf(),
        source,
    })?;
    // runc sends the pty's name with it; the engines only take the descriptor.
    let name = b"/dev/ptmx";
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(TtyError::Send)?;
    Ok(pty.slave)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::fs::File;
    use std::io::{IoSliceMut, Read, Write};
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixListener;

    #[test]
    fn master_reaches_the_console_socket_and_talks_to_the_slave() {
        let dir = std::env::temp_dir().join(format!("ember-tty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let slave = pty_to_console_socket(&path).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut master = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just gave us this descriptor.
                master = Some(unsafe { File::from_raw_fd(fds[0]) });
            }
        }
        let mut master = master.expect("no descriptor received");
        // Raw slave: what the master writes arrives unchanged (no echo, no CR/LF mapping).
        master.write_all(b"ab\n").unwrap();
        let mut s = File::from(slave);
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ab\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
