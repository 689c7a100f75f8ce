//! The Intel MultiProcessor table (spec 1.4) that tells Linux about the vCPUs, the IOAPIC
//! and how ISA IRQs are routed. linux-loader does not write one, so we do: a floating
//! pointer structure at the start of the EBDA followed by the configuration table.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    APIC_DEFAULT_PHYS_BASE, EBDA_START, IO_APIC_DEFAULT_PHYS_BASE, MMIO_LAST_GSI, MPTABLE_START,
};

/// Most vCPUs whose entries fit in the 1 KiB EBDA (and the guest kernel's NR_CPUS).
pub const MAX_SUPPORTED_CPUS: u8 = 32;

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
#[cfg(test)]
const MPC_CPU_SIZE: usize = 20;
#[cfg(test)]
const MPC_SMALL_ENTRY_SIZE: usize = 8;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MPC_APIC_USABLE: u8 = 1;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const SPEC_REV: u8 = 4;

/// Errors writing the MP table.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Too many vCPUs for the MP table: {0} (at most {MAX_SUPPORTED_CPUS})")]
    TooManyCpus(u8),
    #[error("At least one vCPU is needed")]
    NoCpus,
    #[error("Failed to write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Two's complement checksum: the bytes of a structure plus this sum to 0 (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The IOAPIC's APIC ID: after the vCPUs'.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus + 1
}

/// Build the MP floating pointer + configuration table for `num_cpus` vCPUs, as it should
/// sit at `base`.
pub fn build_mptable(num_cpus: u8, base: u64) -> Result<Vec<u8>, Error> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    if num_cpus > MAX_SUPPORTED_CPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let table_addr = base + MPF_SIZE as u64;

    // Configuration table entries.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic = ioapic_id(num_cpus);
    entries.extend_from_slice(&[MP_IOAPIC, ioapic, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&(IO_APIC_DEFAULT_PHYS_BASE as u32).to_le_bytes());
    count += 1;
    for irq in 0..=(MMIO_LAST_GSI as u8) {
        // type, irq type, flags (conforming to bus), source bus, source irq, dest apic, dest pin
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"EMBER   "); // OEM id, 8 bytes
    table.extend_from_slice(b"000000000000"); // product id, 12 bytes
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_DEFAULT_PHYS_BASE as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE + table_len);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(SPEC_REV);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0; 5]); // feature bytes: no default configuration
    mpf[10] = checksum(&mpf);
    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Write the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), Error> {
    let bytes = build_mptable(num_cpus, MPTABLE_START)?;
    debug_assert!(MPTABLE_START + bytes.len() as u64 <= EBDA_START + 0x400);
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_zero() {
        for cpus in [1u8, 2, 7, MAX_SUPPORTED_CPUS] {
            let t = build_mptable(cpus, MPTABLE_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..MPF_SIZE]), 0, "floating pointer, {cpus} cpus");
            let table = &t[MPF_SIZE..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "config table, {cpus} cpus");
            assert!(t.len() <= 0x400, "fits in the EBDA");
        }
    }

    #[test]
    fn entries_describe_cpus_and_ioapic() {
        let t = build_mptable(3, MPTABLE_START).unwrap();
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(ptr, MPTABLE_START + MPF_SIZE as u64);
        let table = &t[MPF_SIZE..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        // 3 cpus + bus + ioapic + 24 irqs + 2 lints
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        let first_cpu = &table[MPC_HEADER_SIZE..MPC_HEADER_SIZE + MPC_CPU_SIZE];
        assert_eq!(first_cpu[0], MP_PROCESSOR);
        assert_eq!(first_cpu[3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        let second = &table[MPC_HEADER_SIZE + MPC_CPU_SIZE..];
        assert_eq!(second[1], 1, "APIC id");
        assert_eq!(second[3], CPU_ENABLED);
        let ioapic_at = MPC_HEADER_SIZE + 3 * MPC_CPU_SIZE + MPC_SMALL_ENTRY_SIZE;
        assert_eq!(table[ioapic_at], MP_IOAPIC);
        assert_eq!(table[ioapic_at + 1], 4);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(build_mptable(0, 0), Err(Error::NoCpus)));
        assert!(matches!(
            build_mptable(MAX_SUPPORTED_CPUS + 1, 0),
            Err(Error::TooManyCpus(_))
        ));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
