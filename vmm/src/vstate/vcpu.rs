//! vCPUs: configuration for the 64-bit boot protocol and the run loop that dispatches
//! port-I/O and MMIO exits to the buses. Every KVM failure becomes an error that names the
//! vCPU, its RIP and the instruction bytes there.

use std::fmt::Write as _;
use std::sync::Arc;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_INTERNAL_ERROR_EMULATION,
    KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kvm::KvmContext;
use super::vm::Vm;
use crate::arch::x86_64::cpuid::{filter_cpuid, supported_xcr0};
use crate::arch::x86_64::regs::{self, Privilege};
use crate::control::{set_thread_immediate_exit, VmControl};
use crate::device_manager::Bus;
use crate::timings::{Phase, TimingsRecorder};
use crate::VmExit;

/// How many instruction bytes a fault report shows.
const FAULT_BYTES: usize = 16;
const INT3_OPCODE: u8 = 0xcc;
const BP_VECTOR: u8 = 3;

/// Errors of a vCPU.
#[derive(Debug, Error)]
pub enum Error {
    #[error("KVM_CREATE_VCPU failed for vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("Failed to get the supported CPUID")]
    SupportedCpuid(#[source] super::kvm::Error),
    #[error("Failed to build the CPUID table")]
    CpuidTable(#[source] vmm_sys_util::fam::Error),
    #[error("KVM_SET_CPUID2 failed")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("Failed to set up vCPU registers")]
    Regs(#[source] regs::Error),
    #[error("KVM_RUN failed on vCPU {0}")]
    Run(u8, #[source] kvm_ioctls::Error),
    #[error("vCPU {cpu}: KVM internal error (suberror {suberror}{what}) at RIP {rip:#x}, code: {code}, data: {data:x?}")]
    Internal {
        cpu: u8,
        suberror: u32,
        what: &'static str,
        rip: u64,
        code: String,
        data: Vec<u64>,
    },
    #[error("vCPU {cpu}: KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}) at RIP {rip:#x}, code: {code}")]
    FailEntry {
        cpu: u8,
        reason: u64,
        rip: u64,
        code: String,
    },
    #[error("vCPU {cpu}: unrequested shutdown (triple fault) at RIP {rip:#x}, code: {code}")]
    TripleFault { cpu: u8, rip: u64, code: String },
    #[error("vCPU {cpu}: guest crashed (KVM system event crash) at RIP {rip:#x}")]
    Crash { cpu: u8, rip: u64 },
    #[error("vCPU {cpu}: unexpected exit {exit} at RIP {rip:#x}, code: {code}")]
    UnexpectedExit {
        cpu: u8,
        exit: String,
        rip: u64,
        code: String,
    },
    #[error("Failed to inject #BP for int3")]
    InjectBreakpoint(#[source] kvm_ioctls::Error),
    #[error("vCPU {0}: cannot complete its last exit before a snapshot")]
    CompleteExit(u8, #[source] kvm_ioctls::Error),
    #[error("vCPU {0}: KVM_RUN entered the guest while completing its last exit")]
    UnexpectedEntry(u8),
    #[error("vCPU {cpu}: {what} failed")]
    State {
        cpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {cpu}: KVM took {done} of {total} MSRs (MSR {index:#x} refused)")]
    SetMsrs {
        cpu: u8,
        done: usize,
        total: usize,
        index: u32,
    },
    #[error("vCPU {0}: bad saved CPUID or MSR table")]
    Table(u8, #[source] vmm_sys_util::fam::Error),
}

/// Most MSRs per KVM_GET_MSRS / KVM_SET_MSRS call.
const MSR_BATCH: usize = 256;

/// Everything KVM holds for one vCPU, as a snapshot saves it.
#[derive(Serialize, Deserialize)]
pub struct VcpuSnapshot {
    pub index: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// (index, value) of every MSR KVM would save that this vCPU could read.
    pub msrs: Vec<(u32, u64)>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: Option<kvm_xcrs>,
    pub debug_regs: kvm_debugregs,
    /// Only with an in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, where KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuSnapshot")
            .field("index", &self.index)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .field("cpuid", &self.cpuid.len())
            .finish_non_exhaustive()
    }
}

/// What a vCPU needs to know to save itself.
#[derive(Clone, Debug, Default)]
pub struct SaveSpec {
    /// The MSRs to save (KVM_GET_MSR_INDEX_LIST).
    pub msrs: Arc<[u32]>,
    /// The VM has an in-kernel irqchip (save the LAPIC).
    pub lapic: bool,
    /// KVM has KVM_CAP_XCRS.
    pub xcrs: bool,
}

/// Translate a guest virtual address with the guest's own page tables (4-level paging);
/// physical when paging is off.
pub fn translate_gva(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64) -> Option<u64> {
    const CR0_PG: u64 = 0x8000_0000;
    const PRESENT: u64 = 0x1;
    const HUGE: u64 = 0x80;
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    if sregs.cr0 & CR0_PG == 0 {
        return Some(gva);
    }
    let mut table = sregs.cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (gva >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        let addr = entry & ADDR_MASK;
        if level == 0 || (level < 3 && entry & HUGE != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Some((addr & !page_mask) | (gva & page_mask));
        }
        table = addr;
    }
    None
}

/// Up to `len` bytes at guest virtual `gva`, read through the guest page tables.
pub fn read_guest_code(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let Some(gpa) = translate_gva(mem, sregs, gva.wrapping_add(i)) else {
            break;
        };
        let Ok(b) = mem.read_obj::<u8>(GuestAddress(gpa)) else {
            break;
        };
        out.push(b);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "<unreadable>".to_string();
    }
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What one exit means for the run loop.
enum Action {
    Continue,
    Exit(VmExit),
    Fail(Error),
}

/// Exit data copied out of `kvm_run` so `VcpuFd` can be used again.
enum Fault {
    Internal(u32, Vec<u64>),
    FailEntry(u64),
    Shutdown,
    Crash,
    Other(String),
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    control: Arc<VmControl>,
    timings: Arc<TimingsRecorder>,
    /// Inject #BP when the instruction emulator fails on `int3` (PVM hosts).
    int3_as_breakpoint: bool,
    bp_injections: u64,
    /// How to save this vCPU for a snapshot.
    save_spec: SaveSpec,
}

impl Vcpu {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &Vm,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem: GuestMemoryMmap,
        control: Arc<VmControl>,
        timings: Arc<TimingsRecorder>,
    ) -> Result<Self, Error> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| Error::Create(index, e))?;
        Ok(Vcpu {
            index,
            fd,
            pio,
            mmio,
            mem,
            control,
            timings,
            int3_as_breakpoint: true,
            bp_injections: 0,
            save_spec: SaveSpec::default(),
        })
    }

    /// What [`Vcpu::save_state`] saves when the VM is snapshotted.
    pub fn set_save_spec(&mut self, spec: SaveSpec) {
        self.save_spec = spec;
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// CPUID, MSRs, FPU, registers and (with an in-kernel irqchip) LAPIC LINT pins.
    pub fn configure(
        &self,
        kvm: &KvmContext,
        num_cpus: u8,
        entry: u64,
        privilege: Privilege,
        lapic: bool,
    ) -> Result<(), Error> {
        let mut cpuid = kvm.supported_cpuid().map_err(Error::SupportedCpuid)?;
        let mut entries = cpuid.as_slice().to_vec();
        let tsc_deadline = lapic && kvm.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        filter_cpuid(&mut entries, self.index, num_cpus, tsc_deadline);
        cpuid = kvm_bindings::CpuId::from_entries(&entries).map_err(Error::CpuidTable)?;
        self.fd.set_cpuid2(&cpuid).map_err(Error::SetCpuid)?;
        if let Some(xcr0) = supported_xcr0(&entries) {
            if kvm.kvm.check_extension(kvm_ioctls::Cap::Xcrs) {
                regs::setup_xcr0(&self.fd, xcr0).map_err(Error::Regs)?;
            }
        }
        regs::setup_msrs(&self.fd).map_err(Error::Regs)?;
        regs::setup_regs(&self.fd, entry, privilege).map_err(Error::Regs)?;
        regs::setup_fpu(&self.fd).map_err(Error::Regs)?;
        regs::setup_sregs(&self.mem, &self.fd, privilege).map_err(Error::Regs)?;
        if lapic {
            regs::set_lint(&self.fd).map_err(Error::Regs)?;
        }
        Ok(())
    }

    /// RIP and the instruction bytes there, for fault reports.
    fn where_is_rip(&self) -> (u64, Vec<u8>) {
        let Ok(regs) = self.fd.get_regs() else {
            return (0, Vec::new());
        };
        let code = match self.fd.get_sregs() {
            Ok(sregs) => read_guest_code(&self.mem, &sregs, regs.rip, FAULT_BYTES),
            Err(_) => Vec::new(),
        };
        (regs.rip, code)
    }

    /// The instruction emulator of a PVM host cannot run `int3`: deliver the #BP it means.
    fn inject_breakpoint(&mut self) -> Result<(), Error> {
        let mut r = self.fd.get_regs().map_err(Error::InjectBreakpoint)?;
        r.rip += 1;
        self.fd.set_regs(&r).map_err(Error::InjectBreakpoint)?;
        let mut ev = self.fd.get_vcpu_events().map_err(Error::InjectBreakpoint)?;
        ev.exception.injected = 1;
        ev.exception.nr = BP_VECTOR;
        ev.exception.has_error_code = 0;
        ev.exception.error_code = 0;
        self.fd
            .set_vcpu_events(&ev)
            .map_err(Error::InjectBreakpoint)?;
        self.bp_injections += 1;
        Ok(())
    }

    fn handle_fault(&mut self, fault: Fault) -> Action {
        let (rip, code) = self.where_is_rip();
        let cpu = self.index;
        match fault {
            Fault::Internal(suberror, data) => {
                if suberror == KVM_INTERNAL_ERROR_EMULATION
                    && self.int3_as_breakpoint
                    && code.first() == Some(&INT3_OPCODE)
                {
                    return match self.inject_breakpoint() {
                        Ok(()) => Action::Continue,
                        Err(e) => Action::Fail(e),
                    };
                }
                let what = match suberror {
                    1 => ": emulation failure",
                    2 => ": simultaneous exceptions",
                    3 => ": delivery event",
                    4 => ": unexpected exit reason",
                    _ => "",
                };
                Action::Fail(Error::Internal {
                    cpu,
                    suberror,
                    what,
                    rip,
                    code: hex(&code),
                    data,
                })
            }
            Fault::FailEntry(reason) => Action::Fail(Error::FailEntry {
                cpu,
                reason,
                rip,
                code: hex(&code),
            }),
            Fault::Shutdown => Action::Fail(Error::TripleFault {
                cpu,
                rip,
                code: hex(&code),
            }),
            Fault::Crash => Action::Fail(Error::Crash { cpu, rip }),
            Fault::Other(exit) => Action::Fail(Error::UnexpectedExit {
                cpu,
                exit,
                rip,
                code: hex(&code),
            }),
        }
    }

    /// One KVM_RUN and its exit.
    fn run_once(&mut self) -> Action {
        let fault = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                return Action::Continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                return Action::Continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
                return Action::Continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                return Action::Continue;
            }
            Ok(VcpuExit::Hlt) => return Action::Exit(VmExit::Halted),
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => return Action::Continue,
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => return Action::Exit(VmExit::Shutdown),
                KVM_SYSTEM_EVENT_RESET => return Action::Exit(VmExit::Reset),
                KVM_SYSTEM_EVENT_CRASH => Fault::Crash,
                other => Fault::Other(format!("system event {other}")),
            },
            Ok(VcpuExit::Shutdown) => Fault::Shutdown,
            Ok(VcpuExit::FailEntry(reason, _)) => Fault::FailEntry(reason),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active member of the kvm_run union.
                let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                Fault::Internal(internal.suberror, internal.data[..n].to_vec())
            }
            Ok(other) => Fault::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Action::Continue;
            }
            Err(e) => return Action::Fail(Error::Run(self.index, e)),
        };
        self.handle_fault(fault)
    }

    /// Run until the VM ends; returns how, or `None` when stopped from outside.
    pub fn run_loop(&mut self) -> Option<Result<VmExit, Error>> {
        let mut first = true;
        // Beside `self`, which the save closure below borrows mutably.
        let control = self.control.clone();
        loop {
            if self.control.run_state() == crate::control::RunState::Paused {
                if let Ok(r) = self.fd.get_regs() {
                    self.control.report_rip(self.index, r.rip);
                }
                if let Ok(stats) = super::stats::vcpu_stats(&self.fd) {
                    let nonzero = stats.into_iter().filter(|(_, v)| *v != 0).collect();
                    self.control.report_stats(self.index, nonzero);
                }
            }
            let mut save = || {
                let spec = self.save_spec.clone();
                self.save_state(&spec)
            };
            if !control.vcpu_should_continue_with(Some(&mut save)) {
                return None;
            }
            if first {
                first = false;
                if self.index == 0 {
                    self.timings.mark(Phase::FirstKvmRun);
                }
            }
            match self.run_once() {
                Action::Continue => {}
                Action::Exit(e) => return Some(Ok(e)),
                Action::Fail(e) => return Some(Err(e)),
            }
        }
    }

    /// Thread body: run, then report the outcome to the VM's control.
    pub fn run(mut self) {
        let ptr = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
        set_thread_immediate_exit(ptr);
        let outcome = self.run_loop();
        set_thread_immediate_exit(std::ptr::null_mut());
        if let Some(outcome) = outcome {
            self.control.finish(outcome.map_err(crate::Error::Vcpu));
        }
    }

    fn state_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        let cpu = self.index;
        move |source| Error::State { cpu, what, source }
    }

    /// Save this vCPU (parked, outside KVM_RUN). A KVM_RUN with `immediate_exit` set first
    /// completes the exit it last took (a port or MMIO read's data, a string I/O's RIP), so
    /// the saved RIP is past that instruction and a restored guest does not repeat it.
    pub fn save_state(&mut self, spec: &SaveSpec) -> Result<VcpuSnapshot, Error> {
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(Error::CompleteExit(self.index, e)),
            Ok(_) => Err(Error::UnexpectedEntry(self.index)),
        };
        self.fd.set_kvm_immediate_exit(0);
        completed?;
        let fd = &self.fd;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(self.state_err("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = self.read_msrs(&spec.msrs)?;
        Ok(VcpuSnapshot {
            index: self.index,
            cpuid,
            msrs,
            regs: fd.get_regs().map_err(self.state_err("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(self.state_err("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(self.state_err("KVM_GET_XSAVE"))?,
            xcrs: match spec.xcrs {
                true => Some(fd.get_xcrs().map_err(self.state_err("KVM_GET_XCRS"))?),
                false => None,
            },
            debug_regs: fd
                .get_debug_regs()
                .map_err(self.state_err("KVM_GET_DEBUGREGS"))?,
            lapic: match spec.lapic {
                true => Some(fd.get_lapic().map_err(self.state_err("KVM_GET_LAPIC"))?),
                false => None,
            },
            mp_state: fd
                .get_mp_state()
                .map_err(self.state_err("KVM_GET_MP_STATE"))?,
            events: fd
                .get_vcpu_events()
                .map_err(self.state_err("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Every MSR of `list` this vCPU can read: KVM_GET_MSRS stops at the first one it
    /// refuses (an MSR of a feature this vCPU's CPUID lacks); that one is left out.
    fn read_msrs(&self, list: &[u32]) -> Result<Vec<(u32, u64)>, Error> {
        let mut out = Vec::with_capacity(list.len());
        let mut pos = 0;
        while pos < list.len() {
            let chunk = &list[pos..(pos + MSR_BATCH).min(list.len())];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|e| Error::Table(self.index, e))?;
            let n = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(self.state_err("KVM_GET_MSRS"))?;
            out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
            pos += n;
            if n < chunk.len() {
                // list[pos] was refused: leave it out.
                pos += 1;
            }
        }
        Ok(out)
    }

    /// Bring this freshly created vCPU to `s` (in the order KVM needs: CPUID before the
    /// registers and MSRs that depend on it, the LAPIC before the events that may target it,
    /// MSR_IA32_TSC before the TSC deadline, as KVM lists them).
    pub fn restore_state(&self, s: &VcpuSnapshot) -> Result<(), Error> {
        let fd = &self.fd;
        let cpuid =
            kvm_bindings::CpuId::from_entries(&s.cpuid).map_err(|e| Error::Table(self.index, e))?;
        fd.set_cpuid2(&cpuid).map_err(Error::SetCpuid)?;
        if let Some(khz) = s.tsc_khz {
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz)
                    .map_err(self.state_err("KVM_SET_TSC_KHZ"))?;
            }
        }
        fd.set_mp_state(s.mp_state)
            .map_err(self.state_err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&s.regs)
            .map_err(self.state_err("KVM_SET_REGS"))?;
        fd.set_sregs(&s.sregs)
            .map_err(self.state_err("KVM_SET_SREGS"))?;
        // SAFETY: `s.xsave` is a whole kvm_xsave (4 KiB) as KVM_GET_XSAVE returned it; the
        // kernel reads no more than that struct.
        unsafe { fd.set_xsave(&s.xsave) }.map_err(self.state_err("KVM_SET_XSAVE"))?;
        if let Some(xcrs) = &s.xcrs {
            fd.set_xcrs(xcrs).map_err(self.state_err("KVM_SET_XCRS"))?;
        }
        fd.set_debug_regs(&s.debug_regs)
            .map_err(self.state_err("KVM_SET_DEBUGREGS"))?;
        if let Some(lapic) = &s.lapic {
            fd.set_lapic(lapic)
                .map_err(self.state_err("KVM_SET_LAPIC"))?;
        }
        // Only the MSRs whose saved value differs from this fresh vCPU's: the others are
        // right already, and some (KVM's async-PF interrupt MSR without an in-kernel LAPIC)
        // refuse even a write of the value they hold.
        let indices: Vec<u32> = s.msrs.iter().map(|(i, _)| *i).collect();
        let present: std::collections::HashMap<u32, u64> =
            self.read_msrs(&indices)?.into_iter().collect();
        let changed: Vec<(u32, u64)> = s
            .msrs
            .iter()
            .filter(|(i, v)| present.get(i) != Some(v))
            .copied()
            .collect();
        for chunk in changed.chunks(MSR_BATCH) {
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries).map_err(|e| Error::Table(self.index, e))?;
            let n = fd.set_msrs(&msrs).map_err(self.state_err("KVM_SET_MSRS"))?;
            if n != chunk.len() {
                return Err(Error::SetMsrs {
                    cpu: self.index,
                    done: n,
                    total: chunk.len(),
                    index: chunk[n].0,
                });
            }
        }
        fd.set_vcpu_events(&s.events)
            .map_err(self.state_err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// How many `int3`s were delivered as #BP.
    pub fn bp_injections(&self) -> u64 {
        self.bp_injections
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::regs::{long_mode_sregs, write_page_tables};

    #[test]
    fn translation_through_boot_page_tables() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let cr3 = write_page_tables(&mem, Privilege::Kernel).unwrap();
        let mut sregs = kvm_sregs::default();
        long_mode_sregs(&mut sregs, cr3, Privilege::Kernel);
        assert_eq!(translate_gva(&mem, &sregs, 0x20_1234), Some(0x20_1234));
        assert_eq!(translate_gva(&mem, &sregs, 0xd000_0010), Some(0xd000_0010));
        // Beyond the 4 GiB identity map: not present.
        assert_eq!(translate_gva(&mem, &sregs, 0x1_0000_0000), None);
        mem.write_slice(&[0x0f, 0x01, 0xca], GuestAddress(0x30_0000))
            .unwrap();
        assert_eq!(
            read_guest_code(&mem, &sregs, 0x30_0000, 3),
            vec![0x0f, 0x01, 0xca]
        );
        // Paging off: physical.
        sregs.cr0 = 1;
        assert_eq!(
            translate_gva(&mem, &sregs, 0x1_2345_6789),
            Some(0x1_2345_6789)
        );
        assert_eq!(read_guest_code(&mem, &sregs, 0x3f_fffe, 4).len(), 2);
    }

    #[test]
    fn hex_dump() {
        assert_eq!(hex(&[0xcc, 0x0f]), "cc 0f");
        assert_eq!(hex(&[]), "<unreadable>");
    }
}
