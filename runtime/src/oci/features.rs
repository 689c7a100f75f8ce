//! `ember features`: what this runtime recognises, in the JSON shape of runc's `features`
//! (OCI runtime-spec `features.md`).

use serde_json::{json, Value};

/// Mount options the guest agent applies as flags (anything else goes to the filesystem as
/// data).
pub const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
];

/// Namespaces a container gets inside the guest (`user` with the spec's uid/gid mappings,
/// as the guest kernel's ids: the VM's files are the host's, shared by virtio-fs).
pub const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

/// Hooks ember runs (on the host). `createContainer` and `startContainer` would run in the
/// container's namespaces, inside its VM, where host programs cannot.
pub const HOOKS: &[&str] = &["prestart", "createRuntime", "poststart", "poststop"];

/// What the annotation [`HOST_NAMESPACES`] says.
pub const HOST_NAMESPACES_NOTE: &str = "only a network namespace given by path is joined (the pod VM is connected to it); other namespaces given by path cannot be joined from inside a VM: the container gets its pod VM's";
/// Annotation key of [`HOST_NAMESPACES_NOTE`].
pub const HOST_NAMESPACES: &str = "io.github.ember.namespaces-by-path";

pub fn features() -> Value {
    let capabilities: Vec<String> = agent::caps::NAMES
        .iter()
        .map(|n| format!("CAP_{n}"))
        .collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": super::state::OCI_VERSION,
        "hooks": HOOKS,
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": capabilities,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "org.opencontainers.runc.version": env!("CARGO_PKG_VERSION"),
            "io.github.ember.vm": "kvm-microvm",
            HOST_NAMESPACES: HOST_NAMESPACES_NOTE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_as_oci_features() {
        let v = features();
        let f: oci_spec::runtime::Features = serde_json::from_value(v).unwrap();
        assert_eq!(f.oci_version_min(), "1.0.0");
        assert!(f
            .mount_options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
        assert_eq!(f.hooks().as_ref().unwrap().len(), HOOKS.len());
        let linux = f.linux().as_ref().unwrap();
        let caps = linux.capabilities().as_ref().unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()), "{caps:?}");
        assert!(caps.contains(&"CAP_CHECKPOINT_RESTORE".to_string()));
        let notes = f.annotations().as_ref().unwrap();
        assert!(notes[HOST_NAMESPACES].contains("cannot be joined"));
        let ns = linux.namespaces().as_ref().unwrap();
        assert!(
            ns.iter().any(|n| format!("{n:?}").to_lowercase() == "user"),
            "{ns:?}"
        );
        assert_eq!(ns.len(), NAMESPACES.len());
    }
}
