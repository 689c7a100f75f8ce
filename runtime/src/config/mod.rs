//! Pod and container configuration (the JSON a user writes, kept in the pod's record).
//!
//! A pod config file, every field optional:
//! ```json
//! { "kernel": "/var/lib/ember/guest/vmlinux", "initrd": "/var/lib/ember/guest/initramfs.cpio",
//!   "mem_mib": 256, "vcpus": 1, "extra_cmdline": ["ember.debug"],
//!   "disks": [{"id": "busybox", "path": "/images/busybox.ext4", "read_only": false}],
//!   "hooks": {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hi"], "timeout": 5}]},
//!   "start_timeout_secs": 300 }
//! ```
//!
//! Container rootfs and disks: a pod's VM gets its block devices at start (no hotplug). A
//! container created before its pod starts may bring an image file or a directory (made into
//! an ext4 image with `mkfs.ext4 -d` at pod start); each becomes one disk. A container created
//! while the pod runs must use a disk the pod config declared (`"disk": "<id>"`), or an image
//! whose path equals a declared disk's path.

pub mod file;

pub use file::{Resources, RuntimeConfig, Sizing};

use agent::protocol::{CgroupLimits, LinuxSetup, Mount, Namespace, ProcessSpec, SharedNamespaces};
pub use devices::rate_limiter::RateLimit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Parses a config file's JSON (pod or container config): a JSON object. serde would take an
/// array for a struct too (its fields in order); a config written that way is refused.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    if !value.is_object() {
        return Err(<serde_json::Error as serde::de::Error>::custom(
            "a config is a JSON object ({...})",
        ));
    }
    serde_json::from_value(value)
}

/// Where installed guest artifacts live unless `EMBER_GUEST_DIR` says otherwise.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/ember/guest";

/// Environment variable naming the guest artifact directory.
pub const GUEST_DIR_ENV: &str = "EMBER_GUEST_DIR";

