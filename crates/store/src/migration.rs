//! Ferry's state on the move to another device: a snapshot of what moves, rebasing a snapshot's
//! folders for the new device, and installing it in one transaction.
//!
//! What moves: the library (roots, assets, resources with their ids and hashes, the change
//! history and tombstones, the library id, so change tokens stay valid), acknowledged and
//! cancelled jobs with their receipts (so nothing is uploaded again; secret header values
//! redacted), each extension's job settings and key-value store. What does not: consent (the
//! person grants it again), unfinished jobs and upload sessions, the host's runtime records,
//! import statuses, and this device's own marks (`moved_to`, `migration_outgoing`).
//!
//! Installing is one SQLite transaction on the live store: before it commits the new device has
//! nothing of the move, after it everything.

use crate::{Store, StoreError};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a snapshot cannot be taken or installed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The new device already has work of its own that a move would mix with.
    #[error(
        "this device's Ferry state already holds {jobs} jobs, {receipts} receipts and {kv} \
         extension records: a move installs only into a state without them (use another \
         --state-dir, or move this one's ferry.db away)"
    )]
    NotFresh { jobs: u64, receipts: u64, kv: u64 },
    /// `--root OLD=NEW` names a folder the snapshot does not have.
    #[error("--root {old}: the moved state has no library folder {old} (its folders: {known})")]
    UnknownRoot { old: String, known: String },
    #[error("the snapshot is not a Ferry state: {0}")]
    BadSnapshot(String),
}

/// What a snapshot holds, for people (preflight, summaries).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotCounts {
    pub roots: u64,
    pub assets: u64,
    pub resources: u64,
    pub change_sets: u64,
    pub jobs: u64,
    pub receipts: u64,
    pub kv_entries: u64,
    /// Jobs that do not move (not acknowledged yet): their extensions make them again.
    pub unfinished_jobs: u64,
}

/// One resource as the arrival check needs it.
#[derive(Debug, Clone)]
pub struct ResourceToCheck {
    pub id: String,
    pub path: PathBuf,
    pub size: u64,
    pub blake3: [u8; 32],
}

/// An extension's data waiting to be imported at its first launch on this device.
#[derive(Debug, Clone)]
pub struct PendingImportRow {
    pub extension: String,
    pub dir: PathBuf,
    pub source_extension: String,
    pub source_version: String,
}

/// One extension's import of moved data, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportRecord {
    pub extension: String,
    /// `pending`, `succeeded` or `failed`.
    pub state: String,
    pub message: Option<String>,
    pub source_extension: String,
    pub source_version: String,
    pub updated_ms: i64,
}

/// The meta keys that belong to a device, never to a move.
const DEVICE_META: [&str; 3] = ["moved_to", "migration_outgoing", "migrated_from"];

/// The tables copied at install, in an order foreign keys accept.
const MOVED_TABLES: [&str; 10] = [
    "roots",
    "assets",
    "resources",
    "change_sets",
    "changes",
    "asset_tombstones",
    "extensions",
    "job_specs",
    "jobs",
    "receipts",
];

