//! The host <-> agent protocol.
//!
//! # Wire format
//! Every message is one *frame*: a `u32` big-endian length followed by that many bytes of JSON
//! (serde). Frames longer than [`MAX_FRAME_SIZE`] are refused by both sides before any buffer
//! of that size is allocated; the reader then closes the connection, because the stream can
//! no longer be resynchronised.
//!
//! # Connections
//! - **Requests** (agent listens on vsock port [`DEFAULT_PORT`], or a Unix socket in host tests):
//!   the host sends [`RequestFrame`]s, the agent answers each with one [`ResponseFrame`] carrying
//!   the same `id`, in order. A connection carries one request at a time; open more connections
//!   for concurrent calls (a `Wait` blocks its connection until the process exits).
//!   A request whose `version` is not [`PROTOCOL_VERSION`] is answered with
//!   [`ErrorKind::VersionMismatch`]; malformed JSON with [`ErrorKind::BadRequest`] (id 0 when
//!   the id itself could not be read). The connection stays usable after both.
//! - **Announce** (guest -> host, vsock CID 2 port [`ANNOUNCE_PORT`]): when the agent is ready it
//!   connects, sends exactly one [`Hello`] frame and closes.
//! - **Stdio streams**: a request connection whose request is [`Request::AttachStdio`] is
//!   answered with one [`ResponseFrame`] and, on success, turns into a raw byte stream for that
//!   one stream of that one process: for [`StdioStream::Stdin`] the host writes bytes and closes
//!   (or shuts down writing) to deliver EOF; for [`StdioStream::Stdout`] / [`StdioStream::Stderr`]
//!   the agent writes bytes and closes at the process's EOF. Output written before anyone
//!   attached is buffered by the agent (up to [`STDIO_BUFFER_SIZE`] per stream, then the process
//!   blocks on its pipe). Each stream can be attached once. With `terminal: true` the process
//!   has one pty: stdout carries it and stderr is empty.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// Protocol version carried in every request and in [`Hello`].
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body, in bytes, either side accepts.
pub const MAX_FRAME_SIZE: usize = 1024 * 1024;
/// vsock port the agent serves requests on.
pub const DEFAULT_PORT: u32 = 1024;
/// vsock port on the host (CID 2) the agent announces readiness to.
pub const ANNOUNCE_PORT: u32 = 1025;
/// Host CID in vsock.
pub const HOST_CID: u32 = 2;
/// Bytes of output the agent buffers per stream before anyone attached.
pub const STDIO_BUFFER_SIZE: usize = 1024 * 1024;
/// Mount tag of the VM's virtio-fs device, whose root lists the shares the runtime exported
/// (container rootfs directories, bind-mount sources).
pub const SHARED_FS_TAG: &str = "ember";
/// Where the agent mounts that device (on first use).
pub const SHARED_FS_MOUNT: &str = "/run/ember/fs";
/// The line the agent prints on the console when it is ready.
pub const READY_LINE: &str = "ember-agent: ready";

/// Errors of framing and encoding.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("Frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("Connection closed")]
    Closed,
    #[error("Frame I/O failed")]
    Io(#[source] io::Error),
    #[error("Invalid frame JSON")]
    Json(#[source] serde_json::Error),
}

/// Reads one frame body. Returns [`FrameError::Closed`] on a clean EOF before the length.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len_buf[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside frame length",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > MAX_FRAME_SIZE {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_SIZE,
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(FrameError::Io)?;
    Ok(body)
}

/// Writes one frame body (length prefix + body) with a single `write_all`.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, body: &[u8]) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME_SIZE {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_SIZE,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    // Cannot truncate: body.len() <= MAX_FRAME_SIZE < u32::MAX.
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

/// Serialises `msg` and writes it as one frame.
pub fn send<W: Write + ?Sized, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg).map_err(FrameError::Json)?;
    write_frame(w, &body)
}

