//! `virtq-bad --device-id N` (guest, as root): a misbehaving virtio driver in user space, for
//! the slow tier's check that a device answers a broken guest with a warning in the VMM's log
//! and goes on (rig/scenarios/20-devices.sh, part `badq`).
//!
//! It unbinds the guest kernel's driver from the one virtio-mmio device of type N, drives the
//! device itself through `/dev/mem` (its registers at the `virtio_mmio.device=` address on the
//! kernel command line) with a queue of [`QSIZE`] entries in pages of its own (their guest
//! physical addresses from `/proc/self/pagemap`), and posts one chain per case:
//!
//! - `good`: one device-writable buffer — the control: the device fills it;
//! - `outside`: a buffer beyond guest memory;
//! - `loop`: a descriptor whose `next` is itself;
//! - `bad-next`: a `next` beyond the queue;
//! - `readable`: a device-readable buffer (a request the device cannot fill);
//! - `good-again`: the device still serves after all of them;
//! - `avail-jump`: the avail index moved 100 ahead in a ring of [`QSIZE`] (the device stops
//!   the queue until a reset: no answer).
//!
//! Then it resets the device, acknowledges it again (as the kernel leaves a device whose
//! driver was unbound) and binds the kernel's driver again (the shell checks the driver works). Each case prints `virtq CASE: used len N` or `virtq CASE: no answer`; it fails
//! where a case's answer is not the expected one (the device's warnings are the host's part).

use std::fs;
use std::io;
use std::ptr;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use crate::arg;

/// Entries of the queue it builds.
pub const QSIZE: u16 = 8;
const PAGE: usize = 4096;

// virtio-mmio (version 2) registers.
const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One descriptor as the driver writes it: address, length, flags, next.
type Desc = (u64, u32, u16, u16);

/// A guest physical address far beyond any test guest's memory.
const OUTSIDE: u64 = 0x7fff_0000_0000;

/// `virtq-bad`: see the module documentation.
pub fn bad_queue(args: &[String]) -> Result<(), String> {
    let id: u32 = arg(args, "--device-id", 4)?;
    let base = find_device(id)?;
    let (sysfs_name, driver) = unbind(id)?;
    println!(
        "virtq device id {id} at {base:#x} ({sysfs_name}, driver {})",
        driver.as_deref().unwrap_or("none")
    );
    let regs = Mmio::map(base)?;
    let mut ring = Ring::new()?;
    regs.bring_up(&ring)?;

    let buf = ring.phys[3];
    let cases: [(&str, &[Desc], Option<u32>); 6] = [
        ("good", &[(buf, 32, F_WRITE, 0)], Some(32)),
        ("outside", &[(OUTSIDE, 64, F_WRITE, 0)], Some(0)),
        ("loop", &[(buf, 16, F_WRITE | F_NEXT, 0)], Some(0)),
        ("bad-next", &[(buf, 16, F_WRITE | F_NEXT, 200)], Some(0)),
        ("readable", &[(buf, 16, 0, 0)], Some(0)),
        ("good-again", &[(buf, 32, F_WRITE, 0)], Some(32)),
    ];
    let mut wrong = Vec::new();
    for (name, descs, want) in cases {
        ring.fill(buf, 0xee, 64);
        let got = ring.post(&regs, descs);
        report(name, got);
        if got != want {
            wrong.push(name);
        }
        if name.starts_with("good") && got == Some(32) && ring.peek(buf, 32) == [0xee; 32] {
            println!("virtq {name}: the buffer was not filled");
            wrong.push(name);
        }
    }
    // The avail index jumps 100 ahead: no chain is served, and the device stays quiet.
    let got = ring.jump(&regs, 100);
    report("avail-jump", got);
    if got.is_some() {
        wrong.push("avail-jump");
    }
    // Reset, then ACKNOWLEDGE again, as the kernel leaves a device whose driver went away
    // (its probe on bind only adds DRIVER).
    regs.write(STATUS, 0);
    println!("virtq device reset: status {:#x}", regs.read(STATUS));
    regs.write(STATUS, S_ACKNOWLEDGE);
    if let Some(d) = &driver {
        fs::write(format!("/sys/bus/virtio/drivers/{d}/bind"), &sysfs_name)
            .map_err(|e| format!("cannot bind {sysfs_name} to {d} again: {e}"))?;
        println!("virtq driver {d} bound again");
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("unexpected answers: {}", wrong.join(", ")))
    }
}

