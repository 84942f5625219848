//! The same move through a file instead of a network: for a person who carries the package on
//! a disk. Not encrypted (the file is in the person's hands), but integrity-checked end to end.
//!
//! Format, version 1 (integers big-endian):
//! `"FERRYPKG" | u32 version | u64 manifest length | manifest (canonical encoding)`, then per
//! distinct content in manifest order `'E' | u32 entry index | u8 encoding (0 raw, 1 zstd) |
//! (u32 chunk length | chunk)* | u32 0`, then `'T' | BLAKE3 of every byte before it, the 'T' included`.
//! Each content is checked against the manifest as it is imported; the trailer catches the
//! rest (a damaged manifest, a missing entry, a cut file). The file checks integrity, not
//! authenticity: someone who can rewrite it can rewrite its hashes too.

use crate::error::{MigrateError, Result};
use crate::fsutil::{fsync_dir, parent_of, temp_beside};
use crate::manifest::{MAX_MANIFEST_BYTES, PackageManifest};
use crate::source::EntryReader;
use crate::staging::{ReceivedPackage, SpaceCheck, Staging};
use crate::{Phase, Progress};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"FERRYPKG";
const VERSION: u32 = 1;
const MAX_CHUNK: u32 = 1 << 20;

/// Writes the package at `root` to `out` (temp → fsync → rename → fsync folder), checking the
/// free space at `out`'s folder first. Blocking: call it from `spawn_blocking` in async code.
/// Returns the file's size.
pub fn export_file(
    root: &Path,
    manifest: &PackageManifest,
    out: &Path,
    progress: impl Fn(Progress),
) -> Result<u64> {
    export_file_with(root, manifest, out, progress, &SpaceCheck::os())
}

/// [`export_file`] with a chosen free-space check.
pub fn export_file_with(
    root: &Path,
    manifest: &PackageManifest,
    out: &Path,
    progress: impl Fn(Progress),
    space: &SpaceCheck,
) -> Result<u64> {
    manifest.validate().map_err(MigrateError::BadPackage)?;
    let encoded = manifest.encode();
    if encoded.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(MigrateError::BadPackage("manifest too large".into()));
    }
    let distinct = manifest.distinct();
    // Raw size plus framing bounds the file (compression only shrinks it, near enough).
    let need = encoded.len() as u64
        + distinct
            .iter()
            .map(|&i| manifest.entries[i].size + manifest.entries[i].size / 64 + 64)
            .sum::<u64>()
        + 64;
    let dir = parent_of(out);
    space.require(dir, need)?;

    let tmp = temp_beside(out);
    let result = (|| -> Result<u64> {
        // The package holds the library index and extensions' data: its owner's alone.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = HashWriter {
            inner: BufWriter::with_capacity(256 << 10, file),
            hasher: blake3::Hasher::new(),
            written: 0,
        };
        let mut tally = crate::session_progress(manifest);
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_be_bytes())?;
        w.write_all(&(encoded.len() as u64).to_be_bytes())?;
        w.write_all(&encoded)?;
        for &i in &distinct {
            let entry = &manifest.entries[i];
            w.write_all(b"E")?;
            w.write_all(&(i as u32).to_be_bytes())?;
            w.write_all(&[u8::from(entry.compress)])?;
            let mut reader = EntryReader::open(root, entry)?;
            while let Some(chunk) = reader.next_chunk()? {
                w.write_all(&(chunk.len() as u32).to_be_bytes())?;
                w.write_all(&chunk)?;
                tally.wire_bytes = w.written;
                report(&progress, &tally);
            }
            w.write_all(&0u32.to_be_bytes())?;
            verified(manifest, &entry.blake3, &mut tally);
            report(&progress, &tally);
        }
        w.write_all(b"T")?;
        let digest = *w.hasher.finalize().as_bytes();
        let mut file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.write_all(&digest)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, out)?;
        fsync_dir(dir)?;
        tally.wire_bytes = fs::metadata(out)?.len();
        tally.phase = Phase::Verified;
        report(&progress, &tally);
        Ok(tally.wire_bytes)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Imports a package file into `staging`, verifying each entry as it goes and the trailer at
/// the end; entries already verified in `staging` (an import cut before) are not written
/// again. A truncated file gives [`MigrateError::Truncated`], a damaged one
/// [`MigrateError::Tampered`], and no package. Blocking.
pub fn import_file(
    path: &Path,
    staging: &Path,
    progress: impl Fn(Progress),
) -> Result<ReceivedPackage> {
    import_file_with(path, staging, progress, &SpaceCheck::os())
}

