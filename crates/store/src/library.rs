//! The library index (assets, resources) and its change history, on the shared SQLite store.
//!
//! Writes go through an [`IndexWriter`]: one SQLite transaction that the scanner fills with
//! many directories' worth of upserts, then commits as one change set under one new token.
//! The writer derives the change kinds itself (inserted / updated / deleted per asset), so a
//! caller cannot record a change that did not happen, and an asset left without resources is
//! deleted in the same transaction: "an asset with no resources" never exists on disk.

use crate::db::{Store, StoreError};
use ferry_core::{ResourceMetadata, ResourceType};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One file of an asset, as indexed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceRecord {
    pub id: String,
    pub asset_id: String,
    pub resource_type: ResourceType,
    #[serde(flatten, with = "ferry_core::path_text::path")]
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub content_type: String,
    #[serde(serialize_with = "hex32")]
    pub blake3: [u8; 32],
    pub metadata: ResourceMetadata,
    pub indexed_ms: i64,
}

fn hex32<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(b))
}

/// Lower-case hex of a byte string (content hashes are shown and exchanged this way).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A resource's identity and file stat, without its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStat {
    pub id: String,
    pub asset_id: String,
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub blake3: [u8; 32],
}

/// One asset: what a person sees as one photo or video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetRecord {
    pub id: String,
    /// The folder its resources live in (grouping never crosses folders).
    #[serde(flatten, with = "ferry_core::path_text::dir")]
    pub dir: PathBuf,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Inserted = 1,
    Updated = 2,
    Deleted = 3,
}

impl ChangeKind {
    fn from_i64(v: i64) -> Option<ChangeKind> {
        match v {
            1 => Some(ChangeKind::Inserted),
            2 => Some(ChangeKind::Updated),
            3 => Some(ChangeKind::Deleted),
            _ => None,
        }
    }

    /// Folds a later change of the same asset within one change set into an earlier one;
    /// `None` means the two cancel out (inserted, then deleted).
    pub(crate) fn then(self, later: ChangeKind) -> Option<ChangeKind> {
        use ChangeKind::*;
        match (self, later) {
            (Inserted, Deleted) => None,
            (Inserted, _) => Some(Inserted),
            (Deleted, Inserted) | (Deleted, Updated) => Some(Updated),
            (_, Deleted) => Some(Deleted),
            (Updated, _) => Some(Updated),
        }
    }
}

/// The changes committed under one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeSet {
    pub token: String,
    pub committed_ms: i64,
    pub inserted: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
}

/// Why "changes since T" could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// The history since this token was pruned: resynchronise from the full library.
    #[error(
        "change token expired: history before {oldest_kept} was pruned; resynchronise from the full library"
    )]
    ChangeTokenExpired { oldest_kept: String },
    #[error("not a change token of this library: {0:?}")]
    InvalidToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How much change history the store keeps (PhotoKit prunes too, undocumented).
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_change_sets: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_change_sets: 10_000,
        }
    }
}

/// Counts for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LibraryCounts {
    pub assets: u64,
    pub resources: u64,
    pub bytes: u64,
}

fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

pub(crate) fn bytes_path(b: Vec<u8>) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&b))
}

const RESOURCE_COLUMNS: &str = "id, asset_id, resource_type, path, dev, ino, size, mtime_ns, \
     content_type, blake3, metadata, indexed_ms";

fn resource_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ResourceRecord, StoreError>> {
    let hash: Vec<u8> = row.get(9)?;
    let meta: String = row.get(10)?;
    let id: String = row.get(0)?;
    let Ok(blake3) = <[u8; 32]>::try_from(hash.as_slice()) else {
        return Ok(Err(StoreError::Corrupt(format!("resource {id}: bad hash"))));
    };
    let metadata = match serde_json::from_str(&meta) {
        Ok(m) => m,
        Err(e) => {
            return Ok(Err(StoreError::Corrupt(format!(
                "resource {id}: metadata: {e}"
            ))));
        }
    };
    Ok(Ok(ResourceRecord {
        id,
        asset_id: row.get(1)?,
        resource_type: ResourceType::from_name(&row.get::<_, String>(2)?),
        path: bytes_path(row.get(3)?),
        dev: row.get::<_, i64>(4)? as u64,
        ino: row.get::<_, i64>(5)? as u64,
        size: row.get::<_, i64>(6)? as u64,
        mtime_ns: row.get(7)?,
        content_type: row.get(8)?,
        blake3,
        metadata,
        indexed_ms: row.get(11)?,
    }))
}

