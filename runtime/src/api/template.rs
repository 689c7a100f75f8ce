//! Template pods: a pod booted once to agent ready and snapshotted, from which other pods
//! start by restore instead of booting (their memory mapped copy-on-write from the
//! template's memory file, so the pages they only read are shared by all of them).

use super::{id, Error, PodConfig, Runtime};
use crate::pod_vmm::control::{self, Request, Response};
use crate::state::template::{templates_dir, TemplateRecord, SNAPSHOT_DIR, TEMPLATE_FILE};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A template as `ember template list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TemplateInfo {
    pub name: String,
    pub dir: PathBuf,
    #[serde(flatten)]
    pub record: TemplateRecord,
}

impl Runtime {
    /// `<root>/@templates/<name>`.
    pub fn template_dir(&self, name: &str) -> PathBuf {
        templates_dir(self.root()).join(name)
    }

    /// Boot a pod from `config`, snapshot its VM once the agent is ready into template
    /// `name`, and remove the pod. The template appears whole or not at all.
    pub fn create_template(&self, name: &str, config: PodConfig) -> Result<TemplateInfo, Error> {
        id::validate("template", name).map_err(Error::Id)?;
        if config.template.is_some() {
            return Err(Error::Config(
                "a template is made by booting: its pod config names no template".into(),
            ));
        }
        if !config.disks.is_empty() || config.network.is_some() {
            return Err(Error::Config(
                "a template's pod has no disks and no network (pods started from it bring their own)".into(),
            ));
        }
        if config.machine != crate::config::Machine::Vm {
            return Err(Error::Config("a template's pod runs in a VM".into()));
        }
        let dir = self.template_dir(name);
        if dir.exists() {
            return Err(Error::TemplateExists(name.to_string()));
        }
        let parent = templates_dir(self.root());
        std::fs::create_dir_all(&parent).map_err(|source| Error::Io {
            what: format!("Cannot create {}", parent.display()),
            source,
        })?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|source| Error::Io {
            what: format!("Cannot create {}", tmp.display()),
            source,
        })?;
        let pod = format!("template-{name}-{}", std::process::id());
        let made = self.snapshot_new_pod(name, &pod, config, &tmp);
        let _ = self.delete_pod(&pod, true);
        let made = made.and_then(|rec| {
            std::fs::rename(&tmp, &dir).map_err(|source| Error::Io {
                what: format!("Cannot create {}", dir.display()),
                source,
            })?;
            Ok(rec)
        });
        match made {
            Ok(record) => Ok(TemplateInfo {
                name: name.to_string(),
                dir,
                record,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn snapshot_new_pod(
        &self,
        name: &str,
        pod: &str,
        config: PodConfig,
        tmp: &Path,
    ) -> Result<TemplateRecord, Error> {
        let mut record = TemplateRecord::new(name, &config).map_err(|source| Error::Io {
            what: "Cannot read the template's kernel or initrd".into(),
            source,
        })?;
        self.run_pod(pod, config)?;
        let socket = self.pod_dir(pod).join(crate::pod_vmm::CONTROL_SOCKET);
        let answer = control::request(
            &socket,
            &Request::Snapshot {
                dir: tmp.join(SNAPSHOT_DIR),
            },
            crate::timeouts::SNAPSHOT,
        )
        .map_err(Error::Control)?;
        let Response::Snapshotted(info) = answer else {
            return Err(Error::Config(format!(
                "unexpected answer to a snapshot: {answer:?}"
            )));
        };
        record.state_bytes = info.state_bytes;
        record.memory_bytes = info.memory_bytes;
        record.memory_written = info.memory_written;
        record.store(tmp).map_err(Error::State)?;
        Ok(record)
    }

    /// Snapshot the running (or paused) pod's VM into the new directory `dir`; the pod runs
    /// on. (`ember vm restore DIR` starts a copy of it; a template is one made at agent
    /// ready.) A VM whose shared filesystem the guest has mounted is refused.
    pub fn snapshot_pod(&self, pod: &str, dir: &Path) -> Result<vmm::SnapshotInfo, Error> {
        let dir = std::path::absolute(dir).map_err(|source| Error::Io {
            what: format!("Bad snapshot path {}", dir.display()),
            source,
        })?;
        let request = Request::Snapshot { dir };
        match self.ask_running_pod(pod, "snapshot it", &request, crate::timeouts::SNAPSHOT)? {
            Response::Snapshotted(info) => Ok(info),
            other => Err(unexpected("a snapshot", other)),
        }
    }

    /// What the devices of pod `pod`'s running VM counted (frames dropped, requests that
    /// waited for a rate limiter).
    pub fn pod_counters(&self, pod: &str) -> Result<Vec<vmm::DeviceCounters>, Error> {
        let action = "read its devices' counters";
        match self.ask_running_pod(pod, action, &Request::Counters, control::DEFAULT_TIMEOUT)? {
            Response::Counters(c) => Ok(c),
            other => Err(unexpected("a counters request", other)),
        }
    }

    /// One request to the pod process of running (or paused) pod `pod`, under its read lock;
    /// another state is refused with `action` (what could not be done).
    fn ask_running_pod(
        &self,
        pod: &str,
        action: &'static str,
        request: &Request,
        timeout: std::time::Duration,
    ) -> Result<Response, Error> {
        let (_lock, pod_dir, rec) = self.open(pod, crate::state::LockKind::Read)?;
        if !matches!(
            rec.state,
            crate::state::State::Running | crate::state::State::Paused
        ) {
            return Err(Error::PodNotRunning {
                id: pod.to_string(),
                state: rec.state,
                action,
            });
        }
        let socket = pod_dir.join(crate::pod_vmm::CONTROL_SOCKET);
        control::request(&socket, request, timeout).map_err(Error::Control)
    }

    /// Every template, by name.
    pub fn list_templates(&self) -> Result<Vec<TemplateInfo>, Error> {
        let parent = templates_dir(self.root());
        let entries = match std::fs::read_dir(&parent) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("Cannot read {}", parent.display()),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().join(TEMPLATE_FILE).is_file() {
                continue;
            }
            let record = TemplateRecord::load(&entry.path()).map_err(Error::State)?;
            out.push(TemplateInfo {
                name,
                dir: entry.path(),
                record,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remove template `name`. Pods already started from it keep running (their memory maps
    /// the unlinked file).
    pub fn delete_template(&self, name: &str) -> Result<(), Error> {
        id::validate("template", name).map_err(Error::Id)?;
        let dir = self.template_dir(name);
        if !dir.join(TEMPLATE_FILE).is_file() {
            return Err(Error::TemplateNotFound(name.to_string()));
        }
        std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
            what: format!("Cannot remove {}", dir.display()),
            source,
        })
    }

    /// Whether a pod with `config` can start from template `name`; why not otherwise.
    pub fn template_fits(&self, name: &str, config: &PodConfig) -> Result<(), String> {
        self.template_snapshot("-", name, config)
            .map(|_| ())
            .map_err(|e| crate::error::report(&e))
    }

    /// The snapshot pod `pod` with `config` starts from for template `name`, or why it
    /// cannot (as an error: the pod's config names the template).
    pub(crate) fn template_snapshot(
        &self,
        pod: &str,
        name: &str,
        config: &PodConfig,
    ) -> Result<PathBuf, Error> {
        id::validate("template", name).map_err(Error::Id)?;
        let dir = self.template_dir(name);
        if !dir.join(TEMPLATE_FILE).is_file() {
            return Err(Error::TemplateNotFound(name.to_string()));
        }
        let record = TemplateRecord::load(&dir).map_err(Error::State)?;
        if let Some(why) = record.mismatch(config) {
            return Err(Error::TemplateMismatch {
                pod: pod.to_string(),
                template: name.to_string(),
                why,
            });
        }
        Ok(dir.join(SNAPSHOT_DIR))
    }
}

/// A pod process's answer that does not fit the request.
fn unexpected(to: &str, answer: Response) -> Error {
    Error::Config(format!("unexpected answer to {to}: {answer:?}"))
}
