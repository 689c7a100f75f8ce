//! vCPU exit handling on the real `/dev/kvm`, with tiny x86_64 payloads started directly at
//! CPL3 (user segments, IOPL=3): they run natively even on a PVM host, where guest kernel
//! code is emulated. Skipped with a message where `/dev/kvm` is missing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::arch::x86_64::regs::Privilege;
use vmm::builder::{build_payload_vm, virtio_rng_driver, PayloadSpec};
use vmm::config::ConsoleConfig;
use vmm::device_manager::BusDevice;
use vmm::VmExit;

const LOAD_ADDR: u64 = 0x10_0000;
const TEST_PORT: u64 = 0x500;
const TEST_MMIO: u64 = 0xd000_1000;

fn kvm_present() -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        true
    } else {
        eprintln!("skipping: no /dev/kvm");
        false
    }
}

/// Records writes; reads return `fill`.
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
    fill: u8,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        data.fill(self.fill);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

fn recorder(fill: u8) -> Arc<Mutex<Recorder>> {
    Arc::new(Mutex::new(Recorder {
        writes: Vec::new(),
        reads: Vec::new(),
        fill,
    }))
}

/// i8042 reset: `mov al, 0xfe; out 0x64, al`, then spin in case it did not work.
const RESET: [u8; 6] = [0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];

/// The 32-bit words the payload wrote to TEST_PORT, in order.
fn port_words(dev: &Mutex<Recorder>) -> Vec<u32> {
    dev.lock()
        .unwrap()
        .writes
        .iter()
        .map(|w| u32::from_le_bytes(w.1[..4].try_into().unwrap()))
        .collect()
}

/// A payload VM with an in-kernel irqchip and the virtio devices of `cfg`, running `code`;
/// what it writes to TEST_PORT is recorded.
fn device_vm(code: Vec<u8>, cfg: vmm::VmConfig) -> (vmm::Vmm, Arc<Mutex<Recorder>>) {
    let dev = recorder(0);
    let vm = build_payload_vm(PayloadSpec {
        extra_pio: vec![(TEST_PORT, 1, dev.clone())],
        irqchip: true,
        devices: Some(cfg),
        ..PayloadSpec::new(code)
    })
    .unwrap();
    (vm, dev)
}

