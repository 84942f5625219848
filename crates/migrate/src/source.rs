//! The sending side of one entry: reads the file under the package root, hashes what it reads
//! and compresses it when the entry says so, yielding bounded chunks. The same chunks go over
//! the network and into a package file. A file that no longer matches its manifest entry is
//! refused at its end, so nothing unverified is ever announced as complete.

use crate::error::{MigrateError, Result};
use crate::manifest::{Entry, show};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use zstd::stream::raw::{Encoder, InBuffer, Operation, OutBuffer};

/// Largest chunk handed out: one chunk plus headers fits one Noise message (65535 bytes).
pub(crate) const CHUNK: usize = 60 * 1024;
const READ: usize = 64 * 1024;
const LEVEL: i32 = 3;

pub(crate) struct EntryReader {
    file: File,
    name: Vec<u8>,
    size: u64,
    blake3: [u8; 32],
    hasher: blake3::Hasher,
    encoder: Option<Box<Encoder<'static>>>,
    read: u64,
    pending: Vec<u8>,
    eof: bool,
    inbuf: Vec<u8>,
    tmp: Vec<u8>,
}

impl EntryReader {
    pub(crate) fn open(root: &Path, entry: &Entry) -> Result<EntryReader> {
        let path = root.join(OsStr::from_bytes(&entry.name));
        // Never follow a symlink that appeared in the package since it was built.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(MigrateError::BadPackage(format!(
                "{} is not a regular file",
                show(&entry.name)
            )));
        }
        let encoder = if entry.compress {
            Some(Box::new(Encoder::new(LEVEL)?))
        } else {
            None
        };
        Ok(EntryReader {
            file,
            name: entry.name.clone(),
            size: entry.size,
            blake3: entry.blake3,
            hasher: blake3::Hasher::new(),
            encoder,
            read: 0,
            pending: Vec::new(),
            eof: false,
            inbuf: vec![0; READ],
            tmp: vec![0; READ + 1024],
        })
    }

    /// The next piece as carried, or `None` once the entry is complete and verified against
    /// its manifest entry. Blocking.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.pending.len() >= CHUNK || (self.eof && !self.pending.is_empty()) {
                let n = self.pending.len().min(CHUNK);
                let rest = self.pending.split_off(n);
                return Ok(Some(std::mem::replace(&mut self.pending, rest)));
            }
            if self.eof {
                return Ok(None);
            }
            let n = self.file.read(&mut self.inbuf)?;
            if n == 0 {
                self.end()?;
                continue;
            }
            self.read += n as u64;
            if self.read > self.size {
                return Err(self.changed());
            }
            self.hasher.update(&self.inbuf[..n]);
            match self.encoder.as_mut() {
                None => self.pending.extend_from_slice(&self.inbuf[..n]),
                Some(enc) => {
                    let mut input = InBuffer::around(&self.inbuf[..n]);
                    while input.pos() < n {
                        let mut output = OutBuffer::around(&mut self.tmp[..]);
                        enc.run(&mut input, &mut output)?;
                        let w = output.pos();
                        self.pending.extend_from_slice(&self.tmp[..w]);
                    }
                }
            }
        }
    }

    fn end(&mut self) -> Result<()> {
        if self.read != self.size || *self.hasher.finalize().as_bytes() != self.blake3 {
            return Err(self.changed());
        }
        if let Some(enc) = self.encoder.as_mut() {
            loop {
                let mut output = OutBuffer::around(&mut self.tmp[..]);
                let left = enc.finish(&mut output, true)?;
                let w = output.pos();
                self.pending.extend_from_slice(&self.tmp[..w]);
                if left == 0 {
                    break;
                }
            }
        }
        self.eof = true;
        Ok(())
    }

    fn changed(&self) -> MigrateError {
        MigrateError::BadPackage(format!(
            "{} changed since the manifest was built: build it again",
            show(&self.name)
        ))
    }
}
