//! The 8250/16550 UART on COM1 (port 0x3f8, IRQ 4), built on `vm_superio::Serial`.
//!
//! The guest's output goes to any `Write`; the interrupt is an [`EventFd`] the VMM registers
//! as an irqfd. Host input (stdin) can be queued with [`LegacySerial::enqueue_input`].

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::persist::{LegacyStateError, SerialSnapshot};

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
pub struct EventFdTrigger {
    evt: EventFd,
    /// While set, triggers do nothing (a UART being rebuilt from a snapshot).
    muted: AtomicBool,
}

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger {
            evt,
            muted: AtomicBool::new(false),
        }
    }

    /// Another handle on the same eventfd (to register it as an irqfd).
    pub fn try_clone(&self) -> Result<EventFd, Error> {
        self.evt.try_clone().map_err(Error::CloneEventFd)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> Result<(), io::Error> {
        if self.muted.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.evt.write(1)
    }
}

type Uart<W> = Serial<EventFdTrigger, NoEvents, W>;

/// Size of the UART's receive FIFO.
const FIFO_SIZE: usize = 64;

/// What [`LegacySerial`] says while its UART is being rebuilt (never seen from outside).
const REBUILDING: &str = "the UART is only taken out inside LegacySerial::restore";

/// COM1: a `vm_superio` 8250 with an eventfd interrupt.
pub struct LegacySerial<W: Write> {
    /// Always `Some` outside of [`LegacySerial::restore`], which moves the writer into a
    /// rebuilt UART.
    inner: Option<Uart<W>>,
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
            inner: Some(Serial::new(EventFdTrigger::new(irq), out)),
        }
    }

    fn uart(&self) -> &Uart<W> {
        self.inner.as_ref().expect(REBUILDING)
    }

    fn uart_mut(&mut self) -> &mut Uart<W> {
        self.inner.as_mut().expect(REBUILDING)
    }

    /// Handle to the interrupt eventfd (for KVM_IRQFD).
    pub fn irq_evt(&self) -> Result<EventFd, Error> {
        self.uart().interrupt_evt().try_clone()
    }

    /// Guest read of register `offset` (0..8).
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart_mut().read(offset)
    }

    /// Guest write of `value` to register `offset` (0..8).
    pub fn write(&mut self, offset: u8, value: u8) -> Result<(), Error> {
        self.uart_mut().write(offset, value).map_err(map_err)
    }

    /// Queue host input bytes for the guest to read; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, Error> {
        self.uart_mut().enqueue_raw_bytes(bytes).map_err(map_err)
    }

    /// The output sink.
    pub fn writer(&self) -> &W {
        self.uart().writer()
    }

    /// The registers and receive FIFO, for a snapshot.
    pub fn save(&self) -> SerialSnapshot {
        self.uart().state().into()
    }

    /// Bring the UART to `snap`, keeping its interrupt eventfd (the same eventfd, so an
    /// irqfd registered for it still works) and its output. An interrupt the guest had not
    /// taken yet (pending and enabled) is raised again. On an error nothing changed.
    pub fn restore(&mut self, snap: &SerialSnapshot) -> Result<(), LegacyStateError> {
        if snap.in_buffer.len() > FIFO_SIZE {
            return Err(LegacyStateError::SerialFifo(snap.in_buffer.len()));
        }
        let evt = self
            .uart()
            .interrupt_evt()
            .evt
            .try_clone()
            .map_err(LegacyStateError::SerialEventFd)?;
        let trigger = EventFdTrigger {
            evt,
            muted: AtomicBool::new(true),
        };
        let out = self.inner.take().expect(REBUILDING).into_writer();
        // Cannot fail: the FIFO fits (checked above) and the muted trigger always succeeds.
        let uart = Serial::from_state(&snap.state(), trigger, NoEvents, out)
            .unwrap_or_else(|e| unreachable!("vm-superio refused a checked state: {e}"));
        uart.interrupt_evt().muted.store(false, Ordering::Relaxed);
        self.inner = Some(uart);
        // What from_state would have raised: THR empty or received data, pending and enabled.
        const IER_RDA: u8 = 0x01;
        const IER_THR: u8 = 0x02;
        const IIR_THR: u8 = 0x02;
        const IIR_RDA: u8 = 0x04;
        let (ier, iir) = (snap.interrupt_enable, snap.interrupt_identification);
        if (ier & IER_THR != 0 && iir & IIR_THR != 0) || (ier & IER_RDA != 0 && iir & IIR_RDA != 0)
        {
            if let Err(e) = self.uart().interrupt_evt().trigger() {
                log::warn!("serial: failed to raise the restored interrupt: {e}");
            }
        }
        Ok(())
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

    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const SCR: u8 = 7;
    const IIR: u8 = 2;

    #[test]
    fn registers_and_input_survive_a_round_trip() {
        let (mut s, _irq) = serial();
        // Divisor latch (DLAB set), then line settings, interrupts and scratch.
        s.write(LCR, 0x80).unwrap();
        s.write(DATA, 0x01).unwrap();
        s.write(IER, 0x00).unwrap();
        s.write(LCR, 0x1b).unwrap();
        s.write(IER, 0x05).unwrap();
        s.write(MCR, 0x0b).unwrap();
        s.write(SCR, 0xa5).unwrap();
        s.enqueue_input(b"xyz").unwrap();
        let snap = s.save();
        assert_eq!(snap.in_buffer, b"xyz");
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<SerialSnapshot>(&json).unwrap(), snap);

        let (mut fresh, irq) = serial();
        fresh.write(DATA, b'>').unwrap();
        fresh.restore(&snap).unwrap();
        assert_eq!(fresh.save(), snap);
        assert_eq!(fresh.read(LCR), 0x1b);
        assert_eq!(fresh.read(IER), 0x05);
        assert_eq!(fresh.read(MCR), 0x0b);
        assert_eq!(fresh.read(SCR), 0xa5);
        assert_eq!(fresh.read(LSR) & 0x01, 0x01, "data ready");
        assert_eq!(fresh.read(DATA), b'x');
        assert_eq!(fresh.read(DATA), b'y');
        assert_eq!(fresh.read(DATA), b'z');
        fresh.write(LCR, 0x9b).unwrap();
        assert_eq!(fresh.read(DATA), 0x01, "divisor latch low");
        fresh.write(LCR, 0x1b).unwrap();
        // The output and the interrupt eventfd are the fresh device's own.
        fresh.write(DATA, b'!').unwrap();
        assert_eq!(fresh.writer().as_slice(), b">!");
        assert!(fresh.irq_evt().is_ok());
        // The received-data interrupt was pending and enabled: raised again at restore.
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn restore_raises_only_pending_enabled_interrupts_and_checks_the_fifo() {
        let (mut s, _irq) = serial();
        s.write(IER, 0x02).unwrap();
        // The guest took the THR-empty interrupt (reading IIR clears it).
        s.read(IIR);
        let quiet = s.save();
        let (mut fresh, irq) = serial();
        fresh.restore(&quiet).unwrap();
        assert!(irq.read().is_err(), "no interrupt was pending");
        // With it pending (not yet taken), the restore raises it.
        s.write(DATA, b'a').unwrap();
        let pending = s.save();
        fresh.restore(&pending).unwrap();
        assert_eq!(irq.read().unwrap(), 1);

        let mut full = pending.clone();
        full.in_buffer = vec![0; 65];
        assert!(matches!(
            fresh.restore(&full),
            Err(LegacyStateError::SerialFifo(65))
        ));
        assert_eq!(fresh.save(), pending, "a refused snapshot changed the UART");
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
