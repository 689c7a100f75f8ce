//! x86_64 boot: guest memory map, kernel loading (ELF vmlinux and bzImage), initrd
//! placement, command line and the zero page (`boot_params`) for the 64-bit boot protocol.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use layout::*;

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// The bzImage 64-bit entry point is 0x200 past the protected-mode kernel's start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 0x1;
const LOADED_HIGH: u8 = 0x1;
const PAGE_SIZE: u64 = 0x1000;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const PT_LOAD: u32 = 1;

/// Errors of x86_64 boot setup.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to read the kernel image")]
    ReadKernel(#[source] io::Error),
    #[error("Kernel image is truncated ({have} bytes, expected at least {need})")]
    TruncatedKernel { have: u64, need: u64 },
    #[error("Not a Linux kernel image (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel,
    #[error("Unsupported kernel image: {0}")]
    UnsupportedKernel(&'static str),
    #[error("Guest memory too small for this kernel: it needs {need_mib} MiB, the VM has {have_mib} MiB")]
    KernelTooBig { need_mib: u64, have_mib: u64 },
    #[error("Failed to load the kernel into guest memory")]
    LoadKernel(#[source] linux_loader::loader::Error),
    #[error("Initrd of {size} bytes does not fit in guest memory between the kernel end ({kernel_end:#x}) and {limit:#x}")]
    InitrdTooBig {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("Failed to load the initrd into guest memory")]
    LoadInitrd(#[source] vm_memory::GuestMemoryError),
    #[error("Failed to copy a kernel segment into guest memory")]
    CopyKernel(#[source] vm_memory::GuestMemoryError),
    #[error("Failed to map the initrd into guest memory")]
    MapInitrd(#[source] io::Error),
    #[error("Invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("Failed to write the kernel command line")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("Failed to write the zero page")]
    WriteBootParams(#[source] vm_memory::GuestMemoryError),
}

/// RAM regions for `mem_size` bytes of guest memory, skipping the 32-bit MMIO gap.
pub fn arch_memory_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// End of RAM below the MMIO gap for `mem_size` bytes of guest memory.
pub fn low_mem_end_for(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// End of RAM below the MMIO gap.
pub fn low_mem_end(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter()
        .filter(|r| r.start_addr().raw_value() < MMIO_GAP_START)
        .map(|r| r.last_addr().raw_value() + 1)
        .max()
        .unwrap_or(0)
}

/// The kind of kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    Elf,
    BzImage,
}

/// What loading the kernel produced.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub kind: KernelKind,
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte after the kernel (including what it decompresses or zeroes).
    pub kernel_end: u64,
    /// bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

fn read_at(file: &mut (impl Read + Seek), offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
    file.seek(SeekFrom::Start(offset))
        .map_err(Error::ReadKernel)?;
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::ReadKernel(e)),
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// One PT_LOAD segment of a vmlinux.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfSegment {
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Check an ELF vmlinux: returns (entry, end of the highest PT_LOAD segment).
fn inspect_elf(file: &mut (impl Read + Seek), file_len: u64) -> Result<(u64, u64), Error> {
    let (entry, segments) = elf_segments(file, file_len)?;
    let end = segments
        .iter()
        .map(|s| s.paddr.saturating_add(s.memsz))
        .max()
        .unwrap_or(0);
    Ok((entry, end))
}

/// The entry point and PT_LOAD segments of an ELF vmlinux, checked: 64-bit x86_64, complete,
/// at least one segment, every segment at or above 1 MiB (as linux-loader requires).
fn elf_segments(
    file: &mut (impl Read + Seek),
    file_len: u64,
) -> Result<(u64, Vec<ElfSegment>), Error> {
    let mut ehdr = [0u8; 64];
    if !read_at(file, 0, &mut ehdr)? {
        return Err(Error::TruncatedKernel {
            have: file_len,
            need: 64,
        });
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(Error::UnsupportedKernel("not a 64-bit little-endian ELF"));
    }
    if u16_at(&ehdr, 18) != 62 {
        return Err(Error::UnsupportedKernel("ELF is not for x86_64"));
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54) as u64;
    let phnum = u16_at(&ehdr, 56) as u64;
    if phentsize != 56 || phnum == 0 {
        return Err(Error::UnsupportedKernel(
            "ELF has no usable program headers",
        ));
    }
    let mut segments = Vec::new();
    let mut need = phoff.saturating_add(phentsize * phnum);
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        if !read_at(file, phoff.saturating_add(i * phentsize), &mut ph)? {
            return Err(Error::TruncatedKernel {
                have: file_len,
                need,
            });
        }
        if u32_at(&ph, 0) != PT_LOAD {
            continue;
        }
        let seg = ElfSegment {
            offset: u64_at(&ph, 8),
            paddr: u64_at(&ph, 24),
            filesz: u64_at(&ph, 32),
            memsz: u64_at(&ph, 40),
        };
        need = need.max(seg.offset.saturating_add(seg.filesz));
        if seg.filesz > seg.memsz {
            return Err(Error::UnsupportedKernel(
                "ELF segment larger in the file than in memory",
            ));
        }
        segments.push(seg);
    }
    if need > file_len {
        return Err(Error::TruncatedKernel {
            have: file_len,
            need,
        });
    }
    if segments
        .iter()
        .all(|s| s.paddr.saturating_add(s.memsz) == 0)
    {
        return Err(Error::UnsupportedKernel("ELF has no loadable segment"));
    }
    if entry < HIMEM_START {
        return Err(Error::UnsupportedKernel("ELF entry point below 1 MiB"));
    }
    Ok((entry, segments))
}

/// Check a bzImage; returns its setup header and how far up memory it reaches once
/// decompressed.
fn inspect_bzimage(
    file: &mut (impl Read + Seek),
    file_len: u64,
) -> Result<(setup_header, u64), Error> {
    let mut hdr = setup_header::default();
    let size = std::mem::size_of::<setup_header>();
    let mut buf = vec![0u8; size];
    if !read_at(file, SETUP_HEADER_OFFSET, &mut buf)? {
        return Err(Error::TruncatedKernel {
            have: file_len,
            need: SETUP_HEADER_OFFSET + size as u64,
        });
    }
    // setup_header is plain old data (ByteValued); copy the bytes in.
    vm_memory::ByteValued::as_mut_slice(&mut hdr).copy_from_slice(&buf);
    let (magic, version, loadflags, xloadflags, setup_sects, syssize) = (
        hdr.header,
        hdr.version,
        hdr.loadflags,
        hdr.xloadflags,
        hdr.setup_sects,
        hdr.syssize,
    );
    if magic != KERNEL_HDR_MAGIC {
        return Err(Error::NotAKernel);
    }
    if version < 0x020c || loadflags & LOADED_HIGH == 0 {
        return Err(Error::UnsupportedKernel(
            "bzImage boot protocol older than 2.12",
        ));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::UnsupportedKernel(
            "bzImage has no 64-bit entry point",
        ));
    }
    let setup_bytes = (u64::from(if setup_sects == 0 { 4 } else { setup_sects }) + 1) * 512;
    let need = setup_bytes + u64::from(syssize) * 16;
    if file_len < need {
        return Err(Error::TruncatedKernel {
            have: file_len,
            need,
        });
    }
    let (code32, pref, init_size) = (hdr.code32_start, hdr.pref_address, hdr.init_size);
    let payload_end = u64::from(code32).saturating_add(file_len - setup_bytes);
    let decompressed_end = pref
        .max(u64::from(code32))
        .saturating_add(u64::from(init_size));
    Ok((hdr, payload_end.max(decompressed_end)))
}

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Check a kernel image without loading it: its kind, and that it is complete and fits in
/// `low_mem_end` bytes of RAM. Returns the kind and the end of what it occupies.
pub fn check_kernel(file: &mut File, low_mem_end: u64) -> Result<(KernelKind, u64), Error> {
    let file_len = file.metadata().map_err(Error::ReadKernel)?.len();
    let mut magic = [0u8; 4];
    if !read_at(file, 0, &mut magic)? {
        return Err(Error::TruncatedKernel {
            have: file_len,
            need: 4,
        });
    }
    let (kind, end) = if &magic == ELF_MAGIC {
        (KernelKind::Elf, inspect_elf(file, file_len)?.1)
    } else if file_len < SETUP_HEADER_OFFSET + 0x20 {
        return Err(Error::NotAKernel);
    } else {
        (KernelKind::BzImage, inspect_bzimage(file, file_len)?.1)
    };
    if end > low_mem_end {
        return Err(Error::KernelTooBig {
            need_mib: mib_ceil(end),
            have_mib: low_mem_end >> 20,
        });
    }
    Ok((kind, end))
}

/// Load a vmlinux (ELF) or bzImage kernel; errors name truncated, foreign or too-big images.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedKernel, Error> {
    let (kind, end) = check_kernel(file, low_mem_end(mem))?;
    match kind {
        KernelKind::Elf => {
            let res = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
                .map_err(Error::LoadKernel)?;
            Ok(LoadedKernel {
                kind,
                entry: res.kernel_load,
                kernel_end: res.kernel_end.max(end),
                setup_header: None,
            })
        }
        KernelKind::BzImage => {
            let res = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
                .map_err(Error::LoadKernel)?;
            Ok(LoadedKernel {
                kind,
                entry: GuestAddress(res.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET),
                kernel_end: end.max(res.kernel_end),
                setup_header: res.setup_header,
            })
        }
    }
}

/// [`load_kernel`], mapping instead of copying where it can: each PT_LOAD segment of a
/// vmlinux whose file offset and address are page aligned is mapped copy-on-write from the
/// file ([`crate::vstate::memory::map_file_at`]: one page cache for every VM booted from it;
/// a guest copies only the pages it writes); other segments, and bzImages (a compressed
/// payload behind the setup sectors), are copied.
pub fn map_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedKernel, Error> {
    let (kind, end) = check_kernel(file, low_mem_end(mem))?;
    if kind != KernelKind::Elf {
        return load_kernel(mem, file);
    }
    let file_len = file.metadata().map_err(Error::ReadKernel)?.len();
    let (entry, segments) = elf_segments(file, file_len)?;
    for seg in &segments {
        if seg.paddr < HIMEM_START {
            return Err(Error::UnsupportedKernel("ELF segment below 1 MiB"));
        }
        if seg.filesz == 0 {
            continue;
        }
        let mapped =
            crate::vstate::memory::map_file_at(mem, seg.paddr, file, seg.offset, seg.filesz)
                .map_err(Error::ReadKernel)?;
        if !mapped {
            file.seek(SeekFrom::Start(seg.offset))
                .map_err(Error::ReadKernel)?;
            mem.read_exact_volatile_from(GuestAddress(seg.paddr), file, seg.filesz as usize)
                .map_err(Error::CopyKernel)?;
        }
    }
    Ok(LoadedKernel {
        kind,
        entry: GuestAddress(entry),
        kernel_end: end,
        setup_header: None,
    })
}

/// [`load_initrd`] from a file, mapped copy-on-write when its place is page aligned (it
/// always is: [`initrd_load_addr`] aligns it), copied otherwise.
pub fn map_initrd(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    file: &mut File,
    size: u64,
) -> Result<(u64, u64), Error> {
    let addr = initrd_addr_for(mem, kernel, size)?;
    let mapped = size > 0
        && crate::vstate::memory::map_file_at(mem, addr, file, 0, size)
            .map_err(Error::MapInitrd)?;
    if !mapped {
        mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
            .map_err(Error::LoadInitrd)?;
    }
    Ok((addr, size))
}

/// Where an initrd of `size` bytes goes: as high as possible (page aligned) below both the
/// end of low memory and the kernel's `initrd_addr_max`, and above the kernel.
pub fn initrd_load_addr(
    low_mem_end: u64,
    initrd_addr_max: u64,
    kernel_end: u64,
    size: u64,
) -> Result<u64, Error> {
    let limit = low_mem_end.min(initrd_addr_max.saturating_add(1));
    let err = Error::InitrdTooBig {
        size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or(err)? & !(PAGE_SIZE - 1);
    if start < kernel_end {
        return Err(Error::InitrdTooBig {
            size,
            kernel_end,
            limit,
        });
    }
    Ok(start)
}

/// Where `kernel`'s initrd of `size` bytes goes in `mem` (below the kernel's
/// `initrd_addr_max`, if its setup header has one).
fn initrd_addr_for(mem: &GuestMemoryMmap, kernel: &LoadedKernel, size: u64) -> Result<u64, Error> {
    let max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    initrd_load_addr(low_mem_end(mem), max, kernel.kernel_end, size)
}

/// Read `size` bytes of initrd straight into guest memory; returns (address, size).
pub fn load_initrd<R: vm_memory::ReadVolatile>(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initrd: &mut R,
    size: u64,
) -> Result<(u64, u64), Error> {
    let addr = initrd_addr_for(mem, kernel, size)?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
        .map_err(Error::LoadInitrd)?;
    Ok((addr, size))
}

/// Build a command line from whole-string `base` plus `extra` parameters.
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    cmdline.insert_str(base).map_err(Error::Cmdline)?;
    for e in extra {
        cmdline.insert_str(e).map_err(Error::Cmdline)?;
    }
    Ok(cmdline)
}

/// Write the command line at [`CMDLINE_START`]; returns its length including the NUL.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, Error> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(Error::LoadCmdline)?;
    let s = cmdline.as_cstring().map_err(Error::Cmdline)?;
    Ok(s.as_bytes_with_nul().len())
}

/// The e820 map for `mem`: conventional RAM below the EBDA, then RAM from 1 MiB up to the
/// MMIO gap, then RAM above 4 GiB.
pub fn e820_entries(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut v = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.last_addr().raw_value() + 1;
        if end > start {
            v.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    v
}

/// Fill the zero page for the 64-bit boot protocol.
pub fn boot_params_for(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let entries = e820_entries(mem);
    for (slot, e) in params.e820_table.iter_mut().zip(entries.iter()) {
        *slot = *e;
    }
    params.e820_entries = entries.len().min(params.e820_table.len()) as u8;
    params
}

/// Write the zero page at [`ZERO_PAGE_START`].
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), Error> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(Error::WriteBootParams)
}

#[cfg(test)]
mod tests;
