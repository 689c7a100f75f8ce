use std::io;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use vm_memory::Bytes;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;

use super::device::{RXQ, TXQ};
use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::{CountingInterrupt, GuestMem, InterruptKind, VirtioDevice};

/// A datagram socket pair standing in for the TAP device (keeps frame boundaries).
struct Wire(UnixDatagram);

impl AsRawFd for Wire {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Wire {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.send(frame)
    }
}

const MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const BUF: u64 = 0x1_0000;
const GUARD: u8 = 0xee;

struct Rig<'a> {
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    net: Net,
    peer: UnixDatagram,
    irq: Arc<CountingInterrupt>,
}

fn rig(m: &GuestMem) -> Rig<'_> {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let rx = GuestQueue::new(m, 0, 16);
    let tx = GuestQueue::new(m, 0x4000, 16);
    let mut net = Net::new(Box::new(Wire(a)), Some(MAC)).unwrap();
    let irq = Arc::new(CountingInterrupt::new());
    net.activate(m.clone(), vec![rx.queue(), tx.queue()], irq.clone())
        .unwrap();
    fill(m, BUF, 0x4_0000, GUARD);
    Rig {
        rx,
        tx,
        net,
        peer: b,
        irq,
    }
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..n).map(|i| seed.wrapping_add(i as u8)));
    f
}

