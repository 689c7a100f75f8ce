//! The virtual KVM host: a QEMU-TCG machine with emulated AMD SVM, booted from an initramfs that
//! carries the static `ember` binary, the guest artifacts, busybox and scenario scripts. Inside
//! it `/dev/kvm` behaves like hardware KVM, so ember boots real guests with user space.
//!
//! The host's `/init` runs every scenario in order, then `reboot -f` (QEMU exits thanks to
//! `-no-reboot`). Scenarios print sections `=== BEGIN <name>` ... `=== END <name> rc=<n>`
//! (the `section` helper of `/rig/lib.sh` does it); [`RunReport`] returns them parsed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::busybox;
use crate::guest;
use crate::initramfs::{self, Image};
use crate::sections::{self, Section};

/// The host kernel (CONFIG_KVM_AMD=y), built by guest-kernel-config/build.sh.
pub const DEFAULT_HOST_KERNEL: &str = "/var/lib/ember/host/vmlinux";
/// Where the guest artifacts live, on this machine and inside the virtual host.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/ember/guest";
/// The static ember binary, on this machine and inside the virtual host.
pub const DEFAULT_EMBER: &str = "/usr/local/bin/ember";
/// Guest artifacts copied into the host when present.
pub const GUEST_FILES: &[&str] = &["vmlinux", "bzImage", "initramfs.cpio", "System.map"];

/// Printed by the host's /init once every scenario ran.
pub const DONE_MARKER: &str = "=== RIG DONE";
/// Printed by the host's /init when it starts.
pub const UP_MARKER: &str = "=== RIG HOST UP";
/// A scenario prints this (alone on a line) to ask the rig to reboot the host and run again:
/// the way a scenario reports the "first KVM_RUN never returned" hang it detected.
pub const RETRY_MARKER: &str = "=== RIG RETRY";
/// Written to the console log (and [`RunReport::console`]) before a rerun of failed scenario
/// files.
pub const RERUN_MARKER: &str = "=== RIG RERUN";

/// QEMU CPU model of the virtual host. `-tsc-scale` hides SVM TSC-rate scaling from the host's
/// KVM: with it, a monitor that never calls KVM_SET_TSC_KHZ (ember, Firecracker-style) had its
/// first KVM_RUN spin in L1 KVM forever (0 exits); see rig/RELIABILITY.md.
pub const DEFAULT_CPU: &str = "max,-tsc-scale";

