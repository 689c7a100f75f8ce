//! Run control shared by the VMM, its handles and the vCPU threads: pause/resume/stop,
//! kicking vCPUs out of KVM_RUN, and reporting how the VM ended.
//!
//! A kick is a real-time signal sent to the vCPU thread. Its handler sets `immediate_exit`
//! in that thread's `kvm_run`, so a kick that lands just before KVM_RUN is not lost: the
//! next KVM_RUN returns EINTR at once and the thread looks at the run state again.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard, Once};

use crate::vstate::vcpu::{Error as VcpuError, VcpuSnapshot};
use crate::{Error, VmExit};

/// How a parked vCPU saves itself when asked ([`VmControl::save_vcpus`]).
pub type SaveFn<'a> = &'a mut dyn FnMut() -> Result<VcpuSnapshot, VcpuError>;

/// Offset from SIGRTMIN of the kick signal.
const KICK_SIGNAL_OFFSET: i32 = 0;

thread_local! {
    /// `&mut kvm_run.immediate_exit` of the vCPU running on this thread, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = IMMEDIATE_EXIT.with(|p| p.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is set by the vCPU thread to a field of its own, still mapped
        // kvm_run and cleared before that mapping goes away; the signal runs on that thread.
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
}

/// The kick signal number.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Install the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| Error::SignalHandler(std::io::Error::from_raw_os_error(e.errno())));
    });
    res
}

/// Point this thread's kick handler at `immediate_exit` (null to detach).
pub fn set_thread_immediate_exit(ptr: *mut u8) {
    IMMEDIATE_EXIT.with(|p| p.set(ptr));
}

/// What a vCPU should do after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Stopping,
}

struct State {
    run: RunState,
    parked: usize,
    vcpus: usize,
    threads: Vec<libc::pthread_t>,
    /// RIP of each vCPU as of its last pause.
    rips: Vec<(u8, u64)>,
    /// Nonzero KVM statistics of each vCPU as of its last pause.
    stats: Vec<(u8, Vec<(String, u64)>)>,
    outcome: Option<Result<VmExit, Error>>,
    /// Bumped by each [`VmControl::save_vcpus`]; parked vCPUs answer into `saves`.
    save_gen: u64,
    saves: Vec<Result<VcpuSnapshot, VcpuError>>,
}

/// Shared run control.
pub struct VmControl {
    state: Mutex<State>,
    cond: Condvar,
}

impl Default for VmControl {
    fn default() -> Self {
        Self::new()
    }
}

