//! Uploads in progress, independent of the protocol that carries them.
//!
//! Write path of one append (the contract every protocol handler relies on):
//! 1. take the upload's lock (a second concurrent append is refused, never interleaved);
//! 2. cut the partial file back to the recorded offset (bytes past it were never acknowledged);
//! 3. stream the body into the file in 1 MiB blocks on a blocking thread, while a second one
//!    hashes them (the upload's hasher may finish after the append is answered: only the
//!    completing append waits for it);
//! 4. `fsync` the file, check the chunk digest (a mismatch cuts the chunk off again);
//! 5. commit the new offset in SQL; only now is the offset answered to the client;
//! 6. on completion, hash (or reuse the running hash), link the file into the blob store,
//!    commit object + receipt in one SQL transaction, then remove the partial file.
//!
//! A crash between any two steps leaves the SQL offset at or before the fsynced bytes, and the
//! partial file is removed only after the object is durable.
//!
//! That is the local store's path. With a remote (S3) store the bytes go to the bucket instead
//! and any instance continues any upload: see `uploads/remote.rs`.

mod remote;
pub use remote::{PART as REMOTE_PART_BYTES, RemoteConfig};

/// How long a plain upload restarted under its `Idempotency-Key` waits for the request it
/// replaces to end (it was cut; its handler ends when the server reads the cut).
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::Write as _;

use crate::blobs::Blobs;
use crate::error::ApiError;
use crate::meta::{Meta, ObjectRow, UploadRow};
use crate::sf::ReprDigests;

/// Size of the blocks handed to the writer thread.
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks queued for the writer thread of one append.
const QUEUE_BLOCKS: usize = 8;
/// The writer starts writeback after this many bytes, so the disk works while bytes arrive
/// and the fsync at the end of an append finds at most this much left to write (4 MiB kept a
/// 64 MiB-chunked upload at `curl -T`'s speed on the bench machine; 16 MiB cost ~7 ms per
/// chunk boundary, 2 MiB no better than 4).
const SYNC_EVERY_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_size_bytes: u64,
    pub max_append_size_bytes: u64,
    /// An unfinished upload untouched this long expires.
    pub max_age: Duration,
    /// A request body that sends nothing for this long is cut off.
    pub body_idle_timeout: Duration,
    /// How long an upload's lease holds without renewal (remote store: one writer per upload
    /// across instances; a holder renews it every third of this while it works).
    pub lease_ttl: Duration,
}

/// What a client says one request's body must hash to.
#[derive(Debug, Clone)]
pub enum ChunkCheck {
    /// `Content-Digest: sha-256=…` (400 on mismatch).
    ContentDigestSha256([u8; 32]),
    /// tus `Upload-Checksum` (460 on mismatch).
    TusSha256([u8; 32]),
    TusSha1([u8; 20]),
    TusMd5([u8; 16]),
}

#[derive(Debug, Clone)]
pub struct Append {
    pub offset_bytes: u64,
    /// The client says this request ends the upload.
    pub complete: bool,
    /// `Upload-Length` sent with this request (tus deferred length, or the draft's repeat).
    pub length_bytes: Option<u64>,
    pub check: Option<ChunkCheck>,
    /// Draft clients get 409 for a busy upload, tus clients 423.
    pub ietf: bool,
    /// `Repr-Digest` (SHA-256 and/or BLAKE3 of the whole upload) sent with this append:
    /// checked against the ones given at creation, and against the bytes when it completes.
    pub repr: ReprDigests,
}

/// What a creation yields: a new upload, or the one its idempotency key already names.
#[derive(Debug)]
pub enum Created {
    /// A new upload, with its slot already held: nobody else can have touched it, so its
    /// first append ([`Engine::append_created`]) needs no second read of the row.
    New(UploadRow, Fresh),
    Existing(UploadRow),
}

/// The slot of an upload this request just created, taken before its row existed.
#[derive(Debug)]
pub struct Fresh {
    slot: tokio::sync::OwnedMutexGuard<Slot>,
    /// The creation found that its user has no quota: completion need not read the user again
    /// before it stores the blob (its transaction checks the quota in any case).
    quota_free: bool,
}

/// An `Idempotency-Key` as stored: scoped to the request's credentials, so two devices (two
/// tokens) that happen to pick the same key never meet. A hash, so no token is stored.
pub fn scoped_key(authorization: Option<&[u8]>, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(authorization.unwrap_or_default());
    h.update([0u8]);
    h.update(key.as_bytes());
    hex(&h.finalize())
}

#[derive(Debug)]
pub enum Outcome {
    Progress(UploadRow),
    Complete(UploadRow, ObjectRow),
}

/// Running hashes of the bytes `0..offset_bytes` of one upload, kept in memory between appends
/// so completion need not re-read the file. Lost on restart, then rebuilt from the file.
#[derive(Debug, Clone)]
struct Running {
    offset_bytes: u64,
    blake3: blake3::Hasher,
    sha256: Sha256,
}

impl Running {
    fn new() -> Running {
        Running {
            offset_bytes: 0,
            blake3: blake3::Hasher::new(),
            sha256: Sha256::new(),
        }
    }
}

/// The running hashes as the last append left them, answered by that append's hasher, which
/// may work through its last blocks after the append was answered (a chunk boundary then waits
/// for the disk, never for the hashes). `None`: lost (a failure), completion reads the file.
type PendingHashes = tokio::sync::oneshot::Receiver<Option<Running>>;

/// What an append tells its hasher.
enum HashInput {
    Block(Bytes),
    /// The append is committed: its bytes count. Without it (an append that failed or was cut
    /// back), the hasher answers the hashes as they were before the append.
    Keep,
}

