//! The ioctl requests a vCPU thread makes, computed the way kvm-ioctls 0.25 computes the
//! requests it issues (vmm-sys-util's macros over kvm-bindings' structs), so that the filter
//! allows exactly what `VcpuFd`'s methods send.
//!
//! Who makes them, all on the vCPU's own thread (`vstate::vcpu`, `vstate::stats`):
//! - the run loop: `KVM_RUN` (also the `immediate_exit` run that completes an exit before a
//!   save);
//! - a pause: `KVM_GET_REGS` (the RIP it reports), `KVM_GET_STATS_FD` (then `pread64` on the
//!   stats descriptor);
//! - a snapshot (`Vcpu::save_state`): `KVM_GET_CPUID2`, `KVM_GET_MSRS`, `KVM_GET_REGS`,
//!   `KVM_GET_SREGS`, `KVM_GET_XSAVE` (kvm-ioctls' `get_xsave`, not `KVM_GET_XSAVE2`),
//!   `KVM_GET_XCRS`, `KVM_GET_DEBUGREGS`, `KVM_GET_LAPIC`, `KVM_GET_MP_STATE`,
//!   `KVM_GET_VCPU_EVENTS`, `KVM_GET_TSC_KHZ`;
//! - a fault's report (`where_is_rip`): `KVM_GET_REGS`, `KVM_GET_SREGS`;
//! - an `int3` the instruction emulator of a PVM host cannot run, delivered as #BP:
//!   `KVM_GET_REGS`, `KVM_SET_REGS`, `KVM_GET_VCPU_EVENTS`, `KVM_SET_VCPU_EVENTS`.
//!
//! The exit handlers make none: the legacy devices write their output and eventfds, the
//! virtio-mmio transport locks its device and writes eventfds (the `devices` crate has no KVM
//! ioctls; a TAP is configured when it is opened, on the thread that builds the VM).

use kvm_bindings::{
    kvm_cpuid2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// The ioctl requests of a vCPU thread, (name, request), in the order of KVM's numbers:
/// the order of the vCPU filter's ioctl rules, in [`super::Filters::builtin`] and in
/// [`super::Filters::builtin_json`] alike.
pub fn vcpu_ioctls() -> Vec<(&'static str, u64)> {
    vec![
        ("KVM_RUN", KVM_RUN()),
        ("KVM_GET_REGS", KVM_GET_REGS()),
        ("KVM_SET_REGS", KVM_SET_REGS()),
        ("KVM_GET_SREGS", KVM_GET_SREGS()),
        ("KVM_GET_MSRS", KVM_GET_MSRS()),
        ("KVM_GET_LAPIC", KVM_GET_LAPIC()),
        ("KVM_GET_CPUID2", KVM_GET_CPUID2()),
        ("KVM_GET_MP_STATE", KVM_GET_MP_STATE()),
        ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS()),
        ("KVM_SET_VCPU_EVENTS", KVM_SET_VCPU_EVENTS()),
        ("KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS()),
        ("KVM_GET_TSC_KHZ", KVM_GET_TSC_KHZ()),
        ("KVM_GET_XSAVE", KVM_GET_XSAVE()),
        ("KVM_GET_XCRS", KVM_GET_XCRS()),
        ("KVM_GET_STATS_FD", KVM_GET_STATS_FD()),
    ]
}
