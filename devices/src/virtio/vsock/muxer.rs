//! Unix-socket vsock backend, with Firecracker's hybrid convention:
//! - host → guest: a host program connects to `<uds>` and writes `CONNECT <port>\n`; the guest
//!   sees a REQUEST to `<port>`; once it answers, the host program reads `OK <hostport>\n` and
//!   the stream carries data.
//! - guest → host: a guest connection to host port `P` is connected to the listener at
//!   `<uds>_P`; no listener there, or one whose backlog is full, means a RST (the connect is
//!   non-blocking: a host listener that stops accepting cannot stall the device loop).
//!
//! Each direction has its own connection limit, so a guest that opens connections as fast as
//! it can takes no slot the host's own connections (the runtime's agent calls) need, and the
//! VMM's file descriptors stay bounded (one per connection; see [`MAX_GUEST_CONNECTIONS`]).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::EventSet;

use super::connection::{Connection, State};
use super::packet::*;
use super::{Error, VsockBackend, HOST_CID};

/// Most guest-initiated connections at once; a REQUEST beyond it gets a RST.
pub const MAX_GUEST_CONNECTIONS: usize = 512;
/// Most host-initiated connections (established or waiting for CONNECT) at once; a host
/// connection beyond it is closed at once.
pub const MAX_HOST_CONNECTIONS: usize = 512;
/// The file descriptors the muxer may hold at once (each connection is one, plus the
/// listener): what [`UnixMuxer::new`] makes room for under `RLIMIT_NOFILE`.
pub const MAX_FDS: usize = MAX_GUEST_CONNECTIONS + MAX_HOST_CONNECTIONS + 1;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Most RST replies to unknown or refused connections waiting for the guest; more are dropped
/// (a guest flooding bad packets without posting rx buffers cannot grow host memory).
pub const MAX_PENDING_RST: usize = 1024;
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// (local port, peer port).
type Key = (u32, u32);

enum RxItem {
    /// A packet built when queued (for connections that no longer exist).
    Raw(PacketHeader),
    /// A RST answering a packet for an unknown or refused connection.
    Rst(PacketHeader),
    /// A control packet of a live connection, built when sent.
    Ctl { key: Key, op: u16, flags: u32 },
    /// The connection's host stream has data.
    Data(Key),
}

struct PendingConnect {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What the muxer refused or dropped, for the device's counters (`ember pod stats`).
#[derive(Default)]
struct Refusals {
    /// Guest REQUESTs refused at [`MAX_GUEST_CONNECTIONS`].
    guest_limit: u64,
    /// Guest REQUESTs to a port with no host listener.
    guest_no_listener: u64,
    /// Guest REQUESTs to a host listener whose backlog was full.
    guest_busy: u64,
    /// Host connections closed at [`MAX_HOST_CONNECTIONS`].
    host_limit: u64,
    /// RSTs not sent because [`MAX_PENDING_RST`] were waiting.
    rst_dropped: u64,
    /// Times the listener stopped accepting because the process ran out of descriptors.
    accept_paused: u64,
}

/// The Unix-socket muxer.
pub struct UnixMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    pending: HashMap<RawFd, PendingConnect>,
    conns: HashMap<Key, Connection>,
    fd_keys: HashMap<RawFd, Key>,
    rxq: VecDeque<RxItem>,
    dead: Vec<UnixStream>,
    next_local_port: u32,
    pending_rst: usize,
    /// Live connections the guest opened (`conns` with `from_guest`).
    guest_conns: usize,
    /// The listener is out of the epoll set: accept failed for lack of descriptors; it goes
    /// back once a connection closes.
    accept_paused: bool,
    refused: Refusals,
}

