//! Busybox in an initramfs: the static binary plus one symlink per applet.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::initramfs::{self, Image};

/// Where busybox lives inside images.
pub const BUSYBOX_PATH: &str = "bin/busybox";

/// Errors of adding busybox to an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot run {path} --list-full")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} --list-full failed: {stderr}")]
    ListFailed { path: PathBuf, stderr: String },
    #[error("{0} lists no applets (is it busybox?)")]
    NoApplets(PathBuf),
    #[error("Cannot add busybox to the image")]
    Image(#[from] initramfs::Error),
}

/// The applet paths (e.g. `bin/sh`, `usr/bin/awk`) a busybox binary provides.
pub fn applets(busybox: &Path) -> Result<Vec<String>, Error> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| Error::List {
            path: busybox.to_path_buf(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(Error::ListFailed {
            path: busybox.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if list.is_empty() {
        return Err(Error::NoApplets(busybox.to_path_buf()));
    }
    Ok(list)
}

/// Adds busybox at `/bin/busybox` and a symlink for each applet that does not collide with an
/// entry already in the image (so `/init` and other explicit files win). `linuxrc` is skipped.
/// Returns the number of applet links added.
pub fn add_to(image: &mut Image, busybox: &Path) -> Result<usize, Error> {
    let list = applets(busybox)?;
    image.host_file(busybox, BUSYBOX_PATH)?;
    let mut added = 0;
    for applet in list {
        if applet == "linuxrc" || applet == BUSYBOX_PATH || image.get(&applet).is_some() {
            continue;
        }
        image.symlink(&applet, "/bin/busybox")?;
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_applets_without_overriding_existing_entries() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            eprintln!("/bin/busybox missing (apt-get install busybox-static): skipping");
            return;
        }
        let mut img = Image::new();
        img.data("bin/ls", 0o755, "mine").unwrap();
        let n = add_to(&mut img, bb).unwrap();
        assert!(n > 50, "only {n} applets");
        assert!(matches!(
            img.get("bin/sh"),
            Some(initramfs::Entry::Symlink { target }) if target == "/bin/busybox"
        ));
        assert!(matches!(
            img.get("bin/ls"),
            Some(initramfs::Entry::Data { .. })
        ));
        assert!(img.get("linuxrc").is_none());
    }

    #[test]
    fn not_busybox_is_an_error() {
        assert!(matches!(
            applets(Path::new("/nonexistent/busybox")),
            Err(Error::List { .. })
        ));
        // `false` runs but fails.
        if Path::new("/bin/false").exists() {
            assert!(matches!(
                applets(Path::new("/bin/false")),
                Err(Error::ListFailed { .. })
            ));
        }
    }
}
