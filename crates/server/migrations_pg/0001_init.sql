-- ferry-server metadata: uploads in progress (and their receipts once complete), stored
-- objects, device tokens. PostgreSQL's copy of migrations/0001 (one folder per backend).
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    offset_bytes BIGINT NOT NULL,
    length_bytes BIGINT,
    metadata_json TEXT NOT NULL,
    metadata_raw TEXT,
    expected_sha256_hex TEXT,
    object_id TEXT,
    created_unix_ms BIGINT NOT NULL,
    expires_unix_ms BIGINT NOT NULL
);
CREATE INDEX uploads_expiry ON uploads (expires_unix_ms) WHERE object_id IS NULL;
CREATE INDEX uploads_object ON uploads (object_id);

CREATE TABLE objects (
    id TEXT PRIMARY KEY,
    sha256_hex TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL
);
CREATE INDEX objects_sha256 ON objects (sha256_hex);

CREATE TABLE tokens (
    sha256_hex TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_unix_ms BIGINT NOT NULL
);