/// Reads one frame and deserialises it.
pub fn recv<R: Read + ?Sized, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, FrameError> {
    let body = read_frame(r)?;
    serde_json::from_slice(&body).map_err(FrameError::Json)
}

/// Sent by the agent on the announce connection when it is ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// The agent's pid (1 in a guest).
    pub pid: u32,
    /// The vsock port (or socket path) the agent serves requests on.
    pub listen: String,
    /// Milliseconds since the (guest) kernel booted when the agent became ready
    /// (CLOCK_BOOTTIME): the guest-side "agent ready" boot phase.
    #[serde(default)]
    pub uptime_ms: u64,
}

/// Envelope of every request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub version: u32,
    pub id: u64,
    pub request: Request,
}

/// Envelope of every response; `id` echoes the request's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub result: Result<Response, AgentError>,
}

/// Which stdio stream an [`Request::AttachStdio`] connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StdioStream {
    Stdin,
    Stdout,
    Stderr,
}

/// Requests the host sends to the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness and version check.
    Ping,
    /// Prepares a container: rootfs, namespaces, cgroup; its init process waits for start.
    CreateContainer {
        id: String,
        spec: Box<ContainerSpec>,
    },
    /// Lets the created container's init process exec its command. Answers [`Response::Pid`].
    StartContainer { id: String },
    /// Runs another process in a running container. Answers [`Response::Pid`].
    Exec {
        container_id: String,
        exec_id: String,
        process: ProcessSpec,
    },
    /// Sends `signal` to the container's init (`exec_id: None`) or an exec'd process;
    /// `all` sends it to every process in the container's cgroup.
    Signal {
        container_id: String,
        #[serde(default)]
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Blocks until the process exits. Answers [`Response::Exit`].
    Wait {
        container_id: String,
        #[serde(default)]
        exec_id: Option<String>,
    },
    /// Processes in the container's cgroup. Answers [`Response::Processes`].
    ProcessList { container_id: String },
    /// Freezes the container (cgroup v2 `cgroup.freeze`).
    Pause { id: String },
    /// Thaws the container.
    Resume { id: String },
    /// Writes new limits into the cgroup of a created, running or paused container (`runc
    /// update`): those set are written, the others kept.
    UpdateContainer { id: String, limits: CgroupLimits },
    /// Kills what still runs, unmounts and removes the container.
    DestroyContainer { id: String },
    /// Agent and per-container statistics. Answers [`Response::Stats`].
    Stats,
    /// Flushes the guest's dirty pages to its disks (`sync(2)`), so the host may stop the VM
    /// at once without losing what containers wrote.
    Sync,
    /// Turns this connection into a raw byte stream of one process stream (see module docs).
    AttachStdio {
        container_id: String,
        #[serde(default)]
        exec_id: Option<String>,
        stream: StdioStream,
    },
    /// Resizes the process's pty (only for `terminal: true`).
    ResizeTerminal {
        container_id: String,
        #[serde(default)]
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    /// Kills everything and reboots the guest (a host-run agent exits instead).
    Shutdown,
    /// Turns this connection into the agent's event stream: answers [`Response::Done`], then
    /// sends one [`Response::ContainerExited`] frame (with this request's id) each time a
    /// container's init process exits, for as long as the connection lasts. Needs its own
    /// connection; any number of them may be open.
    Events,
    /// Configures the guest's network: each interface (found by its MAC) is renamed, given
    /// its MTU and addresses and brought up; then the routes are added. Safe to repeat.
    ConfigureNetwork {
        interfaces: Vec<NetInterface>,
        #[serde(default)]
        routes: Vec<NetRoute>,
    },
    /// Tells the agent of a guest restored from a snapshot (a template: same CRNG state,
    /// stale clock, same hostname and, were it already read, boot id) that it was restored,
    /// and makes the guest its own, in this order: credits `entropy` (32 to 4096 bytes of
    /// host randomness) to the kernel's pool and reseeds its CRNG, sets CLOCK_REALTIME to
    /// `realtime_ns`, sets `hostname` (1-64 of `[A-Za-z0-9.-]`, not starting with `-` or
    /// `.`), then reads the boot id, which the kernel makes at its first read (the agent never
    /// reads it before). Every argument is checked before anything changes; a bad one is
    /// [`ErrorKind::BadRequest`]. An agent that is not the guest's PID 1 (a host-run agent)
    /// checks the arguments the same way but touches nothing of its host (no clock, no
    /// hostname, no entropy): it answers with the host's boot id and a clock step of 0.
    /// Answers [`Response::Restored`].
    Restored {
        /// Wall-clock time to set, ns since the Unix epoch.
        realtime_ns: u64,
        /// Bytes credited to the kernel's entropy pool (all their bits).
        entropy: Vec<u8>,
        /// The guest's new hostname.
        hostname: String,
    },
}

/// A guest interface for [`Request::ConfigureNetwork`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// The MAC of the guest link to configure, `aa:bb:cc:dd:ee:ff` (the VMM gave the
    /// virtio-net device this MAC).
    pub mac: String,
    /// The name it gets (`eth0`).
    pub name: String,
    /// Its MTU (the host interface's).
    pub mtu: u32,
    /// Addresses with their prefix length: `10.88.0.2/16`, `fd00::2/64`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// A MAC to give the link found by `mac` (a guest restored from a template keeps the
    /// template's NIC and takes the engine's MAC), `aa:bb:cc:dd:ee:ff`, unicast. A link that
    /// already has it is the one meant (a repeated request).
    #[serde(default)]
    pub new_mac: Option<String>,
}

