//! End-to-end vsock tests on the host: real Unix sockets on one side, mock virtqueues driven
//! like a guest driver on the other, the real event manager in between.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::tempdir::TempDir;

use super::packet::*;
use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::{CountingInterrupt, GuestMem, VirtioDevice};

const QLEN: u16 = 64;
const RX_QLEN: u16 = 256;
const RX_BASE: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x2000;
const RX_BUF: u32 = 4096 + HDR_SIZE as u32;
const TX_BASE: u64 = 0x60_0000;
const TX_SLOT: u64 = 0x1_1000;
const GUEST_CID: u64 = 3;
const MEM: usize = 0x100_0000;

struct Guest<'a> {
    m: &'a GuestMem,
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    ev: GuestQueue<'a>,
}

impl<'a> Guest<'a> {
    fn new(m: &'a GuestMem) -> Self {
        Guest {
            m,
            rx: GuestQueue::new(m, 0, RX_QLEN),
            tx: GuestQueue::new(m, 0x4000, QLEN),
            ev: GuestQueue::new(m, 0x8000, QLEN),
        }
    }

    /// Post `n` rx buffers of `RX_BUF` bytes, split header/payload like Linux 6.1 does.
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let head = self.rx.next_desc();
            let addr = RX_BASE + u64::from(head) * RX_SLOT;
            self.rx
                .add(&[w(addr, HDR_SIZE as u32), w(addr + HDR_SIZE as u64, 4096)]);
        }
    }

    fn recv(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        self.rx
            .take_used()
            .into_iter()
            .filter(|&(_, len)| len > 0)
            .map(|(head, len)| {
                let addr = RX_BASE + u64::from(head) * RX_SLOT;
                let b = read(self.m, addr, len as usize);
                let mut hb = [0u8; HDR_SIZE];
                hb.copy_from_slice(&b[..HDR_SIZE]);
                let h = PacketHeader::from_bytes(&hb);
                assert_eq!(h.len as usize, len as usize - HDR_SIZE);
                (h, b[HDR_SIZE..].to_vec())
            })
            .collect()
    }

    fn send(&mut self, h: PacketHeader, data: &[u8]) {
        let head = self.tx.next_desc();
        let addr = TX_BASE + u64::from(head) * TX_SLOT;
        let h = PacketHeader {
            len: data.len() as u32,
            ..h
        };
        self.m
            .write_slice(&h.to_bytes(), vm_memory::GuestAddress(addr))
            .unwrap();
        if data.is_empty() {
            self.tx.add(&[r(addr, HDR_SIZE as u32)]);
        } else {
            self.m
                .write_slice(data, vm_memory::GuestAddress(addr + 0x100))
                .unwrap();
            self.tx
                .add(&[r(addr, HDR_SIZE as u32), r(addr + 0x100, data.len() as u32)]);
        }
    }
}

use vm_memory::Bytes;

fn pkt(op: u16, src_port: u32, dst_port: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

struct Rig {
    _dir: TempDir,
    uds: PathBuf,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
}

impl Rig {
    fn new(m: &GuestMem, g: &Guest) -> Self {
        Self::with_event_idx(m, g, false)
    }

    fn with_event_idx(m: &GuestMem, g: &Guest, event_idx: bool) -> Self {
        let dir = TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::unix(GUEST_CID as u32, &uds).unwrap()));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let irq = Arc::new(CountingInterrupt::new());
        let mut queues = vec![g.rx.queue(), g.tx.queue(), g.ev.queue()];
        for q in &mut queues {
            virtio_queue::QueueT::set_event_idx(q, event_idx);
        }
        dev.lock()
            .unwrap()
            .activate(m.clone(), queues, irq)
            .unwrap();
        let mut rig = Rig {
            _dir: dir,
            uds,
            dev,
            em,
        };
        rig.pump();
        rig
    }

    /// Run the event loop until it goes quiet.
    fn pump(&mut self) {
        for _ in 0..200 {
            if self.em.run_with_timeout(30).unwrap() == 0 {
                break;
            }
        }
    }

    fn kick(&mut self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
        self.pump();
    }

    fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.pump();
        s
    }

    fn connections(&self) -> usize {
        self.dev.lock().unwrap().backend.connections()
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).unwrap();
        if b[0] == b'\n' {
            return String::from_utf8(out).unwrap();
        }
        out.push(b[0]);
    }
}

