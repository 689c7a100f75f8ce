//! The `ember` command line. Each command group lives in its own file:
//! `vm` (boot a VM directly), `pod` and `container` (the virtcontainers-shaped API), and the
//! runc-compatible OCI commands (`oci`).

use clap::{Parser, Subcommand};

pub mod container;
pub mod oci;
mod output;
pub mod pod;
pub mod template;
pub mod vm;

use std::path::PathBuf;

/// ember: containers in KVM microVMs, one process.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a microVM directly and show its console.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Pods: create, start, stop, delete, run, list, status, pause, resume.
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// Containers in a pod: create, start, stop, delete, exec, status, kill, ps.
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Template pods: snapshots of a booted pod that pods start from instead of booting.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// runc-compatible OCI runtime commands (create, start, state, kill, delete, ...).
    #[command(flatten)]
    Oci(oci::OciCommand),
}

pub use crate::error::report;

/// Global flags, accepted before any command as runc does.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// State root (default /run/ember).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Log file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: crate::logging::Format,
    /// Debug logging (to the --log file).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility; ember's containers live in VMs, not host cgroups.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (checkpointing is not supported).
    #[arg(long, global = true, value_name = "PATH")]
    pub criu: Option<String>,
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    // A pod's VMM process installs its own logging, from its pod's record.
    let vmm_process = matches!(cli.command, Command::Pod(pod::PodCommand::Vmm { .. }));
    if !vmm_process {
        let cfg = crate::logging::Config {
            file: cli.global.log.clone(),
            also: None,
            format: cli.global.log_format,
            debug: cli.global.debug,
            errors_to_stderr: true,
        };
        if let Err(e) = crate::logging::init(&cfg) {
            eprintln!("ember: {}", report(&e));
            return 1;
        }
    }
    match cli.command {
        Command::Vm(cmd) => vm::run(cmd),
        Command::Pod(cmd) => pod::run(&cli.global, cmd),
        Command::Container(cmd) => container::run(&cli.global, cmd),
        Command::Template(cmd) => template::run(&cli.global, cmd),
        Command::Oci(cmd) => oci::run(&cli.global, cmd),
    }
}
