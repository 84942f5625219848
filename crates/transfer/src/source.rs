//! Reading a resource's bytes from disk: the integrity pre-pass and constant-memory chunk streams.
//!
//! The pre-pass hashes the whole file once (BLAKE3 to compare with the job's pinned hash,
//! SHA-256 for `Repr-Digest`) and records a [`FileStamp`]. Every later read checks the stamp
//! again, so bytes of a file that changed after the pre-pass are never completed on a server.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use ferry_core::job::ContentHash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bandwidth::Bandwidth;

/// Size of one read from disk; also the body frame size handed to the HTTP stack.
pub const READ_BLOCK_BYTES: usize = 1 << 20;

/// What identifies one version of a file without reading it: if any of these changed, the
/// bytes may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size_bytes: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp::from_metadata(&m))
    }

    fn from_metadata(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            size_bytes: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Why the source could not be read as the job expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("resource file is missing: {0}")]
    Missing(String),
    #[error("resource file changed: {0}")]
    Changed(String),
    #[error("resource file unreadable: {0}")]
    Unreadable(String),
}

fn io_error(path: &Path, e: std::io::Error) -> SourceError {
    if e.kind() == std::io::ErrorKind::NotFound {
        SourceError::Missing(path.display().to_string())
    } else {
        SourceError::Unreadable(format!("{}: {e}", path.display()))
    }
}

/// The file's stamp now (a `stat`), for an upload that starts before its pre-pass ends.
pub fn stamp(path: &Path) -> Result<FileStamp, SourceError> {
    FileStamp::of(path).map_err(|e| io_error(path, e))
}

/// The result of the pre-pass: the file as it was when it matched the pinned hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepass {
    pub stamp: FileStamp,
    pub sha256: [u8; 32],
}

/// Hashes the file (blocking; run it on a blocking thread) and checks it against `pinned`.
/// A file whose stamp moved while it was read counts as changed.
pub fn prepass(path: &Path, pinned: &ContentHash) -> Result<Prepass, SourceError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let before = FileStamp::from_metadata(&f.metadata().map_err(|e| io_error(path, e))?);
    // SHA-256 runs on its own thread beside BLAKE3: the pre-pass takes the slower of the two,
    // not their sum (it is most of the engine's overhead over a bare upload).
    let mut b3 = blake3::Hasher::new();
    let mut total: u64 = 0;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(4);
    let sha256 = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut s2 = Sha256::new();
            for block in rx {
                s2.update(block.as_slice());
            }
            s2.finalize()
        });
        let read = (|| {
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = f.read(&mut buf).map_err(|e| io_error(path, e))?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let block = Arc::new(buf);
                b3.update(&block);
                total += n as u64;
                if tx.send(block).is_err() {
                    return Err(SourceError::Unreadable("hash thread ended".into()));
                }
            }
        })();
        drop(tx);
        let digest = hasher
            .join()
            .map_err(|_| SourceError::Unreadable("hash thread panicked".into()));
        read.and(digest)
    })?;
    let after = FileStamp::of(path).map_err(|e| io_error(path, e))?;
    if after != before || total != before.size_bytes {
        return Err(SourceError::Changed(format!(
            "{} changed while it was hashed",
            path.display()
        )));
    }
    if b3.finalize().as_bytes() != &pinned.0 {
        return Err(SourceError::Changed(format!(
            "{} no longer matches the job's content hash",
            path.display()
        )));
    }
    Ok(Prepass {
        stamp: before,
        sha256: sha256.into(),
    })
}

/// Checks the file still has the stamp of the pre-pass.
pub fn check_stamp(path: &Path, expected: &FileStamp) -> Result<(), SourceError> {
    let now = FileStamp::of(path).map_err(|e| io_error(path, e))?;
    if now != *expected {
        return Err(SourceError::Changed(format!(
            "{} changed since it was hashed",
            path.display()
        )));
    }
    Ok(())
}