impl UnixMuxer {
    /// Listen at `uds_path` for host-initiated connections. A stale socket file there (nobody
    /// listening) is replaced; a live socket or any other file is an error.
    pub fn new(guest_cid: u32, uds_path: &Path) -> Result<Self, Error> {
        if let Ok(md) = std::fs::symlink_metadata(uds_path) {
            if !md.file_type().is_socket() {
                return Err(Error::NotASocket(uds_path.to_path_buf()));
            }
            if UnixStream::connect(uds_path).is_ok() {
                return Err(Error::InUse(uds_path.to_path_buf()));
            }
            std::fs::remove_file(uds_path).map_err(|source| Error::Bind {
                path: uds_path.to_path_buf(),
                source,
            })?;
        }
        let listener = UnixListener::bind(uds_path).map_err(|source| Error::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Bind {
                path: uds_path.to_path_buf(),
                source,
            })?;
        Ok(UnixMuxer {
            guest_cid: u64::from(guest_cid),
            uds_path: uds_path.to_path_buf(),
            listener,
            pending: HashMap::new(),
            conns: HashMap::new(),
            fd_keys: HashMap::new(),
            rxq: VecDeque::new(),
            dead: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            pending_rst: 0,
            guest_conns: 0,
            accept_paused: false,
            refused: Refusals::default(),
        })
    }

    fn reply_rst(&mut self, to: &PacketHeader) {
        if self.pending_rst >= MAX_PENDING_RST {
            log::warn!("vsock: too many RSTs pending; dropping one");
            self.refused.rst_dropped += 1;
            return;
        }
        self.pending_rst += 1;
        self.rxq.push_back(RxItem::Rst(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }));
    }

    /// Drop a connection; optionally tell the guest with a RST.
    fn remove(&mut self, key: Key, rst: bool) {
        if let Some(mut c) = self.conns.remove(&key) {
            self.fd_keys.remove(&c.stream.as_raw_fd());
            if c.from_guest {
                self.guest_conns -= 1;
            }
            if rst {
                let h = c.header(self.guest_cid, OP_RST, 0, 0);
                self.rxq.push_back(RxItem::Raw(h));
            }
            self.dead.push(c.stream);
        }
    }

    fn insert(&mut self, c: Connection) {
        let key = (c.local_port, c.peer_port);
        if c.from_guest {
            self.guest_conns += 1;
        }
        self.fd_keys.insert(c.stream.as_raw_fd(), key);
        if let Some(old) = self.conns.insert(key, c) {
            // Callers check the key is free; keep the counts right if one did not.
            if old.from_guest {
                self.guest_conns -= 1;
            }
            self.dead.push(old.stream);
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// Host-initiated connections, established or waiting for their CONNECT line.
    fn host_connections(&self) -> usize {
        self.conns.len() - self.guest_conns + self.pending.len()
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.host_connections() >= MAX_HOST_CONNECTIONS {
                        log::warn!(
                            "vsock: {MAX_HOST_CONNECTIONS} host connections open; closing a new one"
                        );
                        self.refused.host_limit += 1;
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("vsock: failed to set a stream non-blocking: {e}");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.pending.insert(
                        fd,
                        PendingConnect {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // The listener stays readable: left in the epoll set it would spin the
                    // loop. It goes back when a connection closes (take_closed).
                    log::warn!("vsock: out of file descriptors; not accepting until one closes");
                    self.accept_paused = true;
                    self.refused.accept_paused += 1;
                    break;
                }
                Err(e) => {
                    log::warn!("vsock: accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// Reads a `CONNECT <port>\n` line byte by byte (so no payload is consumed).
    fn read_connect(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(&p.line)),
                Ok(_) if p.line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                Ok(_) => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err("read failed"),
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        match outcome {
            Ok(Some(port)) => {
                let local = self.alloc_local_port();
                let key = (local, port);
                self.insert(Connection::new(p.stream, State::LocalInit, local, port));
                self.rxq.push_back(RxItem::Ctl {
                    key,
                    op: OP_REQUEST,
                    flags: 0,
                });
            }
            Ok(None) => {
                log::warn!("vsock: bad CONNECT line");
                self.dead.push(p.stream);
            }
            Err(why) => {
                log::debug!("vsock: host connection dropped: {why}");
                self.dead.push(p.stream);
            }
        }
    }

    fn connect_to_host(&mut self, hdr: &PacketHeader) {
        if self.guest_conns >= MAX_GUEST_CONNECTIONS {
            log::warn!(
                "vsock: the guest has {MAX_GUEST_CONNECTIONS} connections open; refusing another"
            );
            self.refused.guest_limit += 1;
            self.reply_rst(hdr);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.refused.guest_busy += 1;
                    log::warn!(
                        "vsock: host listener {} has a full backlog; refusing the guest",
                        Path::new(&path).display()
                    );
                } else {
                    self.refused.guest_no_listener += 1;
                    log::debug!(
                        "vsock: guest connection to {} refused: {e}",
                        Path::new(&path).display()
                    );
                }
                self.reply_rst(hdr);
                return;
            }
        };
        let mut c = Connection::new(stream, State::Established, hdr.dst_port, hdr.src_port);
        c.from_guest = true;
        c.update_peer_credit(hdr);
        let key = (c.local_port, c.peer_port);
        self.insert(c);
        self.rxq.push_back(RxItem::Ctl {
            key,
            op: OP_RESPONSE,
            flags: 0,
        });
    }

    fn queue_credit_update(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.credit_update_queued {
                c.credit_update_queued = true;
                self.rxq.push_back(RxItem::Ctl {
                    key,
                    op: OP_CREDIT_UPDATE,
                    flags: 0,
                });
            }
        }
    }

    fn after_tx_progress(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.pending_tx() == 0 && c.peer_shut_send {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.needs_credit_update() {
            self.queue_credit_update(key);
        }
    }

    fn handle_guest_packet(&mut self, key: Key, hdr: &PacketHeader, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.update_peer_credit(hdr);
        match (hdr.op, c.state) {
            (OP_RESPONSE, State::LocalInit) => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local_port);
                match c.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {}
                    _ => self.remove(key, true),
                }
            }
            (OP_RW, State::Established) => match c.send_to_host(data) {
                Ok(()) => self.after_tx_progress(key),
                Err(e) => {
                    log::warn!("vsock: connection {key:?}: {e}");
                    self.remove(key, true);
                }
            },
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.queue_credit_update(key),
            (OP_SHUTDOWN, _) => {
                c.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                c.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if c.peer_shut_rcv && c.peer_shut_send {
                    // Push out what we can, then close: the host sees end of file.
                    let _ = c.flush_tx();
                    self.remove(key, true);
                } else {
                    self.after_tx_progress(key);
                }
            }
            (OP_RST, _) => self.remove(key, false),
            _ => {
                log::warn!("vsock: unexpected op {} on connection {key:?}", hdr.op);
                self.remove(key, true);
            }
        }
    }
}

