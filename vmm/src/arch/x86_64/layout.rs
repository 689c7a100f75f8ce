//! Guest physical memory layout for x86_64 (the same shape Firecracker uses).

/// The GDT built for the boot vCPU.
pub const BOOT_GDT_OFFSET: u64 = 0x500;
/// An empty IDT for the boot vCPU.
pub const BOOT_IDT_OFFSET: u64 = 0x520;
/// The zero page (`struct boot_params`), pointed to by RSI at the 64-bit entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, PDPT and one page directory per GiB mapped.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// How much the boot page tables identity-map (2 MiB pages).
pub const BOOT_IDENTITY_MAP_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (the kernel's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA; the MP table lives there and conventional RAM ends there.
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_START: u64 = EBDA_START;
/// Start of high memory (1 MiB): kernel and initrd go above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap: devices live in `[MMIO_GAP_START, MMIO_GAP_END)`, never RAM.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio slot (0xd000_0000 itself is the boot timer).
pub const MMIO_DEVICES_START: u64 = 0xd000_1000;
/// Size of one virtio-mmio slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// First GSI handed to virtio devices (0-4 are legacy: PIT, i8042, cascade, COM2, COM1).
pub const MMIO_FIRST_GSI: u32 = 5;
/// Last GSI available on the IOAPIC.
pub const MMIO_LAST_GSI: u32 = 23;
/// Local APIC and IOAPIC addresses.
pub const APIC_DEFAULT_PHYS_BASE: u64 = 0xfee0_0000;
pub const IO_APIC_DEFAULT_PHYS_BASE: u64 = 0xfec0_0000;
/// KVM's TSS (three pages) and identity-map page for real-mode emulation, inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Default highest address for an initrd when the kernel does not say (ELF vmlinux).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
