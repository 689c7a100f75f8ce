//! The virtual KVM host with a Debian root attached: the image `scripts/build-debian-host.sh`
//! builds (podman, containerd, runc, crun, configured for ember) becomes the host's `/dev/vda`
//! (virtio-blk, QEMU `snapshot=on`, so a run never changes the cached image). The OCI
//! scenarios (`rig/scenarios/50-oci*.sh`) mount it and drive ember with the real engines in a
//! chroot.
//!
//! Everything else — the initramfs with ember and the guest artifacts, QEMU, the console and
//! its sections — is [`VirtualHost`]'s; this only adds the disk, more memory and the scenario
//! choice.

use crate::vhost::{self, RunReport, VirtualHost};
use std::path::{Path, PathBuf};

/// Where `scripts/build-debian-host.sh` leaves the image.
pub const DEFAULT_IMAGE: &str = "/var/cache/ember/debian-host.ext4";
/// Environment variable that overrides [`DEFAULT_IMAGE`].
pub const IMAGE_ENV: &str = "EMBER_DEBIAN_IMAGE";
/// Memory of the host: podman, containerd and a guest VM side by side.
pub const MEM_MIB: u32 = 3072;
/// Where `scripts/build-guest-image.sh` leaves the static CRI client (rig/cri-test).
pub const DEFAULT_CRI_TEST: &str = "/var/lib/ember/host/ember-cri-test";
/// Environment variable that overrides [`DEFAULT_CRI_TEST`].
pub const CRI_TEST_ENV: &str = "EMBER_CRI_TEST";
/// Where the CRI client lies in the virtual host (the scenario copies it into the Debian root).
pub const CRI_TEST_IN_HOST: &str = "/usr/local/bin/ember-cri-test";
/// The variable [`VirtualHost`] reads extra QEMU arguments from.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Debian host image {0} not found (run scripts/build-debian-host.sh)")]
    NoImage(PathBuf),
    #[error("Cannot list the OCI scenarios in {dir}")]
    Scenarios {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Virtual host")]
    Host(#[from] vhost::Error),
}

/// The image to use: `EMBER_DEBIAN_IMAGE` or [`DEFAULT_IMAGE`].
pub fn image_path() -> PathBuf {
    std::env::var_os(IMAGE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE))
}

/// QEMU arguments that attach `image` as the first virtio-blk disk, writes kept in a temporary
/// overlay. `acpi=off` makes QEMU's microvm list the virtio-mmio device on the kernel command
/// line (`virtio_mmio.device=`), which an ACPI-less host kernel needs to find it.
pub fn drive_args(image: &Path) -> String {
    format!(
        "-M microvm,acpi=off -drive file={},if=none,id=debian,format=raw,snapshot=on \
         -device virtio-blk-device,drive=debian",
        image.display()
    )
}

/// The OCI scenarios in `dir` (`50-oci*.sh`), in name order.
pub fn oci_scenarios(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let all = vhost::scenarios_in(dir).map_err(|source| Error::Scenarios {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(all
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("50-oci"))
        })
        .collect())
}

/// A virtual host with the Debian root as `/dev/vda`.
#[derive(Clone, Debug)]
pub struct DebianHost {
    image: PathBuf,
    host: VirtualHost,
}

impl DebianHost {
    /// The default virtual host (see [`VirtualHost::new`]) with [`MEM_MIB`] and `image`
    /// (default [`image_path`]). Fails when the image, the host kernel or QEMU is missing.
    pub fn new(image: Option<PathBuf>) -> Result<DebianHost, Error> {
        let image = image.unwrap_or_else(image_path);
        if !image.is_file() {
            return Err(Error::NoImage(image));
        }
        let mut host = VirtualHost::new()?.mem_mib(MEM_MIB);
        let cri_test = std::env::var_os(CRI_TEST_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CRI_TEST));
        // Without it the CRI section says so and fails.
        if cri_test.is_file() {
            host = host.file(cri_test, CRI_TEST_IN_HOST);
        }
        Ok(DebianHost { image, host })
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The underlying virtual host.
    pub fn host(&self) -> &VirtualHost {
        &self.host
    }

    /// Change the underlying virtual host (scenarios, timeout, log, ...).
    pub fn configure(mut self, f: impl FnOnce(VirtualHost) -> VirtualHost) -> DebianHost {
        self.host = f(self.host);
        self
    }

    /// Boot the host with the disk attached and run its scenarios.
    pub fn run(&self) -> Result<RunReport, Error> {
        Ok(self
            .host
            .clone()
            .qemu_args(&drive_args(&self.image))
            .run()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_is_a_snapshot_virtio_mmio_disk() {
        let a = drive_args(Path::new("/c/d.ext4"));
        assert!(a.contains("file=/c/d.ext4,"));
        assert!(a.contains("snapshot=on"));
        assert!(a.contains("format=raw"));
        assert!(a.contains("-device virtio-blk-device,drive=debian"));
        assert!(a.contains("acpi=off"));
    }

    #[test]
    fn only_oci_scenarios_are_picked() {
        let dir = std::env::temp_dir().join(format!("ember-debian-scen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["10-boot.sh", "50-oci.sh", "51-other.sh", "50-oci-extra.sh"] {
            std::fs::write(dir.join(n), "true\n").unwrap();
        }
        let got: Vec<String> = oci_scenarios(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["50-oci-extra.sh", "50-oci.sh"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_image_is_reported() {
        let err = DebianHost::new(Some(PathBuf::from("/nonexistent/debian.ext4"))).unwrap_err();
        assert!(matches!(err, Error::NoImage(_)), "{err}");
    }
}
