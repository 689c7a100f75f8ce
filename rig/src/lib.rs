//! ember's test equipment: an initramfs (cpio newc) writer, the guest image builder and the
//! "virtual KVM host" — a QEMU-TCG machine with emulated SVM in which ember gets a real /dev/kvm.

pub mod busybox;
pub mod debian;
pub mod guest;
pub mod initramfs;
pub mod sections;
pub mod vhost;

pub use sections::Section;
pub use vhost::{Outcome, Rerun, RunReport, VirtualHost};
