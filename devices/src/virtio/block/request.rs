//! Parsing and executing one virtio-blk request.
//!
//! A request chain is: a device-readable 16-byte header (`type`, reserved, `sector`), zero or
//! more data buffers (device-writable for reads and get-id, device-readable for writes), and a
//! device-writable status byte in the last descriptor.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::{DiskBackend, ID_BYTES, SECTOR_SIZE};
use crate::virtio::GuestMem;

const OK: u8 = VIRTIO_BLK_S_OK as u8;

/// Largest bounce-buffer chunk copied between guest and disk at once.
const CHUNK: usize = 128 * 1024;

/// The request header as the driver lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RequestHeader {
    request_type: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: `RequestHeader` is plain old data made of integers, with no padding
// (4 + 4 + 8 bytes, 8-aligned), so any byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(v: u32) -> Self {
        match v {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            t => RequestType::Unsupported(t),
        }
    }
}

/// Why a request failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Request header is device-writable or shorter than 16 bytes")]
    BadHeader,
    #[error("Status descriptor is not device-writable or empty")]
    BadStatus,
    #[error("Data descriptor has the wrong direction")]
    Direction,
    #[error("Data descriptor has zero length")]
    ZeroLength,
    #[error("Data length is not a multiple of the sector size")]
    Unaligned,
    #[error("Request goes past the end of the disk")]
    OutOfBounds,
    #[error("Write to a read-only disk")]
    ReadOnly,
    #[error("Disk I/O failed: {0}")]
    Io(String),
    #[error("Guest memory access failed")]
    GuestMemory,
}

/// Result of executing a chain: the status written and the used length to report.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Option<u8>,
    pub used_len: u32,
}

/// Executes the request described by `descs` against `disk`, writes the status byte when
/// there is a usable status descriptor, and returns what to put on the used ring.
pub fn handle(
    descs: &[Descriptor],
    mem: &GuestMem,
    disk: &mut dyn DiskBackend,
    read_only: bool,
    buf: &mut Vec<u8>,
) -> Outcome {
    // The status descriptor must exist and be writable before anything else happens.
    let status_desc = match descs {
        [_, .., last] if last.is_write_only() && last.len() >= 1 => *last,
        _ => {
            log::warn!("virtio-blk: {}", RequestError::BadStatus);
            return Outcome {
                status: None,
                used_len: 0,
            };
        }
    };
    let data = &descs[1..descs.len() - 1];
    let (status, written) = match execute(&descs[0], data, mem, disk, read_only, buf) {
        Ok(done) => done,
        Err((e, n)) => {
            log::warn!("virtio-blk: {e}");
            (VIRTIO_BLK_S_IOERR as u8, n)
        }
    };
    if mem.write_obj(status, status_desc.addr()).is_err() {
        return Outcome {
            status: None,
            used_len: 0,
        };
    }
    Outcome {
        status: Some(status),
        used_len: written.saturating_add(1),
    }
}

fn read_header(desc: &Descriptor, mem: &GuestMem) -> Result<RequestHeader, RequestError> {
    if desc.is_write_only() || (desc.len() as usize) < std::mem::size_of::<RequestHeader>() {
        return Err(RequestError::BadHeader);
    }
    mem.read_obj::<RequestHeader>(desc.addr())
        .map_err(|_| RequestError::GuestMemory)
}

/// Runs the request; returns the status and the bytes written into device-writable data
/// buffers (the latter also on error).
fn execute(
    header: &Descriptor,
    data: &[Descriptor],
    mem: &GuestMem,
    disk: &mut dyn DiskBackend,
    read_only: bool,
    buf: &mut Vec<u8>,
) -> Result<(u8, u32), (RequestError, u32)> {
    let hdr = read_header(header, mem).map_err(|e| (e, 0))?;
    let ty = RequestType::from(hdr.request_type);
    match ty {
        RequestType::In | RequestType::Out => {
            let want_write = ty == RequestType::In;
            check_data(data, want_write).map_err(|e| (e, 0))?;
            let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
            if !total.is_multiple_of(SECTOR_SIZE) {
                return Err((RequestError::Unaligned, 0));
            }
            let start = hdr
                .sector
                .checked_mul(SECTOR_SIZE)
                .ok_or((RequestError::OutOfBounds, 0))?;
            let end = start
                .checked_add(total)
                .ok_or((RequestError::OutOfBounds, 0))?;
            if end > disk.size() {
                return Err((RequestError::OutOfBounds, 0));
            }
            if ty == RequestType::Out && read_only {
                return Err((RequestError::ReadOnly, 0));
            }
            let mut off = start;
            let mut written = 0u32;
            for d in data {
                let mut done = 0usize;
                while done < d.len() as usize {
                    let n = (d.len() as usize - done).min(CHUNK);
                    buf.resize(n, 0);
                    let addr = GuestAddress(d.addr().0 + done as u64);
                    if ty == RequestType::In {
                        disk.read_at(buf, off)
                            .map_err(|e| (RequestError::Io(e.to_string()), written))?;
                        mem.write_slice(buf, addr)
                            .map_err(|_| (RequestError::GuestMemory, written))?;
                        // A chain may describe more than u32 bytes (many large descriptors
                        // over the same memory): the used length saturates, never wraps.
                        written = written.saturating_add(n as u32);
                    } else {
                        mem.read_slice(buf, addr)
                            .map_err(|_| (RequestError::GuestMemory, 0))?;
                        disk.write_at(buf, off)
                            .map_err(|e| (RequestError::Io(e.to_string()), 0))?;
                    }
                    done += n;
                    off += n as u64;
                }
            }
            Ok((OK, written))
        }
        RequestType::Flush => {
            disk.flush()
                .map_err(|e| (RequestError::Io(e.to_string()), 0))?;
            Ok((OK, 0))
        }
        RequestType::GetId => {
            check_data(data, true).map_err(|e| (e, 0))?;
            let id = disk.id();
            let mut src = &id[..];
            let mut written = 0u32;
            for d in data {
                if src.is_empty() {
                    break;
                }
                let n = (d.len() as usize).min(src.len());
                mem.write_slice(&src[..n], d.addr())
                    .map_err(|_| (RequestError::GuestMemory, written))?;
                written += n as u32;
                src = &src[n..];
            }
            if written as usize != ID_BYTES {
                log::debug!("virtio-blk: get-id buffer shorter than {ID_BYTES} bytes");
            }
            Ok((OK, written))
        }
        RequestType::Unsupported(t) => {
            log::debug!("virtio-blk: unsupported request type {t}");
            Ok((VIRTIO_BLK_S_UNSUPP as u8, 0))
        }
    }
}

fn check_data(data: &[Descriptor], device_writes: bool) -> Result<(), RequestError> {
    for d in data {
        if d.is_write_only() != device_writes {
            return Err(RequestError::Direction);
        }
        if d.len() == 0 {
            return Err(RequestError::ZeroLength);
        }
    }
    Ok(())
}
