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
                }
            }
        }
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
