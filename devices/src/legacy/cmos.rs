//! A minimal MC146818 CMOS/RTC on ports 0x70 (index) and 0x71 (data): the wall clock in
//! BCD (UTC), "update not in progress", and 128 bytes of CMOS RAM. Enough for Linux to read
//! the time at boot without hanging on the UIP bit.

use std::time::{SystemTime, UNIX_EPOCH};

use super::persist::{CmosSnapshot, LegacyStateError};

/// Index port.
pub const INDEX_PORT: u16 = 0x70;
/// Data port.
pub const DATA_PORT: u16 = 0x71;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) always clear.
const REG_A_VALUE: u8 = 0x26;
/// 24-hour mode, BCD.
const REG_B_VALUE: u8 = 0x02;
/// Valid RAM and time.
const REG_D_VALUE: u8 = 0x80;

/// Where the clock comes from: seconds since the Unix epoch.
pub type ClockFn = fn() -> u64;

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The CMOS/RTC device.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: ClockFn,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

fn bcd(v: u64) -> u8 {
    let v = (v % 100) as u8;
    ((v / 10) << 4) | (v % 10)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(system_clock)
    }

    /// A CMOS whose clock reads `clock` (tests use a fixed time).
    pub fn with_clock(clock: ClockFn) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            clock,
        }
    }

    /// The index register and RAM, for a snapshot (the clock stays the host's).
    pub fn save(&self) -> CmosSnapshot {
        CmosSnapshot {
            index: self.index,
            ram: self.ram.to_vec(),
        }
    }

    /// Bring the index and RAM to `snap`; the clock keeps reading this one's source.
    pub fn restore(&mut self, snap: &CmosSnapshot) -> Result<(), LegacyStateError> {
        if usize::from(snap.index) >= self.ram.len() {
            return Err(LegacyStateError::CmosIndex(snap.index));
        }
        let ram: [u8; 128] = snap
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| LegacyStateError::CmosRam(snap.ram.len()))?;
        self.index = snap.index;
        self.ram = ram;
        Ok(())
    }

    fn time_register(&self, reg: u8) -> u8 {
        let now = (self.clock)();
        let days = (now / 86_400) as i64;
        let secs = now % 86_400;
        let (year, month, day) = civil_from_days(days);
        match reg {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            REG_DAY => bcd(day),
            REG_MONTH => bcd(month),
            REG_YEAR => bcd(year.rem_euclid(100) as u64),
            _ => bcd(year.div_euclid(100).rem_euclid(100) as u64),
        }
    }

    /// Guest `in` from `port`.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            INDEX_PORT => self.index,
            DATA_PORT => match self.index {
                REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
                | REG_YEAR | REG_CENTURY => self.time_register(self.index),
                REG_A => REG_A_VALUE,
                REG_B => REG_B_VALUE,
                REG_C => 0,
                REG_D => REG_D_VALUE,
                i => self.ram[usize::from(i & 0x7f)],
            },
            _ => 0xff,
        }
    }

    /// Guest `out` of `value` to `port`. Bit 7 of the index (NMI mask) is dropped; writes to
    /// clock registers are ignored (the clock follows the host).
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            INDEX_PORT => self.index = value & 0x7f,
            DATA_PORT => match self.index {
                REG_SECONDS..=REG_D | REG_CENTURY => {}
                i => self.ram[usize::from(i)] = value,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-29 13:05:09 UTC, a Sunday.
    fn fixed() -> u64 {
        1_795_957_509
    }

    fn reg(c: &mut Cmos, r: u8) -> u8 {
        c.write(INDEX_PORT, r);
        c.read(DATA_PORT)
    }

    #[test]
    fn reports_the_time_in_bcd() {
        let mut c = Cmos::with_clock(fixed);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x09);
        assert_eq!(reg(&mut c, REG_MINUTES), 0x05);
        assert_eq!(reg(&mut c, REG_HOURS), 0x13);
        assert_eq!(reg(&mut c, REG_DAY), 0x29);
        assert_eq!(reg(&mut c, REG_MONTH), 0x11);
        assert_eq!(reg(&mut c, REG_YEAR), 0x26);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut c, REG_WEEKDAY), 0x01);
    }

    #[test]
    fn update_in_progress_is_never_set() {
        let mut c = Cmos::new();
        assert_eq!(reg(&mut c, REG_A) & 0x80, 0);
        assert_eq!(reg(&mut c, REG_B), REG_B_VALUE);
        assert_eq!(reg(&mut c, REG_D) & 0x80, 0x80);
    }

    #[test]
    fn ram_round_trips_and_nmi_bit_is_masked() {
        let mut c = Cmos::new();
        c.write(INDEX_PORT, 0x80 | 0x40);
        c.write(DATA_PORT, 0x5a);
        assert_eq!(c.read(INDEX_PORT), 0x40);
        assert_eq!(reg(&mut c, 0x40), 0x5a);
        // Clock registers are read-only.
        c.write(INDEX_PORT, REG_A);
        c.write(DATA_PORT, 0xff);
        assert_eq!(reg(&mut c, REG_A), REG_A_VALUE);
    }

    #[test]
    fn index_and_ram_survive_a_round_trip_and_the_clock_stays_live() {
        let mut c = Cmos::with_clock(fixed);
        c.write(INDEX_PORT, 0x40);
        c.write(DATA_PORT, 0x5a);
        c.write(INDEX_PORT, 0x7f);
        c.write(DATA_PORT, 0xa5);
        c.write(INDEX_PORT, 0x41);
        let snap = c.save();
        assert_eq!(snap.index, 0x41);
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<CmosSnapshot>(&json).unwrap(), snap);

        fn later() -> u64 {
            fixed() + 3600
        }
        let mut fresh = Cmos::with_clock(later);
        fresh.restore(&snap).unwrap();
        assert_eq!(fresh.read(INDEX_PORT), 0x41);
        assert_eq!(reg(&mut fresh, 0x40), 0x5a);
        assert_eq!(reg(&mut fresh, 0x7f), 0xa5);
        assert_eq!(reg(&mut fresh, REG_HOURS), 0x14, "the clock is the host's");

        let before = fresh.save();
        let bad_index = CmosSnapshot {
            index: 0x80,
            ..snap.clone()
        };
        assert!(matches!(
            fresh.restore(&bad_index),
            Err(LegacyStateError::CmosIndex(0x80))
        ));
        let short = CmosSnapshot {
            ram: vec![0; 64],
            ..snap
        };
        assert!(matches!(
            fresh.restore(&short),
            Err(LegacyStateError::CmosRam(64))
        ));
        assert_eq!(fresh.save(), before);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