pub(crate) fn asset_from_row(row: &Row<'_>) -> rusqlite::Result<AssetRecord> {
    Ok(AssetRecord {
        id: row.get(0)?,
        dir: bytes_path(row.get(1)?),
        created_ms: row.get(2)?,
        updated_ms: row.get(3)?,
    })
}

impl Store {
    /// Executes through the statement cache: the scanner runs the same few statements
    /// hundreds of thousands of times, and parsing SQL was a fifth of a first scan's time.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
        Ok(self.conn.prepare_cached(sql)?.execute(params)?)
    }

    pub(crate) fn token_string(&self, seq: i64) -> String {
        format!("ct1.{}.{seq}", &self.library_id)
    }

    pub(crate) fn parse_token(&self, token: &str) -> Result<i64, ChangesError> {
        let invalid = || ChangesError::InvalidToken(token.to_owned());
        let rest = token.strip_prefix("ct1.").ok_or_else(invalid)?;
        let (lib, seq) = rest.rsplit_once('.').ok_or_else(invalid)?;
        if lib != self.library_id {
            return Err(invalid());
        }
        seq.parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(invalid)
    }

    pub(crate) fn current_seq(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(token), 0) FROM change_sets", [], |r| {
                r.get(0)
            })?)
    }

    fn history_floor(&self) -> Result<i64, StoreError> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'history_floor'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The token for "now": changes since it are those committed after this call.
    pub fn current_change_token(&self) -> Result<String, StoreError> {
        Ok(self.token_string(self.current_seq()?))
    }

    /// Whether extension `extension` may still read changes since `token`: not when the token
    /// is older than the extension's last consent change that needs a new pass over the library
    /// (enabled again after a disable, other folders: see `Store::grant_consent`).
    pub fn check_extension_token(&self, extension: &str, token: &str) -> Result<(), ChangesError> {
        let since = self.parse_token(token)?;
        let floor: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [format!(
                    "{}{extension}",
                    crate::extensions::CHANGES_FLOOR_KEY
                )],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::from)?;
        match floor.and_then(|f| f.parse::<i64>().ok()) {
            Some(floor) if since < floor => Err(ChangesError::ChangeTokenExpired {
                oldest_kept: self.token_string(floor),
            }),
            _ => Ok(()),
        }
    }

    /// Change sets committed after `token`, oldest first.
    pub fn changes_since(&self, token: &str) -> Result<Vec<ChangeSet>, ChangesError> {
        let since = self.parse_token(token)?;
        let current = self.current_seq()?;
        if since > current {
            return Err(ChangesError::InvalidToken(token.to_owned()));
        }
        let floor = self.history_floor()?;
        if since < floor {
            return Err(ChangesError::ChangeTokenExpired {
                oldest_kept: self.token_string(floor),
            });
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.token, s.committed_ms, c.asset_id, c.kind FROM change_sets s \
             JOIN changes c ON c.token = s.token WHERE s.token > ?1 \
             ORDER BY s.token, c.asset_id",
            )
            .map_err(StoreError::from)?;
        let mut rows = stmt.query([since]).map_err(StoreError::from)?;
        let mut sets: Vec<ChangeSet> = Vec::new();
        let mut last_seq = -1;
        while let Some(row) = rows.next().map_err(StoreError::from)? {
            let seq: i64 = row.get(0).map_err(StoreError::from)?;
            if seq != last_seq {
                sets.push(ChangeSet {
                    token: self.token_string(seq),
                    committed_ms: row.get(1).map_err(StoreError::from)?,
                    inserted: vec![],
                    updated: vec![],
                    deleted: vec![],
                });
                last_seq = seq;
            }
            let asset: String = row.get(2).map_err(StoreError::from)?;
            let kind = ChangeKind::from_i64(row.get(3).map_err(StoreError::from)?)
                .ok_or_else(|| StoreError::Corrupt("unknown change kind".into()))?;
            let set = sets.last_mut().expect("pushed above");
            match kind {
                ChangeKind::Inserted => set.inserted.push(asset),
                ChangeKind::Updated => set.updated.push(asset),
                ChangeKind::Deleted => set.deleted.push(asset),
            }
        }
        Ok(sets)
    }

    /// Records `root` as a library root (idempotent); returns its id.
    pub fn add_root(&mut self, root: &Path, now_ms: i64) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO roots (path, added_ms) VALUES (?1, ?2) ON CONFLICT(path) DO NOTHING",
            params![path_bytes(root), now_ms],
        )?;
        Ok(self.conn.query_row(
            "SELECT id FROM roots WHERE path = ?1",
            [path_bytes(root)],
            |r| r.get(0),
        )?)
    }

    pub fn roots(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT path FROM roots ORDER BY path")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| r.map(bytes_path).map_err(StoreError::from))
            .collect()
    }

    fn collect_resources(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, resource_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// The resources whose file is directly in `dir`.
    pub fn resources_in_dir(&self, dir: &Path) -> Result<Vec<ResourceRecord>, StoreError> {
        self.collect_resources(
            &format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE dir = ?1 ORDER BY path"),
            [path_bytes(dir)],
        )
    }

    /// Every resource at or below `dir` (by path prefix on a component boundary).
    pub fn resources_under(&self, dir: &Path) -> Result<Vec<ResourceRecord>, StoreError> {
        let (lo, hi) = prefix_range(dir);
        self.collect_resources(
            &format!(
                "SELECT {RESOURCE_COLUMNS} FROM resources WHERE path > ?1 AND path < ?2 ORDER BY path"
            ),
            params![lo, hi],
        )
    }

    /// The identity and stat of every resource at or below `dir`: what a rescan needs to
    /// tell unchanged files from the rest, without reading whole records.
    pub fn resource_stats_under(&self, dir: &Path) -> Result<Vec<ResourceStat>, StoreError> {
        let (lo, hi) = prefix_range(dir);
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, asset_id, path, dev, ino, size, mtime_ns, blake3 FROM resources \
             WHERE path > ?1 AND path < ?2",
        )?;
        let rows = stmt.query_map(params![lo, hi], stat_from_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// One page of [`Store::resource_stats_under`] in path order: at most `limit` resources
    /// at or below `dir` whose path sorts after `after` (from the first when `None`). Walking
    /// a library page by page keeps a million resources out of memory.
    pub fn resource_stats_under_page(
        &self,
        dir: &Path,
        after: Option<&Path>,
        limit: usize,
    ) -> Result<Vec<ResourceStat>, StoreError> {
        let (lo, hi) = prefix_range(dir);
        let from = match after {
            Some(a) if path_bytes(a) > &lo[..] => path_bytes(a).to_vec(),
            _ => lo,
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, asset_id, path, dev, ino, size, mtime_ns, blake3 FROM resources \
             WHERE path > ?1 AND path < ?2 ORDER BY path LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![from, hi, i64::try_from(limit).unwrap_or(i64::MAX)],
            stat_from_row,
        )?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// How many assets have a resource at or below `dir`.
    pub fn asset_count_under(&self, dir: &Path) -> Result<u64, StoreError> {
        let (lo, hi) = prefix_range(dir);
        let mut stmt = self.conn.prepare_cached(
            "SELECT COUNT(DISTINCT asset_id) FROM resources WHERE path > ?1 AND path < ?2",
        )?;
        let n: i64 = stmt.query_row(params![lo, hi], |row| row.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// The size of resource `id`, if it is indexed.
    pub fn resource_size(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT size FROM resources WHERE id = ?1")?;
        let size: Option<i64> = stmt.query_row([id], |row| row.get(0)).optional()?;
        Ok(size.map(|s| s.max(0) as u64))
    }

    /// The identity stats of the resources directly in `dir` (not below it): what a scan
    /// compares one folder's listing with, without holding the whole library.
    pub fn resource_stats_in_dir(&self, dir: &Path) -> Result<Vec<ResourceStat>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, asset_id, path, dev, ino, size, mtime_ns, blake3 FROM resources \
             WHERE dir = ?1",
        )?;
        let rows = stmt.query_map(params![path_bytes(dir)], stat_from_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// The folders at or below `dir` that hold indexed resources (one row per folder).
    pub fn resource_dirs_under(&self, dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let (lo, hi) = prefix_range(dir);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT dir FROM resources WHERE path > ?1 AND path < ?2")?;
        let rows = stmt.query_map(params![lo, hi], |row| Ok(bytes_path(row.get(0)?)))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    pub fn resources_of_asset(&self, asset_id: &str) -> Result<Vec<ResourceRecord>, StoreError> {
        self.collect_resources(
            &format!(
                "SELECT {RESOURCE_COLUMNS} FROM resources WHERE asset_id = ?1 ORDER BY resource_type, path"
            ),
            [asset_id],
        )
    }

    pub fn resource(&self, id: &str) -> Result<Option<ResourceRecord>, StoreError> {
        Ok(self
            .collect_resources(
                &format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = ?1"),
                [id],
            )?
            .pop())
    }

    pub fn asset(&self, id: &str) -> Result<Option<AssetRecord>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id, dir, created_ms, updated_ms FROM assets WHERE id = ?1")?
            .query_row([id], asset_from_row)
            .optional()?)
    }

    /// Assets ordered by folder then id, a page at a time.
    pub fn assets(&self, limit: u64, offset: u64) -> Result<Vec<AssetRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, dir, created_ms, updated_ms FROM assets ORDER BY dir, id LIMIT ?1 OFFSET ?2",
        )?;
        let rows = stmt.query_map(
            params![limit.min(i64::MAX as u64) as i64, offset as i64],
            asset_from_row,
        )?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    pub fn library_counts(&self) -> Result<LibraryCounts, StoreError> {
        let (resources, bytes): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM resources",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let assets: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM assets", [], |r| r.get(0))?;
        Ok(LibraryCounts {
            assets: assets as u64,
            resources: resources as u64,
            bytes: bytes as u64,
        })
    }

    /// Starts one atomic change to the index. Dropping the writer without `commit` rolls back.
    pub fn index_writer(&mut self) -> Result<IndexWriter<'_>, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(IndexWriter {
            store: self,
            changes: HashMap::new(),
            touched_assets: Vec::new(),
            done: false,
        })
    }
}

