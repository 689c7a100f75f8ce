//! The guest initramfs: `/init` = the ember agent (static), busybox with its applets, the
//! `/dev/console` node and the mount point directories.

use std::path::{Path, PathBuf};

use crate::busybox;
use crate::initramfs::{self, Image};

/// Errors of building the guest image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Agent binary {0} not found (build it: scripts/build-guest-image.sh)")]
    NoAgent(PathBuf),
    #[error("Cannot add busybox")]
    Busybox(#[from] busybox::Error),
    #[error("Cannot build the guest initramfs")]
    Image(#[from] initramfs::Error),
    #[error("Invalid --add {0:?}: expected SRC:DST")]
    BadAdd(String),
}

/// Directories every guest image has.
pub const DIRS: &[&str] = &["proc", "sys", "dev", "tmp", "run", "mnt", "root", "etc"];

/// What goes into a guest initramfs.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub agent: PathBuf,
    pub busybox: Option<PathBuf>,
    /// Extra host files or directories: (source on the host, destination in the image).
    pub extra: Vec<(PathBuf, String)>,
}

/// Parses `SRC:DST` (the first `:` splits; DST must be absolute or is made so).
pub fn parse_add(spec: &str) -> Result<(PathBuf, String), Error> {
    match spec.split_once(':') {
        Some((src, dst)) if !src.is_empty() && !dst.is_empty() => {
            Ok((PathBuf::from(src), dst.to_string()))
        }
        _ => Err(Error::BadAdd(spec.to_string())),
    }
}

/// Adds the skeleton every image shares: directories and `/dev/console` (5:1), `/dev/null` (1:3).
pub fn add_skeleton(image: &mut Image) -> Result<(), initramfs::Error> {
    for d in DIRS {
        image.dir(d, 0o755)?;
    }
    image.dir("tmp", 0o1777)?;
    image.char_dev("dev/console", 0o600, 5, 1)?;
    image.char_dev("dev/null", 0o666, 1, 3)?;
    Ok(())
}

impl GuestImage {
    /// Builds the image tree.
    pub fn build(&self) -> Result<Image, Error> {
        if !self.agent.is_file() {
            return Err(Error::NoAgent(self.agent.clone()));
        }
        let mut image = Image::new();
        add_skeleton(&mut image)?;
        image.host_file(&self.agent, "init")?;
        for (src, dst) in &self.extra {
            image.host_path(src, dst)?;
        }
        if let Some(bb) = &self.busybox {
            busybox::add_to(&mut image, bb)?;
        }
        Ok(image)
    }

    /// Builds the image and writes it to `out` (atomically).
    pub fn write(&self, out: &Path) -> Result<usize, Error> {
        let image = self.build()?;
        image.write_file(out)?;
        Ok(image.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::Entry;

    #[test]
    fn parses_add_specs() {
        assert_eq!(
            parse_add("/a/b:/etc/c").unwrap(),
            (PathBuf::from("/a/b"), "/etc/c".to_string())
        );
        for bad in ["", "nocolon", ":/x", "/x:"] {
            assert!(parse_add(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_has_init_console_and_dirs() {
        let dir = std::env::temp_dir().join(format!("ember-rig-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let agent = dir.join("agent");
        std::fs::write(&agent, b"\x7fELF-not-really").unwrap();
        let extra = dir.join("extra.txt");
        std::fs::write(&extra, b"x").unwrap();
        let img = GuestImage {
            agent: agent.clone(),
            busybox: None,
            extra: vec![(extra, "/etc/extra.txt".into())],
        }
        .build()
        .unwrap();
        assert!(matches!(img.get("init"), Some(Entry::HostFile { src, .. }) if *src == agent));
        assert_eq!(
            img.get("dev/console"),
            Some(&Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1
            })
        );
        assert_eq!(img.get("tmp"), Some(&Entry::Dir { mode: 0o1777 }));
        for d in DIRS {
            assert!(matches!(img.get(d), Some(Entry::Dir { .. })), "{d}");
        }
        assert!(img.get("etc/extra.txt").is_some());
        let missing = GuestImage {
            agent: dir.join("nope"),
            busybox: None,
            extra: vec![],
        };
        assert!(matches!(missing.build(), Err(Error::NoAgent(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
