-- Accounts: every device token, upload (receipt) and stored object belongs to a user, and every
-- read, listing and dedup answer is scoped to the caller's user. Identical bytes are stored
-- once (`objects`, the blob); who holds them is `object_owners`. Data from before accounts
-- belongs to the implicit user `default` (id 1), which token creation without `--user` and
-- the embedded server keep using.
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- NULL: unlimited.
    quota_bytes BIGINT,
    -- Sum of `size_bytes` of the objects in `object_owners` for this user, kept by the
    -- transaction that adds an ownership row (objects are never removed from a user).
    used_bytes BIGINT NOT NULL DEFAULT 0,
    created_unix_ms BIGINT NOT NULL
);
INSERT INTO users (id, name, quota_bytes, used_bytes, created_unix_ms)
    VALUES (1, 'default', NULL, 0, 0);

ALTER TABLE tokens ADD COLUMN user_id BIGINT NOT NULL DEFAULT 1;
CREATE INDEX tokens_user ON tokens (user_id);

-- Set at creation from the caller's token; a receipt is its user's alone.
ALTER TABLE uploads ADD COLUMN user_id BIGINT NOT NULL DEFAULT 1;
-- When the upload became an object (the receipt's `received_ms`).
ALTER TABLE uploads ADD COLUMN completed_unix_ms BIGINT;
UPDATE uploads SET completed_unix_ms = created_unix_ms WHERE object_id IS NOT NULL;
CREATE INDEX uploads_user_object ON uploads (user_id, object_id);

-- `seq` orders a user's objects for listing: each new ownership row takes the user's highest
-- plus one (in the writer's transaction), so a listing cursor never skips or repeats an object
-- while new ones arrive (they all sort after it).
CREATE TABLE object_owners (
    user_id BIGINT NOT NULL REFERENCES users (id),
    object_id TEXT NOT NULL REFERENCES objects (id),
    first_stored_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, object_id)
);
CREATE UNIQUE INDEX object_owners_seq ON object_owners (user_id, seq);

INSERT INTO object_owners (user_id, object_id, first_stored_ms, seq)
    SELECT 1, id, created_unix_ms, ROW_NUMBER() OVER (ORDER BY created_unix_ms, id) FROM objects;
UPDATE users SET used_bytes = (SELECT COALESCE(SUM(size_bytes), 0) FROM objects) WHERE id = 1;
