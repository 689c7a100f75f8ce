//! Where a pod's disks land in the guest: device names in attachment order, and which
//! attached disk holds a container's rootfs or volume.

use crate::config::RootfsConfig;
use crate::state::{AttachedDisk, DiskOwner};

/// Guest device name of the n-th attached virtio disk.
pub(crate) fn guest_device(index: usize) -> Option<String> {
    let letter = u8::try_from(index).ok().filter(|i| *i < 26)?;
    Some(format!("/dev/vd{}", (b'a' + letter) as char))
}

/// The disk-owner id of container `cid`'s volume disk (`#` cannot appear in a container id).
pub(crate) fn volume_owner(cid: &str) -> String {
    format!("{cid}#volume")
}

/// The guest device holding a container's rootfs among the attached disks.
pub(crate) fn resolve_device(
    disks: &[AttachedDisk],
    cid: &str,
    rootfs: &RootfsConfig,
) -> Option<String> {
    let find = |pred: &dyn Fn(&AttachedDisk) -> bool| {
        disks
            .iter()
            .find(|d| pred(d))
            .map(|d| d.guest_device.clone())
    };
    match rootfs {
        RootfsConfig::Disk { id } => find(&|d| d.owner == DiskOwner::Pod(id.clone())),
        RootfsConfig::Image { path, .. } => find(&|d| {
            d.owner == DiskOwner::Container(cid.to_string())
                || (matches!(d.owner, DiskOwner::Pod(_)) && d.path == *path)
        }),
        RootfsConfig::Dir { .. } => find(&|d| d.owner == DiskOwner::Container(cid.to_string())),
        RootfsConfig::GuestPath { .. } | RootfsConfig::Share { .. } => None,
    }
}