fn default_mem() -> u32 {
    256
}
fn default_vcpus() -> u8 {
    1
}
fn default_cid() -> u32 {
    3
}
fn default_start_timeout() -> u64 {
    300
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodConfig {
    /// Guest kernel (default `<guest dir>/vmlinux`).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs with the agent as /init (default `<guest dir>/initramfs.cpio`).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Replaces ember's default kernel command line when set.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Appended to the kernel command line.
    #[serde(default)]
    pub extra_cmdline: Vec<String>,
    #[serde(default = "default_mem")]
    pub mem_mib: u32,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Disks attached first, in this order (`/dev/vda`, `/dev/vdb`, ...), before container
    /// rootfs images.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Empty disk slots after the disks, for disks added while the pod runs: the rootfs of a
    /// container created in the running pod takes one (its `/dev/vdX` exists from boot).
    #[serde(default)]
    pub disk_slots: u8,
    #[serde(default)]
    pub hooks: Hooks,
    /// Guest vsock CID.
    #[serde(default = "default_cid")]
    pub guest_cid: u32,
    /// How long `pod start` waits for the agent's readiness announcement.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// What `stop` does with a running guest.
    #[serde(default)]
    pub shutdown: Shutdown,
    /// What runs the pod (a microVM, unless test equipment says otherwise).
    #[serde(default)]
    pub machine: Machine,
    /// Where the pod's VMM process logs besides `<pod dir>/vmm.log`.
    #[serde(default)]
    pub log: LogConfig,
    /// The engine's network the pod joins (its VM gets the namespace's interface).
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// Start the pod's VM from this template (`ember template create`) instead of booting
    /// it: the pod must fit the template (same kernel, initrd, command line, memory, vCPUs
    /// and disk slots, no disks of its own).
    #[serde(default)]
    pub template: Option<String>,
    /// A virtio-net device with no backend (frames dropped): for a template whose pods join
    /// an engine's network, each attaching its own TAP to it when restored.
    #[serde(default)]
    pub net_placeholder: bool,
    /// The seccomp filters of the pod process's threads (ember's own by default).
    #[serde(default)]
    pub seccomp: Seccomp,
    /// Most KiB of guest console output kept in `<pod dir>/console.log`; beyond it the output
    /// is dropped (a marker line in the file, a warning in `vmm.log`).
    #[serde(default = "default_console_limit_kib")]
    pub console_limit_kib: u32,
    /// Seconds the guest's agent may leave the pod process's health check unanswered (a
    /// ping every 5 s while the VM runs and is not paused) before the VM is stopped and the
    /// pod recorded as stopped for that reason; 0: the silence is only logged.
    #[serde(default = "default_agent_timeout_secs")]
    pub agent_timeout_secs: u64,
    /// Build and run the VM in a jail: the VMM's guest-facing threads in a mount namespace
    /// holding only what the VM needs ([`crate::pod_vmm::jail`]).
    #[serde(default = "default_jail")]
    pub jail: bool,
    /// The pod process's cgroup on the host, under the cgroup2 root (default `ember/<pod>`):
    /// the OCI face gives an OCI container's pod the spec's `cgroupsPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

fn default_jail() -> bool {
    true
}

fn default_console_limit_kib() -> u32 {
    4096
}

fn default_agent_timeout_secs() -> u64 {
    300
}

/// Bounds of a non-zero [`PodConfig::agent_timeout_secs`]: 10 s to a day.
pub const AGENT_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 10..=86_400;

/// Bounds of [`PodConfig::console_limit_kib`]: 4 KiB to 1 GiB.
pub const CONSOLE_LIMIT_KIB: std::ops::RangeInclusive<u32> = 4..=(1 << 20);

/// Which seccomp filters confine a VMM's threads (the vCPUs, the device event loop, the
/// control thread and the guest-facing relays; [`vmm::seccomp`]).
///
/// In a pod config `"seccomp": "off"` or `{"file": "/etc/ember/seccomp.json"}`; in the
/// runtime configuration `seccomp = "off"` or `seccomp = { file = "..." }` under
/// `[hypervisor]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Seccomp {
    /// ember's allow-lists, one per thread kind.
    #[default]
    Builtin,
    /// No filters.
    Off,
    /// A JSON file in seccompiler's format with one filter per thread kind (`vcpu`,
    /// `event_loop`, `control`, `relay`).
    File(PathBuf),
}

impl Seccomp {
    /// The compiled filters, `None` when off.
    pub fn filters(
        &self,
    ) -> Result<Option<std::sync::Arc<vmm::seccomp::Filters>>, vmm::seccomp::Error> {
        let filters = match self {
            Seccomp::Off => return Ok(None),
            Seccomp::Builtin => vmm::seccomp::Filters::builtin()?,
            Seccomp::File(path) => vmm::seccomp::Filters::from_file(path)?,
        };
        Ok(Some(std::sync::Arc::new(filters)))
    }

    /// Compile a filter file once, so that a missing, unreadable or bad one is refused where
    /// it is configured (a pod's create, the runtime configuration's load), not when a VM
    /// starts.
    pub fn check(&self) -> Result<(), vmm::seccomp::Error> {
        match self {
            Seccomp::File(path) => vmm::seccomp::Filters::from_file(path).map(drop),
            Seccomp::Builtin | Seccomp::Off => Ok(()),
        }
    }
}

/// A network namespace made by the engine (podman's CNI/netavark, containerd's CRI): the pod
/// process connects a TAP to its interface and the guest takes that interface's MAC,
/// addresses, routes and MTU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `/run/netns/NAME`, `/proc/PID/ns/net`, ...
    pub netns: PathBuf,
    /// Frames to the guest wait for tokens (Firecracker's model:
    /// `{"bandwidth": {"size": BYTES, "refill_time_ms": MS, "one_time_burst": BYTES},
    /// "ops": {...}}`); none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limit: Option<RateLimit>,
    /// Frames from the guest wait for tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limit: Option<RateLimit>,
}

impl NetworkConfig {
    /// The network namespace at `netns`, unlimited.
    pub fn new(netns: PathBuf) -> NetworkConfig {
        NetworkConfig {
            netns,
            rx_rate_limit: None,
            tx_rate_limit: None,
        }
    }
}

/// How a pod's guest is stopped. The guest's disks are host files, so a VM can go at once;
/// only what the guest has not written back yet needs a word first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shutdown {
    /// The agent flushes the guest's page cache to the disks (`sync`, bounded by a short
    /// timeout), then the VM is stopped at once.
    #[default]
    Sync,
    /// The VM is stopped at once (for disks nobody reads afterwards, e.g. an OCI container's
    /// throw-away rootfs image).
    Kill,
    /// The agent stops every container and reboots the guest; the VM is stopped hard when
    /// that takes longer than the grace period.
    Graceful,
}

