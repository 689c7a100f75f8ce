//! OCI bundles: `config.json` parsed with `oci_spec`, checked the way runc checks it, and turned
//! into the host-side description of a container ([`ContainerConfig`]) that ember sends to the
//! guest agent.

use crate::config::{Hook, Resources};
use agent::protocol::{Capabilities, Device, DeviceRule, IdMapping, LinuxSetup};
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Kata/containerd-CRI annotations that group containers into one pod (sandbox).
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The CRI-O spelling of the same.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("JSON specification file config.json not found")]
    NoConfig,
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Bad config.json")]
    Parse(#[source] serde_json::Error),
    #[error("unsupported spec version {0} (ember supports 1.x)")]
    Version(String),
    #[error("process property must not be empty")]
    NoProcess,
    #[error("args must not be empty")]
    NoArgs,
    #[error("Cwd property must be an absolute path: {0}")]
    RelativeCwd(PathBuf),
    #[error("root property must not be empty")]
    NoRoot,
    #[error("invalid rootfs: stat {0}: no such file or directory")]
    NoRootfs(PathBuf),
    #[error("invalid rootfs: {0} is not a directory")]
    RootfsNotDir(PathBuf),
    #[error("Mount destination {0} is not absolute")]
    RelativeMount(PathBuf),
    #[error("unable to set hostname without a private UTS namespace")]
    HostnameWithoutUts,
    #[error("unable to set domainname without a private UTS namespace")]
    DomainnameWithoutUts,
    #[error("Bad process file {path}")]
    ProcessFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One resource limit, named as in the OCI spec (`RLIMIT_NOFILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub typ: String,
    pub soft: u64,
    pub hard: u64,
}

/// The process to run: the container's init, or one `exec`ed into it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub terminal: bool,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    /// `process.capabilities`; `None` where the spec has no such object.
    #[serde(default)]
    pub capabilities: Option<Box<Capabilities>>,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

impl ProcessConfig {
    /// Take an OCI `process` object, checking what runc checks.
    pub fn from_oci(p: &Process) -> Result<ProcessConfig, BundleError> {
        let args = p.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(BundleError::NoArgs);
        }
        let cwd = p.cwd().clone();
        if !cwd.is_absolute() {
            return Err(BundleError::RelativeCwd(cwd));
        }
        let user = p.user();
        Ok(ProcessConfig {
            args,
            env: p.env().clone().unwrap_or_default(),
            cwd,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            terminal: p.terminal().unwrap_or(false),
            rlimits: p
                .rlimits()
                .iter()
                .flatten()
                .map(|r| Rlimit {
                    typ: r.typ().to_string(),
                    soft: r.soft(),
                    hard: r.hard(),
                })
                .collect(),
            no_new_privileges: p.no_new_privileges().unwrap_or(false),
            capabilities: p.capabilities().as_ref().map(|c| {
                let names = |set: &Option<oci_spec::runtime::Capabilities>| {
                    let mut v: Vec<String> =
                        set.iter().flatten().map(|c| format!("CAP_{c}")).collect();
                    v.sort();
                    v
                };
                Box::new(Capabilities {
                    bounding: names(c.bounding()),
                    effective: names(c.effective()),
                    permitted: names(c.permitted()),
                    inheritable: names(c.inheritable()),
                    ambient: names(c.ambient()),
                })
            }),
            oom_score_adj: p.oom_score_adj(),
        })
    }

    /// Read an `exec --process FILE` JSON file.
    pub fn load(path: &Path) -> Result<ProcessConfig, BundleError> {
        let data = std::fs::read(path).map_err(|source| BundleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let p: Process =
            serde_json::from_slice(&data).map_err(|source| BundleError::ProcessFile {
                path: path.to_path_buf(),
                source,
            })?;
        ProcessConfig::from_oci(&p)
    }
}

/// A mount inside the container, as given in the spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    pub destination: PathBuf,
    pub typ: Option<String>,
    pub source: Option<PathBuf>,
    pub options: Vec<String>,
}

/// A namespace the container asks for (`pid`, `mnt`, `net`, ...), with a path to join one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfig {
    pub typ: String,
    pub path: Option<PathBuf>,
}

/// Where a container stands in its pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodRole {
    /// No grouping annotations: a pod of one.
    Single,
    /// The sandbox (pause) container of a CRI pod: it owns the VM.
    Sandbox,
    /// A container of the CRI pod whose sandbox has this id.
    Member { sandbox_id: String },
}

/// Everything ember needs from a bundle to run its container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub bundle: PathBuf,
    /// The root filesystem on the host (absolute).
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub process: ProcessConfig,
    pub hostname: Option<String>,
    pub mounts: Vec<MountConfig>,
    pub namespaces: Vec<NamespaceConfig>,
    pub cgroups_path: Option<PathBuf>,
    pub annotations: BTreeMap<String, String>,
    pub role: PodRole,
    /// `linux.resources` as far as they size the VM.
    #[serde(default)]
    pub resources: Resources,
    /// `domainname`, `linux.sysctl`, `devices`, `maskedPaths`, `readonlyPaths`,
    /// `rootfsPropagation` (`readonly_root` is [`ContainerConfig::readonly_rootfs`]).
    #[serde(default)]
    pub linux: LinuxSetup,
}

impl ContainerConfig {
    /// Whether the spec asks for a network namespace of its own (none given by path) outside
    /// a CRI pod (whose namespaces are the sandbox's, by path). An engine may configure it
    /// after create, through the pid the runtime reports (`ctr run --cni`): that pid must not
    /// be in the host's namespace.
    pub fn wants_own_netns(&self) -> bool {
        self.role == PodRole::Single
            && self
                .namespaces
                .iter()
                .any(|n| matches!(n.typ.as_str(), "net" | "network") && n.path.is_none())
    }

    /// This config with its network namespace set to `netns` when an engine gave that
    /// namespace an interface meanwhile (CNI between create and start); as it is otherwise.
    pub fn with_configured_netns(mut self, netns: &Path) -> ContainerConfig {
        if crate::network::has_interface(netns) {
            log::info!(
                "container {}: network namespace {} joined",
                self.id,
                netns.display()
            );
            for n in &mut self.namespaces {
                if matches!(n.typ.as_str(), "net" | "network") {
                    n.path = Some(netns.to_path_buf());
                }
            }
        }
        self
    }
}

/// The OCI hooks of a spec. ember runs them on the host: `prestart` and `createRuntime` once
/// the container exists, `poststart` after start, `poststop` at delete. `createContainer`
/// and `startContainer` would run inside the container's namespaces, in the VM, where host
/// programs cannot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OciHooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

/// A loaded, checked bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Load `DIR/config.json` and check it. `dir` is made absolute against the current
    /// directory.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = absolute(dir);
        let path = dir.join("config.json");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BundleError::NoConfig),
            Err(source) => return Err(BundleError::Read { path, source }),
        };
        // The version first: a future major may not parse as today's spec at all.
        let value: serde_json::Value = serde_json::from_slice(&data).map_err(BundleError::Parse)?;
        check_version(
            value
                .get("ociVersion")
                .and_then(|v| v.as_str())
                .unwrap_or(""),
        )?;
        let spec: Spec = serde_json::from_value(value).map_err(BundleError::Parse)?;
        let bundle = Bundle { dir, spec };
        let process = bundle
            .spec
            .process()
            .as_ref()
            .ok_or(BundleError::NoProcess)?;
        ProcessConfig::from_oci(process)?;
        let rootfs = bundle.rootfs()?;
        match std::fs::metadata(&rootfs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(BundleError::RootfsNotDir(rootfs)),
            Err(_) => return Err(BundleError::NoRootfs(rootfs)),
        }
        for m in bundle.spec.mounts().iter().flatten() {
            if !m.destination().is_absolute() {
                return Err(BundleError::RelativeMount(m.destination().clone()));
            }
        }
        Ok(bundle)
    }

    /// The root filesystem path, absolute.
    pub fn rootfs(&self) -> Result<PathBuf, BundleError> {
        let root = self.spec.root().as_ref().ok_or(BundleError::NoRoot)?;
        let p = root.path();
        if p.as_os_str().is_empty() {
            return Err(BundleError::NoRoot);
        }
        Ok(if p.is_absolute() {
            p.clone()
        } else {
            self.dir.join(p)
        })
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.spec
            .annotations()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The spec's hooks, each kind in the spec's order.
    pub fn hooks(&self) -> OciHooks {
        let Some(h) = self.spec.hooks().as_ref() else {
            return OciHooks::default();
        };
        let list = |hooks: &Option<Vec<oci_spec::runtime::Hook>>| -> Vec<Hook> {
            hooks
                .iter()
                .flatten()
                .map(|h| Hook {
                    path: h.path().clone(),
                    args: h.args().clone().unwrap_or_default(),
                    env: h.env().clone().unwrap_or_default(),
                    // A timeout <= 0 is invalid in the spec; runc treats it as none.
                    timeout: h
                        .timeout()
                        .and_then(|t| u64::try_from(t).ok())
                        .filter(|t| *t > 0),
                })
                .collect()
        };
        #[allow(deprecated)]
        let prestart = list(h.prestart());
        OciHooks {
            prestart,
            create_runtime: list(h.create_runtime()),
            create_container: list(h.create_container()),
            start_container: list(h.start_container()),
            poststart: list(h.poststart()),
            poststop: list(h.poststop()),
        }
    }

    /// The container as ember runs it.
    pub fn container_config(&self, id: &str) -> Result<ContainerConfig, BundleError> {
        let spec = &self.spec;
        let process =
            ProcessConfig::from_oci(spec.process().as_ref().ok_or(BundleError::NoProcess)?)?;
        let linux = spec.linux().as_ref();
        let annotations = self.annotations();
        // As runc: a hostname (or domainname) needs a UTS namespace of the container's own.
        let has_uts = linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Uts)
            });
        if !has_uts {
            if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) {
                return Err(BundleError::HostnameWithoutUts);
            }
            if spec.domainname().as_deref().is_some_and(|h| !h.is_empty()) {
                return Err(BundleError::DomainnameWithoutUts);
            }
        }
        Ok(ContainerConfig {
            id: id.to_string(),
            bundle: self.dir.clone(),
            rootfs: self.rootfs()?,
            readonly_rootfs: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            process,
            hostname: spec.hostname().clone(),
            mounts: spec
                .mounts()
                .iter()
                .flatten()
                .map(|m| MountConfig {
                    destination: m.destination().clone(),
                    typ: m.typ().clone(),
                    source: m.source().clone(),
                    options: m.options().clone().unwrap_or_default(),
                })
                .collect(),
            namespaces: linux
                .and_then(|l| l.namespaces().as_ref())
                .into_iter()
                .flatten()
                .map(|n| NamespaceConfig {
                    typ: n.typ().to_string(),
                    path: n.path().clone(),
                })
                .collect(),
            cgroups_path: linux.and_then(|l| l.cgroups_path().clone()),
            role: pod_role(id, &annotations),
            annotations,
            resources: linux
                .and_then(|l| l.resources().as_ref())
                .map(resources)
                .unwrap_or_else(|| Resources {
                    devices: Some(device_rules(&[])),
                    ..Resources::default()
                }),
            linux: linux_setup(spec),
        })
    }
}

/// What a `linux.resources` object asks (the spec's, or the one `runc update --resources`
/// reads), with the device rules runc applies ([`device_rules`]).
pub fn resources(r: &oci_spec::runtime::LinuxResources) -> Resources {
    Resources {
        devices: Some(device_rules(r.devices().as_deref().unwrap_or_default())),
        memory_limit: r.memory().as_ref().and_then(|m| m.limit()),
        cpu_quota: r.cpu().as_ref().and_then(|c| c.quota()),
        cpu_period: r.cpu().as_ref().and_then(|c| c.period()),
        cpuset: r.cpu().as_ref().and_then(|c| c.cpus().clone()),
        memory_swap: r.memory().as_ref().and_then(|m| m.swap()),
        cpu_shares: r.cpu().as_ref().and_then(|c| c.shares()),
        pids_limit: r.pids().as_ref().map(|p| p.limit()),
    }
}

/// The device rules runc applies: the spec's (`linux.resources.devices`), then the devices
/// runc always allows (mknod of any node; null, zero, full, random, urandom, tty, ptmx, the
/// ptys, tun), on a default of none.
fn device_rules(spec: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Vec<DeviceRule> {
    let rule = |kind: &str, major: Option<i64>, minor: Option<i64>, access: &str| DeviceRule {
        allow: true,
        kind: Some(kind.to_string()),
        major,
        minor,
        access: Some(access.to_string()),
    };
    let mut rules: Vec<DeviceRule> = spec
        .iter()
        .map(|d| DeviceRule {
            allow: d.allow(),
            kind: d.typ().map(|t| t.as_str().to_string()),
            major: d.major(),
            minor: d.minor(),
            access: d.access().clone(),
        })
        .collect();
    rules.extend([
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
        rule("c", Some(1), Some(3), "rwm"),
        rule("c", Some(1), Some(8), "rwm"),
        rule("c", Some(1), Some(7), "rwm"),
        rule("c", Some(5), Some(0), "rwm"),
        rule("c", Some(1), Some(5), "rwm"),
        rule("c", Some(1), Some(9), "rwm"),
        rule("c", Some(136), None, "rwm"),
        rule("c", Some(5), Some(2), "rwm"),
        rule("c", Some(10), Some(200), "rwm"),
    ]);
    rules
}

/// What the agent applies besides mounts, namespaces and cgroup limits.
fn linux_setup(spec: &Spec) -> LinuxSetup {
    let linux = spec.linux().as_ref();
    LinuxSetup {
        domainname: spec.domainname().clone(),
        readonly_root: false,
        root_propagation: linux.and_then(|l| l.rootfs_propagation().clone()),
        sysctl: linux
            .and_then(|l| l.sysctl().as_ref())
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        devices: linux
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
            .map(|d| Device {
                path: d.path().to_string_lossy().into_owned(),
                kind: d.typ().as_str().to_string(),
                major: d.major(),
                minor: d.minor(),
                file_mode: d.file_mode(),
                uid: d.uid(),
                gid: d.gid(),
            })
            .collect(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default(),
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default(),
        // runc mounts /sys as the spec says: read-write only for a sysfs mount without `ro`.
        sysfs_writable: spec.mounts().iter().flatten().any(|m| {
            m.destination() == Path::new("/sys")
                && m.typ().as_deref() == Some("sysfs")
                && !m.options().iter().flatten().any(|o| o == "ro")
        }),
        uid_mappings: id_mappings(linux.and_then(|l| l.uid_mappings().as_ref())),
        gid_mappings: id_mappings(linux.and_then(|l| l.gid_mappings().as_ref())),
    }
}

/// `linux.uidMappings` or `gidMappings` for the agent.
fn id_mappings(maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>) -> Vec<IdMapping> {
    maps.into_iter()
        .flatten()
        .map(|m| IdMapping {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect()
}

/// Accept spec versions with major 1, as runc does.
pub fn check_version(v: &str) -> Result<(), BundleError> {
    let major = v.split('.').next().unwrap_or("");
    if major == "1" {
        Ok(())
    } else {
        Err(BundleError::Version(v.to_string()))
    }
}

/// Where the CRI annotations put this container.
pub fn pod_role(id: &str, annotations: &BTreeMap<String, String>) -> PodRole {
    let typ = annotations
        .get(CRI_CONTAINER_TYPE)
        .or_else(|| annotations.get(CRIO_CONTAINER_TYPE));
    let sandbox = annotations
        .get(CRI_SANDBOX_ID)
        .or_else(|| annotations.get(CRIO_SANDBOX_ID));
    match (typ.map(String::as_str), sandbox) {
        (Some("sandbox"), _) => PodRole::Sandbox,
        (Some("container"), Some(s)) if s != id => PodRole::Member {
            sandbox_id: s.clone(),
        },
        _ => PodRole::Single,
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn bundle_dir(name: &str, config: &str, rootfs: bool) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-bundle-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("config.json"), config).unwrap();
        if rootfs {
            fs::create_dir(d.join("rootfs")).unwrap();
        }
        d
    }

    const GOOD: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6]},
            "args": ["sh", "-c", "exit 3"], "env": ["PATH=/bin", "A=b"], "cwd": "/tmp",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}],
        "annotations": {"io.kubernetes.cri.container-type": "container",
                        "io.kubernetes.cri.sandbox-id": "pod1"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"},
                                 {"type": "uts"}],
                  "cgroupsPath": "/ember/c1"}
    }"#;

    /// What podman writes for `--cap-drop ALL --cap-add NET_ADMIN --oom-score-adj 100
    /// --sysctl kernel.msgmax=4096 --device /dev/null:/dev/mynull --security-opt
    /// mask=/etc/passwd`, trimmed.
    const FIDELITY: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_NET_ADMIN"], "effective": ["CAP_NET_ADMIN"],
                             "permitted": ["CAP_NET_ADMIN"]},
            "oomScoreAdj": 100},
        "root": {"path": "rootfs"},
        "hostname": "h1",
        "domainname": "example.org",
        "linux": {"namespaces": [{"type": "uts"}, {"type": "mount"}],
                  "sysctl": {"kernel.msgmax": "4096"},
                  "devices": [{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
                               "fileMode": 438, "uid": 0, "gid": 5}],
                  "maskedPaths": ["/etc/passwd", "/proc/kcore"],
                  "readonlyPaths": ["/proc/sys"],
                  "rootfsPropagation": "rshared"}
    }"#;

    #[test]
    fn capabilities_sysctl_devices_and_paths_are_read() {
        let d = bundle_dir("fidelity", FIDELITY, true);
        let c = Bundle::load(&d).unwrap().container_config("c1").unwrap();
        let caps = c.process.capabilities.as_ref().unwrap();
        assert_eq!(caps.bounding, ["CAP_NET_ADMIN"]);
        assert_eq!(caps.permitted, ["CAP_NET_ADMIN"]);
        assert!(caps.inheritable.is_empty() && caps.ambient.is_empty());
        assert_eq!(c.process.oom_score_adj, Some(100));
        assert_eq!(c.linux.domainname.as_deref(), Some("example.org"));
        assert_eq!(c.linux.sysctl["kernel.msgmax"], "4096");
        assert_eq!(
            c.linux.devices,
            [Device {
                path: "/dev/mynull".into(),
                kind: "c".into(),
                major: 1,
                minor: 3,
                file_mode: Some(0o666),
                uid: Some(0),
                gid: Some(5),
            }]
        );
        assert_eq!(c.linux.masked_paths, ["/etc/passwd", "/proc/kcore"]);
        assert_eq!(c.linux.readonly_paths, ["/proc/sys"]);
        assert_eq!(c.linux.root_propagation.as_deref(), Some("rshared"));
        // Without the object, None (the mapping makes that "no capabilities", as runc).
        let c = Bundle::load(&bundle_dir("nocaps", GOOD, true))
            .unwrap()
            .container_config("c1")
            .unwrap();
        assert_eq!(c.process.capabilities, None);
        fs::remove_dir_all(&d).unwrap();
    }

    /// /sys is read-write only where the spec's sysfs mount has no `ro` (`--privileged`).
    #[test]
    fn sysfs_is_writable_only_as_the_spec_mounts_it() {
        let with_sys = |opts: &str| {
            let spec = GOOD.replace(
                r#""mounts": ["#,
                &format!(
                    r#""mounts": [{{"destination": "/sys", "type": "sysfs", "source": "sysfs",
                                    "options": [{opts}]}}, "#
                ),
            );
            let d = bundle_dir("sysfs", &spec, true);
            let c = Bundle::load(&d).unwrap().container_config("c1").unwrap();
            fs::remove_dir_all(&d).unwrap();
            c.linux.sysfs_writable
        };
        assert!(!with_sys(r#""nosuid", "noexec", "nodev", "ro""#));
        assert!(with_sys(r#""nosuid", "noexec", "nodev""#));
        let d = bundle_dir("nosys", GOOD, true);
        let c = Bundle::load(&d).unwrap().container_config("c1").unwrap();
        assert!(!c.linux.sysfs_writable, "no /sys mount: read-only");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn device_rules_are_the_specs_then_runcs_allowed_devices() {
        let cfg = FIDELITY.replacen(
            r#""sysctl""#,
            r#""resources": {"devices": [{"allow": false, "access": "rwm"},
                                         {"allow": true, "type": "b", "major": 8, "access": "r"}]},
               "sysctl""#,
            1,
        );
        let d = bundle_dir("devrules", &cfg, true);
        let c = Bundle::load(&d).unwrap().container_config("c1").unwrap();
        let rules = c.resources.devices.unwrap();
        assert_eq!(rules.len(), 2 + 11, "{rules:?}");
        assert!(!rules[0].allow && rules[0].kind.is_none() && rules[0].major.is_none());
        assert_eq!(
            (rules[1].kind.as_deref(), rules[1].major, rules[1].minor),
            (Some("b"), Some(8), None)
        );
        assert_eq!(rules[1].access.as_deref(), Some("r"));
        // runc's own allowed devices follow: mknod of any node, then /dev/null first.
        assert_eq!(rules[2].access.as_deref(), Some("m"));
        assert_eq!((rules[4].major, rules[4].minor), (Some(1), Some(3)));
        // Without linux.resources: those alone, on a default of none.
        let c = Bundle::load(&bundle_dir("devdefault", FIDELITY, true))
            .unwrap()
            .container_config("c1")
            .unwrap();
        assert_eq!(c.resources.devices.map(|r| r.len()), Some(11));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hooks_are_read_in_order() {
        let cfg = FIDELITY.replacen(
            r#""root": {"path": "rootfs"},"#,
            r#""root": {"path": "rootfs"},
            "hooks": {"prestart": [{"path": "/bin/a", "args": ["a", "1"], "env": ["X=y"], "timeout": 5},
                                   {"path": "/bin/b"}],
                      "createRuntime": [{"path": "/bin/c", "timeout": 0}],
                      "poststop": [{"path": "/bin/d"}]},"#,
            1,
        );
        let d = bundle_dir("hooks", &cfg, true);
        let h = Bundle::load(&d).unwrap().hooks();
        assert_eq!(
            h.prestart,
            [
                Hook {
                    path: "/bin/a".into(),
                    args: vec!["a".into(), "1".into()],
                    env: vec!["X=y".into()],
                    timeout: Some(5)
                },
                Hook {
                    path: "/bin/b".into(),
                    args: vec![],
                    env: vec![],
                    timeout: None
                }
            ]
        );
        assert_eq!(h.create_runtime[0].path, PathBuf::from("/bin/c"));
        assert_eq!(h.create_runtime[0].timeout, None);
        assert_eq!(h.poststop.len(), 1);
        assert!(h.poststart.is_empty() && h.create_container.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_hostname_needs_a_uts_namespace_as_under_runc() {
        let cfg = FIDELITY.replace(r#"{"type": "uts"}, "#, "");
        let d = bundle_dir("no-uts", &cfg, true);
        let err = Bundle::load(&d)
            .unwrap()
            .container_config("c1")
            .unwrap_err();
        assert!(matches!(err, BundleError::HostnameWithoutUts), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn good_bundle_maps_every_honoured_field() {
        let d = bundle_dir("good", GOOD, true);
        let b = Bundle::load(&d).unwrap();
        let c = b.container_config("c1").unwrap();
        assert_eq!(c.rootfs, d.join("rootfs"));
        assert!(c.readonly_rootfs);
        assert_eq!(c.process.args, ["sh", "-c", "exit 3"]);
        assert_eq!(c.process.env, ["PATH=/bin", "A=b"]);
        assert_eq!(c.process.cwd, PathBuf::from("/tmp"));
        assert_eq!((c.process.uid, c.process.gid), (1000, 100));
        assert_eq!(c.process.additional_gids, [5, 6]);
        assert_eq!(
            c.process.rlimits,
            [Rlimit {
                typ: "RLIMIT_NOFILE".into(),
                soft: 512,
                hard: 1024
            }]
        );
        assert_eq!(c.hostname.as_deref(), Some("box"));
        assert_eq!(c.mounts.len(), 1);
        assert_eq!(c.mounts[0].destination, PathBuf::from("/proc"));
        assert_eq!(c.mounts[0].options, ["nosuid"]);
        assert_eq!(c.namespaces[0].typ, "pid");
        assert_eq!(c.namespaces[1].typ, "net");
        assert_eq!(
            c.namespaces[1].path.as_deref(),
            Some(Path::new("/proc/1/ns/net"))
        );
        assert_eq!(c.cgroups_path.as_deref(), Some(Path::new("/ember/c1")));
        assert_eq!(
            c.role,
            PodRole::Member {
                sandbox_id: "pod1".into()
            }
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_a_single_container_with_a_pathless_netns_wants_its_own() {
        let d = bundle_dir("own-netns", GOOD, true);
        let mut c = Bundle::load(&d).unwrap().container_config("c1").unwrap();
        // A CRI member, its network by path: not its own.
        assert!(!c.wants_own_netns());
        c.role = PodRole::Single;
        assert!(!c.wants_own_netns(), "the namespace is given by path");
        c.namespaces[1].path = None;
        assert!(c.wants_own_netns());
        c.namespaces.remove(1);
        assert!(!c.wants_own_netns(), "no network namespace: the host's");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_bundles_are_refused() {
        type Check = fn(&BundleError) -> bool;
        let cases: &[(&str, bool, Check)] = &[
            ("not json", true, |e| matches!(e, BundleError::Parse(_))),
            (
                r#"{"ociVersion":"2.0.0","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}"#,
                true,
                |e| matches!(e, BundleError::Version(_)),
            ),
            (
                r#"{"ociVersion":"1.0.0","root":{"path":"rootfs"}}"#,
                true,
                |e| matches!(e, BundleError::NoProcess),
            ),
            (
                r#"{"ociVersion":"1.0.0","process":{"user":{"uid":0,"gid":0},"args":[],"cwd":"/"},"root":{"path":"rootfs"}}"#,
                true,
                |e| matches!(e, BundleError::NoArgs),
            ),
            (
                r#"{"ociVersion":"1.0.0","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"rel"},"root":{"path":"rootfs"}}"#,
                true,
                |e| matches!(e, BundleError::RelativeCwd(_)),
            ),
            (
                r#"{"ociVersion":"1.0.0","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}"#,
                false,
                |e| matches!(e, BundleError::NoRootfs(_)),
            ),
        ];
        for (i, (cfg, rootfs, want)) in cases.iter().enumerate() {
            let d = bundle_dir(&format!("bad{i}"), cfg, *rootfs);
            let err = Bundle::load(&d).unwrap_err();
            assert!(want(&err), "case {i}: got {err:?}");
            fs::remove_dir_all(&d).unwrap();
        }
        let d = std::env::temp_dir().join(format!("ember-bundle-none-{}", std::process::id()));
        assert!(matches!(Bundle::load(&d), Err(BundleError::NoConfig)));
    }

    #[test]
    fn pod_roles_from_annotations() {
        let mut a = BTreeMap::new();
        assert_eq!(pod_role("x", &a), PodRole::Single);
        a.insert(CRI_CONTAINER_TYPE.to_string(), "sandbox".to_string());
        a.insert(CRI_SANDBOX_ID.to_string(), "x".to_string());
        assert_eq!(pod_role("x", &a), PodRole::Sandbox);
        let mut b = BTreeMap::new();
        b.insert(CRIO_CONTAINER_TYPE.to_string(), "container".to_string());
        b.insert(CRIO_SANDBOX_ID.to_string(), "p".to_string());
        assert_eq!(
            pod_role("y", &b),
            PodRole::Member {
                sandbox_id: "p".into()
            }
        );
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "1.0.2-dev", "1.2.1"] {
            assert!(check_version(ok).is_ok());
        }
        for bad in ["", "2.0.0", "0.9", "x"] {
            assert!(check_version(bad).is_err());
        }
    }
}
