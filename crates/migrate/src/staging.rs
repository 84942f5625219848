//! The receiver's staging folder, the journal of a move: `manifest.json` names the session,
//! `blobs/<hex>` are contents verified against their BLAKE3 and made durable (a blob present
//! under its final name IS the record that it is verified), `blobs/<hex>.part` is the one
//! being written. A resumed receive keeps every verified blob the package still needs.

use crate::error::{MigrateError, Result};
use crate::fsutil::{fsync_dir, parent_of, temp_beside, write_atomic};
use crate::manifest::{Entry, PackageManifest, hex, show, unhex, validate_name};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zstd::stream::raw::{Decoder, Operation};

const MANIFEST_FILE: &str = "manifest.json";
const BLOBS: &str = "blobs";
const LOCK_FILE: &str = ".lock";
const LOCK_TRIES: u32 = 100;
const LOCK_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// How much free space a folder's file system has, in bytes. Injectable so tests (and callers
/// that keep a reserve) can decide; [`SpaceCheck::os`] asks `statvfs`.
#[derive(Clone)]
pub struct SpaceCheck(Arc<FreeBytes>);

type FreeBytes = dyn Fn(&Path) -> io::Result<u64> + Send + Sync;

impl std::fmt::Debug for SpaceCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpaceCheck")
    }
}

impl Default for SpaceCheck {
    fn default() -> Self {
        SpaceCheck::os()
    }
}

impl SpaceCheck {
    /// Space available to an unprivileged user, from `statvfs`.
    pub fn os() -> SpaceCheck {
        SpaceCheck::new(free_bytes)
    }
    pub fn new(f: impl Fn(&Path) -> io::Result<u64> + Send + Sync + 'static) -> SpaceCheck {
        SpaceCheck(Arc::new(f))
    }
    /// Always answers `bytes` (tests).
    pub fn fixed(bytes: u64) -> SpaceCheck {
        SpaceCheck::new(move |_| Ok(bytes))
    }
    pub(crate) fn available(&self, dir: &Path) -> Result<u64> {
        Ok((self.0)(dir)?)
    }
    /// Refuses with [`MigrateError::NoSpace`] when `need` does not fit at `dir`.
    pub(crate) fn require(&self, dir: &Path, need: u64) -> Result<()> {
        let have = self.available(dir)?;
        if need > have {
            return Err(MigrateError::NoSpace { need, have });
        }
        Ok(())
    }
}

