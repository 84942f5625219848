//! The server's metadata (users, uploads, objects and who owns them, device tokens) in SQL
//! through sqlx, on SQLite (the embedded default) or PostgreSQL (for many instances).
//!
//! SQLite in WAL mode with `synchronous=FULL`: a committed write survives `kill -9` and power
//! loss. PostgreSQL: many ferry-server instances share one database; the writes that read
//! before they write (quota, listing order, "the same receipt") lock the user's row, so they
//! serialise across instances as the single writer serialises them within one.
//!
//! Both backends run the same SQL text: [`backend!`] expands it once per driver, differing
//! only where the dialects do (how a transaction starts, row locks, a JSON list). There is no
//! `Any` driver: each expansion is checked against its own driver's types. The conformance
//! suite in this module runs against an SQLite file, an in-memory SQLite and, when the
//! scale-out engines run (`FERRY_TEST_PG_URL`), a PostgreSQL database.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::{mpsc, oneshot};

/// One upload: in progress while `object_id` is `None`, afterwards the receipt of what was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub id: String,
    /// `tus`, `ietf` or `plain`: which protocol created it, for HEAD answers.
    pub protocol: String,
    pub offset_bytes: u64,
    pub length_bytes: Option<u64>,
    /// Decoded metadata as a JSON object of strings.
    pub metadata_json: String,
    /// The `Upload-Metadata` header as received, echoed back by tus HEAD.
    pub metadata_raw: Option<String>,
    /// From `Repr-Digest` at creation: the whole upload must hash to this.
    pub expected_sha256_hex: Option<String>,
    /// From `Repr-Digest` (`blake3`) at creation: the same promise in BLAKE3.
    pub expected_blake3_hex: Option<String>,
    /// The creation's `Idempotency-Key`, scoped to its credentials (see `uploads::scoped_key`).
    pub idempotency_key: Option<String>,
    pub object_id: Option<String>,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    /// The user whose token created it: only that user sees the upload and its receipt.
    pub user_id: i64,
}

/// The user every token without an explicit one belongs to (and all data from before
/// accounts): `token create` without `--user`, the embedded server, `--open`.
pub const DEFAULT_USER_ID: i64 = 1;
pub const DEFAULT_USER_NAME: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    /// `None`: unlimited.
    pub quota_bytes: Option<u64>,
    /// Sum of the sizes of the objects the user owns.
    pub used_bytes: u64,
    pub created_unix_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub sha256_hex: String,
    pub user_id: i64,
    pub user_name: String,
    /// The device name given at creation (not unique).
    pub name: String,
    pub created_unix_ms: i64,
}

impl TokenRow {
    /// How `token list` names a token and `token revoke` finds it: the first 16 hex digits of
    /// the token's SHA-256 (the token itself is never stored).
    pub fn id(&self) -> &str {
        &self.sha256_hex[..16.min(self.sha256_hex.len())]
    }
}

/// One receipt: a finished upload of an object, by the user who reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub upload_id: String,
    /// When the upload became an object.
    pub received_unix_ms: i64,
    /// Decoded metadata as a JSON object of strings.
    pub metadata_json: String,
}

/// A receipt to record for an object its user already holds, without uploading the bytes again
/// (the same bytes at another path, on another device, after a rename).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReceipt {
    pub object_id: String,
    /// Decoded metadata as a JSON object of strings, keys in order: what makes two receipts
    /// the same (see [`Meta::add_receipts`]).
    pub metadata_json: String,
    /// The metadata field as received, when it came in a header.
    pub metadata_raw: Option<String>,
}

/// What recording one [`NewReceipt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptAdded {
    /// A new receipt.
    Created(Receipt),
    /// The user already had a receipt of this object with exactly this metadata (an upload's
    /// or an earlier added one): that one, and nothing written.
    Existing(Receipt),
    /// The user holds no such object (never stored, or stored only by another user).
    NotOwned,
}

/// One object of a user's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedObject {
    pub object: ObjectRow,
    /// When this user first stored it.
    pub first_stored_ms: i64,
    /// The listing order (see migration 0004): increasing per user, never reused.
    pub seq: i64,
}

/// A completion refused because the object, new to its user, does not fit the user's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub used_bytes: u64,
    pub quota_bytes: u64,
    /// What the refused upload would have added.
    pub needed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    /// BLAKE3 of the content, lowercase hex: objects are content-addressed.
    pub id: String,
    pub sha256_hex: String,
    pub size_bytes: u64,
    pub created_unix_ms: i64,
}

/// Where an unfinished upload's bytes are when the store is remote (S3): a multipart upload
/// of equal parts, then write-once tail pieces (see `uploads::remote`). Empty for a local store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteState {
    pub multipart_id: Option<String>,
    /// The ETags of parts 1..N, in order.
    pub parts: Vec<String>,
    /// The bytes after the last part, in order.
    pub tail: Vec<Piece>,
    /// The fencing epoch of the upload's latest lease.
    pub lease_epoch: i64,
}

/// One write-once tail piece of an unfinished upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Piece {
    pub key: String,
    pub size: u64,
}

/// An object in the store that no upload row references: to be referenced by a commit soon,
/// or garbage for the collector (see migration 0005).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub key: String,
    pub upload_id: String,
    /// [`INTENT_PIECE`] or [`INTENT_MULTIPART`].
    pub kind: String,
    pub multipart_id: Option<String>,
    pub created_unix_ms: i64,
}

/// An intent to delete the object at `key`.
pub const INTENT_PIECE: &str = "piece";
/// An intent to abort the multipart upload `multipart_id` at `key` (and delete `key`).
pub const INTENT_MULTIPART: &str = "multipart";

/// What an append commits besides its offset when its bytes are in a remote store.
#[derive(Debug, Clone)]
pub struct RemoteCommit {
    pub epoch: i64,
    pub state: RemoteState,
    /// Keys of objects the new state references: their intents go.
    pub referenced: Vec<String>,
    /// Objects the new state no longer references: their intents come, in the same commit.
    pub obsolete: Vec<Intent>,
}

