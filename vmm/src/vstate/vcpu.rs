//! vCPUs: configuration for the 64-bit boot protocol and the run loop that dispatches
//! port-I/O and MMIO exits to the buses. Every KVM failure becomes an error that names the
//! vCPU, its RIP and the instruction bytes there.

use std::fmt::Write as _;
use std::sync::Arc;

use kvm_bindings::{
    kvm_sregs, KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
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
        })
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
            if !self.control.vcpu_should_continue() {
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