/// What runs a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Machine {
    /// A KVM microVM in the pod's own process.
    #[default]
    Vm,
    /// Test equipment: the guest agent binary `agent` run as a host process behind the same
    /// hybrid-vsock socket a VM has (no kernel, no disks: container rootfs must be
    /// `guest_path` directories, which are host directories here).
    HostAgent { agent: PathBuf },
}

/// Environment variable with which the entry points (the CLI, containerd's shim) pick the
/// host-agent machine for the pods they create, naming the agent binary. The pod library and
/// the pod process read the pod's config, never this.
pub const HOST_AGENT_ENV: &str = "EMBER_POD_HOST_AGENT";

impl Machine {
    /// The host agent where [`HOST_AGENT_ENV`] names one (test equipment), else a microVM.
    pub fn from_env() -> Machine {
        match std::env::var_os(HOST_AGENT_ENV).filter(|v| !v.is_empty()) {
            Some(agent) => Machine::HostAgent {
                agent: PathBuf::from(agent),
            },
            None => Machine::Vm,
        }
    }
}

/// Extra logging of a pod's VMM process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A file that gets every line too (the engine's `--log` for OCI containers).
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub format: crate::logging::Format,
    #[serde(default)]
    pub debug: bool,
}

impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            kernel: None,
            initrd: None,
            cmdline: None,
            extra_cmdline: Vec::new(),
            mem_mib: default_mem(),
            vcpus: default_vcpus(),
            disks: Vec::new(),
            disk_slots: 0,
            hooks: Hooks::default(),
            guest_cid: default_cid(),
            start_timeout_secs: default_start_timeout(),
            annotations: BTreeMap::new(),
            shutdown: Shutdown::default(),
            machine: Machine::default(),
            log: LogConfig::default(),
            network: None,
            template: None,
            net_placeholder: false,
            seccomp: Seccomp::default(),
            console_limit_kib: default_console_limit_kib(),
            agent_timeout_secs: default_agent_timeout_secs(),
            jail: default_jail(),
            cgroup: None,
        }
    }
}

impl PodConfig {
    /// The guest artifact directory: `EMBER_GUEST_DIR` or `/var/lib/ember/guest`.
    pub fn guest_dir() -> PathBuf {
        std::env::var_os(GUEST_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR))
    }

    pub fn kernel_path(&self) -> PathBuf {
        self.kernel
            .clone()
            .unwrap_or_else(|| Self::guest_dir().join("vmlinux"))
    }

    pub fn initrd_path(&self) -> PathBuf {
        self.initrd
            .clone()
            .unwrap_or_else(|| Self::guest_dir().join("initramfs.cpio"))
    }
}

/// A disk declared by the pod config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Name containers use to refer to it (`"disk": "<id>"`).
    pub id: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// The guest's requests wait for tokens (bytes and requests; the format of
    /// [`NetworkConfig::rx_rate_limit`]); none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// OCI-style hooks run by the host around the pod's life.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before the VM boots; a failure aborts the start.
    #[serde(default)]
    pub prestart: Vec<Hook>,
    /// After the pod runs; failures are reported, not fatal.
    #[serde(default)]
    pub poststart: Vec<Hook>,
    /// After the pod stopped; failures are reported, not fatal.
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

/// One hook, as in the OCI runtime spec: `args[0]` is argv\[0\]; the pod's state JSON arrives
/// on stdin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=VALUE` entries; the hook gets only these.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds; the hook is killed and counted as failed after it.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// Where a container's root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootfsConfig {
    /// A filesystem image file, attached as its own disk at pod start.
    Image { path: PathBuf, read_only: bool },
    /// A directory, packed into an ext4 image (`mkfs.ext4 -d`) at pod start.
    Dir { path: PathBuf },
    /// A disk the pod config declares, by id.
    Disk { id: String },
    /// A directory that already exists inside the guest.
    GuestPath { path: String },
    /// A host directory shared live with the guest by virtio-fs: no copy, the container's
    /// writes land in it (what runc's container sees; podman's `diff`/`cp`/`commit` see them).
    Share {
        path: PathBuf,
        #[serde(default)]
        read_only: bool,
    },
}

impl Default for RootfsConfig {
    fn default() -> Self {
        RootfsConfig::GuestPath { path: "/".into() }
    }
}

