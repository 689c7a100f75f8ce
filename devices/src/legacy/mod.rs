//! Legacy x86 devices: 8250 serial, i8042 (reset), CMOS/RTC, boot timer.
//!
//! Every device here is plain data plus `read`/`write` methods keyed by register offset; the
//! VMM puts them on its port-I/O or MMIO bus. Interrupts go out through an [`EventFd`] (an
//! irqfd in production, a plain eventfd in tests), so nothing here needs KVM. Each has
//! `save()`/`restore()` for snapshots, with its state in [`persist`].
//!
//! [`EventFd`]: vmm_sys_util::eventfd::EventFd

pub mod boot_timer;
pub mod cmos;
pub mod i8042;
pub mod persist;
pub mod serial;

pub use boot_timer::{BootTimer, BOOT_TIMER_AGENT_READY, BOOT_TIMER_INIT_START};
pub use cmos::Cmos;
pub use i8042::I8042;
pub use persist::{
    BootTimerSnapshot, CmosSnapshot, I8042Snapshot, LegacyStateError, SerialSnapshot,
};
pub use serial::{EventFdTrigger, LegacySerial};
