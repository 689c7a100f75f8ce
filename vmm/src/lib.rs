//! ember's in-process VMM: a KVM VM, guest memory, vCPU threads, the x86_64 64-bit Linux
//! boot protocol, legacy devices and (through `devices`) virtio-mmio devices.
//!
//! ```no_run
//! let cfg = vmm::config::VmConfig::new("/var/lib/ember/guest/vmlinux");
//! let vm = vmm::Vmm::new(cfg)?;
//! let handle = vm.handle();
//! let exit = vm.run()?; // blocks until the guest resets or powers off, or handle.stop()
//! # Ok::<(), vmm::Error>(())
//! ```

pub mod arch;
pub mod builder;
pub mod caps;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod persist;
pub mod seccomp;
pub mod timings;
pub mod vstate;

use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use vm_memory::GuestMemoryMmap;

pub use config::VmConfig;
pub use persist::{DeviceCounters, RestoreError, SnapshotInfo};
pub use timings::Timings;

use control::VmControl;
use device_manager::event_loop::EventLoop;
use device_manager::legacy::LegacyDevices;
use device_manager::mmio::MmioDeviceManager;
use persist::SnapshotParts;
use timings::{Phase, TimingsRecorder};
use vstate::kvm::KvmContext;
use vstate::vcpu::Vcpu;
use vstate::vm::Vm;

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset (i8042 reset line or KVM reset event), e.g. `reboot`.
    Reset,
    /// The guest powered off.
    Shutdown,
    /// A vCPU executed `hlt` with no in-kernel irqchip (test payloads).
    Halted,
    /// [`VmHandle::stop`] was called.
    Stopped,
}