/// A non-blocking connect to the Unix stream listener at `path`: a listener whose backlog is
/// full answers `WouldBlock` at once instead of holding the caller (the device loop).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or not a path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes; `fd` is open.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

impl VsockBackend for UnixMuxer {
    fn send_pkt(&mut self, hdr: &PacketHeader, data: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            log::warn!(
                "vsock: dropping packet {} -> {} (guest is {})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.reply_rst(hdr);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.handle_guest_packet(key, hdr, data);
        } else if hdr.op == OP_REQUEST {
            self.connect_to_host(hdr);
        } else if hdr.op != OP_RST {
            self.reply_rst(hdr);
        }
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        while let Some(item) = self.rxq.pop_front() {
            match item {
                RxItem::Raw(h) => return Some(h),
                RxItem::Rst(h) => {
                    self.pending_rst -= 1;
                    return Some(h);
                }
                RxItem::Ctl { key, op, flags } => {
                    let Some(c) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    if op == OP_CREDIT_UPDATE {
                        c.credit_update_queued = false;
                    }
                    return Some(c.header(self.guest_cid, op, 0, flags));
                }
                RxItem::Data(key) => {
                    let Some(c) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    c.data_queued = false;
                    if c.state != State::Established || c.local_eof {
                        continue;
                    }
                    if buf.is_empty() {
                        // No room for payload in this buffer: try again with the next one.
                        c.data_queued = true;
                        self.rxq.push_front(RxItem::Data(key));
                        return None;
                    }
                    if c.peer_credit() == 0 {
                        if !c.credit_requested {
                            c.credit_requested = true;
                            return Some(c.header(self.guest_cid, OP_CREDIT_REQUEST, 0, 0));
                        }
                        continue;
                    }
                    match c.read_from_host(buf) {
                        Ok(0) => {
                            c.local_eof = true;
                            let flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                            return Some(c.header(self.guest_cid, OP_SHUTDOWN, 0, flags));
                        }
                        Ok(n) => return Some(c.header(self.guest_cid, OP_RW, n as u32, 0)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                            c.data_queued = true;
                            self.rxq.push_back(RxItem::Data(key));
                        }
                        Err(e) => {
                            log::debug!("vsock: host stream of {key:?} failed: {e}");
                            self.remove(key, true);
                        }
                    }
                }
            }
        }
        None
    }

    fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    fn notify(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept();
        } else if self.pending.contains_key(&fd) {
            self.read_connect(fd);
        } else if let Some(&key) = self.fd_keys.get(&fd) {
            let Some(c) = self.conns.get_mut(&key) else {
                return;
            };
            if events.contains(EventSet::OUT) {
                if let Err(e) = c.flush_tx() {
                    log::debug!("vsock: host stream of {key:?} failed: {e}");
                    self.remove(key, true);
                    return;
                }
                self.after_tx_progress(key);
            }
            let Some(c) = self.conns.get_mut(&key) else {
                return;
            };
            let readable = EventSet::IN | EventSet::HANG_UP | EventSet::ERROR;
            if events.intersects(readable) && c.interest().contains(EventSet::IN) {
                c.data_queued = true;
                self.rxq.push_back(RxItem::Data(key));
            }
        }
    }

    fn interest(&self) -> Vec<(RawFd, EventSet)> {
        let mut v = Vec::with_capacity(1 + self.pending.len() + self.conns.len());
        if !self.accept_paused {
            v.push((self.listener.as_raw_fd(), EventSet::IN));
        }
        v.extend(self.pending.keys().map(|&fd| (fd, EventSet::IN)));
        v.extend(
            self.conns
                .values()
                .map(|c| (c.stream.as_raw_fd(), c.interest()))
                .filter(|(_, s)| !s.is_empty()),
        );
        v
    }

    fn take_closed(&mut self) -> Vec<OwnedFd> {
        if !self.dead.is_empty() {
            // The caller closes these: room for the listener's next connection.
            self.accept_paused = false;
        }
        self.dead.drain(..).map(OwnedFd::from).collect()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let r = &self.refused;
        vec![
            ("guest_connections", self.guest_conns as u64),
            ("host_connections", self.host_connections() as u64),
            ("guest_refused_limit", r.guest_limit),
            ("guest_refused_no_listener", r.guest_no_listener),
            ("guest_refused_busy", r.guest_busy),
            ("host_refused_limit", r.host_limit),
            ("rst_dropped", r.rst_dropped),
            ("accept_paused", r.accept_paused),
        ]
    }

    fn connections(&self) -> usize {
        self.conns.len()
    }

    fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k, false);
        }
        self.dead
            .extend(self.pending.drain().map(|(_, p)| p.stream));
        self.rxq.clear();
        // The RSTs counted as pending went with the queue.
        self.pending_rst = 0;
    }
}