#[test]
fn port_io_at_cpl3_reaches_the_bus_and_reset_ends_the_vm() {
    if !kvm_present() {
        return;
    }
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'H', 0xee, // mov al, 'H'; out dx, al
        0xb0, b'i', 0xee, // mov al, 'i'; out dx, al
        0x66, 0xba, 0x00, 0x05, // mov dx, 0x500
        0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
        0xef, // out dx, eax
        0xec, // in al, dx
        0x66, 0xba, 0x01, 0x05, // mov dx, 0x501
        0xee, // out dx, al
    ];
    code.extend_from_slice(&RESET);
    let dev = recorder(0x5a);
    let console = std::env::temp_dir().join(format!("ember-payload-{}.out", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let vm = build_payload_vm(PayloadSpec {
        mem_mib: 64,
        privilege: Privilege::User,
        console: ConsoleConfig::File(console.clone()),
        extra_pio: vec![(TEST_PORT, 2, dev.clone())],
        extra_mmio: vec![],
        ..PayloadSpec::new(code.to_vec())
    })
    .unwrap();
    let handle = vm.handle();
    assert_eq!(vm.run().unwrap(), VmExit::Reset);
    let d = dev.lock().unwrap();
    assert_eq!(
        d.writes,
        vec![(0, 0x1234_5678u32.to_le_bytes().to_vec()), (1, vec![0x5a]),]
    );
    assert_eq!(d.reads, vec![(0, 1)]);
    assert_eq!(std::fs::read(&console).unwrap(), b"Hi");
    let t = handle.timings();
    assert!(t.first_kvm_run.is_some() && t.first_output.is_some() && t.exited.is_some());
    std::fs::remove_file(console).unwrap();
}

#[test]
fn mmio_at_cpl3_reaches_the_bus_and_the_boot_timer() {
    if !kvm_present() {
        return;
    }
    let mut code = vec![
        0xbb, 0x00, 0x00, 0x00, 0xd0, // mov ebx, 0xd0000000
        0xc6, 0x03, 0x01, // mov byte [rbx], 1
        0xc6, 0x03, 0x7b, // mov byte [rbx], 123
        0xb9, 0x00, 0x10, 0x00, 0xd0, // mov ecx, 0xd0001000
        0xc7, 0x01, 0x0d, 0xf0, 0xfe, 0xca, // mov dword [rcx], 0xcafef00d
        0x8b, 0x41, 0x04, // mov eax, [rcx+4]
        0x89, 0x41, 0x08, // mov [rcx+8], eax
    ];
    code.extend_from_slice(&RESET);
    let dev = recorder(0xa5);
    let vm = build_payload_vm(PayloadSpec {
        mem_mib: 64,
        privilege: Privilege::User,
        console: ConsoleConfig::Sink,
        extra_pio: vec![],
        extra_mmio: vec![(TEST_MMIO, 0x1000, dev.clone())],
        ..PayloadSpec::new(code.to_vec())
    })
    .unwrap();
    let handle = vm.handle();
    assert_eq!(vm.run().unwrap(), VmExit::Reset);
    let d = dev.lock().unwrap();
    assert_eq!(
        d.writes,
        vec![
            (0, 0xcafe_f00du32.to_le_bytes().to_vec()),
            (8, vec![0xa5; 4]),
        ]
    );
    assert_eq!(d.reads, vec![(4, 4)]);
    let t = handle.timings();
    assert!(t.init_start.is_some(), "boot timer saw 1");
    assert!(t.agent_ready.is_some(), "boot timer saw 123");
    assert!(t.agent_ready >= t.init_start);
    assert!(handle.wait_ready(Some(Duration::ZERO)));
}

#[test]
fn pause_resume_and_stop_a_spinning_vcpu() {
    if !kvm_present() {
        return;
    }
    // Spin forever at CPL3.
    let code = [0xeb, 0xfe];
    let vm = build_payload_vm(PayloadSpec {
        mem_mib: 32,
        privilege: Privilege::User,
        console: ConsoleConfig::Sink,
        extra_pio: vec![],
        extra_mmio: vec![],
        ..PayloadSpec::new(code.to_vec())
    })
    .unwrap();
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    // Wait for the vCPU to be inside the guest.
    while handle.timings().first_kvm_run.is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    handle.pause().unwrap();
    handle.resume().unwrap();
    // The spinning vCPU is at its `jmp $`.
    assert_eq!(handle.vcpu_rips().unwrap(), vec![(0, LOAD_ADDR)]);
    handle.pause().unwrap();
    handle.stop();
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Stopped);
    assert!(handle.pause().is_err(), "a stopped VM cannot pause");
}

#[test]
fn hlt_at_cpl0_ends_the_run() {
    if !kvm_present() {
        return;
    }
    // Two instructions at CPL0: emulated on a PVM host, but only two.
    let code = [0x90, 0xf4]; // nop; hlt
    let vm = build_payload_vm(PayloadSpec {
        mem_mib: 32,
        privilege: Privilege::Kernel,
        console: ConsoleConfig::Sink,
        extra_pio: vec![],
        extra_mmio: vec![],
        ..PayloadSpec::new(code.to_vec())
    })
    .unwrap();
    assert_eq!(vm.run().unwrap(), VmExit::Halted);
}

