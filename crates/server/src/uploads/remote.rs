//! Unfinished uploads whose bytes live in a remote (S3) store, so that any instance continues
//! any upload. The local store keeps the partial-file path of `uploads.rs` untouched.
//!
//! Layout of upload U in the store: a multipart upload at `uploads/U/data` in parts of exactly
//! [`PART`] bytes (part i+1 holds bytes `[i·PART, (i+1)·PART)`), then the bytes after the last
//! full part in write-once tail pieces `uploads/U/tail-<epoch>-<start offset>`, in order. An
//! append that does not fill a part adds one piece and rewrites nothing; one that does reads
//! the pieces back and sends them with its new bytes as the next part.
//!
//! Commit rule: the store objects are written first, then the new state (offset, part ETags,
//! pieces, multipart id) is committed in one SQL transaction, fenced by the upload's offset and
//! lease epoch, and only then answered. Nothing is ever derived from a store listing.
//!
//! Intents (`store_intents`): a row is committed before a piece is written or a multipart
//! upload created; the commit that references the object deletes it; the commit that stops
//! referencing an object inserts one. The collector removes what old intents name. A crash
//! between `create_multipart` and recording its id leaves a multipart upload only a bucket
//! lifecycle rule (abort incomplete multipart uploads) removes.
//!
//! Lease: one writer per upload across instances. An append (completion, deletion) takes the
//! upload's lease with a new epoch (the database's clock decides expiry), renews it every third
//! of its time to live, and releases it at the end; a holder that is alive (PostgreSQL: its
//! advisory lock is held) keeps others out, a dead one's lease is taken at once.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::failpoint;
use crate::meta::{INTENT_MULTIPART, INTENT_PIECE, Intent, Piece, RemoteCommit, RemoteState};

/// The size of every part but the last: above S3's 5 MiB minimum, and 10,000 parts of it
/// (S3's most) hold 156 GiB.
pub const PART: usize = 16 << 20;
/// S3 takes at most this many parts.
const MAX_PARTS: usize = 10_000;
/// An intent this old whose upload holds no live lease is garbage.
pub const INTENT_AGE: Duration = Duration::from_secs(3600);

/// What an engine on a remote store needs beyond the local one.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// This instance's identity in leases (PostgreSQL: the key of its advisory lock).
    pub instance_key: i64,
    pub lease_ttl: Duration,
}

pub fn data_key(id: &str) -> String {
    format!("uploads/{id}/data")
}

/// The intent of a multipart upload at [`data_key`]: one per multipart upload (`tag` tells
/// them apart), so a second one created after a crash never overwrites the first's id.
fn multipart_intent_key(id: &str, tag: &str) -> String {
    format!("{}#{tag}", data_key(id))
}

/// The store key an intent names (a multipart intent's key carries a `#tag`).
fn intent_object(key: &str) -> &str {
    key.split('#').next().unwrap_or(key)
}

fn piece_key(id: &str, epoch: i64, start: u64) -> String {
    format!("uploads/{id}/tail-{epoch}-{start}")
}

/// A held lease, renewed in the background until dropped.
pub struct Lease {
    pub epoch: i64,
    lost: Arc<AtomicBool>,
    /// Until when, by this process's monotonic clock, the lease is surely still ours: the
    /// moment the last successful take or renewal was asked plus three quarters of the time
    /// to live (the database counts the whole time to live from a later moment). Writes to
    /// the store happen only before it: S3 keeps one part per number, so a holder that slept
    /// past its lease must not overwrite a part another instance committed meanwhile. (The
    /// database fences every commit by epoch; this fences the writes that precede a commit.)
    valid_until: Arc<std::sync::Mutex<std::time::Instant>>,
    /// The instance lock's generation when the lease was taken: a later one means the lock
    /// was lost meanwhile, and others may have taken the lease over at once.
    generation: u64,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// True once the lease may be someone else's: a renewal found it taken over, it may have
    /// run out, or this instance lost its lock meanwhile. The holder must stop writing.
    fn lost(&self, meta: &crate::meta::Meta) -> bool {
        self.lost.load(Ordering::SeqCst)
            || meta.lock_generation() != self.generation
            || self
                .valid_until
                .lock()
                .map_or(true, |until| std::time::Instant::now() >= *until)
    }

