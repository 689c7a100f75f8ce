//! A small synchronous rtnetlink client: one request at a time on a blocking socket, answered
//! by an ack, an error or a dump. Enough for the handful of operations the agent makes on the
//! guest's interfaces and the pod process makes in the engine's network namespace before it
//! builds the VM; no async runtime. Shared by both (`agent::netlink`).

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Whether `name` can name an interface: 1..IFNAMSIZ-1 bytes, not `.`/`..`, no `/`, `:`,
/// whitespace or NUL.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// Receive buffer: the kernel caps one dump datagram at 32 KiB (or a page, if larger).
const RECV_BUF: usize = 64 * 1024;

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends `msg` with `flags` (plus REQUEST and ACK) and waits for the kernel's ack; returns
    /// the messages that came before it (the answer to a `Get` of one object).
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Sends the dump request `msg` and collects every message of the answer.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut answers = Vec::new();
        loop {
            let mut slice = &mut self.buf[..];
            let len = self.socket.recv(&mut slice, libc::MSG_TRUNC)?;
            if len > self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("netlink answer of {len} bytes truncated"),
                ));
            }
            let mut off = 0;
            while off < len {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..len])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let step = reply.header.length as usize;
                if step == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                off += (step + 3) & !3;
                if reply.header.sequence_number != seq {
                    continue; // A late answer to an earlier request.
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(done) => {
                        return if done.code < 0 {
                            Err(io::Error::from_raw_os_error(-done.code))
                        } else {
                            Ok(answers)
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }
}
