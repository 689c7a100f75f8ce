//! virtio-vsock: guest packets (fuzzed headers, payloads and buffer splits) into the real
//! Unix-socket muxer, rx buffers, host peers that connect (`CONNECT <port>` lines, also
//! fuzzed) and accept, and event-loop ticks, in fuzzed order; raw descriptors too.
//!
//! Invariants: tx chains are returned with length 0; an rx used length is 0 or a whole
//! packet header plus payload within the chain's writable bytes; a looped rx chain is never
//! filled.

use std::io::{Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use devices::virtio::test_utils::{mem, GuestQueue, D};
use devices::virtio::vsock::packet::{PacketHeader, HDR_SIZE};
use devices::virtio::vsock::{UnixMuxer, Vsock, VsockBackend};
use devices::virtio::{CountingInterrupt, VirtioDevice};
use event_manager::EventSet;
use fuzz::{Input, Target};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use crate::common::{self, Layout, QLEN};

const MEM: usize = 0x10_0000;
const TX: u64 = 0x2_0000;
/// The host port with a listener (`<uds>_1234`); other ports are refused.
const PORT: u32 = 1234;

pub const TARGET: Target = Target {
    name: "virtio_vsock",
    max_len: 4096,
    dict: &[b"CONNECT 1234\n", b"CONNECT ", b"\n", &[0xd2, 0x04, 0, 0]],
};

/// The muxer behind the device, shared so that the input can drive its event side.
struct Shared(Arc<Mutex<UnixMuxer>>);

impl VsockBackend for Shared {
    fn send_pkt(&mut self, hdr: &PacketHeader, data: &[u8]) {
        self.0.lock().unwrap().send_pkt(hdr, data)
    }
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        self.0.lock().unwrap().recv_pkt(buf)
    }
    fn has_pending_rx(&self) -> bool {
        self.0.lock().unwrap().has_pending_rx()
    }
    fn notify(&mut self, fd: RawFd, events: EventSet) {
        self.0.lock().unwrap().notify(fd, events)
    }
    fn interest(&self) -> Vec<(RawFd, EventSet)> {
        self.0.lock().unwrap().interest()
    }
    fn take_closed(&mut self) -> Vec<OwnedFd> {
        self.0.lock().unwrap().take_closed()
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().reset()
    }
    fn connections(&self) -> usize {
        self.0.lock().unwrap().connections()
    }
}

fn header(inp: &mut Input, len: u32) -> PacketHeader {
    let sel = inp.u8();
    PacketHeader {
        src_cid: if sel & 1 != 0 { inp.u64() } else { 3 },
        dst_cid: if sel & 2 != 0 { inp.u64() } else { 2 },
        src_port: match inp.u8() % 4 {
            0 => inp.u32(),
            k => 1000 + u32::from(k),
        },
        dst_port: match inp.u8() % 4 {
            0 => inp.u32(),
            1 => 9999,
            _ => PORT,
        },
        len: if sel & 4 != 0 { inp.u32() } else { len },
        type_: if sel & 8 != 0 { inp.u16() } else { 1 },
        op: if sel & 0x10 != 0 {
            inp.u16()
        } else {
            1 + u16::from(inp.u8() % 7)
        },
        flags: u32::from(inp.u8() % 4),
        buf_alloc: match inp.u8() % 4 {
            0 => 0,
            1 => inp.u32(),
            _ => 256 * 1024,
        },
        fwd_cnt: if sel & 0x20 != 0 { inp.u32() } else { 0 },
    }
}

