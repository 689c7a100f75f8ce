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
    /// Boot the virtual KVM host, run scenario scripts in it, report their sections.
    Run {
        /// Scenario script (busybox sh); repeat for several, or give a directory.
        #[arg(long, required = true)]
        scenario: Vec<PathBuf>,
        /// Extra host file or directory SRC copied to DST in the virtual host.
        #[arg(long = "add", value_name = "SRC:DST")]
        add: Vec<String>,
        /// Limit for one boot of the host, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Restart the host when its console is silent this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        stall: u64,
        /// Boots allowed in all (stalls and scenario retry requests restart the host).
        #[arg(long, default_value_t = 3)]
        attempts: u32,
        /// Also write the console here.
        #[arg(long)]
        log: Option<PathBuf>,
        /// Extra host kernel command line.
        #[arg(long)]
        cmdline: Option<String>,
        /// QEMU -cpu model for the host.
        #[arg(long, default_value = rig::vhost::DEFAULT_CPU)]
        cpu: String,
        /// Do not print the console live.
        #[arg(long)]
        quiet: bool,
        /// Run the scenario files that failed once more, in a fresh boot of the host.
        #[arg(long)]
        rerun_failed: bool,
        /// Attach the Debian root (scripts/build-debian-host.sh) as /dev/vda, with the OCI
        /// scenarios' memory and the CRI client, as the slow tier's OCI host has them.
        #[arg(long)]
        debian: bool,
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
        Cmd::Run {
            scenario,
            add,
            timeout,
            stall,
            attempts,
            log,
            cmdline,
            cpu,
            quiet,
            rerun_failed,
            debian,
        } => {
            let debian = if debian {
                Some(rig::debian::DebianHost::new(None)?)
            } else {
                None
            };
            let base = match &debian {
                Some(d) => d.host().clone(),
                None => rig::VirtualHost::new()?,
            };
            let mut host = base
                .timeout(timeout)
                .max_attempts(attempts)
                .cpu(&cpu)
                .echo(!quiet)
                .rerun_failed(rerun_failed);
            if stall > 0 {
                host = host.stall(Some(std::time::Duration::from_secs(stall)));
            }
            if let Some(c) = cmdline {
                host = host.cmdline(&c);
            }
            if let Some(l) = log {
                host = host.log(l);
            }
            for s in scenario {
                if s.is_dir() {
                    for f in rig::vhost::scenarios_in(&s)? {
                        host = host.scenario(f);
                    }
                } else {
                    host = host.scenario(s);
                }
            }
            for a in &add {
                let (src, dst) = rig::guest::parse_add(a)?;
                host = host.file(src, &dst);
            }
            let report = match debian {
                Some(d) => d.configure(|_| host).run()?,
                None => host.run()?,
            };
            eprintln!(
                "ember-rig: {:?} after {:.1} s, {} attempt(s), host up at {}",
                report.outcome,
                report.wall.as_secs_f64(),
                report.attempts,
                report
                    .host_up
                    .map(|d| format!("{:.1} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "never".into())
            );
            for r in &report.restarts {
                eprintln!("ember-rig: restarted: {r}");
            }
            for r in &report.reruns {
                eprintln!(
                    "ember-rig: ran again: {} (first run: {})",
                    r.scenarios.join(" "),
                    r.why
                );
            }
            for (name, sec) in &report.sections {
                let state = if sec.rc == 0 { "ok" } else { "FAILED" };
                eprintln!("ember-rig: section {name}: rc={} {state}", sec.rc);
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
