//! The server's metadata (uploads, objects, device tokens) in SQL through sqlx.
//!
//! SQLite in WAL mode with `synchronous=FULL` is the embedded default: a committed write survives
//! `kill -9` and power loss. The SQL is kept portable (no SQLite-only syntax in queries) so a
//! PostgreSQL pool can replace it later; the conformance tests in this module run against a file
//! database and an in-memory one.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    /// BLAKE3 of the content, lowercase hex: objects are content-addressed.
    pub id: String,
    pub sha256_hex: String,
    pub size_bytes: u64,
    pub created_unix_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Meta {
    /// Reads; with a file database, separate connections that WAL lets run beside the writer.
    pool: SqlitePool,
    /// Writes go through one task that commits everything queued in one transaction (group
    /// commit): `synchronous=FULL` costs one fsync per batch instead of one per request.
    writes: mpsc::Sender<Write>,
}

#[derive(Debug)]
enum Op {
    CreateUpload(UploadRow),
    SetProgress {
        id: String,
        offset_bytes: u64,
        length_bytes: Option<u64>,
        expires_unix_ms: i64,
    },
    CompleteUpload {
        upload_id: String,
        object: ObjectRow,
    },
    DeleteUpload(String),
    AddToken {
        name: String,
        sha256_hex: String,
        now_unix_ms: i64,
    },
}

#[derive(Debug)]
struct Write {
    op: Op,
    /// Rows affected, once the batch holding this write is committed.
    done: oneshot::Sender<Result<u64, sqlx::Error>>,
}

/// Most writes committed together; bounds one transaction's size and latency.
const MAX_BATCH_WRITES: usize = 512;

async fn apply(conn: &mut SqliteConnection, op: &Op) -> Result<u64, sqlx::Error> {
    let r = match op {
        Op::CreateUpload(u) => sqlx::query(
            "INSERT INTO uploads (id, protocol, offset_bytes, length_bytes, metadata_json, metadata_raw, expected_sha256_hex, expected_blake3_hex, idempotency_key, object_id, created_unix_ms, expires_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
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
        .execute(&mut *conn)
        .await?,
        Op::SetProgress { id, offset_bytes, length_bytes, expires_unix_ms } => sqlx::query(
            "UPDATE uploads SET offset_bytes = ?, length_bytes = ?, expires_unix_ms = ? WHERE id = ? AND object_id IS NULL",
        )
        .bind(db_int(*offset_bytes))
        .bind(length_bytes.map(db_int))
        .bind(expires_unix_ms)
        .bind(id)
        .execute(&mut *conn)
        .await?,
        Op::CompleteUpload { upload_id, object: o } => {
            sqlx::query(
                "INSERT INTO objects (id, sha256_hex, size_bytes, created_unix_ms) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&o.id)
            .bind(&o.sha256_hex)
            .bind(db_int(o.size_bytes))
            .bind(o.created_unix_ms)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE uploads SET object_id = ?, offset_bytes = ?, length_bytes = ? WHERE id = ?",
            )
            .bind(&o.id)
            .bind(db_int(o.size_bytes))
            .bind(db_int(o.size_bytes))
            .bind(upload_id)
            .execute(&mut *conn)
            .await?
        }
        Op::DeleteUpload(id) => sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?,
        Op::AddToken { name, sha256_hex, now_unix_ms } => {
            sqlx::query("INSERT INTO tokens (sha256_hex, name, created_unix_ms) VALUES (?, ?, ?)")
                .bind(sha256_hex)
                .bind(name)
                .bind(now_unix_ms)
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(r.rows_affected())
}

/// Commits a batch: each write in its own savepoint, so one failing write (a duplicate id)
/// fails alone while the others commit.
///
/// The transaction is driven with plain `BEGIN IMMEDIATE` / `COMMIT` statements, not sqlx's
/// `Transaction`: when SQLite itself ends a transaction on an error (`SQLITE_FULL`, `SQLITE_IOERR`
/// roll back on their own), sqlx's rollback-on-drop fails and its nesting counter stays behind;
/// the next `begin` then issues `SAVEPOINT`s whose `RELEASE` may never commit, and every later
/// write is answered as committed while only this connection sees it (a full disk produced
/// receipts for objects the database never held). Here `BEGIN` fails if a transaction is still
/// open and `COMMIT` fails if none is, so a write is reported committed only when it is.
async fn commit_batch(
    conn: &mut SqliteConnection,
    batch: &[Write],
) -> Result<Vec<Result<u64, sqlx::Error>>, sqlx::Error> {
    if sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        // A transaction a failed batch could not end: end it now, then start afresh.
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    }
    let r = apply_batch(conn, batch).await;
    if r.is_err() {
        // Whatever failed (a write, a savepoint, the commit), no transaction outlives the batch;
        // "no transaction is active" (SQLite already rolled back) is fine.
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    r
}

async fn apply_batch(
    conn: &mut SqliteConnection,
    batch: &[Write],
) -> Result<Vec<Result<u64, sqlx::Error>>, sqlx::Error> {
    let mut results = Vec::with_capacity(batch.len());
    for w in batch {
        sqlx::query("SAVEPOINT ferry_write")
            .execute(&mut *conn)
            .await?;
        let r = apply(conn, &w.op).await;
        if r.is_err() {
            sqlx::query("ROLLBACK TO ferry_write")
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("RELEASE ferry_write")
            .execute(&mut *conn)
            .await?;
        results.push(r);
    }
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(results)
}

/// Whether `e` says the database's disk is full (`SQLITE_FULL`, also as an extended code).
pub fn is_storage_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == SQLITE_FULL),
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

/// SQLite's primary result code for "database or disk is full".
const SQLITE_FULL: i32 = 13;

/// The error each write of a failed batch gets: the batch's error cannot be cloned, so its
/// class travels as the error's type (a full disk stays recognisable as one).
fn batch_failure(e: &sqlx::Error) -> sqlx::Error {
    let text = format!("batch commit failed: {e}");
    if is_storage_full(e) {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, text))
    } else {
        sqlx::Error::Protocol(text)
    }
}

async fn writer(pool: SqlitePool, mut queue: mpsc::Receiver<Write>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = match pool.acquire().await {
            Ok(mut conn) => commit_batch(&mut conn, &batch).await,
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
);

const UPLOAD_COLUMNS: &str = "id, protocol, offset_bytes, length_bytes, metadata_json, metadata_raw, expected_sha256_hex, expected_blake3_hex, idempotency_key, object_id, created_unix_ms, expires_unix_ms";

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
    }
}

