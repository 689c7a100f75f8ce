//! The container sees the engine's network, in Kata Containers' TC-redirect model.
//!
//! When an OCI spec joins a network namespace by path (podman's netavark or CNI bridge,
//! containerd's CRI), that namespace holds a veth `eth0` with the container's addresses. The
//! pod process enters it ([`enter_netns`]), reads what it has ([`scan`]) and connects a TAP to
//! each interface ([`connect_tap`]): an ingress qdisc on both and a `u32` match-all filter with
//! `mirred egress redirect` in each direction, so every frame arriving on `eth0` leaves on the
//! TAP (into the VM's virtio-net) and every frame the guest sends leaves on `eth0`. The guest's
//! interface gets `eth0`'s MAC, addresses, routes and MTU ([`Interface::to_guest`],
//! [`Route::to_guest`], applied by the agent), so the engine's bridge, port forwarding and ARP
//! keep working unchanged.
//!
//! Everything here acts on the calling *thread's* network namespace, through synchronous
//! rtnetlink (no `ip`/`tc` processes, no async runtime).

mod scan;
mod tap;
mod tc;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use scan::scan;
pub use tc::{connect_tap, disconnect_tap};

/// `statfs.f_type` of nsfs, the filesystem of `/proc/PID/ns/*` and bind-mounted namespaces.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Errors of the network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open the network namespace {}", path.display())]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a network namespace", path.display())]
    NotNetns { path: PathBuf },
    #[error("Cannot enter the network namespace {}", path.display())]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot open a netlink socket")]
    Socket(#[source] io::Error),
    /// A netlink request failed: `op` names the message and what it was for.
    #[error("Netlink {op} on {iface} failed")]
    Netlink {
        op: &'static str,
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("No network interface {name} (index {index})")]
    NoInterface { name: String, index: u32 },
    #[error("Invalid TAP name {0:?}")]
    TapName(String),
    #[error("An interface named {0} exists already")]
    TapExists(String),
    #[error("Cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("Cannot create the TAP {name}")]
    CreateTap {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// An address with its prefix length (`10.88.0.2/16`, `fd00::2/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The address (for a route's destination, the network's first address).
    pub addr: IpAddr,
    /// How many leading bits are the network's.
    pub prefix_len: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A network interface of the namespace (not loopback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name (`eth0`).
    pub name: String,
    /// Its index in the namespace.
    pub index: u32,
    /// Its MAC address, which the guest's interface takes over.
    pub mac: [u8; 6],
    /// Its MTU, which the TAP and the guest's interface take over.
    pub mtu: u32,
    /// Its global and site addresses (link-local ones are left out: the guest derives its own
    /// from the same MAC).
    pub addresses: Vec<IpNet>,
}

/// A route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destination network; `None` is the default route.
    pub destination: Option<IpNet>,
    /// The next hop; `None` for a directly connected network.
    pub gateway: Option<IpAddr>,
    /// The name of the interface the route goes out of.
    pub device: String,
    /// The preferred source address.
    pub source: Option<IpAddr>,
}

/// What a network namespace has, as [`scan`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every Ethernet-like interface but loopback, up or not.
    pub interfaces: Vec<Interface>,
    /// The main table's unicast routes, IPv4 and IPv6, without the routes the kernel derives
    /// from addresses (subnet and link-local routes: the guest's kernel derives them too) and
    /// without loopback's.
    pub routes: Vec<Route>,
}

impl Scan {
    /// The interface named `name`.
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

/// A MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

impl Interface {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        mac_string(&self.mac)
    }

    /// How the guest agent should configure its interface with this MAC.
    pub fn to_guest(&self) -> agent::protocol::NetInterface {
        agent::protocol::NetInterface {
            mac: self.mac_string(),
            name: self.name.clone(),
            mtu: self.mtu,
            addresses: self.addresses.iter().map(IpNet::to_string).collect(),
            new_mac: None,
        }
    }
}

impl Route {
    /// The route in the guest agent's terms (the device keeps its name in the guest).
    pub fn to_guest(&self) -> agent::protocol::NetRoute {
        agent::protocol::NetRoute {
            destination: self.destination.map(|d| d.to_string()),
            gateway: self.gateway.map(|g| g.to_string()),
            device: self.device.clone(),
            source: self.source.map(|s| s.to_string()),
        }
    }
}

/// Whether the network namespace at `path` has an interface besides loopback (an engine
/// configured it). Scanned from a thread of its own, which joins the namespace.
pub fn has_interface(path: &Path) -> bool {
    let path = path.to_path_buf();
    let scan = std::thread::Builder::new()
        .name("netns-scan".into())
        .spawn(move || {
            enter_netns(&path).ok()?;
            scan().ok()
        })
        .ok()
        .and_then(|h| h.join().ok().flatten());
    scan.is_some_and(|s| s.interfaces.iter().any(|i| i.mac != [0; 6]))
}

/// Enters the network namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`) for the
/// calling thread (`setns(CLONE_NEWNET)`); sockets and TAPs opened by this thread afterwards
/// live there. Other threads keep theirs: call it before starting any that should share it.
pub fn enter_netns(path: &Path) -> Result<(), Error> {
    let file = std::fs::File::open(path).map_err(|source| Error::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into `st`, which outlives the call; the fd is open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::OpenNetns {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between libcs.
    if st.f_type as i64 != NSFS_MAGIC {
        return Err(Error::NotNetns {
            path: path.to_path_buf(),
        });
    }
    match nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => Ok(()),
        // Another kind of namespace.
        Err(nix::errno::Errno::EINVAL) => Err(Error::NotNetns {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(Error::EnterNetns {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}
