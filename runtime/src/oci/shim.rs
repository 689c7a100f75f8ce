//! The shim: the host process that stands for one container. `ember create` forks it; its pid
//! is what `state` and `--pid-file` report, so the engines (conmon, containerd-shim) wait on
//! it. It creates the container through a [`Backend`], serves the control socket, waits for
//! the container's process and exits with its exit code, after recording it and releasing
//! the VM.

use super::control::{self, Conn, Request, Response};
use super::sandbox::{Sandbox, Stdio};
use super::state::{Status, Store};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ShimError {
    #[error("Cannot listen on {path}")]
    Listen {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Exit code when the container's end could not be learnt (the VM died under it).
pub const LOST_EXIT_CODE: i32 = 255;

/// Bind the control socket in the container's directory.
pub fn listen(store: &Store, id: &str) -> Result<UnixListener, ShimError> {
    let path = store.dir(id).join(control::SOCKET);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).map_err(|source| ShimError::Listen { path, source })
}

/// What the shim does once the container's process has started (before `start` answers).
pub type OnStarted = Arc<dyn Fn() + Send + Sync>;

/// Serve requests and wait for the container; returns the exit code the shim exits with.
pub fn serve(
    store: &Store,
    id: &str,
    listener: UnixListener,
    sandbox: Arc<dyn Sandbox>,
    on_started: OnStarted,
) -> i32 {
    let shutting_down = Arc::new(AtomicBool::new(false));
    {
        let sandbox = sandbox.clone();
        let shutting_down = shutting_down.clone();
        let served = crate::logging::spawn("shim-control", move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let sandbox = sandbox.clone();
                let shutting_down = shutting_down.clone();
                let on_started = on_started.clone();
                let one = crate::logging::spawn("shim-request", move || {
                    handle(
                        Conn::new(conn),
                        sandbox.as_ref(),
                        &shutting_down,
                        on_started.as_ref(),
                    )
                });
                if let Err(e) = one {
                    log::error!("Cannot start a thread for a shim request: {e}");
                }
            }
        });
        if let Err(e) = served {
            log::error!("Cannot serve the shim's control socket: {e}");
        }
    }
    let code = match sandbox.wait() {
        Ok(code) => code,
        Err(e) => {
            if !shutting_down.load(Ordering::SeqCst) {
                log::error!("Lost container {id}: {}", crate::error::report(&e));
            }
            LOST_EXIT_CODE
        }
    };
    log::info!("container {id} exited with code {code}");
    record_exit(store, id, code);
    sandbox.shutdown();
    log::debug!("container {id}: exit recorded and its VM released");
    let _ = std::fs::remove_file(store.dir(id).join(control::SOCKET));
    code
}

/// A shim's own threads (and what it starts: hooks, the pod process, which adds its
/// allow-lists) are refused what no shim does ([`vmm::seccomp::SHIM_DENIED`]), unless the
/// runtime configuration turns seccomp off (`[hypervisor] seccomp = "off"`).
pub fn confine() {
    let off = crate::config::RuntimeConfig::load()
        .is_ok_and(|s| s.hypervisor.seccomp == crate::config::Seccomp::Off);
    if off {
        return;
    }
    match vmm::seccomp::deny_for_process() {
        Ok(()) => log::debug!("shim: seccomp deny-list installed on every thread"),
        Err(e) => log::warn!("shim: no seccomp deny-list: {}", crate::error::report(&e)),
    }
}

/// Save `stopped` and the exit code, if the container's state still exists.
pub fn record_exit(store: &Store, id: &str, code: i32) {
    let Ok(_lock) = store.lock(id) else { return };
    if let Ok(mut rec) = store.load(id) {
        rec.status = Status::Stopped;
        rec.exit_code = Some(code);
        let _ = store.save(&rec);
    }
}

fn handle(
    mut conn: Conn,
    sandbox: &dyn Sandbox,
    shutting_down: &AtomicBool,
    on_started: &(dyn Fn() + Send + Sync),
) {
    let (req, fds) = match conn.recv() {
        Ok(r) => r,
        Err(e) => {
            let _ = conn.send(&Response::Error(crate::error::report(&e)));
            return;
        }
    };
    log::debug!("shim request {req:?}");
    let err = |e: super::sandbox::SandboxError| Response::Error(crate::error::report(&e));
    let resp = match req {
        Request::Start => match sandbox.start() {
            Ok(pid) => {
                on_started();
                Response::Pid(pid)
            }
            Err(e) => {
                // Its process never ran: as runc's init when its start fails, the shim ends
                // (exit 255), releasing the VM, and the engine sees the container stopped.
                shutting_down.store(true, Ordering::SeqCst);
                sandbox.shutdown();
                err(e)
            }
        },
        Request::Kill { signal, all } => sandbox
            .signal(signal, all)
            .map_or_else(err, |()| Response::Done),
        Request::Ps => sandbox.processes().map_or_else(err, Response::Processes),
        Request::Pause => sandbox.pause().map_or_else(err, |()| Response::Done),
        Request::Resume => sandbox.resume().map_or_else(err, |()| Response::Done),
        Request::Update { limits } => sandbox
            .update(&limits)
            .map_or_else(err, |()| Response::Done),
        Request::Resize {
            exec_id,
            rows,
            cols,
        } => sandbox
            .resize(exec_id.as_deref(), rows, cols)
            .map_or_else(err, |()| Response::Done),
        Request::Shutdown => {
            shutting_down.store(true, Ordering::SeqCst);
            sandbox.shutdown();
            Response::Done
        }
        Request::Exec { exec_id, process } => {
            let Some(stdio) = stdio_from(fds) else {
                let _ = conn.send(&Response::Error(
                    "exec needs stdin, stdout and stderr".to_string(),
                ));
                return;
            };
            let mut started = |pid| {
                let _ = conn.send(&Response::Pid(pid));
            };
            let r = sandbox.exec(&exec_id, &process, stdio, &mut started);
            r.map_or_else(err, Response::Exit)
        }
    };
    let _ = conn.send(&resp);
}

fn stdio_from(fds: Vec<OwnedFd>) -> Option<Stdio> {
    let mut it = fds.into_iter();
    Some(Stdio {
        stdin: it.next()?,
        stdout: it.next()?,
        stderr: it.next()?,
    })
}