/// Host connects to `guest_port`; returns the host stream and the REQUEST the guest got.
fn host_request(rig: &mut Rig, g: &mut Guest, guest_port: u32) -> (UnixStream, PacketHeader) {
    let s = rig.host_connect(guest_port);
    let p = g.recv();
    assert_eq!(p.len(), 1, "expected one REQUEST");
    let req = p[0].0;
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(req.dst_port, guest_port);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.buf_alloc, CONN_BUF);
    (s, req)
}

/// Host connects, guest accepts with `credit` bytes of receive buffer; returns (host
/// stream, host port).
fn establish_with_credit(
    rig: &mut Rig,
    g: &mut Guest,
    guest_port: u32,
    credit: u32,
) -> (UnixStream, u32) {
    let (mut s, req) = host_request(rig, g, guest_port);
    g.send(pkt(OP_RESPONSE, guest_port, req.src_port, credit, 0), &[]);
    rig.kick(device::TXQ);
    assert_eq!(read_line(&mut s), format!("OK {}", req.src_port));
    (s, req.src_port)
}

/// Host connects, guest accepts; returns (host stream, host port).
fn establish_from_host(rig: &mut Rig, g: &mut Guest, guest_port: u32) -> (UnixStream, u32) {
    establish_with_credit(rig, g, guest_port, 65536)
}

#[test]
fn host_connect_reaches_guest_and_data_flows_both_ways() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    g.post_rx(16);
    rig.kick(device::RXQ);
    let (mut s, hport) = establish_from_host(&mut rig, &mut g, 1234);

    s.write_all(b"hello").unwrap();
    rig.pump();
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_RW);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (hport, 1234));
    assert_eq!(p[0].1, b"hello");

    g.send(pkt(OP_RW, 1234, hport, 65536, 5), b"world");
    rig.kick(device::TXQ);
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");

    // Guest closes: it gets a RST and the host sees end of file.
    g.send(
        PacketHeader {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..pkt(OP_SHUTDOWN, 1234, hport, 65536, 5)
        },
        &[],
    );
    rig.kick(device::TXQ);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_RST);
    assert_eq!(s.read(&mut got).unwrap(), 0);
    assert_eq!(rig.connections(), 0);
}

#[test]
fn guest_connect_reaches_listener_at_uds_port() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    let listener = UnixListener::bind(format!("{}_5000", rig.uds.display())).unwrap();
    g.post_rx(16);
    rig.kick(device::RXQ);

    g.send(pkt(OP_REQUEST, 40000, 5000, 65536, 0), &[]);
    rig.kick(device::TXQ);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_RESPONSE);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5000, 40000));

    g.send(pkt(OP_RW, 40000, 5000, 65536, 0), b"ping");
    rig.kick(device::TXQ);
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.write_all(b"pong").unwrap();
    rig.pump();
    let p = g.recv();
    assert_eq!(p[0].0.op, OP_RW);
    assert_eq!(p[0].1, b"pong");

    // Host closes: the guest gets SHUTDOWN, answers RST, the connection is gone.
    drop(s);
    rig.pump();
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_SHUTDOWN);
    assert_eq!(p[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.send(pkt(OP_RST, 40000, 5000, 65536, 4), &[]);
    rig.kick(device::TXQ);
    assert_eq!(rig.connections(), 0);

    // No listener at <uds>_5001: RST.
    g.send(pkt(OP_REQUEST, 40001, 5001, 65536, 0), &[]);
    rig.kick(device::TXQ);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_RST);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5001, 40001));
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    g.post_rx(32);
    rig.kick(device::RXQ);
    // The guest has only 1000 bytes of receive buffer.
    let (mut s, host_port) = establish_with_credit(&mut rig, &mut g, 7, 1000);
    s.write_all(&[0xab; 5000]).unwrap();
    rig.pump();
    let p = g.recv();
    let data: usize = p
        .iter()
        .filter(|x| x.0.op == OP_RW)
        .map(|x| x.1.len())
        .sum();
    assert_eq!(data, 1000, "must not exceed the guest's credit");
    assert_eq!(p.last().unwrap().0.op, OP_CREDIT_REQUEST);
    // The guest consumed it all: 1000 more.
    g.send(pkt(OP_CREDIT_UPDATE, 7, host_port, 1000, 1000), &[]);
    rig.kick(device::TXQ);
    let p = g.recv();
    let data: usize = p
        .iter()
        .filter(|x| x.0.op == OP_RW)
        .map(|x| x.1.len())
        .sum();
    assert_eq!(data, 1000);
    // A bigger buffer lets the rest through.
    g.send(pkt(OP_CREDIT_UPDATE, 7, host_port, 1 << 20, 2000), &[]);
    rig.kick(device::TXQ);
    let p = g.recv();
    let data: usize = p
        .iter()
        .filter(|x| x.0.op == OP_RW)
        .map(|x| x.1.len())
        .sum();
    assert_eq!(data, 3000);
}