/// A route for [`Request::ConfigureNetwork`], added to the main table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRoute {
    /// The destination network (`10.0.0.0/8`, `::/0`); `None` is the default route, of the
    /// gateway's family.
    #[serde(default)]
    pub destination: Option<String>,
    /// The next hop (`10.88.0.1`); `None` for a directly connected network.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The interface it goes out of, by its [`NetInterface::name`].
    pub device: String,
    /// The preferred source address.
    #[serde(default)]
    pub source: Option<String>,
}

/// Successful answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The request succeeded and has nothing to return.
    Done,
    Pong(PingInfo),
    /// Pid (in the agent's pid namespace) of the process started.
    Pid(i32),
    Exit(ExitStatus),
    Processes(Vec<ProcessInfo>),
    Stats(AgentStats),
    /// Answer to [`Request::Restored`].
    Restored(RestoredInfo),
    /// An event on an [`Request::Events`] connection: the init process of container
    /// `container_id` exited.
    ContainerExited {
        container_id: String,
        status: ExitStatus,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingInfo {
    pub version: u32,
    pub agent_version: String,
    pub uptime_ms: u64,
}

/// What a restored guest became ([`Request::Restored`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredInfo {
    /// `/proc/sys/kernel/random/boot_id`, read after the reseed: each restored guest's own
    /// (the host's, from a host-run agent).
    pub boot_id: String,
    /// How far the wall clock was moved, in ms (new - old; negative when set back; 0 from a
    /// host-run agent).
    pub clock_step_ms: i64,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Pid in the agent's pid namespace.
    pub pid: i32,
    /// Command line, arguments joined by spaces (empty for kernel threads / zombies).
    pub cmd: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub uptime_ms: u64,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub load_avg_1m: f64,
    pub containers: Vec<ContainerStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub id: String,
    pub state: ContainerState,
    /// Processes in the container's cgroup.
    pub pids: u64,
    /// `memory.current` where the memory controller is enabled.
    pub memory_bytes: Option<u64>,
    /// `usage_usec` of `cpu.stat`.
    pub cpu_usec: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Stopped,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Malformed request (bad JSON, unknown request, invalid field).
    BadRequest,
    /// The request's protocol version is not the agent's.
    VersionMismatch,
    /// Frame larger than [`MAX_FRAME_SIZE`]; the agent closes the connection after this.
    FrameTooLarge,
    /// No container / process of that id.
    NotFound,
    /// A container / exec of that id exists already.
    AlreadyExists,
    /// The request does not fit the container's state (e.g. start before create).
    InvalidState,
    /// A feature is not available here (e.g. no cgroup v2).
    Unsupported,
    /// Setting the container or process up failed.
    Failed,
}

