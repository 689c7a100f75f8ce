//! Snapshot state of the legacy devices. Each device has `save()` and `restore()`; restores
//! check the snapshot first and leave the device as it was when it does not fit.

use std::io;

/// The 8250 UART's registers and receive FIFO (vm-superio's `SerialState`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Bytes received and not yet read by the guest (at most 64).
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialSnapshot {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl SerialSnapshot {
    /// vm-superio's state with these fields.
    pub fn state(&self) -> vm_superio::serial::SerialState {
        vm_superio::serial::SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

/// The i8042's registers, pending command and output buffer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    /// Controller configuration register.
    pub ctr: u8,
    /// Output port.
    pub outp: u8,
    /// Status register.
    pub status: u8,
    /// A controller command waiting for its data byte.
    pub pending_cmd: Option<u8>,
    /// Bytes waiting to be read from the data port (at most 16).
    pub out: Vec<u8>,
    /// Reset requests seen so far.
    pub resets: u64,
}

/// The CMOS index register and RAM. The clock is not saved: it reads the host's time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosSnapshot {
    /// The selected register (0..128).
    pub index: u8,
    /// The 128 bytes of CMOS RAM (clock registers read from the clock, not from here).
    pub ram: Vec<u8>,
}

/// The boot timer has no state a restored VM needs: it timestamps the guest's boot markers
/// as this VMM sees them, and a restored guest has booted already.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootTimerSnapshot {}

/// Why a legacy device snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum LegacyStateError {
    #[error("The saved serial input FIFO holds {0} bytes, more than the 64 it can")]
    SerialFifo(usize),
    #[error("Failed to duplicate the serial interrupt eventfd")]
    SerialEventFd(#[source] io::Error),
    #[error("The saved i8042 output buffer holds {0} bytes, more than the 16 it can")]
    I8042Buffer(usize),
    #[error("The saved CMOS index {0:#x} is past the 128 registers")]
    CmosIndex(u8),
    #[error("The saved CMOS RAM has {0} bytes instead of 128")]
    CmosRam(usize),
}