/// Kernel command line of the virtual host. `kvm_amd.*` settings: see rig/RELIABILITY.md.
pub const HOST_CMDLINE: &str = "console=ttyS0 random.trust_cpu=on panic=1 quiet loglevel=4 \
     8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Errors of the virtual host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Host kernel {0} not found (run guest-kernel-config/build.sh host)")]
    NoHostKernel(PathBuf),
    #[error("QEMU ({0}) not found (apt-get install qemu-system-x86)")]
    NoQemu(PathBuf),
    #[error("Missing {what}: {path}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("Cannot build the host initramfs")]
    Image(#[from] initramfs::Error),
    #[error("Cannot add busybox to the host")]
    Busybox(#[from] busybox::Error),
    #[error("Cannot read scenario {path}")]
    Scenario {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create the work directory {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot start {qemu}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write the console log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot wait for QEMU")]
    Wait(#[source] io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How a run of the virtual host ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The host ran every scenario and rebooted.
    Completed,
    /// The overall timeout struck; QEMU was killed.
    TimedOut,
    /// The console went silent for the stall limit on every attempt.
    Stalled,
    /// QEMU exited before the host finished (code, or None when killed by a signal).
    QemuExited(Option<i32>),
}

/// The result of [`VirtualHost::run`] (the last attempt's console and sections).
#[derive(Clone, Debug)]
pub struct RunReport {
    pub sections: BTreeMap<String, Section>,
    pub console: String,
    /// How many times the host was booted (1 unless a stall or a scenario retry restarted it).
    pub attempts: u32,
    /// Why each earlier attempt was restarted.
    pub restarts: Vec<String>,
    pub wall: Duration,
    pub outcome: Outcome,
    /// Wall time from QEMU start to the host's `/init` (first run's last attempt).
    pub host_up: Option<Duration>,
    /// The scenario files run a second time ([`VirtualHost::rerun_failed`]); their sections in
    /// `sections` are the second run's.
    pub reruns: Vec<Rerun>,
}

/// Scenario files that failed in a host run and were run again in a fresh boot.
#[derive(Clone, Debug)]
pub struct Rerun {
    /// Their file names.
    pub scenarios: Vec<String>,
    /// What failed the first time: its failed sections, or where the host stopped.
    pub why: String,
    /// The first run's failed sections of those files.
    pub failed: BTreeMap<String, Section>,
    /// Every section of those files in the first run (the second run's replace them).
    replaced: Vec<String>,
}

impl Rerun {
    /// What to run again after `report` (a run of `scenarios`): the files' places in the run
    /// and the record of why; `None` when nothing failed.
    fn after(report: &RunReport, scenarios: &[PathBuf]) -> Option<(Vec<usize>, Rerun)> {
        let owner = sections::scenarios_of(&report.console);
        let again = to_rerun(report, &owner, scenarios.len());
        if again.is_empty() {
            return None;
        }
        let in_again = |name: &str| owner.get(name).is_some_and(|i| again.contains(i));
        let replaced: Vec<String> = report
            .sections
            .keys()
            .filter(|n| in_again(n))
            .cloned()
            .collect();
        let failed: BTreeMap<String, Section> = report
            .sections
            .iter()
            .filter(|(name, s)| s.rc != 0 && in_again(name))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let mut why: Vec<String> = failed
            .iter()
            .map(|(n, s)| match s.complete {
                true => format!("{n} rc={}", s.rc),
                false => format!("{n} never ended"),
            })
            .collect();
        if report.outcome != Outcome::Completed {
            why.push(format!("the host's run ended {:?}", report.outcome));
        }
        let rerun = Rerun {
            scenarios: again
                .iter()
                .map(|&i| {
                    scenarios[i]
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect(),
            why: why.join(", "),
            failed,
            replaced,
        };
        Some((again, rerun))
    }
}

impl RunReport {
    /// Takes `second` (the run of `rerun`'s scenario files) in place of this run's sections
    /// of those files.
    fn merge(&mut self, second: RunReport, rerun: Rerun, line: &str) {
        for name in &rerun.replaced {
            self.sections.remove(name);
        }
        self.sections.extend(second.sections);
        self.console.push_str(line);
        self.console.push('\n');
        self.console.push_str(&second.console);
        self.attempts += second.attempts;
        self.restarts.extend(second.restarts);
        self.outcome = second.outcome;
        self.reruns.push(rerun);
    }

    /// True when the host completed and every section returned 0.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Completed
            && !self.sections.is_empty()
            && self.sections.values().all(|s| s.rc == 0)
    }

    /// Names of sections that failed or never ended.
    pub fn failed_sections(&self) -> Vec<&str> {
        self.sections
            .iter()
            .filter(|(_, s)| s.rc != 0)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Builder and runner of the virtual KVM host.
#[derive(Clone, Debug)]
pub struct VirtualHost {
    qemu: PathBuf,
    kernel: PathBuf,
    ember: Option<PathBuf>,
    guest_dir: Option<PathBuf>,
    busybox: PathBuf,
    files: Vec<(PathBuf, String)>,
    scenarios: Vec<PathBuf>,
    timeout: Duration,
    stall: Option<Duration>,
    max_attempts: u32,
    mem_mib: u32,
    smp: u32,
    cpu: String,
    cmdline_extra: Vec<String>,
    qemu_extra: Vec<String>,
    log: Option<PathBuf>,
    echo: bool,
    work_dir: Option<PathBuf>,
    rerun_failed: bool,
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Finds `name` in `PATH` (or returns it when it contains a `/`).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

impl VirtualHost {
    /// A host with the default artifacts: `$EMBER_HOST_KERNEL` or /var/lib/ember/host/vmlinux,
    /// `$EMBER_BIN` or /usr/local/bin/ember (when present), `$EMBER_GUEST_DIR` or
    /// /var/lib/ember/guest, /bin/busybox, `qemu-system-x86_64` from PATH (`$EMBER_RIG_QEMU`).
    /// Fails when the host kernel or QEMU is missing.
    pub fn new() -> Result<Self> {
        let kernel = env_path("EMBER_HOST_KERNEL", DEFAULT_HOST_KERNEL);
        if !kernel.is_file() {
            return Err(Error::NoHostKernel(kernel));
        }
        let qemu_name = std::env::var("EMBER_RIG_QEMU")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "qemu-system-x86_64".to_string());
        let qemu = which(&qemu_name).ok_or_else(|| Error::NoQemu(PathBuf::from(&qemu_name)))?;
        let ember = env_path("EMBER_BIN", DEFAULT_EMBER);
        Ok(VirtualHost {
            qemu,
            kernel,
            ember: ember.is_file().then_some(ember),
            guest_dir: Some(env_path("EMBER_GUEST_DIR", DEFAULT_GUEST_DIR)),
            busybox: env_path("EMBER_RIG_BUSYBOX", "/bin/busybox"),
            files: Vec::new(),
            scenarios: Vec::new(),
            timeout: Duration::from_secs(600),
            stall: None,
            max_attempts: 3,
            mem_mib: 2048,
            smp: 2,
            cpu: DEFAULT_CPU.to_string(),
            cmdline_extra: Vec::new(),
            qemu_extra: Vec::new(),
            log: None,
            echo: false,
            work_dir: None,
            rerun_failed: false,
        })
    }

    /// Copies a host file or directory `src` to `dst` inside the virtual host.
    pub fn file(mut self, src: impl Into<PathBuf>, dst: &str) -> Self {
        self.files.push((src.into(), dst.to_string()));
        self
    }

    /// Adds a scenario script (run by busybox sh in the order added).
    pub fn scenario(mut self, path: impl Into<PathBuf>) -> Self {
        self.scenarios.push(path.into());
        self
    }

    /// The ember binary put at /usr/local/bin/ember (None: do not add one).
    pub fn ember(mut self, path: Option<PathBuf>) -> Self {
        self.ember = path;
        self
    }

    /// The directory whose vmlinux/bzImage/initramfs.cpio go to /var/lib/ember/guest.
    pub fn guest_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.guest_dir = dir;
        self
    }

    /// Overall limit for one attempt (boot to reboot).
    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout = Duration::from_secs(secs);
        self
    }

    /// Restart the host when the console stays silent this long (None: never).
    pub fn stall(mut self, limit: Option<Duration>) -> Self {
        self.stall = limit;
        self
    }

    /// How many boots a stall or a scenario's retry request may cost in all (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    pub fn mem_mib(mut self, mib: u32) -> Self {
        self.mem_mib = mib;
        self
    }

    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n.max(1);
        self
    }

    /// The QEMU `-cpu` model (default [`DEFAULT_CPU`]; it must offer SVM).
    pub fn cpu(mut self, model: &str) -> Self {
        self.cpu = model.to_string();
        self
    }

    /// Appends to the host kernel command line.
    pub fn cmdline(mut self, extra: &str) -> Self {
        self.cmdline_extra.push(extra.to_string());
        self
    }

    /// Appends QEMU arguments (split at whitespace) for this host only; `EMBER_RIG_QEMU_ARGS`
    /// adds to them for every host.
    pub fn qemu_args(mut self, extra: &str) -> Self {
        self.qemu_extra
            .extend(extra.split_whitespace().map(str::to_string));
        self
    }

    /// Run the scenario files that had a failed section (or in which the host stopped) once
    /// more, in a fresh boot of the host, and report their sections from that run; the first
    /// run's failures stay in [`RunReport::reruns`]. Off by default.
    pub fn rerun_failed(mut self, on: bool) -> Self {
        self.rerun_failed = on;
        self
    }

    /// Also writes the console to this file, line by line.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Echo the console to stdout as it arrives.
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// Where the host initramfs is written (default: a fresh directory under the temp dir).
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// The host's /init script.
    pub fn init_script() -> &'static str {
        include_str!("../host/init.sh")
    }

    /// The scenario helper library, at /rig/lib.sh in the host.
    pub fn scenario_lib() -> &'static str {
        include_str!("../host/lib.sh")
    }

    /// Builds the host initramfs tree.
    pub fn image(&self) -> Result<Image> {
        let mut img = Image::new();
        guest::add_skeleton(&mut img)?;
        for d in ["var/lib/ember", "var/run", "usr/local/bin", "etc"] {
            img.dir(d, 0o755)?;
        }
        img.data("etc/hostname", 0o644, "ember-vhost\n")?;
        img.data("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n")?;
        img.data("etc/group", 0o644, "root:x:0:\n")?;
        img.data("init", 0o755, Self::init_script())?;
        img.data("rig/lib.sh", 0o644, Self::scenario_lib())?;
        if !self.busybox.is_file() {
            return Err(Error::Missing {
                what: "busybox (apt-get install busybox-static)",
                path: self.busybox.clone(),
            });
        }
        busybox::add_to(&mut img, &self.busybox)?;
        if let Some(ember) = &self.ember {
            img.host_file(ember, DEFAULT_EMBER)?;
        }
        if let Some(dir) = &self.guest_dir {
            for f in GUEST_FILES {
                let p = dir.join(f);
                if p.is_file() {
                    img.host_file(&p, &format!("{DEFAULT_GUEST_DIR}/{f}"))?;
                }
            }
        }
        for (i, s) in self.scenarios.iter().enumerate() {
            let text = std::fs::read(s).map_err(|e| Error::Scenario {
                path: s.clone(),
                source: e,
            })?;
            let base = s
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "scenario.sh".to_string());
            img.data(&format!("rig/scenarios/{i:03}-{base}"), 0o755, text)?;
        }
        for (src, dst) in &self.files {
            img.host_path(src, dst)?;
        }
        Ok(img)
    }

    fn qemu_command(&self, initrd: &Path) -> Command {
        let mut cmdline = HOST_CMDLINE.to_string();
        for extra in &self.cmdline_extra {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        // The fix for the "first KVM_RUN never returns" hang (rig/RELIABILITY.md): under TCG the
        // host kernel's PIT calibration of the TSC fails whenever the machine is loaded, leaving
        // tsc_khz = 0; KVM then re-requests a guest clock update forever inside KVM_RUN
        // (kvm_guest_time_update() with cpu_tsc_khz == 0). Give the kernel the TSC rate instead.
        cmdline.push_str(&format!(" tsc_early_khz={} tsc=reliable", host_tsc_khz()));
        if let Ok(extra) = std::env::var("EMBER_RIG_CMDLINE") {
            cmdline.push(' ');
            cmdline.push_str(&extra);
        }
        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-accel", "tcg,thread=multi"])
            .args(["-cpu", &self.cpu])
            .args(["-smp", &self.smp.to_string()])
            .args(["-M", "microvm"])
            .args(["-m", &self.mem_mib.to_string()])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &cmdline])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-no-user-config"])
            .args(&self.qemu_extra);
        if let Ok(extra) = std::env::var("EMBER_RIG_QEMU_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
        // is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // QEMU dies with the thread that runs it (no orphaned TCG machines eating CPU
                // when a test or `ember-rig run` is interrupted).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Builds the host image, boots it, streams the console and returns the parsed report.
    /// Restarts the host (counted in `attempts`) when the console stalls or a scenario prints
    /// [`RETRY_MARKER`]; with [`VirtualHost::rerun_failed`], boots it once more for the
    /// scenario files that failed.
    pub fn run(&self) -> Result<RunReport> {
        let start = Instant::now();
        let work = match &self.work_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("ember-vhost-{}", std::process::id())),
        };
        std::fs::create_dir_all(&work).map_err(|e| Error::WorkDir {
            path: work.clone(),
            source: e,
        })?;
        let mut log = match &self.log {
            Some(p) => Some(File::create(p).map_err(|e| Error::Log {
                path: p.clone(),
                source: e,
            })?),
            None => None,
        };
        let mut report = self.attempts(&work.join("host.cpio"), log.as_mut())?;
        let rerun = match self.rerun_failed {
            true => Rerun::after(&report, &self.scenarios),
            false => None,
        };
        if let Some((again, rerun)) = rerun {
            let line = format!(
                "{RERUN_MARKER} {}: {}",
                rerun.scenarios.join(" "),
                rerun.why
            );
            if self.echo {
                println!("ember-rig: {line}");
            }
            if let Some(log) = log.as_mut() {
                writeln!(log, "{line}").map_err(|e| Error::Log {
                    path: self.log.clone().unwrap_or_default(),
                    source: e,
                })?;
            }
            let subset = VirtualHost {
                scenarios: again.iter().map(|&i| self.scenarios[i].clone()).collect(),
                rerun_failed: false,
                ..self.clone()
            };
            let second = subset.attempts(&work.join("rerun.cpio"), log.as_mut())?;
            report.merge(second, rerun, &line);
        }
        if self.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        report.wall = start.elapsed();
        Ok(report)
    }

    /// Boots the host from a fresh image (written to `initrd`) until a run is not to be
    /// restarted (a stall, a scenario's retry request) or the attempts are spent.
    fn attempts(&self, initrd: &Path, mut log: Option<&mut File>) -> Result<RunReport> {
        let start = Instant::now();
        self.image()?.write_file(initrd)?;
        let mut restarts = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let one = self.run_once(initrd, log.as_deref_mut())?;
            let retry_reason = match &one.outcome {
                Outcome::Stalled => Some(format!(
                    "console silent for {:?} after {} lines",
                    self.stall.unwrap_or_default(),
                    one.console.lines().count()
                )),
                _ if one.retry_requested.is_some() => one.retry_requested.clone(),
                _ => None,
            };
            match retry_reason {
                Some(reason) if attempt < self.max_attempts => {
                    let msg = format!("attempt {attempt}: {reason}");
                    if self.echo {
                        println!("ember-rig: restarting the virtual host ({msg})");
                    }
                    restarts.push(msg);
                }
                _ => {
                    return Ok(RunReport {
                        sections: sections::parse(&one.console),
                        console: one.console,
                        attempts: attempt,
                        restarts,
                        wall: start.elapsed(),
                        outcome: one.outcome,
                        host_up: one.host_up,
                        reruns: Vec::new(),
                    });
                }
            }
        }
    }

    fn run_once(&self, initrd: &Path, mut log: Option<&mut File>) -> Result<Attempt> {
        let started = Instant::now();
        let mut child = self
            .qemu_command(initrd)
            .spawn()
            .map_err(|e| Error::Spawn {
                qemu: self.qemu.clone(),
                source: e,
            })?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || pump(out, tx)));
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || pump(err, tx)));
        }
        drop(tx);
        let deadline = started + self.timeout;
        let mut console = String::new();
        let mut last_output = Instant::now();
        let mut host_up = None;
        let mut retry_requested = None;
        let mut done = false;
        let outcome = loop {
            let now = Instant::now();
            if now >= deadline {
                break Outcome::TimedOut;
            }
            let mut wait = deadline - now;
            if let Some(stall) = self.stall {
                let stall_at = last_output + stall;
                if now >= stall_at {
                    break Outcome::Stalled;
                }
                wait = wait.min(stall_at - now);
            }
            match rx.recv_timeout(wait) {
                Ok(raw) => {
                    last_output = Instant::now();
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if let Some(log) = log.as_mut() {
                        writeln!(log, "{line}").map_err(|e| Error::Log {
                            path: self.log.clone().unwrap_or_default(),
                            source: e,
                        })?;
                    }
                    if self.echo {
                        let mut out = io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                    if line.contains(UP_MARKER) && host_up.is_none() {
                        host_up = Some(started.elapsed());
                    }
                    if line.trim_start().starts_with(RETRY_MARKER) && retry_requested.is_none() {
                        let reason = line.trim_start()[RETRY_MARKER.len()..].trim();
                        retry_requested = Some(format!("scenario asked to retry: {reason}"));
                    }
                    if line.contains(DONE_MARKER) {
                        done = true;
                    }
                    console.push_str(&line);
                    console.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map_err(Error::Wait)?;
                    break if done {
                        Outcome::Completed
                    } else {
                        Outcome::QemuExited(status.code())
                    };
                }
            }
        };
        kill(&mut child);
        for r in readers {
            let _ = r.join();
        }
        Ok(Attempt {
            console,
            outcome,
            host_up,
            retry_requested,
        })
    }
}

