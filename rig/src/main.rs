//! `ember-rig`: builds initramfs images and runs scenarios in the virtual KVM host.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember-rig", about = "ember's test equipment")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a guest initramfs: /init = the agent, busybox + applets, /dev/console.
    Initramfs {
        /// The static agent binary, installed as /init.
        #[arg(long)]
        agent: PathBuf,
        /// A static busybox, installed as /bin/busybox with applet links.
        #[arg(long)]
        busybox: Option<PathBuf>,
        /// Where to write the uncompressed cpio archive.
        #[arg(long)]
        out: PathBuf,
        /// Extra host file or directory SRC copied to DST in the image.
        #[arg(long = "add", value_name = "SRC:DST")]
        add: Vec<String>,
    },
}

fn print_chain(err: &dyn std::error::Error) {
    eprintln!("ember-rig: {err}");
    let mut cause = err.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            print_chain(e.as_ref());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.cmd {
        Cmd::Initramfs {
            agent,
            busybox,
            out,
            add,
        } => {
            let extra = add
                .iter()
                .map(|a| rig::guest::parse_add(a))
                .collect::<Result<Vec<_>, _>>()?;
            let n = rig::guest::GuestImage {
                agent,
                busybox,
                extra,
            }
            .write(&out)?;
            eprintln!("ember-rig: wrote {} ({n} entries)", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
