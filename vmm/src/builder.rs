//! Building a VM from a [`VmConfig`]: check the inputs, create the KVM VM and guest memory,
//! load kernel, initrd and command line, write the zero page and MP table, create the
//! devices and vCPUs.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::{self as arch, layout, mptable, regs::Privilege};
use crate::config::{ConsoleConfig, VmConfig, DEFAULT_CMDLINE, MIN_MEM_MIB};
use crate::control::VmControl;
use crate::device_manager::event_loop::EventLoop;
use crate::device_manager::mmio::MmioDeviceManager;
use crate::device_manager::{legacy, Bus, BusDevice};
use crate::persist::{self, RestoreError};
use crate::timings::{Phase, TimingsRecorder};
use crate::vstate::kvm::KvmContext;
use crate::vstate::memory::{create_guest_memory, map_memory_file};
use crate::vstate::vcpu::{SaveSpec, Vcpu};
use crate::vstate::vm::{IrqChip, Vm};
use crate::HotDevices;
use crate::{Error, Vmm};
use devices::virtio::block::Block;
use devices::virtio::fs::Fs;
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;

fn open_console(
    console: &ConsoleConfig,
    limit: Option<u64>,
) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match console {
        ConsoleConfig::Stdout => Box::new(std::io::stdout()),
        ConsoleConfig::Sink => Box::new(std::io::sink()),
        ConsoleConfig::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::ConsoleFile(path.clone(), e))?;
            match limit {
                Some(limit) => Box::new(
                    crate::device_manager::legacy::CappedFile::new(file, limit)
                        .map_err(|e| Error::ConsoleFile(path.clone(), e))?,
                ),
                None => Box::new(file),
            }
        }
    })
}

/// Check a configuration without touching KVM: memory and vCPU counts, the kernel image
/// (readable, complete, a kernel, fits in memory) and the initrd (readable).
pub fn validate_config(cfg: &VmConfig) -> Result<(), Error> {
    if cfg.mem_mib < MIN_MEM_MIB {
        return Err(Error::MemoryTooSmall(cfg.mem_mib));
    }
    if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_SUPPORTED_CPUS {
        return Err(Error::VcpuCount(cfg.vcpus));
    }
    let mut kernel =
        File::open(&cfg.kernel).map_err(|e| Error::KernelFile(cfg.kernel.clone(), e))?;
    let low_end = arch::low_mem_end_for(u64::from(cfg.mem_mib) << 20);
    let (_, kernel_end) = arch::check_kernel(&mut kernel, low_end)
        .map_err(|e| Error::Kernel(cfg.kernel.clone(), e))?;
    if let Some(initrd) = &cfg.initrd {
        let meta = std::fs::metadata(initrd).map_err(|e| Error::InitrdFile(initrd.clone(), e))?;
        if !meta.is_file() {
            return Err(Error::InitrdFile(
                initrd.clone(),
                std::io::Error::other("not a regular file"),
            ));
        }
        File::open(initrd).map_err(|e| Error::InitrdFile(initrd.clone(), e))?;
        arch::initrd_load_addr(
            low_end,
            layout::DEFAULT_INITRD_ADDR_MAX,
            kernel_end,
            meta.len(),
        )
        .map_err(Error::Boot)?;
    }
    for b in &cfg.block {
        std::fs::OpenOptions::new()
            .read(true)
            .write(!b.read_only)
            .open(&b.path)
            .map_err(|e| Error::BlockFile(b.path.clone(), e))?;
    }
    Ok(())
}

/// The full command line for `cfg`.
pub fn cmdline_for(cfg: &VmConfig, devices: &[String]) -> String {
    let mut parts: Vec<&str> = vec![cfg.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)];
    parts.extend(devices.iter().map(String::as_str));
    parts.extend(cfg.extra_cmdline.iter().map(String::as_str));
    parts.join(" ")
}

