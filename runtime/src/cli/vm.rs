//! `ember vm ...`: boot a microVM directly and show its console (owned by the VMM work).
//!
//! `ember vm run` checks its inputs first (kernel, initrd, memory), then whether this
//! machine's `/dev/kvm` can run an ordinary guest, then builds and runs the VM in-process.
//! It exits 0 when the guest resets or powers off (or, with `--exit-on-ready`, once the
//! agent reported ready on the boot timer), 1 with a one-line `ember: ...` error otherwise.

use super::output::outln;
use agent::client::AgentCalls;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use thiserror::Error;
use vmm::config::{
    BlockConfig, ConsoleConfig, FsConfig, NetConfig, ShareConfig, VmConfig, VsockConfig,
    DEFAULT_GUEST_CID,
};

use super::report;

/// Kernel parameters that get a Linux 6.1 guest kernel past the instructions a PVM host's
/// emulator cannot run (xrstor, popcnt, clac/stac, ...) and past expensive timer
/// calibration; see /work/shared/ENVIRONMENT.md.
pub const PVM_CMDLINE: &str = "noxsave clearcpuid=151,308,295,288,534,514,515,158,306,580,156,293,153,129,150,291,296,311,312,298,145 tsc=reliable no_timer_check";

/// Where installed guest artifacts live unless `EMBER_GUEST_DIR` says otherwise.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/ember/guest";

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a kernel and show the serial console on stdout.
    Run(Box<RunArgs>),
    /// Start a VM from a snapshot: memory mapped copy-on-write from the snapshot's file, the
    /// devices given here (as many of each kind as the snapshot has).
    Restore(Box<RestoreArgs>),
    /// Check whether this machine's /dev/kvm can run an ordinary guest (exit 0) or not
    /// (one line saying why, exit 1).
    Check,
    /// Print ember's seccomp filters, one allow-list per VMM thread kind, as a filter file in
    /// seccompiler's JSON format (a starting point for `--seccomp-filter`).
    Seccomp,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel image: ELF vmlinux or bzImage [default: $EMBER_GUEST_DIR/vmlinux]
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs [default: $EMBER_GUEST_DIR/initramfs.cpio when present]
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Boot without an initrd, even if the default one exists.
    #[arg(long, conflicts_with = "initrd")]
    pub no_initrd: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = vmm::config::DEFAULT_MEM_MIB)]
    pub mem_mib: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Replace the default kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Append to the kernel command line (repeatable).
    #[arg(long)]
    pub append: Vec<String>,
    /// Print boot phase timings on stderr when the VM ends.
    #[arg(long)]
    pub timings: bool,
    /// Run even where /dev/kvm cannot run an ordinary guest (PVM); also EMBER_FORCE_KVM=1.
    #[arg(long)]
    pub force: bool,
    /// Stop the VM and exit 0 once the agent reports ready on the boot timer.
    #[arg(long)]
    pub exit_on_ready: bool,
    /// Once the agent reports ready, save a snapshot of the VM into this new directory and
    /// exit 0 (`ember vm restore DIR` starts it again, as many times as wanted).
    #[arg(long, value_name = "DIR")]
    pub snapshot_on_ready: Option<PathBuf>,
    /// Give up (exit 1) if the VM is still running after this many seconds.
    #[arg(long)]
    pub timeout_s: Option<u64>,
    /// Copy the kernel and initrd into guest memory instead of mapping them copy-on-write
    /// (to compare).
    #[arg(long)]
    pub copy_boot_files: bool,
    #[command(flatten)]
    pub devices: DeviceArgs,
}

/// `ember vm restore`: a VM from a snapshot, attached to this invocation's devices.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot directory (`ember vm run --snapshot-on-ready DIR`).
    pub snapshot: PathBuf,
    /// Print restore phase timings on stderr when the VM ends.
    #[arg(long)]
    pub timings: bool,
    /// Run even where /dev/kvm cannot run an ordinary guest (PVM); also EMBER_FORCE_KVM=1.
    #[arg(long)]
    pub force: bool,
    /// Once the guest's agent answers a ping over vsock (`--vsock` needed), stop the VM and
    /// exit 0.
    #[arg(long, requires = "vsock")]
    pub exit_on_agent: bool,
    /// Give up (exit 1) if the VM is still running after this many seconds.
    #[arg(long)]
    pub timeout_s: Option<u64>,
    #[command(flatten)]
    pub devices: DeviceArgs,
}

