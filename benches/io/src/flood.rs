//! A misbehaving guest's programs and the host listeners they aim at, for the slow tier's
//! containment checks (rig/scenarios/30-pods.sh, pods-vsock-flood and pods-agent-silent).
//!
//! - `vsock-flood --cid C --port P --conns N [--write]` (guest): opens up to N connections to
//!   CID C port P one after another, keeps every one that was accepted and, with `--write`,
//!   writes to the first few as fast as the device takes it; prints how many opened and how many were
//!   refused, then holds them until killed.
//! - `unix-hold-serve --path PATH [--backlog N] [--no-accept]` (host): a listener at `PATH`
//!   (ember's `<uds>_P`) that accepts connections and holds them without reading, or, with
//!   `--no-accept`, never accepts (its backlog fills).
//! - `udp-flood --to IP:PORT --secs N [--size B]` (guest): sends B-byte UDP datagrams (1400)
//!   to IP:PORT as fast as the kernel takes them for N seconds, without a pause, and prints
//!   how many it sent (errors such as ENOBUFS, a full device queue, are counted and retried).
//! - `rt-hog` (guest, as root): lifts the kernel's real-time throttling
//!   (`kernel.sched_rt_runtime_us = -1`), makes itself SCHED_FIFO 99 and spins: on a one-vCPU
//!   guest nothing else in user space (the agent included) runs again.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use crate::arg;

/// Connections `vsock-flood --write` writes to.
const WRITERS: usize = 8;

/// `vsock-flood`: see the module documentation.
pub fn vsock_flood(args: &[String]) -> Result<(), String> {
    let cid: u32 = arg(args, "--cid", 2)?;
    let port: u32 = arg(args, "--port", 0)?;
    let conns: usize = arg(args, "--conns", 100)?;
    let write = args.iter().any(|a| a == "--write");
    let limit = devices::limits::raise_nofile_limit(conns as u64 + 64);
    let mut open = Vec::new();
    let mut refused = 0usize;
    let mut other = None;
    for _ in 0..conns {
        match crate::echo::vsock_connect(cid, port) {
            Ok(c) => open.push(c),
            Err(e) => {
                refused += 1;
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNRESET | libc::ECONNREFUSED | libc::ETIMEDOUT)
                ) {
                    other.get_or_insert(e.to_string());
                }
            }
        }
    }
    println!(
        "vsock-flood port {port}: opened {} of {conns}, refused {refused}{} (fd limit {limit})",
        open.len(),
        other
            .map(|e| format!(", first other error: {e}"))
            .unwrap_or_default()
    );
    let _ = io::stdout().flush();
    if write {
        // A few writers are enough to keep the device's tx side full.
        let chunk = vec![0x5au8; 64 * 1024];
        for c in open.iter().take(WRITERS) {
            let mut c = c.try_clone().map_err(|e| format!("dup: {e}"))?;
            let chunk = chunk.clone();
            std::thread::spawn(move || while c.write_all(&chunk).is_ok() {});
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `unix-hold-serve`: see the module documentation.
pub fn unix_hold_serve(args: &[String]) -> Result<(), String> {
    let path: PathBuf = arg(args, "--path", PathBuf::new())?;
    if path.as_os_str().is_empty() {
        return Err("unix-hold-serve needs --path PATH".into());
    }
    let backlog: i32 = arg(args, "--backlog", 128)?;
    let accept = !args.iter().any(|a| a == "--no-accept");
    devices::limits::raise_nofile_limit(4096);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("bind {path:?}: {e}"))?;
    // SAFETY: listen(2) on a listening socket we own only sets its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(format!("listen: {}", io::Error::last_os_error()));
    }
    println!(
        "io-bench: holding listener ready ({}, backlog {backlog}, {})",
        path.display(),
        if accept { "accepting" } else { "not accepting" }
    );
    let _ = io::stdout().flush();
    let mut held = Vec::new();
    loop {
        if !accept {
            std::thread::sleep(Duration::from_secs(3600));
            continue;
        }
        match listener.accept() {
            Ok((s, _)) => held.push(s),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("accept after {}: {e}", held.len())),
        }
    }
}

/// `udp-flood`: see the module documentation.
pub fn udp_flood(args: &[String]) -> Result<(), String> {
    let to: String = arg(args, "--to", String::new())?;
    let to: std::net::SocketAddr = to
        .parse()
        .map_err(|_| "udp-flood needs --to IP:PORT".to_string())?;
    let secs: u64 = arg(args, "--secs", 30)?;
    let size: usize = arg(args, "--size", 1400)?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    let buf = vec![0xa5u8; size];
    println!("udp-flood: sending {size}-byte datagrams to {to} for {secs} s");
    let _ = io::stdout().flush();
    let t0 = std::time::Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    while std::time::Instant::now() < end {
        for _ in 0..256 {
            match sock.send_to(&buf, to) {
                Ok(_) => sent += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    }
    let t = t0.elapsed().as_secs_f64();
    println!(
        "udp-flood: sent {sent} datagrams ({:.1} MB) in {t:.1} s, {errors} send errors{}",
        sent as f64 * size as f64 / 1e6,
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(())
}

/// `rt-hog`: see the module documentation.
pub fn rt_hog(_args: &[String]) -> Result<(), String> {
    std::fs::write("/proc/sys/kernel/sched_rt_runtime_us", "-1")
        .map_err(|e| format!("kernel.sched_rt_runtime_us: {e}"))?;
    let param = libc::sched_param { sched_priority: 99 };
    // SAFETY: sched_setscheduler(2) of this process with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(format!("SCHED_FIFO: {}", io::Error::last_os_error()));
    }
    println!("rt-hog: spinning at SCHED_FIFO 99");
    let _ = io::stdout().flush();
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
