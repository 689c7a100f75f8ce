//! `ember-agent`: PID 1 in an ember guest (or a host process for tests, see `agent::config`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(agent::spawn::HELPER_ARG) {
        agent::helper::main();
    }
    if let Err(e) = agent::run(&args) {
        agent::log_error(&agent::error_chain(&e));
        if std::process::id() == 1 {
            // PID 1 must not exit (kernel panic); reboot so the VMM sees the failure end.
            agent::init::kill_all_and_reboot();
        }
        std::process::exit(1);
    }
}