/// A failed request: machine-readable kind plus a human message (the error chain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }
}

/// A container to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub rootfs: RootfsSpec,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Set with [`Namespace::Uts`]; an empty one leaves the name the new namespace copied
    /// from the agent's, as runc does. A container without a UTS namespace of its own (nor a
    /// shared one) shares the VM's: a guest's agent gives the VM this name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Namespaces to create for the container. Without [`Namespace::Mount`] the agent uses
    /// `chroot` instead of `pivot_root`.
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<Namespace>,
    pub process: ProcessSpec,
    /// cgroup path relative to the agent's cgroup root; default `ember/<id>`.
    #[serde(default)]
    pub cgroup_path: Option<String>,
    /// A filesystem holding the sources of the mounts marked [`Mount::from_volume`] (host
    /// files and directories the runtime copied onto a disk); mounted by the agent beside the
    /// rootfs, never inside the container.
    #[serde(default)]
    pub volume: Option<RootfsSpec>,
    /// Limits written into the container's cgroup (OCI `linux.resources`), as runc does.
    #[serde(default)]
    pub limits: CgroupLimits,
    /// The rest of the container's setup, applied as runc applies it.
    #[serde(default)]
    pub linux: LinuxSetup,
    /// Namespaces joined instead of made: another container's of this VM.
    #[serde(default)]
    pub share: Option<SharedNamespaces>,
}

/// Namespaces a container joins instead of making its own: those of another container of the
/// VM, as runc joins the namespaces a spec names by path. A CRI pod's members join their
/// sandbox's UTS and IPC namespaces (and its PID namespace when the pod shares one), so they
/// see the pod's hostname and each other's IPC as under runc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedNamespaces {
    /// The container whose init's namespaces are joined; it must be created and alive.
    pub container: String,
    /// Some of [`SharedNamespaces::JOINABLE`]; none of them may also be in the container's
    /// own [`ContainerSpec::namespaces`]. With [`Namespace::User`] the container's own
    /// namespaces are made inside the joined one (owned by it), as runc orders it.
    pub namespaces: Vec<Namespace>,
}

impl SharedNamespaces {
    /// The namespaces that can be joined this way.
    pub const JOINABLE: [Namespace; 4] = [
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::User,
    ];
}

/// What runc does to a container besides its mounts, namespaces and cgroup: the OCI
/// `domainname`, `root.readonly`, `linux.rootfsPropagation`, `linux.sysctl`,
/// `linux.devices`, `linux.readonlyPaths` and `linux.maskedPaths`. Everything but `domainname`
/// and `sysctl` needs [`Namespace::Mount`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxSetup {
    /// NIS domain name (with [`Namespace::Uts`]; an empty one is left as it is, as runc does).
    pub domainname: Option<String>,
    /// Remount the container's root read-only once everything is mounted.
    pub readonly_root: bool,
    /// Propagation of the container's mounts: `shared`, `slave`, `private`, `unbindable`,
    /// or one of those prefixed with `r` (recursive); `None` is runc's default, `rslave`.
    pub root_propagation: Option<String>,
    /// `kernel.msgmax` = `65536`: written to `/proc/sys/kernel/msgmax` inside the container.
    pub sysctl: BTreeMap<String, String>,
    /// Device nodes made in the container, beyond the agent's own /dev nodes (a node at the
    /// path of one of those replaces it).
    pub devices: Vec<Device>,
    /// Paths made read-only (bind-remounted); missing ones are skipped.
    pub readonly_paths: Vec<String>,
    /// Paths hidden: `/dev/null` over files, an empty read-only tmpfs over directories;
    /// missing ones are skipped.
    pub masked_paths: Vec<String>,
    /// `/sys` mounted read-write (the spec's sysfs mount has no `ro`: a privileged
    /// container's); read-only otherwise.
    pub sysfs_writable: bool,
    /// With [`Namespace::User`]: the container's uids (OCI `linux.uidMappings`), as the guest
    /// kernel's ids; uid 0 must be among them (the helper becomes root in the namespace, as
    /// runc's init does).
    pub uid_mappings: Vec<IdMapping>,
    /// With [`Namespace::User`]: the container's gids (OCI `linux.gidMappings`); gid 0 must
    /// be among them.
    pub gid_mappings: Vec<IdMapping>,
}

