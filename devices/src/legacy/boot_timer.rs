//! The boot timer: a one-register MMIO device (Firecracker style) at guest physical
//! `0xd000_0000`. The guest agent writes one byte — [`BOOT_TIMER_INIT_START`] when `/init`
//! starts and [`BOOT_TIMER_AGENT_READY`] when it is ready — and the VMM timestamps each write.

use std::time::Instant;

use super::persist::{BootTimerSnapshot, LegacyStateError};

/// Guest physical address of the boot timer.
pub const BOOT_TIMER_ADDR: u64 = 0xd000_0000;
/// Size of its MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// Written when `/init` (the agent) starts.
pub const BOOT_TIMER_INIT_START: u8 = 1;
/// Written when the agent is ready.
pub const BOOT_TIMER_AGENT_READY: u8 = 123;

/// Called with each byte the guest writes and the instant it was seen.
pub type BootEventCallback = Box<dyn FnMut(u8, Instant) + Send>;

/// The boot timer device.
pub struct BootTimer {
    events: Vec<(u8, Instant)>,
    callback: Option<BootEventCallback>,
}

impl std::fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootTimer")
            .field("events", &self.events)
            .finish()
    }
}

impl Default for BootTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl BootTimer {
    pub fn new() -> Self {
        BootTimer {
            events: Vec::new(),
            callback: None,
        }
    }

    /// A timer that also calls `cb` on every write.
    pub fn with_callback(cb: BootEventCallback) -> Self {
        BootTimer {
            events: Vec::new(),
            callback: Some(cb),
        }
    }

    /// Guest write at `offset`: only the first byte at offset 0 counts.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&value)) = (offset, data.first()) else {
            return;
        };
        let now = Instant::now();
        self.events.push((value, now));
        if let Some(cb) = self.callback.as_mut() {
            cb(value, now);
        }
    }

    /// Guest read: the register reads as zero.
    pub fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// Its state for a snapshot: nothing (see [`BootTimerSnapshot`]).
    pub fn save(&self) -> BootTimerSnapshot {
        BootTimerSnapshot {}
    }

    /// Nothing to restore: the events seen stay this VMM's own.
    pub fn restore(&mut self, _snap: &BootTimerSnapshot) -> Result<(), LegacyStateError> {
        Ok(())
    }

    /// Every write seen so far, in order.
    pub fn events(&self) -> &[(u8, Instant)] {
        &self.events
    }

    /// When `value` was first written.
    pub fn first(&self, value: u8) -> Option<Instant> {
        self.events.iter().find(|(v, _)| *v == value).map(|e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn records_boot_events_in_order() {
        let mut t = BootTimer::new();
        t.write(0, &[BOOT_TIMER_INIT_START]);
        t.write(0, &[BOOT_TIMER_AGENT_READY, 0, 0, 0]);
        let values: Vec<u8> = t.events().iter().map(|e| e.0).collect();
        assert_eq!(values, vec![BOOT_TIMER_INIT_START, BOOT_TIMER_AGENT_READY]);
        let init = t.first(BOOT_TIMER_INIT_START).unwrap();
        let ready = t.first(BOOT_TIMER_AGENT_READY).unwrap();
        assert!(ready >= init);
        assert!(t.first(7).is_none());
    }

    #[test]
    fn ignores_other_offsets_and_empty_writes() {
        let mut t = BootTimer::new();
        t.write(4, &[1]);
        t.write(0, &[]);
        assert!(t.events().is_empty());
        let mut buf = [0xaa; 4];
        t.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn restore_keeps_this_timers_events() {
        let mut t = BootTimer::new();
        t.write(0, &[BOOT_TIMER_INIT_START]);
        let snap = t.save();
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(
            serde_json::from_str::<BootTimerSnapshot>(&json).unwrap(),
            snap
        );
        let mut fresh = BootTimer::new();
        fresh.restore(&snap).unwrap();
        assert!(fresh.events().is_empty(), "no boot events replayed");
        fresh.write(0, &[BOOT_TIMER_AGENT_READY]);
        assert_eq!(fresh.events().len(), 1);
    }

    #[test]
    fn callback_sees_each_write() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut t = BootTimer::with_callback(Box::new(move |v, _| s.lock().unwrap().push(v)));
        t.write(0, &[1]);
        t.write(0, &[123]);
        assert_eq!(*seen.lock().unwrap(), vec![1, 123]);
    }
}