/// Build a VM booting a Linux kernel.
pub fn build_vmm(cfg: &VmConfig, start: Instant) -> Result<Vmm, Error> {
    validate_config(cfg)?;
    let timings = Arc::new(TimingsRecorder::new(start));
    let control = Arc::new(VmControl::new());
    let console = open_console(&cfg.console, cfg.console_limit)?;
    let mut initrd = match &cfg.initrd {
        Some(p) => {
            let f = File::open(p).map_err(|e| Error::InitrdFile(p.clone(), e))?;
            let len = f
                .metadata()
                .map_err(|e| Error::InitrdFile(p.clone(), e))?
                .len();
            Some((p.clone(), f, len))
        }
        None => None,
    };

    let kvm = KvmContext::new().map_err(Error::Kvm)?;
    let vm = Vm::new(&kvm, IrqChip::InKernel).map_err(Error::Vm)?;
    let mem = create_guest_memory(cfg.mem_mib).map_err(Error::Memory)?;
    vm.register_memory(&mem).map_err(Error::Vm)?;
    timings.mark(Phase::MemoryReady);

    let mut kernel_file =
        File::open(&cfg.kernel).map_err(|e| Error::KernelFile(cfg.kernel.clone(), e))?;
    let kernel = if cfg.copy_boot_files {
        arch::load_kernel(&mem, &mut kernel_file)
    } else {
        arch::map_kernel(&mem, &mut kernel_file)
    }
    .map_err(|e| Error::Kernel(cfg.kernel.clone(), e))?;
    let initrd_loc = match &mut initrd {
        Some((path, file, len)) => Some(
            if cfg.copy_boot_files {
                arch::load_initrd(&mem, &kernel, file, *len)
            } else {
                arch::map_initrd(&mem, &kernel, file, *len)
            }
            .map_err(|e| Error::Initrd(path.clone(), e))?,
        ),
        None => None,
    };
    timings.mark(Phase::KernelLoaded);

    let (pio, mut mmio, legacy) = buses_with_legacy(Some(&vm), console, &control, &timings)?;

    let mut virtio = MmioDeviceManager::new();
    let hot = attach_virtio_devices(cfg, &vm, &mem, &mut mmio, &mut virtio)?;
    let device_params = virtio.cmdline_params();
    let event_loop =
        EventLoop::start(virtio.subscribers(), cfg.seccomp.clone()).map_err(Error::EventLoop)?;
    let cmdline =
        arch::build_cmdline(&cmdline_for(cfg, &device_params), &[]).map_err(Error::Boot)?;
    let cmdline_len = arch::load_cmdline(&mem, &cmdline).map_err(Error::Boot)?;
    mptable::setup_mptable(&mem, cfg.vcpus).map_err(Error::MpTable)?;
    let params = arch::boot_params_for(&mem, &kernel, cmdline_len, initrd_loc);
    arch::write_boot_params(&mem, &params).map_err(Error::Boot)?;

    let start = VcpuStart {
        count: cfg.vcpus,
        entry: kernel.entry.0,
        privilege: Privilege::Kernel,
        lapic: true,
    };
    let vcpus = create_vcpus(&kvm, &vm, (pio, mmio), &mem, &control, &timings, start)?;
    timings.mark(Phase::VmCreated);
    let mut vmm = Vmm::from_parts(kvm, vm, mem, vcpus, control, timings, legacy);
    vmm.set_devices(virtio, event_loop, hot, cfg.clone(), true);
    Ok(vmm)
}

/// The port-I/O and MMIO buses with the legacy devices on them; `vm` routes the serial
/// interrupt (`None` without an in-kernel irqchip).
fn buses_with_legacy(
    vm: Option<&Vm>,
    console: Box<dyn Write + Send>,
    control: &Arc<VmControl>,
    timings: &Arc<TimingsRecorder>,
) -> Result<(Bus, Bus, legacy::LegacyDevices), Error> {
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let legacy = legacy::setup_legacy_devices(
        vm,
        &mut pio,
        &mut mmio,
        console,
        control.clone(),
        timings.clone(),
    )
    .map_err(Error::Legacy)?;
    Ok((pio, mmio, legacy))
}

