//! Durable upload sessions for the transfer engine: where an interrupted upload can resume.
//!
//! The store keeps an opaque body per job (the transfer engine's JSON) so that the engine's
//! session format can change without a migration here. Each call is one committed statement
//! (WAL, `synchronous=FULL`): once `put_upload_session` returns, a `kill -9` cannot lose it.

use crate::db::{Store, StoreError};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

impl Store {
    /// The session body recorded for `job`, if any.
    pub fn upload_session(&self, job: Uuid) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT body FROM upload_sessions WHERE job_id = ?1",
                [job.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Inserts or replaces the session of `job`.
    pub fn put_upload_session(
        &mut self,
        job: Uuid,
        body: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO upload_sessions (job_id, body, updated_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (job_id) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
            params![job.as_bytes().as_slice(), body, now_ms],
        )?;
        Ok(())
    }

    /// Forgets the session of `job` (it finished); absent is fine.
    pub fn delete_upload_session(&mut self, job: Uuid) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM upload_sessions WHERE job_id = ?1",
            [job.as_bytes().as_slice()],
        )?;
        Ok(())
    }

    /// Every recorded session, by job id.
    pub fn upload_sessions(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT job_id, body FROM upload_sessions ORDER BY job_id")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            let id = Uuid::from_slice(&id)
                .map_err(|_| StoreError::Corrupt("upload session id is not a UUID".into()))?;
            out.push((id, body));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_survive_reopen_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        let job = Uuid::now_v7();
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.upload_session(job).unwrap(), None);
            s.put_upload_session(job, "{\"a\":1}", 1).unwrap();
            s.put_upload_session(job, "{\"a\":2}", 2).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.upload_session(job).unwrap().as_deref(), Some("{\"a\":2}"));
        assert_eq!(
            s.upload_sessions().unwrap(),
            vec![(job, "{\"a\":2}".to_string())]
        );
        s.delete_upload_session(job).unwrap();
        assert_eq!(s.upload_session(job).unwrap(), None);
    }
}
