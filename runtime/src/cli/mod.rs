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

/// Print an error and its whole `source()` chain on one line, the way users read it.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        cur = e.source();
    }
    msg
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Vm(cmd) => vm::run(cmd),
        Command::Pod(cmd) => pod::run(&cli.global, cmd),
        Command::Container(cmd) => container::run(&cli.global, cmd),
        Command::Oci(cmd) => oci::run(&cli.global, cmd),
    }
}