/// The metadata store: one interface over either backend.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Reads; with a file database, separate connections that WAL lets run beside the writer.
    reads: Backend,
    /// Writes go through one task that commits everything queued in one transaction (group
    /// commit): one fsync per batch instead of one per request, on either backend.
    writes: mpsc::Sender<Write>,
    /// PostgreSQL: how to connect, for the instance lock's own connection.
    pg_options: Option<PgConnectOptions>,
    /// The connection holding this instance's advisory lock (see [`Meta::hold_instance_lock`]).
    instance_lock: std::sync::Arc<tokio::sync::Mutex<Option<(i64, sqlx::PgConnection)>>>,
    /// How many times this instance lost its advisory lock (its connection broke): a lease
    /// taken before a loss may have been taken over since, as others saw this instance dead.
    lock_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The task listening for stop requests (see [`Meta::listen_for_stops`]): it holds a
    /// connection of the pool, so closing ends it first.
    stop_listener: std::sync::Arc<std::sync::Mutex<Option<tokio::task::AbortHandle>>>,
    /// The server process of the session that last took the instance lock (0: none yet).
    lock_backend_pid: std::sync::Arc<std::sync::atomic::AtomicI32>,
    /// Set by [`Meta::close`]: the instance lock is not taken again after it.
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Which database a [`Meta`] reads from (its writer task holds its own pool of the same kind).
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug)]
enum Op {
    CreateUpload(UploadRow),
    SetProgress {
        id: String,
        /// The offset the writer read before its append: the update applies only if the row
        /// still has it (another instance's append in between makes this one lose).
        from_offset_bytes: u64,
        offset_bytes: u64,
        length_bytes: Option<u64>,
        expires_unix_ms: i64,
    },
    CompleteUpload {
        upload_id: String,
        object: ObjectRow,
        /// The lease epoch the completing request holds (remote store): a later lease fences it.
        epoch: Option<i64>,
        /// Store objects the upload no longer needs once complete, recorded as intents.
        cleanup: Vec<Intent>,
    },
    DeleteUpload(String),
    /// Deletes an unfinished upload and records its store objects as intents, one transaction.
    DiscardUpload {
        id: String,
        epoch: Option<i64>,
        cleanup: Vec<Intent>,
    },
    CommitRemote {
        id: String,
        from_offset_bytes: u64,
        offset_bytes: u64,
        length_bytes: Option<u64>,
        expires_unix_ms: i64,
        commit: RemoteCommit,
    },
    TakeLease {
        id: String,
        owner: i64,
        ttl_ms: i64,
    },
    RenewLease {
        id: String,
        epoch: i64,
        ttl_ms: i64,
    },
    ReleaseLease {
        id: String,
        epoch: i64,
    },
    /// Inserts an intent, or sets an existing one's multipart id.
    PutIntent(Intent),
    DeleteIntents(Vec<String>),
    AddToken {
        user_id: i64,
        name: String,
        sha256_hex: String,
        now_unix_ms: i64,
    },
    RevokeToken(String),
    CreateUser {
        name: String,
        quota_bytes: Option<u64>,
        now_unix_ms: i64,
    },
    SetQuota {
        name: String,
        quota_bytes: Option<u64>,
    },
    AddReceipts {
        user_id: i64,
        /// Each with the id its row takes if it is new.
        items: Vec<(String, NewReceipt)>,
        now_unix_ms: i64,
    },
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Applied {
    /// Rows affected.
    Rows(u64),
    /// `CompleteUpload` wrote nothing: the object does not fit its user's quota.
    OverQuota(QuotaExceeded),
    /// `AddReceipts`: one outcome per item, in order.
    Receipts(Vec<ReceiptAdded>),
    /// `TakeLease`: the new epoch, or `None` when a live instance holds the lease.
    Epoch(Option<i64>),
}

#[derive(Debug)]
struct Write {
    op: Op,
    /// What it did, once the batch holding this write is committed.
    done: oneshot::Sender<Result<Applied, sqlx::Error>>,
}

/// Most writes committed together; bounds one transaction's size and latency.
const MAX_BATCH_WRITES: usize = 512;

/// The columns of [`UploadRow`], in its order (a macro so `concat!` can build the SQL text).
macro_rules! upload_columns {
    () => {
        "id, protocol, offset_bytes, length_bytes, metadata_json, metadata_raw, expected_sha256_hex, expected_blake3_hex, idempotency_key, object_id, created_unix_ms, expires_unix_ms, user_id"
    };
}

macro_rules! user_columns {
    () => {
        "id, name, quota_bytes, used_bytes, created_unix_ms"
    };
}

/// Every statement the server runs, for one driver. The dialect arguments are the only
/// differences: `begin` starts the writer's transaction (SQLite must take its write lock at
/// once), `for_update` locks a row a write reads before it writes (PostgreSQL; SQLite's single
/// writer needs none), and `json_open`/`json_close` wrap a JSON array parameter into the rows
/// of its strings.
macro_rules! backend {
    (
        $module:ident,
        $conn:ty,
        $pool:ty,
        begin = $begin:literal,
        for_update = $for_update:literal,
        json_open = $json_open:literal,
        json_close = $json_close:literal,
        now_ms = $now_ms:literal,
        owner_alive = $owner_alive:literal $(,)?
    ) => {
        mod $module {
            use super::*;

            type Conn = $conn;
            pub(super) type Pool = $pool;

            async fn apply(conn: &mut Conn, op: &Op) -> Result<Applied, sqlx::Error> {
                let r = match op {
                    Op::CreateUpload(u) => sqlx::query(concat!(
                        "INSERT INTO uploads (",
                        upload_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                    ))
                    .bind(&u.id)
                    .bind(&u.protocol)
                    .bind(db_int(u.offset_bytes))
                    .bind(u.length_bytes.map(db_int))
                    .bind(&u.metadata_json)
                    .bind(&u.metadata_raw)
                    .bind(&u.expected_sha256_hex)
                    .bind(&u.expected_blake3_hex)
                    .bind(&u.idempotency_key)
                    .bind(&u.object_id)
                    .bind(u.created_unix_ms)
                    .bind(u.expires_unix_ms)
                    .bind(u.user_id)
                    .execute(&mut *conn)
                    .await?,
                    Op::SetProgress {
                        id,
                        from_offset_bytes,
                        offset_bytes,
                        length_bytes,
                        expires_unix_ms,
                    } => sqlx::query(
                        "UPDATE uploads SET offset_bytes = $1, length_bytes = $2, expires_unix_ms = $3 WHERE id = $4 AND object_id IS NULL AND offset_bytes = $5",
                    )
                    .bind(db_int(*offset_bytes))
                    .bind(length_bytes.map(db_int))
                    .bind(expires_unix_ms)
                    .bind(id)
                    .bind(db_int(*from_offset_bytes))
                    .execute(&mut *conn)
                    .await?,
                    Op::CompleteUpload {
                        upload_id,
                        object,
                        epoch,
                        cleanup,
                    } => {
                        return complete_upload(conn, upload_id, object, *epoch, cleanup).await;
                    }
                    Op::DiscardUpload { id, epoch, cleanup } => {
                        let r = sqlx::query(
                            "DELETE FROM uploads WHERE id = $1 AND ($2 IS NULL OR lease_epoch = $2)",
                        )
                        .bind(id)
                        .bind(epoch)
                        .execute(&mut *conn)
                        .await?;
                        if r.rows_affected() > 0 {
                            for i in cleanup {
                                put_intent(conn, i).await?;
                            }
                        }
                        r
                    }
                    Op::CommitRemote {
                        id,
                        from_offset_bytes,
                        offset_bytes,
                        length_bytes,
                        expires_unix_ms,
                        commit,
                    } => {
                        let parts = serde_json::to_string(&commit.state.parts)
                            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                        let tail = serde_json::to_string(&commit.state.tail)
                            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                        // The lease must not have run out either: a holder whose renewals
                        // stalled may have had its uncommitted objects collected.
                        let r = sqlx::query(concat!(
                            "UPDATE uploads SET offset_bytes = $1, length_bytes = $2, expires_unix_ms = $3, multipart_id = $4, parts_json = $5, tail_json = $6 WHERE id = $7 AND object_id IS NULL AND offset_bytes = $8 AND lease_epoch = $9 AND lease_until_ms > ",
                            $now_ms
                        ))
                        .bind(db_int(*offset_bytes))
                        .bind(length_bytes.map(db_int))
                        .bind(expires_unix_ms)
                        .bind(&commit.state.multipart_id)
                        .bind(parts)
                        .bind(tail)
                        .bind(id)
                        .bind(db_int(*from_offset_bytes))
                        .bind(commit.epoch)
                        .execute(&mut *conn)
                        .await?;
                        if r.rows_affected() > 0 {
                            for key in &commit.referenced {
                                sqlx::query("DELETE FROM store_intents WHERE key = $1")
                                    .bind(key)
                                    .execute(&mut *conn)
                                    .await?;
                            }
                            for i in &commit.obsolete {
                                put_intent(conn, i).await?;
                            }
                        }
                        r
                    }
                    Op::TakeLease { id, owner, ttl_ms } => {
                        let epoch: Option<(i64,)> = sqlx::query_as(concat!(
                            "UPDATE uploads SET lease_owner = $2, lease_epoch = lease_epoch + 1, lease_until_ms = ",
                            $now_ms,
                            " + $3 WHERE id = $1 AND object_id IS NULL AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < ",
                            $now_ms,
                            " OR NOT ",
                            $owner_alive,
                            ") RETURNING lease_epoch"
                        ))
                        .bind(id)
                        .bind(owner)
                        .bind(ttl_ms)
                        .fetch_optional(&mut *conn)
                        .await?;
                        return Ok(Applied::Epoch(epoch.map(|e| e.0)));
                    }
                    Op::RenewLease { id, epoch, ttl_ms } => sqlx::query(concat!(
                        "UPDATE uploads SET lease_until_ms = ",
                        $now_ms,
                        " + $1 WHERE id = $2 AND lease_epoch = $3 AND lease_owner IS NOT NULL AND lease_until_ms > ",
                        $now_ms
                    ))
                    .bind(ttl_ms)
                    .bind(id)
                    .bind(epoch)
                    .execute(&mut *conn)
                    .await?,
                    Op::ReleaseLease { id, epoch } => sqlx::query(
                        "UPDATE uploads SET lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND lease_epoch = $2",
                    )
                    .bind(id)
                    .bind(epoch)
                    .execute(&mut *conn)
                    .await?,
                    Op::PutIntent(i) => put_intent(conn, i).await?,
                    Op::DeleteIntents(keys) => {
                        let mut n = 0;
                        for key in keys {
                            n += sqlx::query("DELETE FROM store_intents WHERE key = $1")
                                .bind(key)
                                .execute(&mut *conn)
                                .await?
                                .rows_affected();
                        }
                        return Ok(Applied::Rows(n));
                    }
                    Op::AddReceipts {
                        user_id,
                        items,
                        now_unix_ms,
                    } => {
                        return add_receipts(conn, *user_id, items, *now_unix_ms).await;
                    }
                    Op::DeleteUpload(id) => sqlx::query("DELETE FROM uploads WHERE id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await?,
                    Op::AddToken {
                        user_id,
                        name,
                        sha256_hex,
                        now_unix_ms,
                    } => sqlx::query(
                        "INSERT INTO tokens (sha256_hex, name, created_unix_ms, user_id) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(sha256_hex)
                    .bind(name)
                    .bind(now_unix_ms)
                    .bind(user_id)
                    .execute(&mut *conn)
                    .await?,
                    Op::RevokeToken(sha256_hex) => {
                        sqlx::query("DELETE FROM tokens WHERE sha256_hex = $1")
                            .bind(sha256_hex)
                            .execute(&mut *conn)
                            .await?
                    }
                    Op::CreateUser {
                        name,
                        quota_bytes,
                        now_unix_ms,
                    } => sqlx::query(
                        "INSERT INTO users (id, name, quota_bytes, used_bytes, created_unix_ms) VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM users), $1, $2, 0, $3)",
                    )
                    .bind(name)
                    .bind(quota_bytes.map(db_int))
                    .bind(now_unix_ms)
                    .execute(&mut *conn)
                    .await?,
                    Op::SetQuota { name, quota_bytes } => {
                        sqlx::query("UPDATE users SET quota_bytes = $1 WHERE name = $2")
                            .bind(quota_bytes.map(db_int))
                            .bind(name)
                            .execute(&mut *conn)
                            .await?
                    }
                };
                Ok(Applied::Rows(r.rows_affected()))
            }

            /// Records the object (if new to the store), its ownership by the upload's user (if
            /// new to the user, within the user's quota) and the receipt, in the writer's
            /// transaction. The upload's and the user's rows are locked first (PostgreSQL), so
            /// the quota check, the usage it adds and the listing order cannot interleave with
            /// another completion, on this instance or another.
            async fn complete_upload(
                conn: &mut Conn,
                upload_id: &str,
                o: &ObjectRow,
                epoch: Option<i64>,
                cleanup: &[Intent],
            ) -> Result<Applied, sqlx::Error> {
                // Fenced: a request whose lease was taken over changes nothing.
                let user: Option<(i64,)> = sqlx::query_as(concat!(
                    "SELECT user_id FROM uploads WHERE id = $1 AND ($2 IS NULL OR (lease_epoch = $2 AND object_id IS NULL))",
                    $for_update
                ))
                .bind(upload_id)
                .bind(epoch)
                .fetch_optional(&mut *conn)
                .await?;
                let Some((user_id,)) = user else {
                    return Ok(Applied::Rows(0));
                };
                let (quota, used): (Option<i64>, i64) = sqlx::query_as(concat!(
                    "SELECT quota_bytes, used_bytes FROM users WHERE id = $1",
                    $for_update
                ))
                .bind(user_id)
                .fetch_one(&mut *conn)
                .await?;
                let owned: Option<(i64,)> = sqlx::query_as(
                    "SELECT seq FROM object_owners WHERE user_id = $1 AND object_id = $2",
                )
                .bind(user_id)
                .bind(&o.id)
                .fetch_optional(&mut *conn)
                .await?;
                if owned.is_none() {
                    let used = used.max(0) as u64;
                    if let Some(quota) = quota.map(|q| q.max(0) as u64)
                        && used.saturating_add(o.size_bytes) > quota
                    {
                        return Ok(Applied::OverQuota(QuotaExceeded {
                            used_bytes: used,
                            quota_bytes: quota,
                            needed_bytes: o.size_bytes,
                        }));
                    }
                }
                sqlx::query(
                    "INSERT INTO objects (id, sha256_hex, size_bytes, created_unix_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&o.id)
                .bind(&o.sha256_hex)
                .bind(db_int(o.size_bytes))
                .bind(o.created_unix_ms)
                .execute(&mut *conn)
                .await?;
                if owned.is_none() {
                    sqlx::query(
                        "INSERT INTO object_owners (user_id, object_id, first_stored_ms, seq) VALUES ($1, $2, $3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM object_owners WHERE user_id = $1))",
                    )
                    .bind(user_id)
                    .bind(&o.id)
                    .bind(o.created_unix_ms)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query("UPDATE users SET used_bytes = used_bytes + $1 WHERE id = $2")
                        .bind(db_int(o.size_bytes))
                        .bind(user_id)
                        .execute(&mut *conn)
                        .await?;
                }
                let r = sqlx::query(
                    "UPDATE uploads SET object_id = $1, offset_bytes = $2, length_bytes = $3, completed_unix_ms = $4, lease_owner = NULL, multipart_id = NULL, parts_json = NULL, tail_json = NULL WHERE id = $5",
                )
                .bind(&o.id)
                .bind(db_int(o.size_bytes))
                .bind(db_int(o.size_bytes))
                .bind(o.created_unix_ms)
                .bind(upload_id)
                .execute(&mut *conn)
                .await?;
                for i in cleanup {
                    put_intent(conn, i).await?;
                }
                Ok(Applied::Rows(r.rows_affected()))
            }

            /// Records an intent; an existing one for the key gets the multipart id (set right
            /// after the store answered it).
            async fn put_intent(
                conn: &mut Conn,
                i: &Intent,
            ) -> Result<
                <<Conn as sqlx::Connection>::Database as sqlx::Database>::QueryResult,
                sqlx::Error,
            > {
                sqlx::query(
                    "INSERT INTO store_intents (key, upload_id, kind, multipart_id, created_unix_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET multipart_id = COALESCE(excluded.multipart_id, store_intents.multipart_id), kind = excluded.kind",
                )
                .bind(&i.key)
                .bind(&i.upload_id)
                .bind(&i.kind)
                .bind(&i.multipart_id)
                .bind(i.created_unix_ms)
                .execute(&mut *conn)
                .await
            }

            /// Records receipts for objects `user_id` holds, in the writer's transaction with
            /// the user's row locked (PostgreSQL): the ownership check, the search for the same
            /// receipt and the insert cannot interleave with another write, so two identical
            /// requests racing each other still make one receipt. A receipt is a finished upload
            /// row of protocol `receipt` (no partial file, no bytes): every read of receipts —
            /// the listing, `/receipts`, cancelling one with `DELETE /v1/uploads/{id}` — treats
            /// it like one.
            async fn add_receipts(
                conn: &mut Conn,
                user_id: i64,
                items: &[(String, NewReceipt)],
                now_unix_ms: i64,
            ) -> Result<Applied, sqlx::Error> {
                let _: Option<(i64,)> =
                    sqlx::query_as(concat!("SELECT id FROM users WHERE id = $1", $for_update))
                        .bind(user_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                let mut out = Vec::with_capacity(items.len());
                for (id, item) in items {
                    let size: Option<(i64,)> = sqlx::query_as(
                        "SELECT o.size_bytes FROM object_owners w JOIN objects o ON o.id = w.object_id WHERE w.user_id = $1 AND w.object_id = $2",
                    )
                    .bind(user_id)
                    .bind(&item.object_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some((size,)) = size else {
                        out.push(ReceiptAdded::NotOwned);
                        continue;
                    };
                    // "The same receipt": same user, same object, same metadata (every key and
                    // value).
                    let same: Option<ReceiptTuple> = sqlx::query_as(
                        "SELECT id, COALESCE(completed_unix_ms, created_unix_ms), metadata_json FROM uploads WHERE user_id = $1 AND object_id = $2 AND metadata_json = $3 ORDER BY created_unix_ms, id LIMIT 1",
                    )
                    .bind(user_id)
                    .bind(&item.object_id)
                    .bind(&item.metadata_json)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if let Some(t) = same {
                        out.push(ReceiptAdded::Existing(receipt_from(t)));
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO uploads (id, protocol, offset_bytes, length_bytes, metadata_json, metadata_raw, object_id, created_unix_ms, expires_unix_ms, user_id, completed_unix_ms) VALUES ($1, 'receipt', $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(id)
                    .bind(size)
                    .bind(size)
                    .bind(&item.metadata_json)
                    .bind(&item.metadata_raw)
                    .bind(&item.object_id)
                    .bind(now_unix_ms)
                    .bind(now_unix_ms)
                    .bind(user_id)
                    .bind(now_unix_ms)
                    .execute(&mut *conn)
                    .await?;
                    out.push(ReceiptAdded::Created(Receipt {
                        upload_id: id.clone(),
                        received_unix_ms: now_unix_ms,
                        metadata_json: item.metadata_json.clone(),
                    }));
                }
                Ok(Applied::Receipts(out))
            }

            /// Commits a batch: each write in its own savepoint, so one failing write (a
            /// duplicate id) fails alone while the others commit.
            ///
            /// The transaction is driven with plain `BEGIN` / `COMMIT` statements, not sqlx's
            /// `Transaction`: when SQLite itself ends a transaction on an error (`SQLITE_FULL`,
            /// `SQLITE_IOERR` roll back on their own), sqlx's rollback-on-drop fails and its
            /// nesting counter stays behind; the next `begin` then issues `SAVEPOINT`s whose
            /// `RELEASE` may never commit, and every later write is answered as committed while
            /// only this connection sees it (a full disk produced receipts for objects the
            /// database never held). Here `BEGIN` fails if a transaction is still open (SQLite;
            /// PostgreSQL only warns, so the writer never reuses a connection whose batch
            /// failed) and `COMMIT` fails if none is, so a write is reported committed only
            /// when it is.
            async fn commit_batch(
                conn: &mut Conn,
                batch: &[Write],
            ) -> Result<Vec<Result<Applied, sqlx::Error>>, sqlx::Error> {
                if sqlx::query($begin).execute(&mut *conn).await.is_err() {
                    // A transaction a failed batch could not end: end it now, then start afresh.
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    sqlx::query($begin).execute(&mut *conn).await?;
                }
                let r = apply_batch(conn, batch).await;
                if r.is_err() {
                    // Whatever failed (a write, a savepoint, the commit), no transaction
                    // outlives the batch; "no transaction is active" (SQLite already rolled
                    // back) is fine.
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                }
                r
            }

            async fn apply_batch(
                conn: &mut Conn,
                batch: &[Write],
            ) -> Result<Vec<Result<Applied, sqlx::Error>>, sqlx::Error> {
                if let [only] = batch {
                    // A batch of one needs no savepoint: the transaction is the write's own.
                    let r = apply(conn, &only.op).await;
                    if r.is_err() {
                        // (SQLite may have rolled back already; a transaction left open is
                        // ended by the next batch's `BEGIN` failing.)
                        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    } else {
                        sqlx::query("COMMIT").execute(&mut *conn).await?;
                    }
                    return Ok(vec![r]);
                }
                let mut results = Vec::with_capacity(batch.len());
                for w in batch {
                    sqlx::query("SAVEPOINT ferry_write")
                        .execute(&mut *conn)
                        .await?;
                    let r = apply(conn, &w.op).await;
                    if r.is_err() {
                        sqlx::query("ROLLBACK TO SAVEPOINT ferry_write")
                            .execute(&mut *conn)
                            .await?;
                    }
                    sqlx::query("RELEASE SAVEPOINT ferry_write")
                        .execute(&mut *conn)
                        .await?;
                    results.push(r);
                }
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok(results)
            }

            /// `reconnect_after_failure`: false only for an in-memory database, which lives and
            /// dies with its one connection.
            pub(super) async fn writer(
                pool: Pool,
                mut queue: mpsc::Receiver<Write>,
                reconnect_after_failure: bool,
            ) {
                while let Some(first) = queue.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH_WRITES {
                        match queue.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    let result = match pool.acquire().await {
                        Ok(mut conn) => {
                            // A database that stops answering (packets dropped, no reset) must
                            // not hold every write of this instance for TCP's minutes.
                            let r = tokio::time::timeout(BATCH_TIMEOUT, commit_batch(&mut conn, &batch))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(sqlx::Error::Io(std::io::Error::new(
                                        std::io::ErrorKind::TimedOut,
                                        format!("the database did not answer within {} s", BATCH_TIMEOUT.as_secs()),
                                    )))
                                });
                            if r.is_err() && reconnect_after_failure {
                                // Its `ROLLBACK` may have failed too, and PostgreSQL only warns
                                // when `BEGIN` finds a transaction open: the next batch gets a
                                // fresh connection instead of one in an unknown state.
                                conn.close_on_drop();
                            }
                            r
                        }
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(results) => {
                            for (w, r) in batch.into_iter().zip(results) {
                                let _ = w.done.send(r);
                            }
                        }
                        Err(e) => {
                            for w in batch {
                                let _ = w.done.send(Err(batch_failure(&e)));
                            }
                        }
                    }
                }
            }

            pub(super) async fn upload(
                pool: &Pool,
                id: &str,
            ) -> Result<Option<UploadRow>, sqlx::Error> {
                let row: Option<UploadTuple> = sqlx::query_as(concat!(
                    "SELECT ",
                    upload_columns!(),
                    " FROM uploads WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(upload_from))
            }

            pub(super) async fn upload_by_key(
                pool: &Pool,
                user_id: i64,
                key: &str,
            ) -> Result<Option<UploadRow>, sqlx::Error> {
                let row: Option<UploadTuple> = sqlx::query_as(concat!(
                    "SELECT ",
                    upload_columns!(),
                    " FROM uploads WHERE idempotency_key = $1 AND user_id = $2"
                ))
                .bind(key)
                .bind(user_id)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(upload_from))
            }

            pub(super) async fn expired_uploads(
                pool: &Pool,
                now_unix_ms: i64,
            ) -> Result<Vec<String>, sqlx::Error> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT id FROM uploads WHERE object_id IS NULL AND expires_unix_ms <= $1 LIMIT 1000",
                )
                .bind(now_unix_ms)
                .fetch_all(pool)
                .await?;
                Ok(rows.into_iter().map(|r| r.0).collect())
            }

            pub(super) async fn object(
                pool: &Pool,
                id: &str,
            ) -> Result<Option<ObjectRow>, sqlx::Error> {
                let row: Option<ObjectTuple> = sqlx::query_as(
                    "SELECT id, sha256_hex, size_bytes, created_unix_ms FROM objects WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(object_from))
            }

            pub(super) async fn owned_object(
                pool: &Pool,
                user_id: i64,
                id: &str,
            ) -> Result<Option<ObjectRow>, sqlx::Error> {
                let row: Option<ObjectTuple> = sqlx::query_as(
                    "SELECT o.id, o.sha256_hex, o.size_bytes, o.created_unix_ms FROM object_owners w JOIN objects o ON o.id = w.object_id WHERE w.user_id = $1 AND w.object_id = $2",
                )
                .bind(user_id)
                .bind(id)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(object_from))
            }

            pub(super) async fn objects_present(
                pool: &Pool,
                user_id: i64,
                blake3_json: String,
                sha256_json: String,
            ) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
                let by_blake3: Vec<(String,)> = sqlx::query_as(concat!(
                    "SELECT object_id FROM object_owners WHERE user_id = $1 AND object_id IN (",
                    $json_open,
                    "$2",
                    $json_close,
                    ")"
                ))
                .bind(user_id)
                .bind(blake3_json)
                .fetch_all(pool)
                .await?;
                let by_sha256: Vec<(String,)> = sqlx::query_as(concat!(
                    "SELECT DISTINCT o.sha256_hex FROM objects o JOIN object_owners w ON w.object_id = o.id AND w.user_id = $1 WHERE o.sha256_hex IN (",
                    $json_open,
                    "$2",
                    $json_close,
                    ")"
                ))
                .bind(user_id)
                .bind(sha256_json)
                .fetch_all(pool)
                .await?;
                Ok((
                    by_blake3.into_iter().map(|r| r.0).collect(),
                    by_sha256.into_iter().map(|r| r.0).collect(),
                ))
            }

            pub(super) async fn receipts(
                pool: &Pool,
                user_id: i64,
                object_id: &str,
            ) -> Result<Vec<Receipt>, sqlx::Error> {
                let rows: Vec<ReceiptTuple> = sqlx::query_as(
                    "SELECT id, COALESCE(completed_unix_ms, created_unix_ms), metadata_json FROM uploads WHERE user_id = $1 AND object_id = $2 ORDER BY created_unix_ms, id LIMIT $3",
                )
                .bind(user_id)
                .bind(object_id)
                .bind(MAX_RECEIPTS as i64)
                .fetch_all(pool)
                .await?;
                Ok(rows.into_iter().map(receipt_from).collect())
            }

            pub(super) async fn list_objects(
                pool: &Pool,
                user_id: i64,
                after_seq: i64,
                limit: i64,
            ) -> Result<Vec<OwnedObject>, sqlx::Error> {
                let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT o.id, o.sha256_hex, o.size_bytes, o.created_unix_ms, w.first_stored_ms, w.seq FROM object_owners w JOIN objects o ON o.id = w.object_id WHERE w.user_id = $1 AND w.seq > $2 ORDER BY w.seq LIMIT $3",
                )
                .bind(user_id)
                .bind(after_seq)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| OwnedObject {
                        object: object_from((r.0, r.1, r.2, r.3)),
                        first_stored_ms: r.4,
                        seq: r.5,
                    })
                    .collect())
            }

            pub(super) async fn receipts_of(
                pool: &Pool,
                user_id: i64,
                ids_json: String,
                per_object: i64,
            ) -> Result<Vec<(String, Receipt)>, sqlx::Error> {
                let rows: Vec<(String, String, i64, String)> = sqlx::query_as(concat!(
                    "SELECT object_id, id, received, metadata_json FROM (",
                    "SELECT object_id, id, COALESCE(completed_unix_ms, created_unix_ms) AS received, metadata_json, ",
                    "ROW_NUMBER() OVER (PARTITION BY object_id ORDER BY COALESCE(completed_unix_ms, created_unix_ms) DESC, id DESC) AS n ",
                    "FROM uploads WHERE user_id = $1 AND object_id IN (",
                    $json_open,
                    "$2",
                    $json_close,
                    ")) AS ranked WHERE n <= $3 ORDER BY object_id, received DESC, id DESC"
                ))
                .bind(user_id)
                .bind(ids_json)
                .bind(per_object)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.0, receipt_from((r.1, r.2, r.3))))
                    .collect())
            }

