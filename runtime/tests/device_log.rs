//! A guest's malformed virtio request shows the device's warning in the log: a CPL3 payload
//! guest (it runs natively on this machine's `/dev/kvm`) hands virtio-rng a device-readable
//! descriptor, and the line the device logs lands in the log file of the one backend a pod's
//! VMM process installs (`runtime::logging`), as JSON, with the thread that handled it.
//! Skipped with a message where `/dev/kvm` is missing.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm::builder::{build_payload_vm, virtio_rng_driver, PayloadSpec};
use vmm::device_manager::BusDevice;

/// The payload's result port: what it writes is dropped.
struct Sink;

impl BusDevice for Sink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[test]
fn a_malformed_descriptor_from_a_guest_reaches_the_log() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: no /dev/kvm");
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ember-device-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("vmm.log");
    runtime::logging::init(&runtime::logging::Config {
        file: Some(log.clone()),
        format: runtime::logging::Format::Json,
        ..Default::default()
    })
    .unwrap();

    let mut devices = vmm::VmConfig::new("/unused");
    devices.rng = true;
    let sink: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Sink));
    let vm = build_payload_vm(PayloadSpec {
        extra_pio: vec![(0x500, 1, sink)],
        irqchip: true,
        devices: Some(devices),
        // Flags 0: the request's only buffer is device-readable.
        ..PayloadSpec::new(virtio_rng_driver(0))
    })
    .unwrap();
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    if !handle.wait_exited(Some(Duration::from_secs(60))) {
        handle.stop();
        panic!("the payload did not finish");
    }
    assert_eq!(runner.join().unwrap().unwrap(), vmm::VmExit::Reset);

    let text = std::fs::read_to_string(&log).unwrap();
    let warning = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("virtio-rng: device-readable descriptor"))
        });
    let Some(w) = warning else {
        panic!("no device warning in the log:\n{text}");
    };
    assert_eq!(w["level"], "warning", "{w}");
    assert_eq!(w["thread"], "event-loop", "{w}");
    assert_eq!(w["module"], "devices::virtio::rng", "{w}");
    std::fs::remove_dir_all(&dir).unwrap();
}