/// The devices of a VM and where its console goes.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Write the console to this file instead of stdout.
    #[arg(long)]
    pub console_file: Option<PathBuf>,
    /// virtio-blk disk: PATH[,ro][,bps=BYTES_PER_SEC][,iops=REQUESTS_PER_SEC] (repeatable;
    /// bps/iops rate-limit the guest's requests).
    #[arg(long, value_parser = parse_block)]
    pub block: Vec<BlockConfig>,
    /// virtio-net on this tap device (repeatable).
    #[arg(long)]
    pub net: Vec<String>,
    /// virtio-vsock bridged to Unix sockets at this path.
    #[arg(long)]
    pub vsock: Option<PathBuf>,
    /// Guest CID for vsock.
    #[arg(long, default_value_t = DEFAULT_GUEST_CID)]
    pub cid: u32,
    /// virtio-rng.
    #[arg(long)]
    pub rng: bool,
    /// virtio-fs share NAME=PATH or NAME=PATH,ro (repeatable): the guest mounts the device
    /// with `mount -t virtiofs ember DIR` and finds PATH at DIR/NAME.
    #[arg(long, value_parser = parse_share)]
    pub share: Vec<ShareConfig>,
    /// Confine the vCPU and event-loop threads to the filters of this JSON file
    /// (seccompiler's format, one filter per thread kind) instead of ember's own.
    #[arg(long, value_name = "FILE", conflicts_with = "no_seccomp")]
    pub seccomp_filter: Option<PathBuf>,
    /// Run the VMM's threads without seccomp filters.
    #[arg(long)]
    pub no_seccomp: bool,
}

/// Errors of `ember vm`.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Vmm(vmm::Error),
    #[error("No kernel given and none installed at {}", .0.display())]
    NoKernel(PathBuf),
    #[error("The guest ended before the agent was ready ({0:?})")]
    NotReady(vmm::VmExit),
    #[error("The VM did not finish within {0} s")]
    Timeout(u64),
    #[error("The guest ended before its agent answered ({0:?})")]
    NoAgent(vmm::VmExit),
    #[error(transparent)]
    Seccomp(vmm::seccomp::Error),
}

fn parse_share(s: &str) -> Result<ShareConfig, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("share {s:?} is not NAME=PATH[,ro]"))?;
    let block = parse_block(rest)?;
    if name.is_empty() {
        return Err("empty share name".into());
    }
    if block.rate_limit.is_some() {
        return Err(format!("share {name}: rate limits are for --block disks"));
    }
    Ok(ShareConfig {
        name: name.to_string(),
        path: block.path,
        read_only: block.read_only,
    })
}

fn parse_block(s: &str) -> Result<BlockConfig, String> {
    let mut parts = s.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("empty block device path".into());
    }
    let mut read_only = false;
    let mut limit = devices::rate_limiter::RateLimit::default();
    // N tokens per second, refilled over one second.
    let per_second = |opt: &str, v: &str| {
        v.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|size| devices::rate_limiter::BucketConfig {
                size,
                one_time_burst: 0,
                refill_time_ms: 1000,
            })
            .ok_or_else(|| format!("block option {opt}={v}: a positive integer per second"))
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => read_only = true,
            None if opt == "rw" => read_only = false,
            Some(("bps", v)) => limit.bandwidth = Some(per_second("bps", v)?),
            Some(("iops", v)) => limit.ops = Some(per_second("iops", v)?),
            _ => {
                return Err(format!(
                "unknown block option '{opt}' (ro, rw, bps=BYTES_PER_SEC, iops=REQUESTS_PER_SEC)"
            ))
            }
        }
    }
    Ok(BlockConfig {
        path: PathBuf::from(path),
        read_only,
        rate_limit: (!limit.is_unlimited()).then_some(limit),
    })
}

/// `$EMBER_GUEST_DIR`, or the installed default.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("EMBER_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR))
}

fn force_from_env() -> bool {
    std::env::var("EMBER_FORCE_KVM").is_ok_and(|v| v == "1" || v == "true")
}

/// The VM configuration for `args`.
pub fn config_from_args(args: &RunArgs) -> Result<VmConfig, Error> {
    let dir = guest_dir();
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => {
            let vmlinux = dir.join("vmlinux");
            let bzimage = dir.join("bzImage");
            if vmlinux.exists() {
                vmlinux
            } else if bzimage.exists() {
                bzimage
            } else {
                return Err(Error::NoKernel(vmlinux));
            }
        }
    };
    let initrd = match (&args.initrd, args.no_initrd) {
        (Some(i), _) => Some(i.clone()),
        (None, true) => None,
        (None, false) => Some(dir.join("initramfs.cpio")).filter(|p| p.exists()),
    };
    let mut cfg = VmConfig::new(kernel);
    cfg.initrd = initrd;
    cfg.cmdline = args.cmdline.clone();
    cfg.extra_cmdline = args.append.clone();
    cfg.mem_mib = args.mem_mib;
    cfg.vcpus = args.vcpus;
    args.devices.apply(&mut cfg);
    cfg.copy_boot_files = args.copy_boot_files;
    Ok(cfg)
}

