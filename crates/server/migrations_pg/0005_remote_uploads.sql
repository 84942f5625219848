-- Unfinished uploads whose bytes live in an S3 store (any instance continues any upload).
-- `multipart_id`: the store's multipart upload at `uploads/<id>/data`; `parts_json`: the ETags
-- of its parts 1..N in order (each 16 MiB); `tail_json`: the write-once pieces holding the
-- bytes after the last part, in order (`[{"key":…,"size":…}]`). offset = 16 MiB × N + pieces.
ALTER TABLE uploads ADD COLUMN multipart_id TEXT;
ALTER TABLE uploads ADD COLUMN parts_json TEXT;
ALTER TABLE uploads ADD COLUMN tail_json TEXT;
-- One writer per upload across instances: the instance holding the lease, the fencing epoch
-- (every commit of an append names the epoch it took; a later lease makes it change nothing),
-- and until when the lease holds (the database's clock, milliseconds since the epoch).
ALTER TABLE uploads ADD COLUMN lease_owner BIGINT;
ALTER TABLE uploads ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN lease_until_ms BIGINT;

-- Objects in the store that no upload row references (yet, or any more): written before the
-- object is (a tail piece, a multipart upload), deleted by the commit that references it, or
-- written by the commit that stops referencing it. The collector deletes what an old row names.
CREATE TABLE store_intents (
    key TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL,
    -- `piece` (an object to delete), `multipart` (abort `multipart_id`, delete the key).
    kind TEXT NOT NULL,
    multipart_id TEXT,
    created_unix_ms BIGINT NOT NULL
);
CREATE INDEX store_intents_created ON store_intents (created_unix_ms);
