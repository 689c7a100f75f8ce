//! CPUID for a vCPU: KVM's supported set, filtered. Each vCPU gets its APIC ID and the
//! topology (leaf 0x1, 0xb, 0x8000_0008), the hypervisor bit and KVM signature, and loses
//! CX16 (CPUID.1:ECX bit 13): the PVM instruction emulator cannot run `cmpxchg16b`.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSTATE: u32 = 0xd;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;

const ECX_CX16_BIT: u32 = 13;
const ECX_XSAVE_BIT: u32 = 26;
const ECX_TSC_DEADLINE_BIT: u32 = 24;
const ECX_HYPERVISOR_BIT: u32 = 31;
const EDX_HTT_BIT: u32 = 28;

const LEAFB_LEVEL_SMT: u32 = 1;
const LEAFB_LEVEL_CORE: u32 = 2;

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Filter `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `cpu_id` of `num_cpus`.
/// `tsc_deadline`: the in-kernel LAPIC emulates the TSC-deadline timer
/// (KVM_CAP_TSC_DEADLINE_TIMER), which KVM does not advertise in the supported set itself.
pub fn filter_cpuid(
    entries: &mut Vec<kvm_cpuid_entry2>,
    cpu_id: u8,
    num_cpus: u8,
    tsc_deadline: bool,
) {
    let apic_id = u32::from(cpu_id);
    let cpus = u32::from(num_cpus.max(1));
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: APIC ID (31:24), logical processors (23:16), CLFLUSH line size (15:8).
                e.ebx = (apic_id << 24) | (cpus << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx &= !(1 << ECX_CX16_BIT);
                e.ecx |= 1 << ECX_HYPERVISOR_BIT;
                if tsc_deadline {
                    e.ecx |= 1 << ECX_TSC_DEADLINE_BIT;
                }
                if cpus > 1 {
                    e.edx |= 1 << EDX_HTT_BIT;
                } else {
                    e.edx &= !(1 << EDX_HTT_BIT);
                }
            }
            LEAF_CACHE => {
                // EAX 31:26: cores per package - 1; 25:14: threads sharing this cache - 1.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((cpus - 1) << 26);
            }
            LEAF_TOPOLOGY => {
                // One thread per core, `cpus` cores per package.
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEAFB_LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(cpus);
                        e.ebx = cpus;
                        e.ecx = (LEAFB_LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_HYPERVISOR => {
                e.ebx = KVM_SIGNATURE[0];
                e.ecx = KVM_SIGNATURE[1];
                e.edx = KVM_SIGNATURE[2];
                if e.eax < LEAF_HYPERVISOR + 1 {
                    e.eax = LEAF_HYPERVISOR + 1;
                }
            }
            LEAF_AMD_SIZES => {
                // ECX 15:12: APIC ID size; 7:0: cores - 1.
                e.ecx = (bits_for(cpus) << 12) | (cpus - 1);
            }
            _ => {}
        }
    }
    // Leaf 0xb may be missing (AMD hosts): the kernel falls back to leaf 1 then.
    if !entries.iter().any(|e| e.function == LEAF_HYPERVISOR) {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR + 1,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
}

/// The XCR0 value a vCPU with CPUID `entries` starts with: every user state component it
/// advertises (leaf 0xd.0 EDX:EAX), or None without XSAVE (leaf 1 ECX bit 26).
///
/// Linux sets XCR0 itself with XSETBV and then checks its buffer size against CPUID 0xd.0 EBX,
/// which KVM derives from the XCR0 it tracks. Starting from the value the guest will set keeps
/// the two in step even where the guest's XSETBV never reaches KVM: QEMU's TCG (7.2) does not
/// intercept XSETBV for a nested guest, so inside ember's virtual KVM host the guest kernel
/// otherwise read a stale size, disabled XSAVE with a warning on every boot, and now and then
/// triple-faulted when KVM put its own XCR0 back under a live XSAVE area.
pub fn supported_xcr0(entries: &[kvm_cpuid_entry2]) -> Option<u64> {
    let xsave = entries
        .iter()
        .find(|e| e.function == LEAF_FEATURES)
        .is_some_and(|e| e.ecx & (1 << ECX_XSAVE_BIT) != 0);
    let leaf = entries
        .iter()
        .find(|e| e.function == LEAF_XSTATE && e.index == 0)?;
    let mask = (u64::from(leaf.edx) << 32) | u64::from(leaf.eax);
    // x87 state is architecturally always enabled; without it the leaf is bogus.
    (xsave && mask & 1 != 0).then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn leaf1_apic_id_and_cx16_cleared() {
        let mut v = vec![leaf(1, 0)];
        filter_cpuid(&mut v, 2, 4, true);
        let e = find(&v, 1, 0);
        assert_eq!(e.ebx >> 24, 2);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ecx & (1 << 13), 0, "CX16 cleared");
        assert_ne!(e.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(e.edx & (1 << 28), 0, "HTT with >1 cpu");
        assert_ne!(e.ecx & (1 << 24), 0, "TSC deadline timer");
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut v = vec![leaf(1, 0)];
        v[0].ecx = 0;
        filter_cpuid(&mut v, 0, 1, false);
        assert_eq!(find(&v, 1, 0).edx & (1 << 28), 0);
        assert_eq!(find(&v, 1, 0).ecx & (1 << 24), 0);
    }

    #[test]
    fn topology_leaf() {
        let mut v = vec![leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        filter_cpuid(&mut v, 3, 5, false);
        let smt = find(&v, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 3));
        let core = find(&v, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (3, 5, 2, 3));
        let end = find(&v, 0xb, 2);
        assert_eq!((end.ebx, end.ecx), (0, 2));
    }

    #[test]
    fn kvm_signature_present() {
        let mut v = vec![leaf(1, 0)];
        filter_cpuid(&mut v, 0, 1, false);
        let h = find(&v, LEAF_HYPERVISOR, 0);
        let mut sig = Vec::new();
        for r in [h.ebx, h.ecx, h.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
    }

    #[test]
    fn xcr0_is_the_advertised_user_state() {
        let mut l1 = leaf(LEAF_FEATURES, 0);
        l1.ecx = 1 << ECX_XSAVE_BIT;
        let mut xs = leaf(LEAF_XSTATE, 0);
        xs.eax = 0x207;
        xs.edx = 0;
        let mut xs1 = leaf(LEAF_XSTATE, 1);
        xs1.eax = 0xf;
        assert_eq!(supported_xcr0(&[l1, xs1, xs]), Some(0x207));
        xs.edx = 0x1;
        assert_eq!(supported_xcr0(&[l1, xs]), Some(0x1_0000_0207));
        xs.edx = 0;
        // No XSAVE in leaf 1, no leaf 0xd, or no x87 bit: leave XCR0 alone.
        let mut no_xsave = l1;
        no_xsave.ecx = !(1 << ECX_XSAVE_BIT);
        assert_eq!(supported_xcr0(&[no_xsave, xs]), None);
        assert_eq!(supported_xcr0(&[l1]), None);
        xs.eax = 0x6;
        assert_eq!(supported_xcr0(&[l1, xs]), None);
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(32), 5);
    }
}
