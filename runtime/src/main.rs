//! The `ember` binary: parse the command line, run it, print the error chain on failure.

use clap::Parser;

fn main() {
    let cli = runtime::cli::Cli::parse();
    std::process::exit(runtime::cli::run(cli));
}