/// Where and how the vCPUs start.
struct VcpuStart {
    count: u8,
    entry: u64,
    privilege: Privilege,
    /// In-kernel irqchip: set the LAPIC LINT pins.
    lapic: bool,
}

/// The VM's vCPUs on the port-I/O and MMIO `buses`, each configured for `start`.
fn create_vcpus(
    kvm: &KvmContext,
    vm: &Vm,
    buses: (Bus, Bus),
    mem: &GuestMemoryMmap,
    control: &Arc<VmControl>,
    timings: &Arc<TimingsRecorder>,
    start: VcpuStart,
) -> Result<Vec<Vcpu>, Error> {
    let (pio, mmio) = (Arc::new(buses.0), Arc::new(buses.1));
    let spec = save_spec(kvm, start.lapic);
    (0..start.count)
        .map(|i| {
            let mut vcpu = Vcpu::new(
                vm,
                i,
                pio.clone(),
                mmio.clone(),
                mem.clone(),
                control.clone(),
                timings.clone(),
            )
            .map_err(Error::Vcpu)?;
            vcpu.configure(kvm, start.count, start.entry, start.privilege, start.lapic)
                .map_err(Error::Vcpu)?;
            vcpu.set_save_spec(spec.clone());
            Ok(vcpu)
        })
        .collect()
}

/// How this host's vCPUs are saved: the MSRs KVM lists, the LAPIC with an in-kernel irqchip,
/// the XCRs where KVM has them.
fn save_spec(kvm: &KvmContext, lapic: bool) -> SaveSpec {
    SaveSpec {
        msrs: kvm.msrs_to_save().into(),
        lapic,
        xcrs: kvm.kvm.check_extension(kvm_ioctls::Cap::Xcrs),
    }
}

/// Restore the snapshot in `dir` as a VM attached to `cfg`'s backends (disks, TAP, vsock
/// socket, shares, console). Memory size, vCPU count and kernel come from the snapshot; the
/// device layout of `cfg` must match it. Everything is checked and built before the first
/// vCPU runs; any failure leaves nothing running. Phases are timed from `start`:
/// `memory_ready` is the memory file mapped, `vm_created` every device and vCPU restored.
pub fn restore_vmm(dir: &Path, cfg: &VmConfig, start: Instant) -> Result<Vmm, Error> {
    restore_vmm_with(dir, cfg, start, Vec::new())
}

/// [`restore_vmm`] with extra devices on the port-I/O bus (as a payload VM has them: how
/// the restore path is tested on hosts that run only guest user code).
pub fn restore_vmm_with(
    dir: &Path,
    cfg: &VmConfig,
    start: Instant,
    extra_pio: Vec<ExtraDevice>,
) -> Result<Vmm, Error> {
    let fail = |e: RestoreError| Error::Restore(dir.to_path_buf(), e);
    let state = persist::read_state(&dir.join(persist::STATE_FILE))
        .map_err(|e| fail(RestoreError::State(e)))?;
    persist::check_layout(&state.config, cfg).map_err(|e| fail(RestoreError::State(e)))?;
    let mut eff = cfg.clone();
    eff.kernel = state.config.kernel.clone();
    eff.initrd = state.config.initrd.clone();
    eff.cmdline = state.config.cmdline.clone();
    eff.extra_cmdline = state.config.extra_cmdline.clone();
    eff.mem_mib = state.config.mem_mib;
    eff.vcpus = state.config.vcpus;
    restore_from_state(dir, &state, eff, start, extra_pio).map_err(|e| match e {
        Error::Restore(..) => e,
        other => fail(RestoreError::Build(Box::new(other))),
    })
}

