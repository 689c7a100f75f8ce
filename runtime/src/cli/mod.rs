//! The `ember` command line. Each command group lives in its own file:
//! `vm` (boot a VM directly), `pod` and `container` (the virtcontainers-shaped API), and the
//! runc-compatible OCI commands (`oci`).

use clap::{Parser, Subcommand};

pub mod container;
pub mod oci;
pub mod pod;
pub mod vm;

/// ember: containers in KVM microVMs, one process.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: oci::GlobalArgs,
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
    /// runc-compatible OCI runtime commands (create, start, state, kill, delete, ...).
    #[command(flatten)]
    Oci(oci::OciCommand),
}

pub use crate::error::report;

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
        Command::Oci(cmd) => oci::run(&cli.global, cmd),
    }
}