/// Errors of the VMM.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Kvm(vstate::kvm::Error),
    #[error("Failed to create the VM")]
    Vm(#[source] vstate::vm::Error),
    #[error("Failed to create guest memory")]
    Memory(#[source] vstate::memory::Error),
    #[error("vCPU failure")]
    Vcpu(#[source] vstate::vcpu::Error),
    #[error("Cannot confine a vCPU thread")]
    Seccomp(#[source] seccomp::Error),
    #[error("Cannot drop a vCPU thread's capabilities")]
    Capabilities(#[source] std::io::Error),
    #[error("Guest memory too small: {0} MiB (at least {min} MiB)", min = config::MIN_MEM_MIB)]
    MemoryTooSmall(u32),
    #[error("Invalid vCPU count {0} (1 to {max})", max = arch::x86_64::mptable::MAX_SUPPORTED_CPUS)]
    VcpuCount(u8),
    #[error("Cannot open kernel {}", .0.display())]
    KernelFile(PathBuf, #[source] std::io::Error),
    #[error("Bad kernel {}", .0.display())]
    Kernel(PathBuf, #[source] arch::x86_64::Error),
    #[error("Cannot read initrd {}", .0.display())]
    InitrdFile(PathBuf, #[source] std::io::Error),
    #[error("Cannot load initrd {}", .0.display())]
    Initrd(PathBuf, #[source] arch::x86_64::Error),
    #[error("Cannot open console file {}", .0.display())]
    ConsoleFile(PathBuf, #[source] std::io::Error),
    #[error("Boot setup failed")]
    Boot(#[source] arch::x86_64::Error),
    #[error("Failed to write the MP table")]
    MpTable(#[source] arch::x86_64::mptable::Error),
    #[error("Failed to set up legacy devices")]
    Legacy(#[source] device_manager::legacy::Error),
    #[error("Failed to set up a device bus")]
    Bus(#[source] device_manager::Error),
    #[error("Failed to write the payload to guest memory")]
    Payload(#[source] vm_memory::GuestMemoryError),
    #[error("Cannot open disk {}", .0.display())]
    BlockFile(PathBuf, #[source] std::io::Error),
    #[error("Failed to set up disk {}", .0.display())]
    Block(PathBuf, #[source] devices::virtio::block::Error),
    #[error("Failed to set up network interface on tap {0}")]
    Net(String, #[source] devices::virtio::net::Error),
    #[error("Failed to set up the rate limiter of {0}")]
    RateLimiter(String, #[source] std::io::Error),
    #[error("Failed to set up vsock")]
    Vsock(#[source] devices::virtio::vsock::Error),
    #[error("Failed to set up virtio-rng")]
    Rng(#[source] devices::virtio::Error),
    #[error("Failed to attach a virtio device")]
    Virtio(#[source] device_manager::mmio::Error),
    #[error("Failed to start the device event loop")]
    EventLoop(#[source] device_manager::event_loop::Error),
    #[error("Failed to install the vCPU kick signal handler")]
    SignalHandler(#[source] std::io::Error),
    #[error("Failed to start a vCPU thread")]
    SpawnVcpu(#[source] std::io::Error),
    #[error("The VM is not running")]
    NotRunning,
    #[error("The VM is not paused")]
    NotPaused,
    #[error(transparent)]
    Snapshot(persist::Error),
    #[error("Cannot restore the snapshot in {}", .0.display())]
    Restore(PathBuf, #[source] RestoreError),
    #[error("Failed to set up an empty disk slot")]
    DiskSlot(#[source] devices::virtio::block::Error),
    #[error("No disk slot {0} (the VM has {1})")]
    NoDiskSlot(usize, usize),
    #[error("Disk slot {0}")]
    Slot(usize, #[source] devices::virtio::block::Error),
    #[error("Failed to set up virtio-fs")]
    Fs(#[source] devices::virtio::fs::FsError),
    #[error("The VM has no virtio-fs device")]
    NoFs,
    #[error("virtio-fs share {0}")]
    Share(String, #[source] devices::virtio::fs::FsError),
}

fn lock_slot(
    slot: &Mutex<devices::virtio::block::Block>,
) -> std::sync::MutexGuard<'_, devices::virtio::block::Block> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// Can this machine's `/dev/kvm` run an ordinary guest? The error is one line: no
/// `/dev/kvm`, or a PVM-style `/dev/kvm` that cannot run a normal guest's user space.
pub fn check_kvm_usable() -> Result<(), Error> {
    vstate::kvm::check_kvm_usable().map_err(Error::Kvm)
}

/// A built VM, ready to run.
pub struct Vmm {
    _kvm: KvmContext,
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    control: Arc<VmControl>,
    timings: Arc<TimingsRecorder>,
    legacy: LegacyDevices,
    _virtio: Option<MmioDeviceManager>,
    event_loop: Option<EventLoop>,
    hot: Arc<HotDevices>,
    snap: Option<Arc<SnapshotParts>>,
    seccomp: Option<Arc<seccomp::Filters>>,
    vcpu_user: Option<u32>,
}

/// The VM's empty-at-boot virtio-blk slots ([`VmConfig::disk_slots`]), in guest order.
pub type DiskSlots = Vec<Arc<Mutex<devices::virtio::block::Block>>>;

/// The devices a [`VmHandle`] changes while the VM runs: the disk slots and the virtio-fs
/// device's shares.
#[derive(Default)]
pub(crate) struct HotDevices {
    pub disk_slots: DiskSlots,
    pub fs: Option<Arc<Mutex<devices::virtio::fs::Fs>>>,
}

impl Vmm {
    /// Build a VM from `cfg`; phases are timed from now.
    pub fn new(cfg: VmConfig) -> Result<Vmm, Error> {
        Self::with_start(cfg, Instant::now())
    }

    /// Build a VM from `cfg`; phases are timed from `start`.
    pub fn with_start(cfg: VmConfig, start: Instant) -> Result<Vmm, Error> {
        builder::build_vmm(&cfg, start)
    }

    pub(crate) fn from_parts(
        kvm: KvmContext,
        vm: Vm,
        mem: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        control: Arc<VmControl>,
        timings: Arc<TimingsRecorder>,
        legacy: LegacyDevices,
    ) -> Self {
        Vmm {
            _kvm: kvm,
            vm: Arc::new(vm),
            mem,
            vcpus,
            control,
            timings,
            legacy,
            _virtio: None,
            event_loop: None,
            hot: Arc::new(HotDevices::default()),
            snap: None,
            seccomp: None,
            vcpu_user: None,
        }
    }

    /// The virtio devices and the event loop; `config` (what the VM was built from) and
    /// `irqchip` go into its snapshots.
    pub(crate) fn set_devices(
        &mut self,
        virtio: MmioDeviceManager,
        event_loop: EventLoop,
        hot: HotDevices,
        config: VmConfig,
        irqchip: bool,
    ) {
        self.seccomp = config.seccomp.clone();
        self.vcpu_user = config.vcpu_user;
        self.snap = Some(Arc::new(SnapshotParts {
            config,
            vm: self.vm.clone(),
            irqchip,
            mem: self.mem.clone(),
            legacy: self.legacy.clone(),
            transports: virtio.transports(),
            gate: event_loop.gate(),
        }));
        self._virtio = Some(virtio);
        self.event_loop = Some(event_loop);
        self.hot = Arc::new(hot);
    }

    /// Interactive console: put the terminal on stdin in raw mode and forward what is typed
    /// to the guest's serial port. Returns the guard that restores the terminal, or `None`
    /// when stdin is not a terminal (nothing is forwarded then).
    pub fn forward_stdin(&self) -> Option<device_manager::legacy::RawTerminal> {
        let term = device_manager::legacy::RawTerminal::new()?;
        device_manager::legacy::spawn_stdin_forwarder(self.legacy.serial.clone()).ok()?;
        Some(term)
    }

    /// [`Vmm::forward_stdin`] when the console is this process's stdout.
    pub fn forward_stdin_if_console(&self) -> Option<device_manager::legacy::RawTerminal> {
        let stdout = self
            .snap
            .as_ref()
            .is_none_or(|s| s.config.console == config::ConsoleConfig::Stdout);
        if stdout {
            self.forward_stdin()
        } else {
            None
        }
    }

    /// A handle to pause, resume or stop the VM and read its timings from other threads.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            control: self.control.clone(),
            timings: self.timings.clone(),
            hot: self.hot.clone(),
            snap: self.snap.clone(),
        }
    }

    /// Run the VM on one thread per vCPU; blocks until the guest resets or powers off, a
    /// vCPU fails, or [`VmHandle::stop`] is called.
    pub fn run(mut self) -> Result<VmExit, Error> {
        control::install_kick_handler()?;
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let mut spawn_err = None;
        for vcpu in std::mem::take(&mut self.vcpus) {
            let name = format!("vcpu{}", vcpu.index());
            let filters = self.seccomp.clone();
            let user = self.vcpu_user;
            let control = self.control.clone();
            match std::thread::Builder::new().name(name).spawn(move || {
                // Confined before its first KVM_RUN (its own user, no capabilities, then its
                // seccomp filter); a vCPU that cannot be ends the VM.
                if let Some(filters) = filters {
                    if let Err(e) = caps::confine_vcpu_thread(user) {
                        control.finish(Err(Error::Capabilities(e)));
                        return;
                    }
                    if let Err(e) = filters.install(seccomp::ThreadKind::Vcpu) {
                        control.finish(Err(Error::Seccomp(e)));
                        return;
                    }
                }
                vcpu.run()
            }) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_err = Some(e);
                    break;
                }
            }
        }
        self.control
            .set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        if let Some(e) = spawn_err {
            self.control.finish(Err(Error::SpawnVcpu(e)));
        }
        let outcome = self.control.wait_outcome();
        // Make sure every vCPU leaves KVM_RUN, then forget them before joining.
        self.control.finish(Ok(VmExit::Stopped));
        self.control.clear_threads();
        for t in threads {
            // A vCPU thread that panicked has already reported nothing; the outcome stands.
            let _ = t.join();
        }
        if let Some(mut el) = self.event_loop.take() {
            el.stop();
        }
        self.timings.mark(Phase::Exited);
        outcome
    }
}

/// Where a vCPU was when sampled, and its nonzero KVM statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    pub cpu: u8,
    pub rip: u64,
    pub stats: Vec<(String, u64)>,
}

/// Controls a VM from other threads.
#[derive(Clone)]
pub struct VmHandle {
    control: Arc<VmControl>,
    timings: Arc<TimingsRecorder>,
    hot: Arc<HotDevices>,
    snap: Option<Arc<SnapshotParts>>,
}

impl VmHandle {
    /// Park every vCPU outside KVM_RUN; returns once all are parked.
    pub fn pause(&self) -> Result<(), Error> {
        self.control.pause()
    }

    /// Let the vCPUs run again.
    pub fn resume(&self) -> Result<(), Error> {
        self.control.resume()
    }

    /// Save the VM into the new directory `dir` ([`persist`]): the vCPUs and the device
    /// event loop are held while it is written, then the VM runs on (or stays paused, if it
    /// was). A device that cannot be saved in its state (virtio-fs mounted in the guest)
    /// fails the snapshot and leaves nothing behind.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, Error> {
        let parts = self.snap.as_ref().ok_or(Error::NotRunning)?;
        persist::snapshot(parts, &self.control, dir)
    }

    /// What each virtio device counted (frames dropped, requests that waited for a rate
    /// limiter); empty before the devices are attached.
    pub fn device_counters(&self) -> Vec<DeviceCounters> {
        self.snap
            .as_ref()
            .map(|parts| persist::device_counters(parts))
            .unwrap_or_default()
    }

    /// Stop the VM: [`Vmm::run`] returns [`VmExit::Stopped`] (unless it already ended).
    pub fn stop(&self) {
        self.control.finish(Ok(VmExit::Stopped));
    }

    /// Where each vCPU is: pauses the VM, collects every vCPU's RIP, resumes it. For
    /// diagnosing a stalled guest (look the addresses up in System.map).
    pub fn vcpu_rips(&self) -> Result<Vec<(u8, u64)>, Error> {
        self.control.pause()?;
        let rips = self.control.rips();
        self.control.resume()?;
        Ok(rips)
    }

    /// Like [`VmHandle::vcpu_rips`], with each vCPU's nonzero KVM statistics (exit counters;
    /// empty where the kernel has no binary stats).
    pub fn vcpu_states(&self) -> Result<Vec<VcpuState>, Error> {
        self.control.pause()?;
        let rips = self.control.rips();
        let stats = self.control.stats();
        self.control.resume()?;
        Ok(rips
            .into_iter()
            .map(|(cpu, rip)| {
                let s = stats
                    .iter()
                    .find(|(i, _)| *i == cpu)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                VcpuState { cpu, rip, stats: s }
            })
            .collect())
    }

    /// How many disk slots the VM has.
    pub fn disk_slots(&self) -> usize {
        self.hot.disk_slots.len()
    }

    /// Insert the raw image at `path` into empty disk slot `slot`: the guest sees its
    /// `/dev/vdX` grow from 0 to the image's size (config interrupt).
    pub fn insert_disk(&self, slot: usize, path: &Path, read_only: bool) -> Result<(), Error> {
        let dev = self.slot(slot)?;
        let disk = devices::virtio::block::RawFile::open(path, read_only)
            .map_err(|e| Error::Block(path.to_path_buf(), e))?;
        lock_slot(dev)
            .insert(Box::new(disk), read_only)
            .map_err(|e| Error::Slot(slot, e))
    }

    /// Take the disk out of slot `slot` (flushed first); the slot reads as empty again.
    pub fn eject_disk(&self, slot: usize) -> Result<(), Error> {
        lock_slot(self.slot(slot)?)
            .eject()
            .map_err(|e| Error::Slot(slot, e))
    }

    fn slot(&self, slot: usize) -> Result<&Mutex<devices::virtio::block::Block>, Error> {
        self.hot
            .disk_slots
            .get(slot)
            .map(|d| d.as_ref())
            .ok_or(Error::NoDiskSlot(slot, self.hot.disk_slots.len()))
    }

    /// Export host `path` (a directory or a file) as `/<name>` of the virtio-fs device's root:
    /// the guest sees it at once, live (no copy).
    pub fn add_share(&self, name: &str, path: &Path, read_only: bool) -> Result<(), Error> {
        self.fs()?
            .add_share(name, path, read_only)
            .map_err(|e| Error::Share(name.to_string(), e))
    }

    /// Withdraw share `name`: gone from the guest's view, its open files closed.
    pub fn remove_share(&self, name: &str) -> Result<(), Error> {
        self.fs()?
            .remove_share(name)
            .map_err(|e| Error::Share(name.to_string(), e))
    }

    fn fs(&self) -> Result<std::sync::MutexGuard<'_, devices::virtio::fs::Fs>, Error> {
        let fs = self.hot.fs.as_ref().ok_or(Error::NoFs)?;
        Ok(fs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Record that the guest's agent answered (for a restored VM, whose agent was ready
    /// before the snapshot and does not report on the boot timer again).
    pub fn agent_answered(&self) {
        self.timings.mark(Phase::AgentReady);
    }

    /// Boot phases so far.
    pub fn timings(&self) -> Timings {
        self.timings.get()
    }

    /// Wait until the agent reported ready on the boot timer (`true`), or the VM ended or
    /// `timeout` passed (`false`).
    pub fn wait_ready(&self, timeout: Option<Duration>) -> bool {
        self.timings.wait_for(Phase::AgentReady, timeout)
    }

    /// Wait until the VM has ended (`true`) or `timeout` passed (`false`).
    pub fn wait_exited(&self, timeout: Option<Duration>) -> bool {
        self.timings.wait_for(Phase::Exited, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>() {}
    fn sync<T: Sync>() {}

    #[test]
    fn vmm_moves_between_threads_and_handles_are_shared() {
        send::<Vmm>();
        send::<VmHandle>();
        sync::<VmHandle>();
        send::<Error>();
    }
}