#[test]
fn guest_to_host_credit_and_overflow_reset() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    g.post_rx(32);
    rig.kick(device::RXQ);
    let (s, hport) = establish_from_host(&mut rig, &mut g, 9);
    // The guest asks for our credit.
    g.send(pkt(OP_CREDIT_REQUEST, 9, hport, 65536, 0), &[]);
    rig.kick(device::TXQ);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!((p[0].0.buf_alloc, p[0].0.fwd_cnt), (CONN_BUF, 0));

    // The host does not read; the guest ignores credit and keeps sending.
    let chunk = vec![0x5a; 60 * 1024];
    let mut got_rst = false;
    let mut fwd_seen = 0;
    for _ in 0..40 {
        g.send(pkt(OP_RW, 9, hport, 65536, 0), &chunk);
        rig.kick(device::TXQ);
        let got = g.recv();
        g.post_rx(got.len());
        rig.kick(device::RXQ);
        for (h, _) in got {
            match h.op {
                OP_CREDIT_UPDATE => fwd_seen = h.fwd_cnt,
                OP_RST => got_rst = true,
                op => panic!("unexpected op {op}"),
            }
        }
        if got_rst {
            break;
        }
    }
    assert!(got_rst, "credit overflow must reset the connection");
    assert!(fwd_seen > 0, "credit updates report forwarded bytes");
    assert_eq!(rig.connections(), 0);
    drop(s);
}

#[test]
fn many_concurrent_connections() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    g.post_rx(60);
    rig.kick(device::RXQ);
    let n = 20u32;
    let mut streams = vec![];
    for i in 0..n {
        let (s, hport) = establish_from_host(&mut rig, &mut g, 100 + i);
        streams.push((s, hport));
        g.post_rx(2);
        rig.kick(device::RXQ);
    }
    assert_eq!(rig.connections(), n as usize);
    for (i, (s, _)) in streams.iter_mut().enumerate() {
        s.write_all(format!("conn-{i}").as_bytes()).unwrap();
    }
    rig.pump();
    let mut seen = 0;
    for (h, d) in g.recv() {
        assert_eq!(h.op, OP_RW);
        let i = h.dst_port - 100;
        assert_eq!(d, format!("conn-{i}").as_bytes());
        assert_eq!(streams[i as usize].1, h.src_port);
        seen += 1;
    }
    assert_eq!(seen, n);
    for (i, (_, hport)) in streams.iter().enumerate() {
        g.send(
            pkt(OP_RW, 100 + i as u32, *hport, 65536, 0),
            format!("back-{i}").as_bytes(),
        );
        if g.tx.next_desc() >= QLEN - 2 {
            rig.kick(device::TXQ);
        }
    }
    rig.kick(device::TXQ);
    for (i, (s, _)) in streams.iter_mut().enumerate() {
        let want = format!("back-{i}");
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, want.as_bytes());
    }
}

