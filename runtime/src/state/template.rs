//! Template records: a template is a snapshot of a pod's VM taken once its agent was ready,
//! from which pods start instead of booting.
//!
//! ```text
//! <root>/@templates/<name>/template.json   the TemplateRecord (format_version inside)
//! <root>/@templates/<name>/snapshot/       the VM snapshot (state, memory: vmm::persist)
//! ```
//!
//! The record says what the template was made from (kernel and initrd, identified by path,
//! size and modification time; command line; memory; vCPUs; disk slots), so that a pod whose
//! configuration differs, or whose kernel has changed since, is not started from it.

use super::{load_versioned, now_unix, store_json, Error};
use crate::config::{Machine, PodConfig};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the templates live under a state root.
pub const TEMPLATES_DIR: &str = "@templates";
/// A template's record inside its directory.
pub const TEMPLATE_FILE: &str = "template.json";
/// The VM snapshot inside a template's directory.
pub const SNAPSHOT_DIR: &str = "snapshot";
/// Version of template records.
pub const TEMPLATE_FORMAT: u32 = 1;

/// A guest file as it was when the template was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            path: path.to_path_buf(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        })
    }

    /// Why the file is no longer the one recorded, if it is not.
    fn changed(&self, what: &str) -> Option<String> {
        match FileId::of(&self.path) {
            Err(e) => Some(format!("its {what} {} is gone ({e})", self.path.display())),
            Ok(now) if now != *self => Some(format!(
                "its {what} {} changed since it was made",
                self.path.display()
            )),
            Ok(_) => None,
        }
    }
}

/// What a template was made from and what its snapshot holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub format_version: u32,
    pub name: String,
    pub created_unix: u64,
    pub kernel: FileId,
    pub initrd: FileId,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub extra_cmdline: Vec<String>,
    pub mem_mib: u32,
    pub vcpus: u8,
    #[serde(default)]
    pub disk_slots: u8,
    /// The template's VM has a virtio-net device with no backend, for pods that join an
    /// engine's network.
    #[serde(default)]
    pub net_placeholder: bool,
    /// Sizes of the snapshot: its state file, guest memory, and the memory file's data (the
    /// rest of it is holes).
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub memory_written: u64,
}

impl TemplateRecord {
    /// The record of a template made from `config` now.
    pub fn new(name: &str, config: &PodConfig) -> std::io::Result<TemplateRecord> {
        Ok(TemplateRecord {
            format_version: TEMPLATE_FORMAT,
            name: name.to_string(),
            created_unix: now_unix(),
            kernel: FileId::of(&config.kernel_path())?,
            initrd: FileId::of(&config.initrd_path())?,
            cmdline: config.cmdline.clone(),
            extra_cmdline: config.extra_cmdline.clone(),
            mem_mib: config.mem_mib,
            vcpus: config.vcpus,
            disk_slots: config.disk_slots,
            net_placeholder: config.net_placeholder,
            state_bytes: 0,
            memory_bytes: 0,
            memory_written: 0,
        })
    }

    pub fn load(dir: &Path) -> Result<TemplateRecord, Error> {
        load_versioned(&dir.join(TEMPLATE_FILE), TEMPLATE_FORMAT)
    }

    pub fn store(&self, dir: &Path) -> Result<(), Error> {
        store_json(&dir.join(TEMPLATE_FILE), self)
    }

