//! KVM binary statistics (KVM_GET_STATS_FD, Linux 5.14+) of a vCPU: exit counters and the
//! like, for diagnosing a guest that makes no progress (which exits, if any, it is taking).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
const HEADER_SIZE: usize = 24;
const DESC_FIXED_SIZE: usize = 16;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

/// Parse a stats file image (header, descriptors, data) into (name, first value) pairs.
pub fn parse_stats(
    read_at: &dyn Fn(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<Vec<(String, u64)>> {
    let mut header = [0u8; HEADER_SIZE];
    read_at(0, &mut header)?;
    let name_size = u32_at(&header, 4) as usize;
    let num_desc = u32_at(&header, 8) as usize;
    let desc_offset = u64::from(u32_at(&header, 16));
    let data_offset = u64::from(u32_at(&header, 20));
    if name_size > 4096 || num_desc > 4096 {
        return Err(io::Error::other("implausible KVM stats header"));
    }
    let desc_size = DESC_FIXED_SIZE + name_size;
    let mut descs = vec![0u8; desc_size * num_desc];
    read_at(desc_offset, &mut descs)?;
    let mut out = Vec::with_capacity(num_desc);
    for d in descs.chunks_exact(desc_size) {
        let size = u16_at(d, 6);
        let offset = u64::from(u32_at(d, 8));
        if size == 0 {
            continue;
        }
        let name_bytes = &d[DESC_FIXED_SIZE..];
        let end = name_bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        let mut v = [0u8; 8];
        read_at(data_offset + offset, &mut v)?;
        out.push((name, u64::from_le_bytes(v)));
    }
    Ok(out)
}

/// The vCPU's statistics, or an error where the kernel has no binary stats.
pub fn vcpu_stats(vcpu: &VcpuFd) -> io::Result<Vec<(String, u64)>> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    parse_stats(&|off, buf| file.read_exact_at(buf, off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stats_image() {
        let name_size = 32usize;
        let mut img = vec![0u8; HEADER_SIZE];
        img[4..8].copy_from_slice(&(name_size as u32).to_le_bytes());
        img[8..12].copy_from_slice(&2u32.to_le_bytes());
        let desc_offset = HEADER_SIZE as u32;
        let data_offset = desc_offset + 2 * (DESC_FIXED_SIZE + name_size) as u32;
        img[16..20].copy_from_slice(&desc_offset.to_le_bytes());
        img[20..24].copy_from_slice(&data_offset.to_le_bytes());
        for (i, name) in ["exits", "halt_exits"].iter().enumerate() {
            let mut d = vec![0u8; DESC_FIXED_SIZE + name_size];
            d[6..8].copy_from_slice(&1u16.to_le_bytes());
            d[8..12].copy_from_slice(&((i * 8) as u32).to_le_bytes());
            d[DESC_FIXED_SIZE..DESC_FIXED_SIZE + name.len()].copy_from_slice(name.as_bytes());
            img.extend_from_slice(&d);
        }
        img.extend_from_slice(&1234u64.to_le_bytes());
        img.extend_from_slice(&7u64.to_le_bytes());
        let read = |off: u64, buf: &mut [u8]| -> io::Result<()> {
            let off = off as usize;
            let src = img
                .get(off..off + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        };
        let stats = parse_stats(&read).unwrap();
        assert_eq!(
            stats,
            vec![("exits".to_string(), 1234), ("halt_exits".to_string(), 7)]
        );
    }

    #[test]
    fn truncated_image_is_an_error() {
        let read = |_: u64, _: &mut [u8]| -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::UnexpectedEof))
        };
        assert!(parse_stats(&read).is_err());
    }
}
