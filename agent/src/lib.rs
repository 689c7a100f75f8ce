//! ember's guest agent library: the host<->agent protocol (shared with the runtime) and the
//! agent's own logic. The `ember-agent` binary is PID 1 in the guest; on a host it runs as a
//! normal process (`ember-agent --listen unix:PATH`) for tests.
//!
//! - [`protocol`]: wire format and message types; [`client`]: the host-side client.
//! - [`server`] answers requests with the containers of [`container`], started through
//!   [`spawn`] and the re-exec'd [`helper`]; [`reaper`] collects exit statuses.
//! - [`init`]: PID 1 duties; [`config`]: flags and kernel cmdline; [`transport`]: sockets.
//! - [`restore`]: making a guest restored from a snapshot its own (entropy, clock, hostname).

pub mod caps;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod container;
pub mod devcgroup;
pub mod helper;
pub mod init;
pub mod mounts;
pub mod netconf;
pub mod netif;
pub mod netlink;
pub mod protocol;
pub mod reaper;
pub mod restore;
pub mod server;
pub mod spawn;
pub mod stdio;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Logs an error line on stderr (the console as PID 1).
pub fn log_error(msg: &str) {
    eprintln!("ember-agent: {msg}");
}

/// Logs a line when `ember.debug` / `--debug` is set.
pub fn log_debug(msg: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        eprintln!("ember-agent: {msg}");
    }
}

/// An error and its causes, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid configuration")]
    Config(#[source] config::Error),
    #[error("Cannot listen for requests")]
    Listen(#[source] transport::Error),
    #[error("Cannot create the state directory {path}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the agent with `args` (without argv[0]). Returns only on a startup error.
pub fn run(args: &[String]) -> Result<(), Error> {
    let pid1 = std::process::id() == 1;
    // Only in a real guest's PID 1: the boot timer (a raw physical-memory write) and what
    // `Restored` changes of the whole machine (clock, hostname, kernel entropy).
    let mut guest = false;
    if pid1 {
        init::ensure_console();
        match init::mount_dev() {
            Ok(()) => init::ensure_console(),
            Err(e) => log_error(&error_chain(&e)),
        }
        init::mount_early();
        guest = init::in_initial_pid_ns();
        if guest {
            if let Err(e) = init::boot_timer(init::BOOT_TIMER_INIT_START) {
                log_debug(&format!("boot timer: {}", error_chain(&e)));
            }
        }
    }
    let cmdline = if pid1 {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let cfg = config::Config::parse(args, pid1, &cmdline).map_err(Error::Config)?;
    DEBUG.store(cfg.debug, Ordering::Relaxed);
    log_debug(&format!("config: {cfg:?}"));

    if pid1 {
        if let Some(name) = &cfg.hostname {
            if let Err(e) = init::set_hostname(name) {
                log_error(&error_chain(&e));
            }
        }
        if let Err(e) = netif::loopback_up() {
            log_error(&format!("Cannot bring up lo: {e}"));
        }
    } else {
        become_host_agent();
    }
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| Error::StateDir {
        path: cfg.state_dir.display().to_string(),
        source,
    })?;
    let cgroup_root = cfg.cgroup_root.clone().filter(|root| {
        let ok = cgroup::is_cgroup2(root);
        if !ok {
            log_error(&format!(
                "{} is not cgroup v2: containers run without cgroups (no pause/resume)",
                root.display()
            ));
        }
        ok
    });
    if pid1 {
        if let Some(root) = &cgroup_root {
            init::setup_cgroups(root);
        }
    }
    let reaper = reaper::Reaper::start();
    let agent = Arc::new(container::Agent::new(
        container::AgentOptions {
            state_dir: cfg.state_dir.clone(),
            cgroup_root,
            no_pivot: cfg.no_pivot,
            guest,
        },
        reaper,
    ));
    // As PID 1 a missing vsock (no device, no kernel support) must not stop the guest:
    // report it, still print the ready line (boot tests wait for it), and keep trying.
    let listener = match transport::Listener::bind(&cfg.listen) {
        Ok(l) => Some(l),
        Err(e) if pid1 => {
            log_error(&format!("{}: not serving yet", error_chain(&e)));
            None
        }
        Err(e) => return Err(Error::Listen(e)),
    };

    println!("{}", protocol::READY_LINE);
    if guest {
        // The console is a tty whose driver transmits later (UART interrupts): wait until the
        // ready line has left the guest before the boot timer tells the VMM "ready" — a VMM
        // that stops on 123 (`ember vm run --exit-on-ready`) must not cut the line off.
        let _ = nix::sys::termios::tcdrain(std::io::stdout());
        if let Err(e) = init::boot_timer(init::BOOT_TIMER_READY) {
            log_debug(&format!("boot timer: {}", error_chain(&e)));
        }
    }
    let listener = match listener {
        Some(l) => l,
        None => bind_with_retry(&cfg.listen),
    };
    if let Some(ep) = cfg.announce.clone() {
        let hello = protocol::Hello {
            version: protocol::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            listen: cfg.listen.to_string(),
            uptime_ms: boottime_ms(),
        };
        let spawned = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || announce(&ep, &hello));
        if let Err(e) = spawned {
            log_error(&format!("Cannot start the announce thread: {e}"));
        }
    }
    let on_shutdown: Arc<server::ShutdownFn> = Arc::new(move |agent: &container::Agent| {
        for id in agent.ids() {
            if let Err(e) = agent.destroy(&id) {
                log_error(&error_chain(&e));
            }
        }
        if pid1 {
            init::kill_all_and_reboot();
        }
        std::process::exit(0);
    });
    server::serve(listener, agent, on_shutdown);
    Ok(())
}

/// Host mode (not PID 1): adopt orphans of our containers and, as root, keep our mounts in
/// a private mount namespace so they vanish with us.
fn become_host_agent() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if nix::unistd::geteuid().is_root() {
        let private = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).and_then(|_| {
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
        });
        if let Err(e) = private {
            log_error(&format!("Cannot make a private mount namespace: {e}"));
        }
    }
}