/// Free bytes for an unprivileged user on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Bytes a staging folder holds in contents (verified or in flight); 0 when there is none.
pub fn staged_bytes(staging: &Path) -> io::Result<u64> {
    let rd = match fs::read_dir(staging.join(BLOBS)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for item in rd {
        let meta = item?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// An open staging folder, locked against a second receive or import into it.
#[derive(Debug)]
pub(crate) struct Staging {
    root: PathBuf,
    blobs: PathBuf,
    /// Shared with each [`EntryWriter`]: a writer finishing on a blocking thread after its
    /// receive was dropped still holds the folder.
    lock: Arc<File>,
}

impl Staging {
    pub(crate) fn open(root: &Path) -> Result<Staging> {
        let blobs = root.join(BLOBS);
        fs::create_dir_all(&blobs)?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join(LOCK_FILE))?;
        // A little patience: a receive dropped a moment ago lets go within milliseconds.
        let mut tries = 0;
        loop {
            match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK && tries < LOCK_TRIES => {
                    tries += 1;
                    std::thread::sleep(LOCK_PAUSE);
                }
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    return Err(MigrateError::Protocol(format!(
                        "staging folder {} is in use by another receive",
                        root.display()
                    )));
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(Staging {
            root: root.to_path_buf(),
            blobs,
            lock: Arc::new(lock),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.blobs.join(hex(hash))
    }

    /// Makes the folder hold `manifest`'s session: unfinished `.part` files go, blobs the new
    /// package does not need go (a different package arriving replaces an unfinished one),
    /// the manifest is recorded. Returns the contents already verified.
    pub(crate) fn prepare(&self, manifest: &PackageManifest) -> Result<HashSet<[u8; 32]>> {
        let wanted: HashMap<[u8; 32], u64> = manifest
            .entries
            .iter()
            .map(|e| (e.blake3, e.size))
            .collect();
        let mut present = HashSet::new();
        let mut removed = false;
        for item in fs::read_dir(&self.blobs)? {
            let item = item?;
            let path = item.path();
            let ft = item.file_type()?;
            let keep = ft.is_file()
                && item
                    .file_name()
                    .to_str()
                    .and_then(unhex)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .filter(|h| {
                        // The size is a cheap check that the journal is what it claims.
                        wanted.get(h).is_some_and(|&size| {
                            item.metadata().map(|m| m.len() == size).unwrap_or(false)
                        })
                    })
                    .map(|h| present.insert(h))
                    .is_some();
            if !keep {
                if ft.is_dir() {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_file(&path)?;
                }
                removed = true;
            }
        }
        if removed {
            fsync_dir(&self.blobs)?;
        }
        let recorded = fs::read(self.root.join(MANIFEST_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .and_then(|v| PackageManifest::from_json(v).ok());
        if recorded.as_ref().map(|m| m.id()) != Some(manifest.id()) {
            let json = serde_json::to_vec_pretty(&manifest.to_json())
                .map_err(|e| MigrateError::Io(io::Error::other(e)))?;
            write_atomic(&self.root.join(MANIFEST_FILE), &json)?;
        }
        Ok(present)
    }

    /// Bytes still to receive: each missing content once.
    pub(crate) fn missing_bytes(manifest: &PackageManifest, present: &HashSet<[u8; 32]>) -> u64 {
        manifest
            .distinct()
            .into_iter()
            .map(|i| &manifest.entries[i])
            .filter(|e| !present.contains(&e.blake3))
            .map(|e| e.size)
            .sum()
    }

    /// Starts writing one entry's content; `compressed` says how it is carried.
    pub(crate) fn writer(&self, entry: &Entry, compressed: bool) -> Result<EntryWriter> {
        let dest = self.blob_path(&entry.blake3);
        let mut part = dest.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)?;
        let decoder = if compressed {
            Some(Box::new(Decoder::new()?))
        } else {
            None
        };
        Ok(EntryWriter {
            _lock: self.lock.clone(),
            file,
            part,
            dest,
            dir: self.blobs.clone(),
            hasher: blake3::Hasher::new(),
            decoder,
            last_hint: 0,
            written: 0,
            carried: 0,
            size: entry.size,
            hash: entry.blake3,
            name: entry.name.clone(),
            buf: if compressed {
                vec![0; 128 << 10]
            } else {
                Vec::new()
            },
            done: false,
        })
    }

    pub(crate) fn package(&self, manifest: PackageManifest) -> ReceivedPackage {
        ReceivedPackage {
            manifest,
            staging: self.root.clone(),
        }
    }
}

/// One entry's content on its way into `blobs/<hex>.part`: decompressed, hashed and bounded as
/// it arrives; verified, made durable and renamed to its final name by [`EntryWriter::finish`].
pub(crate) struct EntryWriter {
    _lock: Arc<File>,
    file: File,
    part: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    hasher: blake3::Hasher,
    decoder: Option<Box<Decoder<'static>>>,
    last_hint: usize,
    written: u64,
    carried: u64,
    size: u64,
    hash: [u8; 32],
    name: Vec<u8>,
    buf: Vec<u8>,
    done: bool,
}

impl EntryWriter {
    /// Takes the next piece as carried (compressed or raw).
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        self.carried += data.len() as u64;
        // zstd never expands by more than a little; far more means a hostile or broken peer.
        if self.carried > self.size + self.size / 8 + (1 << 20) {
            return Err(self.bad("carries far more bytes than its size"));
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return self.out(data);
        };
        let mut pos = 0;
        let ok = loop {
            let Ok(st) = decoder.run_on_buffers(&data[pos..], &mut self.buf) else {
                break false;
            };
            pos += st.bytes_read;
            // An idle call (no input, no output) says nothing about the frame.
            if st.bytes_read > 0 || st.bytes_written > 0 {
                self.last_hint = st.remaining;
            }
            // Output comes in bounded pieces, so a decompression bomb stops at `size`.
            self.written += st.bytes_written as u64;
            if self.written > self.size {
                break false;
            }
            let piece = &self.buf[..st.bytes_written];
            self.hasher.update(piece);
            self.file.write_all(piece)?;
            if pos == data.len() && st.bytes_written < self.buf.len() {
                break true;
            }
        };
        if ok {
            Ok(())
        } else {
            Err(self.bad("does not decompress to its size"))
        }
    }

    fn out(&mut self, bytes: &[u8]) -> Result<()> {
        self.written += bytes.len() as u64;
        if self.written > self.size {
            return Err(self.bad("is longer than its size"));
        }
        self.hasher.update(bytes);
        self.file.write_all(bytes)?;
        Ok(())
    }

    /// Verifies size and BLAKE3, then fsync → rename → fsync the folder. Blocking.
    pub(crate) fn finish(mut self) -> Result<()> {
        if self.decoder.is_some() {
            // Drain what the decoder still holds.
            self.write(&[])?;
            if self.last_hint != 0 {
                return Err(self.bad("ends inside its compressed frame"));
            }
        }
        if self.written != self.size {
            return Err(self.bad("is shorter than its size"));
        }
        if *self.hasher.finalize().as_bytes() != self.hash {
            return Err(self.bad("does not match its BLAKE3"));
        }
        self.file.sync_all()?;
        fs::rename(&self.part, &self.dest)?;
        self.done = true;
        fsync_dir(&self.dir)?;
        Ok(())
    }

    fn bad(&self, what: &str) -> MigrateError {
        MigrateError::tampered(format!("entry {} {what}", show(&self.name)))
    }
}

impl Drop for EntryWriter {
    // A half-written or refused entry is never kept: only verified blobs count.
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.part);
        }
    }
}

/// A package received whole and verified, waiting in its staging folder to be installed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPackage {
    pub manifest: PackageManifest,
    pub staging: PathBuf,
}

impl ReceivedPackage {
    /// Opens a staging folder whose package was already received whole (a receiver that
    /// restarted between "verified" and installing). Checks every blob is there at its size.
    pub fn open(staging: &Path) -> Result<ReceivedPackage> {
        let bytes = fs::read(staging.join(MANIFEST_FILE))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| MigrateError::BadPackage(format!("staging manifest: {e}")))?;
        let manifest = PackageManifest::from_json(value)
            .map_err(|e| MigrateError::BadPackage(format!("staging manifest: {e}")))?;
        let package = ReceivedPackage {
            manifest,
            staging: staging.to_path_buf(),
        };
        let missing = package
            .manifest
            .entries
            .iter()
            .filter(|e| {
                fs::metadata(package.path_of(e))
                    .map(|m| !m.is_file() || m.len() != e.size)
                    .unwrap_or(true)
            })
            .count();
        if missing > 0 {
            return Err(MigrateError::BadPackage(format!(
                "staging holds an unfinished package: {missing} entries missing"
            )));
        }
        Ok(package)
    }

    pub fn id(&self) -> [u8; 32] {
        self.manifest.id()
    }

    pub fn manifest(&self) -> &PackageManifest {
        &self.manifest
    }

    /// Where the verified content of `entry` is.
    pub fn path_of(&self, entry: &Entry) -> PathBuf {
        self.staging.join(BLOBS).join(hex(&entry.blake3))
    }

    /// Puts every entry at `dest_root/<name>`, creating folders: the first entry of each
    /// content is hard-linked to its blob (no copy of a large state), later identical entries
    /// are copied (so changing one installed file cannot change another). Because of the
    /// links, discard the staging folder after installing rather than receiving into it again.
    /// Refuses names that are absolute or climb out (`..`) and entries that already exist.
    /// `dest_root` should be a fresh folder of the caller's. Blocking.
    pub fn materialize(&self, dest_root: &Path) -> Result<()> {
        for e in &self.manifest.entries {
            validate_name(&e.name).map_err(MigrateError::BadPackage)?;
        }
        fs::create_dir_all(dest_root)?;
        let mut linked = HashSet::new();
        let mut dirs = HashSet::new();
        dirs.insert(dest_root.to_path_buf());
        for e in &self.manifest.entries {
            let dest = dest_root.join(OsStr::from_bytes(&e.name));
            let parent = parent_of(&dest).to_path_buf();
            fs::create_dir_all(&parent)?;
            if fs::symlink_metadata(&dest).is_ok() {
                return Err(MigrateError::Io(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", dest.display()),
                )));
            }
            let blob = self.path_of(e);
            let first = linked.insert(e.blake3);
            if !(first && fs::hard_link(&blob, &dest).is_ok()) {
                copy_durable(&blob, &dest)?;
            }
            // New folders need their parents synced too.
            let mut d = parent.as_path();
            while d.starts_with(dest_root) && dirs.insert(d.to_path_buf()) {
                match d.parent() {
                    Some(p) => d = p,
                    None => break,
                }
            }
        }
        for d in dirs {
            fsync_dir(&d)?;
        }
        Ok(())
    }

    /// Removes the staging folder (after installing).
    pub fn discard(self) -> Result<()> {
        fs::remove_dir_all(&self.staging)?;
        Ok(())
    }
}

fn copy_durable(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = temp_beside(to);
    fs::copy(from, &tmp)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, to)
}
