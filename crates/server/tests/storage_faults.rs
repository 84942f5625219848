//! A real ferry-server whose metadata writes fail the way a full disk makes them fail: every
//! receipt it answers afterwards must name an object it can serve (the torture harness found
//! completions receipted while the database never held them).
//!
//! SQL triggers stand in for the disk, deterministically and without root: an upload whose
//! metadata says `fault=rollback` makes SQLite roll the whole transaction back itself (as
//! `SQLITE_FULL` mid-write does), one saying `fault=commit` fails the commit (a deferred foreign
//! key; as a full WAL does) and leaves the transaction open.

mod common;
use common::*;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// Installs the faults in the server's database: SQLite triggers, or — when the suite runs on
/// PostgreSQL — their equivalents there: a trigger that raises (the statement fails and
/// PostgreSQL aborts the transaction until it is rolled back), and a deferred foreign key that
/// fails the commit.
async fn install_faults(s: &TestServer) {
    if let Some(url) = &s.config.database {
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap();
        for sql in [
            "CREATE TABLE fault_parent (id TEXT PRIMARY KEY)",
            "CREATE TABLE fault_child (parent TEXT REFERENCES fault_parent(id) DEFERRABLE INITIALLY DEFERRED)",
            "CREATE FUNCTION fault_rollback() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'simulated full disk'; END $$",
            "CREATE TRIGGER fault_rollback AFTER INSERT ON uploads FOR EACH ROW \
             WHEN (NEW.metadata_json LIKE '%\"fault\":\"rollback\"%') \
             EXECUTE FUNCTION fault_rollback()",
            "CREATE FUNCTION fault_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO fault_child VALUES ('missing'); RETURN NULL; END $$",
            "CREATE TRIGGER fault_commit AFTER INSERT ON uploads FOR EACH ROW \
             WHEN (NEW.metadata_json LIKE '%\"fault\":\"commit\"%') \
             EXECUTE FUNCTION fault_commit()",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&db)
                .await
                .unwrap();
        }
        db.close().await;
        return;
    }
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(s.dir.path().join("meta.db")))
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE fault_parent (id TEXT PRIMARY KEY)",
        "CREATE TABLE fault_child (parent TEXT REFERENCES fault_parent(id) DEFERRABLE INITIALLY DEFERRED)",
        "CREATE TRIGGER fault_rollback AFTER INSERT ON uploads \
         WHEN NEW.metadata_json LIKE '%\"fault\":\"rollback\"%' \
         BEGIN SELECT RAISE(ROLLBACK, 'simulated full disk'); END",
        "CREATE TRIGGER fault_commit AFTER INSERT ON uploads \
         WHEN NEW.metadata_json LIKE '%\"fault\":\"commit\"%' \
         BEGIN INSERT INTO fault_child VALUES ('missing'); END",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db)
            .await
            .unwrap();
    }
    // The triggers are part of the schema: they outlive this connection.
    db.close().await;
}

/// A plain one-request upload; returns the answer's status and object id (on success).
async fn plain(s: &TestServer, body: &[u8], fault: Option<&str>) -> (u16, Option<String>) {
    let mut b = s
        .req("PUT", "/v1/uploads")
        .header("repr-digest", sha256_field(body));
    if let Some(f) = fault {
        b = b.header("ferry-metadata", format!("fault {}", b64(f.as_bytes())));
    }
    let r = b.body(body.to_vec()).send().await.unwrap();
    let id = header(&r, "ferry-object-id").map(str::to_string);
    (r.status().as_u16(), id)
}

#[tokio::test]
async fn failed_metadata_commits_never_yield_a_false_receipt() {
    let s = open_server().await;
    // An upload half sent before the disk fills: its completion comes after the failures.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let r = s
        .req("POST", "/v1/uploads")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", data.len().to_string())
        .header("repr-digest", sha256_field(&data))
        .body(data[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = header(&r, "location").unwrap().to_string();

    install_faults(&s).await;
    for round in 0..2u8 {
        for fault in ["rollback", "commit"] {
            let (status, id) = plain(&s, &[round, 1, 2, 3], Some(fault)).await;
            assert!(status >= 500, "{fault}: a failed commit answered {status}");
            assert_eq!(id, None, "{fault}: a receipt for a failed commit");
        }
    }

    // The half-sent upload completes, and its receipt names an object the server serves.
    let r = s
        .ietf_append(&location, 100_000, true)
        .body(data[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "completion after the failures");
    let id = header(&r, "ferry-object-id").unwrap().to_string();
    assert_eq!(id, blake3_hex(&data));
    assert_eq!(s.get_object(&id).await, data);

    // New uploads work again, and what they receipt is there.
    let fresh = b"after the disk was full".to_vec();
    let (status, id) = plain(&s, &fresh, None).await;
    assert_eq!(status, 201);
    assert_eq!(s.get_object(&id.unwrap()).await, fresh);

    // And after a restart on the same data, every receipt still holds.
    let again = s.restart().await;
    assert_eq!(again.get_object(&blake3_hex(&data)).await, data);
    assert_eq!(again.get_object(&blake3_hex(&fresh)).await, fresh);
}