/// A range of ids of a user namespace: `container_id..container_id + size` inside are
/// `host_id..` outside (a line of `/proc/PID/uid_map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// A device node in the container (OCI `linux.devices[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Absolute path inside the container.
    pub path: String,
    /// `c` (or `u`): character device, `b`: block device, `p`: FIFO.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    /// Permission bits; default `0o666`.
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

/// cgroup v2 limits of a container; `None` leaves the kernel's default (`max`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupLimits {
    /// `memory.max`, bytes.
    pub memory_max: Option<i64>,
    /// `memory.swap.max`, bytes (OCI `memory.swap` is memory+swap; the runtime converts).
    pub memory_swap_max: Option<i64>,
    /// `cpu.max`: quota per period, µs.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// `cpu.weight` (1..=10000; runc converts OCI shares the same way).
    pub cpu_weight: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<i64>,
    /// The device controller's rules (OCI `linux.resources.devices`, in order, the runtime's
    /// allowed devices among them); `None`: no device filter (every device).
    pub devices: Option<Vec<DeviceRule>>,
}

/// One rule of the device controller (OCI `linux.resources.devices[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    /// `a` (all), `b` or `c`; `None`: all.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `None` (or -1): any.
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    /// Some of `r`, `w`, `m`; `None`: `rwm`.
    #[serde(default)]
    pub access: Option<String>,
}

/// The default: everything but the network. The VM is the pod, so containers share the
/// guest's network namespace (where its virtio-net interfaces are) unless `Net` is asked for;
/// a container with its own `Net` namespace gets only a loopback (brought up).
pub fn default_namespaces() -> Vec<Namespace> {
    vec![
        Namespace::Pid,
        Namespace::Mount,
        Namespace::Uts,
        Namespace::Ipc,
    ]
}

/// Where the container's root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsSpec {
    /// A block device in the guest, e.g. `/dev/vdb` with `ext4`.
    BlockDevice {
        path: String,
        fstype: String,
        #[serde(default)]
        read_only: bool,
    },
    /// A directory already in the agent's filesystem; bind-mounted.
    Path {
        path: String,
        #[serde(default)]
        read_only: bool,
    },
    /// A host directory the runtime shared by virtio-fs as `name` (see [`SHARED_FS_TAG`]);
    /// bind-mounted, live.
    Share {
        name: String,
        #[serde(default)]
        read_only: bool,
    },
}