/// SHA-256 of `len` bytes at `offset` (for tus `Upload-Checksum`), blocking.
pub fn range_sha256(path: &Path, offset: u64, len: u64) -> Result<[u8; 32], SourceError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error(path, e))?;
    let mut s2 = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = f.read(&mut buf[..want]).map_err(|e| io_error(path, e))?;
        if n == 0 {
            return Err(SourceError::Changed(format!(
                "{} is shorter than expected",
                path.display()
            )));
        }
        s2.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(s2.finalize().into())
}

/// Progress and trouble reported by a body stream to the request that carries it: the watchdog
/// reads `last_progress` to cut a stalled request, the uploader reads `error` to tell a source
/// problem from a network one.
#[derive(Debug)]
pub struct StreamProbe {
    pub last_progress: Mutex<Instant>,
    pub error: Mutex<Option<SourceError>>,
}

impl StreamProbe {
    pub fn new() -> Arc<StreamProbe> {
        Arc::new(StreamProbe {
            last_progress: Mutex::new(Instant::now()),
            error: Mutex::new(None),
        })
    }

    pub fn touch(&self) {
        if let Ok(mut t) = self.last_progress.lock() {
            *t = Instant::now();
        }
    }

    pub fn idle_for(&self) -> std::time::Duration {
        self.last_progress
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    pub fn take_error(&self) -> Option<SourceError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    fn fail(&self, e: SourceError) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = Some(e);
        }
    }
}

struct RangeReader {
    path: PathBuf,
    file: Option<std::fs::File>,
    offset: u64,
    left: u64,
    block_bytes: usize,
    probe: Arc<StreamProbe>,
    bandwidth: Option<Arc<Bandwidth>>,
}

/// A request body of `len` bytes of `path` from `offset`, read in [`READ_BLOCK_BYTES`] blocks on
/// a blocking thread: memory stays at one block per request whatever the file's size. With a
/// `bandwidth` cap, each block waits for its tokens first.
pub fn range_body(
    path: &Path,
    offset: u64,
    len: u64,
    probe: Arc<StreamProbe>,
    bandwidth: Option<Arc<Bandwidth>>,
) -> reqwest::Body {
    let reader = RangeReader {
        path: path.to_owned(),
        file: None,
        offset,
        left: len,
        block_bytes: bandwidth
            .as_ref()
            .map_or(READ_BLOCK_BYTES, |b| b.block_bytes()),
        probe,
        bandwidth,
    };
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        if r.left == 0 {
            return None;
        }
        if let Some(b) = r.bandwidth.clone() {
            let n = (r.block_bytes as u64).min(r.left) as usize;
            b.take(n).await;
            // Waiting for our turn is not a stall.
            r.probe.touch();
        }
        let probe = r.probe.clone();
        let result = tokio::task::spawn_blocking(move || {
            let block = r.read_block();
            (r, block)
        })
        .await;
        match result {
            Ok((r, Ok(bytes))) => {
                r.probe.touch();
                Some((Ok::<Bytes, SourceError>(bytes), r))
            }
            Ok((mut r, Err(e))) => {
                r.probe.fail(e.clone());
                r.left = 0;
                Some((Err(e), r))
            }
            Err(join) => {
                let e = SourceError::Unreadable(format!("reader task: {join}"));
                probe.fail(e.clone());
                None
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}

impl RangeReader {
    fn read_block(&mut self) -> Result<Bytes, SourceError> {
        if self.file.is_none() {
            let mut f = std::fs::File::open(&self.path).map_err(|e| io_error(&self.path, e))?;
            f.seek(SeekFrom::Start(self.offset))
                .map_err(|e| io_error(&self.path, e))?;
            self.file = Some(f);
        }
        let want = (self.block_bytes as u64).min(self.left) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let f = self
                .file
                .as_mut()
                .ok_or_else(|| SourceError::Unreadable("file handle lost".into()))?;
            let n = f
                .read(&mut buf[got..])
                .map_err(|e| io_error(&self.path, e))?;
            if n == 0 {
                return Err(SourceError::Changed(format!(
                    "{} is shorter than expected",
                    self.path.display()
                )));
            }
            got += n;
        }
        self.left -= want as u64;
        self.offset += want as u64;
        Ok(Bytes::from(buf))
    }
}
