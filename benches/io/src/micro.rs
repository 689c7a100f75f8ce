//! Host-side micro-benchmark of the device code: the devices run exactly as in the VMM, the
//! guest driver is played by mock queues (`devices::virtio::test_utils`) on this thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use devices::virtio::block::{Block, RawFile};
use devices::virtio::rng::Rng;
use devices::virtio::test_utils::{mem, r, w, GuestQueue};
use devices::virtio::vsock::packet::*;
use devices::virtio::vsock::{Vsock, HOST_CID};
use devices::virtio::{CountingInterrupt, GuestMem, VirtioDevice};
use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

use crate::{arg, mbps};

pub fn run(args: &[String]) -> Result<(), String> {
    let mib: u64 = arg(args, "--mib", 256)?;
    println!("| micro test | request | MiB | seconds | MB/s |");
    println!("|---|---|---|---|---|");
    for write in [false, true] {
        let (secs, bytes) = blk(mib, write, 128 * 1024).map_err(|e| format!("blk: {e}"))?;
        let name = if write { "blk write" } else { "blk read" };
        println!(
            "| {name} | 128K | {} | {secs:.3} | {:.1} |",
            bytes >> 20,
            mbps(bytes, secs)
        );
    }
    let (secs, bytes) = vsock_to_guest(mib).map_err(|e| format!("vsock: {e}"))?;
    println!(
        "| vsock host->guest | 4K rx bufs | {} | {secs:.3} | {:.1} |",
        bytes >> 20,
        mbps(bytes, secs)
    );
    let (secs, bytes) = vsock_from_guest(mib).map_err(|e| format!("vsock: {e}"))?;
    println!(
        "| vsock guest->host | 64K pkts | {} | {secs:.3} | {:.1} |",
        bytes >> 20,
        mbps(bytes, secs)
    );
    let (secs, bytes) = rng(mib.min(64)).map_err(|e| format!("rng: {e}"))?;
    println!(
        "| rng | 64K | {} | {secs:.3} | {:.1} |",
        bytes >> 20,
        mbps(bytes, secs)
    );
    Ok(())
}

const HDR: u64 = 0x10_0000;
const STATUS: u64 = 0x18_0000;
const DATA: u64 = 0x20_0000;

/// Sequential virtio-blk requests of `req` bytes over a 64 MiB raw file.
fn blk(mib: u64, write: bool, req: u32) -> Result<(f64, u64), String> {
    let disk = 64u64 << 20;
    let file = TempFile::new().map_err(|e| e.to_string())?;
    file.as_file().set_len(disk).map_err(|e| e.to_string())?;
    let f = file.as_file().try_clone().map_err(|e| e.to_string())?;
    let m = mem(64 << 20);
    let mut q = GuestQueue::new(&m, 0, 256);
    let mut dev = Block::new(
        Box::new(RawFile::from_file(f).map_err(|e| e.to_string())?),
        false,
    )
    .map_err(|e| e.to_string())?;
    dev.activate(
        m.clone(),
        vec![q.queue()],
        Arc::new(CountingInterrupt::new()),
    )
    .map_err(|e| e.to_string())?;
    let total = mib << 20;
    let per_batch = 64u64;
    let mut done = 0u64;
    let mut sector = 0u64;
    let t = Instant::now();
    while done < total {
        for i in 0..per_batch {
            let h = HDR + i * 16;
            m.write_obj(u32::from(write), GuestAddress(h))
                .map_err(|e| e.to_string())?;
            m.write_obj(sector, GuestAddress(h + 8))
                .map_err(|e| e.to_string())?;
            let data = DATA + i * u64::from(req);
            let d = if write { r(data, req) } else { w(data, req) };
            q.add(&[r(h, 16), d, w(STATUS + i, 1)]);
            sector = (sector + u64::from(req) / 512) % (disk / 512);
        }
        dev.process_queue();
        let used = q.take_used();
        if used.len() as u64 != per_batch || used.iter().any(|u| u.1 == 0) {
            return Err("requests failed".into());
        }
        done += per_batch * u64::from(req);
    }
    Ok((t.elapsed().as_secs_f64(), done))
}

