//! ember as an OCI runtime: the runc command-line contract that podman (conmon) and containerd
//! (containerd-shim-runc-v2 with `BinaryName`) drive.
//!
//! Each container has a directory under the state root (`--root`, default `/run/ember`) and a
//! *shim*: a host process forked by `create` that lives exactly as long as the container. The
//! shim creates the container in its pod's microVM, serves a control socket for `start`,
//! `kill`, `exec`, `ps`, `pause`, `resume`, waits for the container's process and exits with
//! its exit code, so the engines (which wait on the pid `create` reports) see it.
//!
//! - [`bundle`]: `config.json` (oci-spec) checked and mapped to a [`bundle::ContainerConfig`]
//! - [`state`]: persisted per-container records, OCI state JSON
//! - [`ops`]: the operations; [`shim`] and [`control`]: the shim and its socket
//! - [`sandbox`]: what the shim needs from a VM; [`vm`]: that, with a pod microVM
//! - the rootfs reaches the guest as an ext4 image (`runtime::api::disk`)
//! - [`tty`]: terminal containers through `--console-socket`
//! - [`signal`], [`features`]: runc's signal names, `features` JSON

pub mod boot_at_start;
pub mod bundle;
pub mod command;
pub mod control;
pub mod features;
pub mod ops;
pub mod sandbox;
pub mod shim;
pub mod signal;
pub mod state;
pub mod task;
pub mod tty;
pub mod view;
pub mod vm;
