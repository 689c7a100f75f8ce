//! Files a user or an orchestrator hands ember: the OCI bundle's `config.json`
//! (`Bundle::load` over a temporary bundle with a rootfs directory, then `container_config`,
//! `hooks`, the VM sizing and cgroup limits derived from it, and `ProcessConfig::load` of the
//! same file as an `exec --process` file), pod and container config JSON
//! (`config::from_json`), and the runtime config file (`RuntimeConfig::parse`).
//!
//! Invariants: a pod/container config that parses survives a round trip through serde; the
//! VM a container gets lies within the runtime config's bounds.

use std::path::Path;

use fuzz::{Input, Target};
use runtime::config::{self, ContainerConfig, PodConfig, RuntimeConfig, Sizing};
use runtime::oci::bundle::{Bundle, ProcessConfig};
use vmm_sys_util::tempdir::TempDir;

pub const OCI: Target = Target {
    name: "oci_config",
    max_len: 16 * 1024,
    dict: &[
        b"\"ociVersion\":\"1.0.2\"",
        b"\"process\":{\"args\":[\"sh\"],\"cwd\":\"/\",\"user\":{\"uid\":0,\"gid\":0}}",
        b"\"root\":{\"path\":\"rootfs\"}",
        b"\"linux\":{\"resources\":{\"memory\":{\"limit\":-1}}}",
        b"\"cpu\":{\"quota\":-1,\"period\":0,\"cpus\":\"0-3\"}",
        b"\"namespaces\":[{\"type\":\"uts\"}]",
        b"\"hostname\":\"h\"",
        b"\"mounts\":[{\"destination\":\"/x\",\"type\":\"bind\",\"source\":\"/\"}]",
        b"\"hooks\":{\"prestart\":[{\"path\":\"/bin/true\",\"timeout\":-5}]}",
        b"\"rlimits\":[{\"type\":\"RLIMIT_NOFILE\",\"hard\":1,\"soft\":2}]",
        b"\"capabilities\":{\"bounding\":[\"CAP_FOO\"]}",
        b"9223372036854775807",
        b"-9223372036854775808",
        b"18446744073709551615",
        b"null",
    ],
};

pub const POD: Target = Target {
    name: "pod_config",
    max_len: 8192,
    dict: &[
        b"\"memory_mib\":",
        b"\"vcpus\":",
        b"\"rootfs\":",
        b"\"args\":[\"sh\"]",
        b"\"mounts\":[]",
        b"\"network\":",
        b"\"disks\":[]",
        b"\"hooks\":",
        b"4294967295",
        b"-1",
        b"null",
        b"{}",
        b"[]",
    ],
};

pub const RUNTIME: Target = Target {
    name: "runtime_config",
    max_len: 4096,
    dict: &[
        b"[hypervisor]\n",
        b"[runtime]\n",
        b"default_memory_mib = ",
        b"max_memory_mib = ",
        b"memory_overhead_mib = ",
        b"default_vcpus = ",
        b"max_vcpus = ",
        b"kernel = \"/k\"\n",
        b"extra_cmdline = [\"a\"]\n",
        b"rootfs = \"block\"\n",
        b"4294967295",
        b"255",
        b"\n",
    ],
};

/// The VM sizing and cgroup limits of `res` under `h`, with the bounds checked.
fn size(h: &RuntimeConfig, res: &config::Resources) {
    let s = Sizing::for_resources(&h.hypervisor, res);
    assert!(
        s.vcpus >= 1 && s.vcpus <= h.hypervisor.max_vcpus,
        "vcpus {}",
        s.vcpus
    );
    assert!(
        s.mem_mib <= h.hypervisor.max_memory_mib,
        "mem {}",
        s.mem_mib
    );
    let _ = res.cgroup_limits();
}

pub fn oci(data: &[u8], dir: &Path) {
    std::fs::write(dir.join("config.json"), data).unwrap();
    if let Ok(b) = Bundle::load(dir) {
        let _ = b.hooks();
        let _ = b.annotations();
        if let Ok(c) = b.container_config("fuzz") {
            size(&RuntimeConfig::default(), &c.resources);
        }
    }
    let _ = ProcessConfig::load(&dir.join("config.json"));
}

pub fn pod(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = config::from_json::<PodConfig>(&text) {
        let back = serde_json::to_string(&p).unwrap();
        let again: PodConfig = config::from_json(&back).unwrap();
        assert_eq!(again, p, "pod config does not round-trip");
    }
    if let Ok(c) = config::from_json::<ContainerConfig>(&text) {
        let back = serde_json::to_string(&c).unwrap();
        let again: ContainerConfig = config::from_json(&back).unwrap();
        assert_eq!(again, c, "container config does not round-trip");
    }
}

pub fn runtime_config(data: &[u8]) {
    // The last 40 bytes, when there are that many, are a container's resources to size.
    let (text, tail) = data.split_at(data.len().saturating_sub(40));
    let text = String::from_utf8_lossy(if data.len() > 40 { text } else { data });
    let Ok(cfg) = RuntimeConfig::parse(&text) else {
        return;
    };
    let mut inp = Input::new(tail);
    let res = config::Resources {
        memory_limit: Some(inp.u64() as i64),
        cpu_quota: Some(inp.u64() as i64),
        cpu_period: Some(inp.u64()),
        cpuset: Some(format!("{}-{}", inp.u8(), inp.u8())),
        memory_swap: Some(i64::from(inp.u32() as i32)),
        cpu_shares: Some(u64::from(inp.u32())),
        pids_limit: None,
        devices: None,
    };
    size(&cfg, &res);
}

#[test]
fn fuzz_oci_config() {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("ember-fuzz-oci-")).unwrap();
    std::fs::create_dir(dir.as_path().join("rootfs")).unwrap();
    let d = dir.as_path().to_path_buf();
    fuzz::run(&OCI, |data| oci(data, &d));
}

#[test]
fn fuzz_pod_config() {
    fuzz::run(&POD, pod);
}

#[test]
fn fuzz_runtime_config() {
    fuzz::run(&RUNTIME, runtime_config);
}