fn rng(mib: u64) -> Result<(f64, u64), String> {
    let m = mem(16 << 20);
    let mut q = GuestQueue::new(&m, 0, 256);
    let mut dev = Rng::new().map_err(|e| e.to_string())?;
    dev.activate(
        m.clone(),
        vec![q.queue()],
        Arc::new(CountingInterrupt::new()),
    )
    .map_err(|e| e.to_string())?;
    let total = mib << 20;
    let mut done = 0u64;
    let t = Instant::now();
    while done < total {
        for i in 0..64 {
            q.add(&[w(DATA + i * 0x1_0000, 0x1_0000)]);
        }
        dev.process_queue();
        done += q.take_used().iter().map(|u| u64::from(u.1)).sum::<u64>();
    }
    Ok((t.elapsed().as_secs_f64(), done))
}

const RX_BASE: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x2000;
const TX_BASE: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x1_1000;
const CID: u64 = 3;
const GUEST_PORT: u32 = 5000;
const GUEST_BUF: u32 = 256 * 1024;

/// The guest driver of a vsock device, on mock queues, with one connection.
struct Driver<'a> {
    m: &'a GuestMem,
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    ev: GuestQueue<'a>,
    host_port: u32,
    fwd_cnt: u32,
    peer_fwd: u32,
    rx_bytes: u64,
    shutdown: bool,
}

impl<'a> Driver<'a> {
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let a = RX_BASE + u64::from(self.rx.next_desc()) * RX_SLOT;
            self.rx
                .add(&[w(a, HDR_SIZE as u32), w(a + HDR_SIZE as u64, 4096)]);
        }
    }

    fn send(&mut self, op: u16, data: &[u8]) {
        let a = TX_BASE + u64::from(self.tx.next_desc()) * TX_SLOT;
        let h = PacketHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port: self.host_port,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd_cnt,
        };
        let _ = self.m.write_slice(&h.to_bytes(), GuestAddress(a));
        if data.is_empty() {
            self.tx.add(&[r(a, HDR_SIZE as u32)]);
        } else {
            let _ = self.m.write_slice(data, GuestAddress(a + 0x100));
            self.tx
                .add(&[r(a, HDR_SIZE as u32), r(a + 0x100, data.len() as u32)]);
        }
    }

    /// Consume rx packets; returns whether the guest should send something back.
    fn drain_rx(&mut self) -> Vec<u16> {
        let used = self.rx.take_used();
        let mut replies = vec![];
        let n = used.len();
        for (head, len) in used {
            if len < HDR_SIZE as u32 {
                continue;
            }
            let mut hb = [0u8; HDR_SIZE];
            let a = RX_BASE + u64::from(head) * RX_SLOT;
            let _ = self.m.read_slice(&mut hb, GuestAddress(a));
            let h = PacketHeader::from_bytes(&hb);
            self.peer_fwd = h.fwd_cnt;
            match h.op {
                OP_REQUEST => {
                    self.host_port = h.src_port;
                    replies.push(OP_RESPONSE);
                }
                OP_RW => {
                    self.rx_bytes += u64::from(h.len);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(h.len);
                }
                OP_CREDIT_REQUEST => replies.push(OP_CREDIT_UPDATE),
                OP_SHUTDOWN | OP_RST => self.shutdown = true,
                _ => {}
            }
        }
        self.post_rx(n);
        replies
    }
}

type Em = EventManager<Arc<Mutex<Vsock>>>;

fn setup<'a>(
    m: &'a GuestMem,
    dir: &TempDir,
) -> Result<(Driver<'a>, Arc<Mutex<Vsock>>, Em), String> {
    let uds = dir.as_path().join("v.sock");
    let dev = Arc::new(Mutex::new(
        Vsock::unix(CID as u32, &uds).map_err(|e| e.to_string())?,
    ));
    let mut em = Em::new().map_err(|e| e.to_string())?;
    em.add_subscriber(dev.clone());
    let mut d = Driver {
        m,
        rx: GuestQueue::new(m, 0, 256),
        tx: GuestQueue::new(m, 0x4000, 64),
        ev: GuestQueue::new(m, 0x8000, 64),
        host_port: 0,
        fwd_cnt: 0,
        peer_fwd: 0,
        rx_bytes: 0,
        shutdown: false,
    };
    d.post_rx(128);
    let queues = vec![d.rx.queue(), d.tx.queue(), d.ev.queue()];
    dev.lock()
        .map_err(|_| "lock")?
        .activate(m.clone(), queues, Arc::new(CountingInterrupt::new()))
        .map_err(|e| e.to_string())?;
    em.run_with_timeout(0).map_err(|e| e.to_string())?;
    Ok((d, dev, em))
}

