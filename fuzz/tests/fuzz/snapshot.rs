//! Snapshot files: the state file's bytes (`vmm::persist::decode_state`: header, format,
//! length, checksum, JSON, consistency) as found on disk and with a valid header around a
//! fuzzed payload; and a device's saved state (`TransportSnapshot` JSON) restored onto a fresh
//! device of this VM (rng, an empty block slot, a NIC without backend).
//!
//! Invariants: no panic; a restore that succeeds leaves the transport in the saved register
//! state (status, features, queue registers) and the device saveable; one that fails leaves
//! the transport in its reset state.

use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::virtio::block::Block;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::Net;
use devices::virtio::persist::TransportSnapshot;
use devices::virtio::rng::Rng;
use devices::virtio::test_utils::{bring_up, mem, GuestQueue};
use devices::virtio::{CountingInterrupt, VirtioDevice};
use fuzz::{Input, Target};

const MEM: usize = 0x10_0000;

pub const STATE: Target = Target {
    name: "snapshot_state",
    max_len: 16 * 1024,
    dict: &[
        b"EMBERSNP",
        b"\"vcpus\":[]",
        b"\"virtio\":[]",
        b"\"vm\":null",
        b"\"config\":",
        b"\"mem_mib\":",
        b"\"vcpus\":1",
        b"4294967295",
        b"null",
    ],
};

pub const DEVICE: Target = Target {
    name: "device_restore",
    max_len: 8 * 1024,
    dict: &[
        b"\"status\":15",
        b"\"ready\":true",
        b"\"max_size\":256",
        b"\"size\":16",
        b"\"next_avail\":",
        b"\"next_used\":",
        b"\"active_queues\":null",
        b"\"interrupt_status\":",
        b"\"driver_features\":",
        b"\"desc_table\":",
        b"65535",
        b"18446744073709551615",
    ],
};

fn one_state(data: &[u8]) {
    let mut inp = Input::new(data);
    let framed = inp.bool();
    let rest = inp.rest();
    let bytes = if framed {
        vmm::persist::frame_state(rest)
    } else {
        rest.to_vec()
    };
    let path = Path::new("fuzz-state");
    if let Ok(state) = vmm::persist::decode_state(path, &bytes, bytes.len() as u64) {
        // What decodes and is consistent encodes again and decodes the same way.
        let again = vmm::persist::frame_state(&serde_json::to_vec(&state).unwrap());
        let back = vmm::persist::decode_state(path, &again, again.len() as u64).unwrap();
        assert_eq!(back.vcpus.len(), state.vcpus.len());
        assert_eq!(back.virtio.len(), state.virtio.len());
    }
}

fn device(kind: u8) -> Arc<Mutex<dyn VirtioDevice>> {
    match kind % 3 {
        0 => Arc::new(Mutex::new(Rng::new().unwrap())),
        1 => Arc::new(Mutex::new(Block::empty().unwrap())),
        _ => Arc::new(Mutex::new(Net::detached(Some([2, 0, 0, 0, 0, 1])).unwrap())),
    }
}

fn one_device(data: &[u8]) {
    let mut inp = Input::new(data);
    let kind = inp.u8();
    let Ok(snap) = serde_json::from_slice::<TransportSnapshot>(inp.rest()) else {
        return;
    };
    let m = mem(MEM);
    let mut t = MmioTransport::new(m, device(kind), Arc::new(CountingInterrupt::new())).unwrap();
    match t.restore(&snap) {
        Ok(()) => {
            let saved = t.save().expect("a restored device saves");
            assert_eq!(saved.status, snap.status);
            assert_eq!(saved.driver_features, snap.driver_features);
            assert_eq!(saved.queues, snap.queues);
            assert_eq!(
                saved.device.active_queues.is_some(),
                snap.device.active_queues.is_some()
            );
        }
        Err(_) => {
            let saved = t.save().expect("a fresh device saves");
            assert_eq!(saved.status, 0, "a refused restore changed the transport");
            assert!(saved.device.active_queues.is_none());
        }
    }
}

/// Seeds: each device kind's state, fresh and brought up with its queues.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (kind, name, queues) in [(0u8, "rng", 1usize), (1, "block", 1), (2, "net", 2)] {
        let m = mem(MEM);
        let mut t = MmioTransport::new(m.clone(), device(kind), Arc::new(CountingInterrupt::new()))
            .unwrap();
        let fresh = serde_json::to_vec(&t.save().unwrap()).unwrap();
        out.push((name, [vec![kind], fresh].concat()));
        let qs: Vec<GuestQueue> = (0..queues)
            .map(|i| GuestQueue::new(&m, 0x1_0000 * (i as u64 + 1), 16))
            .collect();
        let refs: Vec<&GuestQueue> = qs.iter().collect();
        bring_up(&mut t, 1 << 32, &refs);
        let active = serde_json::to_vec(&t.save().unwrap()).unwrap();
        out.push((
            match kind {
                0 => "rng-active",
                1 => "block-active",
                _ => "net-active",
            },
            [vec![kind], active].concat(),
        ));
    }
    out
}

/// A consistent VM state without vCPUs: one rng device, fresh legacy devices.
pub fn seed_state() -> vmm::persist::VmState {
    use devices::legacy::{Cmos, LegacySerial, I8042};
    use vmm_sys_util::eventfd::EventFd;
    let mut config = vmm::VmConfig::new("/k");
    config.vcpus = 0;
    config.rng = true;
    let m = mem(MEM);
    let t = MmioTransport::new(m, device(0), Arc::new(CountingInterrupt::new())).unwrap();
    vmm::persist::VmState {
        config,
        vm: None,
        vcpus: Vec::new(),
        serial: LegacySerial::new(EventFd::new(0).unwrap(), std::io::sink()).save(),
        i8042: I8042::new(EventFd::new(0).unwrap()).save(),
        cmos: Cmos::new().save(),
        virtio: vec![vmm::persist::VirtioSlotState {
            base: 0xd000_1000,
            gsi: 5,
            transport: t.save().unwrap(),
        }],
    }
}

#[test]
fn seed_state_decodes() {
    let bytes = vmm::persist::frame_state(&serde_json::to_vec(&seed_state()).unwrap());
    vmm::persist::decode_state(Path::new("seed"), &bytes, bytes.len() as u64).unwrap();
}

#[test]
fn fuzz_snapshot_state() {
    fuzz::run(&STATE, one_state);
}

#[test]
fn fuzz_device_restore() {
    fuzz::run(&DEVICE, one_device);
}