impl VmControl {
    pub fn new() -> Self {
        VmControl {
            state: Mutex::new(State {
                run: RunState::Running,
                parked: 0,
                vcpus: 0,
                threads: Vec::new(),
                rips: Vec::new(),
                stats: Vec::new(),
                outcome: None,
                save_gen: 0,
                saves: Vec::new(),
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking vCPU thread must not take the whole VMM down with a poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_all(state: &State) {
        for t in &state.threads {
            // SAFETY: `threads` holds only live, not yet joined vCPU threads: they are
            // removed (under this lock) before being joined.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Record the vCPU threads so they can be kicked.
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        let mut s = self.lock();
        s.vcpus = threads.len();
        s.threads = threads;
        if s.run != RunState::Running {
            Self::kick_all(&s);
        }
    }

    /// Forget the vCPU threads (before joining them).
    pub fn clear_threads(&self) {
        let mut s = self.lock();
        s.threads.clear();
    }

    pub fn run_state(&self) -> RunState {
        self.lock().run
    }

    /// End the VM with `outcome` (the first one reported wins) and stop all vCPUs.
    pub fn finish(&self, outcome: Result<VmExit, Error>) {
        let mut s = self.lock();
        if s.outcome.is_none() {
            s.outcome = Some(outcome);
        }
        s.run = RunState::Stopping;
        Self::kick_all(&s);
        self.cond.notify_all();
    }

    /// Block until the VM has ended; returns how.
    pub fn wait_outcome(&self) -> Result<VmExit, Error> {
        let mut s = self.lock();
        loop {
            if let Some(o) = s.outcome.take() {
                // Leave a marker so later waiters do not block forever.
                s.outcome = Some(Ok(VmExit::Stopped));
                return o;
            }
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Pause every vCPU and wait until all are parked.
    pub fn pause(&self) -> Result<(), Error> {
        let mut s = self.lock();
        match s.run {
            RunState::Stopping => return Err(Error::NotRunning),
            RunState::Paused => return Ok(()),
            RunState::Running => {}
        }
        s.run = RunState::Paused;
        Self::kick_all(&s);
        while s.run == RunState::Paused && s.parked < s.vcpus {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.run == RunState::Stopping {
            return Err(Error::NotRunning);
        }
        Ok(())
    }

    /// Let paused vCPUs run again.
    pub fn resume(&self) -> Result<(), Error> {
        let mut s = self.lock();
        match s.run {
            RunState::Stopping => Err(Error::NotRunning),
            RunState::Running => Ok(()),
            RunState::Paused => {
                s.run = RunState::Running;
                self.cond.notify_all();
                Ok(())
            }
        }
    }

    /// Record where vCPU `index` stopped (called by the vCPU before it parks).
    pub fn report_rip(&self, index: u8, rip: u64) {
        let mut s = self.lock();
        s.rips.retain(|(i, _)| *i != index);
        s.rips.push((index, rip));
        s.rips.sort_unstable();
    }

    /// Record vCPU `index`'s KVM statistics (called by the vCPU before it parks).
    pub fn report_stats(&self, index: u8, stats: Vec<(String, u64)>) {
        let mut s = self.lock();
        s.stats.retain(|(i, _)| *i != index);
        s.stats.push((index, stats));
        s.stats.sort_unstable_by_key(|(i, _)| *i);
    }

    /// KVM statistics reported at the last pause, by vCPU index.
    pub fn stats(&self) -> Vec<(u8, Vec<(String, u64)>)> {
        self.lock().stats.clone()
    }

    /// RIPs reported at the last pause, by vCPU index.
    pub fn rips(&self) -> Vec<(u8, u64)> {
        self.lock().rips.clone()
    }

    /// Have every vCPU of the paused VM save itself (on its own thread: KVM's vCPU ioctls
    /// belong there); the states in vCPU order.
    pub fn save_vcpus(&self) -> Result<Vec<VcpuSnapshot>, Error> {
        let mut s = self.lock();
        if s.run != RunState::Paused || s.parked < s.vcpus {
            return Err(Error::NotPaused);
        }
        s.save_gen += 1;
        s.saves.clear();
        self.cond.notify_all();
        while s.run == RunState::Paused && s.saves.len() < s.vcpus {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.run != RunState::Paused {
            return Err(Error::NotRunning);
        }
        let mut states = std::mem::take(&mut s.saves)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::Vcpu)?;
        states.sort_by_key(|v| v.index);
        Ok(states)
    }

    /// Called by a vCPU thread between exits: parks while paused; `false` means stop.
    pub fn vcpu_should_continue(&self) -> bool {
        self.vcpu_should_continue_with(None)
    }

    /// [`VmControl::vcpu_should_continue`] for a vCPU that can save itself while parked.
    pub fn vcpu_should_continue_with(&self, mut save: Option<SaveFn<'_>>) -> bool {
        let mut s = self.lock();
        if s.run == RunState::Paused {
            s.parked += 1;
            let mut served = s.save_gen;
            self.cond.notify_all();
            while s.run == RunState::Paused {
                if s.save_gen != served {
                    served = s.save_gen;
                    if let Some(save) = save.as_mut() {
                        drop(s);
                        let state = save();
                        s = self.lock();
                        if s.save_gen == served {
                            s.saves.push(state);
                            self.cond.notify_all();
                        }
                        continue;
                    }
                }
                s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.parked -= 1;
        }
        s.run == RunState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_outcome_wins() {
        let c = VmControl::new();
        c.finish(Ok(VmExit::Reset));
        c.finish(Ok(VmExit::Stopped));
        assert!(matches!(c.wait_outcome(), Ok(VmExit::Reset)));
        assert_eq!(c.run_state(), RunState::Stopping);
        assert!(!c.vcpu_should_continue());
        assert!(matches!(c.pause(), Err(Error::NotRunning)));
    }

    #[test]
    fn pause_waits_for_parked_vcpus() {
        let c = Arc::new(VmControl::new());
        // Pretend one vCPU exists (no thread ids: nothing to kick).
        c.lock().vcpus = 1;
        let vc = c.clone();
        let vcpu = std::thread::spawn(move || {
            while vc.vcpu_should_continue() {
                std::thread::yield_now();
            }
        });
        c.pause().unwrap();
        assert_eq!(c.lock().parked, 1);
        c.resume().unwrap();
        c.finish(Ok(VmExit::Stopped));
        vcpu.join().unwrap();
        assert_eq!(c.lock().parked, 0);
        assert_eq!(c.run_state(), RunState::Stopping);
    }
}
