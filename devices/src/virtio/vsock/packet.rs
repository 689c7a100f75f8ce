//! virtio-vsock packet header, and moving packets between descriptor chains and host buffers.
//!
//! Header layout (44 bytes, little endian): src_cid u64, dst_cid u64, src_port u32,
//! dst_port u32, len u32, type u16, op u16, flags u32, buf_alloc u32, fwd_cnt u32.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::MAX_PKT_DATA;
use crate::virtio::GuestMem;

/// Size of the packet header.
pub const HDR_SIZE: usize = 44;

/// Stream socket type.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// A vsock packet header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HDR_SIZE], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8; HDR_SIZE], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8; HDR_SIZE], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

impl PacketHeader {
    /// Decode from the wire.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        PacketHeader {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encode for the wire.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a chain could not carry a packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("Descriptor has the wrong direction")]
    Direction,
    #[error("Chain is shorter than the packet header")]
    ShortHeader,
    #[error("Packet length {0} exceeds the maximum")]
    TooLong(u32),
    #[error("Chain holds fewer bytes than the header's length")]
    ShortData,
    #[error("Guest memory access failed")]
    GuestMemory,
}

/// Reads a packet from the device-readable descriptors of a tx chain. `data` receives the
/// payload (`hdr.len` bytes).
pub fn read_tx(
    descs: &[Descriptor],
    mem: &GuestMem,
    data: &mut Vec<u8>,
) -> Result<PacketHeader, PacketError> {
    if descs.iter().any(|d| d.is_write_only()) {
        return Err(PacketError::Direction);
    }
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total < HDR_SIZE as u64 {
        return Err(PacketError::ShortHeader);
    }
    let mut hdr_bytes = [0u8; HDR_SIZE];
    let mut cursor = Cursor::new(descs);
    cursor.read(mem, &mut hdr_bytes)?;
    let hdr = PacketHeader::from_bytes(&hdr_bytes);
    if hdr.len as usize > MAX_PKT_DATA {
        return Err(PacketError::TooLong(hdr.len));
    }
    if total - (HDR_SIZE as u64) < u64::from(hdr.len) {
        return Err(PacketError::ShortData);
    }
    data.resize(hdr.len as usize, 0);
    cursor.read(mem, data)?;
    Ok(hdr)
}

/// Bytes of payload a device-writable rx chain can take after the header, or why it can't.
pub fn rx_capacity(descs: &[Descriptor]) -> Result<usize, PacketError> {
    if descs.iter().any(|d| !d.is_write_only()) {
        return Err(PacketError::Direction);
    }
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total < HDR_SIZE as u64 {
        return Err(PacketError::ShortHeader);
    }
    Ok(((total - HDR_SIZE as u64) as usize).min(MAX_PKT_DATA))
}

/// Writes header and payload into an rx chain (capacity checked by [`rx_capacity`]); returns
/// the bytes written.
pub fn write_rx(
    descs: &[Descriptor],
    mem: &GuestMem,
    hdr: &PacketHeader,
    data: &[u8],
) -> Result<u32, PacketError> {
    let mut cursor = Cursor::new(descs);
    cursor.write(mem, &hdr.to_bytes())?;
    cursor.write(mem, data)?;
    Ok((HDR_SIZE + data.len()) as u32)
}

/// Sequential access across the buffers of a chain.
struct Cursor<'a> {
    descs: &'a [Descriptor],
    idx: usize,
    off: u32,
}

impl<'a> Cursor<'a> {
    fn new(descs: &'a [Descriptor]) -> Self {
        Cursor {
            descs,
            idx: 0,
            off: 0,
        }
    }

    /// Calls `f(addr, start, n)` for consecutive pieces covering `len` bytes.
    fn walk(
        &mut self,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), PacketError>,
    ) -> Result<(), PacketError> {
        let mut done = 0usize;
        while done < len {
            let d = self.descs.get(self.idx).ok_or(PacketError::ShortData)?;
            let left = (d.len() - self.off) as usize;
            if left == 0 {
                self.idx += 1;
                self.off = 0;
                continue;
            }
            let n = left.min(len - done);
            let addr = d
                .addr()
                .0
                .checked_add(u64::from(self.off))
                .ok_or(PacketError::GuestMemory)?;
            f(GuestAddress(addr), done, n)?;
            done += n;
            self.off += n as u32;
        }
        Ok(())
    }

    fn read(&mut self, mem: &GuestMem, out: &mut [u8]) -> Result<(), PacketError> {
        let len = out.len();
        self.walk(len, |a, s, n| {
            mem.read_slice(&mut out[s..s + n], a)
                .map_err(|_| PacketError::GuestMemory)
        })
    }

    fn write(&mut self, mem: &GuestMem, src: &[u8]) -> Result<(), PacketError> {
        self.walk(src.len(), |a, s, n| {
            mem.write_slice(&src[s..s + n], a)
                .map_err(|_| PacketError::GuestMemory)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 77,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 3,
            buf_alloc: 0x4_0000,
            fwd_cnt: 999,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&b), h);
    }
}
