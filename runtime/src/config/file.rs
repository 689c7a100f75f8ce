//! The runtime configuration file, `/etc/ember/config.toml` (`EMBER_CONFIG` names another):
//! what the OCI face (the runc-style CLI, the shims) gives the pods it makes, in the shape of
//! Kata's `configuration.toml`. Every key is optional; a missing file means the defaults.
//!
//! ```toml
//! [hypervisor]
//! kernel = "/var/lib/ember/guest/vmlinux"         # default: <guest dir>/vmlinux
//! initrd = "/var/lib/ember/guest/initramfs.cpio"  # default: <guest dir>/initramfs.cpio
//! default_memory_mib = 256   # a container without a memory limit
//! default_vcpus = 1          # a container without a CPU quota or cpuset
//! memory_overhead_mib = 128  # added to a container's memory limit: the guest's own share
//! max_memory_mib = 16384     # bounds of a VM sized from linux.resources
//! max_vcpus = 8
//! extra_cmdline = []         # appended to the guest kernel command line
//! seccomp = "builtin"        # the VMM threads' filters: "builtin", "off", or
//!                            # { file = "/etc/ember/seccomp.json" } (seccompiler's JSON)
//! jail = true                # the VMM's guest-facing threads in a jail (pod_vmm::jail)
//! rx_rate_limiter_max_rate = 0        # bits/s into the guest from the engine's network
//! tx_rate_limiter_max_rate = 0        # bits/s out of it (0: unlimited; Kata's names)
//! disk_rate_limiter_bw_max_rate = 0   # bits/s of each of a container's disks
//! disk_rate_limiter_ops_max_rate = 0  # requests/s of each of them
//!
//! [runtime]
//! rootfs = "virtio-fs"       # or "block": the rootfs and host binds as ext4 disks
//! debug = false              # debug-level logging in the pod processes
//! template = "oci"           # start containers' VMs from this template when they fit it
//!                            # (`ember template create oci --oci`); otherwise boot, and say why
//! agent_timeout_secs = 300   # a VM whose agent is silent this long is stopped (0: warn only)
//! ```
//!
//! A container's VM is sized from its spec's `linux.resources` ([`Sizing::for_resources`]):
//! memory = limit + overhead, vCPUs = ceil(quota / period), at most the cpuset's CPUs, within
//! the bounds above.

use super::OciRootfs;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the runtime configuration file is unless [`CONFIG_ENV`] names another.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ember/config.toml";
/// Environment variable naming the runtime configuration file.
pub const CONFIG_ENV: &str = "EMBER_CONFIG";

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub hypervisor: HypervisorConfig,
    #[serde(default)]
    pub runtime: RuntimeSection,
}

/// `[hypervisor]`: the guest and the size of its VM.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub default_memory_mib: u32,
    pub default_vcpus: u8,
    pub memory_overhead_mib: u32,
    pub max_memory_mib: u32,
    pub max_vcpus: u8,
    pub extra_cmdline: Vec<String>,
    pub seccomp: super::Seccomp,
    pub jail: bool,
    /// Bits per second the guest may receive from the engine's network (0: unlimited).
    pub rx_rate_limiter_max_rate: u64,
    /// Bits per second the guest may send.
    pub tx_rate_limiter_max_rate: u64,
    /// Bits per second of each disk the OCI face gives a container's VM.
    pub disk_rate_limiter_bw_max_rate: u64,
    /// Requests per second of each of those disks.
    pub disk_rate_limiter_ops_max_rate: u64,
}

/// A limit of `size` tokens a second (one-second buckets), none for 0.
fn per_second(bandwidth: u64, ops: u64) -> Option<super::RateLimit> {
    let bucket = |size: u64| {
        (size > 0).then_some(devices::rate_limiter::BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 1000,
        })
    };
    let limit = super::RateLimit {
        bandwidth: bucket(bandwidth),
        ops: bucket(ops),
    };
    (!limit.is_unlimited()).then_some(limit)
}

