//! Legacy x86 devices: 8250 serial, i8042 (reset), boot timer.