pub fn one(data: &[u8]) {
    let mut inp = Input::new(data);
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("ember-fuzz-vsock-")).unwrap();
    let uds = dir.as_path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_{PORT}", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let muxer = Arc::new(Mutex::new(UnixMuxer::new(3, &uds).unwrap()));
    let m = mem(MEM);
    let mut rxq = GuestQueue::new(&m, 0, QLEN);
    let mut txq = GuestQueue::new(&m, 0x4000, QLEN);
    let evq = GuestQueue::new(&m, 0x8000, QLEN);
    let mut dev = Vsock::new(3, Box::new(Shared(muxer.clone()))).unwrap();
    dev.activate(
        m.clone(),
        vec![rxq.queue(), txq.queue(), evq.queue()],
        Arc::new(CountingInterrupt::new()),
    )
    .unwrap();
    let mut peers: Vec<UnixStream> = Vec::new();
    let mut rx_bound = 0u64;
    let mut rx_loops = false;
    for _ in 0..24 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 10 {
            0..=2 => {
                // A guest packet: header and payload, split over up to three buffers.
                let plen = u32::from(inp.u16() % 512);
                let hdr = header(&mut inp, plen);
                let mut bytes = hdr.to_bytes().to_vec();
                let fill = inp.u8();
                bytes.extend(std::iter::repeat_n(fill, plen as usize));
                let _ = m.write_slice(&bytes, GuestAddress(TX));
                let cut1 = inp.below(bytes.len() + 1);
                let cut2 = cut1 + inp.below(bytes.len() - cut1 + 1);
                let mut descs = vec![];
                for (a, b) in [(0, cut1), (cut1, cut2), (cut2, bytes.len())] {
                    if b > a {
                        descs.push(D {
                            addr: TX + a as u64,
                            len: (b - a) as u32,
                            write: false,
                        });
                    }
                }
                if inp.one_in(8) {
                    descs.push(D {
                        addr: common::addr(&mut inp, MEM as u64),
                        len: common::len(&mut inp),
                        write: inp.bool(),
                    });
                }
                let layout = Layout::from(&mut inp);
                // Both queues' indirect tables live at INDIRECT: a tx chain put there rewrites
                // the table of an rx chain still waiting, so its writable bytes bound rx too.
                rx_bound = rx_bound.max(common::writable_total(&descs));
                common::publish(&mut txq, &descs, layout);
                dev.process_tx();
                common::check_used(&mut txq, 0, "vsock tx");
            }
            3 | 4 => {
                let n = inp.below(4);
                let descs: Vec<D> = (0..n)
                    .map(|_| D {
                        addr: common::addr(&mut inp, MEM as u64),
                        len: if inp.bool() {
                            HDR_SIZE as u32
                        } else {
                            common::len(&mut inp)
                        },
                        write: !inp.one_in(8),
                    })
                    .collect();
                let layout = Layout::from(&mut inp);
                rx_bound = rx_bound.max(common::writable_total(&descs));
                rx_loops |= !layout.well_formed();
                common::publish(&mut rxq, &descs, layout);
                dev.process_rx();
            }
            5 => {
                // One event-loop tick: every fd the muxer watches fires.
                let interest = muxer.lock().unwrap().interest();
                for (fd, ev) in interest {
                    muxer.lock().unwrap().notify(fd, ev);
                }
                drop(muxer.lock().unwrap().take_closed());
                dev.process_rx();
            }
            6 => {
                // A host program connects and sends a (fuzzed) CONNECT line.
                if peers.len() < 8 {
                    if let Ok(mut s) = UnixStream::connect(&uds) {
                        let line: Vec<u8> = if inp.bool() {
                            format!("CONNECT {}\n", inp.u16() % 2048).into_bytes()
                        } else {
                            let n = inp.below(48);
                            inp.bytes(n).to_vec()
                        };
                        let _ = s.set_nonblocking(true);
                        let _ = s.write_all(&line);
                        peers.push(s);
                    }
                }
            }
            7 => {
                // The listener accepts; peers write, read or hang up.
                if let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    peers.push(s);
                }
                if !peers.is_empty() {
                    let i = inp.below(peers.len());
                    match inp.u8() % 3 {
                        0 => {
                            let n = usize::from(inp.u16() % 4096);
                            let _ = peers[i].write_all(&vec![0x5a; n]);
                        }
                        1 => {
                            let mut b = [0u8; 4096];
                            let _ = peers[i].read(&mut b);
                        }
                        _ => {
                            peers.swap_remove(i);
                        }
                    }
                }
            }
            8 => {
                let bound = common::publish_raw(&m, &mut rxq, &mut inp, MEM as u64);
                rx_bound = rx_bound.max(bound);
                rx_loops = true;
                dev.process_rx();
            }
            _ => {
                // (Its raw indirect descriptors are at INDIRECT too: see above.)
                let bound = common::publish_raw(&m, &mut txq, &mut inp, MEM as u64);
                rx_bound = rx_bound.max(bound);
                dev.process_tx();
                common::check_used(&mut txq, 0, "vsock tx raw");
            }
        }
        let used = common::check_used(&mut rxq, rx_bound, "vsock rx");
        if !rx_loops {
            for &(_, l) in &used {
                assert!(
                    l == 0 || l as usize >= HDR_SIZE,
                    "vsock: rx packet without header"
                );
            }
        }
    }
    drop(dev);
}

#[test]
fn fuzz_virtio_vsock() {
    fuzz::run(&TARGET, one);
}