impl HypervisorConfig {
    /// The engine network's limits for the guest: (rx, tx).
    pub fn net_rate_limits(&self) -> (Option<super::RateLimit>, Option<super::RateLimit>) {
        (
            per_second(self.rx_rate_limiter_max_rate / 8, 0),
            per_second(self.tx_rate_limiter_max_rate / 8, 0),
        )
    }

    /// The limit of each disk the OCI face gives a container's VM.
    pub fn disk_rate_limit(&self) -> Option<super::RateLimit> {
        per_second(
            self.disk_rate_limiter_bw_max_rate / 8,
            self.disk_rate_limiter_ops_max_rate,
        )
    }
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            kernel: None,
            initrd: None,
            default_memory_mib: 256,
            default_vcpus: 1,
            memory_overhead_mib: 128,
            max_memory_mib: 16 * 1024,
            max_vcpus: 8,
            extra_cmdline: Vec::new(),
            seccomp: super::Seccomp::default(),
            jail: true,
            rx_rate_limiter_max_rate: 0,
            tx_rate_limiter_max_rate: 0,
            disk_rate_limiter_bw_max_rate: 0,
            disk_rate_limiter_ops_max_rate: 0,
        }
    }
}

/// `[runtime]`: how containers reach their VMs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    pub rootfs: OciRootfs,
    pub debug: bool,
    /// A template (`ember template create`) the OCI face starts containers' pods from when
    /// they fit it (same kernel, memory, vCPUs; see [`crate::state::template`]).
    pub template: Option<String>,
    /// The pods' `agent_timeout_secs` (their default where unset): how long a guest's agent
    /// may leave the health check unanswered before its VM is stopped; 0 only warns.
    pub agent_timeout_secs: Option<u64>,
}

/// Why the configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("Cannot read the runtime configuration {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("Bad runtime configuration {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("Bad runtime configuration {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The largest vCPU count a VM can have (its MP table's limit).
const VCPU_LIMIT: u8 = 32;
/// The smallest guest memory the VMM accepts.
const MIN_MEMORY_MIB: u32 = 32;
/// Largest memory bound accepted (1 TiB).
const MEMORY_LIMIT_MIB: u32 = 1 << 20;