/// Starts the hasher of one append that begins at `start`. It takes the running hashes of
/// `0..start` (waiting for the previous append's hasher if needed; hashes of another offset
/// are dropped, and completion then reads the file again) and answers the hashes after the
/// append, or before it if the append was not kept.
fn spawn_hasher(
    previous: Option<PendingHashes>,
    start: u64,
) -> (tokio::sync::mpsc::Sender<HashInput>, PendingHashes) {
    let (to_hasher, mut inputs) = tokio::sync::mpsc::channel::<HashInput>(QUEUE_BLOCKS);
    let (done, answer) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let before = if start == 0 {
            Some(Running::new())
        } else {
            previous
                .and_then(|p| p.blocking_recv().ok().flatten())
                .filter(|r| r.offset_bytes == start)
        };
        let mut after = before.clone();
        let mut keep = false;
        while let Some(input) = inputs.blocking_recv() {
            match input {
                HashInput::Block(b) => {
                    if let Some(r) = &mut after {
                        r.blake3.update(&b);
                        r.sha256.update(&b);
                        r.offset_bytes += b.len() as u64;
                    }
                }
                HashInput::Keep => keep = true,
            }
        }
        let _ = done.send(if keep { after } else { before });
    });
    (to_hasher, answer)
}

#[derive(Debug, Default)]
struct Slot {
    running: Option<PendingHashes>,
}

#[derive(Debug)]
pub struct Engine {
    pub meta: Meta,
    pub blobs: Blobs,
    partial_dir: PathBuf,
    pub limits: Limits,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Set when the store is remote: unfinished uploads keep their bytes there (see
    /// `uploads/remote.rs`) instead of in `partial_dir`.
    remote: Option<RemoteConfig>,
    /// The append running on each upload here, to ask it to stop and to see how many bytes
    /// it received.
    in_flight: InFlightMap,
}

/// The appends running on this instance, by upload id (see `Engine::in_flight`).
pub(crate) type InFlightMap = Arc<Mutex<HashMap<String, Arc<RunningAppend>>>>;

/// One append running on a remote store.
#[derive(Debug, Default)]
pub(crate) struct RunningAppend {
    /// Bytes received so far.
    pub(crate) received_bytes: std::sync::atomic::AtomicU64,
    /// Wakes the append to stop as if its client had gone: a newer request for the upload
    /// asked (a permit is kept when the append is between reads).
    pub(crate) stop: tokio::sync::Notify,
}

/// Asks the append running on upload `id` here, if any, to stop (see [`RunningAppend::stop`]).
pub(crate) fn request_stop(in_flight: &InFlightMap, id: &str) {
    let map = in_flight.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(running) = map.get(id) {
        running.stop.notify_one();
    }
}

/// Publishes a running append in `Engine::in_flight` while it runs.
pub(crate) struct InFlight<'a> {
    engine: &'a Engine,
    id: String,
    pub(crate) running: Arc<RunningAppend>,
}

impl<'a> InFlight<'a> {
    pub(crate) fn new(engine: &'a Engine, id: &str) -> InFlight<'a> {
        let running = Arc::new(RunningAppend::default());
        let mut map = engine.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id.to_string(), running.clone());
        InFlight {
            engine,
            id: id.to_string(),
            running,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self
            .engine
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only this append's entry (a newer one may have replaced it after a stop).
        if map
            .get(&self.id)
            .is_some_and(|r| Arc::ptr_eq(r, &self.running))
        {
            map.remove(&self.id);
        }
    }
}

impl InFlight<'_> {
    /// The body's next chunk, counted in `received_bytes` (and published); `Ok(None)` at its
    /// end. An error ends the append as a cut: the client went quiet past `idle`, cut the
    /// body, or a newer request for this upload asked this append to stop.
    pub(crate) async fn next_chunk(
        &self,
        stream: &mut axum::body::BodyDataStream,
        idle: Duration,
        received_bytes: &mut u64,
    ) -> Result<Option<Bytes>, ApiError> {
        let next = tokio::select! {
            () = self.running.stop.notified() => {
                return Err(ApiError::BodyInterrupted(
                    "stopped for a newer request for this upload".into(),
                ));
            }
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        match next {
            Err(_) => Err(ApiError::Timeout),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(ApiError::BodyInterrupted(e.to_string())),
            Ok(Some(Ok(c))) => {
                *received_bytes += c.len() as u64;
                self.running
                    .received_bytes
                    .store(*received_bytes, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(c))
            }
        }
    }
}

/// How long a request for an upload another request is appending to waits for that one to
/// stop (it was asked to) before it is answered busy.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting request asks again (see [`STOP_WAIT`]).
const STOP_RETRY: Duration = Duration::from_millis(100);

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Upload ids are 32 lowercase hex digits; anything else (`..`, `/`, …) is no upload at all.
pub fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn valid_object_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) enum ChunkHasher {
    Sha256(Sha256),
    Sha1(Sha1),
    Md5(Md5),
}

