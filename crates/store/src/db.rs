//! Opening the database: pragmas for durability, migrations, the library's identity.

use crate::schema::MIGRATIONS;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};

/// What went wrong with the store. Callers treat all of these as fatal for the operation:
/// the store is local, so there is nothing to retry that would not fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the store at {path} was written by a newer Ferry (schema {found}, this one knows {known})"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store holds a value it cannot read: {0}")]
    Corrupt(String),
}

/// Runs `f` again while SQLite answers "busy" without having waited (at most 10 s).
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// A handle on Ferry's database. Not `Sync`: one owner (a thread or a task) at a time.
#[derive(Debug)]
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) library_id: String,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // The database is its owner's alone (it holds every path and place of the library):
        // 0600 before SQLite creates the WAL and shared-memory files, which take its mode.
        // Best effort: the caller's `private::secure_state_dir` reports what it cannot do.
        let _ = crate::private::ensure_private_file(path);
        // First: another process opening the same new store at the same moment (the daemon
        // and a `ferry status`) holds its locks only briefly, so wait instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        // WAL + FULL: a commit is on disk when `commit` returns, and readers never block it.
        // Switching a new file to WAL can answer "busy" without waiting for the busy timeout
        // while another connection does the same: retried.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL")).map_err(open_err)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = crate::private::ensure_private_file(Path::new(&p));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        // A bigger page cache keeps a scan's batch in memory instead of spilling to the WAL
        // mid-transaction; statement journals (upserts) stay in memory too.
        conn.pragma_update(None, "cache_size", -16_000)
            .map_err(open_err)?;
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            conn,
            library_id: String::new(),
        };
        store.migrate(path)?;
        store.library_id = store.ensure_library_id()?;
        Ok(store)
    }

    /// Sets this connection's page cache to at most `kib` KiB (the default is 16 MB, for the
    /// batches of a first scan): connections that only read and write a little need less.
    pub fn set_page_cache_kib(&self, kib: u32) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(kib))?;
        Ok(())
    }

    /// Gives back the memory this connection's page cache holds (it fills again as needed):
    /// for a daemon going idle after a pass over a large library.
    pub fn release_memory(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(())
    }

    /// One migration per write transaction, the version read inside it: two processes that
    /// open a new store at once each apply a step only if the other has not (a version read
    /// before the transaction let both run the first one, and the second failed).
    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        // Up to date (every open but the first of a new Ferry): no write lock taken, so a
        // reader opening beside a busy writer does not wait for it.
        let current: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if usize::try_from(current).is_ok_and(|v| v == MIGRATIONS.len()) {
            return Ok(());
        }
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: usize = tx
                .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?
                .try_into()
                .unwrap_or(usize::MAX);
            if version > MIGRATIONS.len() {
                return Err(StoreError::TooNew {
                    path: path.to_owned(),
                    found: version,
                    known: MIGRATIONS.len(),
                });
            }
            let Some(sql) = MIGRATIONS.get(version) else {
                return Ok(());
            };
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (version + 1) as i64)?;
            tx.commit()?;
        }
    }

    fn ensure_library_id(&mut self) -> Result<String, StoreError> {
        // There already (every open but a new store's first): read without the write lock.
        if let Some(id) = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'library_id'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        {
            return Ok(id);
        }
        // Immediate, as above: two first opens must agree on one id.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'library_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let id = match existing {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::now_v7().simple().to_string();
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('library_id', ?1)",
                    [&id],
                )?;
                id
            }
        };
        tx.commit()?;
        Ok(id)
    }

    /// The identity of this store's library; change tokens from another library are refused.
    pub fn library_id(&self) -> &str {
        &self.library_id
    }
}
