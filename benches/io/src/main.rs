//! io-bench: I/O benchmarks for ember's virtio devices.
//!
//! - `io-bench micro`: host-side micro-benchmark of the device code (virtio-blk, vsock, rng)
//!   over mock queues, real files and real Unix sockets. Needs no KVM.
//! - as `/init` of a guest (pid 1, or `io-bench guest`): mounts /dev, runs sequential
//!   virtio-blk read/write on /dev/vda, then serves vsock port 5000 for `host-vsock`, and
//!   reboots when told to quit.
//! - `io-bench host-vsock --uds PATH`: the host side of the vsock benchmark (throughput both
//!   ways, round-trip latency, connect latency) through ember's hybrid Unix socket.
//! - `io-bench files --dir DIR`: the file workload (sequential, 10 000 small files) on a host
//!   directory, the baseline for the same workload over virtio-fs and ext4 in a guest
//!   (`io_bench.fs=SHARE`, `io_bench.ext4=/dev/vdX` on the guest's command line).
//! - `vsock-echo-serve`, `unix-echo-serve`, `vsock-echo`, `host-echo`: echo round trips with
//!   the data checked, for the end-to-end device tests (see `echo.rs`).
//! - `virtq-bad --device-id N`: a misbehaving virtio driver in a guest's user space: it takes
//!   a device from the guest kernel and posts malformed descriptor chains (see `virtq.rs`).
//! - `vsock-flood`, `unix-hold-serve`: a guest that opens (and writes to) vsock connections as
//!   fast as it can, and host listeners that hold or never accept them, for the slow tier's
//!   containment checks (see `flood.rs`); `udp-flood`: a guest that sends UDP as fast as it
//!   can; `rt-hog`: a guest process that starves all the others.
//!
//! Every mode prints a table; see benches/io/README.md.

mod echo;
mod files;
mod flood;
mod guest;
mod host;
mod micro;
mod virtq;

use std::process::ExitCode;

/// Vsock port the guest side serves.
pub const BENCH_PORT: u32 = 5000;

/// `--name value` from the arguments, parsed.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|_| format!("bad value for {name}")),
    }
}

/// Megabytes per second.
pub fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / secs / 1e6
}

/// The modes below, by name.
const MODES: &[&str] = &[
    "micro",
    "files",
    "guest",
    "host-vsock",
    "vsock-echo-serve",
    "unix-echo-serve",
    "vsock-echo",
    "host-echo",
    "vsock-flood",
    "unix-hold-serve",
    "rt-hog",
    "virtq-bad",
    "udp-flood",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // PID 1 of a VM is the guest test, unless a mode is named: a container's first process
    // (`sh -c '… ; io-bench rt-hog'`, which the shell execs) is PID 1 of its namespace too.
    let named = args
        .get(1)
        .map(String::as_str)
        .filter(|m| MODES.contains(m));
    let (mode, rest) = match named {
        Some(m) => (m, &args[1..]),
        None if pid == 1 => ("guest", &args[..]),
        None => (
            args.get(1).map(String::as_str).unwrap_or("help"),
            &args[1.min(args.len())..],
        ),
    };
    let result = match mode {
        "micro" => micro::run(rest),
        "files" => files::run(rest),
        "guest" => guest::run(rest),
        "host-vsock" => host::run(rest),
        "vsock-echo-serve" => echo::vsock_serve(rest),
        "unix-echo-serve" => echo::unix_serve(rest),
        "vsock-echo" => echo::vsock_check(rest),
        "host-echo" => echo::host_check(rest),
        "vsock-flood" => flood::vsock_flood(rest),
        "unix-hold-serve" => flood::unix_hold_serve(rest),
        "rt-hog" => flood::rt_hog(rest),
        "virtq-bad" => virtq::bad_queue(rest),
        "udp-flood" => flood::udp_flood(rest),
        _ => Err(
            "usage: io-bench micro [--mib N] | files --dir DIR [--label L] [--mib N] [--files N] | guest [--dev PATH] [--mib N] [--no-vsock] | host-vsock --uds PATH [--port P] \
             [--mib N] [--pings N] [--connects N] [--quit] | vsock-echo-serve --port P [--count N] \
             | unix-echo-serve --path PATH [--count N] | vsock-echo --cid C --port P [--bytes N] \
             | host-echo --uds PATH --port P [--bytes N] \
             | vsock-flood --cid C --port P --conns N [--write] \
             | unix-hold-serve --path PATH [--backlog N] [--no-accept] | rt-hog | virtq-bad [--device-id N] \
             | udp-flood --to IP:PORT [--secs N] [--size B]"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("io-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
