//! Finished objects, content-addressed by BLAKE3, behind `object_store`.
//!
//! Any `ObjectStore` works (S3 can plug in later) through a streamed multipart copy. When the
//! store is the local filesystem on the same volume as the partial uploads, a completed partial
//! file is hard-linked into place instead of copied: no second write of a 2 GB upload, and the
//! link either exists whole or not at all. The conformance suite at the bottom runs against each
//! of these paths.

use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetResult, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncReadExt;

/// Part size for the streamed copy; above S3's 5 MiB minimum part size.
const PART_SIZE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Set when `store` is this local filesystem and hard links may replace copies.
    local: Option<Arc<LocalFileSystem>>,
}

/// How much one read of a local object takes: a whole photo in one or two blocks.
pub const READ_BLOCK_BYTES: usize = 1 << 20;

/// An object's bytes as the HTTP body streams them.
pub type BlobStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where object `id` lives inside the store: fanned out by its first two hex digits.
pub fn object_path(id: &str) -> Path {
    Path::from(format!("objects/{}/{}", &id[..2.min(id.len())], id))
}

impl Blobs {
    /// Objects as files under `root`, committed by hard link.
    pub fn local(root: &FsPath) -> Result<Blobs, BlobError> {
        std::fs::create_dir_all(root)?;
        let fs = Arc::new(LocalFileSystem::new_with_prefix(root)?);
        Ok(Blobs {
            store: fs.clone(),
            local: Some(fs),
        })
    }

