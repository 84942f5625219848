//! Opening the database: pragmas for durability, migrations, the library's identity.

use crate::schema::MIGRATIONS;
use rusqlite::{Connection, OptionalExtension};
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
        // WAL + FULL: a commit is on disk when `commit` returns, and readers never block it.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
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
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            library_id: String::new(),
        };
        store.migrate(path)?;
        store.library_id = store.ensure_library_id()?;
        Ok(store)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let version: usize = self
            .conn
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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn ensure_library_id(&mut self) -> Result<String, StoreError> {
        let tx = self.conn.transaction()?;
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
