//! Child reaping (a PID 1 duty) and exit-status bookkeeping.
//!
//! One thread waits for any child. It first *peeks* at an exited child (`waitid` with
//! `WNOWAIT`), then, holding the table lock, reaps it and records its status. So while the
//! lock is held a watched pid is either recorded as exited or still at least a zombie, and
//! [`Reaper::signal`] can never hit a recycled pid. Spawning also happens under the lock
//! ([`Reaper::spawn`]), so no exit is missed between `clone` and registration.

use crate::protocol::ExitStatus;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Errors of the reaper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Process {0} is not tracked")]
    Unknown(i32),
    #[error("Process {0} has exited")]
    Exited(i32),
    #[error("Cannot signal process {pid}")]
    Kill {
        pid: i32,
        #[source]
        source: nix::Error,
    },
}

#[derive(Default)]
struct Table {
    /// Tracked pids and, once exited, their status.
    watched: HashMap<i32, Option<ExitStatus>>,
    /// Bumped on every spawn: wakes the reaper thread when it had no children.
    generation: u64,
}

/// Tracks the agent's children and their exit statuses.
pub struct Reaper {
    table: Mutex<Table>,
    cond: Condvar,
}

impl Reaper {
    /// Creates the reaper and starts its thread.
    pub fn start() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper {
            table: Mutex::new(Table::default()),
            cond: Condvar::new(),
        });
        let r = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())
            .map_err(|e| crate::log_error(&format!("Cannot start the reaper thread: {e}")))
            .ok();
        reaper
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means another thread panicked while holding it; the table
        // itself stays consistent (single inserts/updates), so keep going.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `spawn` (which creates a child and returns its pid) with the table locked and
    /// starts tracking the pid.
    pub fn spawn<E>(&self, spawn: impl FnOnce() -> Result<i32, E>) -> Result<i32, E> {
        let mut t = self.lock();
        let pid = spawn()?;
        t.watched.insert(pid, None);
        t.generation = t.generation.wrapping_add(1);
        self.cond.notify_all();
        Ok(pid)
    }

    /// The exit status of `pid` if it has exited, `None` while it runs.
    pub fn status(&self, pid: i32) -> Result<Option<ExitStatus>, Error> {
        self.lock()
            .watched
            .get(&pid)
            .copied()
            .ok_or(Error::Unknown(pid))
    }

    /// Blocks until `pid` exits (or `timeout` passes: then `Ok(None)`).
    pub fn wait(&self, pid: i32, timeout: Option<Duration>) -> Result<Option<ExitStatus>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut t = self.lock();
        loop {
            match t.watched.get(&pid) {
                None => return Err(Error::Unknown(pid)),
                Some(Some(status)) => return Ok(Some(*status)),
                Some(None) => {}
            }
            t = match deadline {
                None => self.cond.wait(t).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    self.cond
                        .wait_timeout(t, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Sends `signal` to a tracked process that has not exited.
    pub fn signal(&self, pid: i32, signal: i32) -> Result<(), Error> {
        let t = self.lock();
        match t.watched.get(&pid) {
            None => Err(Error::Unknown(pid)),
            Some(Some(_)) => Err(Error::Exited(pid)),
            Some(None) => {
                // SAFETY: kill(2) has no memory effects; pid is our live or zombie child
                // (guaranteed by holding the table lock, see the module docs).
                let rc = unsafe { libc::kill(pid, signal) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(Error::Kill {
                        pid,
                        source: nix::Error::last(),
                    })
                }
            }
        }
    }

    /// Stops tracking `pid` (after its container is gone).
    pub fn forget(&self, pid: i32) {
        self.lock().watched.remove(&pid);
    }

    fn run(&self) {
        let mut seen_generation = self.lock().generation;
        loop {
            // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid writes only into `info`, which outlives the call.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc != 0 {
                match nix::Error::last() {
                    nix::Error::EINTR => continue,
                    nix::Error::ECHILD => {
                        // No children: sleep until something is spawned.
                        let mut t = self.lock();
                        while t.generation == seen_generation {
                            t = self.cond.wait(t).unwrap_or_else(|p| p.into_inner());
                        }
                        seen_generation = t.generation;
                        continue;
                    }
                    e => {
                        crate::log_error(&format!("waitid failed: {e}"));
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            }
            // SAFETY: waitid succeeded with WEXITED, so si_pid is valid in the union.
            let pid = unsafe { info.si_pid() };
            if pid <= 0 {
                continue;
            }
            let mut t = self.lock();
            let mut raw = 0;
            // SAFETY: reaps the zombie we just peeked at; writes only `raw`.
            let got = unsafe { libc::waitpid(pid, &mut raw, 0) };
            if got == pid {
                if let Some(slot) = t.watched.get_mut(&pid) {
                    *slot = Some(decode_status(raw));
                }
            }
            seen_generation = t.generation;
            self.cond.notify_all();
        }
    }
}

/// Converts a raw wait status into an [`ExitStatus`] (128 + signal when killed).
pub fn decode_status(raw: i32) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        let sig = libc::WTERMSIG(raw);
        ExitStatus {
            code: 128 + sig,
            signal: Some(sig),
        }
    } else {
        ExitStatus {
            code: libc::WEXITSTATUS(raw),
            signal: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exit_and_signal() {
        assert_eq!(
            decode_status(3 << 8),
            ExitStatus {
                code: 3,
                signal: None
            }
        );
        assert_eq!(
            decode_status(9),
            ExitStatus {
                code: 137,
                signal: Some(9)
            }
        );
    }
}
