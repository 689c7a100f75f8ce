//! Disk backends.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::{Error, ID_BYTES};

/// What the block device needs from a disk.
pub trait DiskBackend: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make written data durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Identifier reported by `VIRTIO_BLK_T_GET_ID` (NUL padded).
    fn id(&self) -> [u8; ID_BYTES];
}

/// A raw image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    id: [u8; ID_BYTES],
}

impl RawFile {
    /// Open `path`, read-write unless `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_file(file)
    }

    /// Use an already open file.
    pub fn from_file(file: File) -> Result<Self, Error> {
        let md = file.metadata().map_err(Error::Metadata)?;
        // Like Firecracker: the id is derived from the device and inode of the image.
        let text = format!("{:x}{:x}", md.dev(), md.ino());
        let mut id = [0u8; ID_BYTES];
        for (d, s) in id.iter_mut().zip(text.bytes()) {
            *d = s;
        }
        Ok(RawFile {
            file,
            size: md.len(),
            id,
        })
    }
}

impl DiskBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn id(&self) -> [u8; ID_BYTES] {
        self.id
    }
}

/// What an empty slot holds: nothing (size 0, every access fails).
#[derive(Debug)]
pub struct NoMedium;

impl DiskBackend for NoMedium {
    fn size(&self) -> u64 {
        0
    }
    fn read_at(&mut self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::NotFound, "no medium"))
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::NotFound, "no medium"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn id(&self) -> [u8; ID_BYTES] {
        [0; ID_BYTES]
    }
}
