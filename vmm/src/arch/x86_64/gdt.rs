//! GDT entries and their `kvm_segment` equivalents.

use kvm_bindings::kvm_segment;

/// A GDT entry from flags (access byte in bits 0-7, flags in bits 12-15), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn get_base(entry: u64) -> u64 {
    (((entry) & 0xff00_0000_0000_0000) >> 32)
        | (((entry) & 0x0000_00ff_0000_0000) >> 16)
        | (((entry) & 0x0000_0000_ffff_0000) >> 16)
}

fn get_limit(entry: u64) -> u32 {
    let limit =
        ((((entry) & 0x000f_0000_0000_0000) >> 32) | ((entry) & 0x0000_0000_0000_ffff)) as u32;
    // With 4 KiB granularity the limit counts pages.
    if get_g(entry) == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

fn get_g(entry: u64) -> u8 {
    ((entry & 0x0080_0000_0000_0000) >> 55) as u8
}

fn get_db(entry: u64) -> u8 {
    ((entry & 0x0040_0000_0000_0000) >> 54) as u8
}

fn get_l(entry: u64) -> u8 {
    ((entry & 0x0020_0000_0000_0000) >> 53) as u8
}

fn get_avl(entry: u64) -> u8 {
    ((entry & 0x0010_0000_0000_0000) >> 52) as u8
}

fn get_p(entry: u64) -> u8 {
    ((entry & 0x0000_8000_0000_0000) >> 47) as u8
}

fn get_dpl(entry: u64) -> u8 {
    ((entry & 0x0000_6000_0000_0000) >> 45) as u8
}

fn get_s(entry: u64) -> u8 {
    ((entry & 0x0000_1000_0000_0000) >> 44) as u8
}

fn get_type(entry: u64) -> u8 {
    ((entry & 0x0000_0f00_0000_0000) >> 40) as u8
}

/// The `kvm_segment` for GDT entry `entry` at index `table_index`. The selector's RPL is the
/// entry's DPL.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    kvm_segment {
        base: get_base(entry),
        limit: get_limit(entry),
        selector: (u16::from(table_index) * 8) | u16::from(get_dpl(entry)),
        type_: get_type(entry),
        present: get_p(entry),
        dpl: get_dpl(entry),
        db: get_db(entry),
        s: get_s(entry),
        l: get_l(entry),
        g: get_g(entry),
        avl: get_avl(entry),
        padding: 0,
        unusable: u8::from(get_p(entry) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_code_segment() {
        let entry = gdt_entry(0xa09b, 0, 0xfffff);
        let seg = kvm_segment_from_gdt(entry, 1);
        assert_eq!(seg.selector, 0x08);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.dpl, 0);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.g, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn user_segments_carry_dpl3_in_the_selector() {
        let code = kvm_segment_from_gdt(gdt_entry(0xa0fb, 0, 0xfffff), 6);
        assert_eq!(code.selector, 0x33);
        assert_eq!(code.dpl, 3);
        let data = kvm_segment_from_gdt(gdt_entry(0xc0f3, 0, 0xfffff), 5);
        assert_eq!(data.selector, 0x2b);
        assert_eq!(data.db, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let entry = gdt_entry(0x008b, 0x1234_5678, 0x67);
        let seg = kvm_segment_from_gdt(entry, 3);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0x67);
        assert_eq!(seg.g, 0);
        assert_eq!(seg.unusable, 0);
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
