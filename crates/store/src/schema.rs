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
    // 2: upload jobs, their receipts, and each extension's job settings.
    r#"
    CREATE TABLE extensions (
        id TEXT PRIMARY KEY,
        job_limit INTEGER NOT NULL,
        max_retries INTEGER NOT NULL,
        bases TEXT NOT NULL
    ) STRICT;
    -- A job is two rows. `job_specs` holds what the extension asked for (JSON), written at
    -- creation and again only when a retry brings a new destination. `jobs` holds the state
    -- that transitions change, kept small because SQLite writes whole pages to the WAL: the
    -- fewer pages a batch of transitions dirties, the cheaper its fsync.
    CREATE TABLE job_specs (
        id BLOB PRIMARY KEY,
        body TEXT NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE jobs (
        id BLOB PRIMARY KEY,
        extension TEXT NOT NULL,
        state TEXT NOT NULL,
        acknowledged INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        live TEXT NOT NULL
    ) STRICT, WITHOUT ROWID;
    -- Fetch by action and the limit count read only this index's range for one extension.
    CREATE INDEX jobs_by_action ON jobs(extension, acknowledged, state, created_ms);
    -- A receipt points at its job's final rows: a job let go of never changes again, so the
    -- receipt is rebuilt from them rather than copied. `seq` orders history.
    CREATE TABLE receipts (
        seq INTEGER PRIMARY KEY,
        job_id BLOB NOT NULL UNIQUE,
        content_hash BLOB NOT NULL,
        acknowledged_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX receipts_by_hash ON receipts(content_hash);
    "#,
    // 3: resumable upload sessions of the transfer engine, one per job in flight. The body is
    // the engine's own JSON (upload URL, protocol, acknowledged offset, retry state): the store
    // keeps it durable and does not interpret it.
    r#"
    CREATE TABLE upload_sessions (
        job_id BLOB PRIMARY KEY,
        body TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    "#,
    // 4: extensions: the user's consent (scope, bases, job limit, when), each extension's own
    // key-value store, the host's runtime record per extension (an opaque JSON body: backoff,
    // last outcome), and tombstones that remember a deleted asset's folder so that a deletion
    // is reported only to extensions whose scope held the asset.
    r#"
    CREATE TABLE extension_consent (
        id TEXT PRIMARY KEY,
        folders TEXT,
        bases TEXT NOT NULL,
        job_limit INTEGER NOT NULL,
        enabled_at_ms INTEGER NOT NULL,
        disabled_at_ms INTEGER
    ) STRICT;
    CREATE TABLE extension_kv (
        extension TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (extension, key)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE extension_runtime (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE asset_tombstones (
        asset_id TEXT PRIMARY KEY,
        dir BLOB NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE TRIGGER assets_tombstone AFTER DELETE ON assets BEGIN
        INSERT OR REPLACE INTO asset_tombstones (asset_id, dir) VALUES (old.id, old.dir);
    END;
    CREATE TRIGGER assets_untombstone AFTER INSERT ON assets BEGIN
        DELETE FROM asset_tombstones WHERE asset_id = new.id;
    END;
    "#,
    // 5: migration imports, one row per extension: the folder of files exported on another
    // device, who exported them, and how the import went ('pending' | 'succeeded' |
    // 'failed'). The migration installer writes 'pending'; the host runs the import before
    // the extension's first call and records the outcome, which the extension sees in
    // `initialize` until it clears it (the row is deleted).
    r#"
    CREATE TABLE extension_imports (
        id TEXT PRIMARY KEY,
        dir BLOB NOT NULL,
        source_extension TEXT NOT NULL,
        source_version TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT,
        updated_ms INTEGER NOT NULL
    ) STRICT;
    "#,
];
