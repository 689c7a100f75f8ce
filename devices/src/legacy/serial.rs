//! The 8250/16550 UART on COM1 (port 0x3f8, IRQ 4), built on `vm_superio::Serial`.
//!
//! The guest's output goes to any `Write`; the interrupt is an [`EventFd`] the VMM registers
//! as an irqfd. Host input (stdin) can be queued with [`LegacySerial::enqueue_input`].

use std::io::{self, Write};

use thiserror::Error;
use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// I/O port base of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// Number of registers (ports) of an 8250.
pub const SERIAL_PORT_SIZE: u16 = 8;
/// Legacy IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;

/// Errors of the serial device.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to duplicate the serial interrupt eventfd")]
    CloneEventFd(#[source] io::Error),
    #[error("Serial input FIFO is full")]
    FullFifo,
    #[error("Failed to raise the serial interrupt")]
    Interrupt(#[source] io::Error),
    #[error("Failed to write the serial output")]
    Output(#[source] io::Error),
}

/// An [`EventFd`] used as the UART's interrupt line.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// Another handle on the same eventfd (to register it as an irqfd).
    pub fn try_clone(&self) -> Result<EventFd, Error> {
        self.0.try_clone().map_err(Error::CloneEventFd)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> Result<(), io::Error> {
        self.0.write(1)
    }
}

/// COM1: a `vm_superio` 8250 with an eventfd interrupt.
pub struct LegacySerial<W: Write> {
    inner: Serial<EventFdTrigger, NoEvents, W>,
}

fn map_err(e: vm_superio::serial::Error<io::Error>) -> Error {
    match e {
        vm_superio::serial::Error::Trigger(e) => Error::Interrupt(e),
        vm_superio::serial::Error::IOError(e) => Error::Output(e),
        vm_superio::serial::Error::FullFifo => Error::FullFifo,
    }
}

impl<W: Write> LegacySerial<W> {
    /// A UART writing guest output to `out` and signalling `irq` for interrupts.
    pub fn new(irq: EventFd, out: W) -> Self {
        LegacySerial {
            inner: Serial::new(EventFdTrigger::new(irq), out),
        }
    }

    /// Handle to the interrupt eventfd (for KVM_IRQFD).
    pub fn irq_evt(&self) -> Result<EventFd, Error> {
        self.inner.interrupt_evt().try_clone()
    }

    /// Guest read of register `offset` (0..8).
    pub fn read(&mut self, offset: u8) -> u8 {
        self.inner.read(offset)
    }

    /// Guest write of `value` to register `offset` (0..8).
    pub fn write(&mut self, offset: u8, value: u8) -> Result<(), Error> {
        self.inner.write(offset, value).map_err(map_err)
    }

    /// Queue host input bytes for the guest to read; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, Error> {
        self.inner.enqueue_raw_bytes(bytes).map_err(map_err)
    }

    /// The output sink.
    pub fn writer(&self) -> &W {
        self.inner.writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const DATA: u8 = 0;
    const IER: u8 = 1;
    const LSR: u8 = 5;

    fn serial() -> (LegacySerial<Vec<u8>>, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let probe = evt.try_clone().unwrap();
        (LegacySerial::new(evt, Vec::new()), probe)
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let (mut s, _irq) = serial();
        for b in b"hi\n" {
            s.write(DATA, *b).unwrap();
        }
        assert_eq!(s.writer().as_slice(), b"hi\n");
        // Transmitter empty bits are set: the guest may keep writing.
        assert_eq!(s.read(LSR) & 0x60, 0x60);
    }

    #[test]
    fn thr_empty_interrupt_fires_when_enabled() {
        let (mut s, irq) = serial();
        // No interrupt while IER is zero.
        s.write(DATA, b'x').unwrap();
        assert!(irq.read().is_err());
        // Enable "transmitter holding register empty" interrupts.
        s.write(IER, 0x02).unwrap();
        s.write(DATA, b'y').unwrap();
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let (mut s, irq) = serial();
        s.write(IER, 0x01).unwrap();
        assert_eq!(s.enqueue_input(b"ok").unwrap(), 2);
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(s.read(LSR) & 0x01, 0x01, "data ready");
        assert_eq!(s.read(DATA), b'o');
        assert_eq!(s.read(DATA), b'k');
        assert_eq!(s.read(LSR) & 0x01, 0);
    }

    #[test]
    fn irq_handle_shares_the_eventfd() {
        let (mut s, _probe) = serial();
        let other = s.irq_evt().unwrap();
        s.write(IER, 0x02).unwrap();
        s.write(DATA, b'z').unwrap();
        assert!(other.read().unwrap() >= 1);
    }
}
