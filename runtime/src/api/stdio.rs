//! The one stdio relay: a process's three agent streams (`AttachStdio`) copied to and from
//! descriptors the caller owns, used by the OCI face (the engine's fds or FIFOs) and the CLI
//! (its own stdio).
//!
//! The relay threads copy what the guest's processes write: each confines itself to the
//! relay seccomp filter ([`vmm::seccomp::ThreadKind::Relay`]) before its first read.

use super::{Error, Runtime};
use agent::protocol::StdioStream;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

/// The stdio a process gets: the caller's descriptors.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Stdio {
    /// This process's own stdin, stdout and stderr (duplicated).
    pub fn inherit() -> std::io::Result<Stdio> {
        Ok(Stdio {
            stdin: io::stdin().as_fd().try_clone_to_owned()?,
            stdout: io::stdout().as_fd().try_clone_to_owned()?,
            stderr: io::stderr().as_fd().try_clone_to_owned()?,
        })
    }
}

/// Relays of one process's stdio between the agent's streams and the caller's descriptors;
/// joined when the process ends.
pub struct Relays {
    out: Vec<JoinHandle<()>>,
}

impl Relays {
    /// Attach the process's streams and copy: our stdin to its stdin, its stdout and stderr
    /// to ours.
    pub fn attach(
        rt: &Runtime,
        pod: &str,
        container_id: &str,
        exec_id: Option<&str>,
        stdio: Stdio,
    ) -> Result<Relays, Error> {
        let attach = |stream| rt.attach(pod, container_id, exec_id, stream);
        let out = attach(StdioStream::Stdout)?;
        let err = attach(StdioStream::Stderr)?;
        let inp = attach(StdioStream::Stdin)?;
        let handles = vec![
            copy_thread(out, File::from(stdio.stdout)),
            copy_thread(err, File::from(stdio.stderr)),
        ];
        // Stdin is not joined: it ends when the caller's stdin does (or never, for a pipe
        // kept open), and the process's end does not wait for it.
        let stdin = File::from(stdio.stdin);
        crate::logging::thread("stdin-relay", move || {
            confine();
            let mut inp = inp;
            let mut stdin = stdin;
            let _ = io::copy(&mut stdin, &mut inp);
            let _ = inp.shutdown(std::net::Shutdown::Write);
        });
        Ok(Relays { out: handles })
    }

    /// Wait until the process's stdout and stderr reached their end.
    pub fn join(self) {
        for h in self.out {
            let _ = h.join();
        }
    }
}

fn copy_thread(mut from: UnixStream, mut to: File) -> JoinHandle<()> {
    crate::logging::thread("stdio-relay", move || {
        confine();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = to.flush();
    })
}

/// Confine the calling relay thread to ember's relay filter. Where the kernel refuses (no
/// seccomp), the relay still runs: it is not part of a VMM, and the pod process itself
/// refuses to run a VM unconfined unless its config says `"seccomp": "off"`.
fn confine() {
    let confined = vmm::seccomp::Filters::builtin_shared()
        .and_then(|f| f.install(vmm::seccomp::ThreadKind::Relay));
    if let Err(e) = confined {
        log::warn!("stdio relay runs unconfined: {}", crate::error::report(&e));
    }
}
