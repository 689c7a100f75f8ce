//! The fuzz targets, one module each, in one test binary (one link of the workspace instead
//! of one per target). Run them all with `cargo test -p ember-fuzz`, one with
//! `cargo test -p ember-fuzz --test fuzz virtio_fs`; `EMBER_FUZZ_SECS` sets each target's
//! time (see the crate README).

mod agent_protocol;
mod common;
mod configs;
mod mmio;
mod seeds;
mod snapshot;
mod virtio_block;
mod virtio_fs;
mod virtio_net;
mod virtio_rng;
mod virtio_vsock;
