//! Child reaping (a PID 1 duty) and exit-status bookkeeping.
//!
//! One thread waits for any child. It first *peeks* at an exited child (`waitid` with
//! `WNOWAIT`), then, holding the table lock, reaps it and records its status. So while the
//! lock is held a watched pid is either recorded as exited or still at least a zombie, and
//! [`Reaper::signal`] can never hit a recycled pid. Spawning also happens under the lock
//! ([`Reaper::spawn`]), so no exit is missed between `clone` and registration.

use crate::protocol::ExitStatus;
use std::collections::HashMap;
use std::sync::mpsc;
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
struct Entry {
    /// Set once the process has exited.
    status: Option<ExitStatus>,
    /// Threads blocked in [`Reaper::wait`] on this pid.
    waiters: u32,
    /// [`Reaper::forget`] was called while someone waited: drop after the last waiter.
    forgotten: bool,
}

#[derive(Default)]
struct Table {
    /// Tracked pids.
    watched: HashMap<i32, Entry>,
    /// Bumped on every spawn: wakes the reaper thread when it had no children.
    generation: u64,
    /// Told of every tracked pid's exit ([`Reaper::subscribe`]); dropped when they hang up.
    subscribers: Vec<mpsc::Sender<(i32, ExitStatus)>>,
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
        t.watched.insert(pid, Entry::default());
        t.generation = t.generation.wrapping_add(1);
        self.cond.notify_all();
        Ok(pid)
    }

    /// The exit status of `pid` if it has exited, `None` while it runs.
    pub fn status(&self, pid: i32) -> Result<Option<ExitStatus>, Error> {
        self.lock()
            .watched
            .get(&pid)
            .map(|e| e.status)
            .ok_or(Error::Unknown(pid))
    }

    /// Blocks until `pid` exits (or `timeout` passes: then `Ok(None)`).
    pub fn wait(&self, pid: i32, timeout: Option<Duration>) -> Result<Option<ExitStatus>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut t = self.lock();
        match t.watched.get_mut(&pid) {
            None => return Err(Error::Unknown(pid)),
            Some(e) => e.waiters += 1,
        }
        let result = loop {
            match t.watched.get(&pid) {
                // Replaced by forget(): cannot happen while we are counted as a waiter.
                None => break Err(Error::Unknown(pid)),
                Some(Entry {
                    status: Some(status),
                    ..
                }) => break Ok(Some(*status)),
                Some(_) => {}
            }
            t = match deadline {
                None => self.cond.wait(t).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Ok(None);
                    }
                    self.cond
                        .wait_timeout(t, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        };
        if let Some(e) = t.watched.get_mut(&pid) {
            e.waiters = e.waiters.saturating_sub(1);
            if e.forgotten && e.waiters == 0 {
                t.watched.remove(&pid);
            }
        }
        result
    }

    /// Sends `signal` to a tracked process that has not exited.
    pub fn signal(&self, pid: i32, signal: i32) -> Result<(), Error> {
        let t = self.lock();
        match t.watched.get(&pid).map(|e| e.status) {
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

    /// Stops tracking `pid` (after its container is gone); threads still waiting on it get
    /// its status first.
    pub fn forget(&self, pid: i32) {
        let mut t = self.lock();
        if let Some(e) = t.watched.get_mut(&pid) {
            if e.waiters == 0 {
                t.watched.remove(&pid);
            } else {
                e.forgotten = true;
            }
        }
    }

    /// A channel told `(pid, status)` of every tracked process that exits from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<(i32, ExitStatus)> {
        let (tx, rx) = mpsc::channel();
        self.lock().subscribers.push(tx);
        rx
    }

    /// Number of pids tracked (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.lock().watched.len()
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
                let status = decode_status(raw);
                if let Some(e) = t.watched.get_mut(&pid) {
                    e.status = Some(status);
                    t.subscribers.retain(|s| s.send((pid, status)).is_ok());
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

    /// The reaper collects every child of the test process: this is the only unit test
    /// here that starts children.
    #[test]
    fn statuses_waiters_and_forget() {
        let reaper = Reaper::start();
        let spawn = |script: &str| {
            reaper
                .spawn(|| {
                    std::process::Command::new("/bin/sh")
                        .args(["-c", script])
                        .spawn()
                        .map(|c| c.id() as i32)
                })
                .unwrap()
        };
        let events = reaper.subscribe();
        let quick = spawn("exit 7");
        let st = reaper.wait(quick, Some(Duration::from_secs(30))).unwrap();
        // A subscriber hears of it too.
        assert_eq!(
            events.recv_timeout(Duration::from_secs(30)).unwrap(),
            (
                quick,
                ExitStatus {
                    code: 7,
                    signal: None
                }
            )
        );
        assert_eq!(
            st,
            Some(ExitStatus {
                code: 7,
                signal: None
            })
        );
        assert!(matches!(reaper.signal(quick, 9), Err(Error::Exited(_))));
        reaper.forget(quick);
        assert!(matches!(reaper.status(quick), Err(Error::Unknown(_))));

        // Forgetting while someone waits: the waiter still gets the status.
        let slow = spawn("exec sleep 1000");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| reaper.wait(slow, None));
            while reaper.lock().watched.get(&slow).map(|e| e.waiters) != Some(1) {
                std::thread::yield_now();
            }
            reaper.forget(slow);
            assert_eq!(reaper.status(slow).unwrap(), None);
            reaper.signal(slow, libc::SIGTERM).unwrap();
            let st = waiter.join().unwrap().unwrap();
            assert_eq!(st.map(|s| s.signal), Some(Some(libc::SIGTERM)));
        });
        assert!(matches!(reaper.status(slow), Err(Error::Unknown(_))));
        assert_eq!(reaper.tracked(), 0);
    }

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