/// An extra mount inside the container (applied after /proc, /dev, /sys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container; created if missing.
    pub destination: String,
    /// Source: a path (for binds, in the agent's filesystem), a device or a name (`tmpfs`).
    pub source: String,
    /// Filesystem type; `None` or `bind` for bind mounts.
    #[serde(default)]
    pub fstype: Option<String>,
    /// Flags (`ro`, `bind`, `rbind`, `nosuid`, `nodev`, `noexec`, `relatime`, ...); anything
    /// else is passed as filesystem data (`size=64m`, `mode=755`).
    #[serde(default)]
    pub options: Vec<String>,
    /// A bind mount whose `source` is a relative path on the container's
    /// [`ContainerSpec::volume`].
    #[serde(default)]
    pub from_volume: bool,
    /// A bind mount whose `source` is the name of a virtio-fs share (a host file or
    /// directory, live).
    #[serde(default)]
    pub from_share: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Namespace {
    Pid,
    Mount,
    Uts,
    Ipc,
    Net,
    /// A cgroup namespace rooted at the container's cgroup (made once the process is in it):
    /// its `/sys/fs/cgroup` shows its own limits, as under runc.
    Cgroup,
    /// A user namespace with [`LinuxSetup::uid_mappings`] and `gid_mappings`, made first: the
    /// container's other new namespaces belong to it, and its root is root only there.
    User,
}

/// A process to run (container init or exec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=value` entries; `PATH` is used to find `args[0]` when it has no `/`.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "default_cwd")]
    pub cwd: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// The process's capability sets, names as in OCI (`CAP_NET_ADMIN`). `None`: a
    /// container's init keeps every capability, an exec'd process gets its container init's
    /// sets (as runc does for an exec without them). An empty set is empty.
    #[serde(default)]
    pub capabilities: Option<Box<Capabilities>>,
    /// Written to `/proc/self/oom_score_adj` before the process runs; `None` inherits the
    /// agent's.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

/// Capability sets of a process (OCI `process.capabilities`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

fn default_cwd() -> String {
    "/".to_string()
}

impl ProcessSpec {
    /// A process running `args` as root in `/` with a default `PATH`.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        ProcessSpec {
            args: args.into_iter().map(Into::into).collect(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: default_cwd(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            terminal: false,
            rlimits: Vec::new(),
            no_new_privileges: false,
            capabilities: None,
            oom_score_adj: None,
        }
    }
}

