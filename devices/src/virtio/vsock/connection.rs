//! One vsock stream connection between a guest socket and a host Unix stream, with
//! credit-based flow control in both directions.
//!
//! Host → guest: we may only send as many bytes as the guest's receive buffer has room for:
//! `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`. Guest → host: we advertise `CONN_BUF` bytes
//! and count in `fwd_cnt` what has been written to the host stream; data the stream cannot take
//! yet waits in `tx_buf`, which the guest's credit keeps below `CONN_BUF`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::{PacketHeader, TYPE_STREAM};
use super::{CONN_BUF, HOST_CID};

/// Connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host connected and we sent REQUEST; waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
}

/// Errors on one connection; each ends it with a RST.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("Guest sent more data than its credit allows")]
    CreditOverflow,
    #[error("Host stream failed")]
    Stream(#[source] io::Error),
}

/// One connection.
pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    /// The guest opened it (to a host listener at `<uds>_<port>`); otherwise a host program
    /// did (through `<uds>` and `CONNECT`). Each side has its own connection limit.
    pub from_guest: bool,
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// A `Data` item for this connection waits in the muxer's rx queue.
    pub data_queued: bool,
    /// A CREDIT_UPDATE for this connection waits in the muxer's rx queue.
    pub credit_update_queued: bool,
    /// We asked the guest for credit and have not heard from it since.
    pub credit_requested: bool,
    /// The host stream reached end of file (SHUTDOWN sent to the guest).
    pub local_eof: bool,
    /// The guest will send no more data.
    pub peer_shut_send: bool,
    /// The guest will receive no more data.
    pub peer_shut_rcv: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            state,
            local_port,
            peer_port,
            from_guest: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            data_queued: false,
            credit_update_queued: false,
            credit_requested: false,
            local_eof: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
        }
    }

    /// Header for a packet from this connection to the guest; records the advertised fwd_cnt.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Take the guest's view of its receive buffer from any packet it sent.
    pub fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        self.credit_requested = false;
    }

    /// Bytes we may still send to the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the guest should hear about our fwd_cnt now.
    pub fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CONN_BUF / 4
    }

    /// Bytes from the guest waiting for the host stream.
    pub fn pending_tx(&self) -> usize {
        self.tx_buf.len()
    }

    /// Forward guest data to the host stream, buffering what it cannot take now.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.tx_buf.len() + data.len() > CONN_BUF as usize {
            return Err(ConnError::CreditOverflow);
        }
        let mut rest = data;
        if self.tx_buf.is_empty() {
            let n = write_some(&mut self.stream, rest)?;
            self.fwd_cnt += Wrapping(n as u32);
            rest = &rest[n..];
        }
        self.tx_buf.extend(rest);
        Ok(())
    }

    /// Write buffered guest data to the host stream.
    pub fn flush_tx(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, a)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        Ok(())
    }

    /// Read host data for the guest, at most its credit; 0 means end of file.
    pub fn read_from_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(self.peer_credit() as usize);
        let n = self.stream.read(&mut buf[..max])?;
        self.rx_cnt += Wrapping(n as u32);
        Ok(n)
    }

    /// The epoll events this connection wants on its stream.
    pub fn interest(&self) -> EventSet {
        let mut s = EventSet::empty();
        if self.state == State::Established
            && !self.data_queued
            && !self.local_eof
            && !self.peer_shut_rcv
            && (self.peer_credit() > 0 || !self.credit_requested)
        {
            s |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            s |= EventSet::OUT;
        }
        s
    }
}

/// Non-blocking write: bytes written, 0 when the stream would block.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> Result<usize, ConnError> {
    if data.is_empty() {
        return Ok(0);
    }
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ConnError::Stream(e)),
        }
    }
}