fn restore_from_state(
    dir: &Path,
    state: &persist::VmState,
    cfg: VmConfig,
    start: Instant,
    extra_pio: Vec<ExtraDevice>,
) -> Result<Vmm, Error> {
    let fail = |e: RestoreError| Error::Restore(dir.to_path_buf(), e);
    let timings = Arc::new(TimingsRecorder::new(start));
    timings.set_restored();
    let control = Arc::new(VmControl::new());
    let console = open_console(&cfg.console, cfg.console_limit)?;
    let irqchip = state.vm.is_some();

    let kvm = KvmContext::new().map_err(Error::Kvm)?;
    let mode = if irqchip {
        IrqChip::InKernel
    } else {
        IrqChip::None
    };
    let vm = Vm::new(&kvm, mode).map_err(Error::Vm)?;
    let mem = map_memory_file(&dir.join(persist::MEMORY_FILE), cfg.mem_mib)
        .map_err(|e| fail(RestoreError::Memory(e)))?;
    vm.register_memory(&mem).map_err(Error::Vm)?;
    timings.mark(Phase::MemoryReady);

    let (mut pio, mut mmio, legacy) =
        buses_with_legacy(irqchip.then_some(&vm), console, &control, &timings)?;
    let legacy_err = |e: devices::legacy::LegacyStateError| fail(RestoreError::Legacy(e));
    lock(&legacy.serial)
        .0
        .restore(&state.serial)
        .map_err(legacy_err)?;
    lock(&legacy.i8042)
        .restore(&state.i8042)
        .map_err(legacy_err)?;
    lock(&legacy.cmos)
        .0
        .restore(&state.cmos)
        .map_err(legacy_err)?;
    for (base, len, dev) in extra_pio {
        pio.insert(base, len, dev).map_err(Error::Bus)?;
    }

    let mut virtio = MmioDeviceManager::new();
    let hot = attach_virtio_devices(&cfg, &vm, &mem, &mut mmio, &mut virtio)?;
    let transports = virtio.transports();
    if transports.len() != state.virtio.len() {
        return Err(fail(RestoreError::State(persist::Error::Layout(format!(
            "{} devices saved, {} attached",
            state.virtio.len(),
            transports.len()
        )))));
    }
    for ((slot, t), saved) in transports.iter().zip(&state.virtio) {
        if (slot.base, slot.gsi) != (saved.base, saved.gsi) {
            return Err(fail(RestoreError::State(persist::Error::Layout(format!(
                "device at {:#x} (GSI {}) saved at {:#x} (GSI {})",
                slot.base, slot.gsi, saved.base, saved.gsi
            )))));
        }
        lock(t)
            .0
            .restore(&saved.transport)
            .map_err(|e| fail(RestoreError::Device(slot.base, e)))?;
    }

    if let Some(s) = &state.vm {
        vm.restore_state(s).map_err(|e| fail(RestoreError::Vm(e)))?;
    }
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let spec = save_spec(&kvm, irqchip);
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for saved in &state.vcpus {
        let mut vcpu = Vcpu::new(
            &vm,
            saved.index,
            pio.clone(),
            mmio.clone(),
            mem.clone(),
            control.clone(),
            timings.clone(),
        )
        .map_err(Error::Vcpu)?;
        vcpu.restore_state(saved)
            .map_err(|e| fail(RestoreError::Vcpu(e)))?;
        vcpu.set_save_spec(spec.clone());
        vcpus.push(vcpu);
    }
    // The devices' restored activations are picked up as the loop starts.
    let event_loop =
        EventLoop::start(virtio.subscribers(), cfg.seccomp.clone()).map_err(Error::EventLoop)?;
    timings.mark(Phase::VmCreated);
    let mut vmm = Vmm::from_parts(kvm, vm, mem, vcpus, control, timings, legacy);
    vmm.set_devices(virtio, event_loop, hot, cfg, irqchip);
    Ok(vmm)
}

