//! Unix-socket vsock backend, with Firecracker's hybrid convention:
//! - host → guest: a host program connects to `<uds>` and writes `CONNECT <port>\n`; the guest
//!   sees a REQUEST to `<port>`; once it answers, the host program reads `OK <hostport>\n` and
//!   the stream carries data.
//! - guest → host: a guest connection to host port `P` is connected to the listener at
//!   `<uds>_P`; no listener there means a RST.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::EventSet;

use super::connection::{Connection, State};
use super::packet::*;
use super::{Error, VsockBackend, HOST_CID};

/// Most connections (established or waiting for CONNECT) at once.
pub const MAX_CONNECTIONS: usize = 1024;
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
        })
    }

    fn reply_rst(&mut self, to: &PacketHeader) {
        if self.pending_rst >= MAX_PENDING_RST {
            log::warn!("vsock: too many RSTs pending; dropping one");
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
            if rst {
                let h = c.header(self.guest_cid, OP_RST, 0, 0);
                self.rxq.push_back(RxItem::Raw(h));
            }
            self.dead.push(c.stream);
        }
    }

    fn insert(&mut self, c: Connection) {
        let key = (c.local_port, c.peer_port);
        self.fd_keys.insert(c.stream.as_raw_fd(), key);
        self.conns.insert(key, c);
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

    fn total_connections(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.total_connections() >= MAX_CONNECTIONS {
                        log::warn!("vsock: too many connections; refusing one");
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
        if self.total_connections() >= MAX_CONNECTIONS {
            log::warn!("vsock: too many connections; refusing guest REQUEST");
            self.reply_rst(hdr);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        let stream = match UnixStream::connect(&path).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("vsock: guest connection to {path} refused: {e}");
                self.reply_rst(hdr);
                return;
            }
        };
        let mut c = Connection::new(stream, State::Established, hdr.dst_port, hdr.src_port);
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
        v.push((self.listener.as_raw_fd(), EventSet::IN));
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
        self.dead.drain(..).map(OwnedFd::from).collect()
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
