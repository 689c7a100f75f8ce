//! VM snapshots: pause a running VM and save every vCPU, the VM's irqchips, PIT and clock,
//! every device and guest memory; restore them in a fresh process.
//!
//! A snapshot is a directory of two files:
//! - `state`: [`STATE_MAGIC`], the format number ([`SNAPSHOT_FORMAT`], little-endian u32),
//!   the payload length (u64) and its SHA-256, then the payload: [`VmState`] as JSON. A file
//!   of another format, a truncated or altered one is refused with one error naming which.
//! - `memory`: guest RAM, region after region (sparse: zero pages are holes). A restored VM
//!   maps it private (copy-on-write), so every VM restored from one snapshot shares the
//!   pages it only reads through the host's page cache.
//!
//! What a restored VM is attached to comes from *its* [`VmConfig`]: disks, TAP, vsock
//! socket, shares and console are this VM's; the device layout (how many of each kind, in
//! which order) must match the snapshot's. Open vsock connections do not survive: the guest
//! gets the transport-reset event and reconnects.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use crate::config::VmConfig;
use crate::control::{RunState, VmControl};
use crate::device_manager::event_loop::LoopGate;
use crate::device_manager::legacy::LegacyDevices;
use crate::device_manager::mmio::{MmioSlot, VirtioMmio};
use crate::vstate::vcpu::VcpuSnapshot;
use crate::vstate::vm::{Vm, VmSnapshot};
use devices::legacy::{CmosSnapshot, I8042Snapshot, SerialSnapshot};
use devices::virtio::persist::TransportSnapshot;

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// First bytes of a state file.
pub const STATE_MAGIC: &[u8; 8] = b"EMBERSNP";
/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Largest state payload accepted (the state of 32 vCPUs and 26 devices is well under it).
const MAX_STATE_LEN: u64 = 64 << 20;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// Errors of snapshots.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Cannot read snapshot state {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("Cannot write snapshot {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{} is not an ember snapshot state file", .0.display())]
    NotASnapshot(PathBuf),
    #[error("Snapshot {} has format {found}; this ember reads format {SNAPSHOT_FORMAT}", .path.display())]
    Format { path: PathBuf, found: u32 },
    #[error("Snapshot state {} is truncated ({found} of {expected} bytes)", .path.display())]
    Truncated {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("Snapshot state {} is corrupt (checksum mismatch)", .0.display())]
    Checksum(PathBuf),
    #[error("Snapshot state {} cannot be decoded", .0.display())]
    Decode(PathBuf, #[source] serde_json::Error),
    #[error("Snapshot state cannot be encoded")]
    Encode(#[source] serde_json::Error),
    #[error("Snapshot {} already exists", .0.display())]
    Exists(PathBuf),
    #[error("The snapshot's device layout does not match this VM: {0}")]
    Layout(String),
    #[error("Snapshot {0} is inconsistent: {1}")]
    Inconsistent(PathBuf, String),
    #[error("Cannot save the VM's state: {0}")]
    Save(String),
}

/// Why a snapshot could not be restored.
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error(transparent)]
    State(Error),
    #[error("Guest memory")]
    Memory(#[source] crate::vstate::memory::Error),
    #[error("VM state")]
    Vm(#[source] crate::vstate::vm::Error),
    #[error("vCPU state")]
    Vcpu(#[source] crate::vstate::vcpu::Error),
    #[error("Device at {0:#x}")]
    Device(u64, #[source] devices::virtio::persist::PersistError),
    #[error("Legacy device state")]
    Legacy(#[source] devices::legacy::LegacyStateError),
    #[error("Building the VM")]
    Build(#[source] Box<crate::Error>),
}

/// `e` and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Everything but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The configuration the VM was built from (memory size, vCPUs, device layout).
    pub config: VmConfig,
    /// `None` for a VM without an in-kernel irqchip.
    pub vm: Option<VmSnapshot>,
    pub vcpus: Vec<VcpuSnapshot>,
    pub serial: SerialSnapshot,
    pub i8042: I8042Snapshot,
    pub cmos: CmosSnapshot,
    /// The virtio-mmio devices in slot order.
    pub virtio: Vec<VirtioSlotState>,
}

/// One virtio-mmio slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VirtioSlotState {
    pub base: u64,
    pub gsi: u32,
    pub transport: TransportSnapshot,
}

/// What a snapshot wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub dir: PathBuf,
    pub state_bytes: u64,
    /// The memory file's size (the guest's RAM).
    pub memory_bytes: u64,
    /// Bytes of the memory file that hold data (the rest are holes).
    pub memory_written: u64,
    /// How long the vCPUs were held for the snapshot.
    pub paused_ms: f64,
}

/// One virtio device's counters ([`crate::VmHandle::device_counters`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// `virtio-blk`, `virtio-net`, ...
    pub device: String,
    /// Its MMIO window (tells devices of one kind apart; they are attached in config order).
    pub base: u64,
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// The counters of every device in `parts` that counts something.
pub(crate) fn device_counters(parts: &SnapshotParts) -> Vec<DeviceCounters> {
    parts
        .transports
        .iter()
        .filter_map(|(slot, t)| {
            let dev = lock(t).0.device();
            let dev = lock(&dev);
            let counters = dev.counters();
            (!counters.is_empty()).then(|| DeviceCounters {
                device: devices::virtio::device_type_name(dev.device_type()).to_string(),
                base: slot.base,
                counters: counters
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            })
        })
        .collect()
}

/// What of a running VM a snapshot reads.
pub(crate) struct SnapshotParts {
    pub config: VmConfig,
    pub vm: Arc<Vm>,
    pub irqchip: bool,
    pub mem: GuestMemoryMmap,
    pub legacy: LegacyDevices,
    pub transports: Vec<(MmioSlot, Arc<Mutex<VirtioMmio>>)>,
    pub gate: Arc<LoopGate>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Write `state` to `path` in the state-file format.
pub fn write_state(path: &Path, state: &VmState) -> Result<u64, Error> {
    let bytes = frame_state(&serde_json::to_vec(state).map_err(Error::Encode)?);
    let werr = |e| Error::Write(path.to_path_buf(), e);
    let mut f = File::create(path).map_err(werr)?;
    f.write_all(&bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(bytes.len() as u64)
}

/// `payload` behind the state file's header: magic, format, length, SHA-256.
pub fn frame_state(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// Read and check a state file: magic, format, length, checksum, then decode.
pub fn read_state(path: &Path) -> Result<VmState, Error> {
    let rerr = |e| Error::Read(path.to_path_buf(), e);
    let f = File::open(path).map_err(rerr)?;
    let file_len = f.metadata().map_err(rerr)?.len();
    // Never more than the largest valid file (and a byte, to see that it is too long).
    let mut bytes = Vec::new();
    f.take(HEADER_LEN as u64 + MAX_STATE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(rerr)?;
    decode_state(path, &bytes, file_len)
}

/// Check and decode the bytes of a state file (`path` names it in errors; `file_len` is the
/// whole file's length, of which `bytes` may hold only the first part, if it is too long).
pub fn decode_state(path: &Path, bytes: &[u8], file_len: u64) -> Result<VmState, Error> {
    let got = bytes.len().min(HEADER_LEN);
    let header = &bytes[..got];
    if got < STATE_MAGIC.len() || &header[..8] != STATE_MAGIC {
        return Err(Error::NotASnapshot(path.to_path_buf()));
    }
    let truncated = |expected| Error::Truncated {
        path: path.to_path_buf(),
        found: file_len,
        expected,
    };
    if got < 12 {
        return Err(truncated(HEADER_LEN as u64));
    }
    let format = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if format != SNAPSHOT_FORMAT {
        return Err(Error::Format {
            path: path.to_path_buf(),
            found: format,
        });
    }
    if got < HEADER_LEN {
        return Err(truncated(HEADER_LEN as u64));
    }
    let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let expected = (HEADER_LEN as u64).saturating_add(len);
    if len > MAX_STATE_LEN || file_len < expected || (bytes.len() as u64) < expected {
        return Err(truncated(expected));
    }
    let payload = &bytes[HEADER_LEN..expected as usize];
    if Sha256::digest(payload).as_slice() != &header[20..52] || file_len != expected {
        return Err(Error::Checksum(path.to_path_buf()));
    }
    let state: VmState =
        serde_json::from_slice(payload).map_err(|e| Error::Decode(path.to_path_buf(), e))?;
    check_consistent(path, &state)?;
    Ok(state)
}

/// A state that decodes can still contradict itself (hand-edited, or written by a bug):
/// refuse it before anything is built from it.
fn check_consistent(path: &Path, s: &VmState) -> Result<(), Error> {
    let bad = |why: String| Error::Inconsistent(path.to_path_buf(), why);
    if s.vcpus.len() != usize::from(s.config.vcpus) {
        return Err(bad(format!(
            "{} vCPU states for {} vCPUs",
            s.vcpus.len(),
            s.config.vcpus
        )));
    }
    if let Some((i, v)) = s
        .vcpus
        .iter()
        .enumerate()
        .find(|(i, v)| usize::from(v.index) != *i)
    {
        return Err(bad(format!("vCPU state {i} is for vCPU {}", v.index)));
    }
    let devices = layout_of(&s.config).len();
    if s.virtio.len() != devices {
        return Err(bad(format!(
            "{} device states for {devices} devices",
            s.virtio.len()
        )));
    }
    Ok(())
}

/// The virtio device types of `cfg`, in the order the builder attaches them.
pub fn layout_of(cfg: &VmConfig) -> Vec<u32> {
    use devices::virtio::{VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG};
    let mut v = Vec::new();
    v.extend(std::iter::repeat_n(
        VIRTIO_ID_BLOCK,
        cfg.block.len() + usize::from(cfg.disk_slots),
    ));
    v.extend(std::iter::repeat_n(VIRTIO_ID_NET, cfg.net.len()));
    if cfg.vsock.is_some() {
        v.push(devices::virtio::VIRTIO_ID_VSOCK);
    }
    if cfg.rng {
        v.push(VIRTIO_ID_RNG);
    }
    if cfg.fs.is_some() {
        v.push(VIRTIO_ID_FS);
    }
    v
}

/// Check that `cfg` has the snapshot's devices; say what differs.
pub fn check_layout(saved: &VmConfig, cfg: &VmConfig) -> Result<(), Error> {
    let pairs = [
        ("disks", saved.block.len(), cfg.block.len()),
        (
            "disk slots",
            usize::from(saved.disk_slots),
            usize::from(cfg.disk_slots),
        ),
        ("network interfaces", saved.net.len(), cfg.net.len()),
        (
            "vsock devices",
            usize::from(saved.vsock.is_some()),
            usize::from(cfg.vsock.is_some()),
        ),
        ("rng devices", usize::from(saved.rng), usize::from(cfg.rng)),
        (
            "virtio-fs devices",
            usize::from(saved.fs.is_some()),
            usize::from(cfg.fs.is_some()),
        ),
    ];
    let diffs: Vec<String> = pairs
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(what, a, b)| format!("{what}: snapshot {a}, this VM {b}"))
        .collect();
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::Layout(diffs.join("; ")))
    }
}

/// Take a snapshot of the VM into the new directory `dir` (made next to its final place and
/// renamed into it when complete, so a failed snapshot leaves nothing). The VM is paused for
/// the duration and then left as it was (running or paused).
pub(crate) fn snapshot(
    parts: &SnapshotParts,
    control: &VmControl,
    dir: &Path,
) -> Result<SnapshotInfo, crate::Error> {
    if dir.exists() {
        return Err(crate::Error::Snapshot(Error::Exists(dir.to_path_buf())));
    }
    let was_running = control.run_state() == RunState::Running;
    let t0 = std::time::Instant::now();
    control.pause()?;
    parts.gate.pause();
    let tmp = temp_dir_for(dir);
    let res = write_snapshot(parts, control, &tmp);
    parts.gate.resume();
    let paused_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if was_running {
        control.resume()?;
    }
    let res = res.and_then(|mut info| {
        std::fs::rename(&tmp, dir).map_err(|e| Error::Write(dir.to_path_buf(), e))?;
        if let Ok(d) = File::open(dir.parent().unwrap_or(Path::new("."))) {
            let _ = d.sync_all();
        }
        info.dir = dir.to_path_buf();
        info.paused_ms = paused_ms;
        Ok(info)
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res.map_err(crate::Error::Snapshot)
}

fn temp_dir_for(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_snapshot(
    parts: &SnapshotParts,
    control: &VmControl,
    tmp: &Path,
) -> Result<SnapshotInfo, Error> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::Write(tmp.to_path_buf(), e))?;
    let device_err = Error::Save;
    let vcpus = control.save_vcpus().map_err(|e| device_err(chain(&e)))?;
    if vcpus.len() != usize::from(parts.config.vcpus) {
        return Err(device_err(format!(
            "{} of {} vCPUs answered (the VM is not running yet)",
            vcpus.len(),
            parts.config.vcpus
        )));
    }
    let vm = match parts.irqchip {
        true => Some(parts.vm.save_state().map_err(|e| device_err(chain(&e)))?),
        false => None,
    };
    let mut virtio = Vec::with_capacity(parts.transports.len());
    for (slot, t) in &parts.transports {
        let transport = lock(t)
            .0
            .save()
            .map_err(|e| device_err(format!("device at {:#x}: {e}", slot.base)))?;
        virtio.push(VirtioSlotState {
            base: slot.base,
            gsi: slot.gsi,
            transport,
        });
    }
    let state = VmState {
        config: parts.config.clone(),
        vm,
        vcpus,
        serial: lock(&parts.legacy.serial).0.save(),
        i8042: lock(&parts.legacy.i8042).save(),
        cmos: lock(&parts.legacy.cmos).0.save(),
        virtio,
    };
    let memory_path = tmp.join(MEMORY_FILE);
    let memory_written = crate::vstate::memory::save_memory(&parts.mem, &memory_path)
        .map_err(|e| device_err(chain(&e)))?;
    let state_bytes = write_state(&tmp.join(STATE_FILE), &state)?;
    Ok(SnapshotInfo {
        dir: tmp.to_path_buf(),
        state_bytes,
        memory_bytes: u64::from(parts.config.mem_mib) << 20,
        memory_written,
        paused_ms: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::legacy::{Cmos, LegacySerial, I8042};
    use vmm_sys_util::eventfd::EventFd;

    fn evt() -> EventFd {
        EventFd::new(0).unwrap()
    }

    fn state() -> VmState {
        VmState {
            config: VmConfig::new("/k"),
            vm: None,
            vcpus: Vec::new(),
            serial: LegacySerial::new(evt(), std::io::sink()).save(),
            i8042: I8042::new(evt()).save(),
            cmos: Cmos::new().save(),
            virtio: Vec::new(),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-persist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bad_state_files_are_refused_with_what_is_wrong() {
        let d = dir("bad");
        let p = d.join(STATE_FILE);
        let mut s = state();
        s.config.vcpus = 0;
        write_state(&p, &s).unwrap();
        let good = std::fs::read(&p).unwrap();
        assert!(read_state(&p).is_ok());

        // Not a snapshot at all.
        std::fs::write(&p, b"{\"json\": true}").unwrap();
        assert!(matches!(read_state(&p), Err(Error::NotASnapshot(_))));
        // Another format number.
        let mut other = good.clone();
        other[8..12].copy_from_slice(&7u32.to_le_bytes());
        std::fs::write(&p, &other).unwrap();
        assert!(matches!(
            read_state(&p),
            Err(Error::Format { found: 7, .. })
        ));
        // Truncated, in the header and in the payload.
        std::fs::write(&p, &good[..30]).unwrap();
        assert!(matches!(read_state(&p), Err(Error::Truncated { .. })));
        std::fs::write(&p, &good[..good.len() - 5]).unwrap();
        assert!(matches!(read_state(&p), Err(Error::Truncated { .. })));
        // One flipped byte in the payload.
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        std::fs::write(&p, &flipped).unwrap();
        assert!(matches!(read_state(&p), Err(Error::Checksum(_))));
        // Trailing garbage.
        let mut longer = good.clone();
        longer.extend_from_slice(b"xx");
        std::fs::write(&p, &longer).unwrap();
        assert!(matches!(read_state(&p), Err(Error::Checksum(_))));
        // Consistent checksum, contradictory content: 1 vCPU, no vCPU state.
        write_state(&p, &state()).unwrap();
        assert!(matches!(read_state(&p), Err(Error::Inconsistent(..))));
        // Missing file.
        assert!(matches!(
            read_state(&d.join("nothing")),
            Err(Error::Read(..))
        ));
        for e in [
            read_state(&d.join("nothing")).unwrap_err(),
            Error::Layout("disks: snapshot 1, this VM 0".into()),
        ] {
            assert!(!e.to_string().contains('\n'));
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn layouts_are_compared_kind_by_kind() {
        let mut a = VmConfig::new("/k");
        a.rng = true;
        a.disk_slots = 2;
        let mut b = a.clone();
        assert!(check_layout(&a, &b).is_ok());
        assert_eq!(
            layout_of(&a),
            vec![
                devices::virtio::VIRTIO_ID_BLOCK,
                devices::virtio::VIRTIO_ID_BLOCK,
                devices::virtio::VIRTIO_ID_RNG
            ]
        );
        b.disk_slots = 1;
        b.rng = false;
        let e = check_layout(&a, &b).unwrap_err().to_string();
        assert!(e.contains("disk slots: snapshot 2, this VM 1"), "{e}");
        assert!(e.contains("rng devices: snapshot 1, this VM 0"), "{e}");
    }
}
