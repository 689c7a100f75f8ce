//! `ember pod ...`: create, start, stop, delete, run, list, status, pause, resume (and the
//! hidden `__vmm`, the detached process that runs a pod's VM).

use crate::api::{PodConfig, PodInfo, Runtime};
use crate::config::Machine;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

use super::output::{out, outln, to_json};

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Create a pod (state ready) from a JSON config.
    Create(CreateArgs),
    /// Boot the pod's VM and create its containers in it.
    Start {
        id: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Create and start a pod.
    Run(CreateArgs),
    /// Shut the pod's VM down.
    Stop {
        id: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Delete a ready or stopped pod (--force: stop it first).
    Delete {
        id: String,
        #[arg(long, short)]
        force: bool,
    },
    /// List pods.
    List {
        #[command(flatten)]
        out: OutArgs,
    },
    /// Show a pod and its containers.
    Status {
        id: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Pause the pod's VM.
    Pause {
        id: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Resume a paused pod.
    Resume {
        id: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Save a snapshot of the pod's running VM into the new directory DIR (`ember vm
    /// restore DIR` starts a copy); the pod runs on.
    Snapshot {
        id: String,
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// What the devices of the pod's running VM counted: frames received, sent and dropped,
    /// requests and frames that waited for a rate limiter.
    Stats {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow the events of a running pod — a container's process exited, paused, resumed,
    /// its agent stopped answering, the VM ended — one line each, until the VM ends.
    Events {
        id: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Internal: the detached process that runs a pod's VM.
    #[command(name = "__vmm", hide = true)]
    Vmm { id: String },
    /// Internal: runs a pod process's poststop hooks for it (its main thread cannot start
    /// programs under its seccomp filter).
    #[command(name = "__hooks", hide = true)]
    Hooks,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Pod config (JSON); defaults for everything when absent.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    pub id: String,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct OutArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the phases of the last start (ms).
    #[arg(long)]
    pub timings: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read pod config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid pod config {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Api(#[from] crate::api::Error),
    #[error(transparent)]
    Vmm(#[from] crate::pod_vmm::Error),
}

/// The pod config at `path` (defaults without one). When `EMBER_POD_HOST_AGENT` names an agent
/// binary (test equipment) and the config names no machine, the pod gets the host-agent machine.
pub fn load_config(path: Option<&Path>) -> Result<PodConfig, Error> {
    let mut config = match path {
        None => PodConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
                path: path.to_path_buf(),
                source,
            })?;
            crate::config::from_json(&text).map_err(|source| Error::ParseConfig {
                path: path.to_path_buf(),
                source,
            })?
        }
    };
    if config.machine == Machine::Vm {
        config.machine = Machine::from_env();
    }
    Ok(config)
}

pub fn run(global: &super::GlobalArgs, cmd: PodCommand) -> i32 {
    let rt = Runtime::from_flag(global.root.as_deref());
    match exec(&rt, cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ember: {}", super::report(&e));
            1
        }
    }
}

fn exec(rt: &Runtime, cmd: PodCommand) -> Result<(), Error> {
    match cmd {
        PodCommand::Create(a) => {
            let cfg = load_config(a.config.as_deref())?;
            show(&rt.create_pod(&a.id, cfg)?, &a.out);
        }
        PodCommand::Start { id, out } => show(&rt.start_pod(&id)?, &out),
        PodCommand::Run(a) => {
            let cfg = load_config(a.config.as_deref())?;
            show(&rt.run_pod(&a.id, cfg)?, &a.out);
        }
        PodCommand::Stop { id, out } => show(&rt.stop_pod(&id)?, &out),
        PodCommand::Snapshot { id, dir, json } => {
            let info = rt.snapshot_pod(&id, &dir)?;
            if json {
                outln!("{}", to_json(&info));
            } else {
                outln!(
                    "snapshot {}: state {} bytes, memory {} MiB ({} MiB of data), vCPUs held {:.1} ms",
                    info.dir.display(),
                    info.state_bytes,
                    info.memory_bytes >> 20,
                    info.memory_written >> 20,
                    info.paused_ms
                );
            }
        }
        PodCommand::Stats { id, json } => {
            let counters = rt.pod_counters(&id)?;
            if json {
                outln!("{}", to_json(&counters));
            } else {
                for d in &counters {
                    let values: Vec<String> =
                        d.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    outln!("{}@{:#x} {}", d.device, d.base, values.join(" "));
                }
            }
        }
        PodCommand::Events { id, json } => rt.pod_events(&id, |ev| {
            if json {
                // One object per line (JSON lines), to be read as they come.
                outln!("{}", serde_json::to_string(ev).unwrap_or_default());
            } else {
                outln!("{}", event_line(ev));
            }
        })?,
        PodCommand::Delete { id, force } => rt.delete_pod(&id, force)?,
        PodCommand::List { out } => {
            let pods = rt.list_pods()?;
            if out.json {
                outln!("{}", to_json(&pods));
            } else {
                outln!(
                    "{:<24} {:<8} {:>8} {:>10}",
                    "POD",
                    "STATE",
                    "PID",
                    "CONTAINERS"
                );
                for p in &pods {
                    outln!(
                        "{:<24} {:<8} {:>8} {:>10}",
                        p.id,
                        p.state,
                        p.vmm_pid
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "-".into()),
                        p.containers.len()
                    );
                }
            }
        }
        PodCommand::Status { id, out } => show(&rt.pod_status(&id)?, &out),
        PodCommand::Pause { id, out } => show(&rt.pause_pod(&id)?, &out),
        PodCommand::Resume { id, out } => show(&rt.resume_pod(&id)?, &out),
        PodCommand::Vmm { id } => crate::pod_vmm::serve(&rt.pod_dir(&id))?,
        PodCommand::Hooks => std::process::exit(crate::hooks::serve_runner()),
    }
    Ok(())
}

/// One event as `ember pod events` prints it: the time (UTC, ms), then what happened.
fn event_line(ev: &crate::pod_vmm::protocol::EventRecord) -> String {
    use crate::pod_vmm::protocol::PodEvent;
    let what = match &ev.event {
        PodEvent::ContainerExited {
            container,
            code,
            signal: Some(sig),
        } => format!("container {container} exited: killed by signal {sig} (code {code})"),
        PodEvent::ContainerExited {
            container, code, ..
        } => format!("container {container} exited: code {code}"),
        PodEvent::Paused => "paused".to_string(),
        PodEvent::Resumed => "resumed".to_string(),
        PodEvent::AgentUnresponsive { reason } => format!("agent unresponsive: {reason}"),
        PodEvent::VmEnded { reason } => format!("vm ended: {reason}"),
    };
    let (secs, ms) = (ev.unix_ms / 1000, (ev.unix_ms % 1000) as u32);
    let t = crate::logging::rfc3339(secs, ms * 1_000_000);
    format!("{t} {what}")
}

fn show(p: &PodInfo, out: &OutArgs) {
    for w in &p.warnings {
        eprintln!("ember: warning: {w}");
    }
    if out.json {
        outln!("{}", to_json(p));
        return;
    }
    out!("pod {} {}", p.id, p.state);
    if let Some(pid) = p.vmm_pid {
        out!(" pid {pid}");
        if p.vmm_hosted {
            out!(" (VM hosted by this process)");
        }
    }
    if let Some(r) = &p.stop_reason {
        out!(" ({r})");
    }
    if let Some(s) = &p.starting {
        out!(" (being started by ember process {}", s.starter.pid);
        if let Some(v) = &s.vmm {
            out!(", pod process {}", v.pid);
        }
        out!(")");
    }
    outln!();
    for c in &p.containers {
        let code = c
            .exit_code
            .map(|c| format!(" exit {c}"))
            .unwrap_or_default();
        outln!("  container {} {}{code}", c.id, c.state);
    }
    if out.timings {
        eprintln!("{:<28} {:>12}", "PHASE", "MS");
        for ph in &p.timings {
            eprintln!("{:<28} {:>12.1}", ph.name, ph.ms);
        }
    }
}