#[test]
fn malformed_packets_are_dropped_or_reset() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    g.post_rx(16);
    rig.kick(device::RXQ);
    // Header shorter than 44 bytes.
    g.tx.add(&[r(TX_BASE, 20)]);
    // Device-writable descriptor on the tx queue.
    g.tx.add(&[w(TX_BASE, 44)]);
    // Outside guest memory.
    g.tx.add(&[r(MEM as u64 - 8, 44)]);
    // A loop.
    g.tx.add_loop(&[r(TX_BASE, 44), r(TX_BASE + 0x100, 16)]);
    rig.kick(device::TXQ);
    // Oversize length and a length the chain does not hold.
    let mut h = pkt(OP_RW, 1, 2, 0, 0);
    h.len = (MAX_PKT_DATA + 1) as u32;
    m.write_slice(&h.to_bytes(), vm_memory::GuestAddress(TX_BASE))
        .unwrap();
    g.tx.add(&[r(TX_BASE, 44), r(TX_BASE + 0x100, 0x1000)]);
    h.len = 0x2000;
    m.write_slice(&h.to_bytes(), vm_memory::GuestAddress(TX_BASE + 0x8000))
        .unwrap();
    g.tx.add(&[r(TX_BASE + 0x8000, 44), r(TX_BASE + 0x8100, 0x1000)]);
    rig.kick(device::TXQ);
    assert_eq!(g.tx.take_used().len(), 6, "every tx chain is returned");
    assert!(g.recv().is_empty(), "dropped packets get no answer");

    // Wrong source CID: dropped silently.
    g.send(
        PacketHeader {
            src_cid: 7,
            ..pkt(OP_REQUEST, 1, 2, 0, 0)
        },
        &[],
    );
    // Data for a connection that does not exist: RST.
    g.send(pkt(OP_RW, 50, 60, 0, 0), b"x");
    // Unknown socket type: RST.
    g.send(
        PacketHeader {
            type_: 2,
            ..pkt(OP_REQUEST, 51, 61, 0, 0)
        },
        &[],
    );
    rig.kick(device::TXQ);
    let p = g.recv();
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|x| x.0.op == OP_RST));
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (60, 50));
}

#[test]
fn bad_rx_buffers_are_returned_empty() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    fill(&m, 0xf0_0000, 0x2000, 0xee);
    let bad_dir = g.rx.add(&[r(0xf0_0000, RX_BUF)]);
    let bad_small = g.rx.add(&[w(0xf0_1000, HDR_SIZE as u32)]);
    let bad_oob = g.rx.add(&[w(MEM as u64 - 16, RX_BUF)]);
    g.post_rx(1);
    rig.kick(device::RXQ);
    g.send(pkt(OP_RW, 52, 62, 0, 0), b"y");
    rig.kick(device::TXQ);
    assert_untouched(&m, 0xf0_0000, 0x2000, 0xee);
    let used = g.rx.take_used();
    assert_eq!(used.len(), 4);
    assert_eq!(
        &used[..3],
        &[
            (u32::from(bad_dir), 0),
            (u32::from(bad_small), 0),
            (u32::from(bad_oob), 0)
        ]
    );
    let addr = RX_BASE + u64::from(used[3].0 as u16) * RX_SLOT;
    let mut hb = [0u8; HDR_SIZE];
    hb.copy_from_slice(&read(&m, addr, HDR_SIZE));
    assert_eq!(PacketHeader::from_bytes(&hb).op, OP_RST);
}

#[test]
fn bad_connect_line_closes_host_stream() {
    let m = mem(MEM);
    let g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    let mut s = UnixStream::connect(&rig.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"HELLO 12\n").unwrap();
    rig.pump();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
    let mut s = UnixStream::connect(&rig.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[b'C'; 100]).unwrap();
    rig.pump();
    // Closed with unread bytes: end of file or a reset, never data.
    match s.read(&mut b) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn guest_rst_on_request_closes_host_stream() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    g.post_rx(4);
    rig.kick(device::RXQ);
    let (mut s, req) = host_request(&mut rig, &mut g, 77);
    g.send(pkt(OP_RST, 77, req.src_port, 0, 0), &[]);
    rig.kick(device::TXQ);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
}