impl ChunkHasher {
    fn new(c: &ChunkCheck) -> ChunkHasher {
        match c {
            ChunkCheck::ContentDigestSha256(_) | ChunkCheck::TusSha256(_) => {
                ChunkHasher::Sha256(Sha256::new())
            }
            ChunkCheck::TusSha1(_) => ChunkHasher::Sha1(Sha1::new()),
            ChunkCheck::TusMd5(_) => ChunkHasher::Md5(Md5::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            ChunkHasher::Sha256(h) => h.update(b),
            ChunkHasher::Sha1(h) => h.update(b),
            ChunkHasher::Md5(h) => h.update(b),
        }
    }
    fn matches(self, c: &ChunkCheck) -> bool {
        let got: Vec<u8> = match self {
            ChunkHasher::Sha256(h) => h.finalize().to_vec(),
            ChunkHasher::Sha1(h) => h.finalize().to_vec(),
            ChunkHasher::Md5(h) => h.finalize().to_vec(),
        };
        let want: &[u8] = match c {
            ChunkCheck::ContentDigestSha256(d) | ChunkCheck::TusSha256(d) => d,
            ChunkCheck::TusSha1(d) => d,
            ChunkCheck::TusMd5(d) => d,
        };
        got == want
    }
}

/// The state moved into the blocking writer for each block.
struct Sink {
    file: std::fs::File,
    chunk: Option<ChunkHasher>,
}

impl Sink {
    fn write_block(mut self, block: &[u8]) -> std::io::Result<Sink> {
        self.file.write_all(block)?;
        if let Some(c) = &mut self.chunk {
            c.update(block);
        }
        Ok(self)
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("writer task: {e}")))?
        .map_err(ApiError::from)
}

