//! KVM state: the `/dev/kvm` handle, the VM, guest memory and vCPUs.

pub mod kvm;
pub mod memory;
pub mod stats;
pub mod vcpu;
pub mod vm;