struct Attempt {
    console: String,
    outcome: Outcome,
    host_up: Option<Duration>,
    retry_requested: Option<String>,
}

/// The scenario files (indexes into the `n` run) to run again: those with a failed section,
/// the one the host stopped in and those it never reached.
/// `owner`: the file each section began in ([`sections::scenarios_of`]).
fn to_rerun(report: &RunReport, owner: &BTreeMap<String, usize>, n: usize) -> Vec<usize> {
    let reached = sections::scenarios_started(&report.console);
    let stopped_in = (report.outcome != Outcome::Completed).then(|| reached.last().copied());
    (0..n)
        .filter(|i| {
            let failed_section = report
                .sections
                .iter()
                .any(|(name, s)| s.rc != 0 && owner.get(name.as_str()) == Some(i));
            let cut_short = match stopped_in {
                Some(Some(last)) => *i >= last,
                Some(None) => true,
                None => false,
            };
            failed_section || cut_short
        })
        .collect()
}

/// Forwards `src` line by line (a partial last line included) until EOF.
fn pump(src: impl io::Read, tx: mpsc::Sender<Vec<u8>>) {
    let mut reader = BufReader::new(src);
    loop {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send(buf).is_err() {
                    return;
                }
            }
        }
    }
}

fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The scenario files of a directory, in name order (`*.sh` only).
pub fn scenarios_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "sh"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::Entry;

    fn host_for_test() -> VirtualHost {
        VirtualHost {
            qemu: PathBuf::from("/bin/false"),
            kernel: PathBuf::from("/nonexistent"),
            ember: None,
            guest_dir: None,
            busybox: PathBuf::from("/bin/busybox"),
            files: Vec::new(),
            scenarios: Vec::new(),
            timeout: Duration::from_secs(5),
            stall: None,
            max_attempts: 1,
            mem_mib: 256,
            smp: 1,
            cpu: "max".into(),
            cmdline_extra: Vec::new(),
            qemu_extra: Vec::new(),
            log: None,
            echo: false,
            work_dir: None,
            rerun_failed: false,
        }
    }

    fn report_of(console: &str, outcome: Outcome) -> RunReport {
        RunReport {
            sections: sections::parse(console),
            console: console.to_string(),
            attempts: 1,
            restarts: Vec::new(),
            wall: Duration::ZERO,
            outcome,
            host_up: None,
            reruns: Vec::new(),
        }
    }

    const THREE: &str = "=== RIG SCENARIO 000-10-a.sh\n=== BEGIN a\n=== END a rc=0\n\
                         === RIG SCENARIO 001-20-b.sh\n=== BEGIN b\n=== END b rc=2\n\
                         === BEGIN b2\n=== END b2 rc=0\n\
                         === RIG SCENARIO 002-30-c.sh\n=== BEGIN c\n=== END c rc=0\n\
                         === RIG DONE\n";

    fn again(report: &RunReport, n: usize) -> Vec<usize> {
        to_rerun(report, &sections::scenarios_of(&report.console), n)
    }

    #[test]
    fn the_files_to_run_again_are_those_that_failed_or_were_cut_short() {
        assert_eq!(again(&report_of(THREE, Outcome::Completed), 3), vec![1]);
        let passed = THREE.replace("rc=2", "rc=0");
        assert!(again(&report_of(&passed, Outcome::Completed), 3).is_empty());
        // The host hung in b: b and c again (a passed).
        let hung = "=== RIG SCENARIO 000-10-a.sh\n=== BEGIN a\n=== END a rc=0\n\
                    === RIG SCENARIO 001-20-b.sh\n=== BEGIN b\n";
        assert_eq!(again(&report_of(hung, Outcome::Stalled), 3), vec![1, 2]);
        // QEMU died before the first scenario.
        assert_eq!(
            again(&report_of("boot noise\n", Outcome::QemuExited(Some(1))), 3),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn a_rerun_replaces_the_sections_of_its_files_and_keeps_the_first_failure() {
        let mut first = report_of(THREE, Outcome::Completed);
        let files = [
            PathBuf::from("/s/10-a.sh"),
            PathBuf::from("/s/20-b.sh"),
            PathBuf::from("/s/30-c.sh"),
        ];
        let (again, rerun) = Rerun::after(&first, &files).unwrap();
        assert_eq!(again, vec![1]);
        assert_eq!(rerun.scenarios, vec!["20-b.sh".to_string()]);
        assert_eq!(rerun.why, "b rc=2");
        // The second run of 20-b.sh passes b and no longer prints b2.
        let second = report_of(
            "=== RIG SCENARIO 000-20-b.sh\n=== BEGIN b\nok now\n=== END b rc=0\n=== RIG DONE\n",
            Outcome::Completed,
        );
        first.merge(second, rerun, "=== RIG RERUN 20-b.sh: b rc=2");
        assert_eq!(first.sections["b"].rc, 0);
        assert_eq!(first.sections["b"].output, "ok now\n");
        assert!(!first.sections.contains_key("b2"), "b2 is the first run's");
        assert_eq!(first.sections["a"].rc, 0);
        assert_eq!(first.sections["c"].rc, 0);
        assert_eq!(first.attempts, 2);
        assert_eq!(first.reruns[0].failed["b"].rc, 2);
        assert!(first.console.contains("=== RIG RERUN 20-b.sh"));
        assert!(first.passed());
        // Nothing failed: nothing to run again.
        let passed = report_of(&THREE.replace("rc=2", "rc=0"), Outcome::Completed);
        assert!(Rerun::after(&passed, &files).is_none());
    }

    #[test]
    fn image_carries_init_lib_scenarios_and_files() {
        if !Path::new("/bin/busybox").is_file() {
            eprintln!("/bin/busybox missing: skipping");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ember-rig-vhost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s1 = dir.join("20-b.sh");
        let s2 = dir.join("10-a.sh");
        std::fs::write(&s1, "section b true\n").unwrap();
        std::fs::write(&s2, "section a true\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let extra = dir.join("data.bin");
        std::fs::write(&extra, [1u8, 2, 3]).unwrap();
        assert_eq!(scenarios_in(&dir).unwrap(), vec![s2.clone(), s1.clone()]);
        let h = host_for_test()
            .scenario(&s2)
            .scenario(&s1)
            .file(&extra, "/opt/data.bin");
        let img = h.image().unwrap();
        assert!(matches!(
            img.get("init"),
            Some(Entry::Data { mode: 0o755, .. })
        ));
        assert!(img.get("rig/lib.sh").is_some());
        assert!(img.get("rig/scenarios/000-10-a.sh").is_some());
        assert!(img.get("rig/scenarios/001-20-b.sh").is_some());
        assert!(img.get("opt/data.bin").is_some());
        assert!(img.get("dev/console").is_some());
        assert!(img.get("bin/sh").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_scenario_is_an_error() {
        if !Path::new("/bin/busybox").is_file() {
            return;
        }
        let h = host_for_test().scenario("/nonexistent/scenario.sh");
        assert!(matches!(h.image(), Err(Error::Scenario { .. })));
    }

    #[test]
    fn init_script_runs_scenarios_and_reboots() {
        let init = VirtualHost::init_script();
        assert!(init.starts_with("#!/bin/sh"));
        assert!(init.contains(UP_MARKER));
        assert!(init.contains(DONE_MARKER));
        assert!(init.contains("reboot -f"));
        assert!(VirtualHost::scenario_lib().contains("=== BEGIN"));
    }

    #[test]
    fn which_finds_programs() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-program-ember").is_none());
        assert!(which("/nonexistent/prog").is_none());
    }

    #[test]
    fn qemu_that_exits_early_is_reported() {
        // /bin/false stands in for QEMU: the run must end with QemuExited, not hang.
        if !Path::new("/bin/busybox").is_file() || !Path::new("/bin/false").is_file() {
            return;
        }
        let report = host_for_test().run().unwrap();
        assert_eq!(report.outcome, Outcome::QemuExited(Some(1)));
        assert_eq!(report.attempts, 1);
        assert!(!report.passed());
    }
}

/// The TSC rate QEMU's TCG shows the virtual host: the real CPU's TSC (TCG reads it with
/// `rdtsc`), in kHz. From /proc/cpuinfo's `cpu MHz` (exact on hosts with `tsc_known_freq`; close
/// enough elsewhere: any non-zero value avoids the hang, the rate only skews the host's clock).
pub fn host_tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| parse_cpu_mhz_khz(&text))
        .unwrap_or(2_000_000)
}

fn parse_cpu_mhz_khz(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .find_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .filter(|mhz| *mhz > 0.0)
        .map(|mhz| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tsc_tests {
    use super::parse_cpu_mhz_khz;

    #[test]
    fn cpu_mhz_becomes_khz() {
        let text = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2300.000\ncache size\t: 1 KB\n";
        assert_eq!(parse_cpu_mhz_khz(text), Some(2_300_000));
        assert_eq!(parse_cpu_mhz_khz("cpu MHz\t: 1999.9996\n"), Some(2_000_000));
    }

    #[test]
    fn missing_or_bad_mhz_is_none() {
        assert_eq!(parse_cpu_mhz_khz("processor\t: 0\n"), None);
        assert_eq!(parse_cpu_mhz_khz("cpu MHz\t: fast\n"), None);
        assert_eq!(parse_cpu_mhz_khz("cpu MHz\t: 0.000\n"), None);
    }
}
