-- A client may promise the upload's BLAKE3 in Repr-Digest (the server asks for it with
-- Want-Repr-Digest); it is checked at completion like the SHA-256.
ALTER TABLE uploads ADD COLUMN expected_blake3_hex TEXT;
