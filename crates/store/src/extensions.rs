//! What Ferry keeps per extension: the user's consent, the extension's own key-value store,
//! the host's runtime record, its migration import (pending, then its outcome), and the
//! library queries the extension host answers from.
//!
//! Consent and job settings change together: granting writes the consent row and the job
//! policy (bases, limit) in one commit; revoking records the disable, clears the bases (so no
//! job can be created even by a caller that forgot to check consent) and cancels the
//! extension's registered and pending jobs in that same commit.

use crate::db::{Store, StoreError};
use crate::jobs::{JobStoreError, cancel_all_in, load_policy, save_policy};
use crate::library::{AssetRecord, ChangeKind, ChangesError, asset_from_row, bytes_path};
use ferry_core::UrlBase;
use ferry_core::job::Job;
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The user's consent for one extension, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub id: String,
    /// `None`: the whole library; otherwise these folders (relative to a library root,
    /// `/`-separated).
    pub folders: Option<Vec<String>>,
    pub bases: Vec<UrlBase>,
    pub job_limit: u32,
    pub enabled_at_ms: i64,
    /// Set when the user disabled it; a later enable clears it.
    pub disabled_at_ms: Option<i64>,
}

impl Consent {
    pub fn is_enabled(&self) -> bool {
        self.disabled_at_ms.is_none()
    }
}

/// Why a key-value write was refused.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The extension's store would exceed its total size: nothing was written.
    #[error("the extension's key-value store is full ({used_bytes} of {max_bytes} bytes)")]
    Full { used_bytes: usize, max_bytes: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for KvError {
    fn from(e: rusqlite::Error) -> KvError {
        KvError::Store(StoreError::Sqlite(e))
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

type ConsentRow = (String, Option<String>, String, i64, i64, Option<i64>);

fn consent_of(row: ConsentRow) -> Result<Consent, StoreError> {
    let (id, folders, bases, job_limit, enabled_at_ms, disabled_at_ms) = row;
    Ok(Consent {
        folders: folders
            .map(|f| serde_json::from_str(&f))
            .transpose()
            .map_err(corrupt)?,
        bases: serde_json::from_str(&bases).map_err(corrupt)?,
        job_limit: u32::try_from(job_limit).map_err(corrupt)?,
        id,
        enabled_at_ms,
        disabled_at_ms,
    })
}

/// An import waiting to run: the folder of exported files and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingImport {
    pub id: String,
    pub dir: PathBuf,
    pub source_extension: String,
    pub source_version: String,
}

/// How an import ended (`extension_imports.state` other than `pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportState {
    Succeeded,
    Failed,
}

/// The recorded outcome of an extension's import, until the extension clears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportStatus {
    pub id: String,
    pub state: ImportState,
    pub message: Option<String>,
    pub source_extension: String,
    pub source_version: String,
    pub updated_ms: i64,
}

/// Whether folders `new` (`None`: the whole library) show assets `old` (stored JSON) did not: a
/// folder not among the old ones (order aside), or the whole library after some folders. An
/// unreadable old list counts as a change.
fn widens(old: Option<&str>, new: Option<&[String]>) -> bool {
    match (old, new) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(old), Some(new)) => match serde_json::from_str::<Vec<String>>(old) {
            Ok(old) => new.iter().any(|f| !old.contains(f)),
            Err(_) => true,
        },
    }
}

/// The `meta` key (followed by the extension's id) of the change sequence number before which
/// an extension's change tokens expire (see `Store::grant_consent`).
pub(crate) const CHANGES_FLOOR_KEY: &str = "changes_floor/";

const CONSENT_SELECT: &str =
    "SELECT id, folders, bases, job_limit, enabled_at_ms, disabled_at_ms FROM extension_consent";

