//! The `ember` binary: parse the command line, run it, print the error chain on failure. Run
//! as `containerd-shim-ember-v2` (a link to it), it is containerd's shim v2.

use clap::Parser;

fn main() {
    if runtime::oci::task::invoked_as_netns_holder() {
        runtime::oci::task::hold_netns();
    }
    if runtime::oci::task::invoked_as_shim() {
        runtime::oci::task::main();
    }
    let cli = runtime::cli::Cli::parse();
    std::process::exit(runtime::cli::run(cli));
}
