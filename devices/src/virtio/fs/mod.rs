//! virtio-fs with its own FUSE server in the VMM process.
//!
//! Why an own server: virtiofsd (a vhost-user daemon) and fuse-backend-rs pin vm-memory
//! 0.17 and do not fit ember's rust-vmm 0.18 stack, and a separate daemon per pod costs a
//! process and a socket. Like libkrun, ember serves the FUSE kernel ABI (`abi.rs`) directly
//! from the device, on the VMM's event-loop thread, one bounded request at a time.
//!
//! The guest sees one mount (its tag in the config space) whose root is synthetic: a
//! read-only directory (0755, root) whose entries are the *shares* the VMM adds and removes
//! at run time ([`Fs::add_share`], [`Fs::remove_share`]). A share is a host directory or a
//! single regular file (for file bind mounts), optionally read-only: every modifying
//! operation on its inodes fails with `EROFS`.
//!
//! Escape model (`passthrough.rs` has the details): each inode is an `O_PATH | O_NOFOLLOW` fd;
//! lookups are `openat(parent, name, O_PATH | O_NOFOLLOW)` of one validated component, so
//! `..` and `/` never reach the host kernel and symlinks are never followed on the host.
//! Node ids and file handles are opaque numbers looked up in tables (forged ones get
//! `ESTALE`/`EBADF`). I/O reopens an inode's own fd through `/proc/self/fd/N`, only for
//! regular files and directories.
//!
//! Bounds: requests are gathered into at most [`MAX_REQUEST`] bytes (1 MiB `max_write`
//! plus slack), at most [`MAX_INODES`] inodes and [`MAX_HANDLES`] open handles (`ENFILE`
//! past them). Malformed requests get an error reply (or are dropped with a warning when
//! not even a reply header fits), never a panic.
//!
//! Protocol: FUSE 7.31..=7.38 (Linux 6.1 speaks 7.38). Offered INIT flags: async read,
//! atomic O_TRUNC, big writes, readdirplus (auto), max pages. Not offered: POSIX locks,
//! BSD `flock` (the guest kernel then keeps flock locks itself, which blocks correctly;
//! the server still answers flock-type SETLK non-blocking), writeback cache, DAX, export
//! support, POSIX ACLs, security contexts. Attribute `ino` is the host `st_ino` (what
//! `ls -i` and hard-link detection want; inodes of different host devices may collide),
//! while the FUSE node id is the server's own.
//!
//! Ownership: the guest mounts with `default_permissions`, so its kernel checks
//! permissions from the attributes; the server (root on the host) performs the operation
//! and gives created files the caller's uid/gid (the group of a set-group-id parent stays)
//! and exactly the requested mode (the VMM's umask does not apply).

mod abi;
mod device;
mod passthrough;
mod server;
mod sys;

pub use device::{Fs, HIPRIO_QUEUE, REQUEST_QUEUE};
pub use passthrough::{ATTR_TIMEOUT_SECS, ENTRY_TIMEOUT_SECS, MAX_HANDLES, MAX_INODES};
pub use server::{MAX_REQUEST, MAX_WRITE};

/// Size of each of the two queues. With 1024 entries the Linux driver allows 256-page
/// (1 MiB) requests: it keeps the queue size minus a few descriptors as its page limit.
pub const QUEUE_SIZE: u16 = 1024;
/// Length of the tag field of the config space.
pub const TAG_LEN: usize = 36;

/// Errors of the virtio-fs device and its share table.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("Invalid virtio-fs tag {0:?}: it must be 1 to 36 bytes without NUL")]
    Tag(String),
    #[error("Invalid share name {0:?}: it must be one path component of [A-Za-z0-9._-], at most 255 bytes")]
    ShareName(String),
    #[error("A share named {0:?} exists already")]
    ShareExists(String),
    #[error("No share named {0:?}")]
    UnknownShare(String),
    #[error("Failed to open share source {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Share source {0} is neither a directory nor a regular file")]
    NotDirOrFile(std::path::PathBuf),
    #[error("Too many inodes in use to add a share")]
    TooManyInodes,
    #[error(transparent)]
    Virtio(#[from] crate::virtio::Error),
}

#[cfg(test)]
mod tests;
