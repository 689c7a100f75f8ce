//! What a VM is made of: the configuration the runtime and the CLI hand to [`crate::Vmm`].

use std::path::PathBuf;

use devices::rate_limiter::RateLimit;
use serde::{Deserialize, Serialize};

/// The command line ember boots guests with when `cmdline` is not set.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd 8250.nr_uarts=1 quiet";
/// Smallest guest memory accepted.
pub const MIN_MEM_MIB: u32 = 32;
/// Default guest memory.
pub const DEFAULT_MEM_MIB: u32 = 128;
/// Default guest CID for vsock.
pub const DEFAULT_GUEST_CID: u32 = 3;

/// A whole VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmConfig {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Replaces [`DEFAULT_CMDLINE`] when set.
    pub cmdline: Option<String>,
    /// Appended to the command line.
    pub extra_cmdline: Vec<String>,
    pub mem_mib: u32,
    pub vcpus: u8,
    pub block: Vec<BlockConfig>,
    /// Empty virtio-blk slots after `block`, for disks inserted while the VM runs
    /// ([`crate::VmHandle::insert_disk`]).
    #[serde(default)]
    pub disk_slots: u8,
    pub net: Vec<NetConfig>,
    pub vsock: Option<VsockConfig>,
    pub rng: bool,
    /// A virtio-fs device whose shares are added while the VM runs
    /// ([`crate::VmHandle::add_share`]).
    #[serde(default)]
    pub fs: Option<FsConfig>,
    pub console: ConsoleConfig,
    /// Copy the kernel and initrd into guest memory instead of mapping them copy-on-write
    /// from their files (for comparisons; mapping is the default).
    #[serde(default)]
    pub copy_boot_files: bool,
    /// Most bytes a [`ConsoleConfig::File`] console takes (`None`: no bound); the guest's
    /// output beyond it is dropped, with one marker line and one warning.
    #[serde(default)]
    pub console_limit: Option<u64>,
    /// The seccomp filters the vCPU threads and the event loop confine themselves to before
    /// the guest runs ([`crate::seccomp`]); `None`: unfiltered. Not part of a snapshot.
    #[serde(skip)]
    pub seccomp: Option<std::sync::Arc<crate::seccomp::Filters>>,
    /// The user (uid and gid alike) the vCPU threads switch to before their first KVM_RUN,
    /// with [`VmConfig::seccomp`] (`None`: they keep the process's). A vCPU needs no user:
    /// its descriptors and memory are open already. Not part of a snapshot.
    #[serde(skip)]
    pub vcpu_user: Option<u32>,
}

impl VmConfig {
    /// A 1-vCPU, [`DEFAULT_MEM_MIB`] MiB VM booting `kernel` with the default command line
    /// and its console on stdout.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            extra_cmdline: Vec::new(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: 1,
            block: Vec::new(),
            disk_slots: 0,
            net: Vec::new(),
            vsock: None,
            rng: false,
            fs: None,
            console: ConsoleConfig::Stdout,
            copy_boot_files: false,
            console_limit: None,
            seccomp: None,
            vcpu_user: None,
        }
    }
}

/// A virtio-blk disk backed by a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Requests wait for tokens ([`devices::rate_limiter`]); none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A virtio-net interface backed by a tap device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The TAP device's name; empty: no backend, frames dropped (a template's placeholder,
    /// whose restored pods attach their own TAP).
    pub tap: String,
    pub mac: Option<[u8; 6]>,
    /// Frames to the guest wait for tokens ([`devices::rate_limiter`]); none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limit: Option<RateLimit>,
    /// Frames from the guest wait for tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limit: Option<RateLimit>,
}

/// virtio-vsock, bridged to Unix sockets at `uds_path` (Firecracker's scheme).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// A virtio-fs device: the guest mounts it by `tag` (`mount -t virtiofs TAG DIR`); its root
/// directory lists the shares, each a host directory or file exported under a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    pub tag: String,
    #[serde(default)]
    pub shares: Vec<ShareConfig>,
}

/// One host directory or file of a virtio-fs device, at `/<name>` of its root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareConfig {
    pub name: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Where the serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleConfig {
    #[default]
    Stdout,
    File(PathBuf),
    Sink,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = VmConfig::new("/k");
        assert_eq!(c.mem_mib, DEFAULT_MEM_MIB);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.console, ConsoleConfig::Stdout);
        assert!(DEFAULT_CMDLINE.starts_with("console=ttyS0 "));
    }
}
