//! virtio-rng: request chains of fuzzed buffers and layouts, and raw descriptors.
//!
//! Invariants: a used length never exceeds the chain's writable bytes nor the device's
//! 64 KiB per request; a looped chain is never served.

use std::sync::Arc;

use devices::virtio::rng::{Rng, MAX_REQUEST};
use devices::virtio::test_utils::{mem, GuestQueue, D};
use devices::virtio::{CountingInterrupt, VirtioDevice};
use fuzz::{Input, Target};

use crate::common::{self, Layout, QLEN};

const MEM: usize = 0x10_0000;

pub const TARGET: Target = Target {
    name: "virtio_rng",
    max_len: 2048,
    dict: &[],
};

pub fn one(data: &[u8]) {
    let mut inp = Input::new(data);
    let m = mem(MEM);
    let mut q = GuestQueue::new(&m, 0, QLEN);
    let mut rng = Rng::new().unwrap();
    rng.activate(
        m.clone(),
        vec![q.queue()],
        Arc::new(CountingInterrupt::new()),
    )
    .unwrap();
    for _ in 0..16 {
        if inp.is_empty() {
            break;
        }
        if inp.u8() % 8 == 7 {
            let bound = common::publish_raw(&m, &mut q, &mut inp, MEM as u64);
            rng.process_queue();
            let bound = bound.min(MAX_REQUEST as u64);
            common::check_used(&mut q, bound, "virtio-rng raw");
            continue;
        }
        let n = inp.below(6);
        let descs: Vec<D> = (0..n)
            .map(|_| D {
                addr: common::addr(&mut inp, MEM as u64),
                len: common::len(&mut inp),
                write: !inp.one_in(8),
            })
            .collect();
        let layout = Layout::from(&mut inp);
        common::publish(&mut q, &descs, layout);
        assert!(rng.process_queue() <= 1);
        let bound = common::writable_total(&descs).min(MAX_REQUEST as u64);
        let used = common::check_used(&mut q, bound, "virtio-rng");
        if !layout.well_formed() {
            assert!(
                used.iter().all(|&(_, l)| l == 0),
                "virtio-rng: looped chain served"
            );
        }
    }
}

#[test]
fn fuzz_virtio_rng() {
    fuzz::run(&TARGET, one);
}