/// How the OCI face gives a VM a bundle's rootfs and its host bind mounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OciRootfs {
    /// Shared live by virtio-fs (what runc's container sees, at no copying cost).
    #[default]
    VirtioFs,
    /// Packed into ext4 images attached as virtio-blk disks (a snapshot at create).
    Block,
}

/// A container: its rootfs, its first process and what the agent needs to set it up. The
/// process, mounts and namespaces are the agent protocol's own types, passed through as given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub rootfs: RootfsConfig,
    /// Filesystem type of the rootfs disk (default ext4).
    #[serde(default)]
    pub fstype: Option<String>,
    pub process: ProcessSpec,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Namespaces to create (default: all the agent knows).
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// cgroup path in the guest, relative to the agent's cgroup root (default `ember/<id>`).
    #[serde(default)]
    pub cgroup_path: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Mount the rootfs read-only (OCI `root.readonly`).
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// A second disk holding the sources of `from_volume` mounts (`image` or `disk`; an
    /// image given to a running pod goes into a free disk slot, as a rootfs image does).
    #[serde(default)]
    pub volume: Option<RootfsConfig>,
    /// Host files and directories bind-mounted into the container, shared live by virtio-fs
    /// (writes reach the host, host writes are seen inside; `ro` in the options is kept).
    #[serde(default)]
    pub host_mounts: Vec<HostMount>,
    /// Limits of the container's cgroup in the guest.
    #[serde(default)]
    pub limits: CgroupLimits,
    /// sysctls, devices, masked and read-only paths, root propagation (OCI `linux.*`).
    #[serde(default)]
    pub linux: LinuxSetup,
    /// Namespaces joined instead of made: another container's of the pod (a CRI member
    /// shares its sandbox's UTS and IPC, as runc joins them by path).
    #[serde(default)]
    pub share: Option<SharedNamespaces>,
}

/// A host file or directory bind-mounted into a container through the VM's virtio-fs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostMount {
    /// Absolute host path (a directory or a regular file).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    /// Bind options as in an OCI mount (`ro`, `rbind`, `nosuid`, ...).
    #[serde(default)]
    pub options: Vec<String>,
}

impl HostMount {
    /// Whether the options make it read-only (the last of `ro`/`rw` wins).
    pub fn read_only(&self) -> bool {
        self.options
            .iter()
            .rev()
            .find(|o| *o == "ro" || *o == "rw")
            .is_some_and(|o| o == "ro")
    }
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig::new(RootfsConfig::default(), Vec::<String>::new())
    }
}

impl ContainerConfig {
    /// A container running `args` on `rootfs`, defaults for everything else.
    pub fn new<S: Into<String>>(rootfs: RootfsConfig, args: impl IntoIterator<Item = S>) -> Self {
        ContainerConfig {
            rootfs,
            fstype: None,
            process: ProcessSpec::new(args),
            mounts: Vec::new(),
            namespaces: None,
            hostname: None,
            cgroup_path: None,
            annotations: BTreeMap::new(),
            readonly_rootfs: false,
            volume: None,
            host_mounts: Vec::new(),
            limits: CgroupLimits::default(),
            linux: LinuxSetup::default(),
            share: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_pod_config_takes_defaults() {
        let c: PodConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, PodConfig::default());
        assert_eq!(c.mem_mib, 256);
        assert_eq!(c.guest_cid, 3);
    }

    #[test]
    fn configs_are_json_objects() {
        assert_eq!(from_json::<PodConfig>("{}").unwrap(), PodConfig::default());
        for bad in ["[]", "[null, null]", "3", "\"x\"", "null"] {
            let err = from_json::<PodConfig>(bad).unwrap_err().to_string();
            assert!(err.contains("JSON object"), "{bad}: {err}");
        }
        assert!(from_json::<ContainerConfig>("[{\"GuestPath\": {\"path\": \"/\"}}]").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<PodConfig>(r#"{"memory": 5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn full_pod_config_parses() {
        let c: PodConfig = serde_json::from_str(
            r#"{"kernel":"/k","mem_mib":64,"vcpus":2,
                "disks":[{"id":"bb","path":"/i.ext4","read_only":true}],
                "hooks":{"prestart":[{"path":"/bin/true","args":["true"],"timeout":3}]}}"#,
        )
        .unwrap();
        assert_eq!(c.kernel_path(), PathBuf::from("/k"));
        assert_eq!(c.vcpus, 2);
        assert!(c.disks[0].read_only);
        assert_eq!(c.hooks.prestart[0].timeout, Some(3));
    }
}