            pub(super) async fn token_user(
                pool: &Pool,
                sha256_hex: &str,
            ) -> Result<Option<i64>, sqlx::Error> {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT user_id FROM tokens WHERE sha256_hex = $1")
                        .bind(sha256_hex)
                        .fetch_optional(pool)
                        .await?;
                Ok(row.map(|r| r.0))
            }

            pub(super) async fn tokens(
                pool: &Pool,
                user_id: Option<i64>,
            ) -> Result<Vec<TokenRow>, sqlx::Error> {
                let rows: Vec<(String, i64, String, String, i64)> = sqlx::query_as(
                    "SELECT t.sha256_hex, t.user_id, u.name, t.name, t.created_unix_ms FROM tokens t JOIN users u ON u.id = t.user_id WHERE $1 IS NULL OR t.user_id = $1 ORDER BY u.name, t.created_unix_ms, t.sha256_hex",
                )
                .bind(user_id)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| TokenRow {
                        sha256_hex: r.0,
                        user_id: r.1,
                        user_name: r.2,
                        name: r.3,
                        created_unix_ms: r.4,
                    })
                    .collect())
            }

            pub(super) async fn user(pool: &Pool, id: i64) -> Result<Option<UserRow>, sqlx::Error> {
                let row: Option<UserTuple> = sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(user_from))
            }

            pub(super) async fn user_by_name(
                pool: &Pool,
                name: &str,
            ) -> Result<Option<UserRow>, sqlx::Error> {
                let row: Option<UserTuple> = sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE name = $1"
                ))
                .bind(name)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(user_from))
            }

            pub(super) async fn users(pool: &Pool) -> Result<Vec<UserRow>, sqlx::Error> {
                let rows: Vec<UserTuple> = sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users ORDER BY name"
                ))
                .fetch_all(pool)
                .await?;
                Ok(rows.into_iter().map(user_from).collect())
            }

            pub(super) async fn remote_state(
                pool: &Pool,
                id: &str,
            ) -> Result<Option<(Option<String>, Option<String>, Option<String>, i64)>, sqlx::Error> {
                sqlx::query_as(
                    "SELECT multipart_id, parts_json, tail_json, lease_epoch FROM uploads WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await
            }

            /// Intents created before `before_ms` whose upload no live request holds: a lease
            /// still valid by the database's clock, of an instance still alive (`me` is the
            /// collecting instance's key). A long append renews its lease, so its objects stay.
            pub(super) async fn old_intents(
                pool: &Pool,
                before_ms: i64,
                me: i64,
            ) -> Result<Vec<Intent>, sqlx::Error> {
                let rows: Vec<(String, String, String, Option<String>, i64)> = sqlx::query_as(concat!(
                    "SELECT key, upload_id, kind, multipart_id, created_unix_ms FROM store_intents i WHERE created_unix_ms < $1 AND NOT EXISTS (SELECT 1 FROM uploads WHERE uploads.id = i.upload_id AND uploads.lease_owner IS NOT NULL AND uploads.lease_until_ms > ",
                    $now_ms,
                    " AND ",
                    $owner_alive,
                    ") ORDER BY created_unix_ms LIMIT 1000"
                ))
                .bind(before_ms)
                .bind(me)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| Intent {
                        key: r.0,
                        upload_id: r.1,
                        kind: r.2,
                        multipart_id: r.3,
                        created_unix_ms: r.4,
                    })
                    .collect())
            }

            pub(super) async fn intent_count(pool: &Pool) -> Result<i64, sqlx::Error> {
                let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM store_intents")
                    .fetch_one(pool)
                    .await?;
                Ok(n.0)
            }

            pub(super) async fn close(pool: &Pool) {
                pool.close().await;
            }
        }
    };
}