impl Store {
    /// Records the user's consent (enabling, or re-enabling with a new grant) and the job
    /// policy it implies, in one commit.
    pub fn grant_consent(&mut self, consent: &Consent) -> Result<(), JobStoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let folders = consent
            .folders
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| JobStoreError::Corrupt(e.to_string()))?;
        let bases = serde_json::to_string(&consent.bases)
            .map_err(|e| JobStoreError::Corrupt(e.to_string()))?;
        // Enabled again after a disable (which cancelled its waiting jobs), or its folders
        // now show assets they did not (see `widens`): what the extension saw through its change token
        // no longer covers what it must now do. A new, empty change set marks the moment;
        // tokens from before it answer `change_token_expired`, so the extension goes over the
        // library again (see `Store::check_extension_token`). Granting the same consent again
        // (every `ferry backup` does), or narrowing it, changes nothing.
        let before: Option<(Option<String>, Option<i64>)> = tx
            .query_row(
                "SELECT folders, disabled_at_ms FROM extension_consent WHERE id = ?1",
                [&consent.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let resync = consent.is_enabled()
            && before.is_some_and(|(old_folders, disabled_at)| {
                disabled_at.is_some() || widens(old_folders.as_deref(), consent.folders.as_deref())
            });
        if resync {
            let seq: i64 = tx.query_row(
                "SELECT COALESCE(MAX(token), 0) + 1 FROM change_sets",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO change_sets (token, committed_ms) VALUES (?1, ?2)",
                params![seq, consent.enabled_at_ms],
            )?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = ?2",
                params![
                    format!("{CHANGES_FLOOR_KEY}{}", consent.id),
                    seq.to_string()
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO extension_consent
                 (id, folders, bases, job_limit, enabled_at_ms, disabled_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET folders = ?2, bases = ?3, job_limit = ?4,
                 enabled_at_ms = ?5, disabled_at_ms = ?6",
            params![
                consent.id,
                folders,
                bases,
                i64::from(consent.job_limit),
                consent.enabled_at_ms,
                consent.disabled_at_ms
            ],
        )?;
        let mut policy = load_policy(&tx, &consent.id)?;
        policy.job_limit = consent.job_limit;
        policy.bases = if consent.is_enabled() {
            consent.bases.clone()
        } else {
            Vec::new()
        };
        save_policy(&tx, &consent.id, &policy)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that the user disabled `id`, clears its destination bases and cancels its
    /// registered and pending jobs, all in one commit. Returns the cancelled jobs; `None` if
    /// the extension was never enabled.
    pub fn revoke_consent(
        &mut self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<Job>>, JobStoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE extension_consent SET disabled_at_ms = COALESCE(disabled_at_ms, ?2)
             WHERE id = ?1",
            params![id, now_ms],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        let mut policy = load_policy(&tx, id)?;
        policy.bases.clear();
        save_policy(&tx, id, &policy)?;
        let cancelled = cancel_all_in(&tx, id, now_ms)?;
        tx.commit()?;
        Ok(Some(cancelled))
    }

    pub fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
        let row: Option<ConsentRow> = self
            .conn
            .prepare_cached(&format!("{CONSENT_SELECT} WHERE id = ?1"))?
            .query_row([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()?;
        row.map(consent_of).transpose()
    }

    /// Every consent ever recorded (enabled or not), by id.
    pub fn consents(&self) -> Result<Vec<Consent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{CONSENT_SELECT} ORDER BY id"))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(consent_of(row?)?);
        }
        Ok(out)
    }

    pub fn kv_get(&self, extension: &str, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM extension_kv WHERE extension = ?1 AND key = ?2")?
            .query_row([extension, key], |r| r.get(0))
            .optional()?)
    }

    /// Sets (or with `None` deletes) a key, durably; refuses a write that would take the
    /// extension's keys and values over `max_total_bytes`.
    pub fn kv_set(
        &mut self,
        extension: &str,
        key: &str,
        value: Option<&str>,
        max_total_bytes: usize,
    ) -> Result<(), KvError> {
        self.kv_set_many(extension, &[(key, value)], max_total_bytes)
    }

    /// Sets (or deletes) many keys in one commit, all or none; a key named twice takes its
    /// last value. Refuses the whole write if it would take the extension's keys and values
    /// over `max_total_bytes`.
    pub fn kv_set_many(
        &mut self,
        extension: &str,
        entries: &[(&str, Option<&str>)],
        max_total_bytes: usize,
    ) -> Result<(), KvError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (key, value) in entries {
            match value {
                None => {
                    tx.execute(
                        "DELETE FROM extension_kv WHERE extension = ?1 AND key = ?2",
                        [extension, key],
                    )?;
                }
                Some(value) => {
                    tx.execute(
                        "INSERT INTO extension_kv (extension, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (extension, key) DO UPDATE SET value = ?3",
                        [extension, key, value],
                    )?;
                }
            }
        }
        // Measured once after the writes, inside the transaction: dropping it (no commit)
        // undoes them all.
        if entries.iter().any(|(_, v)| v.is_some()) {
            let used: i64 = tx.query_row(
                "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0)
                 FROM extension_kv WHERE extension = ?1",
                [extension],
                |r| r.get(0),
            )?;
            let used = usize::try_from(used).unwrap_or(usize::MAX);
            if used > max_total_bytes {
                let added: usize = entries
                    .iter()
                    .map(|(k, v)| v.map_or(0, |v| k.len() + v.len()))
                    .sum();
                return Err(KvError::Full {
                    used_bytes: used.saturating_sub(added),
                    max_bytes: max_total_bytes,
                });
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The extension's keys starting with `prefix`, sorted, at most `limit`.
    pub fn kv_list(
        &self,
        extension: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key FROM extension_kv WHERE extension = ?1 AND substr(key, 1, length(?2)) = ?2
             ORDER BY key LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![extension, prefix, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get::<_, String>(0),
        )?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// The extension host's runtime record for `id` (its own JSON), if any.
    pub fn extension_runtime(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT body FROM extension_runtime WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    pub fn put_extension_runtime(
        &mut self,
        id: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO extension_runtime (id, body, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = ?2, updated_ms = ?3",
            )?
            .execute(params![id, body, now_ms])?;
        Ok(())
    }

    /// The import waiting to run for `id`, if any.
    pub fn pending_import(&self, id: &str) -> Result<Option<PendingImport>, StoreError> {
        let row: Option<(Vec<u8>, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT dir, source_extension, source_version FROM extension_imports
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        Ok(
            row.map(|(dir, source_extension, source_version)| PendingImport {
                id: id.to_owned(),
                dir: bytes_path(dir),
                source_extension,
                source_version,
            }),
        )
    }

    /// Records an import to run (replacing any earlier row of `id`). The migration installer
    /// may write the same row with its own SQL inside its own transaction; this is the same
    /// write for callers (and tests) that have no transaction of their own.
    pub fn put_pending_import(
        &mut self,
        id: &str,
        dir: &Path,
        source_extension: &str,
        source_version: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO extension_imports
                     (id, dir, source_extension, source_version, state, message, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, 'pending', NULL, ?5)
                 ON CONFLICT (id) DO UPDATE SET dir = ?2, source_extension = ?3,
                     source_version = ?4, state = 'pending', message = NULL, updated_ms = ?5",
            )?
            .execute(params![
                id,
                dir.as_os_str().as_bytes(),
                source_extension,
                source_version,
                now_ms
            ])?;
        Ok(())
    }

    /// Records how the pending import of `id` ended (`Err` carries the reason shown to the
    /// person and the extension). A row that is not pending is left alone: an outcome is
    /// recorded once. Returns whether a row changed.
    pub fn finish_import(
        &mut self,
        id: &str,
        outcome: Result<(), String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (state, message) = match outcome {
            Ok(()) => ("succeeded", None),
            Err(m) => ("failed", Some(m)),
        };
        let n = self
            .conn
            .prepare_cached(
                "UPDATE extension_imports SET state = ?2, message = ?3, updated_ms = ?4
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute(params![id, state, message, now_ms])?;
        Ok(n > 0)
    }

    /// The finished import of `id` (succeeded or failed), until it is cleared.
    pub fn import_status(&self, id: &str) -> Result<Option<ImportStatus>, StoreError> {
        type Row = (String, Option<String>, String, String, i64);
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT state, message, source_extension, source_version, updated_ms
                 FROM extension_imports WHERE id = ?1 AND state IN ('succeeded', 'failed')",
            )?
            .query_row([id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((state, message, source_extension, source_version, updated_ms)) = row else {
            return Ok(None);
        };
        let state = match state.as_str() {
            "succeeded" => ImportState::Succeeded,
            "failed" => ImportState::Failed,
            other => return Err(corrupt(format!("import state {other:?}"))),
        };
        Ok(Some(ImportStatus {
            id: id.to_owned(),
            state,
            message,
            source_extension,
            source_version,
            updated_ms,
        }))
    }

    /// Forgets the finished import of `id` (the extension acted on it). A pending import is
    /// kept: it has not run yet. Returns whether a status was cleared.
    pub fn clear_import_status(&mut self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "DELETE FROM extension_imports WHERE id = ?1 AND state IN ('succeeded', 'failed')",
            )?
            .execute([id])?;
        Ok(n > 0)
    }

    /// Deletes every key of the extension's key-value store, in one commit (a failed import
    /// leaves nothing half-written behind). Returns how many keys went.
    pub fn wipe_extension_kv(&mut self, id: &str) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM extension_kv WHERE extension = ?1")?
            .execute([id])?)
    }

    /// The folder a deleted asset lived in, if it was deleted since tombstones were kept.
    pub fn deleted_asset_dir(&self, asset_id: &str) -> Result<Option<PathBuf>, StoreError> {
        let dir: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT dir FROM asset_tombstones WHERE asset_id = ?1")?
            .query_row([asset_id], |r| r.get(0))
            .optional()?;
        Ok(dir.map(bytes_path))
    }

    /// Assets by ascending id after `after`, at most `limit`.
    pub fn assets_by_id(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<AssetRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, dir, created_ms, updated_ms FROM assets WHERE ?1 IS NULL OR id > ?1
             ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
            asset_from_row,
        )?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    /// The changes after `since` up to `until` (default: now), merged per asset (inserted then
    /// updated is inserted; inserted then deleted is nothing) and sorted by asset id, with the
    /// `until` token that was used.
    pub fn merged_changes(
        &self,
        since: &str,
        until: Option<&str>,
    ) -> Result<(String, Vec<(String, ChangeKind)>), ChangesError> {
        let until_seq = match until {
            Some(t) => {
                let seq = self.parse_token(t)?;
                if seq > self.current_seq()? || seq < self.parse_token(since)? {
                    return Err(ChangesError::InvalidToken(t.to_owned()));
                }
                seq
            }
            None => self.current_seq()?,
        };
        let sets = self.changes_since(since)?;
        let mut merged: BTreeMap<String, Option<ChangeKind>> = BTreeMap::new();
        for set in sets {
            if self.parse_token(&set.token)? > until_seq {
                break;
            }
            let kinds = [
                (ChangeKind::Inserted, set.inserted),
                (ChangeKind::Updated, set.updated),
                (ChangeKind::Deleted, set.deleted),
            ];
            for (kind, ids) in kinds {
                for id in ids {
                    match merged.get_mut(&id) {
                        Some(slot) => {
                            *slot = match *slot {
                                // Inserted then deleted earlier in the range: back as new.
                                None => Some(kind),
                                Some(prev) => prev.then(kind),
                            }
                        }
                        None => {
                            merged.insert(id, Some(kind));
                        }
                    }
                }
            }
        }
        let changes = merged
            .into_iter()
            .filter_map(|(id, k)| k.map(|k| (id, k)))
            .collect();
        Ok((self.token_string(until_seq), changes))
    }
}

#[cfg(test)]
mod import_tests {
    use super::*;

    #[test]
    fn an_import_runs_once_then_its_status_stays_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("ferry.db")).unwrap();
        assert_eq!(s.pending_import("x").unwrap(), None);
        // A folder name that is not UTF-8 survives.
        let folder = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/caf\xE9"));
        s.put_pending_import("x", &folder, "x-old", "3", 1).unwrap();
        let p = s.pending_import("x").unwrap().unwrap();
        assert_eq!((p.dir, p.source_extension.as_str()), (folder, "x-old"));
        assert_eq!(s.import_status("x").unwrap(), None, "pending is no status");
        assert!(
            !s.clear_import_status("x").unwrap(),
            "pending is not cleared"
        );

        assert!(s.finish_import("x", Err("crashed".into()), 2).unwrap());
        assert!(!s.finish_import("x", Ok(()), 3).unwrap(), "recorded once");
        assert_eq!(s.pending_import("x").unwrap(), None);
        let st = s.import_status("x").unwrap().unwrap();
        assert_eq!(st.state, ImportState::Failed);
        assert_eq!(st.message.as_deref(), Some("crashed"));
        assert_eq!(st.source_version, "3");
        assert!(s.clear_import_status("x").unwrap());
        assert_eq!(s.import_status("x").unwrap(), None);

        s.kv_set("x", "a", Some("1"), 1 << 20).unwrap();
        s.kv_set("y", "a", Some("1"), 1 << 20).unwrap();
        assert_eq!(s.wipe_extension_kv("x").unwrap(), 1);
        assert_eq!(s.kv_get("x", "a").unwrap(), None);
        assert_eq!(s.kv_get("y", "a").unwrap().as_deref(), Some("1"));
    }
}

#[cfg(test)]
mod resync_tests {
    use super::*;

    fn consent(folders: Option<&[&str]>) -> Consent {
        Consent {
            id: "x".into(),
            folders: folders.map(|f| f.iter().map(|s| (*s).to_owned()).collect()),
            bases: Vec::new(),
            job_limit: 10,
            enabled_at_ms: 1,
            disabled_at_ms: None,
        }
    }

    /// Which consent changes expire an extension's change tokens: enabling again after a
    /// disable and folders that show more; not the same consent again, another order of the
    /// same folders, or fewer folders.
    #[test]
    fn consent_changes_that_show_more_expire_older_change_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("ferry.db")).unwrap();
        let expired = |s: &Store, token: &str| {
            matches!(
                s.check_extension_token("x", token),
                Err(ChangesError::ChangeTokenExpired { .. })
            )
        };
        s.grant_consent(&consent(Some(&["a", "b"]))).unwrap();
        let t0 = s.current_change_token().unwrap();
        for same in [
            Some(&["a", "b"][..]),
            Some(&["b", "a"][..]),
            Some(&["a"][..]),
        ] {
            s.grant_consent(&consent(same)).unwrap();
            assert!(!expired(&s, &t0), "{same:?} shows nothing new");
            assert_eq!(s.current_change_token().unwrap(), t0);
        }
        s.grant_consent(&consent(Some(&["a", "c"]))).unwrap();
        assert!(expired(&s, &t0), "folder c came into scope");
        let t1 = s.current_change_token().unwrap();
        assert!(!expired(&s, &t1), "a token taken after the change is good");
        s.grant_consent(&consent(None)).unwrap();
        assert!(expired(&s, &t1), "the whole library after some folders");
        let t2 = s.current_change_token().unwrap();
        s.revoke_consent("x", 2).unwrap();
        s.grant_consent(&consent(None)).unwrap();
        assert!(expired(&s, &t2), "enabled again after a disable");
        assert!(
            s.check_extension_token("other", &t0).is_ok(),
            "another extension's tokens stay"
        );
    }
}
