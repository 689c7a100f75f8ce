//! Tests of kernel loading and boot-parameter layout with synthetic images.

use std::io::Write;
use std::path::PathBuf;

use super::*;

const MIB: u64 = 1 << 20;

fn mem(mib: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&arch_memory_regions(mib * MIB)).unwrap()
}

fn temp_file(name: &str, bytes: &[u8]) -> (PathBuf, File) {
    let path = std::env::temp_dir().join(format!("ember-vmm-{}-{name}", std::process::id()));
    let mut f = File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    drop(f);
    let f = File::open(&path).unwrap();
    (path, f)
}

/// A minimal x86_64 ELF with one PT_LOAD segment of `payload` at `paddr`.
fn make_elf(entry: u64, paddr: u64, payload: &[u8], memsz: u64) -> Vec<u8> {
    let data_off = 0x100u64;
    let mut v = vec![0u8; data_off as usize];
    v[0..4].copy_from_slice(b"\x7fELF");
    v[4] = 2; // 64-bit
    v[5] = 1; // little endian
    v[6] = 1;
    v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    v[20..24].copy_from_slice(&1u32.to_le_bytes());
    v[24..32].copy_from_slice(&entry.to_le_bytes());
    v[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    v[52..54].copy_from_slice(&64u16.to_le_bytes());
    v[54..56].copy_from_slice(&56u16.to_le_bytes());
    v[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    v[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
    v[ph + 8..ph + 16].copy_from_slice(&data_off.to_le_bytes());
    v[ph + 16..ph + 24]
        .copy_from_slice(&0xffff_ffff_8000_0000u64.wrapping_add(paddr).to_le_bytes());
    v[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
    v[ph + 32..ph + 40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    v[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

struct BzParams {
    setup_sects: u8,
    payload: Vec<u8>,
    init_size: u32,
    version: u16,
    xloadflags: u16,
}

impl Default for BzParams {
    fn default() -> Self {
        BzParams {
            setup_sects: 4,
            payload: vec![0x90; 4096],
            init_size: 8 << 20,
            version: 0x020f,
            xloadflags: XLF_KERNEL_64,
        }
    }
}

fn make_bzimage(p: &BzParams) -> Vec<u8> {
    let setup = (usize::from(p.setup_sects) + 1) * 512;
    let mut v = vec![0u8; setup];
    let put = |v: &mut Vec<u8>, off: usize, bytes: &[u8]| {
        v[off..off + bytes.len()].copy_from_slice(bytes)
    };
    v[0x1f1] = p.setup_sects;
    put(
        &mut v,
        0x1f4,
        &((p.payload.len() as u32).div_ceil(16)).to_le_bytes(),
    );
    put(&mut v, 0x1fe, &KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
    put(&mut v, 0x202, &KERNEL_HDR_MAGIC.to_le_bytes());
    put(&mut v, 0x206, &p.version.to_le_bytes());
    v[0x211] = LOADED_HIGH;
    put(&mut v, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut v, 0x22c, &0x7fff_ffffu32.to_le_bytes());
    put(&mut v, 0x230, &0x20_0000u32.to_le_bytes());
    v[0x234] = 1;
    put(&mut v, 0x236, &p.xloadflags.to_le_bytes());
    put(&mut v, 0x238, &2048u32.to_le_bytes());
    put(&mut v, 0x258, &0x100_0000u64.to_le_bytes());
    put(&mut v, 0x260, &p.init_size.to_le_bytes());
    v.extend_from_slice(&p.payload);
    v
}

#[test]
fn memory_regions_skip_the_mmio_gap() {
    let small = arch_memory_regions(128 * MIB);
    assert_eq!(small, vec![(GuestAddress(0), (128 * MIB) as usize)]);
    let big = arch_memory_regions(4096 * MIB);
    assert_eq!(big.len(), 2);
    assert_eq!(big[0], (GuestAddress(0), MMIO_GAP_START as usize));
    assert_eq!(big[1].0, GuestAddress(MMIO_GAP_END));
    assert_eq!(big[0].1 as u64 + big[1].1 as u64, 4096 * MIB);
}

#[test]
fn elf_kernel_loads_at_its_physical_address() {
    let payload = b"\xf4kernel-code";
    let (path, mut f) = temp_file("elf", &make_elf(0x100_0000, 0x100_0000, payload, 0x2000));
    let m = mem(64);
    let k = load_kernel(&m, &mut f).unwrap();
    assert_eq!(k.kind, KernelKind::Elf);
    assert_eq!(k.entry, GuestAddress(0x100_0000));
    assert_eq!(k.kernel_end, 0x100_2000);
    let mut got = vec![0u8; payload.len()];
    m.read_slice(&mut got, GuestAddress(0x100_0000)).unwrap();
    assert_eq!(&got, payload);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn truncated_elf_is_an_error() {
    let mut image = make_elf(0x100_0000, 0x100_0000, &[0x90; 4096], 4096);
    image.truncate(image.len() - 100);
    let (path, mut f) = temp_file("elf-trunc", &image);
    let err = load_kernel(&mem(64), &mut f).unwrap_err();
    assert!(matches!(err, Error::TruncatedKernel { .. }), "{err}");
    let (path2, mut f2) = temp_file("elf-tiny", &image[..40]);
    let err = load_kernel(&mem(64), &mut f2).unwrap_err();
    assert!(matches!(err, Error::TruncatedKernel { .. }), "{err}");
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(path2).unwrap();
}

#[test]
fn elf_beyond_memory_is_too_big() {
    let (path, mut f) = temp_file(
        "elf-big",
        &make_elf(0x100_0000, 0x100_0000, &[1; 16], 40 * MIB),
    );
    let err = load_kernel(&mem(32), &mut f).unwrap_err();
    match err {
        Error::KernelTooBig { need_mib, have_mib } => {
            assert_eq!(need_mib, 56);
            assert_eq!(have_mib, 32);
        }
        e => panic!("unexpected {e}"),
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn non_kernel_files_are_rejected() {
    let (path, mut f) = temp_file("text", &b"#!/bin/sh\necho not a kernel\n".repeat(100));
    assert!(matches!(
        load_kernel(&mem(64), &mut f),
        Err(Error::NotAKernel)
    ));
    let (path2, mut f2) = temp_file("empty", b"");
    assert!(matches!(
        load_kernel(&mem(64), &mut f2),
        Err(Error::TruncatedKernel { .. })
    ));
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(path2).unwrap();
}

#[test]
fn bzimage_loads_at_code32_start_with_64bit_entry() {
    let p = BzParams::default();
    let (path, mut f) = temp_file("bz", &make_bzimage(&p));
    let m = mem(64);
    let k = load_kernel(&m, &mut f).unwrap();
    assert_eq!(k.kind, KernelKind::BzImage);
    assert_eq!(k.entry, GuestAddress(0x10_0200));
    assert_eq!(k.kernel_end, 0x100_0000 + (8 << 20));
    let hdr = k.setup_header.unwrap();
    let magic = hdr.header;
    assert_eq!(magic, KERNEL_HDR_MAGIC);
    let mut got = [0u8; 4];
    m.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(got, [0x90; 4]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bzimage_errors() {
    let mut image = make_bzimage(&BzParams::default());
    image.truncate(image.len() - 2048);
    let (p1, mut f) = temp_file("bz-trunc", &image);
    assert!(matches!(
        load_kernel(&mem(64), &mut f),
        Err(Error::TruncatedKernel { .. })
    ));
    let (p2, mut f) = temp_file(
        "bz-32",
        &make_bzimage(&BzParams {
            xloadflags: 0,
            ..Default::default()
        }),
    );
    assert!(matches!(
        load_kernel(&mem(64), &mut f),
        Err(Error::UnsupportedKernel(_))
    ));
    let (p3, mut f) = temp_file(
        "bz-old",
        &make_bzimage(&BzParams {
            version: 0x0200,
            ..Default::default()
        }),
    );
    assert!(matches!(
        load_kernel(&mem(64), &mut f),
        Err(Error::UnsupportedKernel(_))
    ));
    let (p4, mut f) = temp_file(
        "bz-big",
        &make_bzimage(&BzParams {
            init_size: 100 << 20,
            ..Default::default()
        }),
    );
    assert!(matches!(
        load_kernel(&mem(64), &mut f),
        Err(Error::KernelTooBig { need_mib: 116, .. })
    ));
    for p in [p1, p2, p3, p4] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn real_bzimage_if_installed() {
    let dir = std::env::var("EMBER_GUEST_DIR").unwrap_or_else(|_| "/var/lib/ember/guest".into());
    let path = std::path::Path::new(&dir).join("bzImage");
    let Ok(mut f) = File::open(&path) else {
        eprintln!("skipping: no bzImage at {}", path.display());
        return;
    };
    let k = load_kernel(&mem(256), &mut f).unwrap();
    assert_eq!(k.kind, KernelKind::BzImage);
    assert!(k.kernel_end > HIMEM_START);
}

#[test]
fn initrd_goes_high_and_page_aligned() {
    let addr = initrd_load_addr(128 * MIB, DEFAULT_INITRD_ADDR_MAX, 20 * MIB, 5000).unwrap();
    assert_eq!(addr, 128 * MIB - 0x2000);
    assert_eq!(addr % PAGE_SIZE, 0);
    // The kernel's initrd_addr_max caps it.
    let capped = initrd_load_addr(2048 * MIB, 0x37ff_ffff, 20 * MIB, 0x1000).unwrap();
    assert_eq!(capped, 0x3800_0000 - 0x1000);
    // Too big to fit above the kernel.
    assert!(matches!(
        initrd_load_addr(64 * MIB, DEFAULT_INITRD_ADDR_MAX, 40 * MIB, 30 * MIB),
        Err(Error::InitrdTooBig { .. })
    ));
    assert!(initrd_load_addr(MIB, DEFAULT_INITRD_ADDR_MAX, 0, 2 * MIB).is_err());
}

#[test]
fn zero_page_layout() {
    let m = mem(128);
    let (path, mut f) = temp_file("elf-zp", &make_elf(0x100_0000, 0x100_0000, &[0xf4], 0x1000));
    let k = load_kernel(&m, &mut f).unwrap();
    let cmdline = build_cmdline("console=ttyS0 panic=1", &["quiet".to_string()]).unwrap();
    let len = load_cmdline(&m, &cmdline).unwrap();
    let rd_bytes = [7u8; 3000];
    let initrd = load_initrd(&m, &k, &mut &rd_bytes[..], 3000).unwrap();
    let params = boot_params_for(&m, &k, len, Some(initrd));
    write_boot_params(&m, &params).unwrap();

    let back: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let (flag, magic, loader, cmd_ptr, cmd_size, rd_image, rd_size) = (
        back.hdr.boot_flag,
        back.hdr.header,
        back.hdr.type_of_loader,
        back.hdr.cmd_line_ptr,
        back.hdr.cmdline_size,
        back.hdr.ramdisk_image,
        back.hdr.ramdisk_size,
    );
    assert_eq!(flag, KERNEL_BOOT_FLAG_MAGIC);
    assert_eq!(magic, KERNEL_HDR_MAGIC);
    assert_eq!(loader, 0xff);
    assert_eq!(cmd_ptr as u64, CMDLINE_START);
    assert_eq!(cmd_size as usize, "console=ttyS0 panic=1 quiet".len() + 1);
    assert_eq!(rd_image as u64, initrd.0);
    assert_eq!(rd_size, 3000);

    let mut text = vec![0u8; len];
    m.read_slice(&mut text, GuestAddress(CMDLINE_START))
        .unwrap();
    assert_eq!(&text, b"console=ttyS0 panic=1 quiet\0");
    let mut rd = [0u8; 4];
    m.read_slice(&mut rd, GuestAddress(initrd.0)).unwrap();
    assert_eq!(rd, [7; 4]);

    assert_eq!(back.e820_entries, 2);
    let e0 = back.e820_table[0];
    let e1 = back.e820_table[1];
    let (a0, s0, t0) = (e0.addr, e0.size, e0.r#type);
    let (a1, s1, t1) = (e1.addr, e1.size, e1.r#type);
    assert_eq!((a0, s0, t0), (0, EBDA_START, E820_RAM));
    assert_eq!(
        (a1, s1, t1),
        (HIMEM_START, 128 * MIB - HIMEM_START, E820_RAM)
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn e820_above_4g() {
    let m = mem(4096);
    let e = e820_entries(&m);
    assert_eq!(e.len(), 3);
    let (a, s) = (e[2].addr, e[2].size);
    assert_eq!(a, MMIO_GAP_END);
    assert_eq!(s, 4096 * MIB - MMIO_GAP_START);
}

#[test]
fn cmdline_too_long_is_an_error() {
    let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
    assert!(matches!(build_cmdline(&long, &[]), Err(Error::Cmdline(_))));
}

#[test]
fn hostile_headers_are_errors_not_panics() {
    let m = mem(64);
    // bzImage header with extreme sizes and addresses.
    let mut bz = make_bzimage(&BzParams::default());
    bz[0x258..0x260].copy_from_slice(&u64::MAX.to_le_bytes()); // pref_address
    bz[0x260..0x264].copy_from_slice(&u32::MAX.to_le_bytes()); // init_size
    let (p1, mut f) = temp_file("bz-hostile", &bz);
    assert!(load_kernel(&m, &mut f).is_err());
    // ELF whose program headers point far past the end of the file.
    let mut elf = make_elf(0x100_0000, 0x100_0000, &[0x90; 64], 64);
    elf[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes()); // e_phoff
    let (p2, mut f) = temp_file("elf-hostile", &elf);
    assert!(load_kernel(&m, &mut f).is_err());
    // ELF segment at the top of the address space.
    let elf = make_elf(0x100_0000, u64::MAX - 0x10, &[0x90; 64], 0x1000);
    let (p3, mut f) = temp_file("elf-top", &elf);
    assert!(matches!(
        load_kernel(&m, &mut f),
        Err(Error::KernelTooBig { .. })
    ));
    for p in [p1, p2, p3] {
        std::fs::remove_file(p).unwrap();
    }
}

/// `make_elf` with its one segment at file offset 0x1000 (page aligned, as vmlinux's are).
fn make_aligned_elf(entry: u64, paddr: u64, payload: &[u8], memsz: u64) -> Vec<u8> {
    let mut v = make_elf(entry, paddr, payload, memsz);
    v.truncate(0x100);
    v.resize(0x1000, 0);
    v[64 + 8..64 + 16].copy_from_slice(&0x1000u64.to_le_bytes());
    v.extend_from_slice(payload);
    // Bytes after the segment in the file, which must not reach the guest.
    v.extend_from_slice(&[0xee; 64]);
    v
}

#[test]
fn mapped_kernel_and_initrd_match_the_copied_ones() {
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
    for (name, elf) in [
        (
            "aligned",
            make_aligned_elf(0x20_0000, 0x20_0000, &payload, 0x3000),
        ),
        (
            "unaligned",
            make_elf(0x20_0000, 0x20_0000, &payload, 0x3000),
        ),
    ] {
        let (_p1, mut f1) = temp_file(&format!("map-{name}-1"), &elf);
        let (_p2, mut f2) = temp_file(&format!("map-{name}-2"), &elf);
        let copied = mem(64);
        let mapped = mem(64);
        let a = load_kernel(&copied, &mut f1).unwrap();
        let b = map_kernel(&mapped, &mut f2).unwrap();
        assert_eq!((a.entry, a.kernel_end), (b.entry, b.kernel_end), "{name}");
        let mut x = vec![0u8; 0x3000];
        let mut y = vec![0u8; 0x3000];
        copied.read_slice(&mut x, GuestAddress(0x20_0000)).unwrap();
        mapped.read_slice(&mut y, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(x, y, "{name}: same bytes, bss zero");
        assert_eq!(&y[..payload.len()], &payload[..]);
        assert!(y[payload.len()..].iter().all(|b| *b == 0), "{name}");

        let rd: Vec<u8> = (0..9000u32).map(|i| (i % 7) as u8 + 1).collect();
        let (_r, mut rf) = temp_file(&format!("map-{name}-rd"), &rd);
        let (addr, size) = map_initrd(&mapped, &b, &mut rf, rd.len() as u64).unwrap();
        let copy_at = load_initrd(&copied, &a, &mut &rd[..], rd.len() as u64).unwrap();
        assert_eq!((addr, size), copy_at);
        let mut z = vec![0u8; rd.len() + 16];
        mapped.read_slice(&mut z, GuestAddress(addr)).unwrap();
        assert_eq!(&z[..rd.len()], &rd[..]);
        assert!(z[rd.len()..].iter().all(|b| *b == 0));
    }
}
