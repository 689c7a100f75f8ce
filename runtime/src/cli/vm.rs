//! `ember vm ...`: boot a microVM directly (owned by the VMM work).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a kernel and show the serial console.
    Run,
}

pub fn run(cmd: VmCommand) -> i32 {
    match cmd {
        VmCommand::Run => {
            eprintln!("ember: vm run is not built yet");
            1
        }
    }
}