backend!(
    sqlite,
    sqlx::SqliteConnection,
    SqlitePool,
    begin = "BEGIN IMMEDIATE",
    for_update = "",
    json_open = "SELECT value FROM json_each(",
    json_close = ")",
    now_ms = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    // One process per SQLite database: a lease of another owner is a dead process's.
    owner_alive = "(lease_owner = $2)",
);

backend!(
    postgres,
    sqlx::PgConnection,
    PgPool,
    begin = "BEGIN",
    for_update = " FOR UPDATE",
    json_open = "SELECT jsonb_array_elements_text(CAST(",
    json_close = " AS jsonb))",
    now_ms = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    // Each instance holds a session advisory lock on its key while it lives (see
    // `Meta::hold_instance_lock`); pg_locks shows a bigint key as classid (high 32 bits) and
    // objid (low 32 bits) with objsubid 1.
    owner_alive = "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND ((CAST(l.classid AS BIGINT) << 32) | CAST(l.objid AS BIGINT)) = uploads.lease_owner)",
);

/// Whether `e` says the database's disk is full: `SQLITE_FULL` (also as an extended code),
/// PostgreSQL's `disk_full` (53100), or an i/o error of that kind.
pub fn is_storage_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return pg.code() == PG_DISK_FULL;
            }
            d.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == SQLITE_FULL)
        }
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

/// SQLite's primary result code for "database or disk is full".
const SQLITE_FULL: i32 = 13;
/// PostgreSQL's SQLSTATE for "disk full".
const PG_DISK_FULL: &str = "53100";

/// The error each write of a failed batch gets: the batch's error cannot be cloned, so its
/// class travels as the error's type (a full disk stays recognisable as one).
fn batch_failure(e: &sqlx::Error) -> sqlx::Error {
    let text = format!("batch commit failed: {e}");
    if is_storage_full(e) {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, text))
    } else if is_unreachable(e) {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            text,
        ))
    } else {
        sqlx::Error::Protocol(text)
    }
}

/// Whether `e` says the database could not be reached (its connection broke, none could be
/// had in time), not that it refused the statement: the request may be repeated as it is.
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::StorageFull,
        sqlx::Error::PoolTimedOut => true,
        // PostgreSQL's connection exceptions (class 08), "shutting down / cannot connect now"
        // (57P01-57P03), a timeout it enforced (57014 statement, 55P03 lock), and a lock cycle
        // or serialisation conflict it broke by failing this write (40P01, 40001): the write
        // did nothing, and the same request may succeed a moment later. (Retrying inside the
        // batch would meet the same cycle: its earlier writes still hold their locks.)
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|pg| {
                let c = pg.code();
                c.starts_with("08")
                    || c.starts_with("57P")
                    || matches!(c, "57014" | "55P03" | "40P01" | "40001")
            }),
        _ => false,
    }
}

type UploadTuple = (
    String,
    String,
    i64,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
);

fn upload_from(t: UploadTuple) -> UploadRow {
    UploadRow {
        id: t.0,
        protocol: t.1,
        offset_bytes: t.2.max(0) as u64,
        length_bytes: t.3.map(|l| l.max(0) as u64),
        metadata_json: t.4,
        metadata_raw: t.5,
        expected_sha256_hex: t.6,
        expected_blake3_hex: t.7,
        idempotency_key: t.8,
        object_id: t.9,
        created_unix_ms: t.10,
        expires_unix_ms: t.11,
        user_id: t.12,
    }
}

