//! Host side of the vsock benchmark, through ember's hybrid Unix socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{arg, mbps, BENCH_PORT};

pub fn run(args: &[String]) -> Result<(), String> {
    let uds: PathBuf = arg(args, "--uds", PathBuf::new())?;
    if uds.as_os_str().is_empty() {
        return Err("host-vsock needs --uds PATH".into());
    }
    let port: u32 = arg(args, "--port", BENCH_PORT)?;
    let mib: u64 = arg(args, "--mib", 256)?;
    let pings: usize = arg(args, "--pings", 2000)?;
    let connects: usize = arg(args, "--connects", 50)?;
    let wait_s: u64 = arg(args, "--wait-s", 120)?;
    let quit = args.iter().any(|a| a == "--quit");
    let e = |what: &str, err: io::Error| format!("{what}: {err}");

    wait_ready(&uds, port, Duration::from_secs(wait_s)).map_err(|x| e("guest not ready", x))?;
    println!("| host test | size | seconds | result |");
    println!("|---|---|---|---|");

    let bytes = mib << 20;
    let (secs, echoed) = to_guest(&uds, port, bytes).map_err(|x| e("host->guest", x))?;
    println!(
        "| vsock host->guest | {mib} MiB | {secs:.3} | {:.1} MB/s (guest got {echoed} B) |",
        mbps(bytes, secs)
    );
    let secs = from_guest(&uds, port, bytes).map_err(|x| e("guest->host", x))?;
    println!(
        "| vsock guest->host | {mib} MiB | {secs:.3} | {:.1} MB/s |",
        mbps(bytes, secs)
    );
    let mut rtt = round_trips(&uds, port, pings).map_err(|x| e("latency", x))?;
    rtt.sort_unstable();
    println!(
        "| vsock round trip 1 B | {pings} pings | {:.3} | p50 {} us, p99 {} us, max {} us |",
        rtt.iter().sum::<u64>() as f64 / 1e6,
        pct(&rtt, 50),
        pct(&rtt, 99),
        rtt.last().copied().unwrap_or(0)
    );
    let mut conn = Vec::with_capacity(connects);
    for _ in 0..connects {
        let t = Instant::now();
        let mut s = connect(&uds, port).map_err(|x| e("connect", x))?;
        conn.push(t.elapsed().as_micros() as u64);
        s.write_all(b"C").map_err(|x| e("connect", x))?;
    }
    conn.sort_unstable();
    println!(
        "| vsock connect (CONNECT..OK) | {connects} conns | {:.3} | p50 {} us, p99 {} us |",
        conn.iter().sum::<u64>() as f64 / 1e6,
        pct(&conn, 50),
        pct(&conn, 99)
    );
    if quit {
        let mut s = connect(&uds, port).map_err(|x| e("quit", x))?;
        s.write_all(b"Q").map_err(|x| e("quit", x))?;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    }
    Ok(())
}

fn pct(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * p / 100).min(sorted.len() - 1)]
}

/// Connect through the hybrid socket: `CONNECT <port>\n`, then `OK <hostport>\n`.
pub fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "closed before OK (nothing listening in the guest?)",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::other(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

fn wait_ready(uds: &Path, port: u32, limit: Duration) -> io::Result<()> {
    let t = Instant::now();
    loop {
        match connect(uds, port) {
            Ok(mut s) => {
                s.write_all(b"C")?;
                return Ok(());
            }
            Err(e) if t.elapsed() > limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn to_guest(uds: &Path, port: u32, bytes: u64) -> io::Result<(f64, u64)> {
    let mut s = connect(uds, port)?;
    let buf = vec![0xa5u8; 256 * 1024];
    let t = Instant::now();
    s.write_all(b"T")?;
    s.write_all(&bytes.to_le_bytes())?;
    let mut sent = 0u64;
    while sent < bytes {
        let k = buf.len().min((bytes - sent) as usize);
        s.write_all(&buf[..k])?;
        sent += k as u64;
    }
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok((t.elapsed().as_secs_f64(), u64::from_le_bytes(b)))
}

fn from_guest(uds: &Path, port: u32, bytes: u64) -> io::Result<f64> {
    let mut s = connect(uds, port)?;
    let mut buf = vec![0u8; 256 * 1024];
    let t = Instant::now();
    s.write_all(b"G")?;
    s.write_all(&bytes.to_le_bytes())?;
    let mut got = 0u64;
    while got < bytes {
        let k = s.read(&mut buf)?;
        if k == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short stream"));
        }
        got += k as u64;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn round_trips(uds: &Path, port: u32, n: usize) -> io::Result<Vec<u64>> {
    let mut s = connect(uds, port)?;
    s.write_all(b"L")?;
    let mut out = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..n {
        let t = Instant::now();
        s.write_all(&[i as u8])?;
        s.read_exact(&mut b)?;
        out.push(t.elapsed().as_micros() as u64);
    }
    Ok(out)
}
