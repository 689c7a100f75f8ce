//! `ember container ...`: create, start, stop, delete, exec, status, kill, ps, wait.

use super::output::{outln, to_json};
use crate::api::{ContainerConfig, ContainerInfo, RootfsConfig, Runtime};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create a container in a pod.
    Create(Box<CreateArgs>),
    /// Start a created container.
    Start {
        pod: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a container (SIGTERM, then SIGKILL after a grace period).
    Stop {
        pod: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a ready or stopped container (--force: also a running one).
    Delete {
        pod: String,
        id: String,
        #[arg(long, short)]
        force: bool,
    },
    /// Run a command in a running container; exits with its exit code.
    Exec(ExecArgs),
    /// Status of a container.
    Status {
        pod: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send a signal (name or number, default SIGTERM) to the container's process.
    Kill {
        pod: String,
        id: String,
        signal: Option<String>,
        /// Signal every process of the container.
        #[arg(long)]
        all: bool,
    },
    /// List the container's processes.
    Ps {
        pod: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Wait for the container's process to end; exits with its exit code.
    Wait { pod: String, id: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub pod: String,
    pub id: String,
    /// Rootfs directory, packed into an ext4 image at pod start.
    #[arg(long, group = "rootfs_source")]
    pub rootfs: Option<PathBuf>,
    /// Rootfs image file, attached as a disk at pod start.
    #[arg(long, group = "rootfs_source")]
    pub rootfs_image: Option<PathBuf>,
    /// Rootfs is a disk the pod config declares (by id).
    #[arg(long, group = "rootfs_source")]
    pub rootfs_disk: Option<String>,
    /// Rootfs is a directory inside the guest.
    #[arg(long, group = "rootfs_source")]
    pub rootfs_guest_path: Option<String>,
    /// Rootfs directory shared live by virtio-fs (no copy; the container's writes land in it).
    #[arg(long, group = "rootfs_source")]
    pub rootfs_share: Option<PathBuf>,
    /// Attach the rootfs image (or share the directory) read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Host file or directory shared live into the container: SRC:DST or SRC:DST:ro
    /// (repeatable).
    #[arg(long, value_parser = parse_volume)]
    pub volume: Vec<crate::config::HostMount>,
    /// Full container config (JSON); the flags above override its rootfs and args.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// KEY=VALUE, repeatable.
    #[arg(long, short)]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// The container's command.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub pod: String,
    pub id: String,
    /// KEY=VALUE, repeatable.
    #[arg(long, short)]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<String>,
    /// Print the exec id and pid and return at once.
    #[arg(long, short, conflicts_with = "interactive")]
    pub detach: bool,
    /// Pass this command's stdin to the process (else it reads EOF at once).
    #[arg(long, short)]
    pub interactive: bool,
    #[arg(long)]
    pub exec_id: Option<String>,
    #[arg(last = true, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read container config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid container config {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Unknown signal {0:?}")]
    Signal(String),
    #[error(
        "Give a rootfs (--rootfs, --rootfs-image, --rootfs-disk, --rootfs-guest-path, --rootfs-share or --config)"
    )]
    NoRootfs,
    #[error(transparent)]
    Api(#[from] crate::api::Error),
    #[error("Cannot copy the process's output")]
    Io(#[source] std::io::Error),
}

pub fn run(global: &super::GlobalArgs, cmd: ContainerCommand) -> i32 {
    let rt = Runtime::from_flag(global.root.as_deref());
    match exec(&rt, cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ember: {}", super::report(&e));
            1
        }
    }
}

/// Parse a signal given as a number, `TERM` or `SIGTERM`.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| Error::Signal(s.to_string()));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| Error::Signal(s.to_string()))
}

fn exec(rt: &Runtime, cmd: ContainerCommand) -> Result<i32, Error> {
    match cmd {
        ContainerCommand::Create(a) => {
            let (pod, id, json) = (a.pod.clone(), a.id.clone(), a.json);
            let cfg = build_config(*a)?;
            show(&rt.create_container(&pod, &id, cfg)?, json);
        }
        ContainerCommand::Start { pod, id, json } => show(&rt.start_container(&pod, &id)?, json),
        ContainerCommand::Stop { pod, id, json } => show(&rt.stop_container(&pod, &id)?, json),
        ContainerCommand::Delete { pod, id, force } => rt.delete_container(&pod, &id, force)?,
        ContainerCommand::Status { pod, id, json } => show(&rt.container_status(&pod, &id)?, json),
        ContainerCommand::Kill {
            pod,
            id,
            signal,
            all,
        } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            rt.kill_container(&pod, &id, sig, all)?;
        }
        ContainerCommand::Ps { pod, id, json } => {
            let procs = rt.container_processes(&pod, &id)?;
            if json {
                outln!("{}", to_json(&procs));
            } else {
                outln!("{:>8} CMD", "PID");
                for p in procs {
                    outln!("{:>8} {}", p.pid, p.cmd);
                }
            }
        }
        ContainerCommand::Exec(a) => return exec_process(rt, a),
        ContainerCommand::Wait { pod, id } => return Ok(rt.wait_process(&pod, &id, None)?),
    }
    Ok(0)
}

fn build_config(a: CreateArgs) -> Result<ContainerConfig, Error> {
    let mut cfg = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
                path: path.clone(),
                source,
            })?;
            crate::config::from_json(&text).map_err(|source| Error::ParseConfig {
                path: path.clone(),
                source,
            })?
        }
        None => ContainerConfig::default(),
    };
    let rootfs = if let Some(p) = a.rootfs {
        Some(RootfsConfig::Dir { path: p })
    } else if let Some(p) = a.rootfs_image {
        Some(RootfsConfig::Image {
            path: p,
            read_only: a.read_only,
        })
    } else if let Some(id) = a.rootfs_disk {
        Some(RootfsConfig::Disk { id })
    } else if let Some(p) = a.rootfs_share {
        Some(RootfsConfig::Share {
            path: p,
            read_only: a.read_only,
        })
    } else {
        a.rootfs_guest_path
            .map(|path| RootfsConfig::GuestPath { path })
    };
    match rootfs {
        Some(r) => cfg.rootfs = r,
        None if a.config.is_none() => return Err(Error::NoRootfs),
        None => {}
    }
    if !a.args.is_empty() {
        cfg.process.args = a.args;
    }
    cfg.host_mounts.extend(a.volume);
    cfg.process.env.extend(a.env);
    if let Some(cwd) = a.cwd {
        cfg.process.cwd = cwd;
    }
    if a.hostname.is_some() {
        cfg.hostname = a.hostname;
    }
    Ok(cfg)
}