/// A row of `id, asset_id, path, dev, ino, size, mtime_ns, blake3`.
fn stat_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ResourceStat> {
    let hash: Vec<u8> = row.get(7)?;
    Ok(ResourceStat {
        id: row.get(0)?,
        asset_id: row.get(1)?,
        path: bytes_path(row.get(2)?),
        dev: row.get::<_, i64>(3)? as u64,
        ino: row.get::<_, i64>(4)? as u64,
        size: row.get::<_, i64>(5)? as u64,
        mtime_ns: row.get(6)?,
        blake3: <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0; 32]),
    })
}

/// `(dir + "/", dir + "0")`: every path strictly below `dir` sorts between them, as `'0'` is
/// the byte after `'/'`.
fn prefix_range(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut lo = path_bytes(dir).to_vec();
    if lo.last() != Some(&b'/') {
        lo.push(b'/');
    }
    let mut hi = lo.clone();
    *hi.last_mut().expect("non-empty") = b'0';
    (lo, hi)
}

/// One open transaction on the index; see the module comment.
#[derive(Debug)]
pub struct IndexWriter<'s> {
    store: &'s mut Store,
    changes: HashMap<String, ChangeKind>,
    touched_assets: Vec<String>,
    done: bool,
}

impl IndexWriter<'_> {
    fn note(&mut self, asset: &str, kind: ChangeKind) {
        match self.changes.get(asset).copied() {
            None => {
                self.changes.insert(asset.to_owned(), kind);
            }
            Some(prev) => match prev.then(kind) {
                Some(k) => {
                    self.changes.insert(asset.to_owned(), k);
                }
                None => {
                    self.changes.remove(asset);
                }
            },
        }
    }

    /// Reads through the open transaction (sees this writer's own uncommitted writes).
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Creates an asset whose id was just made (fails if it exists: ids are never reused).
    pub fn insert_asset(&mut self, id: &str, dir: &Path, now_ms: i64) -> Result<(), StoreError> {
        self.store.exec(
            "INSERT INTO assets (id, dir, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)",
            params![id, path_bytes(dir), now_ms],
        )?;
        self.note(id, ChangeKind::Inserted);
        Ok(())
    }

    /// Adds a resource whose id was just made (fails if it exists).
    pub fn insert_resource(&mut self, r: &ResourceRecord, now_ms: i64) -> Result<(), StoreError> {
        self.write_resource(r)?;
        self.note(&r.asset_id, ChangeKind::Updated);
        self.touch_asset(&r.asset_id, now_ms)
    }

    /// Creates the asset, or moves it to `dir`.
    pub fn put_asset(&mut self, id: &str, dir: &Path, now_ms: i64) -> Result<(), StoreError> {
        let existing = self.store.asset(id)?;
        match existing {
            None => {
                self.store.exec(
                    "INSERT INTO assets (id, dir, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)",
                    params![id, path_bytes(dir), now_ms],
                )?;
                self.note(id, ChangeKind::Inserted);
            }
            Some(a) if a.dir != dir => {
                self.store.exec(
                    "UPDATE assets SET dir = ?2, updated_ms = ?3 WHERE id = ?1",
                    params![id, path_bytes(dir), now_ms],
                )?;
                self.note(id, ChangeKind::Updated);
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Inserts or replaces a resource (by id). Records a change on its asset, and on the asset
    /// it left, only when something a client can see changed (not a bare re-stat).
    pub fn put_resource(&mut self, r: &ResourceRecord, now_ms: i64) -> Result<(), StoreError> {
        let old = self.store.resource(r.id.as_str())?;
        self.write_resource(r)?;
        match old {
            None => self.note(&r.asset_id.clone(), ChangeKind::Updated),
            Some(old) => {
                let visible = old.asset_id != r.asset_id
                    || old.resource_type != r.resource_type
                    || old.path != r.path
                    || old.blake3 != r.blake3
                    || old.size != r.size
                    || old.metadata != r.metadata
                    || old.content_type != r.content_type;
                if visible {
                    self.note(&r.asset_id.clone(), ChangeKind::Updated);
                    if old.asset_id != r.asset_id {
                        self.note(&old.asset_id, ChangeKind::Updated);
                        self.touched_assets.push(old.asset_id);
                    }
                }
            }
        }
        self.touch_asset(&r.asset_id, now_ms)?;
        Ok(())
    }

    fn write_resource(&mut self, r: &ResourceRecord) -> Result<(), StoreError> {
        let meta = serde_json::to_string(&r.metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?;
        let dir = r.path.parent().unwrap_or(Path::new("/"));
        self.store.exec(
            "INSERT INTO resources (id, asset_id, resource_type, path, dir, dev, ino, size, mtime_ns, \
             content_type, blake3, metadata, indexed_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT(id) DO UPDATE SET asset_id = excluded.asset_id, \
             resource_type = excluded.resource_type, path = excluded.path, dir = excluded.dir, \
             dev = excluded.dev, ino = excluded.ino, size = excluded.size, \
             mtime_ns = excluded.mtime_ns, content_type = excluded.content_type, \
             blake3 = excluded.blake3, metadata = excluded.metadata, indexed_ms = excluded.indexed_ms",
            params![
                r.id,
                r.asset_id,
                r.resource_type.as_str(),
                path_bytes(&r.path),
                path_bytes(dir),
                r.dev as i64,
                r.ino as i64,
                r.size as i64,
                r.mtime_ns,
                r.content_type,
                &r.blake3[..],
                meta,
                r.indexed_ms,
            ],
        )?;
        Ok(())
    }

    fn touch_asset(&mut self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        // An asset inserted by this writer already carries `now` as its update time.
        if matches!(
            self.changes.get(id),
            Some(ChangeKind::Updated | ChangeKind::Deleted)
        ) {
            self.store.exec(
                "UPDATE assets SET updated_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
        }
        Ok(())
    }

    /// Removes a resource (its file is gone). Its asset is updated, or deleted if now empty.
    pub fn delete_resource(&mut self, id: &str) -> Result<(), StoreError> {
        if let Some(old) = self.store.resource(id)? {
            self.store
                .exec("DELETE FROM resources WHERE id = ?1", [id])?;
            self.note(&old.asset_id, ChangeKind::Updated);
            self.touched_assets.push(old.asset_id);
        }
        Ok(())
    }

    /// Deletes assets left without resources, records the change set, commits durably.
    /// Returns the new token, or `None` if nothing visible changed.
    pub fn commit(
        mut self,
        now_ms: i64,
        limits: HistoryLimits,
    ) -> Result<Option<String>, StoreError> {
        let token = self.commit_changes(now_ms, limits)?;
        self.done = true;
        Ok(token)
    }

    /// Commits like [`IndexWriter::commit`], then opens the next transaction on the same
    /// writer (for scans that commit in batches).
    pub fn commit_in_place(
        &mut self,
        now_ms: i64,
        limits: HistoryLimits,
    ) -> Result<Option<String>, StoreError> {
        let token = self.commit_changes(now_ms, limits)?;
        self.changes.clear();
        self.store.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(token)
    }

    fn commit_changes(
        &mut self,
        now_ms: i64,
        limits: HistoryLimits,
    ) -> Result<Option<String>, StoreError> {
        for asset in std::mem::take(&mut self.touched_assets) {
            let left: i64 = self
                .store
                .conn
                .prepare_cached("SELECT COUNT(*) FROM resources WHERE asset_id = ?1")?
                .query_row([&asset], |r| r.get(0))?;
            if left == 0
                && self
                    .store
                    .exec("DELETE FROM assets WHERE id = ?1", [&asset])?
                    > 0
            {
                self.note(&asset, ChangeKind::Deleted);
            }
        }
        let token = if self.changes.is_empty() {
            None
        } else {
            let seq = self.store.current_seq()? + 1;
            self.store.exec(
                "INSERT INTO change_sets (token, committed_ms) VALUES (?1, ?2)",
                params![seq, now_ms],
            )?;
            {
                let mut stmt = self.store.conn.prepare_cached(
                    "INSERT INTO changes (token, asset_id, kind) VALUES (?1, ?2, ?3)",
                )?;
                for (asset, kind) in &self.changes {
                    stmt.execute(params![seq, asset, *kind as i64])?;
                }
            }
            let floor = seq - limits.max_change_sets.min(i64::MAX as u64) as i64;
            if floor > 0 {
                self.store
                    .conn
                    .execute("DELETE FROM change_sets WHERE token <= ?1", [floor])?;
                self.store.exec(
                    "INSERT INTO meta (key, value) VALUES ('history_floor', ?1) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [floor.to_string()],
                )?;
            }
            Some(self.store.token_string(seq))
        };
        self.store.conn.execute_batch("COMMIT")?;
        Ok(token)
    }
}

impl Drop for IndexWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Nothing of a writer that was not committed may reach the disk.
            let _ = self.store.conn.execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, asset: &str, path: &str) -> ResourceRecord {
        ResourceRecord {
            id: id.into(),
            asset_id: asset.into(),
            resource_type: ResourceType::Photo,
            path: path.into(),
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            content_type: "image/jpeg".into(),
            blake3: [7; 32],
            metadata: ResourceMetadata::default(),
            indexed_ms: 5,
        }
    }

    #[test]
    fn change_history_records_kinds_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("ferry.db")).unwrap();
        let t0 = s.current_change_token().unwrap();
        let limits = HistoryLimits { max_change_sets: 2 };

        let mut w = s.index_writer().unwrap();
        w.put_asset("a1", Path::new("/lib"), 10).unwrap();
        w.put_resource(&rec("r1", "a1", "/lib/x.jpg"), 10).unwrap();
        let t1 = w.commit(10, limits).unwrap().unwrap();

        // A re-stat that changes nothing visible makes no change set.
        let mut w = s.index_writer().unwrap();
        let mut same = rec("r1", "a1", "/lib/x.jpg");
        same.mtime_ns = 99;
        w.put_resource(&same, 11).unwrap();
        assert_eq!(w.commit(11, limits).unwrap(), None);

        let mut w = s.index_writer().unwrap();
        w.put_resource(&rec("r1", "a1", "/lib/sub/x.jpg"), 12)
            .unwrap();
        let t2 = w.commit(12, limits).unwrap().unwrap();

        let sets = s.changes_since(&t0).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].inserted, vec!["a1".to_string()]);
        assert_eq!(sets[1].updated, vec!["a1".to_string()]);
        assert_eq!(sets[1].token, t2);
        assert!(s.changes_since(&t2).unwrap().is_empty());

        let mut w = s.index_writer().unwrap();
        w.delete_resource("r1").unwrap();
        let t3 = w.commit(13, limits).unwrap().unwrap();
        assert_eq!(
            s.changes_since(&t2).unwrap()[0].deleted,
            vec!["a1".to_string()]
        );
        assert!(s.asset("a1").unwrap().is_none());

        // Only two change sets are kept: t0 is now too old, t1 still answers.
        assert!(matches!(
            s.changes_since(&t0),
            Err(ChangesError::ChangeTokenExpired { .. })
        ));
        assert_eq!(s.changes_since(&t1).unwrap().len(), 2);
        assert!(matches!(
            s.changes_since("ct1.other.1"),
            Err(ChangesError::InvalidToken(_))
        ));
        assert!(matches!(
            s.changes_since(&format!("{t3}0")),
            Err(ChangesError::InvalidToken(_))
        ));
    }

    #[test]
    fn uncommitted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("ferry.db")).unwrap();
        {
            let mut w = s.index_writer().unwrap();
            w.put_asset("a1", Path::new("/lib"), 10).unwrap();
            w.put_resource(&rec("r1", "a1", "/lib/x.jpg"), 10).unwrap();
        }
        assert_eq!(s.library_counts().unwrap(), LibraryCounts::default());
        assert!(s.resources_under(Path::new("/lib")).unwrap().is_empty());
    }

    #[test]
    fn prefix_range_excludes_siblings() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("ferry.db")).unwrap();
        let mut w = s.index_writer().unwrap();
        w.put_asset("a", Path::new("/lib"), 1).unwrap();
        for (i, p) in [
            "/lib/a/x.jpg",
            "/lib/a/b/y.jpg",
            "/lib/ab/z.jpg",
            "/lib/a.jpg",
        ]
        .iter()
        .enumerate()
        {
            let mut r = rec(&format!("r{i}"), "a", p);
            r.ino = i as u64;
            w.put_resource(&r, 1).unwrap();
        }
        w.commit(1, HistoryLimits::default()).unwrap();
        let under: Vec<_> = s
            .resources_under(Path::new("/lib/a"))
            .unwrap()
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(
            under,
            vec![
                PathBuf::from("/lib/a/b/y.jpg"),
                PathBuf::from("/lib/a/x.jpg")
            ]
        );
        // Paged, one at a time: the same resources, in the same order, then nothing.
        let mut paged = Vec::new();
        let mut after: Option<PathBuf> = None;
        loop {
            let page = s
                .resource_stats_under_page(Path::new("/lib/a"), after.as_deref(), 1)
                .unwrap();
            let Some(last) = page.last() else { break };
            assert_eq!(page.len(), 1);
            after = Some(last.path.clone());
            paged.push(last.path.clone());
        }
        assert_eq!(paged, under);
        let all = s
            .resource_stats_under_page(Path::new("/lib"), None, 10)
            .unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(s.asset_count_under(Path::new("/lib/a")).unwrap(), 1);
        assert_eq!(s.asset_count_under(Path::new("/other")).unwrap(), 0);
        assert_eq!(
            s.resource_size("r0").unwrap(),
            Some(rec("r0", "a", "/x").size)
        );
        assert_eq!(s.resource_size("nope").unwrap(), None);
    }
}
