//! vCPU exits per second with and without ember's seccomp filters: a CPL3 payload writes a
//! counter to an I/O port forever (one exit to the VMM per write); after a warm-up the port's
//! writes are counted for a fixed time. Runs on any /dev/kvm, a PVM one included (the payload
//! is user-mode code). Each exit is one `KVM_RUN` ioctl through the vCPU's filter.
//!
//! `cargo run --release -p ember-vmm --example exit_rate -- [SECONDS] [ROUNDS]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::builder::{build_payload_vm, PayloadSpec};
use vmm::device_manager::BusDevice;

/// `xor eax, eax; mov dx, 0x500; loop: inc eax; out dx, eax; jmp loop`.
const COUNTER: [u8; 11] = [
    0x31, 0xc0, 0x66, 0xba, 0x00, 0x05, 0xff, 0xc0, 0xef, 0xeb, 0xfb,
];

struct Count(Arc<AtomicU64>);

impl BusDevice for Count {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn rate(seccomp: bool, secs: f64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let filters = seccomp.then(|| Arc::new(vmm::seccomp::Filters::builtin().expect("filters")));
    let vm = build_payload_vm(PayloadSpec {
        extra_pio: vec![(0x500, 4, Arc::new(Mutex::new(Count(count.clone()))))],
        seccomp: filters,
        ..PayloadSpec::new(COUNTER.to_vec())
    })
    .expect("payload VM");
    let handle = vm.handle();
    let t = std::thread::spawn(move || vm.run());
    std::thread::sleep(Duration::from_millis(300));
    let (n0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (n1, t1) = (count.load(Ordering::Relaxed), Instant::now());
    handle.stop();
    let _ = t.join();
    (n1 - n0) as f64 / (t1 - t0).as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("exit_rate: no /dev/kvm");
        std::process::exit(1);
    }
    println!("round  unfiltered exits/s  confined exits/s  confined/unfiltered");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        let off = rate(false, secs);
        let on = rate(true, secs);
        println!("{r:>5}  {off:>18.0}  {on:>16.0}  {:>19.3}", on / off);
        a.push(off);
        b.push(on);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ma, mb) = (median(&mut a), median(&mut b));
    println!("median {ma:>18.0}  {mb:>16.0}  {:>19.3}", mb / ma);
}