/// `SRC:DST[:ro|rw]` of `--volume`.
fn parse_volume(s: &str) -> Result<crate::config::HostMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [src, dst] => (*src, *dst, vec![]),
        [src, dst, o @ ("ro" | "rw")] => (*src, *dst, vec![o.to_string()]),
        _ => return Err(format!("volume {s:?} is not SRC:DST or SRC:DST:ro")),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        return Err(format!("volume {s:?}: both paths must be absolute"));
    }
    Ok(crate::config::HostMount {
        source: src.into(),
        destination: dst.to_string(),
        options: opts,
    })
}

fn exec_process(rt: &Runtime, a: ExecArgs) -> Result<i32, Error> {
    let mut process = crate::api::ProcessSpec::new(a.args);
    process.env.extend(a.env);
    if let Some(cwd) = a.cwd {
        process.cwd = cwd;
    }
    let (exec_id, pid) = rt.exec_start(&a.pod, &a.id, a.exec_id.as_deref(), process)?;
    if a.detach {
        outln!("{exec_id} {pid}");
        return Ok(0);
    }
    let eid = Some(exec_id.as_str());
    // Our stdio, relayed; without -i the process's stdin is empty.
    let stdio = crate::api::Stdio::inherit().map_err(Error::Io)?;
    let stdio = if a.interactive {
        stdio
    } else {
        let null = std::fs::File::open("/dev/null").map_err(Error::Io)?;
        crate::api::Stdio {
            stdin: null.into(),
            ..stdio
        }
    };
    crate::api::Relays::attach(rt, &a.pod, &a.id, eid, stdio)?.join();
    Ok(rt.wait_process(&a.pod, &a.id, eid)?)
}

fn show(c: &ContainerInfo, json: bool) {
    if json {
        outln!("{}", to_json(c));
        return;
    }
    let pid = c.pid.map(|p| format!(" pid {p}")).unwrap_or_default();
    let code = c
        .exit_code
        .map(|c| format!(" exit {c}"))
        .unwrap_or_default();
    outln!("container {} {}{pid}{code}", c.id, c.state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn volumes_are_src_dst_and_an_optional_mode() {
        let v = parse_volume("/srv/data:/data:ro").unwrap();
        assert_eq!(v.source, PathBuf::from("/srv/data"));
        assert_eq!(v.destination, "/data");
        assert!(v.read_only());
        assert!(!parse_volume("/a:/b").unwrap().read_only());
        for bad in ["/a", "/a:/b:xx", "a:/b", "/a:b", "/a:/b:ro:rw"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }
}
