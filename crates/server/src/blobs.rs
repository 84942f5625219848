//! Finished objects, content-addressed by BLAKE3, behind `object_store`.
//!
//! Any `ObjectStore` works: the local filesystem (the default), an S3 bucket, memory in tests.
//! When the store is the local filesystem on the same volume as the partial uploads, a completed
//! partial file is hard-linked into place instead of copied: no second write of a 2 GB upload,
//! and the link either exists whole or not at all. Elsewhere the file is streamed to the store
//! (one `put` when small, a multipart upload in parts otherwise), never read whole into memory.
//! The conformance suite at the bottom runs against each of these paths.

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::BytesMut;
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetResult, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

/// Part size for the streamed copy; above S3's 5 MiB minimum part size. Also the largest file
/// stored with one `put` (one request, held in memory once).
const PART_SIZE_BYTES: usize = 16 << 20;
/// S3 takes at most this many parts: a file larger than this many parts gets larger parts.
const MAX_PARTS: u64 = 10_000;
/// Parts uploading at once for one object: the next part is read from the disk while the last
/// one travels, and one commit holds at most three parts in memory.
const PARTS_IN_FLIGHT: usize = 2;
/// How much one read of the partial file takes while streaming it to the store.
const COPY_READ_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Set when `store` is this local filesystem and hard links may replace copies.
    local: Option<Arc<LocalFileSystem>>,
    /// Set for a remote (S3) store: its multipart calls, which unfinished uploads use directly
    /// (object_store's `PrefixStore` does not pass them on, so the prefix is added here).
    multipart: Option<Multipart>,
}