/// Milliseconds since boot (CLOCK_BOOTTIME).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`, which outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec.max(0) as u64) * 1000 + (ts.tv_nsec.max(0) as u64) / 1_000_000
}

/// Binds `ep`, retrying with a growing pause (up to 5 s) until it works.
fn bind_with_retry(ep: &transport::Endpoint) -> transport::Listener {
    let mut delay = Duration::from_millis(100);
    loop {
        std::thread::sleep(delay);
        match transport::Listener::bind(ep) {
            Ok(l) => {
                log_error(&format!("listening on {ep} now"));
                return l;
            }
            Err(e) => log_debug(&format!("still cannot listen: {}", error_chain(&e))),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Sends the Hello frame to the host, retrying for a few seconds while it is not listening.
fn announce(ep: &transport::Endpoint, hello: &protocol::Hello) {
    let mut delay = Duration::from_millis(10);
    for _ in 0..20 {
        match transport::connect(ep) {
            Ok(mut conn) => {
                match protocol::send(&mut conn, hello) {
                    Ok(()) => log_debug(&format!("announced to {ep}")),
                    Err(e) => log_error(&format!("announce: {}", error_chain(&e))),
                }
                return;
            }
            Err(e) => {
                if let transport::Error::Connect { source, .. } = &e {
                    // No vsock transport (no device): retrying cannot help.
                    if matches!(
                        source.raw_os_error(),
                        Some(libc::ENODEV) | Some(libc::EAFNOSUPPORT)
                    ) {
                        log_error(&format!("Cannot announce: {}", error_chain(&e)));
                        return;
                    }
                }
                log_debug(&format!("announce: {}", error_chain(&e)));
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
    log_error(&format!("Could not announce readiness to {ep}"));
}
