//! Slow tier: end-to-end tests in the virtual KVM host.
//!
//! The host boots ONCE per test run (shared through a `OnceLock`) and runs every scenario in
//! `rig/scenarios/` in name order; each `#[test]` then asserts on one section of the console.
//!
//! Without the prerequisites (host kernel /var/lib/ember/host/vmlinux, qemu-system-x86_64, the
//! static /usr/local/bin/ember) the tests print why and pass, unless `EMBER_E2E` is set: then a
//! missing prerequisite fails them. Run: `EMBER_E2E=1 cargo test -p ember-rig --test e2e`.
//! A scenario file with a failed section (or the one the host stopped in, and those after it)
//! runs once more in a fresh boot of the host, and its tests read that run
//! ([`rig::VirtualHost::rerun_failed`]): the virtual host is nested KVM under QEMU TCG, which
//! fails now and then on its own (rig/RELIABILITY.md). What failed the first time is printed
//! and written to `<console log>.reruns`, which scripts/test.sh shows; a file failing twice
//! fails its tests. `EMBER_E2E_RERUN=0` turns this off.
//! Env: `EMBER_E2E_TIMEOUT` (seconds for one host boot, default 1800),
//! `EMBER_E2E_LOG` (console log path, default $TMPDIR/ember-e2e-console.log).

mod boot;
mod devices;
mod oci;
mod pods;
mod templates;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rig::{RunReport, Section, VirtualHost};

/// What the shared host run produced.
enum HostRun {
    Skipped(String),
    Ran(Box<RunReport>),
    Failed(String),
}

static HOST: OnceLock<HostRun> = OnceLock::new();

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn required() -> bool {
    std::env::var_os("EMBER_E2E").is_some_and(|v| !v.is_empty() && v != "0")
}

fn missing_prerequisite() -> Option<String> {
    let kernel = std::env::var("EMBER_HOST_KERNEL")
        .unwrap_or_else(|_| rig::vhost::DEFAULT_HOST_KERNEL.to_string());
    if !Path::new(&kernel).is_file() {
        return Some(format!(
            "{kernel} missing (guest-kernel-config/build.sh host)"
        ));
    }
    if rig::vhost::which("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 missing (apt-get install qemu-system-x86)".into());
    }
    let ember =
        std::env::var("EMBER_BIN").unwrap_or_else(|_| rig::vhost::DEFAULT_EMBER.to_string());
    if !Path::new(&ember).is_file() {
        return Some(format!("{ember} missing (scripts/build-guest-image.sh)"));
    }
    None
}

fn boot_host() -> HostRun {
    if let Some(why) = missing_prerequisite() {
        return HostRun::Skipped(why);
    }
    let timeout = std::env::var("EMBER_E2E_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    let log = std::env::var_os("EMBER_E2E_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ember-e2e-console.log"));
    let scenarios = match rig::vhost::scenarios_in(&scenario_dir()) {
        Ok(s) => s,
        Err(e) => return HostRun::Failed(format!("cannot list {:?}: {e}", scenario_dir())),
    };
    let mut host = match VirtualHost::new() {
        Ok(h) => with_rerun(h.timeout(timeout).log(&log)),
        Err(e) => return HostRun::Failed(format!("{e}")),
    };
    for s in scenarios {
        host = host.scenario(s);
    }
    eprintln!(
        "e2e: booting the virtual KVM host; console log: {}",
        log.display()
    );
    match host.run() {
        Ok(report) => {
            eprintln!(
                "e2e: host run {:?} in {:.1} s, {} attempt(s)",
                report.outcome,
                report.wall.as_secs_f64(),
                report.attempts
            );
            report_reruns(&report, &log);
            HostRun::Ran(Box::new(report))
        }
        Err(e) => HostRun::Failed(format!("{e}")),
    }
}

/// How long a virtual host's console may stay silent before its run counts as hung: every
/// section prints within minutes (50-oci's `watched` every 30 s).
pub const STALL_SECS: u64 = 600;

/// `host` set up as the slow tier runs it: a hung host is cut off after [`STALL_SECS`] and not
/// rebooted for all of its scenarios; the failed ones run again once.
pub fn with_rerun(host: VirtualHost) -> VirtualHost {
    let rerun = std::env::var("EMBER_E2E_RERUN").map_or(true, |v| v != "0");
    host.stall(Some(std::time::Duration::from_secs(STALL_SECS)))
        .max_attempts(1)
        .rerun_failed(rerun)
}

/// Prints what a run ran twice and why, and writes it to `<log>.reruns` (removed when nothing
/// was).
pub fn report_reruns(report: &RunReport, log: &Path) {
    let mut path = log.as_os_str().to_owned();
    path.push(".reruns");
    if report.reruns.is_empty() {
        let _ = std::fs::remove_file(&path);
        return;
    }
    let mut text = String::new();
    for r in &report.reruns {
        text.push_str(&format!(
            "e2e: ran again in a fresh virtual host: {} (first run: {})\n",
            r.scenarios.join(" "),
            r.why
        ));
        for (name, s) in &r.failed {
            let lines: Vec<&str> = s.output.lines().collect();
            text.push_str(&format!(
                "--- {name} the first time (rc {}, last lines):\n{}\n",
                s.rc,
                lines[lines.len().saturating_sub(30)..].join("\n")
            ));
        }
    }
    eprint!("{text}");
    if let Err(e) = std::fs::write(&path, &text) {
        eprintln!("e2e: cannot write {}: {e}", PathBuf::from(&path).display());
    }
}

/// The shared run's report; None when the tests are skipped (message printed).
pub fn host() -> Option<&'static RunReport> {
    match HOST.get_or_init(boot_host) {
        HostRun::Ran(r) => Some(r),
        HostRun::Skipped(why) => {
            assert!(
                !required(),
                "EMBER_E2E is set but a prerequisite is missing: {why}"
            );
            eprintln!("e2e: SKIPPED (set EMBER_E2E=1 to make this a failure): {why}");
            None
        }
        HostRun::Failed(e) => panic!("e2e: the virtual host could not run: {e}"),
    }
}

/// The last lines of the console, for failure messages.
pub fn console_tail(report: &RunReport, lines: usize) -> String {
    let all: Vec<&str> = report.console.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The section `name` of the shared run (None when skipped); fails when it is missing.
pub fn section(name: &str) -> Option<&'static Section> {
    let report = host()?;
    match report.sections.get(name) {
        Some(s) => Some(s),
        None => panic!(
            "section {name:?} missing (outcome {:?}); console tail:\n{}",
            report.outcome,
            console_tail(report, 40)
        ),
    }
}

/// Asserts that section `name` ended with rc 0; returns it (None when skipped).
pub fn passed(name: &str) -> Option<&'static Section> {
    let s = section(name)?;
    assert_eq!(
        s.rc, 0,
        "section {name:?} failed (complete: {}); output:\n{}",
        s.complete, s.output
    );
    Some(s)
}