fn peer_recv(peer: &UnixDatagram) -> Option<Vec<u8>> {
    let mut b = vec![0u8; MAX_FRAME + 16];
    match peer.recv(&mut b) {
        Ok(n) => Some(b[..n].to_vec()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn config_exposes_mac() {
    let m = mem(0x10_0000);
    let k = rig(&m);
    assert_ne!(k.net.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    let mut mac = [0u8; 6];
    k.net.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let (a, _b) = UnixDatagram::pair().unwrap();
    let no_mac = Net::new(Box::new(Wire(a)), None).unwrap();
    assert_eq!(no_mac.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
}

#[test]
fn tx_frame_reaches_backend() {
    let m = mem(0x10_0000);
    let mut k = rig(&m);
    let f = frame(60, 7);
    m.write_slice(&f[..VNET_HDR_LEN], vm_memory::GuestAddress(BUF))
        .unwrap();
    m.write_slice(&f[VNET_HDR_LEN..], vm_memory::GuestAddress(BUF + 0x100))
        .unwrap();
    let h = k.tx.add(&[r(BUF, VNET_HDR_LEN as u32), r(BUF + 0x100, 60)]);
    k.net.process_tx();
    assert_eq!(k.tx.take_used(), vec![(u32::from(h), 0)]);
    assert_eq!(peer_recv(&k.peer), Some(f));
    assert_eq!(k.irq.count(InterruptKind::Vring), 1);
    assert_eq!(k.net.stats().tx_frames, 1);
}

#[test]
fn rx_frame_reaches_guest_with_num_buffers() {
    let m = mem(0x10_0000);
    let mut k = rig(&m);
    let f = frame(100, 3);
    k.peer.send(&f).unwrap();
    // No buffer yet: the frame waits.
    k.net.process_rx();
    assert!(k.rx.take_used().is_empty());
    let h = k.rx.add(&[w(BUF, 64), w(BUF + 0x1000, 1500)]);
    k.net.process_rx();
    assert_eq!(k.rx.take_used(), vec![(u32::from(h), f.len() as u32)]);
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut got = read(&m, BUF, 64);
    got.extend(read(&m, BUF + 0x1000, f.len() - 64));
    assert_eq!(got, want);
    assert_untouched(&m, BUF + 64, 0x1000 - 64, GUARD);
    assert_untouched(&m, BUF + 0x1000 + (f.len() - 64) as u64, 0x100, GUARD);
}

#[test]
fn rx_too_small_buffer_drops_frame_only() {
    let m = mem(0x10_0000);
    let mut k = rig(&m);
    k.peer.send(&frame(1000, 1)).unwrap();
    k.peer.send(&frame(50, 2)).unwrap();
    let small = k.rx.add(&[w(BUF, 100)]);
    let big = k.rx.add(&[w(BUF + 0x1000, 2048)]);
    k.net.process_rx();
    assert_eq!(
        k.rx.take_used(),
        vec![(u32::from(small), 0), (u32::from(big), 62)]
    );
    assert_untouched(&m, BUF, 0x1000, GUARD);
    assert_eq!(k.net.stats().rx_dropped, 1);
    assert_eq!(k.net.stats().rx_frames, 1);
}

#[test]
fn rx_malformed_buffers_are_skipped() {
    let m = mem(0x10_0000);
    let mut k = rig(&m);
    k.peer.send(&frame(50, 9)).unwrap();
    let ro = k.rx.add(&[r(BUF, 2048)]);
    let oob = k.rx.add(&[w(0xf_ff00, 2048)]);
    let lp = k.rx.add_loop(&[w(BUF + 0x2000, 16), w(BUF + 0x3000, 16)]);
    let good = k.rx.add(&[w(BUF + 0x8000, 2048)]);
    k.net.process_rx();
    assert_eq!(
        k.rx.take_used(),
        vec![
            (u32::from(ro), 0),
            (u32::from(oob), 0),
            (u32::from(lp), 0),
            (u32::from(good), 62)
        ]
    );
    assert_untouched(&m, BUF, 0x8000, GUARD);
    assert_untouched(&m, 0xf_f000, 0x1000, 0);
}

#[test]
fn tx_malformed_chains_are_dropped() {
    let m = mem(0x10_0000);
    let mut k = rig(&m);
    k.tx.add(&[w(BUF, 64)]); // wrong direction
    k.tx.add(&[r(0xf_ff00, 0x1000)]); // outside guest memory
    k.tx.add(&[r(BUF, 4)]); // shorter than the vnet header
    k.tx.add(&[r(BUF, 0)]); // zero length
    k.tx.add_loop(&[r(BUF, 64), r(BUF + 0x100, 64)]); // loop
    k.tx.add(&[r(BUF, 0x2_0000)]); // oversize
    k.net.process_tx();
    assert_eq!(k.tx.take_used().len(), 6);
    assert_eq!(peer_recv(&k.peer), None);
    assert_eq!(k.net.stats().tx_dropped, 6);
    assert_untouched(&m, BUF, 0x4_0000, GUARD);
}

/// Broken tx chains are frames too for the tx limiter: a guest cannot send past its limit by
/// making its chains malformed (each costs the host a parse and a warning).
#[test]
fn tx_malformed_chains_pay_the_rate_limiter() {
    let m = mem(0x10_0000);
    let mut k = rig(&m);
    k.net.set_rate_limiters(None, Some(frames_per(2, 60_000)));
    for i in 0..4u64 {
        k.tx.add_loop(&[r(BUF + i * 0x200, 64), r(BUF + i * 0x200 + 0x100, 64)]);
    }
    k.net.process_tx();
    assert_eq!(k.tx.take_used().len(), 2, "two tokens, two chains");
    assert_eq!(k.net.stats().tx_dropped, 2);
    assert_eq!(k.net.throttled(), (0, 1));
    // Still blocked until the limiter's timer fires.
    k.net.process_tx();
    assert!(k.tx.take_used().is_empty());
}

/// `dev` on an event loop of its own, activated with `rx` and `tx`, its activation served.
fn on_event_loop(
    m: &GuestMem,
    dev: Net,
    rx: &GuestQueue,
    tx: &GuestQueue,
) -> (Arc<Mutex<Net>>, EventManager<Arc<Mutex<Net>>>) {
    let net = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    let irq = Arc::new(CountingInterrupt::new());
    net.lock()
        .unwrap()
        .activate(m.clone(), vec![rx.queue(), tx.queue()], irq)
        .unwrap();
    em.run_with_timeout(100).unwrap();
    (net, em)
}

#[test]
fn event_loop_moves_frames_both_ways() {
    let m = mem(0x10_0000);
    let (a, peer) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut rx = GuestQueue::new(&m, 0, 16);
    let mut tx = GuestQueue::new(&m, 0x4000, 16);
    let dev = Net::new(Box::new(Wire(a)), Some(MAC)).unwrap();
    let (net, mut em) = on_event_loop(&m, dev, &rx, &tx);
    for i in 0..4 {
        rx.add(&[w(BUF + i * 0x1000, 2048)]);
    }
    peer.send(&frame(40, 1)).unwrap();
    peer.send(&frame(41, 2)).unwrap();
    while em.run_with_timeout(50).unwrap() > 0 {}
    let used = rx.take_used();
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![52, 53]);

    m.write_slice(&frame(30, 5), vm_memory::GuestAddress(BUF + 0x8000))
        .unwrap();
    tx.add(&[r(BUF + 0x8000, 42)]);
    net.lock().unwrap().queue_events()[TXQ].write(1).unwrap();
    while em.run_with_timeout(50).unwrap() > 0 {}
    assert_eq!(peer_recv_blocking(&peer), frame(30, 5));
    // A frame arriving after the guest ran out of buffers is delivered once it posts more.
    for _ in 0..3 {
        peer.send(&frame(10, 0)).unwrap();
    }
    while em.run_with_timeout(50).unwrap() > 0 {}
    assert_eq!(rx.take_used().len(), 2);
    rx.add(&[w(BUF + 0x9000, 2048)]);
    net.lock().unwrap().queue_events()[RXQ].write(1).unwrap();
    while em.run_with_timeout(50).unwrap() > 0 {}
    assert_eq!(rx.take_used().len(), 1);
}

fn peer_recv_blocking(peer: &UnixDatagram) -> Vec<u8> {
    peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut b = vec![0u8; MAX_FRAME];
    let n = peer.recv(&mut b).unwrap();
    b.truncate(n);
    b
}

#[test]
fn tap_open_validates_name_and_opens_when_permitted() {
    assert!(matches!(Tap::open(""), Err(Error::TapName(_))));
    assert!(matches!(
        Tap::open("a-very-long-interface-name"),
        Err(Error::TapName(_))
    ));
    match Tap::open("embertest0") {
        Ok(t) => {
            assert_eq!(t.name(), "embertest0");
            let mut t = t;
            // The interface is down: nothing to read, and the fd is non-blocking.
            let mut b = [0u8; 64];
            let e = t.read_frame(&mut b).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        }
        Err(e) => eprintln!("skipping TAP open check: {e}"),
    }
}

/// Snapshot through the transport: the restored device keeps the saved MAC, works on its own
/// backend and goes on where the rings stood.
#[test]
fn save_and_restore_continue_both_queues() {
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::persist::DeviceKindState;

    let m = mem(0x10_0000);
    fill(&m, BUF, 0x4_0000, GUARD);
    let mut rx = GuestQueue::new(&m, 0, 16);
    let mut tx = GuestQueue::new(&m, 0x4000, 16);
    let features = (1 << crate::virtio::VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC);

    let (a, peer) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let dev = Arc::new(Mutex::new(Net::new(Box::new(Wire(a)), Some(MAC)).unwrap()));
    let irq = Arc::new(CountingInterrupt::new());
    let mut t = MmioTransport::new(m.clone(), dev.clone(), irq).unwrap();
    bring_up(&mut t, features, &[&rx, &tx]);
    m.write_slice(&frame(20, 1), vm_memory::GuestAddress(BUF + 0x8000))
        .unwrap();
    tx.add(&[r(BUF + 0x8000, 32)]);
    dev.lock().unwrap().process_tx();
    assert_eq!(peer_recv(&peer), Some(frame(20, 1)));
    rx.add(&[w(BUF, 2048)]);
    peer.send(&frame(30, 2)).unwrap();
    dev.lock().unwrap().process_rx();
    assert_eq!(rx.take_used().len(), 1);
    assert_eq!(tx.take_used().len(), 1);
    // One more rx buffer is posted and waits.
    rx.add(&[w(BUF + 0x1000, 2048)]);
    let snap = t.save().unwrap();
    assert_eq!(snap.device.kind, DeviceKindState::Net { mac: MAC });
    drop((t, dev));

    // This VM's backend, built with another MAC: the guest keeps the one it knows.
    let (b, peer2) = UnixDatagram::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    peer2.set_nonblocking(true).unwrap();
    let other = [0x02, 0, 0, 0, 0, 0x42];
    let dev = Arc::new(Mutex::new(
        Net::new(Box::new(Wire(b)), Some(other)).unwrap(),
    ));
    let irq = Arc::new(CountingInterrupt::new());
    let mut t = MmioTransport::new(m.clone(), dev.clone(), irq.clone()).unwrap();
    t.restore(&snap).unwrap();
    let mut mac = [0u8; 6];
    dev.lock().unwrap().read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    assert!(dev.lock().unwrap().is_activated());

    // rx: the waiting buffer takes the next frame, at used index 1.
    peer2.send(&frame(40, 3)).unwrap();
    dev.lock().unwrap().process_rx();
    let used = rx.take_used();
    assert_eq!(used, vec![(1, 52)]);
    assert_eq!(rx.used_idx(), 2);
    let mut want = frame(40, 3);
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(read(&m, BUF + 0x1000, 52), want);
    // tx: a new frame reaches the new backend; the old one is not sent again.
    m.write_slice(&frame(24, 4), vm_memory::GuestAddress(BUF + 0x9000))
        .unwrap();
    tx.add(&[r(BUF + 0x9000, 36)]);
    dev.lock().unwrap().process_tx();
    assert_eq!(peer_recv(&peer2), Some(frame(24, 4)));
    assert_eq!(peer_recv(&peer2), None, "a frame was replayed");
    assert_eq!(tx.take_used().len(), 1);
    assert_eq!(tx.used_idx(), 2);
    assert_eq!(dev.lock().unwrap().stats().tx_frames, 1);
    assert!(irq.count(InterruptKind::Vring) >= 2);

    // A device without the MAC feature cannot take a guest that negotiated it.
    let (c, _peer3) = UnixDatagram::pair().unwrap();
    let dev = Arc::new(Mutex::new(Net::new(Box::new(Wire(c)), None).unwrap()));
    let mut t =
        MmioTransport::new(m.clone(), dev.clone(), Arc::new(CountingInterrupt::new())).unwrap();
    assert!(matches!(
        t.restore(&snap),
        Err(crate::virtio::persist::PersistError::Features { .. })
    ));
    assert_eq!(t.status(), 0);
    assert!(!dev.lock().unwrap().is_activated());
}

/// A tx chain with one `frame(n, seed)` at `addr`.
fn add_tx_frame(m: &GuestMem, q: &mut GuestQueue, addr: u64, n: usize, seed: u8) -> u16 {
    m.write_slice(&frame(n, seed), vm_memory::GuestAddress(addr))
        .unwrap();
    q.add(&[r(addr, (VNET_HDR_LEN + n) as u32)])
}

#[test]
fn detached_consumes_and_drops_tx_and_never_receives() {
    let m = mem(0x10_0000);
    fill(&m, BUF, 0x4_0000, GUARD);
    let mut rx = GuestQueue::new(&m, 0, 16);
    let mut tx = GuestQueue::new(&m, 0x4000, 16);
    let mut net = Net::detached(Some(MAC)).unwrap();
    assert!(net.is_detached());
    assert_ne!(net.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let irq = Arc::new(CountingInterrupt::new());
    net.activate(m.clone(), vec![rx.queue(), tx.queue()], irq.clone())
        .unwrap();

    let a = add_tx_frame(&m, &mut tx, BUF + 0x8000, 60, 1);
    let b = add_tx_frame(&m, &mut tx, BUF + 0x9000, 20, 2);
    net.process_tx();
    assert_eq!(tx.take_used(), vec![(u32::from(a), 0), (u32::from(b), 0)]);
    assert_eq!(tx.used_idx(), 2);
    assert_eq!(irq.count(InterruptKind::Vring), 1);
    let s = net.stats();
    assert_eq!((s.tx_frames, s.tx_dropped), (0, 2));

    // rx buffers stay posted: nothing ever arrives.
    rx.add(&[w(BUF, 2048)]);
    net.process_rx();
    assert!(rx.take_used().is_empty());
    assert_eq!(net.stats().rx_frames, 0);
    assert_eq!(net.stats().rx_dropped, 0);
    assert_untouched(&m, BUF, 0x8000, GUARD);

    let no_mac = Net::detached(None).unwrap();
    assert_eq!(no_mac.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
}

/// In the event loop a detached device registers no backend fd and still serves tx.
#[test]
fn detached_in_event_loop() {
    let m = mem(0x10_0000);
    let rx = GuestQueue::new(&m, 0, 16);
    let mut tx = GuestQueue::new(&m, 0x4000, 16);
    let net = Arc::new(Mutex::new(Net::detached(Some(MAC)).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    net.lock()
        .unwrap()
        .activate(
            m.clone(),
            vec![rx.queue(), tx.queue()],
            Arc::new(CountingInterrupt::new()),
        )
        .unwrap();
    // The activate event, then quiet.
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(em.run_with_timeout(10).unwrap(), 0);
    add_tx_frame(&m, &mut tx, BUF, 30, 5);
    net.lock().unwrap().queue_events()[TXQ].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(em.run_with_timeout(10).unwrap(), 0);
    assert_eq!(tx.take_used().len(), 1);
    assert_eq!(net.lock().unwrap().stats().tx_dropped, 1);
}

/// A template's detached device restores onto a pod's device with a backend (and the other
/// way round): the rings go on where they stood, frames flow on the backend.
#[test]
fn detached_state_restores_onto_a_backend_and_back() {
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::persist::DeviceKindState;

    let m = mem(0x10_0000);
    fill(&m, BUF, 0x4_0000, GUARD);
    let mut rx = GuestQueue::new(&m, 0, 16);
    let mut tx = GuestQueue::new(&m, 0x4000, 16);
    let features = (1 << crate::virtio::VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC);

    // The template: a detached device; one frame sent and dropped, one rx buffer posted.
    let dev = Arc::new(Mutex::new(Net::detached(Some(MAC)).unwrap()));
    let mut t =
        MmioTransport::new(m.clone(), dev.clone(), Arc::new(CountingInterrupt::new())).unwrap();
    bring_up(&mut t, features, &[&rx, &tx]);
    add_tx_frame(&m, &mut tx, BUF + 0x8000, 20, 1);
    dev.lock().unwrap().process_tx();
    assert_eq!(tx.take_used().len(), 1);
    rx.add(&[w(BUF, 2048)]);
    dev.lock().unwrap().process_rx();
    assert!(rx.take_used().is_empty());
    let snap = t.save().unwrap();
    assert_eq!(snap.device.kind, DeviceKindState::Net { mac: MAC });
    drop((t, dev));

    // The pod: a device on a backend, built with another MAC; the guest keeps the saved one.
    let (b, peer) = UnixDatagram::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let other = [0x02, 0, 0, 0, 0, 0x42];
    let dev = Arc::new(Mutex::new(
        Net::new(Box::new(Wire(b)), Some(other)).unwrap(),
    ));
    let irq = Arc::new(CountingInterrupt::new());
    let mut t = MmioTransport::new(m.clone(), dev.clone(), irq.clone()).unwrap();
    t.restore(&snap).unwrap();
    let mut mac = [0u8; 6];
    dev.lock().unwrap().read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    assert!(dev.lock().unwrap().is_activated());
    // rx: the buffer posted on the template takes the first frame, at used index 0.
    peer.send(&frame(40, 3)).unwrap();
    dev.lock().unwrap().process_rx();
    assert_eq!(rx.take_used(), vec![(0, 52)]);
    let mut want = frame(40, 3);
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(read(&m, BUF, 52), want);
    // tx: goes on at used index 1 and reaches the backend.
    add_tx_frame(&m, &mut tx, BUF + 0x9000, 24, 4);
    dev.lock().unwrap().process_tx();
    assert_eq!(peer_recv(&peer), Some(frame(24, 4)));
    assert_eq!(peer_recv(&peer), None);
    assert_eq!(tx.take_used().len(), 1);
    assert_eq!(tx.used_idx(), 2);
    assert_eq!(dev.lock().unwrap().stats().tx_frames, 1);
    assert!(irq.count(InterruptKind::Vring) >= 2);

    // And back: the device on a backend saved, restored onto a detached one.
    rx.add(&[w(BUF + 0x1000, 2048)]);
    let snap = t.save().unwrap();
    drop((t, dev));
    let dev = Arc::new(Mutex::new(Net::detached(None).unwrap()));
    // Without the MAC feature it cannot take this guest; with it, it can.
    let mut t =
        MmioTransport::new(m.clone(), dev.clone(), Arc::new(CountingInterrupt::new())).unwrap();
    assert!(matches!(
        t.restore(&snap),
        Err(crate::virtio::persist::PersistError::Features { .. })
    ));
    drop((t, dev));
    let dev = Arc::new(Mutex::new(Net::detached(Some(other)).unwrap()));
    let mut t =
        MmioTransport::new(m.clone(), dev.clone(), Arc::new(CountingInterrupt::new())).unwrap();
    t.restore(&snap).unwrap();
    dev.lock().unwrap().read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    add_tx_frame(&m, &mut tx, BUF + 0xa000, 24, 5);
    dev.lock().unwrap().process_tx();
    assert_eq!(tx.take_used().len(), 1);
    assert_eq!(tx.used_idx(), 3);
    assert_eq!(dev.lock().unwrap().stats().tx_dropped, 1);
    dev.lock().unwrap().process_rx();
    assert!(rx.take_used().is_empty());
}

fn frames_per(size: u64, refill_time_ms: u64) -> crate::rate_limiter::RateLimiter {
    let limit = crate::rate_limiter::RateLimit {
        bandwidth: None,
        ops: Some(crate::rate_limiter::BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        }),
    };
    crate::rate_limiter::RateLimiter::new(&limit)
        .unwrap()
        .unwrap()
}

/// Runs `em` until `done` or 5 s have passed.
fn run_until(em: &mut EventManager<Arc<Mutex<Net>>>, mut done: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() && std::time::Instant::now() < end {
        em.run_with_timeout(20).unwrap();
    }
}

#[test]
fn rate_limited_frames_wait_for_tokens_in_order_and_none_is_lost() {
    let m = mem(0x10_0000);
    let (a, peer) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut rx = GuestQueue::new(&m, 0, 16);
    let mut tx = GuestQueue::new(&m, 0x4000, 16);
    let mut dev = Net::new(Box::new(Wire(a)), Some(MAC)).unwrap();
    // Two frames each way, then one per 25 ms.
    dev.set_rate_limiters(Some(frames_per(2, 50)), Some(frames_per(2, 50)));
    let (net, mut em) = on_event_loop(&m, dev, &rx, &tx);

    // tx: five frames queued at once; the first pass sends two, the timer the rest.
    for i in 0..5u64 {
        let addr = BUF + 0x8000 + i * 0x100;
        m.write_slice(&frame(30, i as u8), vm_memory::GuestAddress(addr))
            .unwrap();
        tx.add(&[r(addr, 42)]);
    }
    net.lock().unwrap().process_tx();
    assert_eq!(tx.take_used().len(), 2);
    let mut sent = Vec::new();
    while let Some(f) = peer_recv(&peer) {
        sent.push(f);
    }
    assert_eq!(sent, vec![frame(30, 0), frame(30, 1)]);
    run_until(&mut em, || {
        while let Some(f) = peer_recv(&peer) {
            sent.push(f);
        }
        sent.len() == 5
    });
    assert_eq!(sent, (0..5).map(|i| frame(30, i)).collect::<Vec<_>>());
    assert_eq!(tx.take_used().len(), 3);

    // rx: five frames from the wire, buffers for all; delivered in order, none dropped.
    for i in 0..5u64 {
        rx.add(&[w(BUF + i * 0x1000, 2048)]);
    }
    for i in 0..5 {
        peer.send(&frame(40, i)).unwrap();
    }
    let mut got = Vec::new();
    run_until(&mut em, || {
        got.extend(rx.take_used());
        got.len() == 5
    });
    assert_eq!(got.len(), 5);
    for (i, _) in got.iter().enumerate() {
        let mut want = frame(40, i as u8);
        want[10..12].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(read(&m, BUF + i as u64 * 0x1000, want.len()), want);
    }
    let net = net.lock().unwrap();
    assert_eq!(net.stats().rx_dropped + net.stats().tx_dropped, 0);
    let (rx_waits, tx_waits) = net.throttled();
    assert!(rx_waits > 0 && tx_waits > 0, "{rx_waits} {tx_waits}");
    let counters = net.counters();
    assert!(counters.contains(&("rx_frames", 5)), "{counters:?}");
    assert!(counters.contains(&("tx_frames", 5)), "{counters:?}");
    assert!(
        counters.contains(&("tx_throttled", tx_waits)),
        "{counters:?}"
    );
}
