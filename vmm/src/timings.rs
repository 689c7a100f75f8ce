//! Boot phases, timestamped as they happen, measured from a start instant (the start of
//! `ember vm run`, or `Vmm::new`).

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A boot phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// KVM VM created and guest memory registered.
    MemoryReady,
    /// Kernel, initrd and command line in guest memory.
    KernelLoaded,
    VmCreated,
    FirstKvmRun,
    FirstOutput,
    InitStart,
    AgentReady,
    Exited,
}

/// When each phase happened, as time since the start instant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// How old the process already was at the start instant (from /proc/self/stat;
    /// 10 ms resolution).
    pub process_age_at_start: Option<Duration>,
    #[serde(default)]
    pub memory_ready: Option<Duration>,
    #[serde(default)]
    pub kernel_loaded: Option<Duration>,
    pub vm_created: Option<Duration>,
    pub first_kvm_run: Option<Duration>,
    pub first_output: Option<Duration>,
    pub init_start: Option<Duration>,
    pub agent_ready: Option<Duration>,
    pub exited: Option<Duration>,
    /// The VM was restored from a snapshot: `memory_ready` is the memory file mapped,
    /// `vm_created` every device and vCPU restored, `agent_ready` the agent's first answer.
    #[serde(default)]
    pub restored: bool,
}

impl Timings {
    fn slot(&mut self, phase: Phase) -> &mut Option<Duration> {
        match phase {
            Phase::MemoryReady => &mut self.memory_ready,
            Phase::KernelLoaded => &mut self.kernel_loaded,
            Phase::VmCreated => &mut self.vm_created,
            Phase::FirstKvmRun => &mut self.first_kvm_run,
            Phase::FirstOutput => &mut self.first_output,
            Phase::InitStart => &mut self.init_start,
            Phase::AgentReady => &mut self.agent_ready,
            Phase::Exited => &mut self.exited,
        }
    }

    /// (name, time since start) of each phase, in boot order.
    pub fn phases(&self) -> Vec<(&'static str, Option<Duration>)> {
        if self.restored {
            return vec![
                ("snapshot memory mapped", self.memory_ready),
                ("devices + vCPUs restored", self.vm_created),
                ("first KVM_RUN", self.first_kvm_run),
                ("first console output", self.first_output),
                ("agent answered (ping over vsock)", self.agent_ready),
                ("VM exited", self.exited),
            ];
        }
        vec![
            ("KVM VM + guest memory ready", self.memory_ready),
            ("kernel + initrd loaded", self.kernel_loaded),
            ("VM created (KVM, memory, kernel, devices)", self.vm_created),
            ("first KVM_RUN", self.first_kvm_run),
            ("first kernel output (serial)", self.first_output),
            ("/init started (boot timer 1)", self.init_start),
            ("agent ready (boot timer 123)", self.agent_ready),
            ("VM exited", self.exited),
        ]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<44} {:>12} {:>12}", "phase", "since start", "delta")?;
        if let Some(age) = self.process_age_at_start {
            writeln!(
                f,
                "{:<44} {:>9.1} ms {:>12}",
                "process start (before vm run)",
                -ms(age),
                ""
            )?;
        }
        let mut prev = Duration::ZERO;
        // In the order they happened (with `quiet`, the agent may print before the kernel);
        // phases that did not happen last.
        let mut phases = self.phases();
        phases.sort_by_key(|(_, at)| at.unwrap_or(Duration::MAX));
        for (name, at) in phases {
            match at {
                Some(t) => {
                    writeln!(
                        f,
                        "{:<44} {:>9.1} ms {:>9.1} ms",
                        name,
                        ms(t),
                        ms(t.saturating_sub(prev))
                    )?;
                    prev = t;
                }
                None => writeln!(f, "{:<44} {:>12} {:>12}", name, "-", "-")?,
            }
        }
        Ok(())
    }
}

/// Age of this process right now, from /proc/self/stat's start time and /proc/uptime.
pub fn process_age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    // rest starts at field 3 (state); starttime is field 22.
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let started = start_ticks as f64 / hz as f64;
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// Collects phase timestamps from the VMM, vCPU and device threads.
pub struct TimingsRecorder {
    start: Instant,
    inner: Mutex<Timings>,
    cond: Condvar,
}

impl TimingsRecorder {
    pub fn new(start: Instant) -> Self {
        let age = process_age().map(|a| a.saturating_sub(start.elapsed()));
        TimingsRecorder {
            start,
            inner: Mutex::new(Timings {
                process_age_at_start: age,
                ..Default::default()
            }),
            cond: Condvar::new(),
        }
    }

    /// Record `phase` now (only its first occurrence counts).
    pub fn mark(&self, phase: Phase) {
        self.mark_at(phase, Instant::now());
    }

    /// Record `phase` at `at` (only its first occurrence counts).
    pub fn mark_at(&self, phase: Phase, at: Instant) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let slot = t.slot(phase);
        if slot.is_none() {
            *slot = Some(at.saturating_duration_since(self.start));
            self.cond.notify_all();
        }
    }

    /// Label the phases as those of a restore.
    pub fn set_restored(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restored = true;
    }

    pub fn get(&self) -> Timings {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until `phase` or [`Phase::Exited`] is recorded, or `timeout` passes; returns
    /// whether `phase` happened.
    pub fn wait_for(&self, phase: Phase, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if t.slot(phase).is_some() {
                return true;
            }
            if t.exited.is_some() {
                return false;
            }
            match deadline {
                None => t = self.cond.wait(t).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    t = self
                        .cond
                        .wait_timeout(t, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_mark_wins_and_phases_are_ordered() {
        let start = Instant::now();
        let r = TimingsRecorder::new(start);
        r.mark_at(Phase::VmCreated, start + Duration::from_millis(5));
        r.mark_at(Phase::VmCreated, start + Duration::from_millis(50));
        r.mark_at(Phase::AgentReady, start + Duration::from_millis(90));
        let t = r.get();
        assert_eq!(t.vm_created, Some(Duration::from_millis(5)));
        assert_eq!(t.agent_ready, Some(Duration::from_millis(90)));
        assert_eq!(t.first_output, None);
        let table = t.to_string();
        assert!(table.contains("agent ready"));
        assert!(table
            .lines()
            .any(|l| l.starts_with("VM created") && l.contains("5.0 ms")));
    }

    #[test]
    fn wait_for_sees_marks_from_other_threads() {
        let r = Arc::new(TimingsRecorder::new(Instant::now()));
        let r2 = r.clone();
        let h = std::thread::spawn(move || r2.mark(Phase::AgentReady));
        assert!(r.wait_for(Phase::AgentReady, None));
        h.join().unwrap();
        let r = TimingsRecorder::new(Instant::now());
        r.mark(Phase::Exited);
        assert!(!r.wait_for(Phase::AgentReady, None));
        assert!(
            !TimingsRecorder::new(Instant::now()).wait_for(Phase::InitStart, Some(Duration::ZERO))
        );
    }

    #[test]
    fn process_age_is_readable() {
        assert!(process_age().is_some());
    }
}
