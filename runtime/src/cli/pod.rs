//! `ember pod ...` (owned by the pod API work).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// List pods.
    List,
}

pub fn run(_global: &super::oci::GlobalArgs, cmd: PodCommand) -> i32 {
    match cmd {
        PodCommand::List => 0,
    }
}