impl RuntimeConfig {
    /// The file [`CONFIG_ENV`] names, else [`DEFAULT_CONFIG_FILE`]; defaults when the default
    /// file does not exist (a file named by the environment must exist).
    pub fn load() -> Result<RuntimeConfig, ConfigFileError> {
        match std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(path) => Self::from_file(Path::new(&path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))
            }
            None => Ok(RuntimeConfig::default()),
        }
    }

    /// Reads and checks `path`.
    pub fn from_file(path: &Path) -> Result<RuntimeConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigFileError::Read(path.to_path_buf(), e))?;
        Self::parse(&text).map_err(|e| match e {
            ConfigFileError::Parse { message, .. } => ConfigFileError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigFileError::Invalid { message, .. } => ConfigFileError::Invalid {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks a file's text.
    pub fn parse(text: &str) -> Result<RuntimeConfig, ConfigFileError> {
        let cfg: RuntimeConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigFileError::Parse {
                path: PathBuf::new(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        cfg.check().map_err(|message| ConfigFileError::Invalid {
            path: PathBuf::new(),
            message,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let h = &self.hypervisor;
        if h.max_vcpus == 0 || h.max_vcpus > VCPU_LIMIT {
            return Err(format!(
                "max_vcpus {} is not 1 to {VCPU_LIMIT}",
                h.max_vcpus
            ));
        }
        if h.default_vcpus == 0 || h.default_vcpus > h.max_vcpus {
            return Err(format!(
                "default_vcpus {} is not 1 to max_vcpus ({})",
                h.default_vcpus, h.max_vcpus
            ));
        }
        if h.max_memory_mib < MIN_MEMORY_MIB || h.max_memory_mib > MEMORY_LIMIT_MIB {
            return Err(format!(
                "max_memory_mib {} is not {MIN_MEMORY_MIB} to {MEMORY_LIMIT_MIB}",
                h.max_memory_mib
            ));
        }
        if h.default_memory_mib < MIN_MEMORY_MIB || h.default_memory_mib > h.max_memory_mib {
            return Err(format!(
                "default_memory_mib {} is not {MIN_MEMORY_MIB} to max_memory_mib ({})",
                h.default_memory_mib, h.max_memory_mib
            ));
        }
        if h.memory_overhead_mib >= h.max_memory_mib {
            return Err(format!(
                "memory_overhead_mib {} leaves nothing of max_memory_mib ({})",
                h.memory_overhead_mib, h.max_memory_mib
            ));
        }
        for (key, bits) in [
            ("rx_rate_limiter_max_rate", h.rx_rate_limiter_max_rate),
            ("tx_rate_limiter_max_rate", h.tx_rate_limiter_max_rate),
            (
                "disk_rate_limiter_bw_max_rate",
                h.disk_rate_limiter_bw_max_rate,
            ),
        ] {
            if (1..8).contains(&bits) {
                return Err(format!(
                    "{key} {bits} is less than one byte per second (0: unlimited)"
                ));
            }
        }
        if let Some(secs) = self.runtime.agent_timeout_secs {
            let bounds = &super::AGENT_TIMEOUT_SECS;
            if secs != 0 && !bounds.contains(&secs) {
                return Err(format!(
                    "agent_timeout_secs {secs} is not 0 or {} to {}",
                    bounds.start(),
                    bounds.end()
                ));
            }
        }
        h.seccomp
            .check()
            .map_err(|e| format!("seccomp: {}", crate::error::report(&e)))
    }
}

/// What a container's spec asks of its VM's size (OCI `linux.resources`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// `memory.limit` in bytes (absent or ≤ 0: none).
    pub memory_limit: Option<i64>,
    /// `cpu.quota` in µs per `cpu.period` (absent or ≤ 0: none).
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// `cpu.cpus`, a cpuset list such as `0-2,4`.
    pub cpuset: Option<String>,
    /// `memory.swap` (memory + swap, bytes; -1: unlimited).
    pub memory_swap: Option<i64>,
    /// `cpu.shares` (cgroup v1 units, 2..=262144).
    pub cpu_shares: Option<u64>,
    /// `pids.limit` (≤ 0: unlimited).
    pub pids_limit: Option<i64>,
    /// The device controller's rules, in order; `None`: every device (no filter).
    pub devices: Option<Vec<agent::protocol::DeviceRule>>,
}

impl Resources {
    /// The container's cgroup v2 limits, converted as runc converts them: memory.max from
    /// the limit, memory.swap.max = swap − limit, cpu.max from quota/period, cpu.weight from
    /// shares (`1 + (shares − 2) × 9999 / 262142`), pids.max.
    pub fn cgroup_limits(&self) -> agent::protocol::CgroupLimits {
        let memory_max = self.memory_limit.filter(|l| *l != 0);
        let memory_swap_max = match (self.memory_swap, memory_max) {
            (Some(-1), _) => Some(-1),
            (Some(swap), Some(limit)) if swap > 0 && limit > 0 => {
                Some(swap.saturating_sub(limit).max(0))
            }
            _ => None,
        };
        agent::protocol::CgroupLimits {
            memory_max,
            memory_swap_max,
            cpu_quota: self.cpu_quota.filter(|q| *q != 0),
            cpu_period: self.cpu_period.filter(|p| *p != 0),
            cpu_weight: self
                .cpu_shares
                .filter(|s| *s != 0)
                .map(|s| 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142),
            pids_max: self.pids_limit.map(|p| if p <= 0 { -1 } else { p }),
            devices: self.devices.clone(),
        }
    }
}

/// A VM's size and how it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizing {
    pub mem_mib: u32,
    pub vcpus: u8,
    /// What was clamped to a bound, for the log.
    pub notes: Vec<String>,
}

/// CPUs in a cpuset list (`0-3,6`); `None` when it does not parse.
pub fn cpuset_count(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        if b < a {
            return None;
        }
        n = n.checked_add((b - a).checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

impl Sizing {
    /// The VM for a container with `res` under `h`: memory = limit + overhead (default memory
    /// without a limit), vCPUs = ceil(quota / period) (default without a quota), at most the
    /// cpuset's CPUs; both within `h`'s bounds.
    pub fn for_resources(h: &HypervisorConfig, res: &Resources) -> Sizing {
        let mut notes = Vec::new();
        let mem_mib = match res.memory_limit.filter(|l| *l > 0) {
            Some(limit) => {
                let limit_mib = (limit as u64).div_ceil(1 << 20);
                let want = limit_mib.saturating_add(u64::from(h.memory_overhead_mib));
                if want > u64::from(h.max_memory_mib) {
                    notes.push(format!(
                        "memory limit {limit_mib} MiB + {} MiB overhead is more than max_memory_mib {}: the VM gets {}",
                        h.memory_overhead_mib, h.max_memory_mib, h.max_memory_mib
                    ));
                }
                want.clamp(u64::from(MIN_MEMORY_MIB), u64::from(h.max_memory_mib)) as u32
            }
            None => h.default_memory_mib,
        };
        let period = res.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
        let mut vcpus = match res.cpu_quota.filter(|q| *q > 0) {
            Some(quota) => (quota as u64).div_ceil(period),
            None => u64::from(h.default_vcpus),
        };
        if let Some(n) = res.cpuset.as_deref().and_then(cpuset_count) {
            vcpus = if res.cpu_quota.is_some_and(|q| q > 0) {
                vcpus.min(u64::from(n))
            } else {
                u64::from(n)
            };
        }
        if vcpus > u64::from(h.max_vcpus) {
            notes.push(format!(
                "{vcpus} vCPUs asked, max_vcpus is {}: the VM gets {}",
                h.max_vcpus, h.max_vcpus
            ));
        }
        let vcpus = vcpus.clamp(1, u64::from(h.max_vcpus)) as u8;
        Sizing {
            mem_mib,
            vcpus,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults_and_every_key_parses() {
        assert_eq!(RuntimeConfig::parse("").unwrap(), RuntimeConfig::default());
        let c = RuntimeConfig::parse(
            r#"
            [hypervisor]
            kernel = "/k"
            initrd = "/i"
            default_memory_mib = 512
            default_vcpus = 2
            memory_overhead_mib = 64
            max_memory_mib = 4096
            max_vcpus = 4
            extra_cmdline = ["ember.debug"]
            [runtime]
            rootfs = "block"
            debug = true
            agent_timeout_secs = 60
            "#,
        )
        .unwrap();
        assert_eq!(c.runtime.agent_timeout_secs, Some(60));
        assert_eq!(c.hypervisor.kernel, Some(PathBuf::from("/k")));
        assert_eq!(c.hypervisor.default_vcpus, 2);
        assert_eq!(c.runtime.rootfs, OciRootfs::Block);
        assert!(c.runtime.debug);
    }

    #[test]
    fn rate_limiter_keys_are_kata_s_bits_and_requests_per_second() {
        let c = RuntimeConfig::parse(
            "[hypervisor]\nrx_rate_limiter_max_rate = 80000000\ndisk_rate_limiter_bw_max_rate = 8388608\ndisk_rate_limiter_ops_max_rate = 100\n",
        )
        .unwrap();
        let (rx, tx) = c.hypervisor.net_rate_limits();
        let rx = rx.unwrap().bandwidth.unwrap();
        assert_eq!((rx.size, rx.refill_time_ms), (10_000_000, 1000));
        assert!(tx.is_none());
        let disk = c.hypervisor.disk_rate_limit().unwrap();
        assert_eq!(disk.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(disk.ops.unwrap().size, 100);
        assert_eq!(RuntimeConfig::default().hypervisor.disk_rate_limit(), None);
    }

    #[test]
    fn bad_files_get_one_clear_error() {
        for (text, want) in [
            ("[hypervisor]\nmemory = 5", "unknown field"),
            ("[runtime]\nrootfs = \"nfs\"", "unknown variant"),
            ("[hypervisor]\nmax_vcpus = 0", "max_vcpus 0"),
            ("[hypervisor]\nmax_vcpus = 33", "max_vcpus 33"),
            ("[hypervisor]\ndefault_vcpus = 9", "default_vcpus 9"),
            ("[hypervisor]\ndefault_memory_mib = 8", "default_memory_mib 8"),
            ("[hypervisor]\nmax_memory_mib = 100\ndefault_memory_mib = 64\nmemory_overhead_mib = 100", "memory_overhead_mib"),
            ("[hypervisor]\ndefault_vcpus = 300", "line 2: invalid value"),
            ("[hypervisor]\ntx_rate_limiter_max_rate = 7", "tx_rate_limiter_max_rate 7"),
            ("[runtime]\nagent_timeout_secs = 3", "agent_timeout_secs 3 is not 0 or 10 to 86400"),
            ("[[hypervisor]]", "line 1: invalid type"),
            ("not toml", ""),
        ] {
            let err = RuntimeConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("Bad runtime configuration"), "{err}");
        }
        let dir = std::env::temp_dir().join(format!("ember-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "[runtime]\nrootfs = 3\n").unwrap();
        let err = RuntimeConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = RuntimeConfig::from_file(&dir.join("missing.toml")).unwrap_err();
        assert!(matches!(err, ConfigFileError::Read(..)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_seccomp_filter_file_is_refused_when_the_configuration_is_read() {
        let dir = std::env::temp_dir().join(format!("ember-config-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, vmm::seccomp::Filters::builtin_json()).unwrap();
        let bad_json = dir.join("bad.json");
        std::fs::write(&bad_json, "{ not json").unwrap();
        let no_relay = dir.join("no-relay.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&vmm::seccomp::Filters::builtin_json()).unwrap();
        json.as_object_mut().unwrap().remove("relay");
        std::fs::write(&no_relay, json.to_string()).unwrap();
        let bad_syscall = dir.join("bad-syscall.json");
        std::fs::write(
            &bad_syscall,
            vmm::seccomp::Filters::builtin_json().replace("\"lseek\"", "\"no_such_call\""),
        )
        .unwrap();
        let config = dir.join("config.toml");
        for (file, want) in [
            (
                dir.join("missing.json"),
                "Cannot read the seccomp filter file",
            ),
            (bad_json, "Bad seccomp filter file"),
            (no_relay, "no filter for the \"relay\" threads"),
            (bad_syscall, "no_such_call"),
            // A directory opens, but does not read.
            (dir.clone(), "Bad seccomp filter file"),
        ] {
            let text = format!(
                "[hypervisor]\nseccomp = {{ file = {:?} }}\n",
                file.display()
            );
            std::fs::write(&config, &text).unwrap();
            let err = RuntimeConfig::from_file(&config).unwrap_err();
            assert!(matches!(err, ConfigFileError::Invalid { .. }), "{err}");
            let err = crate::error::report(&err);
            assert!(err.contains(&config.display().to_string()), "{err}");
            assert!(err.contains("seccomp: "), "{err}");
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(want), "{text}: {err}");
        }
        let text = format!(
            "[hypervisor]\nseccomp = {{ file = {:?} }}\n",
            good.display()
        );
        let c = RuntimeConfig::parse(&text).unwrap();
        assert_eq!(c.hypervisor.seccomp, super::super::Seccomp::File(good));
        for which in ["builtin", "off"] {
            RuntimeConfig::parse(&format!("[hypervisor]\nseccomp = \"{which}\"\n")).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cgroup_limits_are_converted_as_runc_does() {
        let r = Resources {
            memory_limit: Some(1 << 30),
            memory_swap: Some(3 << 30),
            cpu_quota: Some(150_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(1024),
            pids_limit: Some(100),
            cpuset: None,
            devices: None,
        };
        let l = r.cgroup_limits();
        assert_eq!(l.memory_max, Some(1 << 30));
        assert_eq!(l.memory_swap_max, Some(2 << 30));
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(150_000), Some(100_000)));
        // runc: shares 1024 -> weight 39; 2 -> 1; 262144 -> 10000.
        assert_eq!(l.cpu_weight, Some(39));
        assert_eq!(l.pids_max, Some(100));
        let edge = |shares, pids, swap| {
            Resources {
                memory_limit: Some(1 << 20),
                memory_swap: Some(swap),
                cpu_shares: Some(shares),
                pids_limit: Some(pids),
                ..Resources::default()
            }
            .cgroup_limits()
        };
        let l = edge(2, 0, -1);
        assert_eq!(
            (l.cpu_weight, l.pids_max, l.memory_swap_max),
            (Some(1), Some(-1), Some(-1))
        );
        assert_eq!(edge(262_144, -1, 1).cpu_weight, Some(10_000));
        assert_eq!(edge(262_144, -1, 1).memory_swap_max, Some(0));
        assert_eq!(Resources::default().cgroup_limits(), Default::default());
    }

    #[test]
    fn cpusets_count_their_cpus() {
        assert_eq!(cpuset_count("0"), Some(1));
        assert_eq!(cpuset_count("0-3,6"), Some(5));
        assert_eq!(cpuset_count(" 1 , 4-5 "), Some(3));
        assert_eq!(cpuset_count(""), None);
        assert_eq!(cpuset_count("3-1"), None);
        assert_eq!(cpuset_count("a"), None);
        assert_eq!(cpuset_count("0-4294967295,1"), None);
    }

    #[test]
    fn vms_are_sized_from_the_resources() {
        let h = HypervisorConfig::default();
        let size = |r: Resources| {
            let s = Sizing::for_resources(&h, &r);
            (s.mem_mib, s.vcpus, s.notes.len())
        };
        assert_eq!(size(Resources::default()), (256, 1, 0));
        // --memory 1g --cpus 2
        let r = Resources {
            memory_limit: Some(1 << 30),
            cpu_quota: Some(200_000),
            cpu_period: Some(100_000),
            ..Resources::default()
        };
        assert_eq!(size(r.clone()), (1024 + 128, 2, 0));
        // --cpus 1.5 rounds up; a cpuset of one CPU caps it.
        let r15 = Resources {
            cpu_quota: Some(150_000),
            ..Resources::default()
        };
        assert_eq!(size(r15.clone()), (256, 2, 0));
        assert_eq!(
            size(Resources {
                cpuset: Some("3".into()),
                ..r15
            }),
            (256, 1, 0)
        );
        // --cpuset-cpus 0-3 alone: four.
        assert_eq!(
            size(Resources {
                cpuset: Some("0-3".into()),
                ..Resources::default()
            }),
            (256, 4, 0)
        );
        // Past the bounds: clamped, with a note each.
        assert_eq!(
            size(Resources {
                memory_limit: Some(1 << 50),
                cpu_quota: Some(64 * 100_000),
                ..Resources::default()
            }),
            (16 * 1024, 8, 2)
        );
        // Nonsense values mean "no limit".
        assert_eq!(
            size(Resources {
                memory_limit: Some(-1),
                cpu_quota: Some(-1),
                cpu_period: Some(0),
                cpuset: Some("x".into()),
                ..Resources::default()
            }),
            (256, 1, 0)
        );
        // A tiny limit still gets a bootable VM.
        assert_eq!(
            size(Resources {
                memory_limit: Some(1),
                ..Resources::default()
            })
            .0,
            129
        );
    }
}
