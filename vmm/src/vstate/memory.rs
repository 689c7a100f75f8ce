//! Guest memory: anonymous mmap regions around the 32-bit MMIO gap, or, for a VM restored
//! from a snapshot, private (copy-on-write) mappings of the snapshot's memory file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::arch::x86_64::arch_memory_regions;

/// Granularity of the zero-page check when saving memory.
const PAGE: usize = 4096;

/// Errors creating guest memory.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("Cannot write the memory file {}", .0.display())]
    Save(PathBuf, #[source] std::io::Error),
    #[error("Cannot open the memory file {}", .0.display())]
    Open(PathBuf, #[source] std::io::Error),
    #[error("Memory file {} holds {found} bytes, the snapshot's guest has {expected}", .path.display())]
    FileSize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("Cannot map the memory file {}", .0.display())]
    Map(PathBuf, String),
}

/// Allocate `mem_mib` MiB of guest RAM.
pub fn create_guest_memory(mem_mib: u32) -> Result<GuestMemoryMmap, Error> {
    let size = u64::from(mem_mib) << 20;
    GuestMemoryMmap::from_ranges(&arch_memory_regions(size))
        .map_err(|e| Error::Allocate(u64::from(mem_mib), e))
}

/// Write every region of `mem`, one after the other, to a new file at `path`; all-zero pages
/// are left as holes (a sparse file: a guest that touched little memory makes a small
/// file). Returns the bytes actually written. The guest must not run meanwhile.
pub fn save_memory(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, Error> {
    let err = |e| Error::Save(path.to_path_buf(), e);
    let file = File::create(path).map_err(err)?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region is a live mapping of `len` bytes owned by `mem`; the vCPUs are
        // parked and the device event loop is held, so nothing writes it while it is read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr() as *const u8, len) };
        let mut start = 0;
        while start < len {
            // A run of nonzero pages, written at once.
            let mut end = start;
            while end < len && !is_zero(&bytes[end..(end + PAGE).min(len)]) {
                end = (end + PAGE).min(len);
            }
            if end > start {
                file.write_all_at(&bytes[start..end], offset + start as u64)
                    .map_err(err)?;
                written += (end - start) as u64;
                start = end;
            } else {
                start = (start + PAGE).min(len);
            }
        }
        offset += len as u64;
    }
    file.set_len(offset).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(written)
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets the middle.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Map `len` bytes of `file` from `offset` at guest physical address `gpa`, private
/// (copy-on-write) over the guest's anonymous memory: the guest reads the file's pages from
/// the host's page cache (one copy for every VM booted from the file) and copies only the
/// pages it writes. The mapping is populated (`MAP_POPULATE`): KVM then finds host page
/// tables in place at the guest's first touch of each page instead of taking a file fault
/// there (in the virtual KVM host, unpopulated mappings made the guest's boot 0.66 s slower
/// than copying; populated, 0.85 s faster — `benches/snapshot`). Bytes of the last page past `len` are zeroed. Returns `false`, with
/// nothing changed, where `gpa` or `offset` is not page aligned or the range is not inside
/// one region: the caller then copies. Call before the vCPUs run.
pub fn map_file_at(
    mem: &GuestMemoryMmap,
    gpa: u64,
    file: &File,
    offset: u64,
    len: u64,
) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    use vm_memory::{Address, GuestAddress};
    let page = PAGE as u64;
    if len == 0 || !gpa.is_multiple_of(page) || !offset.is_multiple_of(page) {
        return Ok(false);
    }
    let map_len = len.div_ceil(page) * page;
    let Some(region) = mem.find_region(GuestAddress(gpa)) else {
        return Ok(false);
    };
    let start = gpa - region.start_addr().raw_value();
    if start
        .checked_add(map_len)
        .is_none_or(|end| end > region.len())
    {
        return Ok(false);
    }
    // SAFETY: the target range lies inside the region's own live mapping (checked above),
    // which `mem` keeps for the VM's life; MAP_FIXED replaces those pages in place with a
    // private mapping of the file, so the region's addresses stay valid and its unmap on drop
    // covers this mapping too. No vCPU runs yet and nothing holds references into the range.
    let host = unsafe { region.as_ptr().add(start as usize) };
    // SAFETY: see above; the fd is open for reading for the duration of the call.
    let got = unsafe {
        libc::mmap(
            host.cast(),
            map_len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if got == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        // MAP_FIXED may have left the range unmapped: put anonymous zero memory back.
        // SAFETY: the same range of the region's mapping as above.
        let back = unsafe {
            libc::mmap(
                host.cast(),
                map_len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if back == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        return Err(e);
    }
    let tail = (map_len - len) as usize;
    if tail > 0 {
        // SAFETY: the last `tail` bytes of the range just mapped, writable and private.
        unsafe { std::ptr::write_bytes(host.add(len as usize), 0, tail) };
    }
    Ok(true)
}

/// Guest memory of `mem_mib` MiB mapped private (copy-on-write) from the memory file at
/// `path` that [`save_memory`] wrote: the guest reads the file's pages through the page
/// cache, shared by every VM mapped from it, and its writes go to pages of its own.
pub fn map_memory_file(path: &Path, mem_mib: u32) -> Result<GuestMemoryMmap, Error> {
    let file = File::open(path).map_err(|e| Error::Open(path.to_path_buf(), e))?;
    let found = file
        .metadata()
        .map_err(|e| Error::Open(path.to_path_buf(), e))?
        .len();
    let expected = u64::from(mem_mib) << 20;
    if found != expected {
        return Err(Error::FileSize {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    let file = Arc::new(file);
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (addr, len) in arch_memory_regions(expected) {
        let map_err = |e: String| Error::Map(path.to_path_buf(), e);
        let region = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(region, addr)
            .ok_or_else(|| map_err("region does not fit the guest address space".into()))?;
        regions.push(region);
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| Error::Map(path.to_path_buf(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn memory_file_round_trip_is_sparse_and_private() {
        let dir = tempdir("file");
        let path = dir.join("memory");
        let m = create_guest_memory(64).unwrap();
        m.write_obj(0xdead_beef_u32, GuestAddress(0x1234)).unwrap();
        m.write_obj(0x77_u8, GuestAddress((64 << 20) - 1)).unwrap();
        let written = save_memory(&m, &path).unwrap();
        assert_eq!(written, 2 * PAGE as u64, "only the two touched pages");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 20);

        let r = map_memory_file(&path, 64).unwrap();
        assert_eq!(
            r.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            r.read_obj::<u8>(GuestAddress((64 << 20) - 1)).unwrap(),
            0x77
        );
        // Writes stay private to the mapping.
        r.write_obj(1u32, GuestAddress(0x1234)).unwrap();
        let again = map_memory_file(&path, 64).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );

        assert!(matches!(
            map_memory_file(&path, 128),
            Err(Error::FileSize { found, .. }) if found == 64 << 20
        ));
        assert!(matches!(
            map_memory_file(&dir.join("none"), 64),
            Err(Error::Open(..))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_map_copy_on_write_into_guest_memory() {
        let dir = tempdir("map");
        let path = dir.join("blob");
        // 2.5 pages of 0xab, then more bytes that must not show past `len`.
        let mut bytes = vec![0xabu8; PAGE * 2 + PAGE / 2];
        bytes.extend_from_slice(&[0xcd; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let m = create_guest_memory(64).unwrap();
        let len = (PAGE * 2 + PAGE / 2) as u64;
        assert!(map_file_at(&m, 0x20_0000, &file, 0, len).unwrap());
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0xab);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x20_0000 + len - 1)).unwrap(),
            0xab
        );
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x20_0000 + len)).unwrap(),
            0,
            "tail zeroed"
        );
        // Guest writes stay private: the file is unchanged.
        m.write_obj(0x11u8, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[0], 0xab);
        // Unaligned, or past the region: not mapped, nothing changed.
        assert!(!map_file_at(&m, 0x30_0001, &file, 0, len).unwrap());
        assert!(!map_file_at(&m, 0x30_0000, &file, 1, len).unwrap());
        assert!(!map_file_at(&m, (64 << 20) - PAGE as u64, &file, 0, len).unwrap());
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-mem-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sizes_add_up() {
        let m = create_guest_memory(64).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert!(m.address_in_range(GuestAddress((64 << 20) - 1)));
        assert!(!m.address_in_range(GuestAddress(64 << 20)));
    }
}