type ObjectTuple = (String, String, i64, i64);

fn object_from(t: ObjectTuple) -> ObjectRow {
    ObjectRow {
        id: t.0,
        sha256_hex: t.1,
        size_bytes: t.2.max(0) as u64,
        created_unix_ms: t.3,
    }
}

type UserTuple = (i64, String, Option<i64>, i64, i64);

fn user_from(t: UserTuple) -> UserRow {
    UserRow {
        id: t.0,
        name: t.1,
        quota_bytes: t.2.map(|q| q.max(0) as u64),
        used_bytes: t.3.max(0) as u64,
        created_unix_ms: t.4,
    }
}

/// Receipts of one object read back: the metadata as it was stored.
type ReceiptTuple = (String, i64, String);

fn receipt_from(t: ReceiptTuple) -> Receipt {
    Receipt {
        upload_id: t.0,
        received_unix_ms: t.1,
        metadata_json: t.2,
    }
}

/// Most receipts answered per object (`/receipts`; the listing answers fewer, see
/// [`Meta::receipts_of`]).
pub const MAX_RECEIPTS: usize = 1000;

/// Sizes are limited far below `i64::MAX` by the upload limits, so the casts cannot wrap.
fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Runs one read on whichever backend `meta` has.
macro_rules! read {
    ($meta:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match &$meta.reads {
            Backend::Sqlite(p) => sqlite::$f(p, $($arg),*).await,
            Backend::Postgres(p) => postgres::$f(p, $($arg),*).await,
        }
    };
}

/// The PostgreSQL notification channel of stop requests (see [`Meta::notify_stop`]).
const STOP_CHANNEL: &str = "ferry_stop_append";

/// How long a request waits for a database connection before it fails (retryable).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one group commit may take before its writes fail as unreachable (503).
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Limits PostgreSQL enforces on every connection of an instance: a statement, a wait for a
/// row lock, and a transaction left open by a frozen instance (which would hold its user's
/// row lock against every other instance) end instead of hanging.
const PG_SESSION_LIMITS: [(&str, &str); 3] = [
    ("statement_timeout", "30000"),
    ("lock_timeout", "10000"),
    ("idle_in_transaction_session_timeout", "60000"),
];

