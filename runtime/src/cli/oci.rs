//! runc-compatible OCI runtime commands and the global flags runc takes, so podman
//! (`--runtime /usr/local/bin/ember`) and containerd (runc shim, `BinaryName`) can drive ember.

use super::output::outln;
use super::GlobalArgs;
use crate::oci::bundle::Bundle;
use crate::oci::ops::{self, CreateOpts, Ctx, ExecOpts, ExecProcessArgs, OpsError};
use crate::oci::state::{StateError, Store};
use crate::oci::vm::VmBackend;
use crate::oci::{features, signal};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Create a container from an OCI bundle (its process waits for `start`).
    Create {
        #[command(flatten)]
        opts: CreateArgs,
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print the OCI state of a container.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM) to a container.
    Kill {
        /// Signal all processes of the container.
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container's state (stopping it first with --force).
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Run a new process in a running container.
    Exec(Box<ExecArgs>),
    /// List the processes of a container.
    Ps {
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
        id: String,
        /// Options for ps (accepted for runc compatibility).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Pause (freeze) a running container.
    Pause { id: String },
    /// Resume a paused container.
    Resume { id: String },
    /// Change a container's resource limits (runc's flags; `--resources` takes a JSON
    /// `linux.resources` object, `-` for stdin, which the flags override).
    Update(Box<UpdateArgs>),
    /// List containers.
    List {
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Create and start a container, and wait for it unless detached.
    Run {
        #[command(flatten)]
        opts: CreateArgs,
        #[arg(long, short = 'd')]
        detach: bool,
        id: String,
    },
    /// Write a default config.json into the bundle.
    Spec {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// Accepted for runc compatibility.
        #[arg(long)]
        rootless: bool,
    },
    /// Print what this runtime supports (JSON).
    Features,
}

/// `update`'s flags (runc's set; those ember cannot apply are refused with a reason).
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// JSON file with a `linux.resources` object (`-`: stdin).
    #[arg(long, short = 'r')]
    resources: Option<PathBuf>,
    /// Memory limit (bytes, or with a unit: 512m).
    #[arg(long)]
    memory: Option<String>,
    /// Memory plus swap limit (-1: unlimited).
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpu-quota", allow_hyphen_values = true)]
    cpu_quota: Option<i64>,
    /// CPU shares (cgroup v1 units, converted to cpu.weight).
    #[arg(long = "cpu-share")]
    cpu_share: Option<u64>,
    /// Most tasks (0 or -1: unlimited).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    id: String,
}

/// `exec`'s flags (runc's set).
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// JSON file with an OCI process object.
    #[arg(long, short = 'p')]
    process: Option<PathBuf>,
    #[arg(long, short = 't')]
    tty: bool,
    #[arg(long, short = 'd')]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// UID[:GID]
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Additional groups of the process.
    #[arg(long = "additional-gids", short = 'g')]
    additional_gids: Vec<u32>,
    /// Accepted for runc compatibility.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility (no SELinux in the guest).
    #[arg(long = "process-label")]
    process_label: Option<String>,
    /// Accepted for runc compatibility (no AppArmor in the guest).
    #[arg(long)]
    apparmor: Option<String>,
    /// Set no_new_privileges for the process.
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "cap", short = 'c')]
    cap: Vec<String>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    cgroup: Vec<String>,
    /// Accepted for runc compatibility.
    #[arg(long = "ignore-paused")]
    ignore_paused: bool,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error("File config.json exists. Remove it first")]
    SpecExists,
    #[error("Cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Signal(#[from] signal::SignalError),
    #[error("Cannot print JSON")]
    Json(#[source] serde_json::Error),
}

impl From<StateError> for CliError {
    fn from(e: StateError) -> Self {
        CliError::Ops(e.into())
    }
}

/// Run one OCI command; returns the exit code.
pub fn run(global: &GlobalArgs, cmd: OciCommand) -> i32 {
    let ctx = Ctx {
        store: Store::new(global.root.as_deref()),
    };
    let what = command_name(&cmd);
    log::debug!("ember {what}");
    match dispatch(&ctx, global, cmd) {
        Ok(code) => code,
        Err(e) => {
            let msg = crate::error::report(&e);
            let msg = match what {
                "create" | "run" => format!("ember {what} failed: {msg}"),
                _ => msg,
            };
            log::error!("{msg}");
            1
        }
    }
}

fn command_name(cmd: &OciCommand) -> &'static str {
    match cmd {
        OciCommand::Create { .. } => "create",
        OciCommand::Start { .. } => "start",
        OciCommand::State { .. } => "state",
        OciCommand::Kill { .. } => "kill",
        OciCommand::Delete { .. } => "delete",
        OciCommand::Exec(_) => "exec",
        OciCommand::Ps { .. } => "ps",
        OciCommand::Pause { .. } => "pause",
        OciCommand::Resume { .. } => "resume",
        OciCommand::Update(_) => "update",
        OciCommand::List { .. } => "list",
        OciCommand::Run { .. } => "run",
        OciCommand::Spec { .. } => "spec",
        OciCommand::Features => "features",
    }
}

/// The flags `create` and `run` share.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Bundle directory (holds config.json).
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Write the container's host pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (terminal containers).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
}

