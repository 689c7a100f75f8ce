//! Test equipment: a pod "machine" that is the guest agent running as a host process, for
//! machines whose `/dev/kvm` cannot run a guest (see ENVIRONMENT.md) and for fast tests of the
//! whole pod path (detached process, readiness announcement, control socket, every container
//! call through the agent protocol). Chosen by a pod config's
//! `"machine": {"host_agent": {"agent": PATH}}` (see [`crate::config::Machine::from_env`]).
//!
//! The agent serves `<dir>/agent.sock` and announces itself on `<dir>/vsock.sock_1025`, as it
//! would over vsock; a small bridge serves `<dir>/vsock.sock` with the hybrid-vsock handshake
//! (`CONNECT <port>\n` → `OK <n>\n`) and splices each connection to the agent's socket, so
//! callers use exactly the code path they use with a VM. Container rootfs must be
//! `guest_path` directories (there are no disks).

use super::control::ControlTarget;
use super::{Event, CONSOLE_FILE};
use crate::agent_link::VSOCK_SOCKET;
use crate::config::Shutdown as StopMode;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

const AGENT_SOCKET: &str = "agent.sock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open {path}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot start the host agent {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running host agent.
pub struct HostAgent {
    pid: i32,
    exited: Arc<(Mutex<bool>, Condvar)>,
}

impl HostAgent {
    pub(crate) fn boot(
        agent: &Path,
        dir: &Path,
        events: mpsc::Sender<Event>,
    ) -> Result<HostAgent, Error> {
        let console = dir.join(CONSOLE_FILE);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .map_err(|source| Error::Console {
                path: console.clone(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| Error::Console {
            path: console.clone(),
            source,
        })?;
        let bridge_path = dir.join(VSOCK_SOCKET);
        let _ = std::fs::remove_file(&bridge_path);
        let bridge = UnixListener::bind(&bridge_path).map_err(|source| Error::Bind {
            path: bridge_path.clone(),
            source,
        })?;
        let agent_sock = dir.join(AGENT_SOCKET);
        let _ = std::fs::remove_file(&agent_sock);
        let mut cmd = Command::new(agent);
        cmd.arg("--listen")
            .arg(format!("unix:{}", agent_sock.display()))
            .arg("--announce")
            .arg(format!(
                "unix:{}",
                dir.join(super::ANNOUNCE_SOCKET).display()
            ))
            .arg("--state-dir")
            .arg(dir.join("agent-state"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let cgroup = cgroup_dir();
        if let Some(cg) = &cgroup {
            cmd.arg("--cgroup-root").arg(cg);
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it makes the agent die with
        // the pod process, as a guest dies with its VMM.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            path: agent.to_path_buf(),
            source,
        })?;
        let pid = child.id() as i32;
        let exited = Arc::new((Mutex::new(false), Condvar::new()));
        let ex = exited.clone();
        crate::logging::thread("agent-wait", move || {
            let status = child.wait();
            if let Some(cg) = cgroup {
                let _ = std::fs::remove_dir(cg);
            }
            let (lock, cv) = &*ex;
            if let Ok(mut done) = lock.lock() {
                *done = true;
            }
            cv.notify_all();
            let msg = match status {
                Ok(s) => format!("host agent exited: {s}"),
                Err(e) => format!("host agent lost: {e}"),
            };
            let _ = events.send(Event::Exited(msg));
        });
        crate::logging::thread("vsock-bridge", move || serve_bridge(bridge, agent_sock));
        Ok(HostAgent { pid, exited })
    }

    pub(crate) fn target(
        &self,
        dir: &Path,
        requested: Arc<AtomicBool>,
        shutdown: StopMode,
    ) -> Arc<dyn ControlTarget> {
        Arc::new(Target {
            pid: self.pid,
            exited: self.exited.clone(),
            dir: dir.to_path_buf(),
            requested,
            shutdown,
        })
    }

    pub fn stop(&self) {
        signal(self.pid, libc::SIGKILL);
    }
}

/// A fresh cgroup v2 directory for the agent's containers, when cgroup v2 is mounted and
/// writable.
fn cgroup_dir() -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if !agent::cgroup::is_cgroup2(root) {
        return None;
    }
    let dir = root.join(format!("ember-pod-{}", std::process::id()));
    std::fs::create_dir(&dir).ok().map(|_| dir)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(pid, sig) };
}

/// Hybrid-vsock bridge: `CONNECT <port>\n` → `OK <n>\n`, then bytes both ways to the agent.
fn serve_bridge(listener: UnixListener, agent_sock: PathBuf) {
    for (n, conn) in listener.incoming().enumerate() {
        let Ok(conn) = conn else { continue };
        let agent_sock = agent_sock.clone();
        crate::logging::thread("bridge-conn", move || {
            let _ = bridge_one(conn, &agent_sock, n);
        });
    }
}

fn bridge_one(mut host: UnixStream, agent_sock: &Path, n: usize) -> std::io::Result<()> {
    host.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while host.read(&mut b)? == 1 && b[0] != b'\n' && line.len() < 64 {
        line.push(b[0]);
    }
    host.set_read_timeout(None)?;
    let text = String::from_utf8_lossy(&line);
    let port = text
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok());
    if port != Some(agent::protocol::DEFAULT_PORT) {
        return Ok(()); // Nobody listens there: close, as the vsock device would (RST).
    }
    let agent = UnixStream::connect(agent_sock)?;
    host.write_all(format!("OK {}\n", 1_000_000 + n).as_bytes())?;
    let (mut h2, mut a2) = (host.try_clone()?, agent.try_clone()?);
    let up = crate::logging::thread("bridge-up", move || {
        let _ = std::io::copy(&mut h2, &mut a2);
        let _ = a2.shutdown(Shutdown::Write);
    });
    let (mut a1, mut h1) = (agent, host);
    let _ = std::io::copy(&mut a1, &mut h1);
    let _ = h1.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

struct Target {
    pid: i32,
    exited: Arc<(Mutex<bool>, Condvar)>,
    dir: PathBuf,
    requested: Arc<AtomicBool>,
    shutdown: StopMode,
}

impl ControlTarget for Target {
    fn pause(&self) -> Result<(), String> {
        signal(self.pid, libc::SIGSTOP);
        Ok(())
    }

    fn resume(&self) -> Result<(), String> {
        signal(self.pid, libc::SIGCONT);
        Ok(())
    }

    fn stop(&self) -> Option<String> {
        self.requested.store(true, Ordering::SeqCst);
        signal(self.pid, libc::SIGCONT);
        let (asked, unsynced) = super::before_stop(&self.dir, self.shutdown);
        let (lock, cv) = &*self.exited;
        let grace = if asked {
            crate::timeouts::SHUTDOWN_GRACE
        } else {
            Duration::ZERO
        };
        let done = lock
            .lock()
            .ok()
            .and_then(|g| cv.wait_timeout_while(g, grace, |done| !*done).ok())
            .map(|(g, _)| *g)
            .unwrap_or(false);
        if !done {
            signal(self.pid, libc::SIGKILL);
        }
        unsynced
    }
}