#[derive(Clone)]
struct Multipart {
    store: Arc<dyn MultipartStore>,
    prefix: Option<String>,
}

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipart")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// S3's limit for one `CopyObject`: a larger object is copied by streaming it.
const COPY_LIMIT_BYTES: u64 = 5 << 30;

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
            multipart: None,
        })
    }

    /// Any store, committed by a streamed copy.
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Blobs {
        Blobs {
            store,
            local: None,
            multipart: None,
        }
    }

    /// A remote store (`store`, already under `prefix`) whose multipart calls go to `multipart`
    /// (the same store without the prefix): unfinished uploads keep their bytes in it.
    pub fn remote(
        store: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        prefix: Option<String>,
    ) -> Blobs {
        Blobs {
            store,
            local: None,
            multipart: Some(Multipart {
                store: multipart,
                prefix,
            }),
        }
    }

    /// True when unfinished uploads keep their bytes in this store (see `uploads::remote`).
    pub fn is_remote(&self) -> bool {
        self.multipart.is_some()
    }

    fn mpu(&self) -> Result<&Arc<dyn MultipartStore>, BlobError> {
        let m = self
            .multipart
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the store has no multipart uploads"))?;
        Ok(&m.store)
    }

    fn mpu_path(&self, key: &str) -> Path {
        match self.multipart.as_ref().and_then(|m| m.prefix.as_deref()) {
            Some(p) => Path::from(format!("{p}/{key}")),
            None => Path::from(key),
        }
    }

    /// Writes `bytes` at `key` (one request).
    pub async fn put_key(&self, key: &str, bytes: bytes::Bytes) -> Result<(), BlobError> {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The whole object at `key` (tail pieces: at most one part).
    pub async fn get_key(&self, key: &str) -> Result<bytes::Bytes, BlobError> {
        Ok(self.store.get(&Path::from(key)).await?.bytes().await?)
    }

    /// The object at `key` as a stream.
    pub async fn stream_key(&self, key: &str) -> Result<BlobStream, BlobError> {
        let r = self.store.get(&Path::from(key)).await?;
        Ok(Box::pin(futures_util::StreamExt::map(
            r.into_stream(),
            |c| c.map_err(std::io::Error::other),
        )))
    }

    /// The size of the object at `key`, `None` when there is none.
    pub async fn size_of_key(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match self.store.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the object at `key`; one already gone is fine.
    pub async fn delete_key(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn create_multipart(&self, key: &str) -> Result<String, BlobError> {
        let m = self.mpu()?;
        Ok(m.create_multipart(&self.mpu_path(key)).await?)
    }

    /// Uploads part `idx` (0-based) of multipart upload `id` at `key`; answers its ETag.
    pub async fn put_part(
        &self,
        key: &str,
        id: &str,
        idx: usize,
        bytes: bytes::Bytes,
    ) -> Result<String, BlobError> {
        let m = self.mpu()?;
        let id = id.to_string();
        let part = m
            .put_part(&self.mpu_path(key), &id, idx, PutPayload::from(bytes))
            .await?;
        Ok(part.content_id)
    }

    pub async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: &[String],
    ) -> Result<(), BlobError> {
        let m = self.mpu()?;
        let parts = parts
            .iter()
            .map(|p| PartId {
                content_id: p.clone(),
            })
            .collect();
        m.complete_multipart(&self.mpu_path(key), &id.to_string(), parts)
            .await?;
        Ok(())
    }

    /// Aborts multipart upload `id` at `key`; one already gone is fine.
    pub async fn abort_multipart(&self, key: &str, id: &str) -> Result<(), BlobError> {
        let m = self.mpu()?;
        match m
            .abort_multipart(&self.mpu_path(key), &id.to_string())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the object at `key` (`size` bytes) the object `id`, unless that exists already
    /// (the same id is the same bytes). A server-side copy; above S3's 5 GiB copy limit a
    /// streamed one. Answers whether it wrote the object.
    pub async fn copy_key_to_object(
        &self,
        key: &str,
        size: u64,
        id: &str,
    ) -> Result<bool, BlobError> {
        if self.exists(id).await? {
            return Ok(false);
        }
        let target = object_path(id);
        if size <= COPY_LIMIT_BYTES {
            self.store.copy(&Path::from(key), &target).await?;
            return Ok(true);
        }
        let upload = self.store.put_multipart(&target).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes(size));
        let mut source = self.stream_key(key).await?;
        let sent: Result<(), BlobError> = async {
            while let Some(chunk) = futures_util::StreamExt::next(&mut source).await {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(&chunk?);
            }
            Ok(())
        }
        .await;
        if let Err(e) = sent {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(object = %target, error = %abort, "cannot abort a multipart upload");
            }
            return Err(e);
        }
        writer.finish().await?;
        Ok(true)
    }

    /// Stores `bytes` (all of an object, at most one part) as the object `id` unless it exists.
    pub async fn put_object(&self, id: &str, bytes: bytes::Bytes) -> Result<bool, BlobError> {
        if self.exists(id).await? {
            return Ok(false);
        }
        self.store
            .put(&object_path(id), PutPayload::from(bytes))
            .await?;
        Ok(true)
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Every object id in the store, sorted (a listing: for audits and tests, never for
    /// deciding what an upload holds).
    pub async fn object_ids(&self) -> Result<Vec<String>, BlobError> {
        let listed: Vec<object_store::ObjectMeta> =
            futures_util::TryStreamExt::try_collect(self.store.list(Some(&Path::from("objects"))))
                .await?;
        let mut ids: Vec<String> = listed
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Makes the fully written, fsynced file at `file` the object `id`. Returns `false` when the
    /// object already existed (dedup: the same id is the same bytes, so there is nothing to
    /// write); the caller still owns and removes `file`. When this returns, the object is
    /// durable in the store.
    pub async fn commit_file(&self, file: &FsPath, id: &str) -> Result<bool, BlobError> {
        let location = object_path(id);
        if let Some(fs) = &self.local {
            let target = fs.path_to_filesystem(&location)?;
            let source = file.to_path_buf();
            return tokio::task::spawn_blocking(move || link_into_place(&source, &target))
                .await
                .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        }
        if self.exists(id).await? {
            return Ok(false);
        }
        let size = tokio::fs::metadata(file).await?.len();
        if size <= PART_SIZE_BYTES as u64 {
            let bytes = tokio::fs::read(file).await?;
            self.store.put(&location, PutPayload::from(bytes)).await?;
            return Ok(true);
        }
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes(size));
        let mut f = tokio::fs::File::open(file).await?;
        let sent: Result<(), BlobError> = async {
            loop {
                // Back pressure: at most PARTS_IN_FLIGHT parts uploading while the next fills.
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                let mut block = BytesMut::with_capacity(COPY_READ_BYTES);
                while block.len() < COPY_READ_BYTES {
                    if f.read_buf(&mut block).await? == 0 {
                        break;
                    }
                }
                if block.is_empty() {
                    return Ok(());
                }
                writer.put(block.freeze());
            }
        }
        .await;
        if let Err(e) = sent {
            // Nothing of a half-sent object may stay billed in the bucket.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(object = %location, error = %abort, "cannot abort a multipart upload");
            }
            return Err(e);
        }
        // `finish` sends the last part, waits for all and completes (aborting on failure).
        writer.finish().await?;
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

/// The part size for a multipart upload of `size` bytes: [`PART_SIZE_BYTES`], or more (whole
/// MiB) when that would take more than [`MAX_PARTS`] parts (above 156 GiB).
fn part_bytes(size: u64) -> usize {
    let needed = size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    usize::try_from(needed).map_or(usize::MAX, |n| n.max(PART_SIZE_BYTES))
}

/// Hard link, then fsync the directory so the new name survives a power cut. A store folder on
/// another file system than the partial file gets a copy instead (see [`copy_into_place`]).
fn link_into_place(source: &FsPath, target: &FsPath) -> Result<bool, BlobError> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    match std::fs::hard_link(source, target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            return copy_into_place(source, target, dir);
        }
        Err(e) => return Err(e.into()),
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

/// Copies `source` to a temporary name beside `target`, fsyncs it, then links it into place:
/// the object appears whole or not at all, and an existing one is never replaced.
fn copy_into_place(source: &FsPath, target: &FsPath, dir: &FsPath) -> Result<bool, BlobError> {
    if target.exists() {
        return Ok(false);
    }
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other("object path has no name"))?
        .to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let linked = (|| {
        std::fs::copy(source, &temp)?;
        std::fs::File::open(&temp)?.sync_all()?;
        match std::fs::hard_link(&temp, target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&temp);
    let linked = linked?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(linked)
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

    #[test]
    fn parts_stay_within_s3s_count() {
        assert_eq!(part_bytes(PART_SIZE_BYTES as u64 + 1), PART_SIZE_BYTES);
        assert_eq!(
            part_bytes(MAX_PARTS * PART_SIZE_BYTES as u64),
            PART_SIZE_BYTES
        );
        for size in [MAX_PARTS * PART_SIZE_BYTES as u64 + 1, 1 << 40, 5 << 40] {
            let part = part_bytes(size) as u64;
            assert!(size.div_ceil(part) <= MAX_PARTS, "{size}: {part}");
            assert_eq!(part % (1 << 20), 0);
        }
    }

    /// A store folder on another file system than the partial files (here /dev/shm, when it
    /// is one) gets a copy, with the same answers as a link.
    #[tokio::test]
    async fn local_across_file_systems_conforms() {
        use std::os::unix::fs::MetadataExt;
        let shm = FsPath::new("/dev/shm");
        let temp = std::env::temp_dir();
        let (Ok(a), Ok(b)) = (std::fs::metadata(shm), std::fs::metadata(&temp)) else {
            eprintln!("skipping: no /dev/shm");
            return;
        };
        if a.dev() == b.dev() {
            eprintln!(
                "skipping: /dev/shm and {} are one file system",
                temp.display()
            );
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        conformance(Blobs::local(dir.path()).unwrap()).await;
        // No temporary copy is left beside the objects.
        let leftovers: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    fn walk(dir: &FsPath) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// The same suite on a real S3 store (`FERRY_TEST_S3_URL`, set by `scripts/scaleout
    /// start`), under a prefix of its own that is emptied again afterwards.
    #[tokio::test]
    async fn s3_conforms() {
        let base = match std::env::var("FERRY_TEST_S3_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but FERRY_TEST_S3_URL is not: the scale-out engines are missing \
                     (start them with `scripts/scaleout start DIR`)"
                );
                eprintln!("skipping s3_conforms: FERRY_TEST_S3_URL is unset");
                return;
            }
        };
        let url = format!(
            "{}/test-{}",
            base.trim_end_matches('/'),
            uuid::Uuid::new_v4().simple()
        );
        let b = crate::StoreUrl::parse(&url)
            .unwrap()
            .open(None)
            .await
            .unwrap();
        conformance(b.clone()).await;
        let store = b.store();
        let listed: Vec<object_store::ObjectMeta> =
            futures_util::TryStreamExt::try_collect(store.list(None))
                .await
                .unwrap();
        let mut keys: Vec<Path> = listed.into_iter().map(|m| m.location).collect();
        keys.sort();
        for k in &keys {
            store.delete(k).await.unwrap();
        }
        // Exactly the three objects the suite stores: no probe object, no stray part.
        let big: Vec<u8> = (0..(PART_SIZE_BYTES + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut want: Vec<Path> = [&b""[..], b"hello", &big]
            .iter()
            .map(|d| object_path(&blake3::hash(d).to_hex()))
            .collect();
        want.sort();
        assert_eq!(keys, want, "{url}");
    }

    #[tokio::test]
    async fn in_memory_conforms() {
        conformance(Blobs::from_store(Arc::new(
            object_store::memory::InMemory::new(),
        )))
        .await;
    }
}
