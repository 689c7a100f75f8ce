//! Container rootfs images: a directory becomes an ext4 image file (`mkfs.ext4 -d`), sized
//! from the directory's content with room to write. The file is sparse, so the slack costs
//! nothing until the guest writes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Free space added to every image on top of its content.
const SLACK_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Rootfs directory {path} is not readable")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot create image {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot run mkfs.ext4 (install e2fsprogs)")]
    Spawn(#[source] std::io::Error),
    #[error("mkfs.ext4 -d {dir} failed: {stderr}")]
    Mkfs { dir: PathBuf, stderr: String },
}

/// Bytes the content of `dir` takes, counting each file and directory at least one 4 KiB
/// block. Symlinks are not followed.
pub fn content_size(dir: &Path) -> Result<u64, Error> {
    let walk = |source| Error::Walk {
        path: dir.to_path_buf(),
        source,
    };
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(walk)? {
            let entry = entry.map_err(walk)?;
            let meta = entry.metadata().map_err(walk)?;
            total = total.saturating_add(meta.len().div_ceil(4096).max(1) * 4096);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Make `image` an ext4 filesystem holding a copy of `dir`.
pub fn make_ext4(dir: &Path, image: &Path) -> Result<(), Error> {
    let meta = fs::metadata(dir).map_err(|source| Error::Walk {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::Walk {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let content = content_size(dir)?;
    // ext4 metadata (inode tables, journal) needs room too: a third on top, plus the slack.
    let size = (content + content / 3 + SLACK_BYTES).div_ceil(1 << 20) << 20;
    let create = |source| Error::Create {
        path: image.to_path_buf(),
        source,
    };
    let f = File::create(image).map_err(create)?;
    f.set_len(size).map_err(create)?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .output()
        .map_err(Error::Spawn)?;
    if !out.status.success() {
        let _ = fs::remove_file(image);
        return Err(Error::Mkfs {
            dir: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_dir;

    #[test]
    fn content_size_counts_blocks() {
        let dir = test_dir("disk-size");
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("a"), vec![0u8; 5000]).unwrap();
        fs::write(dir.join("sub/b"), b"x").unwrap();
        // a: 2 blocks, sub: 1, b: 1.
        assert_eq!(content_size(&dir).unwrap(), 4 * 4096);
    }

    #[test]
    fn image_from_dir_holds_the_files() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipped: mkfs.ext4 not installed");
            return;
        }
        let dir = test_dir("disk-mk");
        let root = dir.join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), b"ember-test\n").unwrap();
        let img = dir.join("root.img");
        make_ext4(&root, &img).unwrap();
        assert!(fs::metadata(&img).unwrap().len() >= SLACK_BYTES);
        // debugfs (e2fsprogs) reads the file back out of the image.
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ember-test\n");
    }

    #[test]
    fn missing_or_non_dir_is_refused() {
        let dir = test_dir("disk-bad");
        let err = make_ext4(&dir.join("nope"), &dir.join("x.img")).unwrap_err();
        assert!(matches!(err, Error::Walk { .. }));
        fs::write(dir.join("file"), b"x").unwrap();
        let err = make_ext4(&dir.join("file"), &dir.join("x.img")).unwrap_err();
        assert!(matches!(err, Error::Walk { .. }));
        assert!(!dir.join("x.img").exists());
    }
}