/// Sizes are limited far below `i64::MAX` by the upload limits, so the casts cannot wrap.
fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Meta {
    /// Opens (creating if needed) the database at `path`, or a private in-memory one for `None`.
    pub async fn open(path: Option<&Path>) -> Result<Meta, sqlx::Error> {
        let (pool, write_pool) = match path {
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
                    .connect_with(opts.clone())
                    .await?;
                sqlx::migrate!("./migrations").run(&write_pool).await?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await?;
                (pool, write_pool)
            }
            None => {
                // One connection: each new connection to `:memory:` would be another database.
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(SqliteConnectOptions::from_str("sqlite::memory:")?)
                    .await?;
                sqlx::migrate!("./migrations").run(&pool).await?;
                (pool.clone(), pool)
            }
        };
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH_WRITES);
        tokio::spawn(writer(write_pool, queue));
        Ok(Meta { pool, writes })
    }

    async fn write(&self, op: Op) -> Result<u64, sqlx::Error> {
        let (done, result) = oneshot::channel();
        self.writes
            .send(Write { op, done })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        result.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn create_upload(&self, u: &UploadRow) -> Result<(), sqlx::Error> {
        self.write(Op::CreateUpload(u.clone())).await.map(drop)
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRow>, sqlx::Error> {
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?");
        let row: Option<UploadTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(upload_from))
    }

    /// The upload created with this (scoped) idempotency key, if it still exists.
    pub async fn upload_by_key(&self, key: &str) -> Result<Option<UploadRow>, sqlx::Error> {
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE idempotency_key = ?");
        let row: Option<UploadTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(upload_from))
    }

    /// Records a durable append: the bytes up to `offset_bytes` are fsynced in the partial file.
    pub async fn set_progress(
        &self,
        id: &str,
        offset_bytes: u64,
        length_bytes: Option<u64>,
        expires_unix_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let op = Op::SetProgress {
            id: id.into(),
            offset_bytes,
            length_bytes,
            expires_unix_ms,
        };
        self.write(op).await.map(drop)
    }

    /// Records the object (if new) and marks the upload complete, in one transaction.
    pub async fn complete_upload(&self, upload_id: &str, o: &ObjectRow) -> Result<(), sqlx::Error> {
        let op = Op::CompleteUpload {
            upload_id: upload_id.into(),
            object: o.clone(),
        };
        self.write(op).await.map(drop)
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool, sqlx::Error> {
        Ok(self.write(Op::DeleteUpload(id.into())).await? > 0)
    }

    /// Unfinished uploads whose `expires_unix_ms` is at or before `now_unix_ms`.
    pub async fn expired_uploads(&self, now_unix_ms: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM uploads WHERE object_id IS NULL AND expires_unix_ms <= ? LIMIT 1000",
        )
        .bind(now_unix_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn object(&self, id: &str) -> Result<Option<ObjectRow>, sqlx::Error> {
        let row: Option<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT id, sha256_hex, size_bytes, created_unix_ms FROM objects WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| ObjectRow {
            id: r.0,
            sha256_hex: r.1,
            size_bytes: r.2.max(0) as u64,
            created_unix_ms: r.3,
        }))
    }

    /// Which of `blake3_hex` / `sha256_hex` name stored objects. The lists travel as one JSON
    /// parameter each, so a batch of thousands is one statement with a fixed text.
    pub async fn objects_present(
        &self,
        blake3_hex: &[String],
        sha256_hex: &[String],
    ) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
        let b = serde_json::to_string(blake3_hex).unwrap_or_else(|_| "[]".into());
        let s = serde_json::to_string(sha256_hex).unwrap_or_else(|_| "[]".into());
        let by_blake3: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM objects WHERE id IN (SELECT value FROM json_each(?))")
                .bind(b)
                .fetch_all(&self.pool)
                .await?;
        let by_sha256: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT sha256_hex FROM objects WHERE sha256_hex IN (SELECT value FROM json_each(?))",
        )
        .bind(s)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            by_blake3.into_iter().map(|r| r.0).collect(),
            by_sha256.into_iter().map(|r| r.0).collect(),
        ))
    }

    /// The finished uploads that produced `object_id`: each one's id and metadata.
    pub async fn receipts(&self, object_id: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, metadata_json FROM uploads WHERE object_id = ? ORDER BY created_unix_ms LIMIT 1000",
        )
        .bind(object_id)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn add_token(
        &self,
        name: &str,
        sha256_hex: &str,
        now_unix_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let op = Op::AddToken {
            name: name.into(),
            sha256_hex: sha256_hex.into(),
            now_unix_ms,
        };
        self.write(op).await.map(drop)
    }

    /// The device name for a token hash, if the token is known.
    pub async fn token_name(&self, sha256_hex: &str) -> Result<Option<String>, sqlx::Error> {
        let row: Option<(String,)> = sqlx::query_as("SELECT name FROM tokens WHERE sha256_hex = ?")
            .bind(sha256_hex)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0))
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
        m.set_progress("u1", 4, Some(10), 200).await.unwrap();
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
        m.complete_upload("u1", &o).await.unwrap();
        m.complete_upload("u2", &o).await.unwrap();
        assert_eq!(m.object("b3").await.unwrap(), Some(o.clone()));
        assert!(
            m.expired_uploads(10_000).await.unwrap().is_empty(),
            "complete uploads never expire"
        );
        let u = m.upload("u1").await.unwrap().unwrap();
        assert_eq!((u.object_id.as_deref(), u.offset_bytes), (Some("b3"), 10));
        // A completed upload's progress cannot be rewound.
        m.set_progress("u1", 0, None, 0).await.unwrap();
        assert_eq!(m.upload("u1").await.unwrap().unwrap().offset_bytes, 10);
        assert_eq!(m.receipts("b3").await.unwrap().len(), 2);

        let many: Vec<String> = (0..2000)
            .map(|i| format!("x{i}"))
            .chain(["b3".into()])
            .collect();
        let (b, s) = m
            .objects_present(&many, &["s2".into(), "nope".into()])
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

        m.add_token("phone", "h1", 1).await.unwrap();
        assert_eq!(m.token_name("h1").await.unwrap().as_deref(), Some("phone"));
        assert_eq!(m.token_name("h2").await.unwrap(), None);
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
            m.set_progress(id, 4, Some(10), 2).await.unwrap();
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
}