impl Drop for UnixMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_replies_are_bounded() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let mut m = UnixMuxer::new(3, &dir.as_path().join("v.sock")).unwrap();
        let mut h = PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0,
            dst_port: 9,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        };
        for p in 0..(MAX_PENDING_RST as u32 + 500) {
            h.src_port = p;
            m.send_pkt(&h, b"x");
        }
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Some(r) = m.recv_pkt(&mut buf) {
            assert_eq!(r.op, OP_RST);
            assert_eq!(r.dst_port, n as u32);
            n += 1;
        }
        assert_eq!(n, MAX_PENDING_RST);
        // Once drained, RSTs flow again.
        m.send_pkt(&h, b"x");
        assert_eq!(m.recv_pkt(&mut buf).map(|r| r.op), Some(OP_RST));
    }

    fn request(src_port: u32, dst_port: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    /// (RESPONSEs, RSTs) the muxer has queued for the guest.
    fn replies(m: &mut UnixMuxer) -> (usize, usize) {
        let mut buf = [0u8; 64];
        let (mut ok, mut rst) = (0, 0);
        while let Some(r) = m.recv_pkt(&mut buf) {
            match r.op {
                OP_RESPONSE => ok += 1,
                OP_RST => rst += 1,
                op => panic!("unexpected op {op}"),
            }
        }
        (ok, rst)
    }

    fn counter(m: &UnixMuxer, name: &str) -> u64 {
        m.counters()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    /// For the flood tests: descriptors enough, a muxer socket path `uds` in a fresh directory
    /// and a host listener on its port 5000.
    fn flood_setup() -> (
        vmm_sys_util::tempdir::TempDir,
        std::path::PathBuf,
        UnixListener,
    ) {
        crate::limits::raise_nofile_limit(4096);
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let listener = UnixListener::bind(dir.as_path().join("v.sock_5000")).unwrap();
        (dir, uds, listener)
    }

    /// A host listener that never accepts: once its backlog is full, the guest's next REQUEST
    /// gets a RST at once. (A blocking connect here held the device loop for good.)
    #[test]
    fn a_host_listener_with_a_full_backlog_is_refused_without_stalling() {
        let (_dir, uds, listener) = flood_setup();
        // A small backlog (std listens with the system's largest).
        // SAFETY: listen(2) on a listening socket we own only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 8) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut m = UnixMuxer::new(3, &uds).unwrap();
            for p in 0..300 {
                m.send_pkt(&request(p, 5000), &[]);
            }
            tx.send(()).unwrap();
            m
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the muxer blocked on a listener that does not accept");
        let mut m = worker.join().unwrap();
        let (ok, rst) = replies(&mut m);
        assert_eq!(ok + rst, 300);
        assert!(
            ok > 0 && rst > 0,
            "{ok} accepted into the backlog, {rst} refused"
        );
        assert_eq!(counter(&m, "guest_refused_busy"), rst as u64);
        assert_eq!(counter(&m, "guest_connections"), ok as u64);
    }

    /// A guest opening connections as fast as it can stops at its own limit, and a host
    /// program (the runtime's agent call) still gets through.
    #[test]
    fn guest_connections_stop_at_their_limit_and_leave_the_host_its_slots() {
        let (_dir, uds, host_side) = flood_setup();
        host_side.set_nonblocking(true).unwrap();
        let mut m = UnixMuxer::new(3, &uds).unwrap();
        let mut held = Vec::new();
        let extra = 40;
        for p in 0..(MAX_GUEST_CONNECTIONS + extra) as u32 {
            m.send_pkt(&request(p, 5000), &[]);
            while let Ok((s, _)) = host_side.accept() {
                held.push(s);
            }
        }
        let (ok, rst) = replies(&mut m);
        assert_eq!((ok, rst), (MAX_GUEST_CONNECTIONS, extra));
        assert_eq!(counter(&m, "guest_refused_limit"), extra as u64);

        // The host connects through <uds> and names guest port 1024.
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        m.notify(m.listener.as_raw_fd(), EventSet::IN);
        let pending: Vec<RawFd> = m.pending.keys().copied().collect();
        assert_eq!(pending.len(), 1);
        m.notify(pending[0], EventSet::IN);
        let mut buf = [0u8; 64];
        let r = m.recv_pkt(&mut buf).expect("a REQUEST for the guest");
        assert_eq!((r.op, r.dst_port), (OP_REQUEST, 1024));
        assert_eq!(counter(&m, "host_connections"), 1);

        // A guest connection that ends frees its slot.
        let mut rst = request(0, 5000);
        rst.op = OP_RST;
        m.send_pkt(&rst, &[]);
        assert_eq!(
            counter(&m, "guest_connections"),
            MAX_GUEST_CONNECTIONS as u64 - 1
        );
        m.send_pkt(&request(10_000, 5000), &[]);
        assert_eq!(replies(&mut m), (1, 0));
    }

    #[test]
    fn a_reset_forgets_the_pending_rsts() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let mut m = UnixMuxer::new(3, &dir.as_path().join("v.sock")).unwrap();
        for p in 0..MAX_PENDING_RST as u32 {
            m.send_pkt(&request(p, 9), &[]);
        }
        m.reset();
        m.send_pkt(&request(0, 9), &[]);
        assert_eq!(replies(&mut m), (0, 1));
        assert_eq!(counter(&m, "rst_dropped"), 0);
    }

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
