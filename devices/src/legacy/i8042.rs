//! A minimal i8042 PS/2 controller on ports 0x60 (data) and 0x64 (status/command).
//!
//! Enough for Linux's probe (self test, control register, output port) and, above all,
//! the "pulse reset line" command (0xFE on port 0x64) with which a guest booted with
//! `reboot=k` resets: that raises the reset [`EventFd`] and the VMM ends the VM cleanly.
//! No keyboard is attached: keyboard data writes are ignored.

use std::collections::VecDeque;
use std::io;

use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use super::persist::{I8042Snapshot, LegacyStateError};

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;

// Status register bits.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xA7;
const CMD_ENABLE_AUX: u8 = 0xA8;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_KBD_TEST: u8 = 0xAB;
const CMD_DISABLE_KBD: u8 = 0xAD;
const CMD_ENABLE_KBD: u8 = 0xAE;
const CMD_READ_OUTP: u8 = 0xD0;
const CMD_WRITE_OUTP: u8 = 0xD1;
const CMD_RESET_CPU: u8 = 0xFE;

const SELF_TEST_OK: u8 = 0x55;
// Control register: keyboard interrupt enabled, system flag, translation.
const CTR_DEFAULT: u8 = 0x01 | 0x04 | 0x40;
const CTR_KBD_DISABLED: u8 = 0x10;
const OUTPUT_BUFFER_MAX: usize = 16;

/// Errors of the i8042 device.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to signal the reset request")]
    Reset(#[source] io::Error),
}

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
    ctr: u8,
    outp: u8,
    status: u8,
    /// A controller command waiting for its data byte on port 0x60.
    pending_cmd: Option<u8>,
    out: VecDeque<u8>,
    resets: u64,
}

