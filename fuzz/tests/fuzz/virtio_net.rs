//! virtio-net: rx buffers and tx frames the guest posts, frames the host side delivers, in
//! fuzzed order; chains of fuzzed buffers and layouts, and raw descriptors.
//!
//! Invariants: a frame handed to the host is a whole vnet header plus at most `MAX_FRAME`
//! bytes; an rx used length never exceeds the chain's writable bytes (nor the frame); tx
//! chains are returned with length 0; a looped chain is never used for a frame.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::net::{Net, NetBackend, MAX_FRAME, VNET_HDR_LEN};
use devices::virtio::test_utils::{mem, GuestQueue, D};
use devices::virtio::{CountingInterrupt, VirtioDevice};
use fuzz::{Input, Target};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::common::{self, Layout, QLEN};

const MEM: usize = 0x10_0000;

pub const TARGET: Target = Target {
    name: "virtio_net",
    max_len: 4096,
    dict: &[],
};

#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<usize>,
}

/// The host side: frames queued by the input, frames sent recorded.
struct FakeTap {
    wire: Arc<Mutex<Wire>>,
    fd: EventFd,
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.wire.lock().unwrap();
        match w.rx.pop_front() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.wire.lock().unwrap().tx.push(frame.len());
        Ok(frame.len())
    }
}

fn chain(inp: &mut Input, write: bool) -> Vec<D> {
    let n = inp.below(5);
    (0..n)
        .map(|_| D {
            addr: common::addr(inp, MEM as u64),
            len: common::len(inp),
            write: if inp.one_in(8) { !write } else { write },
        })
        .collect()
}

pub fn one(data: &[u8]) {
    let mut inp = Input::new(data);
    let m = mem(MEM);
    let mut rxq = GuestQueue::new(&m, 0, QLEN);
    let mut txq = GuestQueue::new(&m, 0x4000, QLEN);
    let wire = Arc::new(Mutex::new(Wire::default()));
    let tap = FakeTap {
        wire: wire.clone(),
        fd: EventFd::new(0).unwrap(),
    };
    let mut net = Net::new(Box::new(tap), Some([2, 0xee, 0, 0, 0, 1])).unwrap();
    net.activate(
        m.clone(),
        vec![rxq.queue(), txq.queue()],
        Arc::new(CountingInterrupt::new()),
    )
    .unwrap();
    let mut rx_bound = 0u64;
    let mut rx_loops = false;

    for _ in 0..16 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 8 {
            0 | 1 => {
                // The host delivers a frame.
                let len = match inp.u8() % 4 {
                    0 => usize::from(inp.u8()) % (VNET_HDR_LEN + 2),
                    1 => MAX_FRAME + usize::from(inp.u8()),
                    _ => usize::from(inp.u16()) % 4096,
                };
                let fill = inp.u8();
                wire.lock().unwrap().rx.push_back(vec![fill; len]);
                net.process_rx();
            }
            2 | 3 => {
                let descs = chain(&mut inp, true);
                let layout = Layout::from(&mut inp);
                rx_bound = rx_bound.max(common::writable_total(&descs));
                rx_loops |= !layout.well_formed();
                common::publish(&mut rxq, &descs, layout);
                net.process_rx();
            }
            4 | 5 => {
                let descs = chain(&mut inp, false);
                let fill = inp.u8();
                // The guest's frame bytes, in its buffers that are data (one at a fuzzed
                // address may lie on the rings: a guest scribbling over its own used ring is not
                // the device's doing, and would make the used check below read garbage).
                for d in descs.iter().filter(|d| !d.write && d.addr >= common::DATA) {
                    let n = (d.len as usize).min(0x1000);
                    let _ = m.write_slice(&vec![fill; n], GuestAddress(d.addr));
                }
                let layout = Layout::from(&mut inp);
                // Both queues' indirect tables live at INDIRECT: a tx chain put there rewrites
                // the table of an rx chain still waiting, which the device reads when a frame
                // comes, so its writable bytes bound rx too.
                rx_bound = rx_bound.max(common::writable_total(&descs));
                rx_loops |= layout != Layout::Direct;
                common::publish(&mut txq, &descs, layout);
                net.process_tx();
                common::check_used(&mut txq, 0, "virtio-net tx");
            }
            6 => {
                let bound = common::publish_raw(&m, &mut rxq, &mut inp, MEM as u64);
                rx_bound = rx_bound.max(bound);
                rx_loops = true;
                net.process_rx();
            }
            _ => {
                // (Its raw indirect descriptors are at INDIRECT too: see above.)
                let bound = common::publish_raw(&m, &mut txq, &mut inp, MEM as u64);
                rx_bound = rx_bound.max(bound);
                rx_loops = true;
                net.process_tx();
                common::check_used(&mut txq, 0, "virtio-net tx raw");
            }
        }
        // Chains wait in the ring until a frame comes: any used one is bounded by the
        // largest chain posted so far.
        let used = common::check_used(&mut rxq, rx_bound, "virtio-net rx");
        if !rx_loops {
            for &(_, l) in &used {
                assert!(
                    l == 0 || l as usize >= VNET_HDR_LEN,
                    "virtio-net: short rx frame"
                );
            }
        }
        for &n in &wire.lock().unwrap().tx {
            assert!(
                (VNET_HDR_LEN..=MAX_FRAME).contains(&n),
                "virtio-net: {n}-byte frame sent to the host"
            );
        }
    }
}

#[test]
fn fuzz_virtio_net() {
    fuzz::run(&TARGET, one);
}
