//! Initial vCPU state for the 64-bit boot protocol: general registers, FPU, MSRs, segment
//! and control registers, boot GDT and identity-mapped page tables, LAPIC LINT pins.
//!
//! The same code can start a vCPU at CPL3 ([`Privilege::User`]): user segments (DPL3),
//! user-accessible page tables and RFLAGS.IOPL=3. That is how the VMM's exit handling is
//! tested on a PVM-style `/dev/kvm`, which runs guest user code natively.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcr, kvm_xcrs, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::layout::*;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const PTE_PRESENT: u64 = 0x1;
const PTE_WRITE: u64 = 0x2;
const PTE_USER: u64 = 0x4;
const PTE_HUGE: u64 = 0x80;

/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
/// RFLAGS.IOPL = 3: `in`/`out` allowed at CPL3.
const RFLAGS_IOPL3: u64 = 0x3000;

// MSR indices.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

// Boot GDT: kernel code/data and TSS as Linux's boot protocol expects, plus user segments
// at the indexes Linux uses (5: user data 0x2b, 6: user code 0x33).
const GDT_KERNEL_CODE: usize = 1;
const GDT_KERNEL_DATA: usize = 2;
const GDT_TSS: usize = 3;
const GDT_USER_DATA: usize = 5;
const GDT_USER_CODE: usize = 6;
const BOOT_GDT: [u64; 7] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0, 0, 0),
    gdt_entry(0xc0f3, 0, 0xfffff),
    gdt_entry(0xa0fb, 0, 0xfffff),
];

/// Errors while setting up vCPU registers.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to write the boot GDT or IDT to guest memory")]
    WriteGdt(#[source] vm_memory::GuestMemoryError),
    #[error("Failed to write the boot page tables to guest memory")]
    WritePageTables(#[source] vm_memory::GuestMemoryError),
    #[error("KVM_GET_SREGS failed")]
    GetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed")]
    SetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_REGS failed")]
    SetRegs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("Failed to build the MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("KVM_SET_MSRS failed")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_MSRS set {set} of {wanted} boot MSRs (first refused: {index:#x})")]
    MsrsNotAllSet {
        set: usize,
        wanted: usize,
        index: u32,
    },
    #[error("KVM_SET_XCRS failed (XCR0 {0:#x})")]
    SetXcr0(u64, #[source] kvm_ioctls::Error),
    #[error("KVM_GET_LAPIC failed")]
    GetLapic(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC failed")]
    SetLapic(#[source] kvm_ioctls::Error),
}

/// The privilege level a vCPU starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// CPL0: the Linux 64-bit boot protocol.
    Kernel,
    /// CPL3: test payloads (run natively on PVM).
    User,
}

/// General registers: entry point, boot stack, RSI = zero page.
pub fn boot_regs(entry: u64, privilege: Privilege) -> kvm_regs {
    kvm_regs {
        rflags: match privilege {
            Privilege::Kernel => RFLAGS_RESERVED,
            Privilege::User => RFLAGS_RESERVED | RFLAGS_IOPL3,
        },
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

pub fn setup_regs(vcpu: &VcpuFd, entry: u64, privilege: Privilege) -> Result<(), Error> {
    vcpu.set_regs(&boot_regs(entry, privilege))
        .map_err(Error::SetRegs)
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::SetFpu)
}

/// XCR0 = `xcr0` (see [`super::cpuid::supported_xcr0`] for why it is set before boot).
pub fn setup_xcr0(vcpu: &VcpuFd, xcr0: u64) -> Result<(), Error> {
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0] = kvm_xcr {
        xcr: 0,
        value: xcr0,
        ..Default::default()
    };
    vcpu.set_xcrs(&xcrs).map_err(|e| Error::SetXcr0(xcr0, e))
}

/// The MSRs Linux expects at boot.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
}

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(Error::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::SetMsrs)?;
    if set != entries.len() {
        return Err(Error::MsrsNotAllSet {
            set,
            wanted: entries.len(),
            index: entries.get(set).map(|e| e.index).unwrap_or(0),
        });
    }
    Ok(())
}

/// Write the boot GDT and an empty IDT to guest memory.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_OFFSET + (i as u64) * 8))
            .map_err(Error::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_OFFSET))
        .map_err(Error::WriteGdt)
}

/// Identity-map the first [`BOOT_IDENTITY_MAP_GIB`] GiB with 2 MiB pages; returns CR3.
pub fn write_page_tables(mem: &GuestMemoryMmap, privilege: Privilege) -> Result<u64, Error> {
    let user = match privilege {
        Privilege::Kernel => 0,
        Privilege::User => PTE_USER,
    };
    let flags = PTE_PRESENT | PTE_WRITE | user;
    mem.write_obj(PDPTE_START | flags, GuestAddress(PML4_START))
        .map_err(Error::WritePageTables)?;
    for gib in 0..BOOT_IDENTITY_MAP_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | flags, GuestAddress(PDPTE_START + gib * 8))
            .map_err(Error::WritePageTables)?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            mem.write_obj(addr | flags | PTE_HUGE, GuestAddress(pd + i * 8))
                .map_err(Error::WritePageTables)?;
        }
    }
    Ok(PML4_START)
}

