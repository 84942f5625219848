//! The server's metadata (uploads, objects, device tokens) in SQL through sqlx.
//!
//! SQLite in WAL mode with `synchronous=FULL` is the embedded default: a committed write survives
//! `kill -9` and power loss. The SQL is kept portable (no SQLite-only syntax in queries) so a
//! PostgreSQL pool can replace it later; the conformance tests in this module run against a file
//! database and an in-memory one.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

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
    pool: SqlitePool,
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
    i64,
    i64,
);

const UPLOAD_COLUMNS: &str = "id, protocol, offset_bytes, length_bytes, metadata_json, metadata_raw, expected_sha256_hex, object_id, created_unix_ms, expires_unix_ms";

fn upload_from(t: UploadTuple) -> UploadRow {
    UploadRow {
        id: t.0,
        protocol: t.1,
        offset_bytes: t.2.max(0) as u64,
        length_bytes: t.3.map(|l| l.max(0) as u64),
        metadata_json: t.4,
        metadata_raw: t.5,
        expected_sha256_hex: t.6,
        object_id: t.7,
        created_unix_ms: t.8,
        expires_unix_ms: t.9,
    }
}

/// Sizes are limited far below `i64::MAX` by the upload limits, so the casts cannot wrap.
fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Meta {
    /// Opens (creating if needed) the database at `path`, or a private in-memory one for `None`.
    pub async fn open(path: Option<&Path>) -> Result<Meta, sqlx::Error> {
        let (opts, max_connections) = match path {
            Some(p) => (
                SqliteConnectOptions::new()
                    .filename(p)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10)),
                4,
            ),
            // One connection: each new connection to `:memory:` would be a different database.
            None => (SqliteConnectOptions::from_str("sqlite::memory:")?, 1),
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Meta { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn create_upload(&self, u: &UploadRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO uploads (id, protocol, offset_bytes, length_bytes, metadata_json, metadata_raw, expected_sha256_hex, object_id, created_unix_ms, expires_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&u.id)
        .bind(&u.protocol)
        .bind(db_int(u.offset_bytes))
        .bind(u.length_bytes.map(db_int))
        .bind(&u.metadata_json)
        .bind(&u.metadata_raw)
        .bind(&u.expected_sha256_hex)
        .bind(&u.object_id)
        .bind(u.created_unix_ms)
        .bind(u.expires_unix_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRow>, sqlx::Error> {
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?");
        let row: Option<UploadTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
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
        sqlx::query(
            "UPDATE uploads SET offset_bytes = ?, length_bytes = ?, expires_unix_ms = ? WHERE id = ? AND object_id IS NULL",
        )
        .bind(db_int(offset_bytes))
        .bind(length_bytes.map(db_int))
        .bind(expires_unix_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the object (if new) and marks the upload complete, in one transaction.
    pub async fn complete_upload(&self, upload_id: &str, o: &ObjectRow) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO objects (id, sha256_hex, size_bytes, created_unix_ms) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&o.id)
        .bind(&o.sha256_hex)
        .bind(db_int(o.size_bytes))
        .bind(o.created_unix_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE uploads SET object_id = ?, offset_bytes = ?, length_bytes = ? WHERE id = ?",
        )
        .bind(&o.id)
        .bind(db_int(o.size_bytes))
        .bind(db_int(o.size_bytes))
        .bind(upload_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
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
        sqlx::query("INSERT INTO tokens (sha256_hex, name, created_unix_ms) VALUES (?, ?, ?)")
            .bind(sha256_hex)
            .bind(name)
            .bind(now_unix_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
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

        m.add_token("phone", "h1", 1).await.unwrap();
        assert_eq!(m.token_name("h1").await.unwrap().as_deref(), Some("phone"));
        assert_eq!(m.token_name("h2").await.unwrap(), None);
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
