//! Liveness of a pod's VMM process: a pid plus its start time (field 22 of `/proc/<pid>/stat`),
//! so a recycled pid is never mistaken for the VMM.

use crate::state::VmmProcess;

/// Test seam of the fault-matrix tests (`runtime/tests/fault_matrix.rs`): an ember process
/// whose environment names `step` here stops itself (SIGSTOP) when it gets there, so that a
/// test can kill it at exactly that step. Unset, it does nothing.
pub const PAUSE_AT_ENV: &str = "EMBER_TEST_PAUSE_AT";

/// Stop this process with SIGSTOP when [`PAUSE_AT_ENV`] names `step`.
pub fn pause_at(step: &str) {
    if std::env::var_os(PAUSE_AT_ENV).is_some_and(|v| v == step) {
        log::warn!("{PAUSE_AT_ENV}={step}: stopping");
        // SAFETY: raise(3) of a signal whose default action stops the process; no handler.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// Start time (clock ticks since boot) of a live, non-zombie process; `None` when it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and ')'; fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // rest starts at field 3 (state); starttime is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// Describe our own process for the pod record.
pub fn this_process() -> Option<VmmProcess> {
    let pid = i32::try_from(std::process::id()).ok()?;
    Some(VmmProcess {
        pid,
        start_time: start_time(pid)?,
        hosted: false,
    })
}

/// Whether `p` is this process (whether it hosts the VM or is the VM's own).
pub fn is_this_process(p: &VmmProcess) -> bool {
    this_process().is_some_and(|me| me.pid == p.pid && me.start_time == p.start_time)
}

/// True while the recorded process still runs (same pid, same start time).
pub fn is_alive(p: &VmmProcess) -> bool {
    start_time(p.pid) == Some(p.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_with_stable_start_time() {
        let me = this_process().unwrap();
        assert!(is_alive(&me));
        let older = VmmProcess {
            pid: me.pid,
            start_time: me.start_time.wrapping_add(1),
            hosted: false,
        };
        assert!(
            !is_alive(&older),
            "a different start time is another process"
        );
    }

    #[test]
    fn exited_child_is_dead() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(start_time(pid), None);
        assert_eq!(start_time(0), None);
        assert_eq!(start_time(-5), None);
    }

    #[test]
    fn zombie_counts_as_dead() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Not reaped yet: wait until it is a zombie.
        for _ in 0..500 {
            if start_time(pid).is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(start_time(pid), None);
        drop(child);
    }
}