#[test]
fn faults_are_errors_with_rip_and_code() {
    if !kvm_present() {
        return;
    }
    // `hlt` at CPL3 raises #GP; with no IDT that becomes a triple fault (or an internal
    // error on hosts that emulate it): either way an error naming RIP and the bytes.
    let code = [0x90, 0xf4];
    let vm = build_payload_vm(PayloadSpec {
        mem_mib: 32,
        privilege: Privilege::User,
        console: ConsoleConfig::Sink,
        extra_pio: vec![],
        extra_mmio: vec![],
        ..PayloadSpec::new(code.to_vec())
    })
    .unwrap();
    let err = vm.run().unwrap_err();
    let msg = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    eprintln!("{msg}");
    assert!(msg.contains("RIP 0x10000"), "{msg}");
    assert!(msg.contains("f4") || msg.contains("90 f4"), "{msg}");
}

#[test]
fn virtio_devices_sit_in_their_mmio_slots() {
    if !kvm_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ember-payload-virtio-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = vmm::VmConfig::new("/unused");
    cfg.block = vec![vmm::config::BlockConfig {
        path: disk,
        read_only: true,
        rate_limit: None,
    }];
    cfg.vsock = Some(vmm::config::VsockConfig {
        guest_cid: 3,
        uds_path: dir.join("vsock.sock"),
    });
    cfg.rng = true;
    // virtio-net needs a TAP device (root and /dev/net/tun).
    let with_net = std::path::Path::new("/dev/net/tun").exists()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .is_ok();
    if with_net {
        cfg.net = vec![vmm::config::NetConfig {
            tap: format!("embt{}", std::process::id() % 100_000),
            mac: Some([0x02, 0, 0, 0, 0, 1]),
            rx_rate_limit: None,
            tx_rate_limit: None,
        }];
    } else {
        eprintln!("no /dev/net/tun access: virtio-net left out");
    }
    // Attach order: block, net, vsock, rng.
    let ids: Vec<u32> = if with_net {
        vec![2, 1, 19, 4]
    } else {
        vec![2, 19, 4]
    };

    // For each slot: out(0x500, magic); out(0x500, device id).
    let mut code = Vec::new();
    for slot in 0..ids.len() as u32 {
        let base = 0xd000_1000u32 + slot * 0x1000;
        code.push(0xb9); // mov ecx, base
        code.extend_from_slice(&base.to_le_bytes());
        code.extend_from_slice(&[0x66, 0xba, 0x00, 0x05]); // mov dx, 0x500
        code.extend_from_slice(&[0x8b, 0x01, 0xef]); // mov eax, [rcx]; out dx, eax
        code.extend_from_slice(&[0x8b, 0x41, 0x08, 0xef]); // mov eax, [rcx+8]; out dx, eax
    }
    code.extend_from_slice(&RESET);
    let (vm, dev) = device_vm(code, cfg);
    assert!(
        dir.join("vsock.sock").exists(),
        "vsock listens on its socket"
    );
    // The devices that count something report it through the handle, by MMIO window.
    let counters = vm.handle().device_counters();
    let blk = counters.iter().find(|d| d.device == "virtio-blk").unwrap();
    assert_eq!(blk.base, 0xd000_1000);
    assert_eq!(blk.counters.get("requests_throttled"), Some(&0));
    if with_net {
        let net = counters.iter().find(|d| d.device == "virtio-net").unwrap();
        assert_eq!(net.counters.get("tx_dropped"), Some(&0), "{counters:?}");
    }
    assert!(counters.iter().all(|d| d.device != "virtio-rng"));
    assert_eq!(vm.run().unwrap(), VmExit::Reset);
    let magic = 0x7472_6976u32.to_le_bytes().to_vec();
    let seen: Vec<Vec<u8>> = dev
        .lock()
        .unwrap()
        .writes
        .iter()
        .map(|w| w.1.clone())
        .collect();
    let expected: Vec<Vec<u8>> = ids
        .iter()
        .flat_map(|id| [magic.clone(), id.to_le_bytes().to_vec()])
        .collect();
    assert_eq!(seen, expected, "devices in attach order, one slot each");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn int3_at_cpl0_is_delivered_as_a_breakpoint() {
    if !kvm_present() {
        return;
    }
    // `int3` at CPL0. A PVM host's instruction emulator cannot run it (internal error); the
    // VMM then injects the #BP it means. Hardware KVM raises #BP itself. Either way the guest
    // sees #BP, which with an empty IDT escalates to a triple fault, after the int3.
    let vm = build_payload_vm(PayloadSpec {
        privilege: Privilege::Kernel,
        ..PayloadSpec::new(vec![0xcc, 0xf4])
    })
    .unwrap();
    let err = vm.run().unwrap_err();
    let msg = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    eprintln!("{msg}");
    assert!(msg.contains("triple fault"), "{msg}");
    assert!(!msg.contains("internal error"), "{msg}");
}

#[test]
fn each_vcpu_runs_on_its_own_thread_with_its_apic_id() {
    if !kvm_present() {
        return;
    }
    // Every vCPU: cpuid(1); out(0x500, EBX: APIC ID in 31:24, logical processors in 23:16);
    // spin.
    let code = vec![
        0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x0f, 0xa2, // cpuid
        0x89, 0xd8, // mov eax, ebx
        0x66, 0xba, 0x00, 0x05, // mov dx, 0x500
        0xef, // out dx, eax
        0xeb, 0xfe, // jmp $
    ];
    let dev = recorder(0);
    let vm = build_payload_vm(PayloadSpec {
        vcpus: 3,
        extra_pio: vec![(TEST_PORT, 1, dev.clone())],
        ..PayloadSpec::new(code)
    })
    .unwrap();
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dev.lock().unwrap().writes.len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let rips = handle.vcpu_rips().unwrap();
    handle.stop();
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Stopped);
    let ebx = port_words(&dev);
    assert_eq!(ebx.len(), 3, "{ebx:x?}");
    // All three are spinning on their `jmp $`.
    let spin = LOAD_ADDR + 14;
    assert_eq!(rips, vec![(0, spin), (1, spin), (2, spin)]);
    // The VMM's leaf 1 says 3 logical processors. A PVM host may run CPL3 `cpuid` natively
    // (no CPUID faulting): the guest then reads the host's own leaf and APIC IDs.
    if ebx.iter().all(|b| (b >> 16) & 0xff == 3) {
        let mut ids: Vec<u32> = ebx.iter().map(|b| b >> 24).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![0, 1, 2]);
    } else {
        eprintln!(
            "APIC IDs not checked: CPL3 cpuid on this host is not the VMM's (leaf 1 EBX {ebx:x?})"
        );
    }
}

