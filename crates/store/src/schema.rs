//! The schema as an ordered list of migrations; `PRAGMA user_version` records how many ran.
//!
//! Append only: a migration that shipped is never edited, so every store upgrades the same way.

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the library index and its change history.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    CREATE TABLE roots (
        id INTEGER PRIMARY KEY,
        path BLOB NOT NULL UNIQUE,
        added_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE assets (
        id TEXT PRIMARY KEY,
        dir BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX assets_dir ON assets(dir);
    CREATE TABLE resources (
        id TEXT PRIMARY KEY,
        asset_id TEXT NOT NULL REFERENCES assets(id),
        resource_type TEXT NOT NULL,
        path BLOB NOT NULL UNIQUE,
        dir BLOB NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        blake3 BLOB NOT NULL,
        metadata TEXT NOT NULL,
        indexed_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX resources_dir ON resources(dir);
    CREATE INDEX resources_asset ON resources(asset_id);
    CREATE INDEX resources_blake3 ON resources(blake3);
    CREATE TABLE change_sets (
        token INTEGER PRIMARY KEY,
        committed_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE changes (
        token INTEGER NOT NULL REFERENCES change_sets(token) ON DELETE CASCADE,
        asset_id TEXT NOT NULL,
        kind INTEGER NOT NULL,
        PRIMARY KEY (token, asset_id)
    ) STRICT, WITHOUT ROWID;
    "#,
];
