//! Echo checks for end-to-end device tests (rig/scenarios/20-devices.sh): a server that echoes
//! every byte back, and a client that sends a pseudo-random pattern and verifies the echo.
//!
//! - `vsock-echo-serve --port P [--count N]` (guest): AF_VSOCK listener; echoes N connections.
//! - `unix-echo-serve --path PATH [--count N]` (host): the same on a Unix socket, e.g. ember's
//!   `<uds>_P` listener that a guest reaches by connecting to CID 2 port P.
//! - `vsock-echo --cid C --port P [--bytes N]` (guest): connects to CID C port P, checks the echo.
//! - `host-echo --uds PATH --port P [--bytes N]` (host): connects through ember's hybrid socket
//!   (`CONNECT P` / `OK`), checks the echo.
//!
//! A check prints `echo ok: ...` with the byte count and a hash of the data, or fails.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::arg;

/// Bytes a check sends unless told otherwise.
const DEFAULT_BYTES: usize = 256 * 1024;

/// `vsock-echo-serve`: echoes `--count` connections on vsock `--port`.
pub fn vsock_serve(args: &[String]) -> Result<(), String> {
    let port: u32 = arg(args, "--port", 0)?;
    let count: usize = arg(args, "--count", 1)?;
    let listener = crate::guest::vsock_listen(port).map_err(|e| format!("listen: {e}"))?;
    println!("io-bench: echo server ready (vsock port {port})");
    for _ in 0..count {
        let c = crate::guest::accept(&listener).map_err(|e| format!("accept: {e}"))?;
        let n = echo_all(c).map_err(|e| format!("echo: {e}"))?;
        println!("io-bench: echoed {n} bytes (vsock port {port})");
    }
    Ok(())
}

/// `unix-echo-serve`: echoes `--count` connections on the Unix socket `--path`.
pub fn unix_serve(args: &[String]) -> Result<(), String> {
    let path: PathBuf = arg(args, "--path", PathBuf::new())?;
    if path.as_os_str().is_empty() {
        return Err("unix-echo-serve needs --path PATH".into());
    }
    let count: usize = arg(args, "--count", 1)?;
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("bind {path:?}: {e}"))?;
    println!("io-bench: echo server ready (unix {})", path.display());
    for _ in 0..count {
        let (c, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let n = echo_all(File::from(OwnedFd::from(c))).map_err(|e| format!("echo: {e}"))?;
        println!("io-bench: echoed {n} bytes (unix {})", path.display());
    }
    Ok(())
}

/// `vsock-echo`: connects to `--cid`/`--port` (retrying up to `--wait-s`) and checks the echo.
pub fn vsock_check(args: &[String]) -> Result<(), String> {
    let cid: u32 = arg(args, "--cid", 2)?;
    let port: u32 = arg(args, "--port", 0)?;
    let bytes: usize = arg(args, "--bytes", DEFAULT_BYTES)?;
    let wait = Duration::from_secs(arg(args, "--wait-s", 30)?);
    let c = retry(wait, || vsock_connect(cid, port))
        .map_err(|e| format!("connect to cid {cid} port {port}: {e}"))?;
    let reader = c.try_clone().map_err(|e| format!("dup: {e}"))?;
    check(c, reader, bytes, &format!("vsock cid {cid} port {port}"))
}

/// `host-echo`: connects through ember's hybrid socket `--uds` to guest `--port`, checks the echo.
pub fn host_check(args: &[String]) -> Result<(), String> {
    let uds: PathBuf = arg(args, "--uds", PathBuf::new())?;
    if uds.as_os_str().is_empty() {
        return Err("host-echo needs --uds PATH".into());
    }
    let port: u32 = arg(args, "--port", 0)?;
    let bytes: usize = arg(args, "--bytes", DEFAULT_BYTES)?;
    let wait = Duration::from_secs(arg(args, "--wait-s", 30)?);
    let s: UnixStream = retry(wait, || crate::host::connect(&uds, port))
        .map_err(|e| format!("connect {} port {port}: {e}", uds.display()))?;
    let reader = s.try_clone().map_err(|e| format!("dup: {e}"))?;
    check(
        s,
        reader,
        bytes,
        &format!("{} CONNECT {port}", uds.display()),
    )
}

fn retry<T>(limit: Duration, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let t = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if t.elapsed() >= limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Copies everything read back to the writer until EOF; returns the byte count.
fn echo_all(mut c: File) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match c.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        c.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// A pseudo-random pattern (xorshift64, seeded from the clock): every run sends other bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a, printed so the two ends' logs can be compared by eye.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Sends `bytes` of pattern on `w` (from a thread) while reading the echo from `r`; compares.
fn check<W, R>(mut w: W, mut r: R, bytes: usize, what: &str) -> Result<(), String>
where
    W: Write + Send + 'static,
    R: Read,
{
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x1234_5678);
    let data = pattern(bytes, seed);
    let sent = data.clone();
    let t = Instant::now();
    let writer = std::thread::spawn(move || w.write_all(&sent).map(|()| w));
    let mut back = vec![0u8; bytes];
    let mut got = 0;
    while got < bytes {
        match r.read(&mut back[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{what}: read after {got} bytes: {e}")),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _w = writer
        .join()
        .map_err(|_| format!("{what}: writer thread panicked"))?
        .map_err(|e| format!("{what}: write: {e}"))?;
    if got != bytes {
        return Err(format!("{what}: {got} of {bytes} bytes came back"));
    }
    if let Some(i) = data.iter().zip(&back).position(|(a, b)| a != b) {
        return Err(format!(
            "{what}: echo differs at byte {i}: sent {:#04x}, got {:#04x}",
            data[i], back[i]
        ));
    }
    println!(
        "echo ok: {what}: {bytes} bytes sent, {got} bytes back, data matches (fnv1a {:016x}) in {:.3} s",
        fnv1a(&back),
        secs
    );
    Ok(())
}

pub(crate) fn vsock_connect(cid: u32, port: u32) -> io::Result<File> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    // SAFETY: `addr` is a valid sockaddr_vm and its size is passed along.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_seed_and_is_not_constant() {
        let a = pattern(4096, 1);
        let b = pattern(4096, 2);
        assert_ne!(a, b);
        assert_eq!(a, pattern(4096, 1));
        assert!(a.iter().any(|&x| x != a[0]));
    }

    #[test]
    fn unix_echo_round_trip_matches() {
        let dir = std::env::temp_dir().join(format!("io-bench-echo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (c, _) = listener.accept().unwrap();
            echo_all(File::from(OwnedFd::from(c))).unwrap()
        });
        let s = UnixStream::connect(&path).unwrap();
        let r = s.try_clone().unwrap();
        check(s, r, 300_000, "test").unwrap();
        assert_eq!(server.join().unwrap(), 300_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_echo_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        // The peer reads a little, echoes less, and hangs up.
        let peer = std::thread::spawn(move || {
            let mut b = b;
            let mut buf = [0u8; 10];
            b.read_exact(&mut buf).unwrap();
            b.write_all(&buf[..5]).unwrap();
        });
        let r = a.try_clone().unwrap();
        let err = check(a, r, 10, "short").unwrap_err();
        peer.join().unwrap();
        assert!(err.contains("5 of 10 bytes"), "{err}");
    }
}
