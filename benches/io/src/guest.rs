//! Guest side: runs as `/init` (pid 1) of a benchmark guest.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use crate::{mbps, BENCH_PORT};

const BLOCK: usize = 1 << 20;

pub fn run(args: &[String]) -> Result<(), String> {
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    if pid1 {
        mount("devtmpfs", "/dev", "devtmpfs");
        mount("proc", "/proc", "proc");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mib: usize = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("io_bench.mib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let mib: usize = crate::arg(args, "--mib", mib)?;
    let dev: String = crate::arg(args, "--dev", "/dev/vda".to_string())?;
    // `io_bench.vsock=0` on the kernel command line does what `--no-vsock` does (init
    // arguments after `--` do not work under QEMU microvm, which appends its
    // virtio_mmio.device= entries after them).
    let serve_vsock = !args.iter().any(|a| a == "--no-vsock")
        && !cmdline.split_whitespace().any(|w| w == "io_bench.vsock=0");
    // Self-check without a VM: serve the same protocol on a Unix socket instead of vsock.
    let unix: String = crate::arg(args, "--unix", String::new())?;
    println!("io-bench: guest up");
    println!("| guest test | block | MiB | seconds | MB/s |");
    println!("|---|---|---|---|---|");
    if cmdline.split_whitespace().any(|w| w == "io_bench.blk=0") {
        println!("io-bench: blk not asked for (io_bench.blk=0)");
    } else if let Err(e) = blk_bench(&dev, mib) {
        println!("io-bench: blk skipped: {e}");
    }
    fs_benches(&cmdline, mib);
    let served = if !unix.is_empty() {
        serve_unix(&unix)
    } else if serve_vsock {
        serve(BENCH_PORT)
    } else {
        Ok(())
    };
    if let Err(e) = &served {
        println!("io-bench: vsock server failed: {e}");
    }
    if pid1 {
        println!("io-bench: done");
        // SAFETY: sync and reboot take no pointers; as pid 1 we own the machine.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_AUTOBOOT);
        }
    }
    served.map_err(|e| e.to_string())
}

/// The file workload ([`crate::files`]) over virtio-fs (`io_bench.fs=SHARE`: the device with
/// tag `ember`, share SHARE) and over ext4 on a virtio-blk disk (`io_bench.ext4=/dev/vdX`),
/// `io_bench.files=N` small files (default 10000).
fn fs_benches(cmdline: &str, mib: usize) {
    let opt = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    let files = opt("io_bench.files=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut targets = Vec::new();
    if let Some(share) = opt("io_bench.fs=") {
        mount("ember", "/mnt/fs", "virtiofs");
        targets.push(("virtio-fs", format!("/mnt/fs/{share}")));
    }
    if let Some(dev) = opt("io_bench.ext4=") {
        mount(&dev, "/mnt/ext4", "ext4");
        targets.push(("ext4-on-virtio-blk", "/mnt/ext4".to_string()));
    }
    if targets.is_empty() {
        return;
    }
    crate::files::header();
    for (label, dir) in targets {
        if let Err(e) = crate::files::workload(std::path::Path::new(&dir), label, mib, files) {
            println!("io-bench: fs {label} failed: {e}");
        }
    }
}

fn mount(src: &str, dst: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(dst);
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (s, d, t) = (c(src), c(dst), c(fstype));
    // SAFETY: all strings are valid NUL-terminated C strings that outlive the call; no data.
    let rc = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), t.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        println!("io-bench: mount {dst}: {}", io::Error::last_os_error());
    }
}

/// A 4 KiB-aligned buffer inside a Vec (O_DIRECT needs aligned memory).
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0x5au8; len + 4096];
    let off = v.as_ptr().align_offset(4096);
    (v, off)
}

fn blk_bench(dev: &str, mib: usize) -> io::Result<()> {
    let (mut v, off) = aligned(BLOCK);
    let total = (mib * BLOCK) as u64;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let t = Instant::now();
    for _ in 0..mib {
        f.write_all(&v[off..off + BLOCK])?;
    }
    f.sync_all()?;
    row("seq write", "1M", mib, t.elapsed().as_secs_f64(), total);
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let t = Instant::now();
    for _ in 0..mib {
        f.read_exact(&mut v[off..off + BLOCK])?;
    }
    row("seq read", "1M", mib, t.elapsed().as_secs_f64(), total);
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let small = 4096;
    let n = (mib * BLOCK / small).min(16384);
    let t = Instant::now();
    for _ in 0..n {
        f.read_exact(&mut v[off..off + small])?;
    }
    let secs = t.elapsed().as_secs_f64();
    row(
        "seq read",
        "4K",
        n * small / BLOCK,
        secs,
        (n * small) as u64,
    );
    println!(
        "io-bench: blk 4K read IOPS={:.0}",
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn row(test: &str, bs: &str, mib: usize, secs: f64, bytes: u64) {
    println!(
        "| blk {test} | {bs} | {mib} | {secs:.3} | {:.1} |",
        mbps(bytes, secs)
    );
}

pub(crate) fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
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
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: `addr` is a valid sockaddr_vm and its size is passed along.
    let rc = unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(raw, 16) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

pub(crate) fn accept(listener: &OwnedFd) -> io::Result<File> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(listener);
    // SAFETY: accept on a listening socket; peer address not requested.
    let fd = unsafe {
        libc::accept4(
            raw,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh connected socket we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn serve(port: u32) -> io::Result<()> {
    let listener = vsock_listen(port)?;
    println!("io-bench: ready (vsock port {port})");
    serve_with(|| accept(&listener))
}

fn serve_unix(path: &str) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    println!("io-bench: ready (unix {path})");
    serve_with(|| Ok(File::from(OwnedFd::from(listener.accept()?.0))))
}

/// Serves benchmark connections until one says `Q`.
fn serve_with(mut accept: impl FnMut() -> io::Result<File>) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut c = match accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut op = [0u8; 1];
        if c.read_exact(&mut op).is_err() {
            continue;
        }
        match op[0] {
            b'T' => {
                let n = read_u64(&mut c)?;
                let mut got = 0u64;
                while got < n {
                    let want = buf.len().min((n - got) as usize);
                    let k = c.read(&mut buf[..want])?;
                    if k == 0 {
                        break;
                    }
                    got += k as u64;
                }
                c.write_all(&got.to_le_bytes())?;
            }
            b'G' => {
                let n = read_u64(&mut c)?;
                let mut sent = 0u64;
                while sent < n {
                    let k = buf.len().min((n - sent) as usize);
                    c.write_all(&buf[..k])?;
                    sent += k as u64;
                }
            }
            b'L' => {
                let mut b = [0u8; 1];
                while c.read_exact(&mut b).is_ok() {
                    if c.write_all(&b).is_err() {
                        break;
                    }
                }
            }
            b'C' => {}
            b'Q' => {
                let _ = c.write_all(b"q");
                return Ok(());
            }
            _ => {}
        }
    }
}

fn read_u64(c: &mut File) -> io::Result<u64> {
    let mut b = [0u8; 8];
    c.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}
