-- Personal data sealed at rest (server/src/crypto.rs): AES-256-GCM values "<key id>:<base64>",
-- bound to their row and column. New rows write only the sealed column (the clear one is
-- emptied); rows written before this migration are sealed by `payd reencrypt`, which also
-- moves values sealed under an older key to the active one.
ALTER TABLE refunds ADD COLUMN reason_sealed text;
COMMENT ON COLUMN refunds.reason_sealed IS
    'the refund reason a person typed, sealed (crypto.rs); refunds.reason is empty once sealed';
ALTER TABLE recon_discrepancies ADD COLUMN note_sealed text;
COMMENT ON COLUMN recon_discrepancies.note_sealed IS
    'the operator''s resolution note, sealed (crypto.rs); note is NULL once sealed';
-- payer_digest now holds a keyed hash (1 version byte + HMAC-SHA256) instead of SHA-256.
COMMENT ON COLUMN payment_attempts.payer_digest IS
    'HMAC-SHA256 of the payer id under the lookup key, prefixed by a version byte (33 bytes); 32-byte values are legacy SHA-256 digests, rewritten or cleared by payd reencrypt';