fn report(name: &str, got: Option<u32>) {
    match got {
        Some(n) => println!("virtq {name}: used len {n}"),
        None => println!("virtq {name}: no answer"),
    }
}

/// The base address of the one virtio-mmio device of type `id` on the kernel command line.
fn find_device(id: u32) -> Result<u64, String> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let mut found = Vec::new();
    for p in cmdline.split_whitespace() {
        let Some(v) = p.strip_prefix("virtio_mmio.device=") else {
            continue;
        };
        let base = v
            .split_once('@')
            .and_then(|(_, r)| r.split(':').next())
            .and_then(|b| u64::from_str_radix(b.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| format!("cannot parse {p}"))?;
        let m = Mmio::map(base)?;
        if m.read(MAGIC) == 0x7472_6976 && m.read(VERSION) == 2 && m.read(DEVICE_ID) == id {
            found.push(base);
        }
    }
    match found[..] {
        [b] => Ok(b),
        [] => Err(format!("no virtio-mmio device of type {id}")),
        _ => Err(format!("{} devices of type {id}: which one?", found.len())),
    }
}

/// Unbinds the guest kernel's driver from the virtio device of type `id`; its sysfs name and
/// the driver's name (none if it had none).
fn unbind(id: u32) -> Result<(String, Option<String>), String> {
    let dir = "/sys/bus/virtio/devices";
    let entries = fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))?;
    for e in entries.flatten() {
        let path = e.path();
        let dev = fs::read_to_string(path.join("device")).unwrap_or_default();
        if u32::from_str_radix(dev.trim().trim_start_matches("0x"), 16).ok() != Some(id) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let driver = fs::read_link(path.join("driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        if let Some(d) = &driver {
            fs::write(format!("/sys/bus/virtio/drivers/{d}/unbind"), &name)
                .map_err(|e| format!("cannot unbind {name} from {d}: {e}"))?;
        }
        return Ok((name, driver));
    }
    Err(format!("no virtio device of type {id} in {dir}"))
}

/// A device's registers, mapped from `/dev/mem`.
struct Mmio {
    ptr: *mut u8,
}

impl Mmio {
    fn map(base: u64) -> Result<Mmio, String> {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mem")
            .map_err(|e| format!("/dev/mem: {e}"))?;
        // SAFETY: a new shared mapping of one page of /dev/mem at `base` (page aligned: the
        // VMM's slots are); nothing else in this process uses the range.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                base as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of /dev/mem at {base:#x}: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(Mmio { ptr: p.cast() })
    }