#[test]
fn transport_reset_event_and_device_reset() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::new(&m, &g);
    fill(&m, 0xf0_0000, 16, 0xee);
    let h = g.ev.add(&[w(0xf0_0000, 8)]);
    assert!(rig.dev.lock().unwrap().send_transport_reset());
    assert_eq!(g.ev.take_used(), vec![(u32::from(h), 4)]);
    assert_eq!(read(&m, 0xf0_0000, 4), EVENT_TRANSPORT_RESET.to_le_bytes());
    assert_untouched(&m, 0xf0_0004, 12, 0xee);
    assert!(
        !rig.dev.lock().unwrap().send_transport_reset(),
        "no buffer left"
    );

    g.post_rx(8);
    rig.kick(device::RXQ);
    let (mut s, _) = establish_from_host(&mut rig, &mut g, 3000);
    assert!(rig.dev.lock().unwrap().reset());
    rig.pump();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0, "reset closes host streams");
    // New host connections wait until the device is activated again.
    let mut s2 = UnixStream::connect(&rig.uds).unwrap();
    s2.write_all(b"CONNECT 1\n").unwrap();
    rig.pump();
    assert!(g.recv().is_empty());
}

#[test]
fn reserved_cids_and_non_socket_paths_are_refused() {
    let dir = TempDir::new().unwrap();
    let p = dir.as_path().join("s");
    assert!(matches!(Vsock::unix(2, &p), Err(Error::ReservedCid(2))));
    let f = dir.as_path().join("file");
    std::fs::write(&f, b"x").unwrap();
    assert!(matches!(Vsock::unix(3, &f), Err(Error::NotASocket(_))));
    // A live socket is refused; a stale one is replaced.
    let live = std::os::unix::net::UnixListener::bind(&p).unwrap();
    assert!(matches!(Vsock::unix(3, &p), Err(Error::InUse(_))));
    drop(live);
    assert!(Vsock::unix(3, &p).is_ok());
}

#[test]
fn data_flows_with_event_idx() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let mut rig = Rig::with_event_idx(&m, &g, true);
    g.post_rx(8);
    rig.kick(device::RXQ);
    let (mut s, hport) = establish_from_host(&mut rig, &mut g, 4444);
    let mut total = 0;
    for round in 0..20u8 {
        s.write_all(&[round; 3000]).unwrap();
        rig.pump();
        let got = g.recv();
        for (h, d) in &got {
            assert_eq!(h.op, OP_RW);
            assert!(d.iter().all(|&b| b == round));
            total += d.len();
        }
        g.post_rx(got.len());
        rig.kick(device::RXQ);
        g.send(pkt(OP_RW, 4444, hport, 65536, total as u32), &[round; 100]);
        rig.kick(device::TXQ);
        let mut back = [0u8; 100];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, [round; 100]);
    }
    assert_eq!(total, 20 * 3000);
}