    /// How long the lease surely stays ours (zero once [`Lease::lost`] may be true).
    fn remaining(&self) -> Duration {
        self.valid_until.lock().map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(std::time::Instant::now())
        })
    }
}

/// How long a check of the instance lock may take: well inside the margin a lease keeps.
fn lock_check_wait(ttl: Duration) -> Duration {
    (ttl / 8).clamp(Duration::from_millis(1), Duration::from_secs(10))
}

/// The part of a lease's time to live its holder counts on (see [`Lease::valid_until`]).
fn safe_ttl(ttl: Duration) -> Duration {
    ttl * 3 / 4
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// The bytes to become the object: completed in the store at a key, or in memory.
enum Source {
    Key(String),
    Bytes(Bytes),
}

impl Engine {
    fn remote_config(&self) -> Result<&RemoteConfig, ApiError> {
        self.remote
            .as_ref()
            .ok_or_else(|| ApiError::Internal("remote upload path on a local store".into()))
    }

    /// Takes the upload's lease; `None`: a live instance holds it, or the upload is finished
    /// or gone (the caller reads the row to tell which).
    pub(super) async fn take_lease(&self, id: &str) -> Result<Option<Lease>, ApiError> {
        let cfg = self.remote_config()?;
        let ttl_ms = cfg.lease_ttl.as_millis() as i64;
        // A lease is worth having only while others can see this instance alive.
        let generation = self
            .meta
            .ensure_instance_lock(cfg.instance_key, lock_check_wait(cfg.lease_ttl))
            .await?;
        let asked = std::time::Instant::now();
        let Some(epoch) = self.meta.take_lease(id, cfg.instance_key, ttl_ms).await? else {
            return Ok(None);
        };
        let lost = Arc::new(AtomicBool::new(false));
        let valid_until = Arc::new(std::sync::Mutex::new(asked + safe_ttl(cfg.lease_ttl)));
        let (meta, id, flag, until, ttl, key, every) = (
            self.meta.clone(),
            id.to_string(),
            lost.clone(),
            valid_until.clone(),
            cfg.lease_ttl,
            cfg.instance_key,
            // A zero time to live (the library API allows it) must not make a zero period.
            (cfg.lease_ttl / 3).max(Duration::from_millis(1)),
        );
        let renewer = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let asked = std::time::Instant::now();
                // The lock first: a renewal is no use to a holder others already see dead.
                match meta.ensure_instance_lock(key, lock_check_wait(ttl)).await {
                    Ok(g) if g == generation => {}
                    Ok(_) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(upload = %id, error = %e, "cannot check the instance lock");
                        continue;
                    }
                }
                match meta.renew_lease(&id, epoch, ttl_ms).await {
                    Ok(true) => {
                        if let Ok(mut u) = until.lock() {
                            *u = asked + safe_ttl(ttl);
                        }
                    }
                    Ok(false) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A failed renewal lets the lease run out: the holder stops writing at its
                    // deadline, and every commit is fenced.
                    Err(e) => tracing::warn!(upload = %id, error = %e, "cannot renew a lease"),
                }
            }
        });
        Ok(Some(Lease {
            epoch,
            lost,
            valid_until,
            generation,
            renewer,
        }))
    }

    pub(super) async fn release_lease(&self, id: &str, lease: Lease) {
        let epoch = lease.epoch;
        drop(lease);
        if let Err(e) = self.meta.release_lease(id, epoch).await {
            // It runs out by itself after its time to live.
            tracing::warn!(upload = %id, error = %e, "cannot release a lease");
        }
    }

    /// The intents that name every store object of an upload in `state`.
    fn intents_of(&self, id: &str, state: &RemoteState, data_completed: bool) -> Vec<Intent> {
        let now = now_unix_ms();
        let mut out: Vec<Intent> = state
            .tail
            .iter()
            .map(|p| Intent {
                key: p.key.clone(),
                upload_id: id.into(),
                kind: INTENT_PIECE.into(),
                multipart_id: None,
                created_unix_ms: now,
            })
            .collect();
        if data_completed {
            out.push(Intent {
                key: data_key(id),
                upload_id: id.into(),
                kind: INTENT_PIECE.into(),
                multipart_id: None,
                created_unix_ms: now,
            });
        } else if let Some(mpu) = &state.multipart_id {
            out.push(Intent {
                key: multipart_intent_key(id, "row"),
                upload_id: id.into(),
                kind: INTENT_MULTIPART.into(),
                multipart_id: Some(mpu.clone()),
                created_unix_ms: now,
            });
        }
        out
    }

    /// Deletes (aborts) what `intents` name, then the intents of what is gone. What fails
    /// stays for the collector.
    pub(super) async fn clean(&self, intents: Vec<Intent>) -> Result<usize, ApiError> {
        let mut done = Vec::new();
        for i in intents {
            let object = intent_object(&i.key);
            if i.kind == INTENT_MULTIPART {
                // Aborted only: the key itself may be another multipart upload's result.
                if let Some(mpu) = &i.multipart_id
                    && let Err(e) = self.blobs.abort_multipart(object, mpu).await
                    // One completed before a crash is no longer there to abort (S3:
                    // NoSuchUpload). Anything else is retried by the next collection.
                    && !e.to_string().contains("NoSuchUpload")
                {
                    tracing::warn!(key = %i.key, error = %e, "cannot abort a multipart upload");
                    continue;
                }
                done.push(i.key);
                continue;
            }
            match self.blobs.delete_key(object).await {
                Ok(()) => done.push(i.key),
                Err(e) => tracing::warn!(key = %i.key, error = %e, "cannot delete a store object"),
            }
        }
        let n = done.len();
        if !done.is_empty() {
            self.meta.delete_intents(done).await?;
        }
        Ok(n)
    }

    /// Deletes an unfinished upload under lease `epoch` (any, when `None`) with everything it
    /// holds in the store: its objects become intents in the transaction that deletes the row,
    /// then go.
    pub(super) async fn discard_remote(
        &self,
        id: &str,
        epoch: Option<i64>,
    ) -> Result<bool, ApiError> {
        let Some(state) = self.meta.remote_state(id).await? else {
            return Ok(false);
        };
        let data_completed =
            state.multipart_id.is_some() && self.blobs.size_of_key(&data_key(id)).await?.is_some();
        let intents = self.intents_of(id, &state, data_completed);
        if !self.meta.discard_upload(id, epoch, intents.clone()).await? {
            return Ok(false);
        }
        self.clean(intents).await?;
        Ok(true)
    }

    /// Writes `bytes` as a new tail piece starting at `start` (its intent committed first).
    async fn write_piece(
        &self,
        id: &str,
        epoch: i64,
        start: u64,
        bytes: Bytes,
    ) -> Result<Piece, ApiError> {
        let key = piece_key(id, epoch, start);
        self.meta
            .put_intent(Intent {
                key: key.clone(),
                upload_id: id.into(),
                kind: INTENT_PIECE.into(),
                multipart_id: None,
                created_unix_ms: now_unix_ms(),
            })
            .await?;
        let size = bytes.len() as u64;
        self.blobs.put_key(&key, bytes).await?;
        failpoint::hit("remote.after_tail");
        Ok(Piece { key, size })
    }

    /// Creates the upload's multipart upload, its intent committed before and completed with
    /// its id right after. Answers the id and the intent's key.
    async fn create_multipart(&self, id: &str, epoch: i64) -> Result<(String, String), ApiError> {
        let key = data_key(id);
        let mut intent = Intent {
            key: multipart_intent_key(id, &format!("e{epoch}")),
            upload_id: id.into(),
            kind: INTENT_MULTIPART.into(),
            multipart_id: None,
            created_unix_ms: now_unix_ms(),
        };
        self.meta.put_intent(intent.clone()).await?;
        let mpu = self.blobs.create_multipart(&key).await?;
        intent.multipart_id = Some(mpu.clone());
        let intent_key = intent.key.clone();
        self.meta.put_intent(intent).await?;
        Ok((mpu, intent_key))
    }

    /// The bytes of `pieces`, in order.
    async fn read_pieces(&self, pieces: &[Piece]) -> Result<BytesMut, ApiError> {
        let total: u64 = pieces.iter().map(|p| p.size).sum();
        let mut out = BytesMut::with_capacity(total as usize);
        for p in pieces {
            let b = self.blobs.get_key(&p.key).await?;
            if b.len() as u64 != p.size {
                return Err(ApiError::Internal(format!(
                    "tail piece {} holds {} bytes, not {}",
                    p.key,
                    b.len(),
                    p.size
                )));
            }
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// One append on a remote store, under the upload's lease (see the module's text). `row`
    /// is the upload as read under the lease, validated by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn append_remote(
        &self,
        slot: &mut Slot,
        lease: &Lease,
        row: UploadRow,
        req: &Append,
        body: Body,
        length: Option<u64>,
        room_bytes: u64,
        repr: (Option<String>, Option<String>),
    ) -> Result<Outcome, ApiError> {
        let id = row.id.clone();
        let start = row.offset_bytes;
        let state = self.meta.remote_state(&id).await?.ok_or(ApiError::Gone)?;
        if state.lease_epoch != lease.epoch {
            return Err(ApiError::Locked { ietf: req.ietf });
        }
        let tail_bytes: u64 = state.tail.iter().map(|p| p.size).sum();
        if state.parts.len() as u64 * PART as u64 + tail_bytes != start {
            return Err(ApiError::Internal(format!(
                "upload {id}: {} parts and {tail_bytes} tail bytes do not make offset {start}",
                state.parts.len()
            )));
        }
        let (to_hasher, hashed) = spawn_hasher(slot.running.take(), start);
        slot.running = Some(hashed);
        let mut chunk = req.check.as_ref().map(ChunkHasher::new);
        let mut next = state.clone();
        let mut tail_size = tail_bytes as usize;
        let mut obsolete: Vec<Piece> = Vec::new();
        let mut referenced: Vec<String> = Vec::new();
        // The new bytes not yet in a part: less than a part plus one network chunk.
        let mut pending = BytesMut::new();
        let mut hblock = BytesMut::with_capacity(BLOCK_BYTES);
        let mut received_bytes: u64 = 0;
        let mut stream = body.into_data_stream();
        let in_flight = super::InFlight::new(self, &id);
        let mut failure: Option<ApiError> = None;
        let mut store_error: Option<ApiError> = None;
        loop {
            let idle = self.limits.body_idle_timeout;
            let c = match in_flight
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
            if let Some(h) = &mut chunk {
                h.update(&c);
            }
            hblock.extend_from_slice(&c);
            if hblock.len() >= BLOCK_BYTES {
                let full = std::mem::replace(&mut hblock, BytesMut::with_capacity(BLOCK_BYTES));
                let _ = to_hasher.send(HashInput::Block(full.freeze())).await;
            }
            pending.extend_from_slice(&c);
            while tail_size + pending.len() >= PART {
                // Before the tail is read: a stale holder's pieces may be gone already.
                let holds = match self.still_holds(lease).await {
                    Ok(h) => h,
                    Err(e) => {
                        store_error = Some(e);
                        break;
                    }
                };
                if !holds {
                    store_error = Some(ApiError::Locked { ietf: req.ietf });
                    break;
                }
                if next.parts.len() >= MAX_PARTS {
                    store_error = Some(ApiError::TooLarge(
                        "the upload exceeds the store's 10,000 parts".into(),
                    ));
                    break;
                }
                let sent: Result<(), ApiError> = async {
                    let part = if next.tail.is_empty() {
                        pending.split_to(PART).freeze()
                    } else {
                        let mut part = self.read_pieces(&next.tail).await?;
                        let need = PART - part.len();
                        part.extend_from_slice(&pending.split_to(need));
                        part.freeze()
                    };
                    let mpu = match &next.multipart_id {
                        Some(m) => m.clone(),
                        None => {
                            let (m, intent_key) = self.create_multipart(&id, lease.epoch).await?;
                            referenced.push(intent_key);
                            next.multipart_id = Some(m.clone());
                            m
                        }
                    };
                    let etag = self
                        .fenced(
                            lease,
                            self.blobs
                                .put_part(&data_key(&id), &mpu, next.parts.len(), part),
                        )
                        .await?;
                    next.parts.push(etag);
                    failpoint::hit("remote.after_part");
                    obsolete.append(&mut next.tail);
                    tail_size = 0;
                    Ok(())
                }
                .await;
                if let Err(e) = sent {
                    store_error = Some(e);
                    break;
                }
            }
            if store_error.is_some() {
                break;
            }
        }
        if !hblock.is_empty() {
            let _ = to_hasher.send(HashInput::Block(hblock.freeze())).await;
        }
        if let Some(e) = store_error {
            // Nothing is committed: what this append wrote has intents the collector finds.
            return Err(e);
        }
        let new_offset = start + received_bytes;
        let (verdict, keep) = super::append_verdict(failure, req, chunk.take(), new_offset, length);
        if verdict.is_some() && !keep {
            return Err(verdict.unwrap_or(ApiError::Internal("unreachable".into())));
        }
        let complete = verdict.is_none() && (req.complete || length == Some(new_offset));
        let length = if complete { Some(new_offset) } else { length };
        let (repr_sha256_hex, repr_blake3_hex) = repr;
        let row = UploadRow {
            offset_bytes: new_offset,
            length_bytes: length,
            expires_unix_ms: self.expires_from(now_unix_ms()),
            expected_sha256_hex: row.expected_sha256_hex.or(repr_sha256_hex),
            expected_blake3_hex: row.expected_blake3_hex.or(repr_blake3_hex),
            ..row
        };

        // A whole upload in one request, under one part: nothing was stored before, all of it
        // is in memory, so it becomes the object at once (as a local plain upload does).
        if complete && state.parts.is_empty() && state.tail.is_empty() && next.parts.is_empty() {
            let _ = to_hasher.send(HashInput::Keep).await;
            drop(to_hasher);
            let running = match slot.running.take() {
                Some(h) => h.await.ok().flatten(),
                None => None,
            };
            return self
                .finish_remote(&row, lease, &next, Some(pending.freeze()), running)
                .await;
        }

        if !pending.is_empty() {
            if lease.lost(&self.meta) {
                return Err(ApiError::Locked { ietf: req.ietf });
            }
            let piece_start = new_offset - pending.len() as u64;
            let piece = self
                .write_piece(&id, lease.epoch, piece_start, pending.freeze())
                .await?;
            referenced.push(piece.key.clone());
            next.tail.push(piece);
        }
        let now = now_unix_ms();
        let obsolete_intents: Vec<Intent> = obsolete
            .iter()
            .map(|p| Intent {
                key: p.key.clone(),
                upload_id: id.clone(),
                kind: INTENT_PIECE.into(),
                multipart_id: None,
                created_unix_ms: now,
            })
            .collect();
        // Pieces written by this append and already folded into a part are obsolete too; their
        // intents were never deleted, so they simply stay.
        let commit = RemoteCommit {
            epoch: lease.epoch,
            state: next.clone(),
            referenced,
            obsolete: obsolete_intents.clone(),
        };
        let committed = self
            .meta
            .commit_remote(&id, start, new_offset, length, row.expires_unix_ms, commit)
            .await?;
        if !committed {
            // Another instance took the upload over: these bytes are not the upload's.
            return Err(ApiError::Locked { ietf: req.ietf });
        }
        let _ = to_hasher.send(HashInput::Keep).await;
        drop(to_hasher);
        // Only now, with no committed state naming them, may the old pieces go. The offset is
        // committed: a failure here leaves intents for the collector, not a failed append.
        if let Err(e) = self.clean(obsolete_intents).await {
            tracing::warn!(upload = %id, error = %e, "old tail pieces left for the collector");
        }
        if let Some(err) = verdict {
            return Err(err);
        }
        if !complete {
            return Ok(Outcome::Progress(row));
        }
        let running = match slot.running.take() {
            Some(h) => h.await.ok().flatten(),
            None => None,
        };
        self.finish_remote(&row, lease, &next, None, running).await
    }

    /// Whether `lease` is surely still this request's. Others see this instance alive only
    /// while its lock's connection is: that is checked now, not at the next renewal, as a
    /// takeover after a lost lock needs no waiting.
    async fn still_holds(&self, lease: &Lease) -> Result<bool, ApiError> {
        let cfg = self.remote_config()?;
        let generation = self
            .meta
            .ensure_instance_lock(cfg.instance_key, lock_check_wait(cfg.lease_ttl))
            .await?;
        Ok(generation == lease.generation && !lease.lost(&self.meta))
    }

    /// Runs `write`, a write to the upload's multipart upload, only while `lease` is surely
    /// still ours, and gives up on it before anyone else could take the lease: S3 keeps the
    /// last part written under a number and completes whatever list it is given, so a stale
    /// holder's write could spoil a part or a completion another instance committed. (A write
    /// whose every byte had reached the store before it was given up may still land; the
    /// margin of a quarter of the time to live is what covers it. One not yet whole when its
    /// holder's lock connection broke may land after another instance took over at once: S3
    /// offers no condition on a part to prevent it.)
    async fn fenced<T, E: Into<ApiError>>(
        &self,
        lease: &Lease,
        write: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, ApiError> {
        let lost = || ApiError::Unavailable("this request's hold on the upload ran out".into());
        if !self.still_holds(lease).await? {
            return Err(lost());
        }
        let margin = self.remote_config()?.lease_ttl / 8;
        let mut write = std::pin::pin!(write);
        loop {
            let deadline = tokio::time::Instant::now() + lease.remaining() + margin;
            tokio::select! {
                // The deadline first: a process that was stopped mid-write must not send the
                // rest of a part once it runs again.
                biased;
                () = tokio::time::sleep_until(deadline) => {
                    // A renewal meanwhile moves the deadline on: a slow write keeps going for
                    // as long as the lease is surely still held.
                    if lease.lost(&self.meta) || lease.remaining().is_zero() {
                        return Err(lost());
                    }
                }
                r = &mut write => return r.map_err(Into::into),
            }
        }
    }

    /// Makes a remote upload whose every byte is committed (or, with `in_memory`, whose every
    /// byte is there) the object: the tail becomes the last part, the multipart upload is
    /// completed, the bytes hashed unless `running` already holds their hashes, the promised
    /// digests checked, the object copied into place and committed (fenced by `epoch`), then
    /// the upload's store objects deleted. Safe to run again after a crash at any step.
    pub(super) async fn finish_remote(
        &self,
        row: &UploadRow,
        lease: &Lease,
        state: &RemoteState,
        in_memory: Option<Bytes>,
        running: Option<Running>,
    ) -> Result<Outcome, ApiError> {
        let id = row.id.clone();
        let size = row.length_bytes.unwrap_or(row.offset_bytes);
        let data = data_key(&id);
        let source = if let Some(b) = in_memory {
            Source::Bytes(b)
        } else if let Some(mpu) = &state.multipart_id {
            // An instance that died after completing it left it whole: do not complete twice.
            if self.blobs.size_of_key(&data).await? != Some(size) {
                let mut parts = state.parts.clone();
                if !state.tail.is_empty() {
                    if !self.still_holds(lease).await? {
                        return Err(ApiError::Unavailable(
                            "this request's hold on the upload ran out".into(),
                        ));
                    }
                    let last = self.read_pieces(&state.tail).await?.freeze();
                    let put = self.blobs.put_part(&data, mpu, parts.len(), last);
                    parts.push(self.fenced(lease, put).await?);
                }
                let done = self.blobs.complete_multipart(&data, mpu, &parts);
                self.fenced(lease, done).await?;
                failpoint::hit("remote.after_complete");
            }
            Source::Key(data.clone())
        } else {
            Source::Bytes(self.read_pieces(&state.tail).await?.freeze())
        };
        let (blake3_hex, sha256_hex) = match running {
            Some(r) if r.offset_bytes == size => (
                r.blake3.finalize().to_hex().to_string(),
                hex(&r.sha256.finalize()),
            ),
            _ => match &source {
                Source::Bytes(b) => {
                    let b = b.clone();
                    run_blocking(move || {
                        let mut s2 = Sha256::new();
                        s2.update(&b);
                        Ok((blake3::hash(&b).to_hex().to_string(), hex(&s2.finalize())))
                    })
                    .await?
                }
                Source::Key(k) => self.hash_key(k).await?,
            },
        };
        let mismatch =
            |expected: &Option<String>, got: &str| expected.as_deref().is_some_and(|e| e != got);
        if mismatch(&row.expected_sha256_hex, &sha256_hex)
            || mismatch(&row.expected_blake3_hex, &blake3_hex)
        {
            self.discard_remote(&id, Some(lease.epoch)).await?;
            return Err(ApiError::UploadDiscarded(
                "Repr-Digest does not match the uploaded bytes; the upload was discarded".into(),
            ));
        }
        if let Err(e) = self.check_quota(row.user_id, size, Some(&blake3_hex)).await {
            self.discard_remote(&id, Some(lease.epoch)).await?;
            return Err(e);
        }
        match &source {
            Source::Bytes(b) => self.blobs.put_object(&blake3_hex, b.clone()).await?,
            Source::Key(k) => self.blobs.copy_key_to_object(k, size, &blake3_hex).await?,
        };
        let cleanup = self.intents_of(&id, state, matches!(source, Source::Key(_)));
        let object = ObjectRow {
            id: blake3_hex.clone(),
            sha256_hex,
            size_bytes: size,
            created_unix_ms: now_unix_ms(),
        };
        match self
            .meta
            .complete_upload_fenced(&id, &object, Some(lease.epoch), cleanup.clone())
            .await?
        {
            Ok(true) => {}
            // Taken over (or gone) meanwhile: the object stays for whoever completes it.
            Ok(false) => return Err(ApiError::Locked { ietf: true }),
            Err(q) => {
                self.discard_remote(&id, Some(lease.epoch)).await?;
                return Err(ApiError::QuotaExceeded {
                    used_bytes: q.used_bytes,
                    quota_bytes: q.quota_bytes,
                    needed_bytes: q.needed_bytes,
                });
            }
        }
        if let Err(e) = self.clean(cleanup).await {
            tracing::warn!(upload = %id, error = %e, "upload's store objects left for the collector");
        }
        let object = self.meta.object(&blake3_hex).await?.ok_or_else(|| {
            ApiError::Internal(format!("object {blake3_hex} missing after its commit"))
        })?;
        let row = UploadRow {
            object_id: Some(object.id.clone()),
            offset_bytes: size,
            length_bytes: Some(size),
            ..row.clone()
        };
        tracing::info!(upload = %row.id, object = %object.id, size_bytes = object.size_bytes, "upload complete");
        Ok(Outcome::Complete(row, object))
    }

    /// BLAKE3 and SHA-256 of the object at `key`, streamed.
    async fn hash_key(&self, key: &str) -> Result<(String, String), ApiError> {
        let mut s = self.blobs.stream_key(key).await?;
        // Hashing gigabytes is CPU work: a blocking thread does it while the download goes on,
        // never an async worker (a few blocks queued at most).
        let (to_hasher, mut blocks) = tokio::sync::mpsc::channel::<Bytes>(4);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut b3 = blake3::Hasher::new();
            let mut s2 = Sha256::new();
            while let Some(chunk) = blocks.blocking_recv() {
                b3.update(&chunk);
                s2.update(&chunk);
            }
            (b3.finalize().to_hex().to_string(), hex(&s2.finalize()))
        });
        while let Some(chunk) = s.next().await {
            if to_hasher.send(chunk?).await.is_err() {
                break;
            }
        }
        drop(to_hasher);
        hasher
            .await
            .map_err(|e| ApiError::Internal(format!("hashing thread: {e}")))
    }

    /// An upload whose every byte is committed but which is no object yet (its completing
    /// instance died between the two): completes it now, so a client that saw the whole
    /// offset finds the object. Best effort; `None` when it could not (busy, failed).
    pub(super) async fn settle_remote(&self, id: &str) -> Option<()> {
        let slot = self.slot(id);
        let mut slot = slot.try_lock_owned().ok()?;
        let lease = self.take_lease(id).await.ok()??;
        let done = async {
            let row = self.meta.upload(id).await.ok()??;
            if row.object_id.is_some() || row.length_bytes != Some(row.offset_bytes) {
                return None;
            }
            let state = self.meta.remote_state(id).await.ok()??;
            let running = match slot.running.take() {
                Some(h) => h.await.ok().flatten(),
                None => None,
            };
            self.finish_remote(&row, &lease, &state, None, running)
                .await
                .ok()
                .map(drop)
        }
        .await;
        self.release_lease(id, lease).await;
        done
    }

    /// Collects old intents (see [`INTENT_AGE`]) as if the clock read `now_unix_ms`.
    pub(super) async fn collect_intents(&self, now_unix_ms: i64) -> Result<usize, ApiError> {
        let before = now_unix_ms - INTENT_AGE.as_millis() as i64;
        let old = self
            .meta
            .old_intents(before, self.remote_config()?.instance_key)
            .await?;
        self.clean(old).await
    }
}