impl DeviceArgs {
    /// Put these devices and this console into `cfg`.
    pub fn apply(&self, cfg: &mut VmConfig) {
        cfg.block = self.block.clone();
        cfg.net = self
            .net
            .iter()
            .map(|tap| NetConfig {
                tap: tap.clone(),
                mac: None,
                rx_rate_limit: None,
                tx_rate_limit: None,
            })
            .collect();
        cfg.vsock = self.vsock.as_ref().map(|p| VsockConfig {
            guest_cid: self.cid,
            uds_path: p.clone(),
        });
        cfg.rng = self.rng;
        cfg.fs = (!self.share.is_empty()).then(|| FsConfig {
            tag: agent::protocol::SHARED_FS_TAG.to_string(),
            shares: self.share.clone(),
        });
        cfg.console = match &self.console_file {
            Some(f) => ConsoleConfig::File(f.clone()),
            None => ConsoleConfig::Stdout,
        };
    }

    /// The seccomp filters the flags ask for (ember's own unless told otherwise).
    fn seccomp(&self) -> Result<Option<std::sync::Arc<vmm::seccomp::Filters>>, Error> {
        let which = match (&self.seccomp_filter, self.no_seccomp) {
            (_, true) => crate::config::Seccomp::Off,
            (Some(file), false) => crate::config::Seccomp::File(file.clone()),
            (None, false) => crate::config::Seccomp::Builtin,
        };
        which.filters().map_err(Error::Seccomp)
    }
}

/// Print every vCPU's RIP on stderr (a stalled guest: look them up in System.map).
fn print_rips(h: &vmm::VmHandle, why: &str) {
    match h.vcpu_states() {
        Ok(states) => {
            for vmm::VcpuState { cpu, rip, stats } in states {
                let counters: Vec<String> = stats.iter().map(|(n, v)| format!("{n}={v}")).collect();
                eprintln!(
                    "ember: {why}: vCPU {cpu} at RIP {rip:#x}; KVM stats: {}",
                    counters.join(" ")
                );
            }
        }
        Err(e) => eprintln!("ember: {why}: {}", report(&e)),
    }
}

/// Boot the VM described by `args`; returns the process exit code.
pub fn run_vm(args: &RunArgs) -> Result<(), Error> {
    let start = Instant::now();
    let cfg = config_from_args(args)?;
    let mut cfg = cfg;
    vmm::builder::validate_config(&cfg).map_err(Error::Vmm)?;
    cfg.seccomp = args.devices.seccomp()?;
    if !(args.force || force_from_env()) {
        vmm::check_kvm_usable().map_err(Error::Vmm)?;
    } else if vmm::vstate::kvm::is_pvm() {
        // Forced onto a PVM /dev/kvm: mask what its instruction emulator cannot run.
        eprintln!(
            "ember: note: PVM /dev/kvm, guest kernel emulated (minutes); adding: {PVM_CMDLINE}"
        );
        cfg.extra_cmdline.insert(0, PVM_CMDLINE.to_string());
    }
    let signals = block_signals();
    let vm = vmm::Vmm::with_start(cfg, start).map_err(Error::Vmm)?;
    let handle = vm.handle();
    let snapshot_failed = std::sync::Arc::new(std::sync::Mutex::new(None));
    if let Some(dir) = &args.snapshot_on_ready {
        let h = handle.clone();
        let dir = dir.clone();
        let failed = snapshot_failed.clone();
        crate::logging::thread("snapshot-on-ready", move || {
            if h.wait_ready(None) {
                match h.snapshot(&dir) {
                    Ok(info) => eprintln!(
                        "ember: snapshot {}: state {} bytes, memory {} MiB ({} MiB of data), vCPUs held {:.1} ms",
                        info.dir.display(),
                        info.state_bytes,
                        info.memory_bytes >> 20,
                        info.memory_written >> 20,
                        info.paused_ms
                    ),
                    Err(e) => *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
                }
                h.stop();
            }
        });
    } else if args.exit_on_ready {
        let h = handle.clone();
        crate::logging::thread("exit-on-ready", move || {
            if h.wait_ready(None) {
                h.stop();
            }
        });
    }
    let exit = drive(vm, signals, args.timeout_s, args.timings)?;
    if let Some(e) = snapshot_failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(Error::Vmm(e));
    }
    if (args.exit_on_ready || args.snapshot_on_ready.is_some())
        && handle.timings().agent_ready.is_none()
    {
        return Err(Error::NotReady(exit));
    }
    Ok(())
}

/// SIGINT/SIGTERM stop the VM cleanly (and restore the terminal); SIGUSR1 prints where each
/// vCPU is. Blocked in every thread (call before any VM thread starts) and taken on one.
fn block_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGUSR1);
    let _ = signals.thread_block();
    signals
}

