//! File-system workload, the same wherever it runs: in a guest over virtio-fs (a share of
//! the host directory) or over ext4 on virtio-blk, and in the host on the directory itself.
//!
//! - sequential write of N MiB in 1 MiB writes + fsync, then a sequential read of it (the
//!   guest's page cache dropped first where we may: `/proc/sys/vm/drop_caches`);
//! - small files: create `files` files of 1 KiB in one directory, then `stat` each, then read
//!   each back (caches dropped before the stat and the read).
//!
//! Rows: `| fs <label> <test> | <unit> | <count> | <seconds> | <rate> |`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Instant;

const BLOCK: usize = 1 << 20;
const SMALL: usize = 1024;

/// `io-bench files --dir DIR [--label L] [--mib N] [--files N]`: the workload on the host.
pub fn run(args: &[String]) -> Result<(), String> {
    let dir: String = crate::arg(args, "--dir", String::new())?;
    if dir.is_empty() {
        return Err("files needs --dir DIR".into());
    }
    let label: String = crate::arg(args, "--label", "host".to_string())?;
    let mib: usize = crate::arg(args, "--mib", 64)?;
    let files: usize = crate::arg(args, "--files", 10_000)?;
    header();
    workload(Path::new(&dir), &label, mib, files).map_err(|e| format!("{dir}: {e}"))
}

/// The table header.
pub fn header() {
    println!("| fs test | unit | count | seconds | rate |");
    println!("|---|---|---|---|---|");
}

/// Drop the page cache (best effort: needs root and /proc).
fn drop_caches() {
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn row(label: &str, test: &str, unit: &str, count: usize, secs: f64, rate: String) {
    println!("| fs {label} {test} | {unit} | {count} | {secs:.3} | {rate} |");
}

/// Runs the workload in `dir` (made if missing, emptied of what it made afterwards).
pub fn workload(dir: &Path, label: &str, mib: usize, files: usize) -> io::Result<()> {
    let work = dir.join("io-bench-files");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let big = work.join("seq");
    let buf = vec![0xa5u8; BLOCK];
    let t = Instant::now();
    let mut f = File::create(&big)?;
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    drop(f);
    let secs = t.elapsed().as_secs_f64();
    let bytes = (mib * BLOCK) as u64;
    row(
        label,
        "seq write",
        "1M",
        mib,
        secs,
        format!("{:.1} MB/s", crate::mbps(bytes, secs)),
    );
    drop_caches();
    let mut back = vec![0u8; BLOCK];
    let t = Instant::now();
    let mut f = File::open(&big)?;
    for _ in 0..mib {
        f.read_exact(&mut back)?;
    }
    let secs = t.elapsed().as_secs_f64();
    if back != buf {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "read back differs",
        ));
    }
    row(
        label,
        "seq read",
        "1M",
        mib,
        secs,
        format!("{:.1} MB/s", crate::mbps(bytes, secs)),
    );
    fs::remove_file(&big)?;

    let small = work.join("small");
    fs::create_dir(&small)?;
    let data = vec![0x3cu8; SMALL];
    let t = Instant::now();
    for i in 0..files {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(small.join(format!("f{i}")))?;
        f.write_all(&data)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let per_s = |n: usize, s: f64| format!("{:.0} files/s", n as f64 / s.max(1e-9));
    row(label, "create 1K", "files", files, secs, per_s(files, secs));
    drop_caches();
    let t = Instant::now();
    for i in 0..files {
        let md = fs::metadata(small.join(format!("f{i}")))?;
        if md.len() != SMALL as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong size"));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    row(label, "stat", "files", files, secs, per_s(files, secs));
    drop_caches();
    let mut got = vec![0u8; SMALL];
    let t = Instant::now();
    for i in 0..files {
        File::open(small.join(format!("f{i}")))?.read_exact(&mut got)?;
        if got != data {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "content differs",
            ));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    row(label, "read 1K", "files", files, secs, per_s(files, secs));
    fs::remove_dir_all(&work)?;
    Ok(())
}