/// The device rate limiter for `limit`, if it limits anything; `what` names the device in
/// the error.
fn limiter(
    limit: Option<&devices::rate_limiter::RateLimit>,
    what: impl Fn() -> String,
) -> Result<Option<devices::rate_limiter::RateLimiter>, Error> {
    match limit {
        None => Ok(None),
        Some(l) => {
            devices::rate_limiter::RateLimiter::new(l).map_err(|e| Error::RateLimiter(what(), e))
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Create the virtio devices `cfg` asks for and attach them; returns the devices that change
/// while the VM runs (empty disk slots, virtio-fs).
fn attach_virtio_devices(
    cfg: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    virtio: &mut MmioDeviceManager,
) -> Result<HotDevices, Error> {
    for b in &cfg.block {
        let mut dev =
            Block::open(&b.path, b.read_only).map_err(|e| Error::Block(b.path.clone(), e))?;
        if let Some(l) = limiter(b.rate_limit.as_ref(), || b.path.display().to_string())? {
            dev.set_rate_limiter(l);
        }
        virtio.attach(vm, mem, mmio, dev).map_err(Error::Virtio)?;
    }
    let mut slots = Vec::with_capacity(usize::from(cfg.disk_slots));
    for _ in 0..cfg.disk_slots {
        let dev = Arc::new(Mutex::new(Block::empty().map_err(Error::DiskSlot)?));
        virtio
            .attach_shared(vm, mem, mmio, dev.clone())
            .map_err(Error::Virtio)?;
        slots.push(dev);
    }
    for n in &cfg.net {
        // No TAP: a placeholder whose frames are dropped (a template's, see `NetConfig::tap`).
        let mut dev = if n.tap.is_empty() {
            Net::detached(n.mac)
        } else {
            Net::tap(&n.tap, n.mac)
        }
        .map_err(|e| Error::Net(n.tap.clone(), e))?;
        let name = |dir: &str| format!("{dir} of {}", n.tap);
        dev.set_rate_limiters(
            limiter(n.rx_rate_limit.as_ref(), || name("rx"))?,
            limiter(n.tx_rate_limit.as_ref(), || name("tx"))?,
        );
        virtio.attach(vm, mem, mmio, dev).map_err(Error::Virtio)?;
    }
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::unix(v.guest_cid, &v.uds_path).map_err(Error::Vsock)?;
        virtio.attach(vm, mem, mmio, dev).map_err(Error::Virtio)?;
    }
    if cfg.rng {
        let dev = Rng::new().map_err(Error::Rng)?;
        virtio.attach(vm, mem, mmio, dev).map_err(Error::Virtio)?;
    }
    let fs = match &cfg.fs {
        Some(f) => {
            let mut dev = Fs::new(&f.tag).map_err(Error::Fs)?;
            for s in &f.shares {
                dev.add_share(&s.name, &s.path, s.read_only)
                    .map_err(|e| Error::Share(s.name.clone(), e))?;
            }
            let dev = Arc::new(Mutex::new(dev));
            virtio
                .attach_shared(vm, mem, mmio, dev.clone())
                .map_err(Error::Virtio)?;
            Some(dev)
        }
        None => None,
    };
    Ok(HotDevices {
        disk_slots: slots,
        fs,
    })
}

/// A CPL3 virtio-rng driver for a payload VM (load it at 1 MiB; the rng device in virtio-mmio
/// slot 0, port 0x500 for results): it negotiates VERSION_1, sets up a 4-entry split queue
/// whose one descriptor is a 16-byte buffer with flags `desc_flags` (2, VIRTQ_DESC_F_WRITE,
/// is a well-formed request; 0 makes it device-readable, which the device refuses), makes
/// it available, notifies, waits for the used ring, writes used.idx, the used length, the
/// interrupt status and the buffer's four words to port 0x500, and resets the machine.
pub fn virtio_rng_driver(desc_flags: u16) -> Vec<u8> {
    const LOAD: usize = 0x10_0000;
    const DESC: u32 = 0x10_2000;
    const AVAIL: u32 = 0x10_3000;
    const USED: u32 = 0x10_3800;
    const BUF: u32 = 0x10_4000;
    fn mmio_write(code: &mut Vec<u8>, reg: u32, value: u32) {
        code.extend_from_slice(&[0xc7, 0x81]); // mov dword [ecx + reg], value
        code.extend_from_slice(&reg.to_le_bytes());
        code.extend_from_slice(&value.to_le_bytes());
    }
    let mut blob = vec![0u8; 0x5000];
    let desc = DESC as usize - LOAD;
    blob[desc..desc + 8].copy_from_slice(&u64::from(BUF).to_le_bytes());
    blob[desc + 8..desc + 12].copy_from_slice(&16u32.to_le_bytes());
    blob[desc + 12..desc + 14].copy_from_slice(&desc_flags.to_le_bytes());
    let avail = AVAIL as usize - LOAD;
    blob[avail + 2..avail + 4].copy_from_slice(&1u16.to_le_bytes()); // idx = 1, ring[0] = 0

    let mut code = vec![0xb9, 0x00, 0x10, 0x00, 0xd0]; // mov ecx, 0xd0001000
    for (reg, value) in [
        (0x70, 1),   // status: ACKNOWLEDGE
        (0x70, 3),   // + DRIVER
        (0x24, 1),   // DriverFeaturesSel = 1
        (0x20, 1),   // VIRTIO_F_VERSION_1 (bit 32)
        (0x70, 0xb), // + FEATURES_OK
        (0x30, 0),   // QueueSel = 0
        (0x38, 4),   // QueueNum = 4
        (0x80, DESC),
        (0x84, 0),
        (0x90, AVAIL),
        (0x94, 0),
        (0xa0, USED),
        (0xa4, 0),
        (0x44, 1),   // QueueReady
        (0x70, 0xf), // + DRIVER_OK
        (0x50, 0),   // QueueNotify(0): the ioeventfd wakes the event loop
    ] {
        mmio_write(&mut code, reg, value);
    }
    code.push(0xbb); // mov ebx, USED
    code.extend_from_slice(&USED.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0xb7, 0x43, 0x02, 0x85, 0xc0, 0x74, 0xf8]); // wait for used.idx
    code.extend_from_slice(&[0x66, 0xba, 0x00, 0x05]); // mov dx, 0x500
    code.extend_from_slice(&[0xef]); // out: used.idx
    code.extend_from_slice(&[0x8b, 0x43, 0x08, 0xef]); // out: used.ring[0].len
    code.extend_from_slice(&[0x8b, 0x41, 0x60, 0xef]); // out: InterruptStatus
    code.push(0xbb); // mov ebx, BUF
    code.extend_from_slice(&BUF.to_le_bytes());
    for off in [0u8, 4, 8, 12] {
        code.extend_from_slice(&[0x8b, 0x43, off, 0xef]); // out: buffer word
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]); // i8042 reset
    blob[..code.len()].copy_from_slice(&code);
    blob
}

