//! ember's devices: legacy x86 devices (serial, i8042, boot timer) and virtio devices on the
//! MMIO transport (block, net, vsock, rng). Nothing here depends on KVM: interrupts and
//! backends sit behind traits so every device is testable without root or a guest. Block and
//! net devices can be rate limited ([`rate_limiter`]).

pub mod legacy;
pub mod limits;
pub mod rate_limiter;
pub mod virtio;