#[test]
fn a_cpl3_driver_gets_entropy_through_virtio_rng() {
    if !kvm_present() {
        return;
    }
    // One 16-byte device-writable buffer (VIRTQ_DESC_F_WRITE).
    let blob = virtio_rng_driver(2);
    let mut cfg = vmm::VmConfig::new("/unused");
    cfg.rng = true;
    let (vm, dev) = device_vm(blob, cfg);
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    if !handle.wait_exited(Some(Duration::from_secs(60))) {
        let rips = handle.vcpu_rips();
        handle.stop();
        panic!("driver did not finish; vCPU at {rips:x?}");
    }
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Reset);
    let words = port_words(&dev);
    assert_eq!(words.len(), 7, "{words:x?}");
    assert_eq!(words[0], 1, "used.idx");
    assert_eq!(words[1], 16, "bytes written by the device");
    assert_eq!(words[2] & 1, 1, "vring interrupt raised");
    assert!(words[3..].iter().any(|w| *w != 0), "entropy in the buffer");
}

/// A disk inserted into an empty slot while the guest runs: the guest, polling the slot's
/// capacity in its config space, sees 0 and then the image's size, with ConfigGeneration
/// moved on. Wrong slots, a second insert and a missing image are errors, not panics.
#[test]
fn disk_inserted_into_a_slot_while_the_guest_runs() {
    if !kvm_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ember-slot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("late.img");
    std::fs::write(&disk, vec![0u8; 3 << 20]).unwrap();
    let mut cfg = vmm::VmConfig::new("/unused");
    cfg.disk_slots = 2;
    let base = 0xd000_1000u32;
    let mut code = vec![0xb9]; // mov ecx, base (slot 0)
    code.extend_from_slice(&base.to_le_bytes());
    code.extend_from_slice(&[0x66, 0xba, 0x00, 0x05]); // mov dx, 0x500
                                                       // eax = capacity (config space at 0x100); out
    code.extend_from_slice(&[0x8b, 0x81, 0x00, 0x01, 0x00, 0x00, 0xef]);
    // spin: eax = capacity; test eax, eax; jz spin
    code.extend_from_slice(&[0x8b, 0x81, 0x00, 0x01, 0x00, 0x00, 0x85, 0xc0, 0x74, 0xf6]);
    code.push(0xef); // out capacity
                     // eax = ConfigGeneration (0xfc); out
    code.extend_from_slice(&[0x8b, 0x81, 0xfc, 0x00, 0x00, 0x00, 0xef]);
    code.extend_from_slice(&RESET);
    let (vm, dev) = device_vm(code, cfg);
    let handle = vm.handle();
    assert_eq!(handle.disk_slots(), 2);
    let runner = std::thread::spawn(move || vm.run());
    // The guest reported the empty capacity: it is polling now.
    let t = std::time::Instant::now();
    while dev.lock().unwrap().writes.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "payload never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(
        handle.insert_disk(2, &disk, false),
        Err(vmm::Error::NoDiskSlot(2, 2))
    ));
    assert!(matches!(
        handle.insert_disk(0, &dir.join("missing.img"), false),
        Err(vmm::Error::Block(..))
    ));
    assert!(matches!(handle.eject_disk(1), Err(vmm::Error::Slot(1, _))));
    handle.insert_disk(0, &disk, true).unwrap();
    assert!(matches!(
        handle.insert_disk(0, &disk, true),
        Err(vmm::Error::Slot(0, _))
    ));
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Reset);
    let seen = port_words(&dev);
    assert_eq!(seen, [0, (3 << 20) / 512, 1]);
    handle.eject_disk(0).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A CPL3 counter: `eax` goes up by one and is written to TEST_PORT, forever.