impl Meta {
    /// Opens (creating if needed) the database at `path`, or a private in-memory one for `None`.
    pub async fn open(path: Option<&Path>) -> Result<Meta, sqlx::Error> {
        let (pool, write_pool, reconnect_after_failure) = match path {
            Some(p) => {
                let opts = SqliteConnectOptions::new()
                    .filename(p)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10));
                // One writing connection: SQLite admits one writer at a time anyway.
                let write_pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .connect_with(opts.clone())
                    .await?;
                sqlx::migrate!("./migrations").run(&write_pool).await?;
                // No ping before each read: a local file's connection cannot go stale, and
                // the ping is one more round trip to the connection's thread per query.
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .test_before_acquire(false)
                    .connect_with(opts)
                    .await?;
                (pool, write_pool, true)
            }
            None => {
                // One connection: each new connection to `:memory:` would be another database.
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(SqliteConnectOptions::from_str("sqlite::memory:")?)
                    .await?;
                sqlx::migrate!("./migrations").run(&pool).await?;
                (pool.clone(), pool, false)
            }
        };
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH_WRITES);
        tokio::spawn(sqlite::writer(write_pool, queue, reconnect_after_failure));
        Ok(Meta {
            reads: Backend::Sqlite(pool),
            writes,
            pg_options: None,
            instance_lock: Default::default(),
            lock_generation: Default::default(),
            stop_listener: Default::default(),
            lock_backend_pid: Default::default(),
            closed: Default::default(),
        })
    }

    /// Connects to PostgreSQL and brings its schema up to date (`migrations_pg`; sqlx holds an
    /// advisory lock while it migrates, so instances starting together migrate once).
    pub async fn open_postgres(url: &str) -> Result<Meta, sqlx::Error> {
        let opts = PgConnectOptions::from_str(url)?.options(PG_SESSION_LIMITS);
        // One plain connection first: a pool that cannot connect says only that it timed out,
        // this says why (refused, unknown host, authentication, no such database); a host that
        // never answers fails in ACQUIRE_TIMEOUT, not in TCP's minutes.
        let first = tokio::time::timeout(
            ACQUIRE_TIMEOUT,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
        )
        .await
        .map_err(|_| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer from the database within {} s",
                    ACQUIRE_TIMEOUT.as_secs()
                ),
            ))
        })??;
        sqlx::Connection::close(first).await?;
        let write_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations_pg").run(&write_pool).await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts.clone())
            .await?;
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH_WRITES);
        tokio::spawn(postgres::writer(write_pool, queue, true));
        Ok(Meta {
            reads: Backend::Postgres(pool),
            writes,
            pg_options: Some(opts),
            instance_lock: Default::default(),
            lock_generation: Default::default(),
            stop_listener: Default::default(),
            lock_backend_pid: Default::default(),
            closed: Default::default(),
        })
    }

    /// Which backend this is, for the start line and `/healthz`-style reports.
    pub fn backend_name(&self) -> &'static str {
        match self.reads {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    async fn write_applied(&self, op: Op) -> Result<Applied, sqlx::Error> {
        let (done, result) = oneshot::channel();
        self.writes
            .send(Write { op, done })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        result.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    /// A write that only counts rows.
    async fn write(&self, op: Op) -> Result<u64, sqlx::Error> {
        match self.write_applied(op).await? {
            Applied::Rows(n) => Ok(n),
            Applied::OverQuota(_) | Applied::Receipts(_) | Applied::Epoch(_) => {
                Err(sqlx::Error::Protocol(
                    "a write answered with what another kind of write answers".into(),
                ))
            }
        }
    }

    pub async fn close(&self) {
        // This instance's leases count as dead from now on (see `hold_instance_lock`).
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let listener = self
            .stop_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = listener {
            task.abort();
        }
        if let Some((_, conn)) = self.instance_lock.lock().await.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
        read!(self, close())
    }

    pub async fn create_upload(&self, u: &UploadRow) -> Result<(), sqlx::Error> {
        self.write(Op::CreateUpload(u.clone())).await.map(drop)
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRow>, sqlx::Error> {
        read!(self, upload(id))
    }

    /// The upload `user_id` created with this (scoped) idempotency key, if it still exists.
    pub async fn upload_by_key(
        &self,
        user_id: i64,
        key: &str,
    ) -> Result<Option<UploadRow>, sqlx::Error> {
        read!(self, upload_by_key(user_id, key))
    }

    /// Records a durable append: the bytes from `from_offset_bytes` up to `offset_bytes` are
    /// fsynced in the partial file. False when the upload no longer is at `from_offset_bytes`
    /// (completed, deleted, or moved on by a request on another instance): nothing changed.
    pub async fn set_progress(
        &self,
        id: &str,
        from_offset_bytes: u64,
        offset_bytes: u64,
        length_bytes: Option<u64>,
        expires_unix_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let op = Op::SetProgress {
            id: id.into(),
            from_offset_bytes,
            offset_bytes,
            length_bytes,
            expires_unix_ms,
        };
        Ok(self.write(op).await? > 0)
    }

    /// Records the object (if new), its ownership by the upload's user (if new to the user)
    /// and marks the upload complete, in one transaction; or, when the object is new to the
    /// user and over the user's quota, nothing at all (the inner `Err`). Answers whether the
    /// upload still existed.
    pub async fn complete_upload(
        &self,
        upload_id: &str,
        o: &ObjectRow,
    ) -> Result<Result<bool, QuotaExceeded>, sqlx::Error> {
        self.complete_upload_fenced(upload_id, o, None, Vec::new())
            .await
    }

    /// [`Meta::complete_upload`] for a request holding lease `epoch` (nothing changes when the
    /// upload's lease moved on), recording `cleanup` as intents in the same transaction.
    pub async fn complete_upload_fenced(
        &self,
        upload_id: &str,
        o: &ObjectRow,
        epoch: Option<i64>,
        cleanup: Vec<Intent>,
    ) -> Result<Result<bool, QuotaExceeded>, sqlx::Error> {
        let op = Op::CompleteUpload {
            upload_id: upload_id.into(),
            object: o.clone(),
            epoch,
            cleanup,
        };
        match self.write_applied(op).await? {
            Applied::Rows(n) => Ok(Ok(n > 0)),
            Applied::OverQuota(q) => Ok(Err(q)),
            Applied::Receipts(_) | Applied::Epoch(_) => Err(sqlx::Error::Protocol(
                "a completion answered with something else".into(),
            )),
        }
    }

    /// Records receipts of objects `user_id` already holds, one outcome per item in order, in
    /// one transaction (a batch costs one commit). Idempotent: an item whose object already has
    /// a receipt of this user with exactly its metadata (`metadata_json` equal; the server
    /// writes it with sorted keys) answers that receipt and writes nothing, so a client that
    /// never saw an answer simply asks again. An object the user does not hold is
    /// [`ReceiptAdded::NotOwned`], whoever else holds it.
    pub async fn add_receipts(
        &self,
        user_id: i64,
        items: &[NewReceipt],
        now_unix_ms: i64,
    ) -> Result<Vec<ReceiptAdded>, sqlx::Error> {
        let op = Op::AddReceipts {
            user_id,
            items: items
                .iter()
                .map(|i| (uuid::Uuid::now_v7().simple().to_string(), i.clone()))
                .collect(),
            now_unix_ms,
        };
        match self.write_applied(op).await? {
            Applied::Receipts(r) if r.len() == items.len() => Ok(r),
            _ => Err(sqlx::Error::Protocol(
                "adding receipts answered something else".into(),
            )),
        }
    }

    /// Deletes an unfinished upload (only under lease `epoch`, when given) and records the
    /// store objects it referenced as intents in the same transaction, so that whatever
    /// happens next they are found again. False when nothing was deleted.
    pub async fn discard_upload(
        &self,
        id: &str,
        epoch: Option<i64>,
        cleanup: Vec<Intent>,
    ) -> Result<bool, sqlx::Error> {
        let op = Op::DiscardUpload {
            id: id.into(),
            epoch,
            cleanup,
        };
        Ok(self.write(op).await? > 0)
    }

    /// Commits an append whose bytes are in a remote store: offset, parts, tail pieces and
    /// intents in one transaction, only if the upload is still at `from_offset_bytes` under
    /// lease `commit.epoch`. False: fenced, nothing changed.
    pub async fn commit_remote(
        &self,
        id: &str,
        from_offset_bytes: u64,
        offset_bytes: u64,
        length_bytes: Option<u64>,
        expires_unix_ms: i64,
        commit: RemoteCommit,
    ) -> Result<bool, sqlx::Error> {
        let op = Op::CommitRemote {
            id: id.into(),
            from_offset_bytes,
            offset_bytes,
            length_bytes,
            expires_unix_ms,
            commit,
        };
        Ok(self.write(op).await? > 0)
    }

    /// Takes the upload's lease for `owner` for `ttl_ms` (the database's clock) when nobody
    /// holds it, `owner` does, it ran out, or its holder is dead. Answers the new fencing
    /// epoch, or `None` (a live instance holds it, or the upload is finished or gone).
    pub async fn take_lease(
        &self,
        id: &str,
        owner: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let op = Op::TakeLease {
            id: id.into(),
            owner,
            ttl_ms,
        };
        match self.write_applied(op).await? {
            Applied::Epoch(e) => Ok(e),
            _ => Err(sqlx::Error::Protocol(
                "taking a lease answered something else".into(),
            )),
        }
    }

    /// Extends the lease of `epoch`; false when it was taken over (the holder must stop).
    pub async fn renew_lease(
        &self,
        id: &str,
        epoch: i64,
        ttl_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let op = Op::RenewLease {
            id: id.into(),
            epoch,
            ttl_ms,
        };
        Ok(self.write(op).await? > 0)
    }

    pub async fn release_lease(&self, id: &str, epoch: i64) -> Result<bool, sqlx::Error> {
        let op = Op::ReleaseLease {
            id: id.into(),
            epoch,
        };
        Ok(self.write(op).await? > 0)
    }

    pub async fn put_intent(&self, i: Intent) -> Result<(), sqlx::Error> {
        self.write(Op::PutIntent(i)).await.map(drop)
    }

    pub async fn delete_intents(&self, keys: Vec<String>) -> Result<u64, sqlx::Error> {
        self.write(Op::DeleteIntents(keys)).await
    }

    /// The upload's remote state as last committed (`None`: no such upload).
    pub async fn remote_state(&self, id: &str) -> Result<Option<RemoteState>, sqlx::Error> {
        let Some((multipart_id, parts, tail, lease_epoch)) = read!(self, remote_state(id))? else {
            return Ok(None);
        };
        let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        Ok(Some(RemoteState {
            multipart_id,
            parts: match parts.as_deref() {
                None | Some("") => Vec::new(),
                Some(j) => serde_json::from_str(j).map_err(decode)?,
            },
            tail: match tail.as_deref() {
                None | Some("") => Vec::new(),
                Some(j) => serde_json::from_str(j).map_err(decode)?,
            },
            lease_epoch,
        }))
    }

    /// Intents older than `before_ms` whose upload no live request holds (see the backend's
    /// `old_intents`; `me`: the collecting instance's key).
    pub async fn old_intents(&self, before_ms: i64, me: i64) -> Result<Vec<Intent>, sqlx::Error> {
        read!(self, old_intents(before_ms, me))
    }

    /// How many intents exist (tests and audits).
    pub async fn intent_count(&self) -> Result<i64, sqlx::Error> {
        read!(self, intent_count())
    }

    /// On PostgreSQL: holds a session advisory lock on `key` on a connection of its own for as
    /// long as this `Meta` lives, which is how other instances see that this one is alive (the
    /// lock goes when the process dies and its connection with it). On SQLite: nothing.
    pub async fn hold_instance_lock(&self, key: i64) -> Result<(), sqlx::Error> {
        self.ensure_instance_lock(key, Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// Checks, with one round trip bounded by `wait`, that this instance still holds its
    /// advisory lock, and takes it again if its connection broke (counting a loss: see
    /// [`Meta::lock_generation`]). Answers the generation the lock is held in. A lock that a
    /// broken session of ours still holds on the server is an unreachable database until the
    /// server lets it go. On SQLite: always generation 0.
    pub async fn ensure_instance_lock(&self, key: i64, wait: Duration) -> Result<u64, sqlx::Error> {
        use std::sync::atomic::Ordering;
        let Some(opts) = &self.pg_options else {
            return Ok(0);
        };
        if self.closed.load(Ordering::SeqCst) {
            return Err(sqlx::Error::PoolClosed);
        }
        let unreachable = |what: &str| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                what.to_string(),
            ))
        };
        // Bounded as a whole: callers queue here (renewals, part writes) and each must know in
        // time whether the lock is still held.
        let mut held = tokio::time::timeout(wait, self.instance_lock.lock())
            .await
            .map_err(|_| unreachable("checking the instance lock is taking too long"))?;
        if held.as_ref().is_some_and(|(k, _)| *k != key) {
            // Another identity (tests give one `Meta` several): its lock goes with it.
            *held = None;
        }
        if let Some((_, conn)) = held.as_mut() {
            let ping = sqlx::query("SELECT 1").execute(&mut *conn);
            match tokio::time::timeout(wait, ping).await {
                Ok(Ok(_)) => return Ok(self.lock_generation.load(Ordering::SeqCst)),
                Ok(Err(e)) => tracing::warn!(error = %e, "lost the instance lock's connection"),
                Err(_) => tracing::warn!("the instance lock's connection stopped answering"),
            }
            // Others may take this instance's leases over from now on.
            *held = None;
            self.lock_generation.fetch_add(1, Ordering::SeqCst);
        }
        let earlier_pid = self.lock_backend_pid.load(Ordering::SeqCst);
        let take = async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(opts).await?;
            let try_lock = "SELECT pg_try_advisory_lock($1), pg_backend_pid()";
            let (mut got, pid): (bool, i32) = sqlx::query_as(try_lock)
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if !got && earlier_pid != 0 {
                // Our earlier session still holds it on the server (a partition: the server
                // has not noticed the connection is gone). It is ours to end.
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(earlier_pid)
                    .execute(&mut conn)
                    .await?;
                let again: (bool, i32) = sqlx::query_as(try_lock)
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?;
                got = again.0;
            }
            Ok::<_, sqlx::Error>(got.then_some((conn, pid)))
        };
        match tokio::time::timeout(wait, take).await {
            Ok(Ok(Some((conn, pid)))) => {
                self.lock_backend_pid.store(pid, Ordering::SeqCst);
                *held = Some((key, conn));
                Ok(self.lock_generation.load(Ordering::SeqCst))
            }
            Ok(Ok(None)) => Err(unreachable(
                "the instance lock is still held by an earlier session of this instance",
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unreachable("taking the instance lock timed out")),
        }
    }

    /// Asks whichever instance runs an append on upload `id` to stop it (PostgreSQL: a
    /// notification every instance listens for, see [`Meta::listen_for_stops`]). On SQLite, one
    /// instance: nothing to send.
    pub async fn notify_stop(&self, id: &str) -> Result<(), sqlx::Error> {
        if let Backend::Postgres(pool) = &self.reads {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(STOP_CHANNEL)
                .bind(id)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// PostgreSQL: listens for other instances' stop requests ([`Meta::notify_stop`]) and
    /// calls `on_stop` with each one's upload id, until [`Meta::close`]. On SQLite: nothing.
    pub async fn listen_for_stops(
        &self,
        on_stop: impl Fn(&str) + Send + 'static,
    ) -> Result<(), sqlx::Error> {
        let Backend::Postgres(pool) = &self.reads else {
            return Ok(());
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(STOP_CHANNEL).await?;
        let task = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => on_stop(n.payload()),
                    Err(sqlx::Error::PoolClosed) => return,
                    // `recv` connects again on the next call; a request missed meanwhile
                    // leaves its asker answering busy, as it would without.
                    Err(e) => {
                        tracing::warn!(error = %e, "stop requests: the listener failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        let old = self
            .stop_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task.abort_handle());
        if let Some(old) = old {
            old.abort();
        }
        Ok(())
    }

    /// How many times this instance lost its advisory lock (see [`Meta::ensure_instance_lock`]).
    pub fn lock_generation(&self) -> u64 {
        self.lock_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool, sqlx::Error> {
        Ok(self.write(Op::DeleteUpload(id.into())).await? > 0)
    }

    /// Unfinished uploads whose `expires_unix_ms` is at or before `now_unix_ms`.
    pub async fn expired_uploads(&self, now_unix_ms: i64) -> Result<Vec<String>, sqlx::Error> {
        read!(self, expired_uploads(now_unix_ms))
    }

    pub async fn object(&self, id: &str) -> Result<Option<ObjectRow>, sqlx::Error> {
        read!(self, object(id))
    }

    /// The object `id` if `user_id` owns it: another user's object is no object at all.
    pub async fn owned_object(
        &self,
        user_id: i64,
        id: &str,
    ) -> Result<Option<ObjectRow>, sqlx::Error> {
        read!(self, owned_object(user_id, id))
    }

    /// Which of `blake3_hex` / `sha256_hex` name objects `user_id` owns. The lists travel as
    /// one JSON parameter each, so a batch of thousands is one statement with a fixed text.
    pub async fn objects_present(
        &self,
        user_id: i64,
        blake3_hex: &[String],
        sha256_hex: &[String],
    ) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
        let b = serde_json::to_string(blake3_hex).unwrap_or_else(|_| "[]".into());
        let s = serde_json::to_string(sha256_hex).unwrap_or_else(|_| "[]".into());
        read!(self, objects_present(user_id, b, s))
    }

    /// `user_id`'s finished uploads that produced `object_id`, oldest first (at most
    /// [`MAX_RECEIPTS`]).
    pub async fn receipts(
        &self,
        user_id: i64,
        object_id: &str,
    ) -> Result<Vec<Receipt>, sqlx::Error> {
        read!(self, receipts(user_id, object_id))
    }

    /// One page of `user_id`'s objects in listing order: those after `after_seq`, at most
    /// `limit`.
    pub async fn list_objects(
        &self,
        user_id: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<OwnedObject>, sqlx::Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        read!(self, list_objects(user_id, after_seq, limit))
    }

    /// The receipts of several objects at once for `user_id`, newest first, at most
    /// `per_object` each: `(object id, receipt)` grouped by object.
    pub async fn receipts_of(
        &self,
        user_id: i64,
        object_ids: &[String],
        per_object: usize,
    ) -> Result<Vec<(String, Receipt)>, sqlx::Error> {
        let ids = serde_json::to_string(object_ids).unwrap_or_else(|_| "[]".into());
        let per_object = i64::try_from(per_object).unwrap_or(i64::MAX);
        read!(self, receipts_of(user_id, ids, per_object))
    }

    pub async fn add_token(
        &self,
        user_id: i64,
        name: &str,
        sha256_hex: &str,
        now_unix_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let op = Op::AddToken {
            user_id,
            name: name.into(),
            sha256_hex: sha256_hex.into(),
            now_unix_ms,
        };
        self.write(op).await.map(drop)
    }

    /// The user a token hash belongs to, if the token is known (and not revoked).
    pub async fn token_user(&self, sha256_hex: &str) -> Result<Option<i64>, sqlx::Error> {
        read!(self, token_user(sha256_hex))
    }

    /// Every token (of `user_id`, if given), by user name and age.
    pub async fn tokens(&self, user_id: Option<i64>) -> Result<Vec<TokenRow>, sqlx::Error> {
        read!(self, tokens(user_id))
    }

    /// Forgets a token: from the commit on, requests with it are refused.
    pub async fn revoke_token(&self, sha256_hex: &str) -> Result<bool, sqlx::Error> {
        Ok(self.write(Op::RevokeToken(sha256_hex.into())).await? > 0)
    }

    /// Creates a user (names are unique: a second one with the same name fails).
    pub async fn create_user(
        &self,
        name: &str,
        quota_bytes: Option<u64>,
        now_unix_ms: i64,
    ) -> Result<UserRow, sqlx::Error> {
        let op = Op::CreateUser {
            name: name.into(),
            quota_bytes,
            now_unix_ms,
        };
        self.write(op).await?;
        self.user_by_name(name)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Sets (or, with `None`, lifts) a user's quota; false when there is no such user.
    pub async fn set_quota(
        &self,
        name: &str,
        quota_bytes: Option<u64>,
    ) -> Result<bool, sqlx::Error> {
        let op = Op::SetQuota {
            name: name.into(),
            quota_bytes,
        };
        Ok(self.write(op).await? > 0)
    }

    pub async fn user(&self, id: i64) -> Result<Option<UserRow>, sqlx::Error> {
        read!(self, user(id))
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, sqlx::Error> {
        read!(self, user_by_name(name))
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, sqlx::Error> {
        read!(self, users())
    }
}

#[cfg(test)]
mod tests {
    //! The conformance suite every metadata backend must pass.
    use super::*;

    fn upload(id: &str, expires_unix_ms: i64) -> UploadRow {
        UploadRow {
            id: id.into(),
            protocol: "tus".into(),
            offset_bytes: 0,
            length_bytes: Some(10),
            metadata_json: "{}".into(),
            metadata_raw: None,
            expected_sha256_hex: None,
            expected_blake3_hex: None,
            idempotency_key: None,
            object_id: None,
            created_unix_ms: 1,
            expires_unix_ms,
            user_id: DEFAULT_USER_ID,
        }
    }

    async fn conformance(m: Meta) {
        assert_eq!(m.upload("u1").await.unwrap(), None);
        m.create_upload(&upload("u1", 100)).await.unwrap();
        m.create_upload(&upload("u2", 300)).await.unwrap();
        assert!(
            m.create_upload(&upload("u1", 100)).await.is_err(),
            "ids are unique"
        );
        assert!(m.set_progress("u1", 0, 4, Some(10), 200).await.unwrap());
        assert!(
            !m.set_progress("u1", 0, 6, Some(10), 200).await.unwrap(),
            "an append from an offset the upload has left changes nothing"
        );
        let u = m.upload("u1").await.unwrap().unwrap();
        assert_eq!(
            (u.offset_bytes, u.length_bytes, u.expires_unix_ms),
            (4, Some(10), 200)
        );
        assert_eq!(
            m.expired_uploads(250).await.unwrap(),
            vec!["u1".to_string()]
        );

        let o = ObjectRow {
            id: "b3".into(),
            sha256_hex: "s2".into(),
            size_bytes: 10,
            created_unix_ms: 5,
        };
        assert_eq!(m.complete_upload("u1", &o).await.unwrap(), Ok(true));
        assert_eq!(m.complete_upload("u2", &o).await.unwrap(), Ok(true));
        assert_eq!(m.object("b3").await.unwrap(), Some(o.clone()));
        assert!(
            m.expired_uploads(10_000).await.unwrap().is_empty(),
            "complete uploads never expire"
        );
        let u = m.upload("u1").await.unwrap().unwrap();
        assert_eq!((u.object_id.as_deref(), u.offset_bytes), (Some("b3"), 10));
        // A completed upload's progress cannot be rewound.
        assert!(!m.set_progress("u1", 10, 0, None, 0).await.unwrap());
        assert_eq!(m.upload("u1").await.unwrap().unwrap().offset_bytes, 10);
        assert_eq!(m.receipts(DEFAULT_USER_ID, "b3").await.unwrap().len(), 2);

        let many: Vec<String> = (0..2000)
            .map(|i| format!("x{i}"))
            .chain(["b3".into()])
            .collect();
        let (b, s) = m
            .objects_present(DEFAULT_USER_ID, &many, &["s2".into(), "nope".into()])
            .await
            .unwrap();
        assert_eq!((b, s), (vec!["b3".to_string()], vec!["s2".to_string()]));

        assert!(m.delete_upload("u2").await.unwrap());
        assert!(!m.delete_upload("u2").await.unwrap());

        // Concurrent writes share transactions; a failing one (duplicate id) fails alone.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let m = m.clone();
            let id = if i == 100 {
                "g0".to_string()
            } else {
                format!("g{i}")
            };
            tasks.push(tokio::spawn(async move {
                m.create_upload(&upload(&id, 1)).await
            }));
        }
        let mut failures = 0;
        for t in tasks {
            failures += t.await.unwrap().is_err() as usize;
        }
        assert_eq!(failures, 1);
        assert_eq!(m.expired_uploads(i64::MAX).await.unwrap().len(), 199);

        m.add_token(DEFAULT_USER_ID, "phone", "h1", 1)
            .await
            .unwrap();
        assert_eq!(m.token_user("h1").await.unwrap(), Some(DEFAULT_USER_ID));
        assert_eq!(m.token_user("h2").await.unwrap(), None);

        accounts(&m).await;
        leases(&m).await;
    }

    /// Leases, fencing and intents (remote-store uploads).
    async fn leases(m: &Meta) {
        m.create_upload(&upload("l1", i64::MAX)).await.unwrap();
        let e1 = m.take_lease("l1", 11, 30_000).await.unwrap().unwrap();
        assert_eq!(
            m.take_lease("l1", 11, 30_000).await.unwrap(),
            Some(e1 + 1),
            "the holder takes its own lease again, with a new epoch"
        );
        // Instance 12 holds no advisory lock (PostgreSQL) / is another process (SQLite): dead.
        let e2 = m.take_lease("l1", 12, 30_000).await.unwrap().unwrap();
        assert_eq!(e2, e1 + 2);
        let state = |offset: u64| RemoteState {
            multipart_id: Some("mpu".into()),
            parts: vec!["etag1".into()],
            tail: vec![Piece {
                key: format!("uploads/l1/tail-{offset}"),
                size: 3,
            }],
            lease_epoch: 0,
        };
        let intent = |key: &str| Intent {
            key: key.into(),
            upload_id: "l1".into(),
            kind: INTENT_PIECE.into(),
            multipart_id: None,
            created_unix_ms: 5,
        };
        m.put_intent(intent("uploads/l1/tail-4")).await.unwrap();
        let commit = |epoch: i64| RemoteCommit {
            epoch,
            state: state(4),
            referenced: vec!["uploads/l1/tail-4".into()],
            obsolete: vec![intent("uploads/l1/old")],
        };
        assert!(
            !m.commit_remote("l1", 0, 4, None, 9, commit(e1))
                .await
                .unwrap(),
            "a stale epoch commits nothing, at the right offset"
        );
        assert_eq!(m.intent_count().await.unwrap(), 1);
        assert!(!m.renew_lease("l1", e1, 30_000).await.unwrap());
        assert!(m.renew_lease("l1", e2, 30_000).await.unwrap());
        assert!(
            m.commit_remote("l1", 0, 4, None, 9, commit(e2))
                .await
                .unwrap()
        );
        let got = m.remote_state("l1").await.unwrap().unwrap();
        assert_eq!(
            (got.parts, got.tail, got.lease_epoch),
            (state(4).parts, state(4).tail, e2)
        );
        // The referenced piece's intent went, the obsolete one's came, in that commit; the
        // collector leaves it while a live lease may still be writing: valid by the database's
        // clock, held by a live instance (PostgreSQL: its advisory lock; SQLite: the
        // collector itself).
        m.hold_instance_lock(12).await.unwrap();
        assert!(m.old_intents(i64::MAX, 12).await.unwrap().is_empty());
        if m.backend_name() == "sqlite" {
            assert_eq!(
                m.old_intents(i64::MAX, 99).await.unwrap().len(),
                1,
                "SQLite: another owner's lease is a dead process's"
            );
        }
        assert!(m.release_lease("l1", e2).await.unwrap());
        let left = m.old_intents(i64::MAX, 12).await.unwrap();
        assert_eq!(
            left.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["uploads/l1/old"]
        );
        let o = ObjectRow {
            id: "lobj".into(),
            sha256_hex: "ls".into(),
            size_bytes: 4,
            created_unix_ms: 1,
        };
        assert_eq!(
            m.complete_upload_fenced("l1", &o, Some(e1), vec![])
                .await
                .unwrap(),
            Ok(false),
            "a stale epoch does not complete"
        );
        // Liveness: an owner holding its instance lock keeps the lease (PostgreSQL only).
        m.hold_instance_lock(13).await.unwrap();
        let e3 = m.take_lease("l1", 13, 30_000).await.unwrap().unwrap();
        let other = m.take_lease("l1", 14, 30_000).await.unwrap();
        if m.backend_name() == "postgres" {
            assert_eq!(other, None, "a live holder's lease is not taken");
            // Run out (a zero time to live): then it is.
            assert!(m.renew_lease("l1", e3, -1).await.unwrap());
            assert_eq!(m.take_lease("l1", 14, 30_000).await.unwrap(), Some(e3 + 1));
        } else {
            assert_eq!(
                other,
                Some(e3 + 1),
                "SQLite: another owner is a dead process"
            );
        }
        assert!(
            m.delete_intents(vec!["uploads/l1/old".into()])
                .await
                .unwrap()
                == 1
        );
        assert!(
            m.discard_upload("l1", None, vec![intent("uploads/l1/x")])
                .await
                .unwrap()
        );
        assert_eq!(m.intent_count().await.unwrap(), 1);
    }

    /// Users, ownership, quota and listing order.
    async fn accounts(m: &Meta) {
        let default = m.user(DEFAULT_USER_ID).await.unwrap().unwrap();
        assert_eq!(default.name, DEFAULT_USER_NAME);
        assert_eq!(default.used_bytes, 10, "b3 counted once for two receipts");
        let bob = m.create_user("bob", Some(25), 7).await.unwrap();
        assert_ne!(bob.id, DEFAULT_USER_ID);
        assert!(
            m.create_user("bob", None, 8).await.is_err(),
            "names are unique"
        );
        m.add_token(bob.id, "laptop", "hb", 9).await.unwrap();
        assert_eq!(m.token_user("hb").await.unwrap(), Some(bob.id));
        let bobs = m.tokens(Some(bob.id)).await.unwrap();
        assert_eq!(bobs.len(), 1);
        assert_eq!(
            (bobs[0].name.as_str(), bobs[0].user_name.as_str()),
            ("laptop", "bob")
        );
        assert_eq!(m.tokens(None).await.unwrap().len(), 2);

        // The same object, completed by bob: his own ownership and receipt.
        let b3 = m.object("b3").await.unwrap().unwrap();
        assert_eq!(m.owned_object(bob.id, "b3").await.unwrap(), None);
        assert_eq!(
            m.objects_present(bob.id, &["b3".into()], &["s2".into()])
                .await
                .unwrap(),
            (vec![], vec![])
        );
        let mut u = upload("bob-1", 1);
        u.user_id = bob.id;
        m.create_upload(&u).await.unwrap();
        assert_eq!(m.complete_upload("bob-1", &b3).await.unwrap(), Ok(true));
        assert_eq!(
            m.owned_object(bob.id, "b3").await.unwrap(),
            Some(b3.clone())
        );
        assert_eq!(m.receipts(bob.id, "b3").await.unwrap().len(), 1);
        // u2's receipt was deleted above; u1's is the default user's alone.
        assert_eq!(m.receipts(DEFAULT_USER_ID, "b3").await.unwrap().len(), 1);
        assert_eq!(m.user(bob.id).await.unwrap().unwrap().used_bytes, 10);

        // 10 used of 25: a second object of 10 fits, a third does not, and writes nothing.
        for (i, fits) in [(2, true), (3, false)] {
            let id = format!("bob-{i}");
            let mut u = upload(&id, 1);
            u.user_id = bob.id;
            m.create_upload(&u).await.unwrap();
            let o = ObjectRow {
                id: format!("o{i}"),
                sha256_hex: format!("s{i}"),
                size_bytes: 10,
                created_unix_ms: 20 + i,
            };
            let r = m.complete_upload(&id, &o).await.unwrap();
            if fits {
                assert_eq!(r, Ok(true));
            } else {
                assert_eq!(
                    r,
                    Err(QuotaExceeded {
                        used_bytes: 20,
                        quota_bytes: 25,
                        needed_bytes: 10
                    })
                );
                assert_eq!(m.object(&o.id).await.unwrap(), None);
                assert_eq!(m.upload(&id).await.unwrap().unwrap().object_id, None);
            }
        }
        // An object the user already owns adds nothing, whatever the quota.
        assert!(m.set_quota("bob", Some(1)).await.unwrap());
        let mut u = upload("bob-4", 1);
        u.user_id = bob.id;
        m.create_upload(&u).await.unwrap();
        assert_eq!(m.complete_upload("bob-4", &b3).await.unwrap(), Ok(true));
        assert!(m.set_quota("bob", None).await.unwrap());
        assert!(!m.set_quota("nobody", None).await.unwrap());
        let bob = m.user_by_name("bob").await.unwrap().unwrap();
        assert_eq!((bob.quota_bytes, bob.used_bytes), (None, 20));

        // Listing: bob's objects in the order he stored them, paged by `seq`.
        let page = m.list_objects(bob.id, 0, 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].object.id, "b3");
        let rest = m.list_objects(bob.id, page[0].seq, 10).await.unwrap();
        assert_eq!(
            rest.iter()
                .map(|o| o.object.id.as_str())
                .collect::<Vec<_>>(),
            ["o2"]
        );
        let receipts = m
            .receipts_of(bob.id, &["b3".into(), "o2".into()], 1)
            .await
            .unwrap();
        assert_eq!(receipts.len(), 2, "one per object: {receipts:?}");
        assert_eq!(receipts[0].1.upload_id, "bob-4", "newest first");

        // The usage counter is the sum it stands for.
        for user in m.users().await.unwrap() {
            let mut sum = 0;
            let mut after = 0;
            loop {
                let page = m.list_objects(user.id, after, 2).await.unwrap();
                let Some(last) = page.last() else { break };
                after = last.seq;
                sum += page.iter().map(|o| o.object.size_bytes).sum::<u64>();
            }
            assert_eq!(user.used_bytes, sum, "{}", user.name);
        }

        assert!(m.revoke_token("hb").await.unwrap());
        assert!(!m.revoke_token("hb").await.unwrap());
        assert_eq!(m.token_user("hb").await.unwrap(), None);
    }

    /// A full disk fails batches in the two ways SQLite has: it rolls the whole transaction
    /// back itself (`SQLITE_FULL` mid-write), or the commit fails and leaves it open. Triggers
    /// reproduce both without a full disk: `RAISE(ROLLBACK)` ends the transaction from inside a
    /// write, and a deferred foreign key fails the commit. Afterwards every write answered as
    /// committed must be in the database as another connection sees it.
    #[tokio::test]
    async fn a_failed_batch_never_hides_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let m = Meta::open(Some(&path)).await.unwrap();
        let other = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(&path))
            .await
            .unwrap();
        for sql in [
            "CREATE TABLE fault_parent (id TEXT PRIMARY KEY)",
            "CREATE TABLE fault_child (parent TEXT REFERENCES fault_parent(id) DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TRIGGER fault_rollback AFTER INSERT ON uploads WHEN NEW.id = 'rolled-back' \
             BEGIN SELECT RAISE(ROLLBACK, 'simulated: transaction rolled back by SQLite'); END",
            "CREATE TRIGGER fault_commit AFTER INSERT ON uploads WHEN NEW.id = 'commit-fails' \
             BEGIN INSERT INTO fault_child VALUES ('missing'); END",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&other)
                .await
                .unwrap();
        }
        let visible = |id: &'static str| {
            let other = other.clone();
            async move {
                let n: (i64,) = sqlx::query_as("SELECT count(*) FROM uploads WHERE id = ?")
                    .bind(id)
                    .fetch_one(&other)
                    .await
                    .unwrap();
                n.0 == 1
            }
        };
        // Twice each, in turn: the first failure may leave state behind that the next trips on.
        for round in 0..2 {
            assert!(m.create_upload(&upload("rolled-back", 1)).await.is_err());
            assert!(m.create_upload(&upload("commit-fails", 1)).await.is_err());
            let id: &'static str = ["after-1", "after-2"][round];
            m.create_upload(&upload(id, 1)).await.unwrap();
            assert!(
                visible(id).await,
                "{id} answered as committed but not in the database"
            );
            assert!(m.set_progress(id, 0, 4, Some(10), 2).await.unwrap());
        }
        assert!(!visible("rolled-back").await);
        assert!(!visible("commit-fails").await);
        let (offset,): (i64,) =
            sqlx::query_as("SELECT offset_bytes FROM uploads WHERE id = 'after-2'")
                .fetch_one(&other)
                .await
                .unwrap();
        assert_eq!(offset, 4);
        // And after a restart (the writer's connection gone), the same.
        m.close().await;
        drop(m);
        let m = Meta::open(Some(&path)).await.unwrap();
        assert_eq!(
            m.upload("after-1").await.unwrap().map(|u| u.offset_bytes),
            Some(4)
        );
        assert_eq!(
            m.upload("after-2").await.unwrap().map(|u| u.offset_bytes),
            Some(4)
        );
    }

    #[test]
    fn storage_full_is_recognised() {
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "x");
        assert!(is_storage_full(&sqlx::Error::Io(full)));
        assert!(!is_storage_full(&sqlx::Error::PoolClosed));
    }

    #[tokio::test]
    async fn sqlite_file_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(Meta::open(Some(&dir.path().join("meta.db"))).await.unwrap()).await;
    }

    #[tokio::test]
    async fn sqlite_memory_conforms() {
        conformance(Meta::open(None).await.unwrap()).await;
    }

    /// The same suite on PostgreSQL, in a database of its own.
    #[tokio::test]
    async fn postgres_conforms() {
        let Some(url) = fresh_postgres_database().await else {
            return;
        };
        let m = Meta::open_postgres(&url).await.unwrap();
        assert_eq!(m.backend_name(), "postgres");
        conformance(m).await;
    }

    /// Two instances on one PostgreSQL completing uploads of one user at once: the quota and
    /// the listing order hold as if one writer had done it all.
    #[tokio::test]
    async fn postgres_instances_serialise_per_user() {
        let Some(url) = fresh_postgres_database().await else {
            return;
        };
        let (a, b) = (
            Meta::open_postgres(&url).await.unwrap(),
            Meta::open_postgres(&url).await.unwrap(),
        );
        let user = a.create_user("carol", Some(100 * 10), 1).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..150 {
            let m = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let mut u = upload(&format!("c{i}"), 1);
                u.user_id = user.id;
                m.create_upload(&u).await.unwrap();
                let o = ObjectRow {
                    id: format!("obj{i}"),
                    sha256_hex: format!("sha{i}"),
                    size_bytes: 10,
                    created_unix_ms: i,
                };
                m.complete_upload(&u.id, &o).await.unwrap()
            }));
        }
        let mut stored = 0;
        for t in tasks {
            stored += t.await.unwrap().is_ok() as usize;
        }
        assert_eq!(stored, 100, "exactly the quota's worth completes");
        let carol = b.user(user.id).await.unwrap().unwrap();
        assert_eq!(carol.used_bytes, 1000);
        let listed = a.list_objects(user.id, 0, 1000).await.unwrap();
        let seqs: Vec<i64> = listed.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<i64>>(), "no gap, no repeat");
    }

    /// A database of its own on the scale-out PostgreSQL (`FERRY_TEST_PG_URL`, the admin URL
    /// `scripts/scaleout` exports), or `None` when it does not run — except under CI, which
    /// must run these.
    pub(crate) async fn fresh_postgres_database() -> Option<String> {
        let Ok(admin) = std::env::var("FERRY_TEST_PG_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the PostgreSQL tests: start them with scripts/scaleout"
            );
            eprintln!("FERRY_TEST_PG_URL unset: skipping the PostgreSQL run");
            return None;
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Some(format!("{base}/{name}"))
    }
}