    /// Why a pod with `config` cannot start from this template, if it cannot: another
    /// kernel, initrd, command line, memory size, vCPU count or number of disk slots, disks
    /// of its own (the template has none), a kernel or initrd changed since the template was
    /// made.
    pub fn mismatch(&self, config: &PodConfig) -> Option<String> {
        if config.machine != Machine::Vm {
            return Some("the pod does not run in a VM".into());
        }
        let mut diffs = Vec::new();
        if config.kernel_path() != self.kernel.path {
            diffs.push(format!(
                "kernel {} (template: {})",
                config.kernel_path().display(),
                self.kernel.path.display()
            ));
        }
        if config.initrd_path() != self.initrd.path {
            diffs.push(format!(
                "initrd {} (template: {})",
                config.initrd_path().display(),
                self.initrd.path.display()
            ));
        }
        if config.cmdline != self.cmdline || config.extra_cmdline != self.extra_cmdline {
            diffs.push("another kernel command line".into());
        }
        if config.mem_mib != self.mem_mib {
            diffs.push(format!(
                "{} MiB of memory (template: {})",
                config.mem_mib, self.mem_mib
            ));
        }
        if config.vcpus != self.vcpus {
            diffs.push(format!("{} vCPUs (template: {})", config.vcpus, self.vcpus));
        }
        if config.disk_slots != self.disk_slots {
            diffs.push(format!(
                "{} disk slots (template: {})",
                config.disk_slots, self.disk_slots
            ));
        }
        match (config.network.is_some(), self.net_placeholder) {
            (true, false) => diffs.push("a network (template: none)".into()),
            (false, true) => diffs.push("no network (template: one)".into()),
            _ => {}
        }
        if !config.disks.is_empty() {
            diffs.push(format!(
                "{} disks of its own (template: none)",
                config.disks.len()
            ));
        }
        if !diffs.is_empty() {
            return Some(format!("the pod has {}", diffs.join(", ")));
        }
        self.kernel
            .changed("kernel")
            .or_else(|| self.initrd.changed("initrd"))
            .map(|why| format!("the template is stale: {why}"))
    }
}

/// The MAC of a template's placeholder NIC, which its restored guests keep until the agent
/// gives the link the engine's MAC.
pub const PLACEHOLDER_MAC: [u8; 6] = [0x02, 0x65, 0x6d, 0x62, 0x72, 0x00];

/// `<root>/@templates`.
pub fn templates_dir(root: &Path) -> PathBuf {
    root.join(TEMPLATES_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(dir: &Path) -> PodConfig {
        std::fs::write(dir.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(dir.join("initrd"), b"initrd").unwrap();
        PodConfig {
            kernel: Some(dir.join("vmlinux")),
            initrd: Some(dir.join("initrd")),
            ..PodConfig::default()
        }
    }

    #[test]
    fn a_template_fits_the_pods_it_was_made_for_only() {
        let dir = super::super::test_dir("template-fit");
        let config = guest(&dir);
        let rec = TemplateRecord::new("t", &config).unwrap();
        assert_eq!(rec.mismatch(&config), None);
        rec.store(&dir).unwrap();
        assert_eq!(TemplateRecord::load(&dir).unwrap(), rec);

        let other = PodConfig {
            mem_mib: config.mem_mib * 2,
            vcpus: 2,
            ..config.clone()
        };
        let why = rec.mismatch(&other).unwrap();
        assert!(
            why.contains("MiB of memory") && why.contains("2 vCPUs"),
            "{why}"
        );
        let why = rec
            .mismatch(&PodConfig {
                extra_cmdline: vec!["x".into()],
                ..config.clone()
            })
            .unwrap();
        assert!(why.contains("command line"), "{why}");

        // The kernel rebuilt since: stale.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.join("vmlinux"), b"another kernel").unwrap();
        let why = rec.mismatch(&config).unwrap();
        assert!(why.contains("stale") && why.contains("changed"), "{why}");
        // Gone.
        std::fs::remove_file(dir.join("vmlinux")).unwrap();
        let why = rec.mismatch(&config).unwrap();
        assert!(why.contains("is gone"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn template_records_of_a_newer_format_are_refused() {
        let dir = super::super::test_dir("template-version");
        std::fs::write(
            dir.join(TEMPLATE_FILE),
            br#"{"format_version": 99, "name": "t"}"#,
        )
        .unwrap();
        assert!(matches!(
            TemplateRecord::load(&dir),
            Err(Error::FutureVersion { found: 99, .. })
        ));
        std::fs::write(dir.join(TEMPLATE_FILE), br#"{"name": "t"}"#).unwrap();
        assert!(matches!(
            TemplateRecord::load(&dir),
            Err(Error::NoVersion { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