/// Run `vm` in the foreground: signals, console input, the timeout; how it ended.
fn drive(
    vm: vmm::Vmm,
    signals: SigSet,
    timeout_s: Option<u64>,
    timings: bool,
) -> Result<vmm::VmExit, Error> {
    let handle = vm.handle();
    {
        let h = handle.clone();
        crate::logging::thread("signals", move || loop {
            match signals.wait() {
                Ok(Signal::SIGUSR1) => print_rips(&h, "SIGUSR1"),
                _ => {
                    h.stop();
                    return;
                }
            }
        });
    }
    let _terminal = vm.forward_stdin_if_console();
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(secs) = timeout_s {
        let h = handle.clone();
        let flag = timed_out.clone();
        crate::logging::thread("vm-timeout", move || {
            if !h.wait_exited(Some(Duration::from_secs(secs))) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                print_rips(&h, "timeout");
                h.stop();
            }
        });
    }
    let exit = vm.run();
    if timings {
        eprint!("{}", handle.timings());
    }
    let exit = exit.map_err(Error::Vmm)?;
    if let Some(secs) = timeout_s {
        if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Timeout(secs));
        }
    }
    Ok(exit)
}

/// Start the VM saved in `args.snapshot`.
pub fn restore_vm(args: &RestoreArgs) -> Result<(), Error> {
    let start = Instant::now();
    if !(args.force || force_from_env()) {
        vmm::check_kvm_usable().map_err(Error::Vmm)?;
    }
    let mut cfg = VmConfig::new("");
    args.devices.apply(&mut cfg);
    cfg.seccomp = args.devices.seccomp()?;
    let signals = block_signals();
    let vm = vmm::builder::restore_vmm(&args.snapshot, &cfg, start).map_err(Error::Vmm)?;
    let handle = vm.handle();
    if let (true, Some(path)) = (args.exit_on_agent, args.devices.vsock.clone()) {
        let h = handle.clone();
        crate::logging::thread("exit-on-agent", move || {
            if ping_agent(&path, &h) {
                h.agent_answered();
            }
            h.stop();
        });
    }
    let exit = drive(vm, signals, args.timeout_s, args.timings)?;
    if args.exit_on_agent && handle.timings().agent_ready.is_none() {
        return Err(Error::NoAgent(exit));
    }
    Ok(())
}

/// Ping the agent behind the vsock socket at `path` until it answers (`true`) or the VM ends.
fn ping_agent(path: &std::path::Path, h: &vmm::VmHandle) -> bool {
    let once = || -> Result<(), Box<dyn std::error::Error>> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        agent::client::vsock_handshake(&mut s, agent::protocol::DEFAULT_PORT)?;
        agent::client::AgentClient::new(s).ping()?;
        Ok(())
    };
    while !h.wait_exited(Some(Duration::ZERO)) {
        if once().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

pub fn run(cmd: VmCommand) -> i32 {
    match cmd {
        VmCommand::Run(args) => match run_vm(&args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ember: {}", report(&e));
                1
            }
        },
        VmCommand::Restore(args) => match restore_vm(&args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ember: {}", report(&e));
                1
            }
        },
        VmCommand::Seccomp => {
            outln!("{}", vmm::seccomp::Filters::builtin_json().trim_end());
            0
        }
        VmCommand::Check => match vmm::check_kvm_usable() {
            Ok(()) => {
                outln!("ember: /dev/kvm can run guests");
                0
            }
            Err(e) => {
                eprintln!("ember: {}", report(&e));
                1
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_argument() {
        assert_eq!(
            parse_block("/d.img,ro").unwrap(),
            BlockConfig {
                path: "/d.img".into(),
                read_only: true,
                rate_limit: None,
            }
        );
        assert!(!parse_block("/d.img").unwrap().read_only);
        assert!(parse_block("/d.img,xx").is_err());
        assert!(parse_block(",ro").is_err());
        let limited = parse_block("/d.img,bps=1048576,iops=100").unwrap();
        let limit = limited.rate_limit.unwrap();
        assert_eq!(limit.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(limit.ops.unwrap().size, 100);
        assert_eq!(limit.ops.unwrap().refill_time_ms, 1000);
        for bad in [
            "/d.img,bps=0",
            "/d.img,iops=x",
            "/d.img,bps=-1",
            "/d.img,bw=1",
        ] {
            assert!(parse_block(bad).is_err(), "{bad}");
        }
        assert!(parse_share("data=/srv/d,bps=10").is_err());
    }

    #[test]
    fn share_argument() {
        assert_eq!(
            parse_share("data=/srv/d,ro").unwrap(),
            ShareConfig {
                name: "data".into(),
                path: "/srv/d".into(),
                read_only: true
            }
        );
        assert!(!parse_share("d=/x").unwrap().read_only);
        assert!(parse_share("/x").is_err());
        assert!(parse_share("=/x").is_err());
        assert!(parse_share("d=").is_err());
    }
}
