COMMENT ON COLUMN payment_attempts.payer_digest IS NULL;
ALTER TABLE recon_discrepancies DROP COLUMN note_sealed;
ALTER TABLE refunds DROP COLUMN reason_sealed;
