//! Legacy devices on the buses: COM1 (IRQ 4 via irqfd), the i8042 (reset ends the VM),
//! the CMOS/RTC, and the boot timer at 0xd000_0000.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::legacy::{boot_timer, cmos, i8042, serial, BootTimer, Cmos, LegacySerial, I8042};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Bus, BusDevice};
use crate::control::VmControl;
use crate::timings::{Phase, TimingsRecorder};
use crate::vstate::vm::Vm;
use crate::VmExit;

/// Errors setting up legacy devices.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Failed to create an eventfd")]
    EventFd(#[source] io::Error),
    #[error("Failed to set up the serial port")]
    Serial(#[source] serial::Error),
    #[error("Failed to place a legacy device on a bus")]
    Bus(#[source] super::Error),
    #[error("Failed to route the serial interrupt")]
    Irq(#[source] crate::vstate::vm::Error),
}

/// A writer that records when the guest printed its first byte.
pub struct TimedWriter {
    inner: Box<dyn Write + Send>,
    timings: Arc<TimingsRecorder>,
    seen: bool,
}

impl TimedWriter {
    pub fn new(inner: Box<dyn Write + Send>, timings: Arc<TimingsRecorder>) -> Self {
        TimedWriter {
            inner,
            timings,
            seen: false,
        }
    }
}

impl Write for TimedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.seen && !buf.is_empty() {
            self.seen = true;
            self.timings.mark(Phase::FirstOutput);
        }
        let n = self.inner.write(buf)?;
        // The console is line-oriented for whoever reads it: flush at line ends.
        if buf.contains(&b'\n') {
            self.inner.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A console file that takes at most `limit` bytes: a guest that prints forever must not fill
/// the host's disk. Output beyond the limit is dropped, after one marker line in the file and
/// one warning in the log.
pub struct CappedFile {
    file: std::fs::File,
    written: u64,
    limit: u64,
    full: bool,
}

impl CappedFile {
    /// `file` (opened for appending) with what it holds already counted.
    pub fn new(file: std::fs::File, limit: u64) -> io::Result<Self> {
        let written = file.metadata()?.len();
        Ok(CappedFile {
            file,
            written,
            limit,
            full: written >= limit,
        })
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.full {
            return Ok(buf.len());
        }
        let room = self.limit.saturating_sub(self.written);
        if buf.len() as u64 > room {
            let head = &buf[..room as usize];
            self.file.write_all(head)?;
            self.written += head.len() as u64;
            self.full = true;
            let marker = format!(
                "\n[ember: console output beyond {} bytes dropped]\n",
                self.limit
            );
            self.file.write_all(marker.as_bytes())?;
            log::warn!(
                "The guest's console reached its limit of {} bytes: further output is dropped",
                self.limit
            );
            return Ok(buf.len());
        }
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// COM1 on the port-I/O bus.
pub struct SerialPio(pub LegacySerial<TimedWriter>);

impl BusDevice for SerialPio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            // Output errors (a closed stdout) must not stop the guest.
            let _ = self.0.write(offset as u8, *b);
        }
    }
}

/// The i8042 on ports 0x60-0x64: a reset request ends the VM with [`VmExit::Reset`].
pub struct I8042Pio {
    dev: I8042,
    control: Arc<VmControl>,
}

impl I8042Pio {
    pub fn save(&self) -> devices::legacy::I8042Snapshot {
        self.dev.save()
    }

    pub fn restore(
        &mut self,
        s: &devices::legacy::I8042Snapshot,
    ) -> Result<(), devices::legacy::LegacyStateError> {
        self.dev.restore(s)
    }
}

impl BusDevice for I8042Pio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.dev.read(i8042::DATA_PORT + offset as u16);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(b) = data.first() else { return };
        let before = self.dev.reset_requests();
        let res = self.dev.write(i8042::DATA_PORT + offset as u16, *b);
        if res.is_err() || self.dev.reset_requests() != before {
            self.control.finish(Ok(VmExit::Reset));
        }
    }
}

/// The CMOS/RTC on ports 0x70-0x71.
pub struct CmosPio(pub Cmos);

impl BusDevice for CmosPio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(cmos::INDEX_PORT + offset as u16);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            self.0.write(cmos::INDEX_PORT + offset as u16, *b);
        }
    }
}

/// The boot timer on the MMIO bus.
pub struct BootTimerMmio(pub BootTimer);

