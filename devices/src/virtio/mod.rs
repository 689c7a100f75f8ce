//! Virtio devices on the MMIO transport.
