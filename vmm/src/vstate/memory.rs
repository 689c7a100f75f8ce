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
        let dir = tempdir();
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

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-mem-{}", std::process::id()));
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