fn count(conn: &rusqlite::Connection, sql: &str) -> Result<u64, rusqlite::Error> {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

impl Store {
    /// What a move would take of this state (cheap counts).
    pub fn migration_counts(&self) -> Result<SnapshotCounts, MigrationStoreError> {
        let c = &self.conn;
        Ok(SnapshotCounts {
            roots: count(c, "SELECT COUNT(*) FROM roots")?,
            assets: count(c, "SELECT COUNT(*) FROM assets")?,
            resources: count(c, "SELECT COUNT(*) FROM resources")?,
            change_sets: count(c, "SELECT COUNT(*) FROM change_sets")?,
            jobs: count(c, "SELECT COUNT(*) FROM jobs WHERE acknowledged = 1")?,
            receipts: count(c, "SELECT COUNT(*) FROM receipts")?,
            kv_entries: count(c, "SELECT COUNT(*) FROM extension_kv")?,
            unfinished_jobs: count(c, "SELECT COUNT(*) FROM jobs WHERE acknowledged = 0")?,
        })
    }

    /// Writes what moves to a new SQLite file at `dest` (which must not exist): a consistent
    /// copy (`VACUUM INTO` reads one snapshot of the database), then stripped of what stays.
    ///
    /// `forget_kv_of`: extensions whose key-value records stay behind (their memory is about a
    /// destination that does not move: the bundled extension's built-in server).
    pub fn migration_snapshot(
        &self,
        dest: &Path,
        forget_kv_of: &[&str],
    ) -> Result<SnapshotCounts, MigrationStoreError> {
        self.conn.execute("VACUUM INTO ?1", [utf8(dest)?])?;
        let mut copy = rusqlite::Connection::open(dest)?;
        let tx = copy.transaction()?;
        // Unfinished jobs stay: their sessions, specs and live rows go.
        tx.execute_batch(
            "DELETE FROM upload_sessions;
             DELETE FROM extension_consent;
             DELETE FROM extension_runtime;
             DELETE FROM job_specs WHERE id IN (SELECT id FROM jobs WHERE acknowledged = 0);
             DELETE FROM jobs WHERE acknowledged = 0;",
        )?;
        if table_exists(&tx, "extension_imports")? {
            tx.execute("DELETE FROM extension_imports", [])?;
        }
        for key in DEVICE_META {
            tx.execute("DELETE FROM meta WHERE key = ?1", [key])?;
        }
        for id in forget_kv_of {
            tx.execute("DELETE FROM extension_kv WHERE extension = ?1", [id])?;
        }
        // Secrets never travel: destination header values marked secret are redacted (the
        // receipts shown on the new device need the destination, not the credential).
        let specs: Vec<(Vec<u8>, String)> = {
            let mut stmt = tx.prepare("SELECT id, body FROM job_specs")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        {
            let mut update = tx.prepare("UPDATE job_specs SET body = ?2 WHERE id = ?1")?;
            for (id, body) in specs {
                let redacted = crate::jobs::redact_spec_body(&body)
                    .map_err(|e| StoreError::Corrupt(format!("job spec: {e}")))?;
                if redacted != body {
                    update.execute(params![id, redacted])?;
                }
            }
        }
        tx.commit()?;
        copy.execute_batch("PRAGMA journal_mode = DELETE; VACUUM;")?;
        let counts = Store::counts_of(&copy)?;
        drop(copy);
        // The copy is a file that moves: on disk before anyone reads it.
        std::fs::File::open(dest)
            .and_then(|f| f.sync_all())
            .map_err(|e| {
                MigrationStoreError::BadSnapshot(format!("cannot sync {}: {e}", dest.display()))
            })?;
        Ok(counts)
    }

    fn counts_of(c: &rusqlite::Connection) -> Result<SnapshotCounts, MigrationStoreError> {
        Ok(SnapshotCounts {
            roots: count(c, "SELECT COUNT(*) FROM roots")?,
            assets: count(c, "SELECT COUNT(*) FROM assets")?,
            resources: count(c, "SELECT COUNT(*) FROM resources")?,
            change_sets: count(c, "SELECT COUNT(*) FROM change_sets")?,
            jobs: count(c, "SELECT COUNT(*) FROM jobs")?,
            receipts: count(c, "SELECT COUNT(*) FROM receipts")?,
            kv_entries: count(c, "SELECT COUNT(*) FROM extension_kv")?,
            unfinished_jobs: 0,
        })
    }

    /// This store's counts, read as a snapshot's (after [`Store::migration_snapshot`]).
    pub fn snapshot_counts(&self) -> Result<SnapshotCounts, MigrationStoreError> {
        Store::counts_of(&self.conn)
    }

    /// Extension ids that have key-value records in this store.
    pub fn kv_extensions(&self) -> Result<Vec<String>, MigrationStoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT extension FROM extension_kv ORDER BY extension")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves every library path under `old` to the same place under `new` (roots, assets,
    /// resources, tombstones), on a snapshot about to be installed. Byte-wise and
    /// component-wise: `/a/b` rebases `/a/b/c`, never `/a/bc`.
    pub fn rebase_roots(
        &mut self,
        pairs: &[(PathBuf, PathBuf)],
    ) -> Result<(), MigrationStoreError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let roots = self.roots()?;
        for (old, _) in pairs {
            if !roots.iter().any(|r| r == old || r.starts_with(old)) {
                return Err(MigrationStoreError::UnknownRoot {
                    old: old.display().to_string(),
                    known: roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let rebase = |p: &[u8]| -> Option<Vec<u8>> {
            let path = Path::new(std::ffi::OsStr::from_bytes(p));
            pairs.iter().find_map(|(old, new)| {
                path.strip_prefix(old).ok().map(|rest| {
                    let joined = if rest.as_os_str().is_empty() {
                        new.clone()
                    } else {
                        new.join(rest)
                    };
                    joined.as_os_str().as_bytes().to_vec()
                })
            })
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (table, key, cols) in [
            ("roots", "id", &["path"][..]),
            ("assets", "id", &["dir"][..]),
            ("resources", "id", &["path", "dir"][..]),
            ("asset_tombstones", "asset_id", &["dir"][..]),
        ] {
            for col in cols {
                let rows: Vec<(rusqlite::types::Value, Vec<u8>)> = {
                    let mut stmt = tx.prepare(&format!("SELECT {key}, {col} FROM {table}"))?;
                    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<Result<_, _>>()?
                };
                let mut update =
                    tx.prepare(&format!("UPDATE {table} SET {col} = ?2 WHERE {key} = ?1"))?;
                for (k, v) in rows {
                    if let Some(n) = rebase(&v) {
                        update.execute(params![k, n])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every resource with what the arrival check compares.
    pub fn resources_to_check(&self) -> Result<Vec<ResourceToCheck>, MigrationStoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, path, size, blake3 FROM resources ORDER BY path")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, path, size, hash) = row?;
            let blake3: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("resource {id}: hash length")))?;
            out.push(ResourceToCheck {
                id,
                path: crate::library::bytes_path(path),
                size: size.max(0) as u64,
                blake3,
            });
        }
        Ok(out)
    }

    /// Records the file a resource was found to be on this device (same bytes, new inode and
    /// time), so the next scan sees nothing changed. Batched by the caller in one transaction.
    pub fn update_resource_stats(
        &mut self,
        found: &[(String, u64, u64, i64)],
    ) -> Result<(), MigrationStoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare("UPDATE resources SET dev = ?2, ino = ?3, mtime_ns = ?4 WHERE id = ?1")?;
            for (id, dev, ino, mtime_ns) in found {
                stmt.execute(params![id, *dev as i64, *ino as i64, mtime_ns])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Installs the prepared snapshot at `snapshot` into this store in one transaction: the
    /// library index this device may have built is replaced (it is derived from the files and
    /// the moved one carries the history change tokens point into); jobs, receipts and
    /// key-value records must not exist here yet. `imports` become pending imports,
    /// `migrated_from` is recorded in `meta`.
    pub fn install_snapshot(
        &mut self,
        snapshot: &Path,
        imports: &[PendingImportRow],
        migrated_from: &str,
        now_ms: i64,
    ) -> Result<SnapshotCounts, MigrationStoreError> {
        // Same schema on both sides: the snapshot was opened (and so migrated) by this Ferry.
        let ours: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        self.conn
            .execute("ATTACH DATABASE ?1 AS moved", [utf8(snapshot)?])?;
        let result = self.install_attached(ours, imports, migrated_from, now_ms);
        let _ = self.conn.execute("DETACH DATABASE moved", []);
        let counts = result?;
        if let Some(id) = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'library_id'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        {
            self.library_id = id;
        }
        Ok(counts)
    }

    fn install_attached(
        &mut self,
        ours: i64,
        imports: &[PendingImportRow],
        migrated_from: &str,
        now_ms: i64,
    ) -> Result<SnapshotCounts, MigrationStoreError> {
        let theirs: i64 = self
            .conn
            .query_row("PRAGMA moved.user_version", [], |r| r.get(0))?;
        if theirs != ours {
            return Err(MigrationStoreError::BadSnapshot(format!(
                "schema {theirs}, this Ferry's is {ours}"
            )));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Checked inside the write transaction: nothing can add work between the check and
        // the install.
        let jobs = count(&tx, "SELECT COUNT(*) FROM jobs")?;
        let receipts = count(&tx, "SELECT COUNT(*) FROM receipts")?;
        let kv = count(&tx, "SELECT COUNT(*) FROM extension_kv")?;
        if jobs + receipts + kv > 0 {
            return Err(MigrationStoreError::NotFresh { jobs, receipts, kv });
        }
        // This device's own index goes (children first), then the moved rows come in.
        tx.execute_batch(
            "DELETE FROM changes; DELETE FROM change_sets; DELETE FROM resources;
             DELETE FROM assets; DELETE FROM asset_tombstones; DELETE FROM roots;",
        )?;
        for table in MOVED_TABLES {
            if table == "extensions" {
                tx.execute(
                    "INSERT OR IGNORE INTO main.extensions SELECT * FROM moved.extensions",
                    [],
                )?;
            } else {
                tx.execute(
                    &format!("INSERT INTO main.{table} SELECT * FROM moved.{table}"),
                    [],
                )?;
            }
        }
        // The insert trigger cleared tombstones of re-inserted ids; the moved ones are the truth.
        tx.execute_batch(
            "DELETE FROM main.asset_tombstones;
             INSERT INTO main.asset_tombstones SELECT * FROM moved.asset_tombstones;
             INSERT INTO main.extension_kv SELECT * FROM moved.extension_kv;",
        )?;
        // The library's own keys (id, history floor) are the moved ones, all of them: a key
        // this device had and the moved state lacks must not survive.
        tx.execute(
            "DELETE FROM main.meta
             WHERE key NOT IN ('moved_to', 'migration_outgoing', 'migrated_from')",
            [],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO main.meta (key, value)
             SELECT key, value FROM moved.meta
             WHERE key NOT IN ('moved_to', 'migration_outgoing', 'migrated_from')",
            [],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO main.meta (key, value) VALUES ('migrated_from', ?1)",
            [migrated_from],
        )?;
        for i in imports {
            tx.execute(
                "INSERT OR REPLACE INTO extension_imports
                 (id, dir, source_extension, source_version, state, message, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, 'pending', NULL, ?5)",
                params![
                    i.extension,
                    i.dir.as_os_str().as_bytes(),
                    i.source_extension,
                    i.source_version,
                    now_ms
                ],
            )?;
        }
        let counts = Store::counts_of(&tx)?;
        tx.commit()?;
        Ok(counts)
    }

    /// Every extension's import record (pending, succeeded, failed), for `ferry migrate status`.
    pub fn import_records(&self) -> Result<Vec<ImportRecord>, MigrationStoreError> {
        if !table_exists(&self.conn, "extension_imports")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT id, state, message, source_extension, source_version, updated_ms
             FROM extension_imports ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ImportRecord {
                extension: r.get(0)?,
                state: r.get(1)?,
                message: r.get(2)?,
                source_extension: r.get(3)?,
                source_version: r.get(4)?,
                updated_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A device mark in `meta` (`moved_to`, `migration_outgoing`, `migrated_from`): JSON the
    /// caller defines.
    pub fn device_mark(&self, key: &str) -> Result<Option<String>, StoreError> {
        debug_assert!(DEVICE_META.contains(&key));
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets (or with `None` clears) a device mark, durably.
    pub fn set_device_mark(&mut self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        debug_assert!(DEVICE_META.contains(&key));
        match value {
            Some(v) => self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, v],
            )?,
            None => self
                .conn
                .execute("DELETE FROM meta WHERE key = ?1", [key])?,
        };
        Ok(())
    }
}

fn table_exists(conn: &rusqlite::Connection, name: &str) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// SQLite takes file names as text.
fn utf8(p: &Path) -> Result<&str, MigrationStoreError> {
    p.to_str().ok_or_else(|| {
        MigrationStoreError::BadSnapshot(format!(
            "{}: a state folder whose path is not UTF-8",
            p.display()
        ))
    })
}