/// A vsock device behind its MMIO transport, on its own event loop (a `Rig` whose device the
/// guest brought up through the registers, or that a snapshot was restored onto).
fn behind_transport(m: &GuestMem) -> (Rig, crate::virtio::mmio::MmioTransport) {
    let dir = TempDir::new().unwrap();
    let uds = dir.as_path().join("v.sock");
    let dev = Arc::new(Mutex::new(Vsock::unix(GUEST_CID as u32, &uds).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let t = crate::virtio::mmio::MmioTransport::new(
        m.clone(),
        dev.clone(),
        Arc::new(CountingInterrupt::new()),
    )
    .unwrap();
    let rig = Rig {
        _dir: dir,
        uds,
        dev,
        em,
    };
    (rig, t)
}

/// A running device with one connection that carried data both ways, saved.
fn saved_with_a_connection(
    m: &GuestMem,
    g: &mut Guest,
) -> crate::virtio::persist::TransportSnapshot {
    let (mut rig, mut t) = behind_transport(m);
    bring_up(
        &mut t,
        1 << crate::virtio::VIRTIO_F_VERSION_1,
        &[&g.rx, &g.tx, &g.ev],
    );
    rig.pump();
    g.post_rx(8);
    rig.kick(device::RXQ);
    let (mut s, hport) = establish_from_host(&mut rig, g, 1234);
    s.write_all(b"before").unwrap();
    rig.pump();
    assert_eq!(g.recv()[0].1, b"before");
    g.send(pkt(OP_RW, 1234, hport, 65536, 6), b"reply");
    rig.kick(device::TXQ);
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"reply");
    let snap = t.save().unwrap();
    assert_eq!(
        snap.device.kind,
        crate::virtio::persist::DeviceKindState::Vsock {
            guest_cid: GUEST_CID
        }
    );
    snap
}

#[test]
fn restore_resets_the_transport_and_continues_the_rings() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    fill(&m, 0xf0_0000, 16, 0xee);
    let ev = g.ev.add(&[w(0xf0_0000, 8)]);
    let snap = saved_with_a_connection(&m, &mut g);
    let (rx_used, tx_used) = (g.rx.used_idx(), g.tx.used_idx());
    assert!(rx_used >= 2 && tx_used >= 2);

    let (mut rig, mut t) = behind_transport(&m);
    t.restore(&snap).unwrap();
    // The guest learns at once that its connections are gone.
    assert_eq!(g.ev.take_used(), vec![(u32::from(ev), 4)]);
    assert_eq!(read(&m, 0xf0_0000, 4), EVENT_TRANSPORT_RESET.to_le_bytes());
    assert_untouched(&m, 0xf0_0004, 12, 0xee);
    assert!(!rig.dev.lock().unwrap().transport_reset_pending());
    assert_eq!(rig.connections(), 0);
    rig.pump();
    assert!(g.recv().is_empty(), "nothing replayed to the guest");
    assert_eq!(g.rx.used_idx(), rx_used);
    assert_eq!(g.tx.used_idx(), tx_used);

    // New connections use the rx buffers left and the rings go on.
    let (mut s, hport) = establish_from_host(&mut rig, &mut g, 2000);
    assert_eq!(g.rx.used_idx(), rx_used.wrapping_add(1));
    assert_eq!(g.tx.used_idx(), tx_used.wrapping_add(1));
    s.write_all(b"after").unwrap();
    rig.pump();
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0.op, p[0].1.as_slice()), (OP_RW, &b"after"[..]));
    assert_eq!(p[0].0.src_port, hport);
    // A packet on the old connection is answered with a reset.
    g.send(pkt(OP_RW, 1234, 1 << 30, 65536, 0), b"stale");
    rig.kick(device::TXQ);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_RST);
}

#[test]
fn transport_reset_waits_for_an_event_buffer() {
    let m = mem(MEM);
    let mut g = Guest::new(&m);
    let snap = saved_with_a_connection(&m, &mut g);
    let (mut rig, mut t) = behind_transport(&m);
    t.restore(&snap).unwrap();
    rig.pump();
    assert!(rig.dev.lock().unwrap().transport_reset_pending());
    assert_eq!(g.ev.used_idx(), 0);
    // Other queues work meanwhile.
    let (_s, _) = establish_from_host(&mut rig, &mut g, 2001);
    // The guest posts an event buffer and notifies the event queue.
    fill(&m, 0xf0_0000, 8, 0xee);
    let h = g.ev.add(&[w(0xf0_0000, 8)]);
    rig.kick(device::EVQ);
    assert_eq!(g.ev.take_used(), vec![(u32::from(h), 4)]);
    assert_eq!(read(&m, 0xf0_0000, 4), EVENT_TRANSPORT_RESET.to_le_bytes());
    assert!(!rig.dev.lock().unwrap().transport_reset_pending());
    // Only once.
    let h2 = g.ev.add(&[w(0xf0_0100, 8)]);
    rig.kick(device::EVQ);
    assert!(g.ev.take_used().is_empty(), "buffer {h2} used for nothing");
}

#[test]
fn restore_keeps_this_devices_cid() {
    let m = mem(MEM);
    let g = Guest::new(&m);
    let (_rig, mut t) = behind_transport(&m);
    bring_up(
        &mut t,
        1 << crate::virtio::VIRTIO_F_VERSION_1,
        &[&g.rx, &g.tx, &g.ev],
    );
    let mut snap = t.save().unwrap();
    snap.device.kind = crate::virtio::persist::DeviceKindState::Vsock { guest_cid: 42 };
    let (rig, mut t) = behind_transport(&m);
    t.restore(&snap).unwrap();
    let mut cid = [0u8; 8];
    rig.dev.lock().unwrap().read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
}
