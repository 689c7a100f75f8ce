//! The pod's VM, booted with the vmm library in this (detached) process.

use super::{Event, CONSOLE_FILE};
use crate::agent_link::VSOCK_SOCKET;
use crate::config::Shutdown;
use crate::state::{DiskOwner, PodRecord};
use crate::timeouts;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;
use vmm::config::{BlockConfig, ConsoleConfig, FsConfig, NetConfig, VmConfig, VsockConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot build the VM")]
    Build(#[source] vmm::Error),
    #[error("Cannot start the VM thread")]
    Thread(#[source] std::io::Error),
    #[error("The VM thread ended before the VM was built")]
    ThreadDied,
    #[error("Cannot join the network namespace {}", .0.display())]
    Network(PathBuf, #[source] crate::network::Error),
    #[error("The network namespace {} has no interface to give the VM", .0.display())]
    NoInterface(PathBuf),
    #[error("Cannot make the VMM's seccomp filters")]
    Seccomp(#[source] vmm::seccomp::Error),
    #[error("Cannot build the VMM's jail")]
    Jail(#[source] super::jail::Error),
}

/// What the jail of a VM built from `cfg` holds: the pod directory, the kernel and initrd,
/// the disks, the snapshot it is restored from, `/dev/kvm`, and `/dev/net/tun` for a TAP.
fn jail_spec(dir: &Path, cfg: &VmConfig, restore_from: Option<&Path>) -> super::jail::Spec {
    use super::jail::Bind;
    let mut binds = vec![Bind::rw(dir), Bind::ro(&cfg.kernel)];
    binds.extend(cfg.initrd.iter().map(Bind::ro));
    binds.extend(cfg.block.iter().map(|b| Bind {
        path: b.path.clone(),
        writable: !b.read_only,
    }));
    binds.extend(restore_from.map(Bind::ro));
    binds.push(Bind::rw("/dev/kvm"));
    if cfg.net.iter().any(|n| !n.tap.is_empty()) {
        binds.push(Bind::rw("/dev/net/tun"));
    }
    super::jail::Spec {
        root: dir.join("jail"),
        binds,
    }
}

/// Confine the calling thread of the pod process to the `kind` filter of `filters` (if any).
/// A thread that cannot be confined ends the process: it would serve the guest unfiltered.
pub fn confine(filters: Option<&vmm::seccomp::Filters>, kind: vmm::seccomp::ThreadKind) {
    if let Some(filters) = filters {
        if let Err(e) = filters.install(kind) {
            log::error!("{}", crate::error::report(&e));
            std::process::exit(1);
        }
    }
}

/// The TAP the pod process makes in the engine's network namespace.
pub const TAP_NAME: &str = "ember-tap0";

/// What the guest agent is told to configure once it is up (the engine's interface and its
/// routes).
#[derive(Clone, Debug, Default)]
pub struct GuestNetwork {
    pub interfaces: Vec<agent::protocol::NetInterface>,
    pub routes: Vec<agent::protocol::NetRoute>,
}

/// Joins the calling thread to the engine's network namespace `netns`, connects a TAP to its
/// interface (Kata's TC redirect) and gives the VM a virtio-net on it with that interface's
/// MAC. Returns the interface (to disconnect at the end) and what the guest must configure.
fn join_network(
    net: &crate::config::NetworkConfig,
    cfg: &mut VmConfig,
) -> Result<(crate::network::Interface, GuestNetwork), Error> {
    let netns = net.netns.as_path();
    let err = |e| Error::Network(netns.to_path_buf(), e);
    crate::network::enter_netns(netns).map_err(err)?;
    let scan = crate::network::scan().map_err(err)?;
    // The engine's interface: eth0 when it has one, else the first with a MAC.
    let iface = scan
        .interface("eth0")
        .or_else(|| scan.interfaces.iter().find(|i| i.mac != [0; 6]))
        .cloned()
        .ok_or_else(|| Error::NoInterface(netns.to_path_buf()))?;
    crate::network::connect_tap(&iface, TAP_NAME).map_err(err)?;
    log::info!(
        "network {}: {} ({}, mtu {}, {} address(es)) redirected to {TAP_NAME}",
        netns.display(),
        iface.name,
        iface.mac_string(),
        iface.mtu,
        iface.addresses.len()
    );
    cfg.net.push(NetConfig {
        tap: TAP_NAME.to_string(),
        mac: Some(iface.mac),
        rx_rate_limit: net.rx_rate_limit,
        tx_rate_limit: net.tx_rate_limit,
    });
    let guest = GuestNetwork {
        interfaces: vec![iface.to_guest()],
        routes: scan
            .routes
            .iter()
            .filter(|r| r.device == iface.name)
            .map(crate::network::Route::to_guest)
            .collect(),
    };
    Ok((iface, guest))
}

/// The VM configuration of a pod: kernel, initrd, command line, disks in attachment order
/// (the guest names them /dev/vda, /dev/vdb, ...), vsock on `<dir>/vsock.sock`, console to
/// `<dir>/console.log`, virtio-rng.
pub fn vm_config(rec: &PodRecord, dir: &Path) -> VmConfig {
    let c = &rec.config;
    VmConfig {
        kernel: c.kernel_path(),
        initrd: Some(c.initrd_path()),
        cmdline: c.cmdline.clone(),
        extra_cmdline: c.extra_cmdline.clone(),
        mem_mib: c.mem_mib,
        vcpus: c.vcpus,
        block: rec
            .disks
            .iter()
            .map(|d| BlockConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                // A disk the pod config declared keeps its limit.
                rate_limit: match &d.owner {
                    DiskOwner::Pod(id) => c
                        .disks
                        .iter()
                        .find(|disk| &disk.id == id)
                        .and_then(|disk| disk.rate_limit),
                    DiskOwner::Container(_) => None,
                },
            })
            .collect(),
        disk_slots: c.disk_slots,
        net: if c.net_placeholder {
            vec![NetConfig {
                tap: String::new(),
                mac: Some(crate::state::template::PLACEHOLDER_MAC),
                rx_rate_limit: None,
                tx_rate_limit: None,
            }]
        } else {
            Vec::new()
        },
        vsock: Some(VsockConfig {
            guest_cid: c.guest_cid,
            uds_path: dir.join(VSOCK_SOCKET),
        }),
        rng: true,
        fs: Some(FsConfig {
            tag: agent::protocol::SHARED_FS_TAG.to_string(),
            shares: Vec::new(),
        }),
        console: ConsoleConfig::File(dir.join(CONSOLE_FILE)),
        copy_boot_files: false,
        console_limit: Some(u64::from(c.console_limit_kib) << 10),
        seccomp: None,
        vcpu_user: None,
    }
}

/// A booted VM running on its own thread; its end arrives as [`Event::Exited`].
pub struct Vm {
    handle: vmm::VmHandle,
    network: Option<GuestNetwork>,
    seccomp: Option<Arc<vmm::seccomp::Filters>>,
}

impl Vm {
    /// Build the VM and start running it; phases are timed from `t0`.
    pub fn boot(
        rec: &PodRecord,
        dir: &Path,
        t0: Instant,
        events: mpsc::Sender<Event>,
    ) -> Result<Vm, Error> {
        let mut cfg = vm_config(rec, dir);
        let seccomp = rec.config.seccomp.filters().map_err(Error::Seccomp)?;
        cfg.seccomp = seccomp.clone();
        // Jailed and confined: the vCPUs take their own user as they drop their capabilities.
        if rec.config.jail && seccomp.is_some() {
            cfg.vcpu_user = super::jail::vcpu_user();
        }
        let confine = seccomp.clone();
        let network = rec.config.network.clone();
        let restore_from = rec.restore_from.clone();
        let jailed = rec.config.jail;
        let dir_owned = dir.to_path_buf();
        let (htx, hrx) = mpsc::channel();
        // The VMM is built and run on one thread, which joins the engine's network namespace
        // first (its TAP is opened there); only the handle crosses threads.
        crate::logging::spawn("vm", move || {
            let joined = match network.as_ref().map(|n| join_network(n, &mut cfg)) {
                Some(Err(e)) => {
                    let _ = htx.send(Err(e));
                    return;
                }
                Some(Ok(j)) => Some(j),
                None => None,
            };
            let (iface, mut network) = joined.map_or((None, None), |(i, g)| (Some(i), Some(g)));
            if let (Some(net), true) = (network.as_mut(), restore_from.is_some()) {
                // The restored guest's NIC is the template's placeholder, with its MAC: the
                // agent finds it by that MAC and gives it the engine's.
                for i in &mut net.interfaces {
                    i.new_mac = Some(std::mem::replace(
                        &mut i.mac,
                        crate::network::mac_string(&crate::state::template::PLACEHOLDER_MAC),
                    ));
                }
            }
            if jailed {
                let spec = jail_spec(&dir_owned, &cfg, restore_from.as_deref());
                if let Err(e) = super::jail::enter(&spec) {
                    if let Some(i) = &iface {
                        crate::network::disconnect_tap(&i.name, TAP_NAME);
                    }
                    let _ = htx.send(Err(Error::Jail(e)));
                    return;
                }
            }
            let built = match &restore_from {
                Some(snapshot) => vmm::builder::restore_vmm(snapshot, &cfg, t0),
                None => vmm::Vmm::with_start(cfg, t0),
            };
            let vmm = match built {
                Ok(v) => v,
                Err(e) => {
                    if let Some(i) = &iface {
                        crate::network::disconnect_tap(&i.name, TAP_NAME);
                    }
                    let _ = htx.send(Err(Error::Build(e)));
                    return;
                }
            };
            // This thread only waits for the vCPUs now, then disconnects the TAP: the
            // control thread's list covers it (and the vCPU threads it starts, which add
            // their own).
            if let Some(filters) = &confine {
                if let Err(e) = filters.install(vmm::seccomp::ThreadKind::Control) {
                    let _ = htx.send(Err(Error::Seccomp(e)));
                    return;
                }
            }
            let _ = htx.send(Ok((vmm.handle(), network)));
            let msg = match vmm.run() {
                Ok(exit) => format!("VM exit: {exit:?}"),
                Err(e) => format!("VM failed: {}", crate::error::report(&e)),
            };
            if let Some(i) = &iface {
                crate::network::disconnect_tap(&i.name, TAP_NAME);
            }
            let _ = events.send(Event::Exited(msg));
        })
        .map_err(Error::Thread)?;
        let (handle, network) = hrx.recv().map_err(|_| Error::ThreadDied)??;
        Ok(Vm {
            handle,
            network,
            seccomp,
        })
    }

    /// The filters this VM's threads are confined to (`None`: unfiltered).
    pub fn seccomp(&self) -> Option<Arc<vmm::seccomp::Filters>> {
        self.seccomp.clone()
    }

    /// What the guest agent must configure for the engine's network, if the pod joined one.
    pub fn network(&self) -> Option<&GuestNetwork> {
        self.network.as_ref()
    }

    pub fn handle(&self) -> vmm::VmHandle {
        self.handle.clone()
    }

    pub fn stop(&self) {
        self.handle.stop();
    }

    /// The VMM's boot phases so far, (name, ms since t0).
    pub fn timings(&self) -> Vec<(String, f64)> {
        let t = self.handle.timings();
        if t.restored {
            return [
                ("memory_mapped", t.memory_ready),
                ("restored", t.vm_created),
                ("first_kvm_run", t.first_kvm_run),
            ]
            .into_iter()
            .filter_map(|(n, d)| d.map(|d| (n.to_string(), d.as_secs_f64() * 1e3)))
            .collect();
        }
        [
            ("vm_created", t.vm_created),
            ("first_kvm_run", t.first_kvm_run),
            ("first_output", t.first_output),
            ("init_start", t.init_start),
            ("boot_timer_ready", t.agent_ready),
        ]
        .into_iter()
        .filter_map(|(n, d)| d.map(|d| (n.to_string(), d.as_secs_f64() * 1e3)))
        .collect()
    }
}

/// What the control socket drives: the VM handle, and on `stop` the pod's [`Shutdown`].
pub struct Target {
    handle: vmm::VmHandle,
    dir: PathBuf,
    requested: Arc<AtomicBool>,
    shutdown: Shutdown,
}

impl Target {
    pub fn new(
        handle: vmm::VmHandle,
        dir: &Path,
        requested: Arc<AtomicBool>,
        shutdown: Shutdown,
    ) -> Target {
        Target {
            handle,
            dir: dir.to_path_buf(),
            requested,
            shutdown,
        }
    }
}

impl super::control::ControlTarget for Target {
    fn pause(&self) -> Result<(), String> {
        self.handle.pause().map_err(|e| crate::error::report(&e))
    }

    fn resume(&self) -> Result<(), String> {
        self.handle.resume().map_err(|e| crate::error::report(&e))
    }

    fn insert_disk(&self, slot: usize, path: &Path, read_only: bool) -> Result<(), String> {
        self.handle
            .insert_disk(slot, path, read_only)
            .map_err(|e| crate::error::report(&e))
    }

    fn eject_disk(&self, slot: usize) -> Result<(), String> {
        self.handle
            .eject_disk(slot)
            .map_err(|e| crate::error::report(&e))
    }

    fn add_share(&self, name: &str, path: &Path, read_only: bool) -> Result<(), String> {
        self.handle
            .add_share(name, path, read_only)
            .map_err(|e| crate::error::report(&e))
    }

    fn remove_share(&self, name: &str) -> Result<(), String> {
        self.handle
            .remove_share(name)
            .map_err(|e| crate::error::report(&e))
    }

    fn snapshot(&self, dir: &Path) -> Result<vmm::SnapshotInfo, String> {
        self.handle
            .snapshot(dir)
            .map_err(|e| crate::error::report(&e))
    }

    fn counters(&self) -> Vec<vmm::DeviceCounters> {
        self.handle.device_counters()
    }

    /// Stop the VM: at once after [`super::before_stop`], or, for a graceful shutdown, when the
    /// guest has not ended within the grace period.
    fn stop(&self) -> Option<String> {
        self.requested.store(true, Ordering::SeqCst);
        // A paused guest cannot answer.
        let _ = self.handle.resume();
        let t = Instant::now();
        let (asked, unsynced) = super::before_stop(&self.dir, self.shutdown);
        if !asked || !self.handle.wait_exited(Some(timeouts::SHUTDOWN_GRACE)) {
            self.handle.stop();
        }
        log::info!(
            "VM stopped ({:?}) in {:.1} ms",
            self.shutdown,
            t.elapsed().as_secs_f64() * 1e3
        );
        unsynced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PodConfig;
    use crate::state::AttachedDisk;

    #[test]
    fn vm_config_follows_the_pod() {
        let limit: crate::config::RateLimit =
            crate::config::from_json(r#"{"ops": {"size": 100, "refill_time_ms": 1000}}"#).unwrap();
        let mut rec = PodRecord::new(
            "p",
            PodConfig {
                kernel: Some("/k".into()),
                mem_mib: 96,
                vcpus: 2,
                extra_cmdline: vec!["ember.debug".into()],
                disks: vec![crate::config::DiskConfig {
                    id: "a".into(),
                    path: "/a.img".into(),
                    read_only: true,
                    rate_limit: Some(limit),
                }],
                ..PodConfig::default()
            },
        );
        rec.disks = vec![
            AttachedDisk {
                path: "/a.img".into(),
                read_only: true,
                guest_device: "/dev/vda".into(),
                owner: DiskOwner::Pod("a".into()),
            },
            AttachedDisk {
                path: "/b.img".into(),
                read_only: false,
                guest_device: "/dev/vdb".into(),
                owner: DiskOwner::Container("c".into()),
            },
        ];
        let cfg = vm_config(&rec, Path::new("/run/ember/p"));
        assert_eq!(cfg.kernel, PathBuf::from("/k"));
        assert_eq!((cfg.mem_mib, cfg.vcpus), (96, 2));
        assert_eq!(cfg.extra_cmdline, vec!["ember.debug".to_string()]);
        assert_eq!(
            cfg.block,
            vec![
                // The pod config's disk keeps its limit; a container's rootfs has none.
                BlockConfig {
                    path: "/a.img".into(),
                    read_only: true,
                    rate_limit: Some(limit),
                },
                BlockConfig {
                    path: "/b.img".into(),
                    read_only: false,
                    rate_limit: None,
                }
            ]
        );
        assert_eq!(
            cfg.vsock,
            Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/ember/p/vsock.sock".into()
            })
        );
        assert_eq!(
            cfg.console,
            ConsoleConfig::File("/run/ember/p/console.log".into())
        );
        assert!(cfg.rng);
    }
}
