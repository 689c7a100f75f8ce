//! runc-compatible OCI runtime commands and the global flags runc takes (owned by the OCI work).

use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Global flags, accepted before any command as runc does.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// State root (default /run/ember).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Log file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true)]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Print the OCI state of a container.
    State { id: String },
}

pub fn run(_global: &GlobalArgs, cmd: OciCommand) -> i32 {
    match cmd {
        OciCommand::State { .. } => 1,
    }
}