impl Engine {
    pub fn new(
        meta: Meta,
        blobs: Blobs,
        partial_dir: PathBuf,
        limits: Limits,
    ) -> std::io::Result<Engine> {
        std::fs::create_dir_all(&partial_dir)?;
        let remote = blobs.is_remote().then(|| RemoteConfig {
            // Positive, so PostgreSQL's advisory-lock view shows it back unchanged.
            instance_key: (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64,
            lease_ttl: limits.lease_ttl,
        });
        Ok(Engine {
            meta,
            blobs,
            partial_dir,
            limits,
            slots: Mutex::new(HashMap::new()),
            remote,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Bytes the append running on upload `id` has received so far (tests wait on it).
    pub fn bytes_in_flight(&self, id: &str) -> Option<u64> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .map(|c| c.received_bytes.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The appends running here (the listener for other instances' stop requests holds it).
    pub(crate) fn in_flight(&self) -> InFlightMap {
        self.in_flight.clone()
    }

    /// This instance's lease identity when the store is remote.
    pub fn instance_key(&self) -> Option<i64> {
        self.remote.as_ref().map(|r| r.instance_key)
    }

    fn partial_path(&self, id: &str) -> PathBuf {
        self.partial_dir.join(id)
    }

    fn slot(&self, id: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(id.to_string()).or_default().clone()
    }

    fn forget_slot(&self, id: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(id);
    }

    pub fn expires_from(&self, now_unix_ms: i64) -> i64 {
        now_unix_ms.saturating_add(self.limits.max_age.as_millis() as i64)
    }

    /// Creates an empty upload: the partial file exists (and its name is durable) before the
    /// row that points at it. With an idempotency key (already scoped, see [`scoped_key`]) that
    /// an upload of the same shape holds, that upload is the answer instead: a client that
    /// never saw its first creation's answer gets the same upload, finished or to resume.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        user_id: i64,
        protocol: &str,
        length_bytes: Option<u64>,
        metadata_json: String,
        metadata_raw: Option<String>,
        expected: ReprDigests,
        idempotency_key: Option<String>,
    ) -> Result<Created, ApiError> {
        if let Some(key) = &idempotency_key
            && let Some(row) = self.meta.upload_by_key(user_id, key).await?
        {
            let hex_of = |d: Option<[u8; 32]>| d.map(|d| hex(&d));
            let agrees =
                |given: Option<String>, held: &Option<String>| given.is_none() || given == *held;
            if row.protocol != protocol
                || length_bytes.is_some() && length_bytes != row.length_bytes
                || !agrees(hex_of(expected.sha256), &row.expected_sha256_hex)
                || !agrees(hex_of(expected.blake3), &row.expected_blake3_hex)
            {
                return Err(ApiError::IdempotencyKeyReused);
            }
            let expired = row.object_id.is_none() && row.expires_unix_ms <= now_unix_ms();
            if row.object_id.is_some() || !(expired || protocol == "plain") {
                return Ok(Created::Existing(row));
            }
            // A plain upload cannot resume, and an expired one is as good as gone: start over
            // under the same key (an append still running on it answers "busy").
            // A client retrying after a cut usually arrives before this server has noticed that
            // the cut request's connection is gone (that request still holds the slot): wait a
            // little for it to let go rather than refuse the retry.
            let slot = self.slot(&row.id);
            let _guard = tokio::time::timeout(SLOT_WAIT, slot.lock_owned())
                .await
                .map_err(|_| ApiError::IdempotencyConflict)?;
            if self.remote.is_some() {
                // A request on another instance may still hold it: wait for its lease as the
                // slot was waited for.
                let deadline = tokio::time::Instant::now() + SLOT_WAIT;
                let lease = loop {
                    if let Some(l) = self.take_lease(&row.id).await? {
                        break l;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ApiError::IdempotencyConflict);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let discarded = self.discard_remote(&row.id, Some(lease.epoch)).await;
                self.release_lease(&row.id, lease).await;
                discarded?;
            } else {
                self.meta.delete_upload(&row.id).await?;
                let _ = tokio::fs::remove_file(self.partial_path(&row.id)).await;
            }
            self.forget_slot(&row.id);
        }
        if let Some(l) = length_bytes
            && l > self.limits.max_size_bytes
        {
            return Err(ApiError::TooLarge(format!(
                "Upload-Length {l} exceeds max-size {}",
                self.limits.max_size_bytes
            )));
        }
        let mut quota_free = false;
        if let Some(l) = length_bytes {
            let promised = expected.blake3.map(|d| hex(&d));
            quota_free = self.check_quota(user_id, l, promised.as_deref()).await?;
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        // Held from before the row exists until the creation's own append ends: a request
        // that finds the upload by its idempotency key meanwhile waits for it.
        let fresh = self
            .slot(&id)
            .try_lock_owned()
            .map_err(|_| ApiError::Internal("a new upload id is already in use".into()))?;
        let path = self.partial_path(&id);
        // Not fsynced here: an empty file holds nothing to lose. The first append that leaves
        // bytes behind an answered offset fsyncs the directory (see `append`), and an append
        // at offset 0 recreates a file that a crash took away. A remote store needs none: the
        // first append writes to the store.
        if self.remote.is_none() {
            run_blocking(move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map(drop)
            })
            .await?;
        }
        let now = now_unix_ms();
        let row = UploadRow {
            id: id.clone(),
            protocol: protocol.into(),
            offset_bytes: 0,
            length_bytes,
            metadata_json,
            metadata_raw,
            expected_sha256_hex: expected.sha256.map(|d| hex(&d)),
            expected_blake3_hex: expected.blake3.map(|d| hex(&d)),
            idempotency_key,
            object_id: None,
            created_unix_ms: now,
            expires_unix_ms: self.expires_from(now),
            user_id,
        };
        if let Err(e) = self.meta.create_upload(&row).await {
            // No row points at the file: take it away now (a full disk needs the room).
            let _ = tokio::fs::remove_file(self.partial_path(&id)).await;
            if let sqlx::Error::Database(d) = &e
                && d.is_unique_violation()
            {
                // The same key, created by a request running beside this one.
                return Err(ApiError::IdempotencyConflict);
            }
            return Err(e.into());
        }
        Ok(Created::New(
            row,
            Fresh {
                slot: fresh,
                quota_free,
            },
        ))
    }

    /// Refuses `needed_bytes` more for `user_id` when they do not fit the user's quota
    /// (413, `Ferry-Problem: quota-exceeded`). An object the user already owns (a promised
    /// BLAKE3) adds nothing. Completion checks again, in the transaction that adds the object.
    /// `true`: the user has no quota at all.
    pub async fn check_quota(
        &self,
        user_id: i64,
        needed_bytes: u64,
        promised_blake3: Option<&str>,
    ) -> Result<bool, ApiError> {
        let Some(user) = self.meta.user(user_id).await? else {
            return Ok(true);
        };
        let Some(quota_bytes) = user.quota_bytes else {
            return Ok(true);
        };
        if user.used_bytes.saturating_add(needed_bytes) <= quota_bytes {
            return Ok(false);
        }
        if let Some(b) = promised_blake3
            && self.meta.owned_object(user_id, b).await?.is_some()
        {
            return Ok(false);
        }
        Err(ApiError::QuotaExceeded {
            used_bytes: user.used_bytes,
            quota_bytes,
            needed_bytes,
        })
    }

    /// The upload as `user_id` may see it: missing, another user's, expired and malformed ids
    /// are errors (another user's upload is answered as missing, whatever its state).
    pub async fn get(&self, id: &str, user_id: i64) -> Result<UploadRow, ApiError> {
        if !valid_upload_id(id) {
            return Err(ApiError::NotFound);
        }
        let row = self
            .meta
            .upload(id)
            .await?
            .filter(|r| r.user_id == user_id)
            .ok_or(ApiError::NotFound)?;
        if row.object_id.is_none() && row.expires_unix_ms <= now_unix_ms() {
            return Err(ApiError::Gone);
        }
        Ok(row)
    }

    /// The upload after any append in flight has settled (bounded wait): a client resuming
    /// right after its connection dropped must see the bytes that connection delivered, not the
    /// offset from before the old request noticed the cut.
    pub async fn get_settled(&self, id: &str, user_id: i64) -> Result<UploadRow, ApiError> {
        let row = self.get(id, user_id).await?;
        if row.object_id.is_some() {
            return Ok(row);
        }
        let slot = self.slot(id);
        let _ = tokio::time::timeout(Duration::from_secs(2), slot.lock()).await;
        let row = self.get(id, user_id).await?;
        if self.remote.is_some()
            && row.object_id.is_none()
            && row.length_bytes == Some(row.offset_bytes)
        {
            // Every byte committed but no object: the completing instance died in between.
            // A client that sees the whole offset takes the upload as done, so finish it now.
            let _ = self.settle_remote(id).await;
            return self.get(id, user_id).await;
        }
        Ok(row)
    }

    pub async fn append(
        &self,
        id: &str,
        user_id: i64,
        req: Append,
        body: Body,
    ) -> Result<Outcome, ApiError> {
        self.get(id, user_id).await?;
        // A newer request takes over: the append running on the upload, here or (remote
        // store) on another instance, is asked to stop — it keeps what it received, as if its
        // client had gone: mostly it has, with a connection that would take minutes to time
        // out — and this one waits for it, a few seconds at most, before it is answered busy.
        let waited_until = tokio::time::Instant::now() + STOP_WAIT;
        let slot = self.slot(id);
        let slot = loop {
            match slot.clone().try_lock_owned() {
                Ok(slot) => break slot,
                // Asked again while waiting: the running append may not have been listening
                // yet (it registers once it holds the lease).
                Err(_) if tokio::time::Instant::now() < waited_until => {
                    request_stop(&self.in_flight, id);
                    let _ = tokio::time::timeout(STOP_RETRY, slot.clone().lock_owned()).await;
                }
                Err(_) => return Err(ApiError::Locked { ietf: req.ietf }),
            }
        };
        if self.remote.is_none() {
            return self.append_locked(id, req, body, slot, None).await;
        }
        // One writer across instances: the upload's lease, held until this request ends.
        let lease = loop {
            if let Some(lease) = self.take_lease(id).await? {
                break lease;
            }
            // Busy on a live instance, or finished (answered below as it always was), or gone.
            match self.meta.upload(id).await? {
                None => return Err(ApiError::Gone),
                Some(r) if r.object_id.is_some() => {
                    return self.append_locked(id, req, body, slot, None).await;
                }
                Some(_) if tokio::time::Instant::now() >= waited_until => {
                    return Err(ApiError::Locked { ietf: req.ietf });
                }
                Some(_) => {}
            }
            // Asked again each round: a request sent while the holder was not yet listening
            // (or its listener was reconnecting) is lost.
            if let Err(e) = self.meta.notify_stop(id).await {
                tracing::warn!(upload = %id, error = %e, "cannot ask another instance to stop");
            }
            tokio::time::sleep(STOP_RETRY).await;
        };
        let r = self.append_locked(id, req, body, slot, Some(&lease)).await;
        self.release_lease(id, lease).await;
        r
    }

    /// The first append of an upload this request created (its body came with the creation):
    /// the row is the one just written, under the slot held since before it existed. With a
    /// remote store the append takes the upload's lease like any other.
    pub async fn append_created(
        &self,
        row: UploadRow,
        fresh: Fresh,
        user_id: i64,
        req: Append,
        body: Body,
    ) -> Result<Outcome, ApiError> {
        if self.remote.is_some() {
            drop(fresh);
            return self.append(&row.id, user_id, req, body).await;
        }
        let id = row.id.clone();
        self.append_row(&id, row, req, body, fresh.slot, None, fresh.quota_free)
            .await
    }

    /// An append under the upload's slot (and, on a remote store, its lease).
    async fn append_locked(
        &self,
        id: &str,
        req: Append,
        body: Body,
        slot: tokio::sync::OwnedMutexGuard<Slot>,
        lease: Option<&remote::Lease>,
    ) -> Result<Outcome, ApiError> {
        // Re-read under the lock: another append may have finished in between.
        let row = self
            .meta
            .upload(id)
            .await?
            .map(Ok)
            .unwrap_or(Err(ApiError::Gone))?;
        self.append_row(id, row, req, body, slot, lease, false)
            .await
    }

    /// An append to `row`, read under the upload's slot (and lease). `quota_free`: this
    /// request already saw that the user has no quota.
    #[allow(clippy::too_many_arguments)]
    async fn append_row(
        &self,
        id: &str,
        row: UploadRow,
        req: Append,
        body: Body,
        mut slot: tokio::sync::OwnedMutexGuard<Slot>,
        lease: Option<&remote::Lease>,
        quota_free: bool,
    ) -> Result<Outcome, ApiError> {
        if let Some(object_id) = &row.object_id {
            // Finishing the same upload twice yields the same object: an empty append at the
            // end is answered as the first completion was.
            if req.offset_bytes == row.offset_bytes && body_is_empty(body).await? {
                let object = self.meta.object(object_id).await?.ok_or(ApiError::Gone)?;
                return Ok(Outcome::Complete(row, object));
            }
            return Err(ApiError::Completed);
        }
        let repr_sha256_hex = req.repr.sha256.map(|d| hex(&d));
        let repr_blake3_hex = req.repr.blake3.map(|d| hex(&d));
        let differs = |given: &Option<String>, expected: &Option<String>| matches!((given, expected), (Some(g), Some(e)) if g != e);
        if differs(&repr_sha256_hex, &row.expected_sha256_hex)
            || differs(&repr_blake3_hex, &row.expected_blake3_hex)
        {
            return Err(ApiError::DigestMismatch(
                "Repr-Digest differs from the one the upload was created with".into(),
            ));
        }
        if req.offset_bytes != row.offset_bytes {
            return Err(ApiError::OffsetMismatch {
                expected: row.offset_bytes,
                provided: req.offset_bytes,
            });
        }
        let length = match (row.length_bytes, req.length_bytes) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::InconsistentLength(format!(
                    "Upload-Length {b} differs from the upload's length {a}"
                )));
            }
            (Some(a), _) => Some(a),
            (None, Some(b)) => {
                if b < row.offset_bytes {
                    return Err(ApiError::InconsistentLength(format!(
                        "Upload-Length {b} is below the offset {}",
                        row.offset_bytes
                    )));
                }
                if b > self.limits.max_size_bytes {
                    return Err(ApiError::TooLarge(format!(
                        "Upload-Length {b} exceeds max-size"
                    )));
                }
                // A deferred length, declared now: the quota is checked as at creation.
                self.check_quota(row.user_id, b, row.expected_blake3_hex.as_deref())
                    .await?;
                Some(b)
            }
            (None, None) => None,
        };
        // The most this request may add, by length, max-size and max-append-size.
        let room_bytes = length
            .unwrap_or(self.limits.max_size_bytes)
            .min(self.limits.max_size_bytes)
            .saturating_sub(row.offset_bytes)
            .min(self.limits.max_append_size_bytes);

        if let Some(lease) = lease {
            let r = self
                .append_remote(
                    &mut slot,
                    lease,
                    row,
                    &req,
                    body,
                    length,
                    room_bytes,
                    (repr_sha256_hex, repr_blake3_hex),
                )
                .await;
            if matches!(r, Ok(Outcome::Complete(..))) {
                drop(slot);
                self.forget_slot(id);
            }
            return r;
        }
        let path = self.partial_path(id);
        let start = row.offset_bytes;
        let file = run_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(start == 0)
                .truncate(false)
                .open(&path)?;
            // Never zero-fill: a file shorter than an answered offset means lost bytes.
            if f.metadata()?.len() < start {
                return Err(std::io::Error::other(
                    "partial file shorter than its offset",
                ));
            }
            f.set_len(start)?;
            let mut f = f;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
            Ok(f)
        })
        .await
        .map_err(|e| match e {
            // The partial file vanished under a live row: treat as gone, not as a 500.
            ApiError::Internal(_) => ApiError::Gone,
            e => e,
        })?;
        let (to_hasher, hashed) = spawn_hasher(slot.running.take(), start);
        // Until this append is kept, the upload's hashes are what its hasher answers without
        // `Keep`: those of `0..start`.
        slot.running = Some(hashed);
        let sink = Sink {
            file,
            chunk: req.check.as_ref().map(ChunkHasher::new),
        };
        // The writer thread writes and flushes while the next blocks arrive, the hasher hashes
        // the same blocks beside it; each queue bounds what one append holds in memory to
        // QUEUE_BLOCKS MiB.
        let (to_writer, mut blocks) = tokio::sync::mpsc::channel::<Bytes>(QUEUE_BLOCKS);
        let writer = tokio::task::spawn_blocking(move || {
            let mut s = sink;
            let mut written = start;
            let mut flushed = start;
            while let Some(block) = blocks.blocking_recv() {
                written += block.len() as u64;
                s = s.write_block(&block)?;
                // Write behind as we go: waiting for the end would leave gigabytes dirty and
                // make the final fsync as long as the whole disk write.
                if written - flushed >= SYNC_EVERY_BYTES as u64 {
                    write_behind(&s.file, flushed, written - flushed)?;
                    flushed = written;
                }
            }
            Ok(s)
        });
        let mut received_bytes: u64 = 0;
        let mut block = BytesMut::with_capacity(BLOCK_BYTES);
        let mut stream = body.into_data_stream();
        let mut failure: Option<ApiError> = None;
        let in_flight = InFlight::new(self, id);
        loop {
            let idle = self.limits.body_idle_timeout;
            let chunk = match in_flight
                .next_chunk(&mut stream, idle, &mut received_bytes)
                .await
            {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if received_bytes > room_bytes {
                failure = Some(if length.is_some_and(|l| start + received_bytes > l) {
                    ApiError::InconsistentLength("body runs past Upload-Length".into())
                } else {
                    ApiError::TooLarge("body exceeds max-size or max-append-size".into())
                });
                break;
            }
            block.extend_from_slice(&chunk);
            if block.len() >= BLOCK_BYTES {
                let full = std::mem::replace(&mut block, BytesMut::with_capacity(BLOCK_BYTES));
                let full = full.freeze();
                if to_writer.send(full.clone()).await.is_err() {
                    // The writer stopped on an I/O error; joining it below reports that error.
                    break;
                }
                // A hasher that ended (it cannot, short of a panic) only costs completion a
                // second read of the file.
                let _ = to_hasher.send(HashInput::Block(full)).await;
            }
        }
        let tail = std::mem::take(&mut block).freeze();
        if !tail.is_empty() && to_writer.send(tail.clone()).await.is_ok() {
            let _ = to_hasher.send(HashInput::Block(tail)).await;
        }
        drop(to_writer);
        let sink = match join_sink(writer).await {
            Ok(s) => s,
            Err(e) => {
                // The write failed (a full disk): the chunk is not acknowledged, so give its
                // bytes back to the disk and keep the upload at its recorded offset.
                let path = self.partial_path(id);
                let _ = run_blocking(move || {
                    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                    f.set_len(start)?;
                    f.sync_data()
                })
                .await;
                return Err(e);
            }
        };
        let mut sink = sink;
        let new_offset = start + received_bytes;
        let (verdict, keep) = append_verdict(failure, &req, sink.chunk.take(), new_offset, length);
        if verdict.is_some() && !keep {
            // Discard the whole chunk: the file goes back to the acknowledged offset.
            let file = sink.file;
            run_blocking(move || {
                file.set_len(start)?;
                file.sync_data()
            })
            .await?;
            return Err(verdict.unwrap_or(ApiError::Internal("unreachable".into())));
        }

        // A cut request never completes the upload, even one that said `Upload-Complete: ?1`:
        // its length is unknown until a request arrives whole.
        let complete = verdict.is_none() && (req.complete || length == Some(new_offset));
        let length = if complete { Some(new_offset) } else { length };
        let expires = self.expires_from(now_unix_ms());
        // A new file's name must be durable before an offset inside it is answered, unless this
        // request finishes the upload (then the object's own link and directory fsync count).
        let dir_sync = (start == 0 && !complete).then(|| self.partial_dir.clone());
        let sync = run_blocking(move || {
            sink.file.sync_data()?;
            if let Some(dir) = dir_sync {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        });
        if complete {
            // On completion the offset is committed with the object, in one transaction.
            sync.await?;
        } else {
            // The bytes and the offset are made durable at once, and the offset is answered
            // only when both are: between appends this is the only wait (a chunk boundary
            // leaves the stream idle). A power cut between the two can leave a committed
            // offset past the file's end; the next append finds the file shorter than its
            // offset and answers the upload as gone, and the client starts it again.
            let (synced, committed) = tokio::join!(
                sync,
                self.meta
                    .set_progress(id, start, new_offset, length, expires)
            );
            match (synced, committed) {
                (Ok(()), Ok(true)) => {}
                // The upload left `start` while this append ran: a request for it on another
                // instance sharing the database won. These bytes are not the upload's.
                (Ok(()), Ok(false)) => return Err(ApiError::Locked { ietf: req.ietf }),
                (Err(e), Ok(true)) => {
                    // The offset went in but its bytes may not be on the disk (a failed fsync
                    // can drop them): take the offset back before anyone reads it.
                    self.meta
                        .set_progress(id, new_offset, start, row.length_bytes, row.expires_unix_ms)
                        .await?;
                    return Err(e);
                }
                (Err(e), Ok(false) | Err(_)) => return Err(e),
                // The bytes are safe but the offset is not recorded: the upload stays where it
                // was (the next append cuts the file back to it).
                (Ok(()), Err(e)) => return Err(e.into()),
            }
        }
        // The append is kept (its offset is committed): its bytes count in the upload's hashes.
        let _ = to_hasher.send(HashInput::Keep).await;
        drop(to_hasher);
        if let Some(err) = verdict {
            // Interrupted but kept: the client will resume from `new_offset`.
            return Err(err);
        }
        let row = UploadRow {
            offset_bytes: new_offset,
            length_bytes: length,
            expires_unix_ms: expires,
            // The completing append's digest is checked like a creation's (an earlier append's
            // is not kept: the client sends it again with the last one).
            expected_sha256_hex: row.expected_sha256_hex.or(repr_sha256_hex),
            expected_blake3_hex: row.expected_blake3_hex.or(repr_blake3_hex),
            ..row
        };
        if !complete {
            return Ok(Outcome::Progress(row));
        }
        let running = match slot.running.take() {
            Some(hashes) => hashes.await.ok().flatten(),
            None => None,
        };
        let result = self.finish(&row, running, quota_free).await;
        drop(slot);
        self.forget_slot(id);
        result
    }

    /// Hashes (or reuses the running hash), verifies `Repr-Digest`, stores the object, commits.
    async fn finish(
        &self,
        row: &UploadRow,
        running: Option<Running>,
        quota_free: bool,
    ) -> Result<Outcome, ApiError> {
        let path = self.partial_path(&row.id);
        let (blake3_hex, sha256_hex) = match running {
            Some(r) if Some(r.offset_bytes) == row.length_bytes => (
                r.blake3.finalize().to_hex().to_string(),
                hex(&r.sha256.finalize()),
            ),
            _ => {
                let p = path.clone();
                run_blocking(move || hash_file(&p)).await?
            }
        };
        let mismatch =
            |expected: &Option<String>, got: &str| expected.as_deref().is_some_and(|e| e != got);
        if mismatch(&row.expected_sha256_hex, &sha256_hex)
            || mismatch(&row.expected_blake3_hex, &blake3_hex)
        {
            // The upload can never become what the client promised: drop it whole.
            self.meta.delete_upload(&row.id).await?;
            let _ = tokio::fs::remove_file(&path).await;
            return Err(ApiError::UploadDiscarded(
                "Repr-Digest does not match the uploaded bytes; the upload was discarded".into(),
            ));
        }
        let size_bytes = row.length_bytes.unwrap_or(row.offset_bytes);
        // Checked before the blob is stored (a refused object leaves no blob behind), and
        // again where it counts: in the transaction that adds the object to the user. (A quota
        // set in the milliseconds since this request's creation saw none can only cost a blob
        // that no object row names.)
        if !quota_free
            && let Err(e) = self
                .check_quota(row.user_id, size_bytes, Some(&blake3_hex))
                .await
        {
            self.discard(&row.id, &path).await?;
            return Err(e);
        }
        self.blobs.commit_file(&path, &blake3_hex).await?;
        let object = ObjectRow {
            id: blake3_hex.clone(),
            sha256_hex,
            size_bytes,
            created_unix_ms: now_unix_ms(),
        };
        match self.meta.complete_upload(&row.id, &object).await? {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::Gone),
            Err(q) => {
                self.discard(&row.id, &path).await?;
                return Err(ApiError::QuotaExceeded {
                    used_bytes: q.used_bytes,
                    quota_bytes: q.quota_bytes,
                    needed_bytes: q.needed_bytes,
                });
            }
        }
        let _ = tokio::fs::remove_file(&path).await;
        // An earlier identical object keeps its first creation time. The receipt is answered
        // from what the database holds, never from what this request meant to write.
        let object = self.meta.object(&blake3_hex).await?.ok_or_else(|| {
            ApiError::Internal(format!("object {blake3_hex} missing after its commit"))
        })?;
        let row = UploadRow {
            object_id: Some(object.id.clone()),
            ..row.clone()
        };
        tracing::info!(upload = %row.id, object = %object.id, size_bytes = object.size_bytes, "upload complete");
        Ok(Outcome::Complete(row, object))
    }

    /// Drops an upload that can never complete (its row, then its partial file).
    async fn discard(&self, id: &str, path: &std::path::Path) -> Result<(), ApiError> {
        self.meta.delete_upload(id).await?;
        let _ = tokio::fs::remove_file(path).await;
        Ok(())
    }

    /// Cancels an upload (tus termination, draft DELETE). A finished upload loses only its
    /// receipt; the object may be shared and stays (so does its ownership).
    pub async fn delete(&self, id: &str, user_id: i64, ietf: bool) -> Result<(), ApiError> {
        self.get(id, user_id).await?;
        let slot = self.slot(id);
        let _guard = slot
            .try_lock_owned()
            .map_err(|_| ApiError::Locked { ietf })?;
        if self.remote.is_some() {
            match self.take_lease(id).await? {
                Some(lease) => {
                    let r = self.discard_remote(id, Some(lease.epoch)).await;
                    self.release_lease(id, lease).await;
                    r?;
                    self.forget_slot(id);
                    return Ok(());
                }
                None => {
                    // Finished (its receipt goes, as always), or busy on another instance.
                    let row = self.meta.upload(id).await?.ok_or(ApiError::NotFound)?;
                    if row.object_id.is_none() {
                        return Err(ApiError::Locked { ietf });
                    }
                }
            }
        }
        self.meta.delete_upload(id).await?;
        match tokio::fs::remove_file(self.partial_path(id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.forget_slot(id);
        Ok(())
    }

    /// Removes unfinished uploads that expired at `now_unix_ms`, and partial files no row
    /// points at (left by a crash between file creation and row insert). Busy uploads wait for
    /// the next round. Returns how many uploads were collected.
    pub async fn collect_expired(&self, now_unix_ms: i64) -> Result<usize, ApiError> {
        let mut collected = 0;
        for id in self.meta.expired_uploads(now_unix_ms).await? {
            let slot = self.slot(&id);
            let Ok(_guard) = slot.try_lock_owned() else {
                continue;
            };
            if self.remote.is_some() {
                // Busy on another instance: the next round.
                let Some(lease) = self.take_lease(&id).await? else {
                    continue;
                };
                let r = self.discard_remote(&id, Some(lease.epoch)).await;
                self.release_lease(&id, lease).await;
                if r? {
                    collected += 1;
                }
                self.forget_slot(&id);
                continue;
            }
            self.meta.delete_upload(&id).await?;
            let _ = tokio::fs::remove_file(self.partial_path(&id)).await;
            self.forget_slot(&id);
            collected += 1;
        }
        if self.remote.is_some() {
            self.collect_intents(now_unix_ms).await?;
        }
        let max_age_ms = self.limits.max_age.as_millis() as i64;
        let mut dir = tokio::fs::read_dir(&self.partial_dir).await?;
        while let Some(entry) = dir.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let modified_ms = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            if modified_ms + max_age_ms > now_unix_ms {
                continue;
            }
            let orphan = !valid_upload_id(&name)
                || match self.meta.upload(&name).await? {
                    None => true,
                    Some(r) => r.object_id.is_some(),
                };
            if orphan {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(collected)
    }
}

/// Starts writing `len` bytes from `offset` to the disk without waiting for it (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`): the stream goes on while the disk catches up,
/// and the `fdatasync` that makes an offset durable (always done before it is answered) finds
/// little left to write. Elsewhere, a plain `fdatasync` here.
/// What an append that received its body (or part of it) ends as, on either storage: the
/// error it is answered with, if any, and whether its bytes are kept anyway. A cut connection
/// keeps what arrived (both protocols resume from the offset) unless a chunk digest was
/// promised: bytes that cannot be verified are dropped, as are those of a failed check.
pub(crate) fn append_verdict(
    failure: Option<ApiError>,
    req: &Append,
    chunk: Option<ChunkHasher>,
    new_offset: u64,
    length: Option<u64>,
) -> (Option<ApiError>, bool) {
    let mut verdict = failure;
    if verdict.is_none()
        && let (Some(check), Some(hasher)) = (&req.check, chunk)
        && !hasher.matches(check)
    {
        verdict = Some(match check {
            ChunkCheck::ContentDigestSha256(_) => ApiError::DigestMismatch(
                "Content-Digest does not match the request body; the chunk was discarded".into(),
            ),
            _ => ApiError::ChecksumMismatch,
        });
    }
    if verdict.is_none() && req.complete && length.is_some_and(|l| l != new_offset) {
        verdict = Some(ApiError::InconsistentLength(format!(
            "Upload-Complete with {new_offset} bytes but Upload-Length is {}",
            length.unwrap_or(0)
        )));
    }
    let keep = matches!(
        verdict,
        Some(ApiError::BodyInterrupted(_) | ApiError::Timeout)
    ) && req.check.is_none();
    (verdict, keep)
}

fn write_behind(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return file.sync_data();
        };
        // SAFETY: a valid open descriptor and plain integers; no memory is passed.
        #[allow(unsafe_code)]
        let r =
            unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // A file system that cannot (EINVAL, ENOSYS…): the blocking flush of before.
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EIO) {
            return Err(e);
        }
        file.sync_data()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (offset, len);
        file.sync_data()
    }
}

async fn join_sink(p: tokio::task::JoinHandle<std::io::Result<Sink>>) -> Result<Sink, ApiError> {
    p.await
        .map_err(|e| ApiError::Internal(format!("writer task: {e}")))?
        .map_err(ApiError::from)
}

/// True when the body carries no bytes; refuses one that does without reading further.
async fn body_is_empty(body: Body) -> Result<bool, ApiError> {
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(c) if c.is_empty() => continue,
            Ok(_) => return Ok(false),
            Err(e) => return Err(ApiError::BodyInterrupted(e.to_string())),
        }
    }
    Ok(true)
}

/// BLAKE3 and SHA-256 of a whole file, for uploads whose running hash was lost to a restart.
fn hash_file(path: &std::path::Path) -> std::io::Result<(String, String)> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut b3 = blake3::Hasher::new();
    let mut s2 = Sha256::new();
    let mut buf = vec![0u8; BLOCK_BYTES];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        b3.update(&buf[..n]);
        s2.update(&buf[..n]);
    }
    Ok((b3.finalize().to_hex().to_string(), hex(&s2.finalize())))
}
