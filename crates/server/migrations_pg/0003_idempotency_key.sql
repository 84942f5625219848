-- Idempotent creation: a client that sends `Idempotency-Key` with a creation and never saw the
-- answer (a crash, a cut) sends it again and gets the same upload back, not a second one. The
-- key is stored scoped to the request's credentials (a hash), unique while its upload exists.
ALTER TABLE uploads ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX uploads_idempotency_key ON uploads (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
