//! `/dev/kvm`: open it, check what ember needs, and recognise a KVM that cannot run an
//! ordinary guest (PVM).

use std::path::Path;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};
use thiserror::Error;

/// Where a PVM-style `/dev/kvm` shows itself.
pub const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";
const KVM_DEV: &str = "/dev/kvm";
const KVM_API_VERSION: i32 = 12;

/// Capabilities ember relies on.
const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::UserMemory, "user memory"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::Irqfd, "irqfd"),
    (Cap::Pit2, "PIT2"),
    (Cap::ImmediateExit, "immediate_exit"),
];

/// Errors of `/dev/kvm`.
#[derive(Debug, Error)]
pub enum Error {
    #[error("No /dev/kvm on this machine (KVM is not available; run ember on a KVM host or inside the virtual KVM host: scripts/run-demo.sh)")]
    NoKvm,
    #[error("Cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    #[error("Unsupported KVM API version {0} (need {KVM_API_VERSION})")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("/dev/kvm is served by kvm_pvm (a PVM nested hypervisor), which cannot run an ordinary guest's user space; run ember inside the virtual KVM host (scripts/run-demo.sh, see README); `ember vm run --force` tries anyway")]
    Pvm,
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// Is `/dev/kvm` served by the PVM module?
pub fn is_pvm() -> bool {
    Path::new(KVM_PVM_MODULE).exists()
}

/// The opened `/dev/kvm`.
pub struct KvmContext {
    pub kvm: Kvm,
}

impl KvmContext {
    /// Open `/dev/kvm` and check its API version and the capabilities ember needs.
    pub fn new() -> Result<Self, Error> {
        if !Path::new(KVM_DEV).exists() {
            return Err(Error::NoKvm);
        }
        let kvm = Kvm::new().map_err(Error::Open)?;
        let api = kvm.get_api_version();
        if api != KVM_API_VERSION {
            return Err(Error::ApiVersion(api));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCap(name));
            }
        }
        Ok(KvmContext { kvm })
    }

    /// The MSRs a snapshot saves: KVM_GET_MSR_INDEX_LIST (the MSRs KVM migrates and those it
    /// emulates); empty, with a warning, where KVM cannot list them.
    pub fn msrs_to_save(&self) -> Vec<u32> {
        match self.kvm.get_msr_index_list() {
            Ok(list) => list.as_slice().to_vec(),
            Err(e) => {
                log::warn!("KVM_GET_MSR_INDEX_LIST failed ({e}): snapshots will hold no MSRs");
                Vec::new()
            }
        }
    }

    /// KVM_GET_SUPPORTED_CPUID.
    pub fn supported_cpuid(&self) -> Result<CpuId, Error> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::SupportedCpuid)
    }
}

/// Can this machine's `/dev/kvm` run an ordinary guest? `Err` carries a one-line reason.
pub fn check_kvm_usable() -> Result<(), Error> {
    KvmContext::new()?;
    if is_pvm() {
        return Err(Error::Pvm);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_line() {
        for e in [
            Error::NoKvm,
            Error::Pvm,
            Error::ApiVersion(11),
            Error::MissingCap("irqfd"),
        ] {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg
                .chars()
                .next()
                .is_some_and(|c| c.is_uppercase() || c == '/'));
        }
    }

    #[test]
    fn usable_check_matches_this_machine() {
        let res = check_kvm_usable();
        if !Path::new(KVM_DEV).exists() {
            assert!(matches!(res, Err(Error::NoKvm)));
        } else if is_pvm() {
            assert!(matches!(res, Err(Error::Pvm)), "{res:?}");
        }
    }
}