/// [`import_file`] with a chosen free-space check.
pub fn import_file_with(
    path: &Path,
    staging: &Path,
    progress: impl Fn(Progress),
    space: &SpaceCheck,
) -> Result<ReceivedPackage> {
    let file = File::open(path)?;
    let mut r = HashReader {
        inner: BufReader::with_capacity(256 << 10, file),
        hasher: blake3::Hasher::new(),
        read: 0,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(MigrateError::tampered("not a Ferry package file"));
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(MigrateError::Protocol(format!(
            "package file version {version} is not supported"
        )));
    }
    let len = r.u64()?;
    if len > MAX_MANIFEST_BYTES {
        return Err(MigrateError::tampered("manifest length out of bounds"));
    }
    let encoded = r.bytes(len as usize)?;
    let manifest = PackageManifest::decode(&encoded)
        .map_err(|e| MigrateError::tampered(format!("manifest: {e}")))?;
    drop(encoded);

    let staging = Staging::open(staging)?;
    let present = staging.prepare(&manifest)?;
    space.require(staging.root(), Staging::missing_bytes(&manifest, &present))?;

    let mut tally = crate::session_progress(&manifest);
    for h in &present {
        verified(&manifest, h, &mut tally);
    }
    let mut pending: HashSet<[u8; 32]> = manifest.entries.iter().map(|e| e.blake3).collect();
    let mut chunk = Vec::new();
    loop {
        let mut tag = [0u8; 1];
        r.exact(&mut tag)?;
        match &tag {
            b"E" => {}
            b"T" => break,
            _ => return Err(MigrateError::tampered("bad frame tag")),
        }
        let index = r.u32()? as usize;
        let compressed = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(MigrateError::tampered("bad encoding")),
        };
        let entry = manifest
            .entries
            .get(index)
            .filter(|e| pending.remove(&e.blake3))
            .ok_or_else(|| MigrateError::tampered(format!("entry {index} out of place")))?;
        // Already verified here (a resumed import): read through, write nothing.
        let mut writer = if present.contains(&entry.blake3) {
            None
        } else {
            Some(staging.writer(entry, compressed)?)
        };
        loop {
            let n = r.u32()?;
            if n == 0 {
                break;
            }
            if n > MAX_CHUNK {
                return Err(MigrateError::tampered("chunk length out of bounds"));
            }
            chunk.resize(n as usize, 0);
            r.exact(&mut chunk)?;
            if let Some(w) = writer.as_mut() {
                w.write(&chunk)?;
            }
            tally.wire_bytes = r.read;
            report(&progress, &tally);
        }
        tally.wire_bytes = r.read;
        if let Some(w) = writer {
            w.finish()?;
            verified(&manifest, &entry.blake3, &mut tally);
            report(&progress, &tally);
        }
    }
    let digest = *r.hasher.finalize().as_bytes();
    let mut trailer = [0u8; 32];
    r.inner.read_exact(&mut trailer).map_err(eof)?;
    if trailer != digest {
        return Err(MigrateError::tampered("file checksum does not match"));
    }
    let mut extra = [0u8; 1];
    if r.inner.read(&mut extra)? != 0 {
        return Err(MigrateError::tampered("bytes after the trailer"));
    }
    if !pending.is_empty() {
        return Err(MigrateError::tampered(format!(
            "{} entries missing from the file",
            pending.len()
        )));
    }
    tally.phase = Phase::Verified;
    tally.wire_bytes = r.read + trailer.len() as u64;
    report(&progress, &tally);
    Ok(staging.package(manifest))
}

fn verified(manifest: &PackageManifest, hash: &[u8; 32], p: &mut Progress) {
    for e in manifest.entries.iter().filter(|e| &e.blake3 == hash) {
        p.done_entries += 1;
        p.done_bytes += e.size;
    }
}

fn report(to: &dyn Fn(Progress), p: &Progress) {
    to(*p);
}

fn eof(e: io::Error) -> MigrateError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        MigrateError::Truncated
    } else {
        MigrateError::Io(e)
    }
}

struct HashWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashReader<R: Read> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R: Read> HashReader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(eof)?;
        self.hasher.update(buf);
        self.read += buf.len() as u64;
        Ok(())
    }
    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    /// Reads `n` bytes, growing the buffer only as bytes arrive (a lying length cannot make
    /// it allocate what the file does not hold).
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let got = (&mut self.inner).take(n as u64).read_to_end(&mut out)?;
        if got != n {
            return Err(MigrateError::Truncated);
        }
        self.hasher.update(&out);
        self.read += n as u64;
        Ok(out)
    }
}