/// Fill `sregs` for long mode with the boot GDT, at `privilege`.
pub fn long_mode_sregs(sregs: &mut kvm_sregs, cr3: u64, privilege: Privilege) {
    let (code, data) = match privilege {
        Privilege::Kernel => (GDT_KERNEL_CODE, GDT_KERNEL_DATA),
        Privilege::User => (GDT_USER_CODE, GDT_USER_DATA),
    };
    let code_seg = kvm_segment_from_gdt(BOOT_GDT[code], code as u8);
    let data_seg = kvm_segment_from_gdt(BOOT_GDT[data], data as u8);
    let tss_seg = kvm_segment_from_gdt(BOOT_GDT[GDT_TSS], GDT_TSS as u8);

    sregs.gdt.base = BOOT_GDT_OFFSET;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_OFFSET;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;

    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
}

/// Write GDT/IDT and page tables, then load long-mode segment and control registers.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    privilege: Privilege,
) -> Result<(), Error> {
    write_gdt_idt(mem)?;
    let cr3 = write_page_tables(mem, privilege)?;
    let mut sregs = vcpu.get_sregs().map_err(Error::GetSregs)?;
    long_mode_sregs(&mut sregs, cr3, privilege);
    vcpu.set_sregs(&sregs).map_err(Error::SetSregs)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

fn get_klapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let b = |i: usize| regs.get(offset + i).map(|v| *v as u8).unwrap_or(0);
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_klapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        if let Some(slot) = regs.get_mut(offset + i) {
            *slot = *byte as std::os::raw::c_char;
        }
    }
}

/// LINT0 = ExtINT (the PIC), LINT1 = NMI, as the MP table says.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut klapic = vcpu.get_lapic().map_err(Error::GetLapic)?;
    let lvt0 = get_klapic_reg(&klapic.regs, APIC_LVT0);
    set_klapic_reg(
        &mut klapic.regs,
        APIC_LVT0,
        set_apic_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_klapic_reg(&klapic.regs, APIC_LVT1);
    set_klapic_reg(
        &mut klapic.regs,
        APIC_LVT1,
        set_apic_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&klapic).map_err(Error::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_with_user_bit() {
        let m = mem();
        let cr3 = write_page_tables(&m, Privilege::User).unwrap();
        assert_eq!(cr3, PML4_START);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 0x7);
        // 0xd000_0000 lives in GiB 3, entry 128.
        let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START + 3 * 8)).unwrap();
        assert_eq!(pdpte & !0xfff, PDE_START + 3 * 0x1000);
        let pde: u64 = m
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 128 * 8))
            .unwrap();
        assert_eq!(pde & !0xfff, 0xd000_0000);
        assert_eq!(pde & 0xff, 0x87);
        let kernel = mem();
        write_page_tables(&kernel, Privilege::Kernel).unwrap();
        let pde0: u64 = kernel.read_obj(GuestAddress(PDE_START)).unwrap();
        assert_eq!(pde0, 0x83);
    }

    #[test]
    fn long_mode_registers() {
        let mut sregs = kvm_sregs::default();
        long_mode_sregs(&mut sregs, PML4_START, Privilege::Kernel);
        assert_eq!(sregs.cs.selector, 0x08);
        assert_eq!(sregs.ss.selector, 0x10);
        assert_eq!(sregs.tr.selector, 0x18);
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        let mut user = kvm_sregs::default();
        long_mode_sregs(&mut user, PML4_START, Privilege::User);
        assert_eq!(user.cs.selector, 0x33);
        assert_eq!(user.ss.selector, 0x2b);
        assert_eq!(user.cs.dpl, 3);
        assert_eq!(user.cs.l, 1);
    }

    #[test]
    fn gdt_lands_in_memory() {
        let m = mem();
        write_gdt_idt(&m).unwrap();
        let code: u64 = m.read_obj(GuestAddress(BOOT_GDT_OFFSET + 8)).unwrap();
        assert_eq!(code, BOOT_GDT[1]);
        let user_code: u64 = m.read_obj(GuestAddress(BOOT_GDT_OFFSET + 6 * 8)).unwrap();
        assert_eq!(user_code, BOOT_GDT[6]);
    }

    #[test]
    fn user_regs_have_iopl3() {
        let r = boot_regs(0x40_0000, Privilege::User);
        assert_eq!(r.rflags & 0x3000, 0x3000);
        assert_eq!(r.rip, 0x40_0000);
        let k = boot_regs(0x100_0000, Privilege::Kernel);
        assert_eq!(k.rflags, 0x2);
        assert_eq!(k.rsi, ZERO_PAGE_START);
    }

    #[test]
    fn lint_delivery_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_klapic_reg(&mut regs, APIC_LVT0, 0x0001_0700);
        let v = set_apic_delivery_mode(get_klapic_reg(&regs, APIC_LVT0), APIC_MODE_NMI);
        assert_eq!(v, 0x0001_0400);
    }
}