/// A resource limit, `kind` as in OCI (`RLIMIT_NOFILE`, `RLIMIT_NPROC`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn frame_roundtrip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}").unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 7]);
        assert_eq!(&buf[4..], b"{\"a\":1}");
        let mut cur = Cursor::new(buf);
        assert_eq!(read_frame(&mut cur).unwrap(), b"{\"a\":1}");
        assert!(matches!(read_frame(&mut cur), Err(FrameError::Closed)));
    }

    #[test]
    fn several_frames_in_one_stream() {
        let mut buf = Vec::new();
        for i in 0..3u64 {
            let req = RequestFrame {
                version: PROTOCOL_VERSION,
                id: i,
                request: Request::Wait {
                    container_id: format!("c{i}"),
                    exec_id: None,
                },
            };
            send(&mut buf, &req).unwrap();
        }
        let mut cur = Cursor::new(buf);
        for i in 0..3u64 {
            let req: RequestFrame = recv(&mut cur).unwrap();
            assert_eq!(req.id, i);
            assert_eq!(
                req.request,
                Request::Wait {
                    container_id: format!("c{i}"),
                    exec_id: None
                }
            );
        }
    }

    #[test]
    fn oversize_length_refused_without_reading_body() {
        let len = (MAX_FRAME_SIZE as u32) + 1;
        let mut cur = Cursor::new(len.to_be_bytes().to_vec());
        match read_frame(&mut cur) {
            Err(FrameError::TooLarge { len: l, max }) => {
                assert_eq!(l, MAX_FRAME_SIZE + 1);
                assert_eq!(max, MAX_FRAME_SIZE);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let mut cur = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(matches!(
            read_frame(&mut cur),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversize_write_refused() {
        let body = vec![b' '; MAX_FRAME_SIZE + 1];
        let mut out = Vec::new();
        assert!(matches!(
            write_frame(&mut out, &body),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
        let body = vec![b' '; MAX_FRAME_SIZE];
        write_frame(&mut out, &body).unwrap();
        assert_eq!(out.len(), MAX_FRAME_SIZE + 4);
    }

    #[test]
    fn truncated_frames_are_io_errors() {
        let mut cur = Cursor::new(vec![0u8, 0]);
        assert!(matches!(read_frame(&mut cur), Err(FrameError::Io(_))));
        let mut cur = Cursor::new(vec![0u8, 0, 0, 10, b'{']);
        assert!(matches!(read_frame(&mut cur), Err(FrameError::Io(_))));
    }

    #[test]
    fn empty_frame_and_bad_json() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"").unwrap();
        write_frame(&mut buf, b"not json").unwrap();
        let mut cur = Cursor::new(buf);
        assert_eq!(read_frame(&mut cur).unwrap(), Vec::<u8>::new());
        assert!(matches!(
            recv::<_, RequestFrame>(&mut cur),
            Err(FrameError::Json(_))
        ));
    }

    #[test]
    fn spec_defaults_fill_in() {
        let json = r#"{"rootfs":{"Path":{"path":"/r"}},"process":{"args":["sh"]}}"#;
        let spec: ContainerSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.namespaces, default_namespaces());
        assert_eq!(spec.process.cwd, "/");
        assert!(spec.mounts.is_empty());
        assert_eq!(spec.linux, LinuxSetup::default());
        assert_eq!(spec.process.capabilities, None);
        assert_eq!(spec.process.oom_score_adj, None);
        assert_eq!(
            spec.rootfs,
            RootfsSpec::Path {
                path: "/r".into(),
                read_only: false
            }
        );
    }

    #[test]
    fn response_roundtrip_error_and_ok() {
        let frames = vec![
            ResponseFrame {
                id: 9,
                result: Err(AgentError::new(ErrorKind::NotFound, "No container x")),
            },
            ResponseFrame {
                id: 10,
                result: Ok(Response::Exit(ExitStatus {
                    code: 137,
                    signal: Some(9),
                })),
            },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            send(&mut buf, f).unwrap();
        }
        let mut cur = Cursor::new(buf);
        for f in &frames {
            let got: ResponseFrame = recv(&mut cur).unwrap();
            assert_eq!(&got, f);
        }
    }

    #[test]
    fn restored_roundtrip() {
        let req = RequestFrame {
            version: PROTOCOL_VERSION,
            id: 3,
            request: Request::Restored {
                realtime_ns: 1_790_000_000_123_456_789,
                entropy: (0..=255).collect(),
                hostname: "pod-1".into(),
            },
        };
        let resp = ResponseFrame {
            id: 3,
            result: Ok(Response::Restored(RestoredInfo {
                boot_id: "4e1f2c3a-0b5d-4c6e-8f70-123456789abc".into(),
                clock_step_ms: -1500,
            })),
        };
        let mut buf = Vec::new();
        send(&mut buf, &req).unwrap();
        send(&mut buf, &resp).unwrap();
        let mut cur = Cursor::new(buf);
        assert_eq!(recv::<_, RequestFrame>(&mut cur).unwrap(), req);
        assert_eq!(recv::<_, ResponseFrame>(&mut cur).unwrap(), resp);
        // The wire shape, as other clients write it.
        let json = r#"{"version":1,"id":4,"request":{"Restored":{"realtime_ns":5,"entropy":[1,2],"hostname":"h"}}}"#;
        let got: RequestFrame = serde_json::from_str(json).unwrap();
        assert_eq!(
            got.request,
            Request::Restored {
                realtime_ns: 5,
                entropy: vec![1, 2],
                hostname: "h".into()
            }
        );
        // The largest request accepted fits a frame with room to spare.
        let big = serde_json::to_vec(&Request::Restored {
            realtime_ns: u64::MAX,
            entropy: vec![255; 4096],
            hostname: "a".repeat(64),
        })
        .unwrap();
        assert!(big.len() < MAX_FRAME_SIZE / 16, "{}", big.len());
    }
}