impl From<CreateArgs> for CreateOpts {
    fn from(a: CreateArgs) -> Self {
        CreateOpts {
            bundle: a.bundle,
            pid_file: a.pid_file,
            console_socket: a.console_socket,
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(CliError::Json)?;
    outln!("{s}");
    Ok(())
}

/// The OCI face's pods: microVMs (the host agent where test equipment's
/// `EMBER_POD_HOST_AGENT` names one), logging to the engine's `--log` too.
fn backend(ctx: &Ctx, global: &GlobalArgs) -> VmBackend {
    VmBackend {
        root: ctx.store.root().to_path_buf(),
        machine: crate::config::Machine::from_env(),
        log: crate::config::LogConfig {
            file: global.log.clone(),
            format: global.log_format,
            debug: global.debug,
        },
        hosts_vms: false,
    }
}

fn dispatch(ctx: &Ctx, global: &GlobalArgs, cmd: OciCommand) -> Result<i32, CliError> {
    match cmd {
        OciCommand::Create { opts, id } => {
            ops::create(ctx, &id, &opts.into(), &backend(ctx, global))?;
            Ok(0)
        }
        OciCommand::Start { id } => {
            ops::start(ctx, &id)?;
            Ok(0)
        }
        OciCommand::State { id } => {
            print_json(&ops::state(ctx, &id)?)?;
            Ok(0)
        }
        OciCommand::Kill { all, id, signal } => {
            let sig = signal::parse(signal.as_deref().unwrap_or("SIGTERM"))?;
            ops::kill_container(ctx, &id, sig, all)?;
            Ok(0)
        }
        OciCommand::Delete { force, id } => {
            ops::delete(ctx, &id, force, &backend(ctx, global))?;
            Ok(0)
        }
        OciCommand::Exec(x) => {
            let ExecArgs {
                process,
                tty,
                detach,
                pid_file,
                console_socket,
                cwd,
                env,
                user,
                additional_gids,
                no_new_privs,
                id,
                args,
                ..
            } = *x;
            let a = ExecProcessArgs {
                args,
                env,
                cwd,
                user,
                tty,
            };
            let mut p = ops::exec_process(ctx, &id, process.as_deref(), &a)?;
            p.additional_gids.extend(additional_gids);
            p.no_new_privileges |= no_new_privs;
            let opts = ExecOpts {
                detach,
                pid_file,
                console_socket,
            };
            let code = ops::exec(ctx, &id, p, &opts)?;
            Ok(code)
        }
        OciCommand::Ps { format, id, .. } => {
            let procs = ops::ps(ctx, &id)?;
            match format {
                Format::Json => {
                    let pids: Vec<i32> = procs.iter().map(|(p, _)| *p).collect();
                    outln!("{}", serde_json::to_string(&pids).map_err(CliError::Json)?);
                }
                Format::Table => {
                    outln!("{:<10}CMD", "PID");
                    for (pid, cmd) in procs {
                        outln!("{pid:<10}{cmd}");
                    }
                }
            }
            Ok(0)
        }
        OciCommand::Pause { id } => {
            ops::pause(ctx, &id)?;
            Ok(0)
        }
        OciCommand::Resume { id } => {
            ops::resume(ctx, &id)?;
            Ok(0)
        }
        OciCommand::Update(u) => {
            let resources = match u.resources.as_deref() {
                None => None,
                Some(p) if p == Path::new("-") => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(
                        |source| CliError::Read {
                            path: p.to_path_buf(),
                            source,
                        },
                    )?;
                    Some(buf)
                }
                Some(p) => Some(std::fs::read(p).map_err(|source| CliError::Read {
                    path: p.to_path_buf(),
                    source,
                })?),
            };
            let size = |s: &Option<String>| s.as_deref().map(ops::ram_in_bytes).transpose();
            let opts = ops::UpdateOpts {
                resources,
                memory: size(&u.memory)?,
                memory_swap: size(&u.memory_swap)?,
                cpu_period: u.cpu_period,
                cpu_quota: u.cpu_quota,
                cpu_shares: u.cpu_share,
                pids_limit: u.pids_limit,
            };
            ops::update(ctx, &u.id, ops::update_limits(&opts)?)?;
            Ok(0)
        }
        OciCommand::List { format, quiet } => {
            let all = ops::list(ctx)?;
            if quiet {
                for s in &all {
                    outln!("{}", s.id);
                }
            } else if format == Format::Json {
                if all.is_empty() {
                    outln!("null");
                } else {
                    outln!("{}", serde_json::to_string(&all).map_err(CliError::Json)?);
                }
            } else {
                outln!(
                    "{:<12}{:<12}{:<12}{:<40}{:<32}OWNER",
                    "ID",
                    "PID",
                    "STATUS",
                    "BUNDLE",
                    "CREATED"
                );
                for s in &all {
                    outln!(
                        "{:<12}{:<12}{:<12}{:<40}{:<32}{}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created,
                        s.owner
                    );
                }
            }
            Ok(0)
        }
        OciCommand::Run { opts, detach, id } => Ok(ops::run(
            ctx,
            &id,
            &opts.into(),
            detach,
            &backend(ctx, global),
        )?),
        OciCommand::Spec { bundle, .. } => {
            write_spec(&bundle)?;
            Ok(0)
        }
        OciCommand::Features => {
            print_json(&features::features())?;
            Ok(0)
        }
    }
}

/// `spec`: a default config.json (oci-spec's defaults, runc's shape: `sh` in `rootfs`).
fn write_spec(bundle: &Path) -> Result<(), CliError> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(CliError::SpecExists);
    }
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_version(crate::oci::state::OCI_VERSION.to_string());
    let json = serde_json::to_string_pretty(&spec).map_err(CliError::Json)?;
    std::fs::write(&path, json + "\n").map_err(|source| CliError::Write { path, source })?;
    // What we wrote must load back as a bundle's config (rootfs aside).
    let _ = Bundle::load(bundle);
    Ok(())
}