/// A device for a payload VM: where it sits and what it is.
pub type ExtraDevice = (u64, u64, Arc<Mutex<dyn BusDevice>>);

/// A VM that runs raw code instead of a kernel (see [`build_payload_vm`]).
pub struct PayloadSpec {
    pub code: Vec<u8>,
    pub load_addr: u64,
    pub mem_mib: u32,
    pub privilege: Privilege,
    pub console: ConsoleConfig,
    /// Extra devices on the port-I/O and MMIO buses.
    pub extra_pio: Vec<ExtraDevice>,
    pub extra_mmio: Vec<ExtraDevice>,
    /// In-kernel irqchip (needed for virtio devices; `hlt` then no longer exits).
    pub irqchip: bool,
    /// Virtio devices to attach, as in a [`VmConfig`] (`block`, `vsock`, `rng`).
    pub devices: Option<VmConfig>,
    /// vCPUs; without an irqchip all of them start at `load_addr`.
    pub vcpus: u8,
    /// Filters for the vCPU threads and the event loop, as [`VmConfig::seccomp`].
    pub seccomp: Option<Arc<crate::seccomp::Filters>>,
}

impl PayloadSpec {
    /// `code` at 1 MiB, 64 MiB of memory, CPL3, console discarded, no irqchip or devices.
    pub fn new(code: Vec<u8>) -> Self {
        PayloadSpec {
            code,
            load_addr: layout::HIMEM_START,
            mem_mib: 64,
            privilege: Privilege::User,
            console: ConsoleConfig::Sink,
            extra_pio: Vec::new(),
            extra_mmio: Vec::new(),
            irqchip: false,
            devices: None,
            vcpus: 1,
            seccomp: None,
        }
    }
}