    /// Any store, committed by a streamed copy.
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Blobs {
        Blobs { store, local: None }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Makes the fully written, fsynced file at `file` the object `id`. Returns `false` when the
    /// object already existed (dedup); the caller still owns and removes `file`.
    pub async fn commit_file(&self, file: &FsPath, id: &str) -> Result<bool, BlobError> {
        let location = object_path(id);
        if let Some(fs) = &self.local {
            let target = fs.path_to_filesystem(&location)?;
            let source = file.to_path_buf();
            return tokio::task::spawn_blocking(move || link_into_place(&source, &target))
                .await
                .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        }
        match self.store.head(&location).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let mut upload = self.store.put_multipart(&location).await?;
        let mut f = tokio::fs::File::open(file).await?;
        loop {
            let mut buf = Vec::with_capacity(PART_SIZE_BYTES);
            let n = (&mut f)
                .take(PART_SIZE_BYTES as u64)
                .read_to_end(&mut buf)
                .await?;
            if n == 0 {
                break;
            }
            if let Err(e) = upload.put_part(PutPayload::from(buf)).await {
                let _ = upload.abort().await;
                return Err(e.into());
            }
        }
        upload.complete().await?;
        Ok(true)
    }

    pub async fn exists(&self, id: &str) -> Result<bool, BlobError> {
        match self.store.head(&object_path(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's bytes (or `range` of them) as a stream of large blocks. A local store is
    /// read straight from its file in blocks of [`READ_BLOCK_BYTES`] (object_store's local
    /// stream hands over 8 KiB at a time, one blocking-thread hop each, which made a download
    /// cost far more CPU than the bytes); other stores stream as object_store gives them.
    pub async fn stream_range(
        &self,
        id: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<BlobStream>, BlobError> {
        let Some(fs) = &self.local else {
            return Ok(self.get_range(id, range).await?.map(|r| {
                Box::pin(futures_util::StreamExt::map(r.into_stream(), |c| {
                    c.map_err(std::io::Error::other)
                })) as BlobStream
            }));
        };
        let path = fs.path_to_filesystem(&object_path(id))?;
        let opened = tokio::task::spawn_blocking(
            move || -> std::io::Result<Option<(std::fs::File, u64, u64)>> {
                use std::io::Seek;
                let mut f = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let size = f.metadata()?.len();
                let (start, end) = match &range {
                    Some(r) => (r.start.min(size), r.end.min(size)),
                    None => (0, size),
                };
                f.seek(std::io::SeekFrom::Start(start))?;
                Ok(Some((f, start, end)))
            },
        )
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        let Some((file, start, end)) = opened else {
            return Ok(None);
        };
        let state = (Some(file), end - start);
        let stream = futures_util::stream::unfold(state, |(file, left)| async move {
            let file = file?;
            if left == 0 {
                return None;
            }
            let want = left.min(READ_BLOCK_BYTES as u64) as usize;
            let read = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut file = file;
                let mut buf = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    match file.read(&mut buf[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(got);
                Ok((file, buf))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match read {
                Ok((_, buf)) if buf.is_empty() => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the object is shorter than its size",
                    )),
                    (None, 0),
                )),
                Ok((file, buf)) => {
                    let n = buf.len() as u64;
                    Some((Ok(bytes::Bytes::from(buf)), (Some(file), left - n)))
                }
                Err(e) => Some((Err(e), (None, 0))),
            }
        });
        Ok(Some(Box::pin(stream)))
    }

    pub async fn get(&self, id: &str) -> Result<Option<GetResult>, BlobError> {
        self.get_range(id, None).await
    }

    /// The object, or with `range` only those bytes (a range past the end is cut at the end;
    /// the caller keeps it inside the object).
    pub async fn get_range(
        &self,
        id: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<GetResult>, BlobError> {
        let options = object_store::GetOptions::new().with_range(range);
        match self.store.get_opts(&object_path(id), options).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Hard link, then fsync the directory so the new name survives a power cut.
fn link_into_place(source: &FsPath, target: &FsPath) -> Result<bool, BlobError> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    match std::fs::hard_link(source, target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    //! The conformance suite every blob backend must pass.
    use super::*;
    use futures_util::StreamExt;

    async fn read_all(b: &Blobs, id: &str) -> Option<Vec<u8>> {
        let r = b.get(id).await.unwrap()?;
        let mut out = Vec::new();
        let mut s = r.into_stream();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        Some(out)
    }

    async fn conformance(b: Blobs) {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(PART_SIZE_BYTES + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        for (name, bytes) in [
            ("empty", Vec::new()),
            ("small", b"hello".to_vec()),
            ("big", big),
        ] {
            let id = blake3::hash(&bytes).to_hex().to_string();
            let file = dir.path().join(name);
            std::fs::write(&file, &bytes).unwrap();
            assert!(!b.exists(&id).await.unwrap());
            assert_eq!(read_all(&b, &id).await, None);
            assert!(
                b.commit_file(&file, &id).await.unwrap(),
                "{name}: first commit stores"
            );
            assert!(
                !b.commit_file(&file, &id).await.unwrap(),
                "{name}: second commit dedups"
            );
            // The source may go away once committed: the object must not depend on it.
            std::fs::remove_file(&file).unwrap();
            assert!(b.exists(&id).await.unwrap());
            assert_eq!(
                read_all(&b, &id).await.as_deref(),
                Some(&bytes[..]),
                "{name}"
            );
            if bytes.len() > 3 {
                let n = bytes.len() as u64;
                for range in [1..3, 2..n, n - 1..n] {
                    let r = b
                        .get_range(&id, Some(range.clone()))
                        .await
                        .unwrap()
                        .unwrap();
                    let got = r.bytes().await.unwrap();
                    let want = &bytes[range.start as usize..range.end as usize];
                    assert_eq!(&got[..], want, "{name} {range:?}");
                    let streamed = stream_all(&b, &id, Some(range.clone())).await;
                    assert_eq!(streamed.as_deref(), Some(want), "{name} {range:?} streamed");
                }
            }
            assert_eq!(
                stream_all(&b, &id, None).await.as_deref(),
                Some(&bytes[..]),
                "{name} streamed"
            );
        }
        assert_eq!(stream_all(&b, &"0".repeat(64), None).await, None);
    }

    async fn stream_all(
        b: &Blobs,
        id: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Option<Vec<u8>> {
        let mut s = b.stream_range(id, range).await.unwrap()?;
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        Some(out)
    }

    #[tokio::test]
    async fn local_hard_link_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(Blobs::local(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn local_copy_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        conformance(Blobs::from_store(Arc::new(fs))).await;
    }

    #[tokio::test]
    async fn in_memory_conforms() {
        conformance(Blobs::from_store(Arc::new(
            object_store::memory::InMemory::new(),
        )))
        .await;
    }
}
