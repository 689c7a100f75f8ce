//! `ember container ...` (owned by the pod API work).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Status of a container.
    Status { pod: String, id: String },
}

pub fn run(_global: &super::oci::GlobalArgs, cmd: ContainerCommand) -> i32 {
    match cmd {
        ContainerCommand::Status { .. } => 1,
    }
}