const COUNTER: [u8; 11] = [
    0x31, 0xc0, // xor eax, eax
    0x66, 0xba, 0x00, 0x05, // mov dx, 0x500
    0xff, 0xc0, // loop: inc eax
    0xef, // out dx, eax
    0xeb, 0xfb, // jmp loop
];

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s = format!("{s}: {c}");
        src = c.source();
    }
    s
}

fn snapshot_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ember-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn wait_words(dev: &Mutex<Recorder>, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dev.lock().unwrap().writes.len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The COUNTER payload started on its own thread (with an in-kernel irqchip and `devices`
/// when given), its TEST_PORT writes recorded, once it has written `words` of them.
fn running_counter(
    devices: Option<vmm::VmConfig>,
    words: usize,
) -> (
    vmm::VmHandle,
    std::thread::JoinHandle<Result<VmExit, vmm::Error>>,
    Arc<Mutex<Recorder>>,
) {
    let dev = recorder(0);
    let vm = build_payload_vm(PayloadSpec {
        extra_pio: vec![(TEST_PORT, 4, dev.clone())],
        irqchip: devices.is_some(),
        devices,
        ..PayloadSpec::new(COUNTER.to_vec())
    })
    .unwrap();
    let handle = vm.handle();
    let t = std::thread::spawn(move || vm.run());
    wait_words(&dev, words);
    (handle, t, dev)
}

/// Restore the snapshot in `dir` on `cfg`'s devices, run it until it wrote 100 words, stop
/// it; the words.
fn restored_words(dir: &std::path::Path, cfg: &vmm::VmConfig) -> Vec<u32> {
    let dev = recorder(0);
    let vm = vmm::builder::restore_vmm_with(
        dir,
        cfg,
        std::time::Instant::now(),
        vec![(TEST_PORT, 4, dev.clone())],
    )
    .unwrap();
    let handle = vm.handle();
    let t = std::thread::spawn(move || vm.run());
    wait_words(&dev, 100);
    handle.stop();
    t.join().unwrap().unwrap();
    port_words(&dev)
}

#[test]
fn a_vm_restored_from_a_snapshot_carries_on_where_it_was() {
    if !kvm_present() {
        return;
    }
    let (handle, t, dev) = running_counter(None, 1000);
    let dir = snapshot_dir("counter");
    // Paused first, so the recorder holds exactly what the guest wrote before the snapshot.
    handle.pause().unwrap();
    let info = handle.snapshot(&dir).unwrap();
    let before = port_words(&dev);
    handle.stop();
    assert_eq!(t.join().unwrap().unwrap(), VmExit::Stopped);
    assert!(!before.is_empty());
    assert!(info.memory_written < info.memory_bytes, "{info:?}");
    assert!(dir.join("state").is_file() && dir.join("memory").is_file());

    // Twice from one snapshot: each restored VM continues from the same point.
    for _ in 0..2 {
        let after = restored_words(&dir, &vmm::VmConfig::new(""));
        assert_eq!(
            after[0],
            before.last().unwrap() + 1,
            "the first write after restore follows the last one before it (no repeat, no gap)"
        );
        assert!(after.windows(2).all(|w| w[1] == w[0] + 1));
    }

    // A second snapshot into the same place is refused, and leaves the first intact.
    let vm = build_payload_vm(PayloadSpec::new(COUNTER.to_vec())).unwrap();
    let h = vm.handle();
    let t = std::thread::spawn(move || vm.run());
    let e = h.snapshot(&dir).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    h.stop();
    t.join().unwrap().unwrap();
    assert!(dir.join("state").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn restoring_a_bad_snapshot_is_one_error_and_starts_nothing() {
    if !kvm_present() {
        return;
    }
    let (handle, t, _dev) = running_counter(None, 10);
    let dir = snapshot_dir("bad");
    handle.snapshot(&dir).unwrap();
    handle.stop();
    t.join().unwrap().unwrap();
    let restore = |cfg: &vmm::VmConfig| {
        vmm::builder::restore_vmm(&dir, cfg, std::time::Instant::now()).map(|_| ())
    };
    let plain = vmm::VmConfig::new("");
    // A device layout that differs from the snapshot's.
    let mut rng = plain.clone();
    rng.rng = true;
    let e = restore(&rng).unwrap_err();
    assert!(
        format!("{e}: {}", chain(&e)).contains("rng devices: snapshot 0, this VM 1"),
        "{e}"
    );
    // A memory file of the wrong size.
    let mem = dir.join("memory");
    let len = std::fs::metadata(&mem).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = restore(&plain).unwrap_err();
    assert!(chain(&e).contains("holds"), "{e}: {}", chain(&e));
    // A corrupted state file.
    let state = dir.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    std::fs::write(&state, &bytes).unwrap();
    let e = restore(&plain).unwrap_err();
    assert!(chain(&e).contains("checksum"), "{}", chain(&e));
    // No snapshot at all.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(restore(&plain).is_err());
}

#[test]
fn irqchip_pit_clock_and_lapic_survive_a_snapshot() {
    if !kvm_present() {
        return;
    }
    let cfg = vmm::VmConfig {
        rng: true,
        ..vmm::VmConfig::new("")
    };
    let (handle, t, dev) = running_counter(Some(cfg.clone()), 100);
    let dir = snapshot_dir("irqchip");
    handle.pause().unwrap();
    handle.snapshot(&dir).unwrap();
    let last = *port_words(&dev).last().unwrap();
    handle.stop();
    t.join().unwrap().unwrap();
    assert_eq!(restored_words(&dir, &cfg)[0], last + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_vm_that_does_not_run_yet_cannot_be_snapshotted() {
    if !kvm_present() {
        return;
    }
    let vm = build_payload_vm(PayloadSpec::new(COUNTER.to_vec())).unwrap();
    let dir = snapshot_dir("not-running");
    let e = vm.handle().snapshot(&dir).unwrap_err();
    assert!(chain(&e).contains("not running yet"), "{}", chain(&e));
    assert!(!dir.exists(), "nothing left behind");
}

/// A port device that opens a host file when the guest writes to it: what a compromised or
/// buggy exit handler on a vCPU thread would do.
struct Opener;

impl BusDevice for Opener {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        let _ = std::fs::File::open("/etc/hostname");
    }
}

/// A port device that asks whether stdin is a terminal (ioctl TCGETS, 0x5401) when the guest
/// writes to it: an ioctl, but not one of a vCPU's requests.
struct TerminalProbe;

impl BusDevice for TerminalProbe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        // SAFETY: isatty only inspects the descriptor.
        let _ = unsafe { libc::isatty(libc::STDIN_FILENO) };
    }
}

/// Which child scenario the test binary runs when re-executed.
const SECCOMP_CHILD_ENV: &str = "EMBER_PAYLOAD_SECCOMP_CHILD";

#[test]
#[ignore = "run by a_vcpu_thread_making_a_forbidden_syscall_ends_the_vmm_with_a_line_naming_it"]
fn seccomp_child() {
    let Some(scenario) = std::env::var_os(SECCOMP_CHILD_ENV) else {
        return;
    };
    let filters = Arc::new(vmm::seccomp::Filters::builtin().unwrap());
    // out 0x500, al; then reset.
    let mut code = vec![0x66, 0xba, 0x00, 0x05, 0xee];
    code.extend_from_slice(&RESET);
    let device: Arc<Mutex<dyn BusDevice>> = match scenario.to_str() {
        Some("ioctl") => Arc::new(Mutex::new(TerminalProbe)),
        _ => Arc::new(Mutex::new(Opener)),
    };
    let vm = build_payload_vm(PayloadSpec {
        extra_pio: vec![(TEST_PORT, 1, device)],
        seccomp: Some(filters),
        ..PayloadSpec::new(code)
    })
    .unwrap();
    let exit = vm.run();
    eprintln!("the VM ended with {exit:?}");
    std::process::exit(0);
}

/// Runs `seccomp_child` with `scenario` in a fresh copy of this test binary; (exit code,
/// stderr).
fn seccomp_child_run(scenario: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "seccomp_child", "--ignored", "--nocapture"])
        .env(SECCOMP_CHILD_ENV, scenario)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With ember's filters, a vCPU thread that opens a file (outside its list) ends the process:
/// the log line names the thread and the syscall.
#[test]
fn a_vcpu_thread_making_a_forbidden_syscall_ends_the_vmm_with_a_line_naming_it() {
    if !kvm_present() {
        return;
    }
    let (code, stderr) = seccomp_child_run("open");
    assert_eq!(code, Some(vmm::seccomp::EXIT_BAD_SYSCALL), "{stderr}");
    // glibc opens with openat, musl with open.
    assert!(
        stderr.contains("seccomp: thread vcpu0 (vcpu filter) made the forbidden system call open"),
        "{stderr}"
    );
    assert!(!stderr.contains("the VM ended"), "{stderr}");
}

/// A vCPU thread's ioctl outside its requests (a terminal query from an exit handler) ends
/// the process; the line names the request.
#[test]
fn a_vcpu_ioctl_outside_its_requests_ends_the_vmm_with_a_line_naming_the_request() {
    if !kvm_present() {
        return;
    }
    let (code, stderr) = seccomp_child_run("ioctl");
    assert_eq!(code, Some(vmm::seccomp::EXIT_BAD_SYSCALL), "{stderr}");
    assert!(
        stderr.contains(
            "seccomp: thread vcpu0 (vcpu filter) made the forbidden system call ioctl (16) request 0x5401; the process ends"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("the VM ended"), "{stderr}");
}

/// The real uid of this process's thread named `name`, from `/proc/self/task`.
fn thread_uid(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(|t| t.ok())
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
        })
}

/// Confined vCPUs and event loop still do all they do: a virtio-rng driver gets entropy, a
/// counter is paused (the vCPUs report RIP and statistics), snapshotted (each vCPU saves
/// itself, with and without an in-kernel irqchip: LAPIC, XCRs, MSRs, TSC frequency),
/// restored confined and stopped. The vCPUs' ioctls are only the requests of their list.
#[test]
fn confined_vcpus_and_event_loop_serve_devices_pause_and_snapshot() {
    if !kvm_present() {
        return;
    }
    let filters = Arc::new(vmm::seccomp::Filters::builtin().unwrap());
    let mut cfg = vmm::VmConfig::new("/unused");
    cfg.rng = true;
    cfg.seccomp = Some(filters.clone());
    // The vCPUs run as their own user too (switching needs root).
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let vcpu_user = 0x6000_0000 + std::process::id();
    cfg.vcpu_user = root.then_some(vcpu_user);
    let dev = recorder(0);
    let vm = build_payload_vm(PayloadSpec {
        extra_pio: vec![(TEST_PORT, 1, dev.clone())],
        irqchip: true,
        devices: Some(cfg.clone()),
        seccomp: Some(filters.clone()),
        ..PayloadSpec::new(virtio_rng_driver(2))
    })
    .unwrap();
    let handle = vm.handle();
    // As in a pod process: the thread that runs the VM is under the control filter, which the
    // vCPU threads it starts inherit until they install their own.
    let owner = filters.clone();
    let runner = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || {
            owner.install(vmm::seccomp::ThreadKind::Control).unwrap();
            vm.run()
        })
        .unwrap();
    assert!(handle.wait_exited(Some(Duration::from_secs(60))));
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Reset);
    let words = port_words(&dev);
    assert_eq!(words.get(1), Some(&16), "{words:x?}");

    for irqchip in [false, true] {
        let dev = recorder(0);
        let vm = build_payload_vm(PayloadSpec {
            extra_pio: vec![(TEST_PORT, 4, dev.clone())],
            irqchip,
            devices: irqchip.then(|| cfg.clone()),
            seccomp: Some(filters.clone()),
            ..PayloadSpec::new(COUNTER.to_vec())
        })
        .unwrap();
        let handle = vm.handle();
        let t = std::thread::spawn(move || vm.run());
        wait_words(&dev, 100);
        if irqchip && root {
            assert_eq!(
                thread_uid("vcpu0"),
                Some(vcpu_user),
                "the vCPU thread's own user"
            );
            assert_eq!(thread_uid("event-loop"), Some(0));
        }
        assert_eq!(handle.vcpu_rips().unwrap().len(), 1);
        // The vCPU reads its binary statistics while paused (KVM_GET_STATS_FD, pread64; empty
        // on kernels before 5.14).
        assert_eq!(handle.vcpu_states().unwrap().len(), 1);
        handle.pause().unwrap();
        let dir = snapshot_dir(&format!("seccomp-{irqchip}"));
        handle.snapshot(&dir).unwrap();
        let last = *port_words(&dev).last().unwrap();
        if irqchip {
            handle.stop();
        } else {
            handle.resume().unwrap();
            wait_words(&dev, port_words(&dev).len() + 10);
            handle.stop();
        }
        assert_eq!(
            t.join().unwrap().unwrap(),
            VmExit::Stopped,
            "irqchip {irqchip}"
        );
        assert!(dir.join("state").is_file());
        if irqchip {
            // The restored VM's vCPUs and event loop are confined too (`cfg.seccomp`).
            assert_eq!(restored_words(&dir, &cfg)[0], last + 1);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