    fn read(&self, off: usize) -> u32 {
        // SAFETY: `off` is one of the register offsets above, inside the mapped page and
        // 4-byte aligned; MMIO wants a volatile 32-bit access.
        unsafe { ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    fn write(&self, off: usize, v: u32) {
        // SAFETY: as in `read`.
        unsafe { ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }

    fn write64(&self, off: usize, v: u64) {
        self.write(off, v as u32);
        self.write(off + 4, (v >> 32) as u32);
    }

    /// Reset, feature negotiation (VIRTIO_F_VERSION_1 only) and queue 0 set up on `ring`.
    fn bring_up(&self, ring: &Ring) -> Result<(), String> {
        self.write(STATUS, 0);
        self.write(STATUS, S_ACKNOWLEDGE);
        self.write(STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 1);
        if self.read(DEVICE_FEATURES) & 1 == 0 {
            return Err("the device does not offer VIRTIO_F_VERSION_1".into());
        }
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, 1);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, 0);
        self.write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if self.read(STATUS) & S_FEATURES_OK == 0 {
            return Err("the device refused the features".into());
        }
        self.write(QUEUE_SEL, 0);
        let max = self.read(QUEUE_NUM_MAX);
        if max < u32::from(QSIZE) {
            return Err(format!("queue maximum {max} < {QSIZE}"));
        }
        self.write(QUEUE_NUM, u32::from(QSIZE));
        self.write64(QUEUE_DESC, ring.phys[0]);
        self.write64(QUEUE_DRIVER, ring.phys[1]);
        self.write64(QUEUE_DEVICE, ring.phys[2]);
        self.write(QUEUE_READY, 1);
        self.write(
            STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        let s = self.read(STATUS);
        if s & S_DRIVER_OK == 0 {
            return Err(format!("the device did not take DRIVER_OK (status {s:#x})"));
        }
        println!("virtq queue 0 ready: {QSIZE} entries (device maximum {max}), status {s:#x}");
        Ok(())
    }
}

/// The queue's pages: descriptor table, avail ring, used ring, a data buffer; locked in
/// memory, with their guest physical addresses.
struct Ring {
    virt: *mut u8,
    phys: [u64; 4],
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn new() -> Result<Ring, String> {
        // SAFETY: a new private anonymous mapping of four pages, locked and populated.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_LOCKED | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", io::Error::last_os_error()));
        }
        let virt: *mut u8 = p.cast();
        // SAFETY: the four pages just mapped.
        unsafe { ptr::write_bytes(virt, 0, 4 * PAGE) };
        let mut phys = [0u64; 4];
        let map = fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
        for (i, ph) in phys.iter_mut().enumerate() {
            let page = (virt as usize + i * PAGE) / PAGE;
            let mut e = [0u8; 8];
            std::os::unix::fs::FileExt::read_exact_at(&map, &mut e, page as u64 * 8)
                .map_err(|e| format!("pagemap: {e}"))?;
            let e = u64::from_le_bytes(e);
            let pfn = e & ((1 << 55) - 1);
            if e >> 63 == 0 || pfn == 0 {
                return Err("pagemap gives no frame (not root?)".into());
            }
            *ph = pfn * PAGE as u64;
        }
        Ok(Ring {
            virt,
            phys,
            avail_idx: 0,
            used_seen: 0,
        })
    }

    fn at<T>(&self, page: usize, off: usize) -> *mut T {
        // SAFETY (of the callers' accesses): every offset used is inside its page and aligned
        // for `T`.
        unsafe { self.virt.add(page * PAGE + off).cast() }
    }

    fn fill(&mut self, phys: u64, byte: u8, len: usize) {
        let page = self.phys.iter().position(|&p| p == phys).expect("own page");
        // SAFETY: `len` <= PAGE bytes of one of the ring's pages.
        unsafe { ptr::write_bytes(self.at::<u8>(page, 0), byte, len) };
    }

    fn peek(&self, phys: u64, len: usize) -> Vec<u8> {
        let page = self.phys.iter().position(|&p| p == phys).expect("own page");
        // SAFETY: as in `fill`.
        unsafe { std::slice::from_raw_parts(self.at::<u8>(page, 0), len).to_vec() }
    }

    /// Writes descriptors 0.. (addr, len, flags, next), publishes head 0, notifies, and
    /// waits up to 3 s for the used entry; its length.
    fn post(&mut self, regs: &Mmio, descs: &[Desc]) -> Option<u32> {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            // SAFETY: descriptor i of QSIZE, 16 bytes each, in the table's page.
            unsafe {
                ptr::write_volatile(self.at::<u64>(0, i * 16), addr);
                ptr::write_volatile(self.at::<u32>(0, i * 16 + 8), len);
                ptr::write_volatile(self.at::<u16>(0, i * 16 + 12), flags);
                ptr::write_volatile(self.at::<u16>(0, i * 16 + 14), next);
            }
        }
        let slot = usize::from(self.avail_idx % QSIZE);
        // SAFETY: avail ring: flags u16, idx u16, ring[QSIZE] u16, in its page.
        unsafe { ptr::write_volatile(self.at::<u16>(1, 4 + 2 * slot), 0) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.publish(regs)
    }

    /// Moves the avail index `by` ahead without buffers, notifies and waits.
    fn jump(&mut self, regs: &Mmio, by: u16) -> Option<u32> {
        self.avail_idx = self.avail_idx.wrapping_add(by);
        self.publish(regs)
    }

    fn publish(&mut self, regs: &Mmio) -> Option<u32> {
        fence(Ordering::SeqCst);
        // SAFETY: the avail ring's idx.
        unsafe { ptr::write_volatile(self.at::<u16>(1, 2), self.avail_idx) };
        fence(Ordering::SeqCst);
        regs.write(QUEUE_NOTIFY, 0);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            fence(Ordering::SeqCst);
            // SAFETY: the used ring: flags u16, idx u16, ring[QSIZE] {id u32, len u32}.
            let idx = unsafe { ptr::read_volatile(self.at::<u16>(2, 2)) };
            if idx != self.used_seen {
                let slot = usize::from(self.used_seen % QSIZE);
                // SAFETY: as above.
                let len = unsafe { ptr::read_volatile(self.at::<u32>(2, 4 + 8 * slot + 4)) };
                self.used_seen = self.used_seen.wrapping_add(1);
                regs.write(INTERRUPT_ACK, regs.read(INTERRUPT_STATUS));
                return Some(len);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}