impl I8042 {
    /// A controller that writes 1 to `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 {
            reset_evt,
            ctr: CTR_DEFAULT,
            outp: 0x01,
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            pending_cmd: None,
            out: VecDeque::new(),
            resets: 0,
        }
    }

    /// How many times the guest has asked for a reset.
    pub fn reset_requests(&self) -> u64 {
        self.resets
    }

    /// The registers, pending command and output buffer, for a snapshot.
    pub fn save(&self) -> I8042Snapshot {
        I8042Snapshot {
            ctr: self.ctr,
            outp: self.outp,
            status: self.status,
            pending_cmd: self.pending_cmd,
            out: self.out.iter().copied().collect(),
            resets: self.resets,
        }
    }

    /// Bring the controller to `snap` (the reset eventfd stays this one's).
    pub fn restore(&mut self, snap: &I8042Snapshot) -> Result<(), LegacyStateError> {
        if snap.out.len() > OUTPUT_BUFFER_MAX {
            return Err(LegacyStateError::I8042Buffer(snap.out.len()));
        }
        self.ctr = snap.ctr;
        self.outp = snap.outp;
        self.status = snap.status;
        self.pending_cmd = snap.pending_cmd;
        self.out = snap.out.iter().copied().collect();
        self.resets = snap.resets;
        Ok(())
    }

    fn push(&mut self, byte: u8) {
        if self.out.len() < OUTPUT_BUFFER_MAX {
            self.out.push_back(byte);
        }
        self.status |= SB_OUT_FULL;
    }

    /// Guest `in` from `port` (0x60 or 0x64); other ports read as 0xff.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            COMMAND_PORT => self.status,
            DATA_PORT => {
                let byte = self.out.pop_front().unwrap_or(0);
                if self.out.is_empty() {
                    self.status &= !SB_OUT_FULL;
                }
                byte
            }
            _ => 0xff,
        }
    }

    /// Guest `out` of `value` to `port`.
    pub fn write(&mut self, port: u16, value: u8) -> Result<(), Error> {
        match port {
            COMMAND_PORT => {
                self.status |= SB_LAST_WAS_CMD;
                self.command(value)
            }
            DATA_PORT => {
                self.status &= !SB_LAST_WAS_CMD;
                match self.pending_cmd.take() {
                    Some(CMD_WRITE_CTR) => self.ctr = value,
                    Some(CMD_WRITE_OUTP) => self.outp = value,
                    // Keyboard commands: no keyboard is attached.
                    _ => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn command(&mut self, cmd: u8) -> Result<(), Error> {
        self.pending_cmd = None;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_cmd = Some(cmd),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(0x00),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_RESET_CPU => {
                self.resets += 1;
                self.reset_evt.write(1).map_err(Error::Reset)?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn dev() -> (I8042, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let probe = evt.try_clone().unwrap();
        (I8042::new(evt), probe)
    }

    #[test]
    fn reset_command_signals_the_eventfd() {
        let (mut d, evt) = dev();
        assert!(evt.read().is_err(), "no reset before the command");
        d.write(COMMAND_PORT, CMD_RESET_CPU).unwrap();
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(d.reset_requests(), 1);
    }

    #[test]
    fn self_test_answers_0x55() {
        let (mut d, _) = dev();
        assert_eq!(d.read(COMMAND_PORT) & SB_OUT_FULL, 0);
        d.write(COMMAND_PORT, CMD_SELF_TEST).unwrap();
        assert_eq!(d.read(COMMAND_PORT) & SB_OUT_FULL, SB_OUT_FULL);
        assert_eq!(d.read(DATA_PORT), SELF_TEST_OK);
        assert_eq!(d.read(COMMAND_PORT) & SB_OUT_FULL, 0);
    }

    #[test]
    fn control_register_round_trips() {
        let (mut d, _) = dev();
        d.write(COMMAND_PORT, CMD_WRITE_CTR).unwrap();
        d.write(DATA_PORT, 0x61).unwrap();
        d.write(COMMAND_PORT, CMD_READ_CTR).unwrap();
        assert_eq!(d.read(DATA_PORT), 0x61);
        // A data byte without a pending command does not change the CTR.
        d.write(DATA_PORT, 0xF2).unwrap();
        d.write(COMMAND_PORT, CMD_READ_CTR).unwrap();
        assert_eq!(d.read(DATA_PORT), 0x61);
    }

    #[test]
    fn state_survives_a_round_trip() {
        let (mut d, _) = dev();
        d.write(COMMAND_PORT, CMD_WRITE_CTR).unwrap();
        d.write(DATA_PORT, 0x61).unwrap();
        d.write(COMMAND_PORT, CMD_SELF_TEST).unwrap();
        d.write(COMMAND_PORT, CMD_READ_CTR).unwrap();
        d.write(COMMAND_PORT, CMD_RESET_CPU).unwrap();
        d.write(COMMAND_PORT, CMD_WRITE_OUTP).unwrap();
        let snap = d.save();
        assert_eq!(snap.out, vec![SELF_TEST_OK, 0x61]);
        assert_eq!(snap.pending_cmd, Some(CMD_WRITE_OUTP));
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<I8042Snapshot>(&json).unwrap(), snap);

        let (mut fresh, evt) = dev();
        fresh.restore(&snap).unwrap();
        assert_eq!(fresh.save(), snap);
        assert!(evt.read().is_err(), "restore is not a reset request");
        assert_eq!(fresh.reset_requests(), 1);
        assert_eq!(fresh.read(COMMAND_PORT) & SB_OUT_FULL, SB_OUT_FULL);
        assert_eq!(fresh.read(DATA_PORT), SELF_TEST_OK);
        assert_eq!(fresh.read(DATA_PORT), 0x61);
        assert_eq!(fresh.read(COMMAND_PORT) & SB_OUT_FULL, 0);
        // The pending command takes its data byte.
        fresh.write(DATA_PORT, 0x03).unwrap();
        fresh.write(COMMAND_PORT, CMD_READ_OUTP).unwrap();
        assert_eq!(fresh.read(DATA_PORT), 0x03);
        // The reset eventfd is the fresh one's.
        fresh.write(COMMAND_PORT, CMD_RESET_CPU).unwrap();
        assert_eq!(evt.read().unwrap(), 1);

        let mut bad = snap.clone();
        bad.out = vec![0; OUTPUT_BUFFER_MAX + 1];
        let before = fresh.save();
        assert!(matches!(
            fresh.restore(&bad),
            Err(LegacyStateError::I8042Buffer(17))
        ));
        assert_eq!(fresh.save(), before);
    }

    #[test]
    fn unknown_ports_and_commands_are_harmless() {
        let (mut d, evt) = dev();
        assert_eq!(d.read(0x61), 0xff);
        d.write(COMMAND_PORT, 0x42).unwrap();
        d.write(0x65, 0xFE).unwrap();
        assert!(evt.read().is_err());
        // Reading an empty output buffer gives 0, not a panic.
        assert_eq!(d.read(DATA_PORT), 0);
    }
}