impl BusDevice for BootTimerMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// Puts the terminal on stdin in raw mode (no line buffering, no local echo: the guest
/// echoes; Ctrl-C still signals ember) and restores it when dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on stdin, or `None` when stdin is not a terminal.
    pub fn new() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain old data; tcgetattr fills it in for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: stdin is a valid descriptor and `saved` a valid termios to write to.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: stdin is a valid descriptor and `raw` a valid termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same descriptor in `new`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Forward stdin to the serial port from a background thread (for an interactive console).
/// The thread ends at end of input; it may outlive the VM while blocked in `read`.
pub fn spawn_stdin_forwarder(serial: Arc<Mutex<SerialPio>>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                let n = match io::Read::read(&mut io::stdin().lock(), &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                        .enqueue_input(rest)
                        .unwrap_or(0);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        // The guest has not drained its FIFO yet.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        })
        .map(|_| ())
}

/// Handles kept by the VMM on the legacy devices.
#[derive(Clone)]
pub struct LegacyDevices {
    pub serial: Arc<Mutex<SerialPio>>,
    pub i8042: Arc<Mutex<I8042Pio>>,
    pub cmos: Arc<Mutex<CmosPio>>,
    pub boot_timer: Arc<Mutex<BootTimerMmio>>,
}

/// A boot timer feeding `timings`.
pub fn boot_timer(timings: Arc<TimingsRecorder>) -> BootTimer {
    BootTimer::with_callback(Box::new(move |value, at: Instant| match value {
        boot_timer::BOOT_TIMER_INIT_START => timings.mark_at(Phase::InitStart, at),
        boot_timer::BOOT_TIMER_AGENT_READY => timings.mark_at(Phase::AgentReady, at),
        _ => {}
    }))
}

/// Create the legacy devices and put them on the buses. `vm` is `None` for VMs without an
/// in-kernel irqchip (test payloads): the serial interrupt is then not routed.
pub fn setup_legacy_devices(
    vm: Option<&Vm>,
    pio: &mut Bus,
    mmio: &mut Bus,
    console: Box<dyn Write + Send>,
    control: Arc<VmControl>,
    timings: Arc<TimingsRecorder>,
) -> Result<LegacyDevices, Error> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
    let serial = LegacySerial::new(irq, TimedWriter::new(console, timings.clone()));
    if let Some(vm) = vm {
        let evt = serial.irq_evt().map_err(Error::Serial)?;
        vm.register_irqfd(&evt, serial::COM1_IRQ)
            .map_err(Error::Irq)?;
    }
    let serial = Arc::new(Mutex::new(SerialPio(serial)));
    pio.insert(
        u64::from(serial::COM1_PORT),
        u64::from(serial::SERIAL_PORT_SIZE),
        serial.clone(),
    )
    .map_err(Error::Bus)?;

    let reset = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
    let i8042 = Arc::new(Mutex::new(I8042Pio {
        dev: I8042::new(reset),
        control,
    }));
    pio.insert(u64::from(i8042::DATA_PORT), 5, i8042.clone())
        .map_err(Error::Bus)?;

    let cmos = Arc::new(Mutex::new(CmosPio(Cmos::new())));
    pio.insert(u64::from(cmos::INDEX_PORT), 2, cmos.clone())
        .map_err(Error::Bus)?;

    let boot_timer = Arc::new(Mutex::new(BootTimerMmio(boot_timer(timings))));
    mmio.insert(
        boot_timer::BOOT_TIMER_ADDR,
        boot_timer::BOOT_TIMER_SIZE,
        boot_timer.clone(),
    )
    .map_err(Error::Bus)?;

    Ok(LegacyDevices {
        serial,
        i8042,
        cmos,
        boot_timer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_console_file_stops_at_its_limit_with_one_marker() {
        let path = std::env::temp_dir().join(format!("ember-console-{}", std::process::id()));
        std::fs::write(&path, b"boot\n").unwrap();
        let open = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
        };
        let mut c = CappedFile::new(open(), 16).unwrap();
        // What the file held counts: 5 + 8 fit, then 3 of the next 8.
        assert_eq!(c.write(b"12345678").unwrap(), 8);
        assert_eq!(c.write(b"abcdefgh").unwrap(), 8);
        assert_eq!(c.write(b"more").unwrap(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "boot\n12345678abc\n[ember: console output beyond 16 bytes dropped]\n"
        );
        // Reopened full: nothing more is written, no second marker.
        let mut again = CappedFile::new(open(), 16).unwrap();
        assert_eq!(again.write(b"x").unwrap(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::remove_file(&path).unwrap();
    }
}