fn kick(dev: &Arc<Mutex<Vsock>>, q: usize) {
    if let Ok(d) = dev.lock() {
        let _ = d.queue_events()[q].write(1);
    }
}

fn host_connect(uds: &std::path::Path) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())?;
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b)?;
        if b[0] == b'\n' {
            return Ok(s);
        }
    }
}

/// Drive the guest side until `done` says stop; answers REQUEST and CREDIT_REQUEST and
/// returns credit like Linux does (an update once a quarter of the buffer was consumed).
fn guest_loop(
    d: &mut Driver,
    dev: &Arc<Mutex<Vsock>>,
    em: &mut Em,
    mut step: impl FnMut(&mut Driver) -> bool,
) -> Result<(), String> {
    let mut last_credit = 0u32;
    loop {
        em.run_with_timeout(5).map_err(|e| e.to_string())?;
        let replies = d.drain_rx();
        let mut sent = !replies.is_empty();
        for op in replies {
            d.send(op, &[]);
        }
        if d.fwd_cnt.wrapping_sub(last_credit) >= GUEST_BUF / 4 {
            last_credit = d.fwd_cnt;
            d.send(OP_CREDIT_UPDATE, &[]);
            sent = true;
        }
        if step(d) {
            sent = true;
        }
        if sent {
            kick(dev, 1);
        }
        kick(dev, 0);
        if d.shutdown {
            return Ok(());
        }
    }
}

fn vsock_to_guest(mib: u64) -> Result<(f64, u64), String> {
    let m = mem(16 << 20);
    let dir = TempDir::new().map_err(|e| e.to_string())?;
    let (mut d, dev, mut em) = setup(&m, &dir)?;
    let uds = dir.as_path().join("v.sock");
    let total = mib << 20;
    let host = thread::spawn(move || -> std::io::Result<()> {
        let mut s = host_connect(&uds)?;
        let buf = vec![0x5au8; 256 * 1024];
        let mut sent = 0u64;
        while sent < total {
            let k = buf.len().min((total - sent) as usize);
            s.write_all(&buf[..k])?;
            sent += k as u64;
        }
        Ok(())
    });
    let t = Instant::now();
    guest_loop(&mut d, &dev, &mut em, |_| false)?;
    let secs = t.elapsed().as_secs_f64();
    host.join()
        .map_err(|_| "host thread panicked")?
        .map_err(|e| e.to_string())?;
    Ok((secs, d.rx_bytes))
}

fn vsock_from_guest(mib: u64) -> Result<(f64, u64), String> {
    let m = mem(16 << 20);
    let dir = TempDir::new().map_err(|e| e.to_string())?;
    let (mut d, dev, mut em) = setup(&m, &dir)?;
    let uds = dir.as_path().join("v.sock");
    let total = mib << 20;
    let host = thread::spawn(move || -> std::io::Result<u64> {
        let mut s = host_connect(&uds)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < total {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            got += k as u64;
        }
        Ok(got)
    });
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut sent = 0u64;
    let t = Instant::now();
    guest_loop(&mut d, &dev, &mut em, |d| {
        if sent >= total && host.is_finished() {
            d.shutdown = true;
        }
        if d.host_port == 0 || sent >= total {
            return false;
        }
        let mut any = false;
        // Respect the device's credit: 256 KiB minus what it has not forwarded yet.
        while sent < total
            && (sent as u32).wrapping_sub(d.peer_fwd) as u64 + chunk.len() as u64
                <= u64::from(devices::virtio::vsock::CONN_BUF)
        {
            let k = chunk.len().min((total - sent) as usize);
            d.send(OP_RW, &chunk[..k]);
            sent += k as u64;
            any = true;
        }
        if !any {
            d.send(OP_CREDIT_REQUEST, &[]);
            any = true;
        }
        any
    })?;
    let got = host
        .join()
        .map_err(|_| "host thread panicked")?
        .map_err(|e| e.to_string())?;
    Ok((t.elapsed().as_secs_f64(), got))
}