/// A VM that runs `spec.code` at `spec.load_addr` on one vCPU at `spec.privilege`, with the
/// legacy devices and the extra ones on its buses. The boot page tables identity-map the
/// first 4 GiB. This is how exit handling is tested on hosts that run only guest user code
/// natively (PVM).
pub fn build_payload_vm(spec: PayloadSpec) -> Result<Vmm, Error> {
    let timings = Arc::new(TimingsRecorder::new(Instant::now()));
    let control = Arc::new(VmControl::new());
    let console = open_console(&spec.console, None)?;
    let kvm = KvmContext::new().map_err(Error::Kvm)?;
    let irqchip = if spec.irqchip {
        IrqChip::InKernel
    } else {
        IrqChip::None
    };
    let vm = Vm::new(&kvm, irqchip).map_err(Error::Vm)?;
    let mem: GuestMemoryMmap = create_guest_memory(spec.mem_mib).map_err(Error::Memory)?;
    vm.register_memory(&mem).map_err(Error::Vm)?;
    mem.write_slice(&spec.code, GuestAddress(spec.load_addr))
        .map_err(Error::Payload)?;

    let (mut pio, mut mmio, legacy) =
        buses_with_legacy(spec.irqchip.then_some(&vm), console, &control, &timings)?;
    for (base, len, dev) in spec.extra_pio {
        pio.insert(base, len, dev).map_err(Error::Bus)?;
    }
    for (base, len, dev) in spec.extra_mmio {
        mmio.insert(base, len, dev).map_err(Error::Bus)?;
    }
    let mut virtio = MmioDeviceManager::new();
    let hot = match &spec.devices {
        Some(cfg) => attach_virtio_devices(cfg, &vm, &mem, &mut mmio, &mut virtio)?,
        None => HotDevices::default(),
    };
    let event_loop =
        EventLoop::start(virtio.subscribers(), spec.seccomp.clone()).map_err(Error::EventLoop)?;
    if spec.vcpus == 0 || spec.vcpus > mptable::MAX_SUPPORTED_CPUS {
        return Err(Error::VcpuCount(spec.vcpus));
    }
    let start = VcpuStart {
        count: spec.vcpus,
        entry: spec.load_addr,
        privilege: spec.privilege,
        lapic: spec.irqchip,
    };
    let vcpus = create_vcpus(&kvm, &vm, (pio, mmio), &mem, &control, &timings, start)?;
    timings.mark(Phase::VmCreated);
    let mut config = spec.devices.clone().unwrap_or_else(|| VmConfig::new(""));
    config.mem_mib = spec.mem_mib;
    config.vcpus = spec.vcpus;
    config.seccomp = spec.seccomp;
    let mut vmm = Vmm::from_parts(kvm, vm, mem, vcpus, control, timings, legacy);
    vmm.set_devices(virtio, event_loop, hot, config, spec.irqchip);
    Ok(vmm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_order() {
        let mut c = VmConfig::new("/k");
        c.extra_cmdline = vec!["init=/bin/sh".into()];
        let s = cmdline_for(&c, &["virtio_mmio.device=4K@0xd0001000:5".into()]);
        assert!(s.starts_with(DEFAULT_CMDLINE));
        assert!(s.ends_with("virtio_mmio.device=4K@0xd0001000:5 init=/bin/sh"));
        c.cmdline = Some("console=ttyS0".into());
        assert_eq!(cmdline_for(&c, &[]), "console=ttyS0 init=/bin/sh");
    }

    #[test]
    fn validation_rejects_bad_input_before_kvm() {
        let mut c = VmConfig::new("/nonexistent/vmlinux");
        assert!(matches!(validate_config(&c), Err(Error::KernelFile(..))));
        c.mem_mib = 16;
        assert!(matches!(
            validate_config(&c),
            Err(Error::MemoryTooSmall(16))
        ));
        c.mem_mib = 64;
        c.vcpus = 0;
        assert!(matches!(validate_config(&c), Err(Error::VcpuCount(0))));
    }
}
